// Plots as SVG, drawn here (no chart library): time series with a legend, horizontal bars,
// and a budget bar. Every plot carries data-points (the number of points drawn) so a test
// can tell a drawn chart from an empty frame.

const NS = 'http://www.w3.org/2000/svg';
const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563', '#65a30d'];

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.append(c);
  return el;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function fmtTick(v) {
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  if (Number.isInteger(v)) return String(v);
  // Small amounts (USD per bucket) in millionths, so the axis label fits its margin.
  if (v < 0.001) return `${Number((v * 1e6).toPrecision(3))}µ`;
  return v < 0.01 ? v.toPrecision(2) : v.toFixed(v < 1 ? 3 : 1);
}

/**
 * A line chart: `series` is [{name, points: [[t_ms, value], ...]}]. Returns a figure element.
 */
export function lineChart(title, series, { unit = '', width = 560, height = 200 } = {}) {
  const pad = { l: 48, r: 8, t: 8, b: 22 };
  const all = series.flatMap((s) => s.points);
  const fig = document.createElement('figure');
  fig.className = 'chart';
  fig.dataset.points = String(all.length);
  const cap = document.createElement('figcaption');
  cap.textContent = unit ? `${title} (${unit})` : title;
  fig.append(cap);
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': title });
  if (all.length === 0) {
    root.append(svg('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle', class: 'empty' }));
    root.lastChild.textContent = 'no data in this window';
    fig.append(root);
    return fig;
  }
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]));
  const vmax = niceMax(Math.max(...all.map((p) => p[1] ?? 0)));
  const x = (t) => pad.l + (t1 === t0 ? (width - pad.l - pad.r) / 2 : ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r));
  const y = (v) => height - pad.b - (v / vmax) * (height - pad.t - pad.b);
  for (let i = 0; i <= 4; i += 1) {
    const v = (vmax * i) / 4;
    root.append(svg('line', { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v), class: 'grid' }));
    const label = svg('text', { x: pad.l - 4, y: y(v) + 4, 'text-anchor': 'end', class: 'tick' });
    label.textContent = fmtTick(v);
    root.append(label);
  }
  for (const [i, t] of t1 === t0 ? [[0, t0]] : [[0, t0], [1, t1]]) {
    const anchor = t1 === t0 ? 'middle' : i ? 'end' : 'start';
    const label = svg('text', { x: x(t), y: height - 6, 'text-anchor': anchor, class: 'tick' });
    label.textContent = new Date(t).toISOString().slice(5, 16).replace('T', ' ');
    root.append(label);
  }
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (pts.length === 1) {
      root.append(svg('circle', { cx: x(pts[0][0]), cy: y(pts[0][1]), r: 3, fill: color }));
    } else if (pts.length > 1) {
      const d = pts.map((p, j) => `${j ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join('');
      root.append(svg('path', { d, stroke: color, fill: 'none', 'stroke-width': 1.6 }));
    }
    for (const p of pts) {
      const dot = svg('circle', { cx: x(p[0]), cy: y(p[1]), r: 6, class: 'hit' });
      const tip = svg('title');
      tip.textContent = `${s.name}: ${fmtTick(p[1])}${unit ? ` ${unit}` : ''} at ${new Date(p[0]).toISOString().slice(0, 16)}`;
      dot.append(tip);
      root.append(dot);
    }
  });
  fig.append(root);
  const legend = document.createElement('div');
  legend.className = 'legend';
  series.forEach((s, i) => {
    const item = document.createElement('span');
    const swatch = document.createElement('i');
    swatch.style.background = COLORS[i % COLORS.length];
    item.append(swatch, s.name);
    legend.append(item);
  });
  fig.append(legend);
  return fig;
}

/** Horizontal bars: [{label, value, text}]. */
export function barChart(title, bars) {
  const fig = document.createElement('figure');
  fig.className = 'chart bars';
  fig.dataset.points = String(bars.length);
  const cap = document.createElement('figcaption');
  cap.textContent = title;
  fig.append(cap);
  const max = Math.max(0, ...bars.map((b) => b.value)) || 1;
  bars.forEach((b, i) => {
    const row = document.createElement('div');
    row.className = 'bar-row';
    const label = document.createElement('span');
    label.className = 'bar-label';
    label.textContent = b.label;
    const track = document.createElement('span');
    track.className = 'bar-track';
    const fill = document.createElement('span');
    fill.className = 'bar-fill';
    fill.style.width = `${Math.max(0.5, (b.value / max) * 100)}%`;
    fill.style.background = COLORS[i % COLORS.length];
    track.append(fill);
    const text = document.createElement('span');
    text.className = 'bar-text';
    text.textContent = b.text ?? fmtTick(b.value);
    row.append(label, track, text);
    fig.append(row);
  });
  return fig;
}

/** Spend against a budget: a bar that turns amber at 80% and red at 100%. */
export function budgetBar(spent, budget) {
  const wrap = document.createElement('span');
  wrap.className = 'budget';
  const s = Number(spent || 0);
  const b = Number(budget || 0);
  const share = b > 0 ? s / b : 0;
  const track = document.createElement('span');
  track.className = 'bar-track';
  const fill = document.createElement('span');
  fill.className = `bar-fill ${share >= 1 ? 'over' : share >= 0.8 ? 'near' : 'ok'}`;
  fill.style.width = `${Math.min(100, share * 100)}%`;
  track.append(fill);
  const text = document.createElement('span');
  text.textContent = `$${s.toFixed(2)} / $${b.toFixed(2)}`;
  wrap.append(track, text);
  wrap.dataset.share = share.toFixed(3);
  return wrap;
}
