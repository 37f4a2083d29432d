// Keys and teams: spend against budgets, create, edit, rotate (the secret shown once), revoke,
// reset a budget. A viewer sees the tables without the buttons (and the API refuses anyway).

import { ask, canChange, card, failure, fmtSecs, get, h, notice, patch, post, session, table } from './api.js';
import { budgetBar } from './chart.js';

const LIMITS = ['rpm', 'tpm', 'max_concurrent', 'budget_day', 'budget_month', 'budget_total'];
const LISTS = ['routes', 'vendors', 'data_classes'];

/** Form fields for a key's or team's settings, filled from `item` (a listed key or team). */
function fields(item, withExpiry) {
  const row = (name, value, hint) => h('label', {}, name,
    h('input', { name, value: value ?? '', placeholder: hint }));
  const out = [];
  for (const f of LISTS) out.push(row(f, (item && item[f]) ? item[f].join(',') : '', 'comma-separated; empty: any'));
  for (const f of LIMITS) out.push(row(f, item ? item.limits[f] : '', f.startsWith('budget') ? 'USD; empty: none' : 'empty: none'));
  if (withExpiry) out.push(row('expires_at', item && item.expires_at ? new Date(item.expires_at * 1000).toISOString().slice(0, 16) : '', 'YYYY-MM-DDTHH:MM (UTC); empty: never'));
  return out;
}

/** The body of a create or edit from the form's inputs: empty lifts a setting. */
function bodyOf(form, withExpiry) {
  const val = (n) => form.querySelector(`[name="${n}"]`).value.trim();
  const body = {};
  for (const f of LISTS) body[f] = val(f) ? val(f).split(',').map((s) => s.trim()).filter(Boolean) : null;
  for (const f of LIMITS) {
    const v = val(f);
    body[f] = v === '' ? null : (f.startsWith('budget') ? v : Number(v));
  }
  if (withExpiry) body.expires_at = val('expires_at') || null;
  return body;
}

async function showSecret(title, issued) {
  await ask(title, [
    h('p', {}, 'This secret is shown once. Store it now: relais keeps only its hash.'),
    h('pre', { id: 'new-secret', class: 'secret' }, issued.key),
  ], 'Done');
}

export async function keys(root) {
  const body = h('div');
  root.replaceChildren(h('h1', {}, 'Keys & teams'), body);
  if (!session.features.governance) {
    body.replaceChildren(notice('Virtual keys are off: add a [governance] section to the config.'));
    return;
  }
  const draw = async () => {
    try {
      const [t, k] = await Promise.all([get('/admin/teams'), get('/admin/keys')]);
      const teamName = Object.fromEntries(t.teams.map((x) => [x.id, x.name]));
      const budget = (x) => {
        const l = x.limits;
        const [period, limit] = l.budget_day ? ['day', l.budget_day] : l.budget_month ? ['month', l.budget_month] : l.budget_total ? ['total', l.budget_total] : [null, null];
        if (!period) return 'no budget';
        return h('span', {}, budgetBar(x.spend ? x.spend[period] : 0, limit), ` per ${period}`);
      };
      const teamActions = (x) => (session.role === 'admin' ? h('span', { class: 'actions' },
        h('button', { class: 'quiet', 'data-action': 'edit-team', onclick: () => editTeam(x, draw) }, 'Edit'),
        h('button', { class: 'quiet', 'data-action': 'reset-team', onclick: () => reset(`/admin/teams/${x.id}/reset-budget`, `team ${x.name}`, draw) }, 'Reset budget')) : '');
      const keyActions = (x) => (canChange() && !x.revoked_at ? h('span', { class: 'actions' },
        h('button', { class: 'quiet', 'data-action': 'edit-key', onclick: () => editKey(x, draw) }, 'Edit'),
        h('button', { class: 'quiet', 'data-action': 'rotate-key', onclick: () => rotate(x, draw) }, 'Rotate'),
        h('button', { class: 'quiet', 'data-action': 'reset-key', onclick: () => reset(`/admin/keys/${x.id}/reset-budget`, `key ${x.name}`, draw) }, 'Reset budget'),
        h('button', { class: 'danger', 'data-action': 'revoke-key', onclick: () => revoke(x, draw) }, 'Revoke')) : '');
      body.replaceChildren(
        card('Teams', session.role === 'admin' ? h('button', { id: 'new-team', onclick: () => newTeam(draw) }, 'New team') : null,
          table([
            { label: 'Name', value: (x) => x.name },
            { label: 'Routes', value: (x) => (x.routes ? x.routes.join(', ') : 'all') },
            { label: 'Vendors', value: (x) => (x.vendors ? x.vendors.join(', ') : 'all') },
            { label: 'RPM / TPM', value: (x) => `${x.limits.rpm ?? '∞'} / ${x.limits.tpm ?? '∞'}` },
            { label: 'Spend / budget', value: budget },
            { label: '', value: teamActions },
          ], t.teams)),
        card('Keys', canChange() ? h('button', { id: 'new-key', onclick: () => newKey(t.teams, draw) }, 'New key') : null,
          table([
            { label: 'Name', value: (x) => x.name },
            { label: 'Prefix', value: (x) => h('code', {}, `${x.prefix}…`) },
            { label: 'Team', value: (x) => teamName[x.team_id] || x.team_id },
            { label: 'State', value: (x) => (x.revoked_at ? 'revoked' : x.expires_at && x.expires_at * 1000 < Date.now() ? 'expired' : 'active') },
            { label: 'Expires', value: (x) => fmtSecs(x.expires_at) },
            { label: 'Spend / budget', value: budget },
            { label: '', value: keyActions },
          ], k.keys)),
      );
    } catch (e) { failure(body, e); }
  };
  await draw();
}

async function submit(title, formFields, send, okText = 'Save') {
  const form = h('div', { class: 'form' }, formFields);
  const error = h('p', { class: 'error', hidden: true });
  for (;;) {
    if (!(await ask(title, [form, error], okText))) return null;
    try {
      return await send(form);
    } catch (e) {
      error.hidden = false;
      error.textContent = e.message;
    }
  }
}

async function newTeam(draw) {
  const done = await submit('New team', [h('label', {}, 'name', h('input', { name: 'name', required: true })), ...fields(null, false)],
    (form) => post('/admin/teams', { name: form.querySelector('[name="name"]').value, ...bodyOf(form, false) }), 'Create');
  if (done) await draw();
}

async function editTeam(team, draw) {
  const done = await submit(`Edit team ${team.name}`, fields(team, false),
    (form) => patch(`/admin/teams/${team.id}`, bodyOf(form, false)));
  if (done) await draw();
}

async function newKey(teams, draw) {
  const teamSelect = h('select', { name: 'team' }, teams.map((t) => h('option', { value: t.id }, t.name)));
  const issued = await submit('New key', [
    h('label', {}, 'name', h('input', { name: 'name', required: true })),
    h('label', {}, 'team', teamSelect), ...fields(null, true)],
  (form) => {
    const b = bodyOf(form, true);
    for (const k of Object.keys(b)) if (b[k] === null) delete b[k];
    return post('/admin/keys', { name: form.querySelector('[name="name"]').value, team: teamSelect.value, ...b });
  }, 'Create');
  if (issued) {
    await showSecret(`Key ${issued.name} created`, issued);
    await draw();
  }
}

async function editKey(key, draw) {
  const done = await submit(`Edit key ${key.name}`, fields(key, true),
    (form) => patch(`/admin/keys/${key.id}`, bodyOf(form, true)));
  if (done) await draw();
}

async function rotate(key, draw) {
  if (!(await ask(`Rotate key ${key.name}?`, h('p', {}, 'The current secret stops working at once.'), 'Rotate'))) return;
  const issued = await post(`/admin/keys/${key.id}/rotate`);
  await showSecret(`New secret for ${key.name}`, issued);
  await draw();
}

async function revoke(key, draw) {
  if (!(await ask(`Revoke key ${key.name}?`, h('p', {}, 'Requests with it are refused from now on; this cannot be undone.'), 'Revoke'))) return;
  await post(`/admin/keys/${key.id}/revoke`);
  await draw();
}

async function reset(path, what, draw) {
  if (!(await ask(`Reset the budget of ${what}?`, h('p', {}, 'Spend before now no longer counts against its budgets.'), 'Reset'))) return;
  await post(path);
  await draw();
}
