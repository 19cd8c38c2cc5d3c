package main

import (
	"fmt"
	"testing"
)

// TestAttackLedgerSharedRecreatedDevice is the devices/ledger attack of
// that name through a real hub on PostgreSQL: a device with an open gap
// is deleted and a new one created under the same id sends before the
// hub's next ledger save (the save interval is 3 s; the window between
// the delete and the new device's first reading is milliseconds, so the
// test passes by luck only when a save falls inside it). The new
// device's ledger shows the deleted device's gap and a reset from its
// boot, and the fleet view counts it.
func TestAttackLedgerSharedRecreatedDevice(t *testing.T) {
	if testing.Short() {
		t.Skip("runs PostgreSQL, Mosquitto, influxd and a hub; run without -short")
	}
	influx := startInflux(t)
	env := clusterEnv(t, influx)
	env["FIELDHUB_LEDGER_SAVE_INTERVAL"] = "3s"
	h := startHub(t, influx, env)
	const id = "reborn-1"
	send := func(tok, boot string, seqs ...int) {
		t.Helper()
		var rs []map[string]any
		for _, s := range seqs {
			rs = append(rs, map[string]any{"seq": s, "metrics": map[string]any{"temp": 20}})
		}
		if st, m := postReadings(t, h, tok, map[string]any{"boot": boot, "readings": rs}); st != 200 {
			t.Fatalf("readings: %d %v", st, m)
		}
	}
	seqOf := func() map[string]any {
		t.Helper()
		st, m := h.api(t, "GET", "/api/v1/devices/"+id+"/ledger", h.adminToken, nil)
		if st != 200 {
			t.Fatalf("ledger: %d %v", st, m)
		}
		return m["seq"].(map[string]any)
	}
	openGaps := func(seq map[string]any) string {
		s := ""
		for _, g := range seq["gaps"].([]any) {
			g := g.(map[string]any)
			if g["closed_at"] == nil {
				s += fmt.Sprintf("%v:%v-%v ", g["boot"], g["from"], g["to"])
			}
		}
		return s
	}
	send(h.createDevice(t, id), "old", 1, 3)
	waitUntil(t, "the old device's gap settled", loadWait, func() bool { return openGaps(seqOf()) == "old:2-2 " })

	if st, m := h.api(t, "DELETE", "/api/v1/devices/"+id, h.adminToken, nil); st != 204 && st != 200 {
		t.Fatalf("delete: %d %v", st, m)
	}
	tok := h.createDevice(t, id)
	send(tok, "new", 1, 2)
	send(tok, "new", 4) // a real gap, 3: shows when the new numbers are settled
	waitUntil(t, "the new device's gap settled", loadWait, func() bool {
		seq := seqOf()
		for _, g := range seq["gaps"].([]any) {
			if g.(map[string]any)["boot"] == "new" {
				return true
			}
		}
		return false
	})
	seq := seqOf()
	if got := openGaps(seq); got != "new:3-3 " || seq["gaps_total"] != 1.0 || seq["resets"] != 0.0 {
		t.Errorf("the new device's seq: open %q, gaps_total %v, resets %v; want only new:3-3, 1, 0", got, seq["gaps_total"], seq["resets"])
	}
	if _, f := h.api(t, "GET", "/api/v1/ledger", h.adminToken, nil); f["open_gaps"] != 1.0 {
		t.Errorf("fleet open gaps %v, want 1", f["open_gaps"])
	}
}
