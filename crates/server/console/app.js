// The console's shell: sign-in, navigation by URL fragment, role-based controls.

import { api, get, h, notice, session } from './api.js';
import { audit, overview, requests, routes, usage } from './pages.js';
import { keys } from './keys.js';
import { planb } from './planb.js';

const PAGES = { overview, routes, keys, usage, requests, planb, audit };
// A non-secret cookie set beside the session's (which scripts cannot read): whether to ask
// for the session at all, so a signed-out page makes no failing request.
const SIGNED_IN = 'relais_console=1';

const $ = (id) => document.getElementById(id);

function allowed(link) {
  const roles = link.dataset.roles;
  return !roles || roles.split(' ').includes(session.role);
}

async function show() {
  const name = (location.hash || '#overview').slice(1);
  const link = document.querySelector(`#nav a[data-page="${name}"]`);
  const page = PAGES[name] && link && allowed(link) ? name : 'overview';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
  const root = $('page');
  root.dataset.page = page;
  root.dataset.ready = 'false';
  try {
    await PAGES[page](root);
  } catch (e) {
    root.append(notice(e.message || String(e), 'error'));
  }
  root.dataset.ready = 'true';
}

function signedIn(s) {
  Object.assign(session, s);
  document.body.dataset.role = s.role;
  $('sign-in').hidden = true;
  $('nav').hidden = false;
  for (const a of document.querySelectorAll('#nav a')) a.hidden = !allowed(a);
  $('who').hidden = false;
  $('who').textContent = `${s.name} (${s.role}${s.team ? ` of ${s.team}` : ''})`;
  $('sign-out').hidden = false;
  return show();
}

function signedOut(message) {
  Object.assign(session, { name: null, role: null, team: null, csrf: null, features: {} });
  document.cookie = `${SIGNED_IN}; Path=/; Max-Age=0; SameSite=Strict`;
  $('nav').hidden = true;
  $('who').hidden = true;
  $('sign-out').hidden = true;
  $('page').replaceChildren();
  $('sign-in').hidden = false;
  $('sign-in-error').hidden = !message;
  $('sign-in-error').textContent = message || '';
  $('sign-in-key').focus();
}

async function start() {
  $('sign-in').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const s = await api('POST', '/admin/sign-in', { key: $('sign-in-key').value });
      $('sign-in-key').value = '';
      document.cookie = `${SIGNED_IN}; Path=/; SameSite=Strict`;
      await signedIn(await get('/admin/session').then((x) => ({ ...s, ...x })));
    } catch (e) {
      signedOut(e.message);
    }
  });
  $('sign-out').addEventListener('click', async () => {
    await api('POST', '/admin/sign-out', {});
    signedOut('Signed out.');
  });
  window.addEventListener('hashchange', () => session.role && show());
  $('dialog-cancel').addEventListener('click', () => { $('dialog').returnValue = 'cancel'; });
  if (document.cookie.split(';').some((c) => c.trim() === SIGNED_IN)) {
    try {
      await signedIn(await get('/admin/session'));
      return;
    } catch (e) {
      signedOut(e.status === 401 ? 'Your session has ended; sign in again.' : e.message);
      return;
    }
  }
  signedOut();
}

start();
