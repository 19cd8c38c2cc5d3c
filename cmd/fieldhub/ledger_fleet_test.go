package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
)

// TestFleetLedger runs a simulated fleet whose devices skip sequence
// numbers (drop) and restart (reboot), with flapping connections and a
// hub restart in the middle, against the real hub and influxd: every
// device's open gaps are exactly the ranges the simulator skipped, no
// more (resends after reconnects and the restart are no gaps), and once
// InfluxDB caught up every device's ledger has durable == written.
func TestFleetLedger(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 40-device fleet across a hub restart; run without -short")
	}
	influx := startInflux(t)
	env := map[string]string{"FIELDHUB_MQTT_CONNECT_RATE": "1000"}
	h := startHub(t, influx, env)
	for _, k := range []string{"FIELDHUB_HTTP_ADDR", "FIELDHUB_MQTT_ADDR", "FIELDHUB_DATA_DIR", "FIELDHUB_ADMIN_TOKEN"} {
		env[k] = h.env[k] // the restarted hub is the same hub
	}
	const devices, count = 40, 60
	fleet, err := firmwaresim.New(firmwaresim.Config{
		Hub: h.url, MQTT: h.env["FIELDHUB_MQTT_ADDR"], AdminToken: h.adminToken, Provision: true, Prefix: "led",
		Devices: devices, Transport: firmwaresim.TransportMix, Rate: 20, Batch: 2, FaultRate: 0.03,
		DropRate: 0.1, RebootRate: 0.02, Count: count, Hold: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stopFleet := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- fleet.Run(ctx) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		stopFleet()
		return <-runErr
	}
	t.Cleanup(func() { _ = stop() })

	waitUntil(t, "a third of the readings acknowledged", loadWait, func() bool {
		return fleet.Stats().ReadingsAcked >= devices*count*2/3
	})
	h.stop(t)
	h = startHub(t, influx, env)
	finishBy := time.Now().Add(5 * time.Minute)
	for fleet.Stats().Finished != devices {
		if time.Now().After(finishBy) {
			t.Fatalf("timed out waiting for the fleet: %s\n%s", fleet.Stats().Line(), strings.Join(fleet.Unfinished(10), "\n"))
		}
		time.Sleep(100 * time.Millisecond) // polling the fleet's counters, not synchronising
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st := fleet.Stats()
	t.Logf("%s", st.Line())
	// A faulty connect (the wrong_token fault) that met the hub while it
	// restarted got "connection refused", not its documented refusal:
	// the restart's doing, not a violation. Anything else is one.
	for _, v := range st.ViolationSamples {
		if !strings.Contains(v, "connect: connection refused") {
			t.Errorf("%d contract violations: %v", st.Violations, st.ViolationSamples)
			break
		}
	}
	if st.Violations > int64(len(st.ViolationSamples)) {
		t.Errorf("%d contract violations, %d shown: %v", st.Violations, len(st.ViolationSamples), st.ViolationSamples)
	}

	want := map[string][]string{}
	skipped := fleet.SeqGaps()
	for _, g := range skipped {
		want[g.Device] = append(want[g.Device], fmt.Sprintf("%s:%d-%d", g.Boot, g.From, g.To))
	}
	if len(skipped) == 0 {
		t.Fatal("the simulator skipped nothing: the drop fault did not run")
	}
	var resets, dups, durable float64
	for i := 1; i <= devices; i++ {
		id := fmt.Sprintf("led-%d", i)
		var led map[string]any
		// durable == written once the writer caught up.
		waitUntil(t, id+"'s durable readings written", loadWait, func() bool {
			var code int
			code, led = h.api(t, "GET", "/api/v1/devices/"+id+"/ledger", h.adminToken, nil)
			return code == 200 && led["durable"] == led["written"] && led["durable"].(float64) > 0
		})
		seq := led["seq"].(map[string]any)
		var open []string
		for _, g := range seq["gaps"].([]any) {
			g := g.(map[string]any)
			if g["closed_at"] == nil {
				open = append(open, fmt.Sprintf("%s:%.0f-%.0f", g["boot"], g["from"], g["to"]))
			}
		}
		slices.Sort(open)
		w := slices.Sorted(slices.Values(want[id]))
		if !slices.Equal(open, w) || int(seq["open_gaps"].(float64)) != len(w) {
			t.Errorf("%s: open gaps %v (open_gaps %v), the simulator skipped %v", id, open, seq["open_gaps"], w)
		}
		if led["dead_lettered"].(float64) != 0 {
			t.Errorf("%s: %v dead-lettered", id, led["dead_lettered"])
		}
		resets += seq["resets"].(float64)
		dups += seq["duplicates"].(float64)
		durable += led["durable"].(float64)
	}
	// Prometheus has the same totals, without per-device labels.
	m := scrape(t, h)
	if m["fieldhub_ledger_durable_total"] != durable || m["fieldhub_ledger_written_total"] != durable || m["fieldhub_ledger_open_gaps"] != float64(len(skipped)) {
		t.Errorf("metrics durable %v written %v open gaps %v; want %v, %v, %d", m["fieldhub_ledger_durable_total"], m["fieldhub_ledger_written_total"], m["fieldhub_ledger_open_gaps"], durable, durable, len(skipped))
	}
	t.Logf("%d gaps skipped by the simulator and reported by the hub; %.0f resets, %.0f duplicates", len(skipped), resets, dups)
	if resets == 0 {
		t.Error("no resets: the reboot fault did not run")
	}
	// seq is in InfluxDB with every reading, as an integer: the gaps can
	// be found in history too.
	rows, err := influx.Query(`SELECT count("seq"), count("temp") FROM "telemetry" WHERE "device" =~ /^led-/`)
	if err != nil || len(rows) == 0 || rows[0][1] != rows[0][2] || rows[0][1].(float64) == 0 {
		t.Errorf("count(seq), count(temp) in InfluxDB: %v %v", rows, err)
	}
	fields, err := influx.Query(`SHOW FIELD KEYS FROM "telemetry"`)
	if err != nil || !slices.ContainsFunc(fields, func(r []any) bool { return r[0] == "seq" && r[1] == "integer" }) {
		t.Errorf("field keys %v %v: want seq as an integer", fields, err)
	}
	// ... and not a metric: the catalogue (charts, exports) leaves it out.
	if code, cat := h.api(t, "GET", "/api/v1/devices/led-1/metrics", h.adminToken, nil); code != 200 || strings.Contains(fmt.Sprint(cat["metrics"]), "seq") || !strings.Contains(fmt.Sprint(cat["metrics"]), "temp") {
		t.Errorf("led-1's catalogue %d: %v", code, cat)
	}
	code, fl := h.api(t, "GET", "/api/v1/ledger", h.adminToken, nil)
	if code != 200 || int(fl["open_gaps"].(float64)) != len(skipped) {
		t.Errorf("fleet ledger %d: open_gaps %v, want %d", code, fl["open_gaps"], len(skipped))
	}
}
