// Overview, Routes, Usage, Requests and Audit: read-only pages over the admin API.

import { card, failure, fmtMs, fmtTime, get, h, notice, session, table } from './api.js';
import { barChart, lineChart } from './chart.js';

const HOUR = 3600 * 1000;

function seriesOf(answer, field, scale = (v) => v) {
  return answer.series.map((s) => ({
    name: s.group,
    points: s.points.map((p) => [p.t, p[field] === null ? null : scale(Number(p[field]))]),
  }));
}

function totalOf(answer, field, name) {
  return [{ name, points: answer.total.map((p) => [p.t, p[field] === null ? null : Number(p[field])]) }];
}

export async function overview(root) {
  const by = h('select', { id: 'overview-by' },
    ['vendor', 'route', 'team'].map((v) => h('option', { value: v }, `by ${v}`)));
  const span = h('select', { id: 'overview-span' },
    [[1, 'last hour'], [24, 'last 24 hours'], [24 * 7, 'last 7 days']].map(([v, l]) =>
      h('option', { value: v, selected: v === 24 }, l)));
  const body = h('div', { class: 'grid' });
  const dep = h('div');
  const alerts = h('div', { id: 'alerts' });
  root.replaceChildren(h('h1', {}, 'Overview'), alerts, h('div', { class: 'toolbar' }, by, span), body, dep);
  if (session.role !== 'team_admin') await drawAlerts(alerts);
  if (!session.features.governance) {
    body.replaceChildren(notice('Traffic over time, spend and the dependency index read the ledger: add a [governance] section to the config. The Routes page shows the live state meanwhile.'));
    return;
  }
  const draw = async () => {
    const to = Date.now() + 1;
    const from = to - Number(span.value) * HOUR;
    try {
      const a = await get(`/admin/series?from=${from}&to=${to}&by=${by.value}`);
      body.replaceChildren(
        card('Requests', lineChart('Requests per bucket', seriesOf(a, 'requests'))),
        card('Errors', lineChart('Errors (status ≥ 400)', seriesOf(a, 'errors'))),
        card('Latency', lineChart('p50 and p99 latency', [
          ...totalOf(a, 'p50_ms', 'p50'), ...totalOf(a, 'p99_ms', 'p99')], { unit: 'ms' })),
        card('Spend', lineChart('Spend per bucket', seriesOf(a, 'cost_usd'), { unit: 'USD' })),
      );
      if (a.truncated) body.prepend(notice(`Drawn from the newest ${a.rows} requests of the window.`));
    } catch (e) { failure(body, e); }
    if (session.role === 'team_admin') return;
    try {
      const d = await get('/admin/dependency');
      const shares = (d.overall.vendors || []).map((v) => ({
        label: v.vendor, value: v.request_share, text: `${Number(v.request_share).toFixed(1)}% of requests`,
      }));
      const days = (d.days || []).map((x) => [Date.parse(x.date), x.hhi_requests]);
      dep.replaceChildren(card(`Dependency index: HHI ${d.overall.hhi_requests} (requests), ${d.overall.hhi_spend} (spend)`,
        h('p', { class: 'hint' }, '10,000 is one vendor for everything; below 2,500 is diversified.'),
        barChart('Share of requests by vendor', shares),
        lineChart('Dependency index (HHI of requests) per day', [{ name: 'HHI', points: days }])));
    } catch (e) { failure(dep, e); }
  };
  by.addEventListener('change', draw);
  span.addEventListener('change', draw);
  await draw();
}

/** The alerts firing now (budgets, breakers, readiness, dependency, stores). */
async function drawAlerts(box) {
  try {
    const a = await get('/admin/alerts');
    const where = a.webhook ? 'also posted to the webhook' : 'no webhook configured';
    if (!a.alerts.length) {
      box.replaceChildren(notice(`No alert is firing (checked every ${a.check_secs} s; ${where}).`, 'ok'));
      return;
    }
    box.replaceChildren(card(`Alerts firing: ${a.alerts.length}`,
      h('p', { class: 'hint' }, `Checked every ${a.check_secs} s; ${where}.`),
      table([
        { label: 'Since', value: (r) => fmtTime(r.started_at_ms) },
        { label: 'Alert', value: (r) => h('span', { class: 'bad' }, r.alert) },
        { label: 'Subject', value: (r) => r.subject },
        { label: 'What', value: (r) => r.summary },
      ], a.alerts)));
  } catch (e) { failure(box, e); }
}

export async function routes(root) {
  root.replaceChildren(h('h1', {}, 'Routes'), h('p', { class: 'hint' }, 'Live state of each deployment, refreshed every 5 seconds.'));
  const body = h('div');
  root.append(body);
  const draw = async () => {
    try {
      const a = await get('/admin/routes');
      body.replaceChildren(...Object.entries(a.routes).map(([name, r]) => card(
        `${name} (${r.kind}, ${r.strategy})`,
        table([
          { label: 'Deployment', value: (d) => d.id },
          { label: 'State', value: (d) => h('span', { class: `state ${d.state}` }, d.state) },
          { label: 'Latency est. (ms)', value: (d) => (d.latency_estimate_ms ?? 0).toFixed(1), num: true },
          { label: 'In flight', value: (d) => d.inflight, num: true },
          { label: 'Attempts', value: (d) => d.attempts, num: true },
          { label: 'Failures', value: (d) => d.failures, num: true },
          { label: 'Failovers', value: (d) => d.failovers, num: true },
          { label: 'Ejections', value: (d) => d.ejections, num: true },
          { label: 'Last minute', value: (d) => `${d.last_minute.requests} req, ${d.last_minute.tokens} tok` },
        ], r.deployments),
        barChart('Attempts by deployment', r.deployments.map((d) => ({ label: d.id, value: d.attempts }))),
      )));
    } catch (e) { failure(body, e); }
  };
  await draw();
  const timer = setInterval(() => (document.body.contains(body) ? draw() : clearInterval(timer)), 5000);
}

function csv(rows, columns) {
  const esc = (v) => {
    const s = v === null || v === undefined ? '' : String(v);
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [columns.join(','), ...rows.map((r) => columns.map((c) => esc(r[c])).join(','))].join('\n');
}

export async function usage(root) {
  if (!session.features.governance) {
    root.replaceChildren(h('h1', {}, 'Usage'), notice('Usage reads the ledger: add a [governance] section to the config.'));
    return;
  }
  const today = new Date().toISOString().slice(0, 10);
  const first = `${today.slice(0, 8)}01`;
  const by = h('select', { id: 'usage-by' },
    ['key', 'team', 'route', 'vendor', 'model', 'day'].map((v) => h('option', { value: v }, `by ${v}`)));
  const from = h('input', { type: 'date', id: 'usage-from', value: first });
  const to = h('input', { type: 'date', id: 'usage-to', value: today });
  const exportBtn = h('button', { id: 'usage-csv', class: 'quiet' }, 'Export CSV');
  const body = h('div');
  root.replaceChildren(h('h1', {}, 'Usage'), h('div', { class: 'toolbar' }, by, from, to, exportBtn), body);
  let lines = [];
  const draw = async () => {
    try {
      const a = await get(`/admin/usage?by=${by.value}&from=${from.value}&to=${to.value}`);
      lines = a.usage || a.lines || a.rows || [];
      body.replaceChildren(
        card(`Spend by ${by.value}`, barChart('Spend (USD)', lines.map((l) => ({
          label: l.group || '-', value: Number(l.cost_usd), text: `$${l.cost_usd}`,
        })))),
        card(null, table([
          { label: by.value, value: (l) => l.group || '-' },
          { label: 'Requests', value: (l) => l.requests, num: true },
          { label: 'Errors', value: (l) => l.errors, num: true },
          { label: 'Input tokens', value: (l) => l.input_tokens, num: true },
          { label: 'Output tokens', value: (l) => l.output_tokens, num: true },
          { label: 'Spend (USD)', value: (l) => l.cost_usd, num: true },
        ], lines)),
      );
    } catch (e) { failure(body, e); }
  };
  exportBtn.addEventListener('click', () => {
    const cols = lines.length ? Object.keys(lines[0]) : ['group'];
    const blob = new Blob([csv(lines, cols)], { type: 'text/csv' });
    const a = h('a', { href: URL.createObjectURL(blob), download: `relais-usage-by-${by.value}-${from.value}-${to.value}.csv` });
    document.body.append(a);
    a.click();
    a.remove();
  });
  for (const el of [by, from, to]) el.addEventListener('change', draw);
  await draw();
}

export async function requests(root) {
  if (!session.features.governance) {
    root.replaceChildren(h('h1', {}, 'Requests'), notice('The request list reads the ledger: add a [governance] section to the config.'));
    return;
  }
  const fields = ['key', 'team', 'route', 'vendor'].map((f) =>
    h('input', { id: `requests-${f}`, placeholder: f, size: 14 }));
  const errors = h('input', { type: 'checkbox', id: 'requests-errors' });
  const go = h('button', { id: 'requests-go' }, 'Filter');
  const body = h('div');
  const detail = h('div', { id: 'request-detail' });
  root.replaceChildren(h('h1', {}, 'Requests'),
    h('div', { class: 'toolbar' }, ...fields, h('label', {}, errors, ' failures only'), go), body, detail);
  const draw = async () => {
    const q = new URLSearchParams({ limit: '200', from: String(Date.now() - 30 * 24 * HOUR) });
    for (const f of fields) if (f.value.trim()) q.set(f.placeholder, f.value.trim());
    if (errors.checked) q.set('errors', '1');
    try {
      const a = await get(`/admin/requests?${q}`);
      body.replaceChildren(card(`${a.requests.length} newest requests`, table([
        { label: 'Time', value: (r) => fmtTime(r.at_ms) },
        { label: 'Key', value: (r) => r.key_id },
        { label: 'Route', value: (r) => r.route },
        { label: 'Deployment', value: (r) => r.deployment },
        { label: 'Status', value: (r) => h('span', { class: r.status >= 400 ? 'bad' : 'good' }, r.status) },
        { label: 'In', value: (r) => r.input_tokens, num: true },
        { label: 'Out', value: (r) => r.output_tokens, num: true },
        { label: 'Cost (µUSD)', value: (r) => (r.cost_pusd / 1e6).toFixed(2), num: true },
        { label: 'Latency (ms)', value: (r) => fmtMs(r.latency_us), num: true },
        { label: 'Drill', value: (r) => r.drill },
      ], a.requests, openRequest)));
    } catch (e) { failure(body, e); }
  };
  const openRequest = async (r) => {
    try {
      const a = await get(`/admin/ledger/${encodeURIComponent(r.id)}`);
      detail.replaceChildren(card(`Request ${r.request_id}`, table([
        { label: 'Attempt', value: (x) => (x.attempt === 0 ? 'request' : x.attempt) },
        { label: 'Deployment', value: (x) => x.deployment },
        { label: 'Vendor', value: (x) => x.vendor },
        { label: 'Model', value: (x) => x.model },
        { label: 'Status', value: (x) => x.status },
        { label: 'Error', value: (x) => x.error_class },
        { label: 'Tokens', value: (x) => `${x.input_tokens} / ${x.output_tokens}` },
        { label: 'Latency (ms)', value: (x) => fmtMs(x.latency_us), num: true },
        { label: 'TTFT (ms)', value: (x) => fmtMs(x.ttft_us), num: true },
      ], a.rows), h('p', { class: 'hint' }, 'Payloads are not kept by the ledger; see payload logging in docs/observability.md.')));
      detail.scrollIntoView();
    } catch (e) { failure(detail, e); }
  };
  go.addEventListener('click', draw);
  await draw();
}

export async function audit(root) {
  const body = h('div');
  root.replaceChildren(h('h1', {}, 'Audit log'), body);
  if (!session.features.governance) body.before(notice('Without a [governance] store the newest 1,000 changes are kept in this instance\'s memory.'));
  try {
    const a = await get('/admin/audit?limit=200');
    body.replaceChildren(card(null, table([
      { label: 'Time', value: (e) => fmtTime(e.at_ms) },
      { label: 'Who', value: (e) => `${e.actor} (${e.role})` },
      { label: 'From', value: (e) => e.address },
      { label: 'Action', value: (e) => e.action },
      { label: 'Target', value: (e) => e.target },
      { label: 'Before → after', value: (e) => h('code', {}, diff(e.before, e.after)) },
    ], a.entries)));
  } catch (e) { failure(body, e); }
}

/** The fields that changed, as `field: old → new`. */
function diff(before, after) {
  if (!before) return after ? 'created' : '';
  if (!after) return 'removed';
  const out = [];
  const walk = (a, b, path) => {
    for (const k of new Set([...Object.keys(a || {}), ...Object.keys(b || {})])) {
      const x = a ? a[k] : undefined;
      const y = b ? b[k] : undefined;
      if (x && y && typeof x === 'object' && typeof y === 'object' && !Array.isArray(x)) walk(x, y, `${path}${k}.`);
      else if (JSON.stringify(x) !== JSON.stringify(y)) out.push(`${path}${k}: ${JSON.stringify(x)} → ${JSON.stringify(y)}`);
    }
  };
  walk(before, after, '');
  return out.join('; ') || 'no change';
}
