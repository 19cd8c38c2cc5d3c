"use strict";
// ledger.js: the device page's ledger panel and the overview's open-gap
// badges (docs/protocol.md "Sequence numbers and the ledger"). It uses
// app.js's helpers ($, el, api, devPath, fmtTime, state); app.js calls
// ledgerLoad, ledgerReset and ledgerMarkRows.

// ledgerLoad fills the panel from GET /api/v1/devices/{id}/ledger.
async function ledgerLoad() {
  const dev = state.device;
  if (!dev) return;
  let l;
  try { l = await api("GET", devPath(dev.id, "/ledger")); } catch (e) {
    if (dev !== state.device) return;
    $("ledger-summary").textContent = e.status === 404 ? "This hub keeps no ledger." : "Ledger unavailable: " + e.message;
    return;
  }
  if (dev !== state.device) return;
  const refused = Object.entries(l.refused || {}).map(([c, n]) => c + " " + n).join(", ");
  const s = l.seq || {};
  $("ledger-summary").textContent =
    "Received " + l.received + " messages; refused " + (refused || "none") + ". Readings durable " + l.durable +
    ", written to InfluxDB " + l.written + (l.durable > l.written ? " (" + (l.durable - l.written) + " waiting)" : "") +
    ", dead-lettered " + l.dead_lettered + ". Sequence: " + (s.open_gaps || 0) + " open gaps, " +
    (s.duplicates || 0) + " duplicates, " + (s.resets || 0) + " resets. Last hour: received " + l.last_hour.received +
    ", durable " + l.last_hour.durable + ", gaps " + l.last_hour.gaps + ".";
  $("ledger-panel").classList.toggle("has-gaps", (s.open_gaps || 0) > 0);
  $("ledger-gaps").replaceChildren(...(s.gaps || []).map((g) => el("tr", { class: g.closed_at ? "closed" : "open" },
    el("td", { class: "mono" }, g.boot || "–"),
    el("td", { class: "mono" }, g.from === g.to ? String(g.from) : g.from + "–" + g.to),
    el("td", {}, fmtTime(g.noticed_at)),
    el("td", {}, g.closed_at ? fmtTime(g.closed_at) + (g.expired ? " (expired)" : " (filled)") : "open"))));
}

function ledgerReset() {
  $("ledger-summary").textContent = "";
  $("ledger-gaps").replaceChildren();
  $("ledger-panel").classList.remove("has-gaps");
}

// ledgerMarkRows badges the overview's rows of devices with open gaps,
// from the fleet summary (GET /api/v1/ledger: the devices with the most).
async function ledgerMarkRows(gen, signal) {
  let f;
  try { f = await api("GET", "/api/v1/ledger", undefined, signal); } catch (e) { return; }
  if (gen !== state.gen) return;
  for (const g of f.devices_with_open_gaps || []) {
    const row = state.rows.get(g.device);
    if (!row) continue;
    row.d.open_gaps = g.open_gaps;
    const badge = el("span", { class: "gaps-badge", title: g.open_gaps + " open sequence gaps: readings the device sent that the hub never got" }, g.open_gaps + " gaps");
    row.cells.status.append(" ", badge);
    row.tr.classList.add("has-gaps");
  }
}
