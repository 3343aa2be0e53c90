// The dashboard: a hash router over a few pages, each rendered from the API's JSON.
import { ApiError, get, optional, post, stream, token } from "./api.js";
import { esc, gauge, human, lineChart, sizeGauges, sparkline, unitOf } from "./charts.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
let page = null; // { stop() } of the page on screen: timers and streams to end when leaving

const ago = (ts) => {
  if (!ts) return "-";
  let s = Math.max(0, Math.floor(Date.now() / 1000 - ts));
  for (const [u, n] of [["d", 86400], ["h", 3600], ["m", 60]]) if (s >= n) return `${Math.floor(s / n)}${u}`;
  return `${s}s`;
};
// Set an element's HTML if it is still on the page: an answer may arrive after the user moved on.
function setHTML(id, html) {
  const el = document.getElementById(id);
  if (el) el.innerHTML = html;
}
const when = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "-");
const pill = (state) => `<span class="pill s-${esc(state)}">${esc(state)}</span>`;
const fail = (e) => `<p class="error">${esc(e.message)}${e.hint ? ` <span class="muted">(${esc(e.hint)})</span>` : ""}</p>`;

function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

function pageScope() {
  const timers = [];
  const ctrl = new AbortController();
  return {
    signal: ctrl.signal,
    every(ms, fn) { fn(); timers.push(setInterval(fn, ms)); },
    stop() { timers.forEach(clearInterval); ctrl.abort(); },
  };
}

// Metrics series are named by the metrics part of clawpen; pick them by name.
const pick = (series, re) => Object.entries(series || {}).filter(([n]) => re.test(n)).map(([name, points]) => ({ name, points }));

// ---------------------------------------------------------------- sign-in
function signIn(message) {
  nav.hidden = true;
  view.innerHTML = `<form class="card signin" id="signin">
    <h1>Sign in</h1>
    <p class="muted">Paste a clawpen token. Make one on the host with
      <code>clawpen token create --role viewer</code> (or operator, to start and stop bots).
      It is kept in this tab only (sessionStorage).</p>
    <input id="token" type="password" autocomplete="off" placeholder="cpt_..." required>
    <button type="submit">Sign in</button>
    <div id="signin-error" class="error">${esc(message || "")}</div></form>`;
  document.getElementById("signin").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    token.set(document.getElementById("token").value.trim());
    try {
      await get("/whoami");
      route();
    } catch (e) {
      token.clear();
      document.getElementById("signin-error").textContent = e instanceof ApiError && e.status === 401 ? "That token is not valid." : e.message;
    }
  });
}

// ---------------------------------------------------------------- overview
async function overview(scope) {
  view.innerHTML = `<h1>Overview</h1>
    <div class="card"><h2>Host</h2><div id="host" class="gauges"><span class="muted">loading…</span></div></div>
    <div class="card"><h2>Firing alerts</h2><div id="firing" class="muted">loading…</div></div>
    <div class="card table"><table id="bots"><thead><tr><th>Bot</th><th>State</th><th class="hide-narrow">Health</th>
      <th>Uptime</th><th>Restarts</th><th>CPU</th><th class="hide-narrow">Memory</th></tr></thead><tbody></tbody></table></div>`;
  const sparks = {};
  let withMetrics = true;
  const drawBots = (rows) => {
    const body = document.querySelector("#bots tbody");
    if (!body) return; // the page was left while the answer was on its way
    body.innerHTML = rows.map((r) => {
      const label = r.replica ? `${r.bot}[${r.replica}]` : r.bot;
      const m = sparks[r.bot] || {};
      return `<tr data-bot="${esc(label)}"><td><a href="#/bot/${encodeURIComponent(r.bot)}">${esc(label)}</a></td>
        <td class="state">${pill(r.state)}</td><td class="hide-narrow">${r.health ? pill(r.health) : "-"}</td>
        <td>${r.pid ? ago(r.started_at) : "-"}</td><td class="restarts">${r.restarts ?? 0}</td>
        <td>${m.cpu || ""}</td><td class="hide-narrow">${m.mem || ""}</td></tr>`;
    }).join("") || `<tr><td colspan="7" class="muted">no bots: run <code>clawpen up</code></td></tr>`;
  };
  let rows = [];
  let sparksAt = 0;
  scope.every(3000, async () => {
    try { rows = await get("/bots"); drawBots(rows); } catch (e) { view.querySelector("#bots tbody").innerHTML = `<tr><td colspan="7">${fail(e)}</td></tr>`; return; }
    if (Date.now() - sparksAt > 15000) { sparksAt = Date.now(); refreshSparks(); }
  });
  const refreshSparks = async () => {
    if (!withMetrics) return;
    for (const name of [...new Set(rows.map((r) => r.bot))].slice(0, 50)) {
      const m = await optional(`/metrics/${encodeURIComponent(name)}?since=900`).catch(() => null);
      if (m === null) { withMetrics = false; break; }
      const cpu = pick(m.series, /^cpu_percent$/)[0], mem = pick(m.series, /^memory_bytes$/)[0];
      sparks[name] = { cpu: cpu ? sparkline(cpu.points) : "", mem: mem ? sparkline(mem.points) : "" };
    }
    drawBots(rows);
  };
  scope.every(10000, async () => {
    const host = document.getElementById("host");
    const latest = await optional("/metrics/latest").catch((e) => ({ error: e }));
    if (latest === null) { host.innerHTML = `<span class="muted">metrics are not available in this daemon</span>`; return; }
    if (latest.error) { host.innerHTML = fail(latest.error); return; }
    const values = latest.host || {};
    const shown = Object.entries(values).filter(([k, v]) => typeof v === "number" && /percent|^load1$|available/.test(k));
    host.innerHTML = shown.map(([k, v]) => {
      const unit = unitOf(k), label = k.replace(/_percent|_bytes/g, "").replace(/_/g, " ").replace(/\{(.*)\}/, " $1");
      return unit === "%" ? gauge(label, v, 100, unit) : `<div><div>${esc(label)}</div><strong>${human(v, unit)}</strong></div>`;
    }).join("") || `<span class="muted">no host samples yet</span>`;
    sizeGauges(host);
  });
  scope.every(10000, async () => {
    const el = document.getElementById("firing");
    const alerts = await optional("/alerts").catch((e) => ({ error: e }));
    if (alerts === null) { el.textContent = "alerts are not available in this daemon"; return; }
    if (alerts.error) { el.innerHTML = fail(alerts.error); return; }
    const firing = (alerts.alerts || []).filter((a) => a.state === "firing");
    el.innerHTML = firing.length ? `<ul>${firing.map((a) => `<li>${pill(a.severity)} <a href="#/alerts">${esc(a.rule)}</a> on ${esc(a.target)}
      <span class="muted">${esc(a.summary)}${a.acked_by ? ` (acked by ${esc(a.acked_by)})` : ""}</span></li>`).join("")}</ul>` : "none";
    el.classList.toggle("muted", !firing.length);
  });
}

// ---------------------------------------------------------------- one bot
async function botPage(scope, name) {
  const q = encodeURIComponent(name);
  view.innerHTML = `<h1>${esc(name)} <span id="state"></span></h1>
    <div class="actions">
      <button id="act-start" data-op="start">Start</button>
      <button id="act-stop" data-op="stop">Stop</button>
      <button id="act-restart" data-op="restart">Restart</button>
      <span id="act-result" class="muted"></span></div>
    <div class="grid">
      <div class="card"><dl class="facts" id="facts"></dl></div>
      <div class="card"><h2>Events</h2><ul class="timeline" id="events"></ul></div>
    </div>
    <div class="card"><div class="toolbar"><h2>Metrics</h2>
      <select id="range"><option value="900">15 min</option><option value="3600" selected>1 hour</option>
      <option value="21600">6 hours</option><option value="86400">24 hours</option></select></div>
      <div id="charts" class="grid"></div></div>
    <div class="card"><div class="toolbar"><h2>Logs</h2>
      <input id="grep" type="search" placeholder="search (regular expression)"><span id="log-state" class="muted"></span></div>
      <pre id="log"></pre></div>
    <div class="card table"><h2>Egress</h2><div id="egress" class="muted">loading…</div></div>`;

  const refresh = async () => {
    try {
      const s = await get(`/bots/${q}`);
      const inst = s.instances[0] || {};
      setHTML("state", pill(inst.state || "stopped"));
      const restarts = s.instances.reduce((n, i) => n + (i.restarts || 0), 0);
      setHTML("facts", `
        <dt>Desired</dt><dd>${esc(s.desired)}</dd><dt>Replicas</dt><dd>${s.instances.length}</dd>
        <dt>PID</dt><dd>${esc(inst.pid ?? "-")}</dd><dt>Uptime</dt><dd>${inst.pid ? ago(inst.started_at) : "-"}</dd>
        <dt>Restarts</dt><dd id="restarts">${restarts}</dd><dt>Health</dt><dd>${esc(inst.health ?? "-")}</dd>
        <dt>Last exit</dt><dd>${inst.last_exit == null ? "-" : `${esc(inst.last_exit)} (${esc(inst.last_reason)})`}</dd>
        <dt>Release</dt><dd>${esc(s.release ?? "-")}</dd><dt>Command</dt><dd><code>${esc((s.spec.command || []).join(" "))}</code></dd>`);
    } catch (e) { setHTML("facts", fail(e)); }
  };
  scope.every(3000, refresh);

  for (const btn of view.querySelectorAll(".actions button")) {
    btn.addEventListener("click", async () => {
      const op = btn.dataset.op;
      if (!(await confirmAction(`${op[0].toUpperCase()}${op.slice(1)} ${name}?`))) return;
      const out = document.getElementById("act-result");
      try { await post(`/bots/${q}/${op}`); out.textContent = `${op} requested`; refresh(); } catch (e) { out.innerHTML = fail(e); }
    });
  }

  const events = document.getElementById("events");
  const addEvent = (e) => {
    const li = document.createElement("li");
    const change = e.to_state ? `${e.from_state} → ${e.to_state}` : e.kind;
    li.innerHTML = `<span class="muted">${esc(when(e.at))}</span> ${esc(change)} <span class="muted">${esc(e.reason)}</span>`;
    events.prepend(li);
    if (e.to_state) refresh();
  };
  stream(`/events/stream?bot=${q}&limit=30`, (_k, e) => addEvent(e), scope.signal).catch(() => {});

  const log = document.getElementById("log");
  let logCtrl = null;
  const addLine = (r) => {
    const line = document.createElement("div");
    line.className = `line ${r.stream}`;
    line.innerHTML = `<span class="ts">${esc(new Date(r.ts * 1000).toISOString().slice(11, 23))}</span> ${esc(r.text)}`;
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    log.append(line);
    while (log.childElementCount > 1000) log.firstElementChild.remove();
    if (atEnd) log.scrollTop = log.scrollHeight;
  };
  const follow = () => {
    if (logCtrl) logCtrl.abort();
    logCtrl = new AbortController();
    scope.signal.addEventListener("abort", () => logCtrl.abort());
    log.replaceChildren();
    const grep = document.getElementById("grep").value;
    const state = document.getElementById("log-state");
    state.textContent = "live";
    const query = `tail=200${grep ? `&grep=${encodeURIComponent(grep)}` : ""}`;
    stream(`/bots/${q}/logs/stream?${query}`, (kind, r) => { if (kind === "log") addLine(r); }, logCtrl.signal)
      .then(() => { state.textContent = "ended"; })
      .catch((e) => { if (e.name !== "AbortError") state.innerHTML = fail(e); });
  };
  let typing = null;
  document.getElementById("grep").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(follow, 400); });
  follow();

  const charts = async () => {
    const since = document.getElementById("range").value;
    const el = document.getElementById("charts");
    const m = await optional(`/metrics/${q}?since=${since}`).catch((e) => ({ error: e }));
    if (m === null) { el.innerHTML = `<p class="muted">metrics are not available in this daemon</p>`; return; }
    if (m.error) { el.innerHTML = fail(m.error); return; }
    const groups = [["CPU %", /^cpu_percent$/, "%"], ["Memory (in use, limit)", /^memory_(bytes|limit_bytes)$/, "bytes"],
      ["Network bytes/s (in, out)", /^net_(rx|tx)_bytes_per_s$/, "bytes"]];
    el.innerHTML = groups.map(([title, re, unit]) => `<div><h2>${title}</h2>${lineChart(pick(m.series, re), unit)}</div>`).join("");
  };
  document.getElementById("range").addEventListener("change", charts);
  scope.every(15000, charts);

  scope.every(10000, async () => {
    const el = document.getElementById("egress");
    const rows = await optional(`/bots/${q}/egress?since=86400&limit=100`).catch((e) => ({ error: e }));
    if (rows === null) { el.textContent = "the egress log is not available in this daemon"; return; }
    if (rows.error) { el.innerHTML = fail(rows.error); return; }
    const list = [...rows].sort((a, b) => b.at - a.at);
    el.classList.toggle("muted", !list.length);
    el.innerHTML = list.length ? `<table><tr><th>Time</th><th>Destination</th><th>Verdict</th><th class="hide-narrow">Reason</th>
      <th class="hide-narrow">Bytes out/in</th></tr>${list.map((r) => `<tr><td>${esc(when(r.at))}</td>
      <td class="wrap">${esc(r.kind === "dns" ? `dns ${r.host}` : `${r.host}:${r.port}`)}</td><td>${pill(r.verdict)}</td>
      <td class="wrap hide-narrow">${esc(r.reason)}</td><td class="hide-narrow">${human(r.up, "bytes")} / ${human(r.down, "bytes")}</td></tr>`).join("")}</table>`
      : "no connections in the last 24 hours";
  });
}

// ---------------------------------------------------------------- alerts
async function alertsPage(scope) {
  view.innerHTML = `<h1>Alerts</h1><div class="card table" id="alerts">loading…</div>
    <div class="card"><h2>Silence a rule</h2><form id="silence" class="toolbar">
      <select id="rule" required></select><select id="for"><option>30m</option><option selected>1h</option>
      <option>4h</option><option>24h</option></select><button type="submit">Silence</button><span id="silence-result"></span></form>
      <div id="silences" class="muted"></div></div>
    <div class="card table"><h2>Resolved in the last 24 hours</h2><div id="resolved" class="muted"></div></div>`;
  const table = (list, ack) => `<table><tr><th>State</th><th>Rule</th><th>On</th><th>Since</th><th class="hide-narrow">Summary</th>${ack ? "<th></th>" : ""}</tr>
    ${list.map((a) => `<tr><td>${pill(a.state)} ${pill(a.severity)}</td><td>${esc(a.rule)}</td><td>${esc(a.target)}</td>
    <td>${esc(when(a.fired_at || a.active_at))}</td><td class="wrap hide-narrow">${esc(a.summary)}</td>
    ${ack ? `<td>${a.acked_by ? `acked by ${esc(a.acked_by)}` : `<button data-ack="${esc(a.id)}">Ack</button>`}</td>` : ""}</tr>`).join("")}</table>`;
  let rulesShown = false;
  const draw = async () => {
    const el = document.getElementById("alerts");
    const data = await optional("/alerts").catch((e) => ({ error: e }));
    if (data === null) { el.innerHTML = `<p class="muted">alerts are not available in this daemon</p>`; return; }
    if (data.error) { el.innerHTML = fail(data.error); return; }
    const active = data.alerts || [];
    el.innerHTML = active.length ? table(active, true) : `<p class="muted">no alert is pending or firing</p>`;
    setHTML("resolved", (data.resolved || []).length ? table(data.resolved, false) : "none");
    const silences = Object.entries(data.silences || {});
    setHTML("silences", silences.map(([rule, s]) => `${esc(rule)} silenced until ${esc(when(s.until))}`).join("<br>"));
    if (!rulesShown) {
      rulesShown = true;
      setHTML("rule", (data.rules || []).map((r) => `<option>${esc(r.name)}</option>`).join(""));
    }
    for (const btn of el.querySelectorAll("button[data-ack]")) {
      btn.addEventListener("click", async () => {
        try { await post(`/alerts/${encodeURIComponent(btn.dataset.ack)}/ack`); draw(); } catch (e) { btn.outerHTML = fail(e); }
      });
    }
  };
  document.getElementById("silence").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = document.getElementById("silence-result");
    try {
      await post("/alerts/silence", { rule: document.getElementById("rule").value, for: document.getElementById("for").value });
      out.textContent = "silenced"; draw();
    } catch (e) { out.innerHTML = fail(e); }
  });
  scope.every(10000, draw);
}

// ---------------------------------------------------------------- releases
async function releasesPage() {
  view.innerHTML = `<h1>Releases</h1><div class="card table" id="releases">loading…</div>`;
  const el = document.getElementById("releases");
  try {
    const rows = await get("/releases?limit=200");
    el.innerHTML = rows.length ? `<table><tr><th>#</th><th>When</th><th class="hide-narrow">Who</th><th class="hide-narrow">Spec hash</th><th>Summary</th></tr>
      ${rows.map((r) => `<tr><td>${esc(r.id)}</td><td>${esc(when(r.created))}</td><td class="hide-narrow">${esc(r.who)}</td>
      <td class="hide-narrow"><code>${esc(r.spec_hash)}</code></td><td class="wrap">${esc(r.summary)}</td></tr>`).join("")}</table>` : `<p class="muted">no release yet: run <code>clawpen up</code></p>`;
  } catch (e) { el.innerHTML = fail(e); }
}

// ---------------------------------------------------------------- topology
async function topologyPage() {
  view.innerHTML = `<h1>Topology</h1><div class="card table" id="topo">loading…</div>
    <p class="muted">Host → bots → the clawpen gateway → the destinations each bot may reach; dashed: ports published on the host.</p>`;
  const el = document.getElementById("topo");
  let t;
  try { t = await get("/topology"); } catch (e) { el.innerHTML = fail(e); return; }
  const row = t.bots.some((b) => (b.publish || []).length) ? 48 : 34, boxH = 24, cols = [10, 190, 400, 560], widths = [150, 170, 120, 260];
  const bots = t.bots;
  const domains = [...new Set(bots.flatMap((b) => (Array.isArray(b.egress) ? b.egress : b.egress === "open" ? ["any public address"] : [])))];
  const n = Math.max(bots.length, domains.length, 1);
  const h = n * row + 20;
  const mid = h / 2 - boxH / 2;
  const box = (x, y, w, label, cls = "") => `<g class="${cls}"><rect x="${x}" y="${y}" width="${w}" height="${boxH}" rx="5"/>
    <text class="node-text" x="${x + 8}" y="${y + 16}">${esc(label.length > w / 7 ? `${label.slice(0, Math.floor(w / 7) - 1)}…` : label)}</text><title>${esc(label)}</title></g>`;
  const edge = (x1, y1, x2, y2, cls = "edge") => `<path class="${cls}" d="M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}"/>`;
  const by = (i) => 10 + i * row + (n - bots.length) * row / 2;
  const dy = (i) => 10 + i * row + (n - domains.length) * row / 2;
  let svg = box(cols[0], mid, widths[0], `host ${t.host}`);
  const anyEgress = bots.some((b) => b.egress && b.egress.length);
  if (anyEgress) svg += box(cols[2], mid, widths[2], "gateway");
  bots.forEach((b, i) => {
    const y = by(i);
    svg += edge(cols[0] + widths[0], mid + boxH / 2, cols[1], y + boxH / 2);
    if ((b.publish || []).length) {
      svg += edge(cols[0] + widths[0], mid + boxH / 2 + 4, cols[1], y + boxH / 2 + 4, "edge pub");
      svg += `<text x="${cols[1] + 4}" y="${y + boxH + 11}">published ${esc(b.publish.join(", "))}</text>`;
    }
    svg += box(cols[1], y, widths[1], `${b.bot} (${b.states.join(",") || "stopped"})`, `bot s-${esc(b.states[0] || "stopped")}`);
    if (b.egress && b.egress.length) svg += edge(cols[1] + widths[1], y + boxH / 2, cols[2], mid + boxH / 2);
  });
  domains.forEach((d, i) => {
    const y = dy(i);
    svg += edge(cols[2] + widths[2], mid + boxH / 2, cols[3], y + boxH / 2) + box(cols[3], y, widths[3], d, "domain");
  });
  el.innerHTML = bots.length ? `<svg class="topo" viewBox="0 0 840 ${h + 10}">${svg}</svg>` : `<p class="muted">no bots</p>`;
}

// ---------------------------------------------------------------- router
async function route() {
  if (page) page.stop();
  page = null;
  if (!token.get()) return signIn();
  nav.hidden = false;
  const hash = location.hash.slice(1) || "/";
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.getAttribute("href") === `#${hash}`);
  const scope = pageScope();
  page = scope;
  const [, first, rest] = hash.split("/");
  if (first === "bot" && rest) return botPage(scope, decodeURIComponent(rest));
  if (first === "alerts") return alertsPage(scope);
  if (first === "releases") return releasesPage(scope);
  if (first === "topology") return topologyPage(scope);
  return overview(scope);
}

window.addEventListener("hashchange", route);
window.addEventListener("clawpen:signedout", () => { token.clear(); if (page) page.stop(); page = null; signIn("Signed out: the token is not valid any more."); });
document.getElementById("signout").addEventListener("click", () => { token.clear(); route(); });
route();
