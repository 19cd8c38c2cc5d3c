// Fieldhub alerts in the dashboard (issue #23): the alerts page (open
// alerts, acknowledge, silences, resolved history, an alert's timeline),
// the rule list and editor, the firing-alerts banner of the overview and
// the open alerts of a device page. Loaded before app.js and run only
// through its hooks (openAlerts, alertsOverview, alertsDevice,
// alertEvent), so it uses app.js's helpers ($, api, el, state, ...) only
// once the page has booted. Server data only ever goes into textContent.
"use strict";

// alertsState is what the alert views hold. firing is the banner's view
// of firing alerts (id -> alert), bounded at alertsKept: past it the
// oldest are dropped and the count comes from the hub's next answer.
// live counts the alert events handled, per alert id (the browser test
// reads it to tell a live update from a reload).
const alertsState = { firing: new Map(), live: new Map(), rules: [], open: new Map(), editing: null, acking: null };
const alertsKept = 1000;

const alertPath = (id, rest) => "/api/v1/alerts/" + encodeURIComponent(id) + (rest || "");
const rulePath = (id) => "/api/v1/alert-rules/" + encodeURIComponent(id);

// stateText is an alert's state as text and colour, never colour alone.
function alertStateText(a) {
  const s = el("span", { class: "astate astate-" + a.state }, a.state);
  if (a.state === "resolved" && a.fired === false) s.append(" (never fired)");
  if (a.silenced_until && a.state !== "resolved") s.append(" · silenced");
  return s;
}

const severityText = (sev) => el("span", { class: "sev sev-" + sev }, sev);

function ackText(a) {
  if (!a.acknowledged_by) return "–";
  const t = el("span", { "data-acked-by": a.acknowledged_by }, "by " + a.acknowledged_by);
  if (a.ack_note) t.append(el("br"), el("span", { class: "muted" }, a.ack_note));
  return t;
}

const deviceLink = (id) => el("a", { href: "#/devices/" + encodeURIComponent(id) }, id);

// alertLine is one alert in a list: the banner's and a device page's.
function alertLine(a, withDevice) {
  return el("li", { "data-alert": a.id, class: "sev-line sev-line-" + a.severity },
    alertStateText(a), " ", severityText(a.severity), " ",
    withDevice ? deviceLink(a.device) : null, withDevice ? " " : null,
    el("a", { href: "#/alerts/" + encodeURIComponent(a.id) }, a.rule || a.rule_id), " ",
    el("span", { class: "muted" }, (a.summary || "") + " · since " + ago(a.since)),
    a.acknowledged_by ? el("span", { class: "muted" }, " · acknowledged by " + a.acknowledged_by) : null);
}

// alertEvent takes a live `alert` event (the alert's JSON in ev.alert)
// to every alert view on screen.
function alertEvent(ev) {
  const a = ev.alert;
  if (!a || !a.id) return;
  alertsState.live.set(a.id, (alertsState.live.get(a.id) || 0) + 1);
  if (alertsState.live.size > alertsKept) alertsState.live.delete(alertsState.live.keys().next().value);
  noteFiring(a);
  if (state.view === "overview") renderBanner(true);
  if (state.view === "device" && state.device && state.device.id === a.device) upsertDeviceAlert(a);
  if (state.view === "alerts") upsertAlertRow(a);
}

// noteFiring keeps alertsState.firing in step with one alert.
function noteFiring(a) {
  if (a.state === "firing") {
    alertsState.firing.delete(a.id); // newest last
    alertsState.firing.set(a.id, a);
    if (alertsState.firing.size > alertsKept) alertsState.firing.delete(alertsState.firing.keys().next().value);
  } else {
    alertsState.firing.delete(a.id);
  }
  updateNavCount();
}

function updateNavCount() {
  const n = alertsState.firing.size, badge = $("nav-alert-count");
  badge.hidden = n === 0;
  badge.textContent = n ? String(n) : "";
  $("nav-alerts").setAttribute("aria-label", n ? "Alerts, " + n + " firing" : "Alerts");
}

// ---- overview banner ----------------------------------------------------

// alertsOverview fills the banner from the hub and keeps it so: live
// events for the devices on the page, and a resync every 30 s for the
// others (the live socket only carries the alerts of devices it follows).
function alertsOverview() {
  loadFiring();
  state.timers.push(setInterval(loadFiring, 30000));
}

async function loadFiring() {
  const gen = state.gen;
  let r;
  try { r = await api("GET", "/api/v1/alerts?state=firing&limit=1000"); } catch (e) {
    if (e.status === 401) { boot(); return; }
    if (e.status === 404) { $("ov-alerts").hidden = true; return; } // a hub without alerts
    return; // the banner keeps what it shows
  }
  if (gen !== state.gen) return;
  alertsState.firing.clear();
  for (const a of (r.alerts || []).slice().reverse()) alertsState.firing.set(a.id, a);
  updateNavCount();
  renderBanner(false);
}

function renderBanner(announce) {
  const list = [...alertsState.firing.values()].reverse(); // newest first
  const n = list.length;
  $("ov-alerts").hidden = n === 0;
  $("ov-alert-count").textContent = String(n);
  $("ov-alert-word").textContent = n === 1 ? "alert" : "alerts";
  $("ov-alert-list").replaceChildren(...list.slice(0, 10).map((a) => alertLine(a, true)));
  if (n > 10) $("ov-alert-list").append(el("li", { class: "muted" }, "and " + (n - 10) + " more on the alerts page"));
  if (announce) $("ov-alert-live").textContent = n + (n === 1 ? " alert" : " alerts") + " firing";
}

// ---- device page ----------------------------------------------------------

async function alertsDevice(id) {
  const dev = state.device;
  $("d-alerts").replaceChildren();
  $("d-alerts-note").textContent = "";
  alertsState.deviceOpen = new Map();
  let r;
  try { r = await api("GET", "/api/v1/alerts?device=" + encodeURIComponent(id) + "&limit=100"); } catch (e) {
    if (dev !== state.device) return;
    $("d-alerts-panel").hidden = e.status === 404;
    $("d-alerts-note").textContent = "Alerts unavailable: " + e.message;
    return;
  }
  if (dev !== state.device) return;
  $("d-alerts-panel").hidden = false;
  for (const a of (r.alerts || []).slice().reverse()) if (a.state !== "resolved") alertsState.deviceOpen.set(a.id, a);
  renderDeviceAlerts();
}

function upsertDeviceAlert(a) {
  if (!alertsState.deviceOpen) return;
  if (a.state === "resolved") alertsState.deviceOpen.delete(a.id); else alertsState.deviceOpen.set(a.id, a);
  renderDeviceAlerts();
}

function renderDeviceAlerts() {
  const list = [...alertsState.deviceOpen.values()].reverse();
  $("d-alerts").replaceChildren(...list.map((a) => alertLine(a, false)));
  $("d-alerts-note").textContent = list.length ? "" : "No open alerts.";
}

// ---- alerts page ----------------------------------------------------------

// openAlerts shows the alerts page; id, when given, opens that alert's
// timeline above the lists.
function openAlerts(id) {
  show("alerts");
  for (const x of ["al-error", "ack-error", "sil-error", "rf-error", "al-open-total"]) $(x).textContent = "";
  for (const x of ["al-open-rows", "al-hist-rows", "rule-rows", "sil-list", "al-timeline", "al-detail-fields"]) $(x).replaceChildren();
  alertsState.open.clear();
  closeAck();
  closeRuleForm();
  $("al-detail").hidden = true;
  $("al-silence-panel").hidden = !canOperate();
  $("rule-new").hidden = !isAdmin();
  // The page follows the live stream of no device of its own: events of
  // devices other views followed still come; a resync every 10 s shows
  // the rest.
  subscribe([]);
  loadAlertLists();
  loadRules();
  if (canOperate()) loadSilences();
  if (id) loadAlertDetail(id, true);
  state.timers.push(setInterval(() => { loadAlertLists(); if (canOperate()) loadSilences(); }, 10000));
}

async function loadAlertLists() {
  const gen = state.gen;
  let open, hist;
  try {
    [open, hist] = await Promise.all([api("GET", "/api/v1/alerts?limit=1000"), api("GET", "/api/v1/alerts?state=resolved&limit=100")]);
  } catch (e) {
    if (gen !== state.gen) return;
    if (e.status === 401) { boot(); return; }
    $("al-error").textContent = e.status === 404 ? "This hub has no alerts." : "Alerts unavailable: " + e.message;
    return;
  }
  if (gen !== state.gen) return;
  $("al-error").textContent = "";
  alertsState.open.clear();
  for (const a of (open.alerts || []).slice().reverse()) if (a.state !== "resolved") alertsState.open.set(a.id, a);
  renderOpenAlerts();
  $("al-hist-rows").replaceChildren(...(hist.alerts || []).map(histRow));
  if (!(hist.alerts || []).length) $("al-hist-rows").append(el("tr", {}, el("td", { colSpan: 8, class: "muted" }, "No resolved alerts.")));
}

function upsertAlertRow(a) {
  if (a.state === "resolved") {
    alertsState.open.delete(a.id);
    const rows = $("al-hist-rows");
    const old = rows.querySelector('tr[data-alert="' + CSS.escape(a.id) + '"]');
    if (old) old.remove();
    if (rows.firstElementChild && !rows.firstElementChild.dataset.alert) rows.replaceChildren(); // "No resolved alerts."
    rows.prepend(histRow(a));
    while (rows.children.length > 100) rows.lastElementChild.remove();
  } else {
    alertsState.open.delete(a.id);
    alertsState.open.set(a.id, a);
    if (alertsState.open.size > alertsKept) alertsState.open.delete(alertsState.open.keys().next().value);
  }
  renderOpenAlerts();
  if (!$("al-detail").hidden && $("al-detail").dataset.alert === a.id) loadAlertDetail(a.id);
}

function renderOpenAlerts() {
  const list = [...alertsState.open.values()].reverse(); // newest first
  const n = list.length;
  $("al-open-total").textContent = n + " open (" + list.filter((a) => a.state === "firing").length + " firing)";
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.focusKey : "";
  $("al-open-rows").replaceChildren(...list.map(openRow));
  if (!n) $("al-open-rows").append(el("tr", {}, el("td", { colSpan: 9, class: "muted" }, "No open alerts.")));
  // A re-render keeps the keyboard where it was.
  if (focused) { const b = document.querySelector('[data-focus-key="' + CSS.escape(focused) + '"]'); if (b) b.focus(); }
}

function openRow(a) {
  const actions = el("td", { class: "actions" },
    el("a", { href: "#/alerts/" + encodeURIComponent(a.id), class: "button", "aria-label": "Timeline of " + (a.rule || a.rule_id) + " on " + a.device, "data-focus-key": "tl-" + a.id }, "Timeline"));
  if (canOperate() && !a.acknowledged_by) {
    const b = el("button", { "aria-label": "Acknowledge " + (a.rule || a.rule_id) + " on " + a.device, "data-focus-key": "ack-" + a.id, "data-ack": a.id }, "Acknowledge");
    b.addEventListener("click", () => openAck(a));
    actions.append(" ", b);
  }
  return el("tr", { "data-alert": a.id, "data-state": a.state },
    el("td", {}, alertStateText(a)), el("td", {}, severityText(a.severity)), el("td", {}, deviceLink(a.device)),
    el("td", {}, a.rule || a.rule_id), el("td", { title: fmtTime(a.since) }, ago(a.since)), el("td", {}, fmtValue(a.value)),
    el("td", {}, a.summary || ""), el("td", { class: "acked" }, ackText(a)), actions);
}

function histRow(a) {
  return el("tr", { "data-alert": a.id },
    el("td", {}, el("a", { href: "#/alerts/" + encodeURIComponent(a.id) }, fmtTime(a.resolved_at || a.since)), a.fired === false ? el("span", { class: "muted" }, " (never fired)") : null),
    el("td", {}, severityText(a.severity)), el("td", {}, deviceLink(a.device)), el("td", {}, a.rule || a.rule_id),
    el("td", {}, fmtTime(a.started_at)), el("td", {}, fmtValue(a.value)), el("td", {}, a.summary || ""), el("td", {}, ackText(a)));
}

// ---- acknowledge ------------------------------------------------------------

function openAck(a) {
  alertsState.acking = a;
  $("ack-label").textContent = "Note for " + (a.rule || a.rule_id) + " on " + a.device;
  $("ack-note").value = "";
  $("ack-error").textContent = "";
  $("ack-form").hidden = false;
  $("ack-note").focus();
}

function closeAck() {
  const a = alertsState.acking;
  alertsState.acking = null;
  $("ack-form").hidden = true;
  if (a) { const b = document.querySelector('[data-focus-key="ack-' + CSS.escape(a.id) + '"]'); if (b) b.focus(); }
}

// ---- an alert's timeline ------------------------------------------------------

// loadAlertDetail shows alert id and its timeline; focus moves the
// keyboard to its heading (when the operator opened it, not on a refresh).
async function loadAlertDetail(id, focus) {
  const gen = state.gen;
  let r;
  try { r = await api("GET", alertPath(id)); } catch (e) {
    if (gen !== state.gen) return;
    $("al-detail").hidden = false;
    $("al-detail-h").textContent = "Alert " + id;
    $("al-detail-fields").replaceChildren();
    $("al-timeline").replaceChildren(el("li", { class: "error" }, e.status === 404 ? "No such alert." : "Unavailable: " + e.message));
    return;
  }
  if (gen !== state.gen) return;
  const a = r.alert;
  $("al-detail").hidden = false;
  $("al-detail").dataset.alert = a.id;
  $("al-detail-h").textContent = (a.rule || a.rule_id) + " on " + a.device;
  const field = (k, v) => [el("dt", {}, k), el("dd", {}, v)];
  $("al-detail-fields").replaceChildren(
    ...field("State", alertStateText(a)), ...field("Severity", severityText(a.severity)), ...field("Device", deviceLink(a.device)),
    ...field("Summary", a.summary || "–"), ...field("Value", fmtValue(a.value)), ...field("Started", fmtTime(a.started_at)),
    ...field("Fired", a.fired_at ? fmtTime(a.fired_at) : "–"), ...field("Resolved", a.resolved_at ? fmtTime(a.resolved_at) : "–"),
    ...field("Acknowledged", ackText(a)), ...field("Silenced until", a.silenced_until ? fmtTime(a.silenced_until) : "–"),
    ...field("Alert id", el("span", { class: "mono" }, a.id)));
  $("al-timeline").replaceChildren(...(r.events || []).map(timelineItem));
  if (!(r.events || []).length) $("al-timeline").append(el("li", { class: "muted" }, "No events recorded."));
  if (focus) { $("al-detail-h").tabIndex = -1; $("al-detail-h").focus({ preventScroll: false }); }
}

function timelineItem(ev) {
  const parts = [];
  if (ev.value !== undefined && ev.value !== null) parts.push("value " + fmtValue(ev.value));
  if (ev.reading_ts) parts.push("reading of " + fmtTime(ev.reading_ts));
  if (ev.presence) parts.push((ev.presence.online ? "online" : "offline") + (ev.presence.at ? " at " + fmtTime(ev.presence.at) : ""));
  if (ev.by) parts.push("by " + ev.by);
  if (ev.note) parts.push("“" + ev.note + "”");
  if (ev.reason) parts.push(ev.reason);
  return el("li", { "data-type": ev.type }, el("span", { class: "muted" }, fmtTime(ev.at) + " — "), el("b", {}, ev.type), parts.length ? ": " + parts.join(", ") : "");
}

// ---- silences ------------------------------------------------------------------

async function loadSilences() {
  const gen = state.gen;
  let r;
  try { r = await api("GET", "/api/v1/silences"); } catch (e) { if (gen === state.gen && e.status !== 404) $("sil-error").textContent = e.message; return; }
  if (gen !== state.gen) return;
  const ruleName = (id) => (alertsState.rules.find((x) => x.id === id) || {}).name || id;
  $("sil-list").replaceChildren(...(r.silences || []).map((s) => {
    const what = [s.rule_id ? "rule " + ruleName(s.rule_id) : "", s.device ? "device " + s.device : ""].filter(Boolean).join(" and ");
    const b = el("button", { class: "danger", "aria-label": "End the silence of " + what }, "End");
    b.addEventListener("click", async () => {
      try { await api("DELETE", "/api/v1/silences/" + encodeURIComponent(s.id)); loadSilences(); loadAlertLists(); } catch (e) { $("sil-error").textContent = e.message; }
    });
    return el("li", { "data-silence": s.id }, "Silenced " + what + " until " + fmtTime(s.until) + (s.by ? " by " + s.by : "") + (s.note ? " — " + s.note : "") + " ", b);
  }));
}

function fillSilenceRules() {
  const sel = $("sil-rule"), keep = sel.value;
  sel.replaceChildren(...alertsState.rules.map((r) => el("option", { value: r.id }, r.name)));
  if (keep) sel.value = keep;
}

// ---- rules ------------------------------------------------------------------------

async function loadRules() {
  const gen = state.gen;
  let r;
  try { r = await api("GET", "/api/v1/alert-rules"); } catch (e) { if (gen === state.gen && e.status !== 404) $("rf-error").textContent = "Rules unavailable: " + e.message; return; }
  if (gen !== state.gen) return;
  alertsState.rules = r.rules || [];
  fillSilenceRules();
  $("rule-rows").replaceChildren(...alertsState.rules.map(ruleRow));
  if (!alertsState.rules.length) $("rule-rows").append(el("tr", {}, el("td", { colSpan: 6, class: "muted" }, "No rules yet." + (isAdmin() ? " New rule creates one." : ""))));
}

// conditionText is a rule's condition in words, e.g. "temp > 80 for 30s, clears below 75".
function conditionText(c) {
  switch (c.type) {
    case "threshold": {
      let s = c.metric + " " + c.op + " " + fmtValue(c.value);
      if (c.for && c.for !== "0s") s += " for " + c.for;
      if (c.clear !== undefined && c.clear !== null) s += ", clears " + (c.op[0] === ">" ? "below " : "above ") + fmtValue(c.clear);
      return s;
    }
    case "offline": return "offline for " + c.for;
    case "no_data": return "no " + c.metric + " for " + c.for;
    case "rejections": return "more than " + c.count + " rejected in " + c.window;
    case "gaps": return "more than " + c.count + " open seq gaps";
    default: return JSON.stringify(c);
  }
}

function selectorText(sel) {
  const parts = [];
  if (sel && sel.devices && sel.devices.length) parts.push(sel.devices.join(", "));
  for (const [k, v] of Object.entries((sel && sel.labels) || {})) parts.push(k + "=" + v);
  return parts.length ? parts.join("; ") : "every device";
}

function ruleRow(r) {
  const actions = el("td", { class: "actions" });
  if (isAdmin()) {
    const edit = el("button", { "aria-label": "Edit rule " + r.name }, "Edit");
    edit.addEventListener("click", () => openRuleForm(r));
    const del = el("button", { class: "danger", "aria-label": "Delete rule " + r.name }, "Delete");
    del.addEventListener("click", async () => {
      if (!(await confirmDialog("Delete the rule " + r.name + "? Its open alerts resolve.", "Delete " + r.name))) return;
      try { await api("DELETE", rulePath(r.id)); loadRules(); loadAlertLists(); } catch (e) { $("rf-error").textContent = e.message; }
    });
    actions.append(edit, " ", del);
  }
  return el("tr", { "data-rule": r.id }, el("td", {}, r.name), el("td", {}, severityText(r.severity)), el("td", {}, conditionText(r.condition || {})),
    el("td", {}, selectorText(r.selector)), el("td", {}, String(r.version)), actions);
}

// ruleFields maps the JSON path a 400 names to the editor's field.
const ruleFields = { name: "rf-name", severity: "rf-severity", "selector.devices": "rf-devices", "selector.labels": "rf-labels", selector: "rf-devices",
  "condition.type": "rf-type", "condition.metric": "rf-metric", "condition.op": "rf-op", "condition.value": "rf-value", "condition.clear": "rf-clear",
  "condition.for": "rf-for", "condition.count": "rf-count", "condition.window": "rf-window", condition: "rf-type" };

function clearRuleErrors() {
  for (const id of new Set(Object.values(ruleFields))) { $(id + "-err").textContent = ""; $(id).removeAttribute("aria-invalid"); }
  $("rf-error").textContent = "";
}

// fieldError shows msg next to the field of path (e.g. "condition.op" or
// "selector.devices[3]"); a path the editor has no field for goes under
// the form.
function fieldError(path, msg) {
  let p = path.replace(/\[[^\]]*\]/g, "");
  while (p && !ruleFields[p]) p = p.includes(".") ? p.slice(0, p.lastIndexOf(".")) : "";
  const id = ruleFields[p];
  if (!id) { $("rf-error").textContent = msg; return; }
  $(id + "-err").textContent = msg;
  $(id).setAttribute("aria-invalid", "true");
  $(id).focus();
  const wrap = $(id).closest("[data-for-types]");
  if (wrap && wrap.hidden) $("rf-error").textContent = msg; // a field of another condition type
}

function showRuleType() {
  const t = $("rf-type").value;
  for (const e of document.querySelectorAll("#rule-form [data-for-types]")) e.hidden = !e.dataset.forTypes.split(" ").includes(t);
}

function openRuleForm(r) {
  alertsState.editing = r || null;
  clearRuleErrors();
  const c = (r && r.condition) || { type: "threshold", op: ">" };
  $("rule-form-h").textContent = r ? "Edit rule " + r.name : "New rule";
  $("rf-save").textContent = r ? "Save rule" : "Create rule";
  $("rf-name").value = r ? r.name : "";
  $("rf-severity").value = r ? r.severity : "warning";
  $("rf-devices").value = r && r.selector && r.selector.devices ? r.selector.devices.join(", ") : "";
  $("rf-labels").value = r && r.selector && r.selector.labels ? Object.entries(r.selector.labels).map(([k, v]) => k + "=" + v).join("\n") : "";
  $("rf-type").value = c.type;
  $("rf-metric").value = c.metric || "";
  $("rf-op").value = c.op || ">";
  $("rf-value").value = c.value !== undefined ? String(c.value) : "";
  $("rf-clear").value = c.clear !== undefined && c.clear !== null ? String(c.clear) : "";
  $("rf-for").value = c.for && c.for !== "0s" ? c.for : "";
  $("rf-count").value = c.count !== undefined ? String(c.count) : "";
  $("rf-window").value = c.window || "";
  showRuleType();
  $("rule-form").hidden = false;
  $("rf-name").focus();
}

function closeRuleForm() {
  alertsState.editing = null;
  $("rule-form").hidden = true;
}

// ruleBody reads the editor into a rule body; a number field that is not
// a number is refused here (the JSON could not carry it), everything else
// is the hub's to validate.
function ruleBody() {
  const num = (id, path) => {
    const raw = $(id).value.trim();
    if (raw === "") return undefined;
    const v = Number(raw);
    if (!Number.isFinite(v)) throw { path, message: path + ": must be a number" };
    return v;
  };
  // A duration the hub could not even decode is named here, with its
  // field; an empty one is left out, so the hub says it is required.
  const dur = (id, path) => {
    const raw = $(id).value.trim();
    if (raw === "") return undefined;
    if (!/^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$/.test(raw)) throw { path, message: path + ": must be a duration such as 30s, 5m or 1h" };
    return raw;
  };
  const t = $("rf-type").value;
  const cond = { type: t };
  const text = (id) => $(id).value.trim();
  if (t === "threshold" || t === "no_data") cond.metric = text("rf-metric");
  if (t === "threshold") Object.assign(cond, { op: $("rf-op").value, value: num("rf-value", "condition.value"), clear: num("rf-clear", "condition.clear") });
  if (t === "gaps") cond.count = num("rf-count", "condition.count");
  else if (t !== "rejections") cond.for = dur("rf-for", "condition.for");
  else Object.assign(cond, { count: num("rf-count", "condition.count"), window: dur("rf-window", "condition.window") });
  for (const k of Object.keys(cond)) if (cond[k] === undefined) delete cond[k];
  const selector = {};
  const devices = text("rf-devices").split(/[\s,]+/).filter(Boolean);
  if (devices.length) selector.devices = devices;
  let labels;
  try { labels = parseLabels($("rf-labels").value); } catch (e) { throw { path: "selector.labels", message: e.message.replace(/^labels/, "selector.labels") }; }
  if (Object.keys(labels).length) selector.labels = labels;
  return { name: text("rf-name"), severity: $("rf-severity").value, selector, condition: cond };
}

// ---- wiring (the elements exist: this script runs at the end of <body>) ----
(function wireAlerts() {
  const byId = (id) => document.getElementById(id);
  byId("ack-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const a = alertsState.acking;
    if (!a) return;
    byId("ack-error").textContent = "";
    try {
      const r = await api("POST", alertPath(a.id, "/ack"), { note: byId("ack-note").value.trim() });
      closeAck();
      noteFiring(r.alert);
      upsertAlertRow(r.alert);
    } catch (e) {
      byId("ack-error").textContent = e.status === 409 ? "This alert is resolved: there is nothing to acknowledge." : e.message;
    }
  });
  byId("ack-cancel").addEventListener("click", closeAck);
  byId("ack-form").addEventListener("keydown", (ev) => { if (ev.key === "Escape") { ev.preventDefault(); closeAck(); } });

  byId("sil-kind").addEventListener("change", () => {
    const rule = byId("sil-kind").value === "rule";
    byId("sil-rule").hidden = !rule;
    byId("sil-device").hidden = rule;
  });
  byId("silence-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    byId("sil-error").textContent = "";
    const body = { for: byId("sil-for").value };
    if (byId("sil-kind").value === "rule") body.rule_id = byId("sil-rule").value; else body.device = byId("sil-device").value.trim();
    if (byId("sil-note").value.trim()) body.note = byId("sil-note").value.trim();
    if (!body.rule_id && !body.device) { byId("sil-error").textContent = body.device === "" ? "Name the device to silence." : "There is no rule to silence yet."; return; }
    try {
      await api("POST", "/api/v1/silences", body);
      byId("sil-note").value = "";
      loadSilences();
      loadAlertLists();
    } catch (e) { byId("sil-error").textContent = e.message; }
  });

  byId("rule-new").addEventListener("click", () => openRuleForm(null));
  byId("rf-cancel").addEventListener("click", () => { closeRuleForm(); byId("rule-new").focus(); });
  byId("rf-type").addEventListener("change", showRuleType);
  byId("rule-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearRuleErrors();
    let body;
    try { body = ruleBody(); } catch (e) { fieldError(e.path, e.message); return; }
    const editing = alertsState.editing;
    try {
      if (editing) await api("PUT", rulePath(editing.id), body); else await api("POST", "/api/v1/alert-rules", body);
      closeRuleForm();
      byId("rf-error").textContent = "";
      await loadRules();
      byId("rule-new").focus();
    } catch (e) {
      if (e.status === 400) {
        const m = e.message.match(/^([a-z_]+(?:\[[^\]]*\])?(?:\.[a-z_]+(?:\[[^\]]*\])?)*):/i);
        if (m) { fieldError(m[1], e.message); return; }
      }
      byId("rf-error").textContent = (editing ? "Not saved: " : "Not created: ") + e.message;
    }
  });
})();
