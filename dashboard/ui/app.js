// Fieldhub operator dashboard: a single page served by the hub, with no
// build step. Live values arrive over /ws/live; history, devices, commands
// and tokens come from the REST API; charts are uPlot (vendor/, MIT). The
// session is an HttpOnly cookie set at sign-in.
//
// Every view starts from a clean slate: a navigation aborts the previous
// view's requests, bumps state.gen (answers of an older generation are
// dropped) and clears every field the view shows, so a page never shows
// another device's data, and a button never acts on another device.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { me: null, view: null, gen: 0, live: null, liveDelay: 500, liveTimer: null, subscribed: [],
  page: { stack: [], after: "", next: "" }, rows: new Map(), list: [], sort: { key: "id", dir: 1 },
  device: null, charts: [], range: "15m", zoom: null, timers: [] };

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

const devPath = (id, rest) => "/api/v1/devices/" + encodeURIComponent(id) + (rest || "");

function show(view) {
  for (const v of ["signin", "overview", "device", "tokens", "alerts"]) $(v).hidden = v !== view;
  state.view = view;
  $("nav-devices").setAttribute("aria-current", view === "overview" || view === "device" ? "page" : "false");
  $("nav-tokens").setAttribute("aria-current", view === "tokens" ? "page" : "false");
  $("nav-alerts").setAttribute("aria-current", view === "alerts" ? "page" : "false");
}

// focusHeading moves the keyboard focus to the new view's heading, so a
// screen reader announces it and Tab continues from the top of the view.
function focusHeading(view) {
  const h = document.querySelector("#" + view + " h1");
  if (h) { h.tabIndex = -1; h.focus({ preventScroll: true }); }
}

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Math.round((Date.now() - new Date(ts).getTime()) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 86400) return Math.floor(s / 3600) + "h ago";
  return Math.floor(s / 86400) + "d ago";
}

const fmtTime = (ts) => (ts ? new Date(ts).toLocaleString() : "");

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role" || k === "scope") e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function fmtValue(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return String(Math.round(v * 1000) / 1000);
  return String(v);
}

// statusText is a device's state as text and colour, never colour alone.
function statusText(online) {
  return el("span", { class: "status" + (online ? " on" : "") }, el("span", { class: "dot" + (online ? " on" : ""), "aria-hidden": "true" }), online ? "online" : "offline");
}

const canOperate = () => state.me && (state.me.role === "operator" || state.me.role === "admin");
const isAdmin = () => state.me && state.me.role === "admin";
const natural = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

// confirmDialog asks before a destructive action, naming what it acts on.
// Escape or Cancel says no; the focus starts on Cancel and comes back.
function confirmDialog(text, okLabel) {
  return new Promise((resolve) => {
    const back = document.activeElement;
    $("dialog-text").textContent = text;
    $("dialog-ok").textContent = okLabel;
    $("dialog-shade").hidden = false;
    $("dialog-cancel").focus();
    const done = (yes) => {
      $("dialog-shade").hidden = true;
      $("dialog-ok").onclick = $("dialog-cancel").onclick = $("dialog-shade").onkeydown = null;
      if (back && back.focus) back.focus();
      resolve(yes);
    };
    $("dialog-ok").onclick = () => done(true);
    $("dialog-cancel").onclick = () => done(false);
    $("dialog-shade").onkeydown = (ev) => {
      if (ev.key === "Escape") { ev.preventDefault(); done(false); }
      if (ev.key === "Tab") { // two buttons: keep the focus inside
        ev.preventDefault();
        (document.activeElement === $("dialog-ok") ? $("dialog-cancel") : $("dialog-ok")).focus();
      }
    };
  });
}

// ---- sign-in -----------------------------------------------------------
async function boot() {
  try {
    const s = await api("GET", "/api/v1/session");
    state.me = s.signed_in ? s : null;
  } catch (e) {
    state.me = null;
  }
  $("who").hidden = $("signout").hidden = $("nav").hidden = !state.me;
  if (!state.me) { leaveView(); show("signin"); closeLive(); return; }
  $("who").textContent = state.me.name + " (" + state.me.role + ")";
  $("nav-tokens").hidden = !isAdmin();
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

// leaveView ends everything the previous view started: its requests, its
// timers, its charts and every value it showed.
function leaveView() {
  abortRequests();
  state.gen++;
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  resetDevicePage();
  state.rows.clear();
}

function route() {
  if (!state.me) return;
  leaveView();
  const m = location.hash.match(/^#\/devices\/([^/]+)$/);
  const am = location.hash.match(/^#\/alerts(?:\/([^/]+))?$/); // alerts.js
  if (m) openDevice(decodeURIComponent(m[1]));
  else if (am) openAlerts(am[1] && decodeURIComponent(am[1]));
  else if (location.hash === "#/tokens") openTokens();
  else openOverview();
}
window.addEventListener("hashchange", () => { route(); focusHeading(state.view); });

// ---- live socket ------------------------------------------------------
function openLive() {
  if (state.live) return;
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/live");
  state.live = ws;
  ws.onopen = () => { state.liveDelay = 500; $("banner").hidden = true; resubscribe(); };
  ws.onmessage = (m) => { let ev; try { ev = JSON.parse(m.data); } catch (e) { return; /* ignore a malformed event */ } onEvent(ev); };
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
  if (ev.type === "alert") { alertEvent(ev); return; } // alerts.js
  const row = state.rows.get(ev.device);
  if (row && ev.type === "presence") updateRowPresence(row, ev);
  if (row && ev.type === "reading") {
    row.d.last_seen = new Date(ev.ts).toISOString();
    row.cells.seen.textContent = ago(row.d.last_seen);
    Object.assign(row.latest, ev.metrics || {});
    row.cells.latest.textContent = latestSummary(row.latest);
  }
  if (state.device && state.view === "device") onDeviceEvent(ev);
}

// ---- overview -------------------------------------------------------
let searchTimer = null;

function openOverview() {
  show("overview");
  loadStats();
  state.timers.push(setInterval(loadStats, 5000));
  state.timers.push(setInterval(() => { for (const r of state.rows.values()) r.cells.seen.textContent = ago(r.d.last_seen); }, 1000));
  state.page = { stack: [], after: "", next: "" };
  loadDevices();
  alertsOverview(); // alerts.js: the firing-alerts banner
}

async function loadStats() {
  const gen = state.gen;
  try {
    const s = await api("GET", "/api/v1/stats");
    if (gen !== state.gen) return;
    $("c-total").textContent = s.devices;
    $("c-online").textContent = s.online;
    $("c-offline").textContent = s.devices - s.online;
    $("c-rps").textContent = s.readings_per_second.toFixed(1);
    $("c-rej").textContent = s.rejected_per_second.toFixed(1);
  } catch (e) { if (e.status === 401) boot(); }
}

function latestSummary(m) {
  return Object.keys(m).sort(natural.compare).slice(0, 4).map((k) => k + " " + fmtValue(m[k])).join(" · ");
}

async function loadDevices() {
  const gen = state.gen, signal = aborter.signal;
  const q = new URLSearchParams({ limit: "100" });
  if ($("search").value) q.set("q", $("search").value);
  if ($("label").value.includes("=")) q.set("label", $("label").value);
  if ($("online-filter").value) q.set("online", $("online-filter").value);
  // The whole fleet is sorted on the hub, not this page: the page is the
  // next 100 of that order (natural order of ids by default).
  q.set("sort", state.sort.key);
  q.set("order", state.sort.dir > 0 ? "asc" : "desc");
  if (state.page.after) q.set("offset", state.page.after);
  for (const b of document.querySelectorAll(".cards button")) b.setAttribute("aria-pressed", String(b.dataset.filter === $("online-filter").value));
  let data;
  try { data = await api("GET", "/api/v1/devices?" + q, undefined, signal); } catch (e) { if (e.status === 401) boot(); return; }
  if (gen !== state.gen) return;
  state.page.next = data.next;
  $("total").textContent = data.total + " devices";
  $("prev").disabled = state.page.stack.length === 0;
  $("next").disabled = !data.next;
  state.rows.clear();
  state.list = data.devices.map((d) => {
    const cells = { status: el("td", {}, statusText(d.online)), transport: el("td", { class: "hide-narrow" }, d.online ? d.transport || "–" : "–"),
      seen: el("td", {}, ago(d.last_seen)), since: el("td", { class: "hide-narrow" }, d.online ? "" : fmtTime(d.last_seen)),
      latest: el("td", { class: "hide-narrow vals" }, "") };
    const labels = Object.entries(d.labels || {}).map(([k, v]) => k + "=" + v).join(" ");
    const href = "#/devices/" + encodeURIComponent(d.id);
    const tr = el("tr", { class: "row", "data-device": d.id },
      cells.status, el("td", {}, el("a", { href }, d.id)), el("td", { class: "hide-narrow" }, d.name || ""), cells.transport, cells.seen, cells.since,
      el("td", { class: "hide-narrow" }, d.rejected ? el("a", { href: href + "", title: "see why on the device page" }, String(d.rejected)) : "0"),
      cells.latest, el("td", { class: "hide-narrow muted" }, labels));
    // The link is the keyboard's way in; a click anywhere on the row is the mouse's.
    tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") location.hash = href; });
    const row = { d, cells, tr, latest: {} };
    state.rows.set(d.id, row);
    return row;
  });
  renderRows();
  subscribe(data.devices.map((d) => d.id));
  loadRowLatest(gen, signal);
  if (typeof ledgerMarkRows === "function") ledgerMarkRows(gen, signal); // ledger.js
}

// loadRowLatest fills the latest-values column, a few requests at a time;
// live readings keep it current afterwards.
async function loadRowLatest(gen, signal) {
  const queue = state.list.slice();
  const worker = async () => {
    while (queue.length && gen === state.gen) {
      const row = queue.shift();
      try {
        const snap = await api("GET", devPath(row.d.id, "/latest"), undefined, signal);
        if (gen !== state.gen) return;
        row.latest = Object.assign({}, snap.metrics || {}, row.latest);
        row.cells.latest.textContent = latestSummary(row.latest);
      } catch (e) { /* the column stays empty */ }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
}

const sorters = {
  id: (a, b) => natural.compare(a.d.id, b.d.id),
  name: (a, b) => natural.compare(a.d.name || "", b.d.name || ""),
  status: (a, b) => Number(b.d.online) - Number(a.d.online),
  transport: (a, b) => natural.compare(a.d.online ? a.d.transport || "" : "", b.d.online ? b.d.transport || "" : ""),
  rejected: (a, b) => (b.d.rejected || 0) - (a.d.rejected || 0),
  seen: (a, b) => (Date.parse(b.d.last_seen || 0) || 0) - (Date.parse(a.d.last_seen || 0) || 0),
  since: (a, b) => (a.d.online ? 1 : 0) - (b.d.online ? 1 : 0) || (Date.parse(a.d.last_seen || 0) || 0) - (Date.parse(b.d.last_seen || 0) || 0),
};

function renderRows() {
  const { key, dir } = state.sort;
  const rows = state.list.slice().sort((a, b) => dir * sorters[key](a, b) || natural.compare(a.d.id, b.d.id));
  $("device-rows").replaceChildren(...rows.map((r) => r.tr));
  for (const b of document.querySelectorAll("button.sort")) {
    b.parentElement.setAttribute("aria-sort", b.dataset.sort === key ? (dir > 0 ? "ascending" : "descending") : "none");
  }
}

for (const b of document.querySelectorAll("button.sort")) {
  b.addEventListener("click", () => {
    state.sort = { key: b.dataset.sort, dir: state.sort.key === b.dataset.sort ? -state.sort.dir : 1 };
    renderRows(); // at once for this page, then the fleet's order from the hub
    reloadDevices();
  });
}

function updateRowPresence(row, ev) {
  row.d.online = ev.online;
  row.cells.status.replaceChildren(statusText(ev.online));
  if (ev.online && ev.transport) row.d.transport = ev.transport;
  row.cells.transport.textContent = ev.online ? row.d.transport || "–" : "–";
  if (!ev.online) row.d.last_seen = new Date(ev.at).toISOString();
  row.cells.since.textContent = ev.online ? "" : fmtTime(ev.at);
}

function reloadDevices() { state.page = { stack: [], after: "", next: "" }; loadDevices(); }
$("next").addEventListener("click", () => { state.page.stack.push(state.page.after); state.page.after = state.page.next; loadDevices(); });
$("prev").addEventListener("click", () => { state.page.after = state.page.stack.pop() || ""; loadDevices(); });
for (const id of ["search", "label", "online-filter"]) {
  $(id).addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(reloadDevices, 250); });
}
for (const b of document.querySelectorAll(".cards button")) {
  b.addEventListener("click", () => { $("online-filter").value = b.dataset.filter; reloadDevices(); });
}

// ---- device page ------------------------------------------------------

// resetDevicePage clears every field of the device page and destroys its
// charts; it runs on every navigation and before a device loads.
function resetDevicePage() {
  state.device = null;
  state.zoom = null;
  for (const c of state.charts) if (c.u) c.u.destroy();
  state.charts = [];
  for (const id of ["d-id", "d-name", "d-presence", "d-labels", "d-error", "charts-note", "timeline-note", "rej-total", "cmd-error", "edit-status", "tz"]) $(id).textContent = "";
  for (const id of ["d-status", "d-latest", "charts", "timeline", "rej-rows", "cmd-rows"]) $(id).replaceChildren();
  for (const id of ["cmd-name", "cmd-params", "edit-name", "edit-labels", "compare"]) $(id).value = "";
  $("combine").checked = false;
  $("grace").checked = false;
  $("new-token").textContent = "";
  $("new-token").hidden = true;
  $("reset-zoom").hidden = true;
  $("device-body").hidden = true;
  for (const id of ["export-csv", "export-jsonl"]) $(id).removeAttribute("href"); // set again once the catalogue is known
  $("export-more").replaceChildren();
  cmdRows.clear();
  cmdSeen.clear();
  if (typeof ledgerReset === "function") ledgerReset(); // ledger.js
  if (typeof statePanel !== "undefined") statePanel.reset(); // state.js
}

async function openDevice(id) {
  show("device");
  const gen = state.gen, signal = aborter.signal;
  $("d-id").textContent = id;
  let d;
  try { d = (await api("GET", devPath(id), undefined, signal)).device; } catch (e) {
    if (gen !== state.gen) return;
    if (e.status === 401) { boot(); return; }
    $("d-error").textContent = e.status === 404 ? "No device " + id + " is registered on this hub." : "Could not load " + id + ": " + e.message;
    return;
  }
  if (gen !== state.gen) return;
  state.device = { id, d, latest: {}, catalogue: [], gen };
  $("device-body").hidden = false;
  $("commands-panel").hidden = false;
  $("cmd-form").hidden = !canOperate();
  $("admin-panel").hidden = $("edit-panel").hidden = !isAdmin();
  $("tz").textContent = "times in " + Intl.DateTimeFormat().resolvedOptions().timeZone;
  renderDeviceHeader(d);
  subscribe([id]);
  alertsDevice(id); // alerts.js: the device's open alerts
  loadLatest().then(loadCatalogue).then(loadCharts);
  loadTimeline();
  loadRejections();
  loadCommands();
  if (typeof ledgerLoad === "function") { ledgerLoad(); state.timers.push(setInterval(ledgerLoad, 5000)); } // ledger.js
  if (typeof statePanel !== "undefined") statePanel.open(state.device); // state.js
  state.timers.push(setInterval(() => { loadRejections(); if (state.device && !state.device.d.online) setPresence(state.device.d); }, 5000));
}

function renderDeviceHeader(d) {
  $("d-id").textContent = d.id;
  $("d-name").textContent = d.name || "";
  const labels = Object.entries(d.labels || {}).map(([k, v]) => k + "=" + v);
  $("d-labels").textContent = labels.length ? "labels: " + labels.join(", ") : "no labels";
  $("edit-name").value = d.name || "";
  $("edit-labels").value = labels.join("\n");
  setPresence(d);
}

function setPresence(d) {
  $("d-status").replaceChildren(statusText(d.online));
  $("d-presence").textContent = d.online ? "over " + (d.transport || "?") + (d.connected_at ? " since " + fmtTime(d.connected_at) : "")
    : (d.last_seen ? "since " + fmtTime(d.last_seen) + " (" + ago(d.last_seen) + ")" : "never connected") + (d.disconnect_reason ? "; reason: " + d.disconnect_reason : "");
}

function onDeviceEvent(ev) {
  const dev = state.device;
  if (ev.type === "reading") {
    if (ev.device === dev.id) {
      for (const [k, v] of Object.entries(ev.metrics || {})) dev.latest[k] = v;
      renderLatest(ev.ts);
      const known = new Set(dev.catalogue.map((m) => m.name));
      const fresh = Object.keys(ev.metrics || {}).filter((k) => !known.has(k));
      if (fresh.length && dev.catalogueReady) {
        for (const k of fresh) dev.catalogue.push({ name: k, type: typeOf(ev.metrics[k]) });
        loadCharts();
      }
    }
    for (const c of state.charts) c.push(ev);
  } else if (ev.device !== dev.id) {
    return;
  } else if (ev.type === "presence") {
    Object.assign(dev.d, { online: ev.online, transport: ev.transport || dev.d.transport, disconnect_reason: ev.reason || "" });
    if (ev.online) dev.d.connected_at = new Date(ev.at).toISOString(); else dev.d.last_seen = new Date(ev.at).toISOString();
    setPresence(dev.d);
    addTimeline(ev);
  } else if (ev.type === "command") {
    updateCommand(ev.id, ev.status);
  } else if (ev.type === "state" && typeof statePanel !== "undefined") {
    statePanel.onEvent(ev); // state.js
  }
}

const typeOf = (v) => (typeof v === "boolean" ? "bool" : typeof v === "string" ? "string" : "number");

function renderLatest(ts) {
  const box = $("d-latest");
  box.replaceChildren();
  for (const [k, v] of Object.entries(state.device.latest).sort((a, b) => natural.compare(a[0], b[0]))) {
    const unit = unitOf(state.device.d, k);
    box.append(el("div", {}, el("span", { class: "muted" }, k), el("b", { "data-metric": k }, fmtValue(v) + (unit && typeof v === "number" ? " " + unit : ""))));
  }
  if (ts) box.title = "as of " + new Date(ts).toLocaleTimeString();
}

async function loadLatest() {
  const dev = state.device;
  try {
    const snap = await api("GET", devPath(dev.id, "/latest"));
    if (dev !== state.device) return;
    for (const [k, v] of Object.entries(snap.metrics || {})) if (!(k in dev.latest)) dev.latest[k] = v;
    renderLatest(snap.ts);
  } catch (e) { /* live values fill it */ }
}

// loadCatalogue learns the device's metrics and their types from the hub
// (InfluxDB and the schema store: it survives restarts); a hub without the
// catalogue endpoint falls back to the latest values since it started.
async function loadCatalogue() {
  const dev = state.device;
  if (!dev) return;
  try {
    const c = await api("GET", devPath(dev.id, "/metrics"));
    if (dev !== state.device) return;
    dev.catalogue = (c.metrics || []).map((m) => ({ name: m.name, type: m.type, first: m.first_seen, last: m.last_seen }));
  } catch (e) {
    if (dev !== state.device) return;
    dev.catalogue = Object.entries(dev.latest).map(([k, v]) => ({ name: k, type: typeOf(v) }));
  }
  dev.catalogue.sort((a, b) => natural.compare(a.name, b.name));
  dev.catalogueReady = true;
}

// unitOf reads a metric's unit from the device label unit.<metric>.
const unitOf = (d, metric) => (d && d.labels && d.labels["unit." + metric]) || "";

// ---- charts -----------------------------------------------------------
const ranges = { "15m": 15 * 60e3, "1h": 3600e3, "24h": 86400e3, "168h": 7 * 86400e3 };
const rangeNames = { "15m": "the last 15 minutes", "1h": "the last hour", "24h": "the last 24 hours", "168h": "the last 7 days" };
const palette = ["#2459c2", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#be185d"];
const maxCharts = 16, maxSeries = 12;

for (const b of document.querySelectorAll(".ranges button")) {
  b.addEventListener("click", () => {
    for (const x of document.querySelectorAll(".ranges button")) x.setAttribute("aria-pressed", String(x === b));
    state.range = b.dataset.range;
    state.zoom = null;
    loadCharts();
  });
}
$("reset-zoom").addEventListener("click", () => { state.zoom = null; loadCharts(); });
// A new width asks for as many points again, drawn at the new size (a
// change of height alone, or of a scrollbar's width, does not).
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    const changed = state.charts.some((c) => c.points && Math.abs(Math.min(2000, c.plot.clientWidth) - c.points) > 32);
    if (state.view === "device" && changed) loadCharts();
  }, 300);
});
$("combine").addEventListener("change", () => loadCharts());
$("compare").addEventListener("change", () => loadCharts());

// view is the time window the charts show: the zoom, or the range up to now.
function view() {
  if (state.zoom) return { min: state.zoom.min, max: state.zoom.max, live: false };
  const now = Date.now();
  return { min: now - ranges[state.range], max: now, live: true };
}

function compareDevices() {
  return $("compare").value.split(/[\s,]+/).filter((s) => s && s !== state.device.id).slice(0, 4);
}

// chartSpecs turns the catalogue into charts: one per metric, or all
// numbers on one; each series is a (device, metric) pair.
function chartSpecs() {
  const dev = state.device, others = compareDevices(), devs = [dev.id, ...others];
  const specs = [];
  const nums = dev.catalogue.filter((m) => m.type === "number");
  if ($("combine").checked && nums.length) {
    const series = [];
    for (const m of nums) for (const d of devs) series.push({ device: d, metric: m.name });
    specs.push({ key: "numbers", title: nums.map((m) => m.name).join(", "), kind: "number", series: series.slice(0, maxSeries) });
  }
  for (const m of dev.catalogue) {
    if (m.type === "number" && $("combine").checked) continue;
    const series = m.type === "number" ? devs.map((d) => ({ device: d, metric: m.name })) : [{ device: dev.id, metric: m.name }];
    specs.push({ key: m.name, title: m.name, kind: m.type === "bool" ? "bool" : m.type === "string" ? "string" : "number", series });
  }
  return specs.slice(0, maxCharts);
}

async function loadCharts() {
  const dev = state.device;
  if (!dev || !dev.catalogueReady) return;
  for (const c of state.charts) if (c.u) c.u.destroy();
  state.charts = [];
  $("charts").replaceChildren();
  $("reset-zoom").hidden = !state.zoom;
  subscribe([dev.id, ...compareDevices()]);
  updateExportLinks();
  const specs = chartSpecs();
  $("charts-note").textContent = specs.length ? "" : "This device has sent no readings yet.";
  const v = view();
  const charts = specs.map((s) => newChart(s, v));
  state.charts = charts;
  await Promise.all(charts.map((c) => c.load()));
}

// seriesPoints fetches one series, downsampled by the hub to at most
// `points` points (the chart's width in pixels).
async function seriesPoints(device, metric, v, points, signal) {
  const q = new URLSearchParams({ metric, start: String(Math.floor(v.min)), stop: String(Math.ceil(v.max)), points: String(points) });
  const h = await api("GET", devPath(device, "/readings?" + q), undefined, signal);
  return h.points || [];
}

// withGaps inserts a null where no point came for much longer than the
// spacing of the points (a hub restart, a device offline), so a line is
// never drawn across a gap. The hub already sends empty windows as nulls
// when it downsamples; this covers raw answers.
function withGaps(pts, v, points) {
  const out = [];
  const steps = [];
  for (let i = 1; i < pts.length; i++) steps.push(pts[i].ts - pts[i - 1].ts);
  steps.sort((a, b) => a - b);
  const median = steps.length ? steps[Math.floor(steps.length / 2)] : 0;
  const gap = Math.max(5 * median, 2.5 * ((v.max - v.min) / points), 2000);
  for (let i = 0; i < pts.length; i++) {
    if (i > 0 && pts[i].ts - pts[i - 1].ts > gap && pts[i - 1].value !== null && pts[i].value !== null) out.push({ ts: pts[i - 1].ts + 1, value: null });
    out.push(pts[i]);
  }
  return out;
}

function newChart(spec, v) {
  const dev = state.device, gen = state.gen, signal = aborter.signal;
  const title = el("h3", {}, spec.title);
  const info = el("span", { class: "info" }, "loading…");
  const plot = el("div", { class: "plot" });
  const unit = spec.series.length && spec.series.every((s) => unitOf(dev.d, s.metric) === unitOf(dev.d, spec.series[0].metric)) ? unitOf(dev.d, spec.series[0].metric) : "";
  const box = el("figure", { class: spec.series.length > 2 ? "chart wide" : "chart", "data-metric": spec.key, "aria-label": spec.title + " over " + (state.zoom ? "the zoomed window" : rangeNames[state.range]) },
    el("figcaption", { class: "title" }, title, info), plot);
  $("charts").append(box);
  const c = { spec, box, plot, info, u: null, data: null, cats: [], view: v, unit, pending: false };
  const label = (s) => s.metric + (spec.series.some((x) => x.device !== dev.id) ? " @" + s.device : "");
  const toY = (val) => {
    if (val === null || val === undefined) return null;
    if (spec.kind === "bool") return val === true ? 1 : val === false ? 0 : null;
    if (spec.kind === "string") { let i = c.cats.indexOf(String(val)); if (i < 0) { c.cats.push(String(val)); i = c.cats.length - 1; } return i; }
    return typeof val === "number" ? val : null;
  };
  c.load = async () => {
    const width = Math.max(100, Math.round(plot.clientWidth || 400));
    const points = Math.min(2000, width);
    c.points = points;
    let tables;
    try {
      tables = await Promise.all(spec.series.map(async (s) => {
        const pts = withGaps(await seriesPoints(s.device, s.metric, v, points, signal), v, points);
        return [pts.map((p) => p.ts), pts.map((p) => toY(p.value))];
      }));
    } catch (e) {
      if (gen === state.gen) info.textContent = "history unavailable: " + e.message;
      return;
    }
    if (gen !== state.gen) return;
    c.data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    c.draw();
  };
  c.summary = () => {
    const ys = c.data ? c.data.slice(1).flat().filter((y) => y !== null && y !== undefined) : [];
    if (!ys.length) return "no data in this window";
    const n = ys.length + (ys.length === 1 ? " point" : " points");
    if (spec.kind === "number") return n + " · min " + fmtValue(ys.reduce((a, b) => Math.min(a, b))) + " · max " + fmtValue(ys.reduce((a, b) => Math.max(a, b))) + (unit ? " " + unit : "");
    if (spec.kind === "bool") return n + " · last " + (ys[ys.length - 1] ? "true" : "false");
    return n + " · " + c.cats.length + (c.cats.length === 1 ? " value" : " values");
  };
  c.draw = () => {
    if (c.u) c.u.destroy();
    const opts = chartOptions(c, spec, label, Math.max(100, plot.clientWidth || 400));
    c.u = new uPlot(opts, c.data, plot);
    c.u.setScale("x", { min: c.view.min, max: c.view.max });
    info.textContent = c.summary();
  };
  // push adds a live reading to a chart that shows the window up to now.
  c.push = (ev) => {
    if (!c.data || !c.view.live) return;
    const idx = spec.series.map((s) => (s.device === ev.device && ev.metrics && s.metric in ev.metrics ? toY(ev.metrics[s.metric]) : undefined));
    if (idx.every((y) => y === undefined)) return;
    const n = c.data[0].length, last = n ? c.data[0][n - 1] : -Infinity;
    if (ev.ts <= last) return; // keep time order
    // At most one point per pixel, as the history was fetched: a reading
    // closer than that to the last point replaces its values, so a page
    // left open holds a bounded number of points.
    const step = (c.view.max - c.view.min) / (c.points || 1000);
    if (n && ev.ts - last < step && !spec.series.some((_, i) => c.data[i + 1][n - 1] === null)) {
      idx.forEach((y, i) => { if (y !== undefined) c.data[i + 1][n - 1] = y; });
    } else {
      c.data[0].push(ev.ts);
      idx.forEach((y, i) => c.data[i + 1].push(y));
    }
    if (c.pending) return;
    c.pending = true;
    requestAnimationFrame(() => {
      c.pending = false;
      if (!c.u || gen !== state.gen) return;
      const now = Date.now(), span = ranges[state.range];
      c.view = { min: now - span, max: now, live: true };
      let cut = 0;
      while (cut < c.data[0].length && c.data[0][cut] < c.view.min) cut++;
      if (cut) c.data = c.data.map((a) => a.slice(cut));
      c.u.setData(c.data, false);
      c.u.setScale("x", { min: c.view.min, max: c.view.max });
      info.textContent = c.summary();
    });
  };
  return c;
}

function chartOptions(c, spec, label, width) {
  const series = [{ label: "time", value: (u, ts) => (ts == null ? "–" : new Date(ts).toLocaleString()) }];
  spec.series.forEach((s, i) => {
    const color = palette[i % palette.length];
    // Few points, or points between gaps, draw no line: show them as dots.
    const values = c.data ? c.data[i + 1].filter((y) => y !== null && y !== undefined).length : 0;
    const base = { label: label(s), stroke: color, width: 1.5, spanGaps: false, points: { show: values < 120, size: 5, fill: color } };
    if (spec.kind === "bool") {
      Object.assign(base, { paths: uPlot.paths.stepped({ align: 1 }), fill: color + "33", value: (u, y) => (y == null ? "–" : y ? "true" : "false") });
    } else if (spec.kind === "string") {
      Object.assign(base, { paths: uPlot.paths.stepped({ align: 1 }), points: { show: true, size: 5, fill: color }, value: (u, y) => (y == null ? "–" : c.cats[y]) });
    } else {
      base.value = (u, y) => (y == null ? "–" : fmtValue(y) + (c.unit ? " " + c.unit : ""));
    }
    series.push(base);
  });
  const yAxis = { label: c.unit || (spec.kind === "number" ? "" : spec.title), size: 60, grid: { show: true, stroke: "#e3e7ec" } };
  const scales = { x: { time: true } };
  if (spec.kind === "bool") {
    scales.y = { range: [-0.2, 1.2] };
    Object.assign(yAxis, { splits: () => [0, 1], values: (u, sp) => sp.map((y) => (y ? "true" : "false")) });
  } else if (spec.kind === "string") {
    scales.y = { range: () => [-0.5, Math.max(0.5, c.cats.length - 0.5)] };
    Object.assign(yAxis, { splits: () => c.cats.map((_, i) => i), values: (u, sp) => sp.map((y) => c.cats[y] || ""), size: 90 });
  }
  return {
    width, height: 180, ms: 1, scales, series,
    axes: [{ grid: { show: true, stroke: "#e3e7ec" } }, yAxis],
    legend: { live: true },
    // The cursor snaps to the nearest value within 30 px, skipping empty windows.
    cursor: { drag: { x: true, y: false, setScale: false }, hover: { skip: [null, undefined], prox: 30 } },
    plugins: [tooltipPlugin()],
    hooks: { setSelect: [(u) => {
      if (u.select.width < 5) return;
      const min = u.posToVal(u.select.left, "x"), max = u.posToVal(u.select.left + u.select.width, "x");
      u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
      zoomTo(min, max);
    }] },
  };
}

// zoomTo shows [min, max] on every chart, fetched again at full resolution.
function zoomTo(min, max) {
  if (!(max > min)) return;
  state.zoom = { min: Math.floor(min), max: Math.ceil(Math.max(max, min + 1000)) };
  loadCharts();
}

// tooltipPlugin shows the time and the values under the cursor.
function tooltipPlugin() {
  let tip;
  return { hooks: {
    init: (u) => { tip = el("div", { class: "u-tooltip", role: "tooltip" }); tip.hidden = true; u.over.append(tip); },
    setCursor: (u) => {
      const idxs = u.cursor.idxs || [];
      const hit = idxs.findIndex((i, s) => s > 0 && i != null);
      if (hit < 0 || u.cursor.left < 0) { tip.hidden = true; return; }
      const lines = [new Date(u.data[0][idxs[hit]]).toLocaleString()];
      for (let s = 1; s < u.series.length; s++) {
        const i = idxs[s];
        if (i != null && u.data[s][i] != null) lines.push(u.series[s].label + ": " + u.series[s].value(u, u.data[s][i], s, i));
      }
      tip.textContent = lines.join("\n");
      tip.hidden = false;
      const left = u.cursor.left + 12, w = tip.offsetWidth;
      tip.style.left = (left + w > u.over.clientWidth ? Math.max(0, u.cursor.left - w - 12) : left) + "px";
      tip.style.top = Math.max(0, u.cursor.top - 10) + "px";
    },
  } };
}

// ---- export -----------------------------------------------------------
// exportURL is the export of the metrics of one group of at most 16 (the
// API's bound per request); a device with more gets one link per group.
function exportURL(format, group) {
  const dev = state.device;
  const v = view();
  const q = new URLSearchParams({ start: String(Math.floor(v.min)), stop: String(Math.ceil(v.max)), format });
  for (const m of dev.catalogue.slice(group * 16, group * 16 + 16)) q.append("metric", m.name);
  return devPath(dev.id, "/export?" + q);
}

function updateExportLinks() {
  if (!state.device || !state.device.catalogueReady) return;
  const n = state.device.catalogue.length;
  $("export-csv").href = exportURL("csv", 0);
  $("export-jsonl").href = exportURL("jsonl", 0);
  const more = $("export-more");
  if (n > 16) {
    $("export-csv").textContent = "Export CSV (metrics 1-16)";
    $("export-jsonl").textContent = "Export JSON lines (metrics 1-16)";
  }
  // One more pair of links per further group of 16 metrics: every metric
  // is in some export.
  const links = [];
  for (let g = 1; g * 16 < n; g++) {
    const range = `metrics ${g * 16 + 1}-${Math.min(n, g * 16 + 16)}`;
    for (const [format, label] of [["csv", "CSV"], ["jsonl", "JSON lines"]]) {
      const a = document.createElement("a");
      a.className = "button";
      a.setAttribute("download", "");
      a.href = exportURL(format, g);
      a.textContent = `Export ${label} (${range})`;
      a.addEventListener("click", () => { a.href = exportURL(format, g); }); // the window moves with the clock
      links.push(a);
    }
  }
  more.replaceChildren(...links);
}
// The window moves with the clock: the link is rebuilt when it is used.
for (const id of ["export-csv", "export-jsonl"]) {
  $(id).addEventListener("click", updateExportLinks);
  $(id).addEventListener("focus", updateExportLinks);
}

// ---- presence ---------------------------------------------------------
async function loadTimeline() {
  const dev = state.device;
  try {
    const p = await api("GET", devPath(dev.id, "/presence"));
    if (dev !== state.device) return;
    $("timeline-note").textContent = p.source === "memory" ? "InfluxDB is unreachable: these are the changes since the hub started." : "";
    for (const ev of p.events.slice().reverse()) addTimeline(ev, true);
    if (!p.events.length) $("timeline-note").textContent = "No presence changes recorded.";
  } catch (e) { $("timeline-note").textContent = "Presence history unavailable: " + e.message; }
}

function addTimeline(ev, append) {
  const text = fmtTime(ev.at) + " — " + (ev.online ? "online (" + ev.transport + ")" : "offline" + (ev.reason ? ": " + ev.reason : ""));
  const li = el("li", {}, el("span", { class: "dot" + (ev.online ? " on" : ""), "aria-hidden": "true" }), text);
  if (append) $("timeline").append(li); else $("timeline").prepend(li);
}

// ---- rejections -------------------------------------------------------
async function loadRejections() {
  const dev = state.device;
  if (!dev || dev.noRejections) return;
  let r;
  try { r = await api("GET", devPath(dev.id, "/rejections")); } catch (e) {
    if (dev !== state.device) return;
    $("rej-total").textContent = e.status === 404 ? "This hub does not keep rejections." : "Rejections unavailable: " + e.message;
    dev.noRejections = e.status === 404; // an older hub: stop asking
    return;
  }
  if (dev !== state.device) return;
  $("rej-total").textContent = r.total ? r.total + " rejected since the hub started; the last " + r.rejections.length + ", newest first:" : "No message from this device was rejected since the hub started.";
  $("rej-rows").replaceChildren(...r.rejections.map((x) => el("tr", { "data-code": x.code },
    el("td", {}, fmtTime(x.at), el("br"), el("span", { class: "muted" }, x.transport + (x.id ? " · id " + x.id : ""))),
    el("td", {}, x.code), el("td", { class: "mono" }, x.field || "–"), el("td", {}, x.message))));
}

// ---- commands ---------------------------------------------------------
const cmdRows = new Map(); // command id -> its row's cells
const cmdSeen = new Map(); // latest status seen per command id, rows or not

async function loadCommands() {
  const dev = state.device;
  try {
    const data = await api("GET", devPath(dev.id, "/commands?limit=20"));
    if (dev !== state.device) return;
    for (const c of data.commands.slice().reverse()) addCommand(c);
  } catch (e) { if (dev === state.device) $("cmd-error").textContent = e.message; }
}

const clip = (s, n) => (s.length > n ? s.slice(0, n - 1) + "…" : s);
const jsonText = (v) => (v === undefined || v === null ? "" : clip(JSON.stringify(v), 160));

function outcome(c) {
  if (c.error) return c.error;
  if (c.result !== undefined && c.result !== null) return jsonText(c.result);
  return c.status === "timed_out" ? "no result within " + Math.round((c.timeout_ms || 0) / 1000) + " s" : c.status === "expired" ? "not delivered before it expired" : "";
}

function addCommand(c) {
  if (cmdRows.has(c.id)) { fillCommand(c); return; }
  const cells = { status: el("td", { "data-command": c.id }), outcome: el("td", { class: "outcome" }), action: el("td", {}) };
  cmdRows.set(c.id, cells);
  $("cmd-rows").prepend(el("tr", {}, el("td", {}, c.name), el("td", { class: "mono" }, jsonText(c.params)), cells.status, cells.outcome,
    el("td", { class: "muted" }, fmtTime(c.created_at)), cells.action));
  fillCommand(c);
}

function fillCommand(c) {
  const cells = cmdRows.get(c.id);
  const seen = cmdSeen.get(c.id);
  const st = seen && rank(seen) > rank(c.status) ? seen : c.status;
  setCommandStatus(cells, st);
  if (rank(st) === 2 && rank(c.status) < 2) fetchCommand(c.id); // the live event came first
  cells.outcome.textContent = outcome(c);
  cells.outcome.className = c.error ? "outcome error" : "outcome";
  if (cells.actionFor === st) return; // keep the button (and its focus) while the status stays
  cells.actionFor = st;
  cells.action.replaceChildren();
  if (st === "queued" && canOperate()) {
    const b = el("button", { "aria-label": "Cancel command " + c.name }, "Cancel");
    b.addEventListener("click", async () => {
      const dev = state.device;
      try { const r = await api("DELETE", devPath(dev.id, "/commands/" + encodeURIComponent(c.id))); if (dev === state.device) fillCommand(r.command); } catch (e) { $("cmd-error").textContent = e.message; }
    });
    cells.action.append(b);
  }
}

const rank = (s) => (s === "queued" ? 0 : s === "sent" ? 1 : 2);

function setCommandStatus(cells, status) {
  cells.status.textContent = status;
  cells.status.className = "status-" + status;
}

function updateCommand(id, status) {
  if (!cmdSeen.has(id) || rank(status) >= rank(cmdSeen.get(id))) cmdSeen.set(id, status);
  const cells = cmdRows.get(id);
  // Never step back: the POST answer and the live events can arrive in either order.
  if (!cells || rank(status) < rank(cells.status.textContent)) return;
  setCommandStatus(cells, status);
  if (status !== "queued") { cells.action.replaceChildren(); cells.actionFor = status; } // no Cancel once sent
  if (rank(status) === 2) fetchCommand(id); // final: fetch the result or the reason
}

async function fetchCommand(id) {
  const dev = state.device;
  try { const r = await api("GET", devPath(dev.id, "/commands/" + encodeURIComponent(id))); if (dev === state.device) fillCommand(r.command); } catch (e) { /* the status stays */ }
}

$("cmd-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const dev = state.device;
  $("cmd-error").textContent = "";
  let params = {};
  const raw = $("cmd-params").value.trim();
  if (raw) {
    try { params = JSON.parse(raw); } catch (e) { $("cmd-error").textContent = "params must be JSON, e.g. {\"seconds\":5}"; return; }
  }
  try {
    const r = await api("POST", devPath(dev.id, "/commands"), { name: $("cmd-name").value.trim(), params });
    if (dev === state.device) addCommand(r.command);
  } catch (e) { if (dev === state.device) $("cmd-error").textContent = e.message; }
});

// ---- device edit and token (admin) -------------------------------------
function parseLabels(text) {
  const labels = {};
  for (const line of text.split(/[\n,]+/).map((s) => s.trim()).filter(Boolean)) {
    const i = line.indexOf("=");
    if (i < 1) throw new Error("labels: " + JSON.stringify(line) + " is not key=value");
    labels[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return labels;
}

$("edit-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const dev = state.device;
  $("edit-status").textContent = "";
  let body;
  try { body = { name: $("edit-name").value.trim(), labels: parseLabels($("edit-labels").value) }; } catch (e) { $("edit-status").textContent = e.message; return; }
  try {
    const r = await api("PATCH", devPath(dev.id), body);
    if (dev !== state.device) return;
    Object.assign(dev.d, { name: r.device.name, labels: r.device.labels });
    renderDeviceHeader(dev.d);
    renderLatest();
    $("edit-status").textContent = "Saved.";
    loadCharts(); // units may have changed
  } catch (e) { if (dev === state.device) $("edit-status").textContent = "Not saved: " + e.message; }
});

$("rotate").addEventListener("click", async () => {
  const dev = state.device, grace = $("grace").checked;
  const ok = await confirmDialog("Rotate the token of " + dev.id + "? " + (grace ? "Its old token keeps working for 1 hour." : "Its old token stops working at once and its connections close."), "Rotate token of " + dev.id);
  if (!ok || dev !== state.device) return;
  try {
    const r = await api("POST", devPath(dev.id, "/token"), grace ? { grace: "1h" } : {});
    if (dev !== state.device) return;
    $("new-token").textContent = "New token of " + dev.id + " (shown once; store it now): " + r.token;
    $("new-token").hidden = false;
  } catch (e) { if (dev === state.device) { $("new-token").textContent = e.message; $("new-token").hidden = false; } }
});

$("revoke").addEventListener("click", async () => {
  const dev = state.device;
  const ok = await confirmDialog("Delete " + dev.id + "? Its token stops working and its sessions are closed.", "Delete " + dev.id);
  if (!ok || dev !== state.device) return;
  try { await api("DELETE", devPath(dev.id)); location.hash = "#/"; } catch (e) {
    if (dev === state.device) { $("new-token").textContent = e.message; $("new-token").hidden = false; }
  }
});

// ---- operator tokens (admin) ------------------------------------------
function openTokens() {
  show("tokens");
  $("tok-secret").hidden = true;
  $("tok-secret").textContent = "";
  $("tok-error").textContent = "";
  $("tok-rows").replaceChildren();
  if (!isAdmin()) { $("tok-error").textContent = "Only admins manage operator tokens."; $("tok-form").hidden = true; return; }
  $("tok-form").hidden = false;
  loadTokens();
}

async function loadTokens() {
  const gen = state.gen;
  let r;
  try { r = await api("GET", "/api/v1/tokens"); } catch (e) {
    if (e.status === 401) { boot(); return; } // revoked our own token
    if (gen === state.gen) $("tok-error").textContent = e.message;
    return;
  }
  if (gen !== state.gen) return;
  const toks = (r.tokens || []).slice().sort((a, b) => natural.compare(a.name, b.name));
  $("tok-rows").replaceChildren(...toks.map((t) => {
    const b = el("button", { class: "danger", "aria-label": "Revoke token " + t.name }, "Revoke");
    b.addEventListener("click", async () => {
      if (!(await confirmDialog("Revoke the operator token " + t.name + " (" + t.role + ")? Its sessions end and its live connections close.", "Revoke " + t.name))) return;
      try { await api("DELETE", "/api/v1/tokens/" + encodeURIComponent(t.id)); loadTokens(); } catch (e) { $("tok-error").textContent = e.message; }
    });
    return el("tr", { "data-token": t.id }, el("td", {}, t.name), el("td", {}, t.role), el("td", { class: "mono" }, t.id),
      el("td", {}, fmtTime(t.created_at)), el("td", {}, t.last_used ? fmtTime(t.last_used) : "never"), el("td", {}, b));
  }));
}

$("tok-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("tok-error").textContent = "";
  try {
    const r = await api("POST", "/api/v1/tokens", { name: $("tok-name").value.trim(), role: $("tok-role").value });
    $("tok-name").value = "";
    $("tok-secret").textContent = "Token " + r.token.name + " (" + r.token.role + "), shown once; store it now: " + r.secret;
    $("tok-secret").hidden = false;
    loadTokens();
  } catch (e) { $("tok-error").textContent = e.message; }
});

boot();
