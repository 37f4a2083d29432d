// Plan B: readiness per backup with its intervals and reasons, the promotion forecast and the
// promote / undo buttons, drills (start, watch, stop, report), the dependency index per route.

import { ask, canChange, card, failure, get, h, notice, post, session, table } from './api.js';
import { barChart, lineChart } from './chart.js';

const pct = (a) => (a ? `${(a.value * 100).toFixed(1)}% [${(a.low * 100).toFixed(1)}–${(a.high * 100).toFixed(1)}]` : '–');

export async function planb(root) {
  const ready = h('div', { id: 'readiness' });
  const promo = h('div', { id: 'promotion' });
  const drills = h('div', { id: 'drills' });
  const dep = h('div', { id: 'route-dependency' });
  root.replaceChildren(h('h1', {}, 'Plan B'), ready, promo, drills, dep);
  let routes = {};
  try {
    routes = (await get('/admin/routes')).routes;
  } catch (e) { failure(ready, e); return; }
  if (!session.features.governance) {
    ready.replaceChildren(notice('Readiness, forecasts and drills read the ledger: add a [governance] section.'));
  } else {
    try {
      const r = await get('/admin/readiness');
      ready.replaceChildren(card('Readiness of each backup (95% intervals)', r.backups.length ? table([
        { label: 'Route', value: (b) => b.route },
        { label: 'Primary', value: (b) => b.primary },
        { label: 'Backup', value: (b) => b.backup },
        { label: 'Verdict', value: (b) => h('span', { class: `verdict ${b.verdict}` }, b.verdict.replace(/_/g, ' ')) },
        { label: 'Samples', value: (b) => b.samples, num: true },
        { label: 'Success', value: (b) => pct(b.success) },
        { label: 'Tool agreement', value: (b) => pct(b.tool_agreement) },
        { label: 'JSON valid', value: (b) => pct(b.json_valid) },
        { label: 'Reasons', value: (b) => (b.reasons || []).join('; ') },
      ], r.backups) : notice('No shadowed backups: set routes.<name>.shadow to measure them.')));
    } catch (e) { failure(ready, e); }
  }
  drawPromotion(promo, routes);
  await drawDrills(drills, routes);
  if (session.features.governance) {
    try {
      const d = await get('/admin/dependency');
      const perRoute = Object.entries(d.routes || {}).map(([name, c]) => ({ label: name, value: c.hhi_requests, text: `HHI ${c.hhi_requests}` }));
      dep.replaceChildren(card('Dependency index per route', barChart('HHI of requests (10,000: one vendor)', perRoute),
        lineChart('Overall HHI per day', [{ name: 'HHI', points: (d.days || []).map((x) => [Date.parse(x.date), x.hhi_requests]) }])));
    } catch (e) { failure(dep, e); }
  }
}

function drawPromotion(where, routes) {
  const names = Object.keys(routes).filter((n) => routes[n].deployments.length > 1 || true);
  const route = h('select', { id: 'promote-route' }, names.map((n) => h('option', { value: n }, n)));
  const to = h('select', { id: 'promote-to' });
  const fill = () => to.replaceChildren(...(routes[route.value]?.deployments || []).map((d) => h('option', { value: d.id }, d.id)));
  route.addEventListener('change', fill);
  fill();
  const out = h('div', { id: 'forecast' });
  const dry = h('button', { id: 'promote-dry-run', class: 'quiet' }, 'Forecast (dry run)');
  const go = h('button', { id: 'promote-go', hidden: !canChange() }, 'Promote');
  const undo = h('button', { id: 'promote-undo', class: 'quiet', hidden: !canChange() }, 'Undo promotion');
  dry.addEventListener('click', async () => {
    try {
      const a = await post('/admin/promote', { route: route.value, to: to.value, dry_run: true });
      out.replaceChildren(forecast(a.forecast));
    } catch (e) { failure(out, e); }
  });
  go.addEventListener('click', async () => {
    if (!(await ask(`Make ${to.value} the primary of ${route.value}?`, h('p', {}, 'Traffic moves at once, on every instance; Undo brings the config\'s order back.'), 'Promote'))) return;
    try {
      const a = await post('/admin/promote', { route: route.value, to: to.value });
      out.replaceChildren(notice(`${route.value}: primary is now ${a.to} (was ${a.from}).`, 'ok'), forecast(a.forecast));
    } catch (e) { failure(out, e); }
  });
  undo.addEventListener('click', async () => {
    if (!(await ask(`Undo the promotion of ${route.value}?`, h('p', {}, 'The config\'s order is restored.'), 'Undo'))) return;
    try {
      await post('/admin/promote', { route: route.value, undo: true });
      out.replaceChildren(notice(`${route.value}: the config's order is back.`, 'ok'));
    } catch (e) { failure(out, e); }
  });
  where.replaceChildren(card('Promotion', h('div', { class: 'toolbar' }, route, to, dry, go, undo), out));
}

function forecast(f) {
  if (!f) return '';
  return table([
    { label: 'From → to', value: () => `${f.from} → ${f.to}` },
    { label: 'Requests/day', value: () => f.requests_per_day, num: true },
    { label: 'Cost/day now (USD)', value: () => f.cost_per_day_usd, num: true },
    { label: 'Cost/day after (USD)', value: () => f.forecast_cost_per_day_usd ?? 'no price', num: true },
    { label: 'Verdict', value: () => (f.readiness ? f.readiness.verdict : 'not measured') },
  ], [f]);
}

async function drawDrills(where, routes) {
  const body = h('div');
  const form = h('div', { class: 'toolbar', hidden: !canChange() });
  const route = h('select', { id: 'drill-route' }, Object.keys(routes).map((n) => h('option', { value: n }, n)));
  const dep = h('select', { id: 'drill-deployment' });
  const fill = () => dep.replaceChildren(...(routes[route.value]?.deployments || []).map((d) => h('option', { value: d.id }, d.id)));
  route.addEventListener('change', fill);
  fill();
  const share = h('input', { id: 'drill-share', type: 'number', min: '0.01', max: '1', step: '0.01', value: '0.1' });
  const secs = h('input', { id: 'drill-secs', type: 'number', min: '1', value: '300' });
  const start = h('button', { id: 'drill-start' }, 'Start drill');
  form.append(route, dep, h('label', {}, 'share ', share), h('label', {}, 'seconds ', secs), start);
  const draw = async () => {
    try {
      const a = await get('/admin/drills');
      body.replaceChildren(a.drills.length ? table([
        { label: 'Drill', value: (d) => d.id },
        { label: 'Route', value: (d) => d.route },
        { label: 'Down', value: (d) => d.deployment },
        { label: 'Share', value: (d) => d.share },
        { label: 'State', value: (d) => d.status.state },
        { label: 'Drilled', value: (d) => d.observed.drilled_requests, num: true },
        { label: 'Failovers', value: (d) => d.observed.failovers, num: true },
        { label: 'Errors', value: (d) => d.observed.drilled_errors, num: true },
        { label: '', value: (d) => (d.status.state === 'running' && canChange() ? h('button', { class: 'danger', 'data-action': 'stop-drill', onclick: async () => { await post(`/admin/drills/${d.id}/stop`, { by: session.name }); await draw(); } }, 'Stop') : '') },
      ], a.drills, async (d) => {
        try {
          const r = await get(`/admin/drills/${d.id}`);
          body.append(card(`Report of ${d.id}`, h('pre', {}, JSON.stringify(r, null, 2))));
        } catch (e) { failure(body, e); }
      }) : notice('No drill on this instance yet.'));
    } catch (e) { failure(body, e); }
  };
  start.addEventListener('click', async () => {
    if (!(await ask(`Start a drill on ${route.value}?`, h('p', {}, `${dep.value} is treated as down for ${Math.round(share.value * 100)}% of the route's requests for ${secs.value} s.`), 'Start'))) return;
    try {
      await post('/admin/drills', { route: route.value, deployment: dep.value, share: Number(share.value), duration_secs: Number(secs.value), started_by: session.name });
    } catch (e) { body.prepend(notice(e.message, 'error')); return; }
    await draw();
  });
  where.replaceChildren(card('Drills', form, body));
  await draw();
}
