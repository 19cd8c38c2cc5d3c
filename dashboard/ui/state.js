// Fieldhub dashboard: the device page's State panel (issue #24). It shows
// the device's reported and desired state side by side with the delta
// (keys out of sync marked in text and colour), versions and per-key
// update times, kept current by `state` events on /ws/live; operators
// edit desired key by key and save a JSON merge patch with If-Match, so a
// change someone else made in between is refused (412), never overwritten.
//
// Loaded after app.js, whose helpers it uses (el, api conventions, devPath,
// fmtTime, canOperate, aborter); app.js calls statePanel.reset, .open and
// .onEvent from its device page. Device data only ever goes into
// textContent and input values, never into HTML.
"use strict";

const statePanel = (() => {
  // cur: the device's state as last shown ({reported, desired, delta});
  // base: the desired document the editor was filled from (its version
  // is the If-Match of a save); dirty: the operator changed the editor.
  let dev = null, cur = null, base = null, dirty = false;

  const json = (v) => JSON.stringify(v);
  const show = (v) => { const s = json(v); return s.length > 80 ? s.slice(0, 79) + "…" : s; };
  const keysOf = (...objs) => [...new Set(objs.flatMap((o) => Object.keys(o || {})))].sort(natural.compare);
  const emptyDoc = () => ({ state: {}, version: 0, updated_at: {} });

  function reset() {
    dev = cur = base = null;
    dirty = false;
    $("state-rows").replaceChildren();
    $("state-edit-rows").replaceChildren();
    for (const id of ["state-summary", "state-error", "state-note"]) $(id).textContent = "";
  }

  async function open(device) {
    dev = device;
    $("state-form").hidden = !canOperate();
    $("state-summary").textContent = "loading…";
    const d = dev;
    try {
      const s = await api("GET", devPath(d.id, "/state"));
      if (d !== state.device) return;
      take(s, false); // an edit begun meanwhile (after a live event filled the editor) is kept
    } catch (e) {
      if (d !== state.device) return;
      $("state-summary").textContent = e.status === 404 ? "This hub keeps no device state." : "State unavailable: " + e.message;
    }
  }

  // take shows a state answer (GET, PATCH or a live event) unless it is
  // older than what is shown; the editor follows it while untouched, or
  // always with fill (the answer of the operator's own save).
  function take(s, fill) {
    if (!s || !s.reported || !s.desired) return;
    if (cur && (s.reported.version < cur.reported.version || s.desired.version < cur.desired.version)) return; // an older answer
    cur = { reported: s.reported || emptyDoc(), desired: s.desired || emptyDoc(), delta: s.delta || {} };
    render();
    if (fill || !dirty) fillEditor();
    else if (base && cur.desired.version !== base.version) {
      $("state-note").textContent = "Someone changed the desired state (now version " + cur.desired.version + ") while you edit: saving will be refused. Reload to start from theirs.";
    }
  }

  function render() {
    const r = cur.reported, d = cur.desired, delta = cur.delta;
    const out = Object.keys(delta).length;
    $("state-summary").textContent = "Reported version " + r.version + " · desired version " + d.version + " · " +
      (out ? out + (out === 1 ? " key" : " keys") + " out of sync" : "in sync");
    $("state-rows").replaceChildren(...keysOf(r.state, d.state).map((k) => {
      const inDelta = k in delta, wanted = k in d.state;
      const sync = inDelta ? "out of sync" : wanted ? "in sync" : "reported only";
      return el("tr", { class: inDelta ? "out" : "", "data-key": k },
        el("th", { scope: "row", class: "mono" }, k),
        el("td", { class: "mono", "data-side": "reported" }, k in r.state ? show(r.state[k]) : "–"),
        el("td", { class: "mono", "data-side": "desired" }, wanted ? show(d.state[k]) : "–"),
        el("td", { "data-side": "delta" }, el("span", { class: inDelta ? "sync out" : "sync" }, sync), inDelta && typeof delta[k] === "object" && delta[k] !== null ? el("span", { class: "mono" }, " " + show(delta[k])) : null),
        el("td", { class: "muted" }, fmtTime(r.updated_at && r.updated_at[k])),
        el("td", { class: "muted" }, fmtTime(d.updated_at && d.updated_at[k])));
    }));
    if (!keysOf(r.state, d.state).length) $("state-rows").append(el("tr", {}, el("td", { colSpan: 6, class: "muted" }, "Nothing reported or desired yet.")));
  }

  // ---- the desired editor: one row per key, values as JSON ---------------
  function fillEditor() {
    base = { state: Object.assign({}, cur.desired.state), version: cur.desired.version };
    dirty = false;
    $("state-note").textContent = "";
    $("state-edit-rows").replaceChildren(...Object.keys(base.state).sort(natural.compare).map((k) => editRow(k, json(base.state[k]), true)));
  }

  let rowSeq = 0;
  function editRow(key, value, existing) {
    const n = ++rowSeq;
    const k = el("input", { id: "state-k" + n, class: "state-key", value: key, readOnly: existing, "aria-label": existing ? "Key" : "New key" });
    const v = el("input", { id: "state-v" + n, class: "state-value mono", value, "aria-label": "Desired value of " + (key || "the new key") + " (JSON)" });
    k.addEventListener("input", () => { v.setAttribute("aria-label", "Desired value of " + (k.value || "the new key") + " (JSON)"); });
    const rm = el("button", { type: "button", class: "danger", "aria-label": "Remove desired key " + (key || "(new)") }, "Remove");
    const row = el("div", { class: "state-edit-row", role: "group", "aria-label": key ? "Desired " + key : "New desired key" }, k, v, rm);
    rm.addEventListener("click", () => { dirty = true; row.remove(); $("state-add").focus(); });
    return row;
  }

  // patch is the merge patch from the document the editor was filled from
  // to what it holds now: changed and new keys, and null for removed ones.
  function patch() {
    const want = {};
    for (const row of $("state-edit-rows").children) {
      const key = row.querySelector(".state-key").value.trim(), raw = row.querySelector(".state-value").value.trim();
      if (!key) { if (raw) throw new Error("a value has no key"); continue; }
      if (key in want) throw new Error("key " + key + " is there twice");
      try { want[key] = JSON.parse(raw); } catch (e) { throw new Error("the value of " + key + " is not JSON (a string needs quotes: \"eco\")"); }
    }
    const p = {};
    for (const [k, v] of Object.entries(want)) if (!(k in base.state) || json(base.state[k]) !== json(v)) p[k] = v;
    for (const k of Object.keys(base.state)) if (!(k in want)) p[k] = null;
    return p;
  }

  async function save(ev) {
    ev.preventDefault();
    const d = dev;
    $("state-error").textContent = "";
    let body;
    try { body = patch(); } catch (e) { $("state-error").textContent = "Not saved: " + e.message; return; }
    if (!Object.keys(body).length) { $("state-error").textContent = "Nothing changed."; return; }
    let resp;
    try {
      resp = await fetch(devPath(d.id, "/state/desired"), { method: "PATCH", signal: aborter.signal,
        headers: { "Content-Type": "application/merge-patch+json", "If-Match": '"' + base.version + '"' }, body: JSON.stringify(body) });
    } catch (e) {
      if (e.name !== "AbortError" && d === state.device) $("state-error").textContent = "Not saved: " + e.message;
      return;
    }
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (d !== state.device) return;
    if (resp.status === 412) {
      // Someone else changed desired since the editor was filled: show
      // theirs, and say the edit was not applied.
      await open(d);
      if (d !== state.device) return;
      fillEditor();
      $("state-error").textContent = "Not saved: someone else changed the desired state since you loaded it. It is reloaded (now version " + cur.desired.version + "); make your change again.";
      return;
    }
    if (!resp.ok) {
      if (resp.status === 401) { boot(); return; }
      const er = data && data.error, fields = er && Array.isArray(er.errors) ? er.errors.map((x) => x.field + ": " + x.reason).slice(0, 3) : [];
      $("state-error").textContent = "Not saved: " + (fields.length ? fields.join("; ") : (er && er.message) || "HTTP " + resp.status);
      return;
    }
    take(data, true);
    $("state-note").textContent = "Saved: desired version " + cur.desired.version + ".";
  }

  $("state-edit-rows").addEventListener("input", () => { dirty = true; });
  $("state-add").addEventListener("click", () => {
    dirty = true;
    const row = editRow("", "", false);
    $("state-edit-rows").append(row);
    row.querySelector(".state-key").focus();
  });
  $("state-reload").addEventListener("click", async () => { dirty = false; $("state-error").textContent = ""; if (dev) { cur = null; await open(dev); } });
  $("state-form").addEventListener("submit", save);

  // onEvent takes a live `state` event of the device shown.
  function onEvent(ev) {
    if (!dev || ev.device !== dev.id || !ev.state) return;
    take(ev.state, false);
  }

  return { reset, open, onEvent };
})();
