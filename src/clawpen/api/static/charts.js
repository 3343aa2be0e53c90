// Hand-drawn SVG charts: sparklines, line charts with a time axis, gauges. No library.
const NS = "http://www.w3.org/2000/svg";

export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function path(points, x, y) {
  return points.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join("");
}

function bounds(list) {
  let lo = Infinity, hi = -Infinity;
  for (const v of list) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return lo === Infinity ? [0, 1] : [lo, hi === lo ? lo + 1 : hi];
}

export function sparkline(points) {
  const w = 120, h = 28;
  if (!points || points.length < 2) return `<svg class="spark" viewBox="0 0 ${w} ${h}"></svg>`;
  const [t0, t1] = bounds(points.map((p) => p[0]));
  const [, hi] = bounds(points.map((p) => p[1]));
  const top = Math.max(hi, 1e-9);
  const d = path(points, (t) => ((t - t0) / (t1 - t0)) * w, (v) => h - 2 - (v / top) * (h - 4));
  return `<svg class="spark" viewBox="0 0 ${w} ${h}" preserveAspectRatio="none"><path class="line" d="${d}"/></svg>`;
}

export function human(v, unit) {
  if (v === null || v === undefined || Number.isNaN(v)) return "-";
  if (unit === "bytes") {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return `${v.toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
  }
  if (unit === "%") return `${v.toFixed(1)}%`;
  return Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3);
}

export function unitOf(name) {
  if (/percent/.test(name)) return "%";
  if (/bytes/.test(name)) return "bytes";
  return "";
}

// series: [{name, points: [[ts, v], ...]}] sharing one unit.
export function lineChart(series, unit) {
  const w = 380, h = 130, left = 50, bottom = 16;
  const all = series.flatMap((s) => s.points);
  if (all.length < 2) return `<p class="muted">no samples in this range</p>`;
  const [t0, t1] = bounds(all.map((p) => p[0]));
  const [, hi] = bounds(all.map((p) => p[1]));
  const top = Math.max(hi, 1e-9) * 1.1;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (w - left - 4);
  const y = (v) => h - bottom - (v / top) * (h - bottom - 6);
  const time = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const lines = series.map((s, i) => `<path class="${i ? "line2" : "line"}" d="${path(s.points, x, y)}"><title>${esc(s.name)}</title></path>`);
  return `<svg class="chart" viewBox="0 0 ${w} ${h}">
    <line class="axis" x1="${left}" y1="${y(0)}" x2="${w}" y2="${y(0)}"/>
    <line class="axis" x1="${left}" y1="${y(top / 2)}" x2="${w}" y2="${y(top / 2)}"/>
    <text x="2" y="12">${human(top, unit)}</text><text x="2" y="${y(top / 2) + 4}">${human(top / 2, unit)}</text>
    <text x="2" y="${y(0)}">0</text>
    <text x="${left}" y="${h - 2}">${time(t0)}</text><text x="${w - 2}" y="${h - 2}" text-anchor="end">${time(t1)}</text>
    ${lines.join("")}</svg>`;
}

export function gauge(label, value, max, unit) {
  const pct = max ? Math.max(0, Math.min(100, (value / max) * 100)) : 0;
  return `<div><div>${esc(label)} <span class="muted">${human(value, unit)}${max && unit !== "%" ? ` / ${human(max, unit)}` : ""}</span></div>
    <div class="gauge"><span data-pct="${pct.toFixed(1)}"></span></div></div>`;
}

// CSP forbids style attributes in markup; widths are set through the CSSOM.
export function sizeGauges(root) {
  for (const bar of root.querySelectorAll(".gauge > span")) bar.style.width = `${bar.dataset.pct}%`;
}

export { NS };
