// Calls to the admin API with the session cookie; a change carries the session's CSRF token.
// Also small DOM helpers every page uses.

export const session = { name: null, role: null, team: null, csrf: null, features: {} };

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (method !== 'GET') {
    headers['content-type'] = 'application/json';
    if (session.csrf) headers['x-relais-csrf'] = session.csrf;
  }
  const resp = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    const msg = (data && data.error && data.error.message) || `${resp.status} ${resp.statusText}`;
    throw new ApiError(resp.status, msg);
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body ?? {});
export const patch = (path, body) => api('PATCH', path, body);

/** Whether the signed-in role may change things (a viewer may not). */
export const canChange = () => session.role === 'admin' || session.role === 'team_admin';

/** An element: h('td', {class: 'num'}, 'text', child, ...). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A table from column specs [{label, value: row => ..., num}] and rows. */
export function table(columns, rows, onRow) {
  const head = h('tr', {}, columns.map((c) => h('th', { class: c.num ? 'num' : null }, c.label)));
  const body = rows.map((r) => {
    const tr = h('tr', { class: onRow ? 'clickable' : null },
      columns.map((c) => h('td', { class: c.num ? 'num' : null }, c.value(r) ?? '')));
    if (onRow) tr.addEventListener('click', () => onRow(r, tr));
    return tr;
  });
  return h('table', {}, h('thead', {}, head), h('tbody', {}, body));
}

export function card(title, ...children) {
  return h('div', { class: 'card' }, title ? h('h2', {}, title) : null, ...children);
}

export function notice(text, kind = 'info') {
  return h('p', { class: `notice ${kind}` }, text);
}

export const fmtTime = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) : '');
export const fmtSecs = (s) => (s ? fmtTime(s * 1000) : '');
export const fmtMs = (us) => (us === null || us === undefined ? '' : (us / 1000).toFixed(1));

/** A modal: `body` nodes, resolves true on OK. */
export function ask(title, body, ok = 'OK') {
  const dialog = document.getElementById('dialog');
  const box = document.getElementById('dialog-body');
  box.replaceChildren(h('h2', {}, title), ...[body].flat());
  document.getElementById('dialog-ok').textContent = ok;
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
  });
}

/** Show an error where it happened. */
export function failure(where, err) {
  where.replaceChildren(notice(err.message || String(err), 'error'));
}
