// Fieldhub operator dashboard: a dependency-free single page served by the
// hub. Live values arrive over /ws/live; history, devices and commands come
// from the REST API. The session is an HttpOnly cookie set at sign-in.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { me: null, view: null, live: null, liveDelay: 500, liveTimer: null, subscribed: [],
  page: { stack: [], after: "", next: "" }, rows: new Map(), device: null, charts: new Map(), range: "15m" };

// Requests of the current view; a view change or sign-out aborts them, so
// their answers never land on the wrong page.
let aborter = new AbortController();
function abortRequests() { aborter.abort(); aborter = new AbortController(); }

// signal defaults to the current view's; a function that awaits between
// requests passes the one it started with, so a request it makes after a
// view change or sign-out is aborted too instead of going out.
async function api(method, path, body, signal = aborter.signal) {
  const opts = { method, headers: {}, signal };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    if (e.name === "AbortError") return new Promise(() => {}); // the view is gone: never settle
    throw e;
  }
  let data = null;
  if (resp.status !== 204) { try { data = await resp.json(); } catch (e) { data = null; } }
  if (!resp.ok) {
    const err = new Error((data && data.error && data.error.message) || ("HTTP " + resp.status));
    err.status = resp.status;
    throw err;
  }
  return data;
}

function show(view) {
  for (const v of ["signin", "overview", "device"]) $(v).hidden = v !== view;
  state.view = view;
}

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Math.round((Date.now() - new Date(ts).getTime()) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 86400) return Math.floor(s / 3600) + "h ago";
  return Math.floor(s / 86400) + "d ago";
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

const canOperate = () => state.me && (state.me.role === "operator" || state.me.role === "admin");
const isAdmin = () => state.me && state.me.role === "admin";

// ---- sign-in -----------------------------------------------------------
async function boot() {
  try {
    const s = await api("GET", "/api/v1/session");
    state.me = s.signed_in ? s : null;
  } catch (e) {
    state.me = null;
  }
  $("who").hidden = $("signout").hidden = !state.me;
  if (!state.me) { show("signin"); closeLive(); return; }
  $("who").textContent = state.me.name + " (" + state.me.role + ")";
  openLive();
  route();
}

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("signin-error").textContent = "";
  try {
    await api("POST", "/api/v1/session", { token: $("token").value.trim() });
    $("token").value = "";
    await boot();
  } catch (e) {
    $("signin-error").textContent = e.status === 401 ? "That token was not accepted." : e.message;
  }
});

$("signout").addEventListener("click", async () => {
  abortRequests();
  closeLive(); // before the session ends: no reconnect with an ended session
  try { await api("DELETE", "/api/v1/session"); } catch (e) { /* signed out anyway */ }
  location.hash = "#/";
  await boot();
});

// ---- routing ----------------------------------------------------------
function route() {
  if (!state.me) return;
  abortRequests();
  const m = location.hash.match(/^#\/devices\/([^/]+)$/);
  if (m) openDevice(decodeURIComponent(m[1])); else openOverview();
}
window.addEventListener("hashchange", route);

// ---- live socket ------------------------------------------------------
function openLive() {
  if (state.live) return;
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/live");
  state.live = ws;
  ws.onopen = () => { state.liveDelay = 500; $("banner").hidden = true; resubscribe(); };
  ws.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { /* ignore a malformed event */ } };
  ws.onclose = (ev) => {
    state.live = null;
    if (!state.me) return;
    // 4003: the credential ended (signed out, expired, revoked); a new
    // socket would be refused, so ask the hub whether we are signed in.
    if (ev.code === 4003) { boot(); return; }
    // Exponential backoff with full jitter, capped at 30 s.
    const wait = Math.round(Math.random() * state.liveDelay);
    state.liveDelay = Math.min(30000, state.liveDelay * 2);
    $("banner").textContent = "Live connection lost; reconnecting in " + Math.max(1, Math.round(wait / 1000)) + " s…";
    $("banner").hidden = false;
    clearTimeout(state.liveTimer);
    state.liveTimer = setTimeout(openLive, wait);
  };
}

function closeLive() {
  clearTimeout(state.liveTimer);
  if (state.live) { const ws = state.live; state.live = null; ws.onclose = null; ws.close(); }
}

function subscribe(devices) {
  const ws = state.live;
  if (ws && ws.readyState === WebSocket.OPEN) {
    if (state.subscribed.length) ws.send(JSON.stringify({ type: "unsubscribe", devices: state.subscribed }));
    if (devices.length) ws.send(JSON.stringify({ type: "subscribe", devices }));
  }
  state.subscribed = devices;
}

function resubscribe() {
  const devs = state.subscribed;
  state.subscribed = [];
  subscribe(devs);
}

function onEvent(ev) {
  const row = state.rows.get(ev.device);
  if (row && ev.type === "presence") updateRowPresence(row, ev);
  if (row && ev.type === "reading") { row.lastSeen = new Date(ev.ts).toISOString(); row.cells.seen.textContent = ago(row.lastSeen); }
  if (state.device && ev.device === state.device.id) onDeviceEvent(ev);
}

// ---- overview -------------------------------------------------------
let statsTimer = null, seenTimer = null, searchTimer = null;

function openOverview() {
  show("overview");
  state.device = null;
  loadStats();
  clearInterval(statsTimer);
  statsTimer = setInterval(() => { if (state.view === "overview") loadStats(); }, 5000);
  clearInterval(seenTimer);
  seenTimer = setInterval(() => { for (const r of state.rows.values()) r.cells.seen.textContent = ago(r.lastSeen); }, 1000);
  state.page = { stack: [], after: "", next: "" };
  loadDevices();
}

async function loadStats() {
  try {
    const s = await api("GET", "/api/v1/stats");
    $("c-online").textContent = s.online;
    $("c-offline").textContent = s.devices - s.online;
    $("c-rps").textContent = s.readings_per_second.toFixed(1);
    $("c-rej").textContent = s.rejected_per_second.toFixed(1);
  } catch (e) { if (e.status === 401) boot(); }
}

async function loadDevices() {
  const q = new URLSearchParams({ limit: "50" });
  if ($("search").value) q.set("q", $("search").value);
  if ($("label").value.includes("=")) q.set("label", $("label").value);
  if ($("online-filter").value) q.set("online", $("online-filter").value);
  if (state.page.after) q.set("after", state.page.after);
  let data;
  try { data = await api("GET", "/api/v1/devices?" + q); } catch (e) { if (e.status === 401) boot(); return; }
  state.page.next = data.next;
  $("total").textContent = data.total + " devices";
  $("prev").disabled = state.page.stack.length === 0;
  $("next").disabled = !data.next;
  const tbody = $("device-rows");
  tbody.replaceChildren();
  state.rows.clear();
  for (const d of data.devices) {
    const cells = { dot: el("span", { class: "dot" + (d.online ? " on" : "") }), transport: el("td", {}, d.transport || "–"), seen: el("td", {}, ago(d.last_seen)) };
    const labels = Object.entries(d.labels || {}).map(([k, v]) => k + "=" + v).join(" ");
    const tr = el("tr", { class: "row", "data-device": d.id },
      el("td", {}, cells.dot), el("td", {}, d.id), el("td", { class: "hide-narrow" }, d.name || ""), cells.transport, cells.seen, el("td", { class: "hide-narrow muted" }, labels));
    tr.addEventListener("click", () => { location.hash = "#/devices/" + encodeURIComponent(d.id); });
    tbody.append(tr);
    state.rows.set(d.id, { cells, lastSeen: d.last_seen });
  }
  subscribe(data.devices.map((d) => d.id));
}

function updateRowPresence(row, ev) {
  row.cells.dot.className = "dot" + (ev.online ? " on" : "");
  if (ev.online && ev.transport) row.cells.transport.textContent = ev.transport;
}

$("next").addEventListener("click", () => { state.page.stack.push(state.page.after); state.page.after = state.page.next; loadDevices(); });
$("prev").addEventListener("click", () => { state.page.after = state.page.stack.pop() || ""; loadDevices(); });
for (const id of ["search", "label", "online-filter"]) {
  $(id).addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.page = { stack: [], after: "", next: "" }; loadDevices(); }, 250);
  });
}

// ---- device page ------------------------------------------------------
async function openDevice(id) {
  show("device");
  state.rows.clear();
  state.charts.clear();
  $("charts").replaceChildren();
  $("new-token").hidden = true;
  $("commands-panel").hidden = !canOperate();
  $("admin-panel").hidden = !isAdmin();
  let d;
  try { d = (await api("GET", "/api/v1/devices/" + encodeURIComponent(id))).device; } catch (e) {
    if (e.status === 401) { boot(); return; }
    $("d-id").textContent = id; $("d-presence").textContent = e.message; return;
  }
  state.device = { id, latest: {}, online: d.online };
  $("d-id").textContent = d.id;
  $("d-name").textContent = d.name || "";
  setPresence(d.online, d.transport, d.disconnect_reason, d.last_seen);
  subscribe([id]);
  loadHistory();
  loadTimeline();
  if (canOperate()) loadCommands();
}

function setPresence(online, transport, reason, lastSeen) {
  $("d-dot").className = "dot" + (online ? " on" : "");
  $("d-presence").textContent = online ? "online over " + (transport || "?") : "offline" + (reason ? " (" + reason + ")" : "") + ", last seen " + ago(lastSeen);
}

function onDeviceEvent(ev) {
  if (ev.type === "reading") {
    for (const [k, v] of Object.entries(ev.metrics || {})) {
      state.device.latest[k] = v;
      if (typeof v === "number") chartFor(k).push(ev.ts, v);
    }
    renderLatest(ev.ts);
  } else if (ev.type === "presence") {
    setPresence(ev.online, ev.transport, ev.reason, new Date(ev.at).toISOString());
    addTimeline(ev);
  } else if (ev.type === "command") {
    updateCommand(ev.id, ev.status);
  }
}

function renderLatest(ts) {
  const box = $("d-latest");
  box.replaceChildren();
  for (const [k, v] of Object.entries(state.device.latest).sort()) {
    box.append(el("div", {}, el("span", { class: "muted" }, k), el("b", { "data-metric": k }, typeof v === "number" ? String(Math.round(v * 1000) / 1000) : String(v))));
  }
  if (ts) box.title = "as of " + new Date(ts).toLocaleTimeString();
}

const ranges = { "15m": 15 * 60e3, "1h": 3600e3, "24h": 86400e3, "168h": 7 * 86400e3 };
for (const b of document.querySelectorAll(".ranges button")) {
  b.addEventListener("click", () => {
    for (const x of document.querySelectorAll(".ranges button")) x.classList.toggle("on", x === b);
    state.range = b.dataset.range;
    state.charts.clear();
    $("charts").replaceChildren();
    loadHistory();
  });
}

async function loadHistory() {
  const id = state.device.id, span = ranges[state.range], signal = aborter.signal;
  // Aggregate long ranges to about 300 points per chart.
  const every = span > 3600e3 ? Math.max(60, Math.round(span / 300 / 1000)) + "s" : "";
  let metrics = Object.keys(state.device.latest);
  if (!metrics.length) {
    // Learn the metric names from the most recent reading.
    try {
      const snap = await api("GET", "/api/v1/devices/" + encodeURIComponent(id) + "/latest", undefined, signal);
      for (const [k, v] of Object.entries(snap.metrics || {})) state.device.latest[k] = v;
      renderLatest(snap.ts);
      metrics = Object.keys(state.device.latest);
    } catch (e) { metrics = []; }
  }
  for (const m of metrics.filter((k) => typeof state.device.latest[k] === "number").slice(0, 12)) {
    const q = new URLSearchParams({ metric: m, start: "-" + state.range, stop: "now" });
    if (every) { q.set("every", every); q.set("fn", "mean"); } else { q.set("limit", "5000"); }
    try {
      const h = await api("GET", "/api/v1/devices/" + encodeURIComponent(id) + "/readings?" + q, undefined, signal);
      chartFor(m).load(h.points);
    } catch (e) { chartFor(m).note("history unavailable: " + e.message); }
  }
}

// A small canvas line chart: history plus live points within the range.
function chartFor(metric) {
  let c = state.charts.get(metric);
  if (c) return c;
  const canvas = el("canvas", { "data-metric": metric });
  const info = el("span", {}, "");
  $("charts").append(el("div", { class: "chart" }, el("div", { class: "title" }, el("span", {}, metric), info), canvas));
  const pts = [];
  let pending = false;
  const draw = () => {
    pending = false;
    const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    canvas.width = w * dpr; canvas.height = h * dpr;
    const g = canvas.getContext("2d");
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, h);
    const now = Date.now(), t0 = now - ranges[state.range];
    const vis = pts.filter((p) => p[0] >= t0);
    if (!vis.length) { g.fillStyle = "#6b7685"; g.fillText("no data in range", 8, h / 2); return; }
    let lo = Math.min(...vis.map((p) => p[1])), hi = Math.max(...vis.map((p) => p[1]));
    if (hi === lo) { hi += 1; lo -= 1; }
    const x = (t) => 30 + ((t - t0) / (now - t0)) * (w - 36), y = (v) => 6 + (1 - (v - lo) / (hi - lo)) * (h - 20);
    g.strokeStyle = "#dde2e8"; g.beginPath(); g.moveTo(30, h - 14); g.lineTo(w, h - 14); g.stroke();
    g.fillStyle = "#6b7685"; g.font = "10px system-ui";
    g.fillText(String(Math.round(hi * 100) / 100), 0, 12); g.fillText(String(Math.round(lo * 100) / 100), 0, h - 16);
    g.strokeStyle = "#2f6fde"; g.lineWidth = 1.5; g.beginPath();
    vis.forEach((p, i) => (i ? g.lineTo(x(p[0]), y(p[1])) : g.moveTo(x(p[0]), y(p[1]))));
    g.stroke();
    info.textContent = vis.length + " points";
  };
  const redraw = () => { if (!pending) { pending = true; requestAnimationFrame(draw); } };
  c = {
    load(points) { for (const p of points) if (typeof p.value === "number") pts.push([p.ts, p.value]); pts.sort((a, b) => a[0] - b[0]); redraw(); },
    push(ts, v) { pts.push([ts, v]); if (pts.length > 20000) pts.splice(0, pts.length - 20000); redraw(); },
    note(text) { info.textContent = text; },
  };
  state.charts.set(metric, c);
  redraw();
  return c;
}

async function loadTimeline() {
  $("timeline").replaceChildren();
  try {
    const p = await api("GET", "/api/v1/devices/" + encodeURIComponent(state.device.id) + "/presence");
    for (const ev of p.events.slice().reverse()) addTimeline(ev);
  } catch (e) { /* timeline is best effort */ }
}

function addTimeline(ev) {
  const text = new Date(ev.at).toLocaleString() + " — " + (ev.online ? "online (" + ev.transport + ")" : "offline" + (ev.reason ? ": " + ev.reason : ""));
  $("timeline").prepend(el("li", {}, el("span", { class: "dot" + (ev.online ? " on" : "") }), " " + text));
}

// ---- commands ---------------------------------------------------------
const cmdRows = new Map();
const cmdSeen = new Map(); // latest status seen per command id, rows or not

async function loadCommands() {
  $("cmd-rows").replaceChildren();
  cmdRows.clear();
  try {
    const data = await api("GET", "/api/v1/devices/" + encodeURIComponent(state.device.id) + "/commands?limit=20");
    for (const c of data.commands.slice().reverse()) addCommand(c);
  } catch (e) { $("cmd-error").textContent = e.message; }
}

function addCommand(c) {
  if (cmdRows.has(c.id)) { updateCommand(c.id, c.status); return; }
  const seen = cmdSeen.get(c.id);
  const st = seen && rank(seen) > rank(c.status) ? seen : c.status;
  const status = el("td", { class: "status-" + st, "data-command": c.id }, st);
  cmdRows.set(c.id, status);
  $("cmd-rows").prepend(el("tr", {}, el("td", {}, c.name), status, el("td", { class: "muted" }, new Date(c.created_at).toLocaleTimeString())));
}

const rank = (s) => (s === "queued" ? 0 : s === "sent" ? 1 : 2);

function updateCommand(id, status) {
  if (!cmdSeen.has(id) || rank(status) >= rank(cmdSeen.get(id))) cmdSeen.set(id, status);
  const td = cmdRows.get(id);
  // Never step back: the POST answer and the live events can arrive in either order.
  if (!td || rank(status) < rank(td.textContent)) return;
  td.textContent = status;
  td.className = "status-" + status;
}

$("cmd-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("cmd-error").textContent = "";
  let params = {};
  const raw = $("cmd-params").value.trim();
  if (raw) {
    try { params = JSON.parse(raw); } catch (e) { $("cmd-error").textContent = "params must be JSON, e.g. {\"seconds\":5}"; return; }
  }
  try {
    const r = await api("POST", "/api/v1/devices/" + encodeURIComponent(state.device.id) + "/commands", { name: $("cmd-name").value.trim(), params });
    addCommand(r.command);
  } catch (e) { $("cmd-error").textContent = e.message; }
});

$("rotate").addEventListener("click", async () => {
  const body = $("grace").checked ? { grace: "1h" } : {};
  try {
    const r = await api("POST", "/api/v1/devices/" + encodeURIComponent(state.device.id) + "/token", body);
    $("new-token").textContent = "New token (shown once; store it now): " + r.token;
    $("new-token").hidden = false;
  } catch (e) { $("new-token").textContent = e.message; $("new-token").hidden = false; }
});

$("revoke").addEventListener("click", async () => {
  if (!confirm("Delete " + state.device.id + "? Its token stops working and its sessions are closed.")) return;
  try { await api("DELETE", "/api/v1/devices/" + encodeURIComponent(state.device.id)); location.hash = "#/"; } catch (e) {
    $("new-token").textContent = e.message; $("new-token").hidden = false;
  }
});

boot();
