package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
	"github.com/fieldhub/fieldhub/firmware-sim/load"
)

// TestFleetEndToEnd runs the real hub against a real influxd with a
// simulated fleet on both transports, faults included: every fault gets its
// documented answer, every acknowledged reading is in InfluxDB at its
// device and timestamp with its values, no refused reading is, and nothing
// was dead-lettered.
//
// The run is bounded by readings (Count messages per device), not by wall
// time, and the test waits for what it checks (connected, commands settled,
// every message answered, readings landed) with generous deadlines: on a
// loaded machine it runs longer, it does not fail.
func TestFleetEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 300-device fleet for 30 messages each; run without -short")
	}
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_MQTT_CONNECT_RATE": "1000"})
	const devices, count = 300, 30
	fleet, err := firmwaresim.New(firmwaresim.Config{
		Hub: h.url, MQTT: h.env["FIELDHUB_MQTT_ADDR"], AdminToken: h.adminToken, Provision: true,
		Devices: devices, Transport: firmwaresim.TransportMix, Rate: 5, FaultRate: 0.02,
		Count: count, Hold: true, RecordAcked: devices * count,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stopFleet := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	// The load harness's check runs too, at the end of Run: its problems
	// are the fleet's contract violations.
	harness := load.New(load.Options{InfluxURL: influx.URL, InfluxDB: influx.DB, Prefix: "sim"})
	go func() { runErr <- harness.Run(ctx, fleet) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		stopFleet()
		return <-runErr
	}
	t.Cleanup(func() { _ = stop() }) // before the hub's cleanup: the fleet goes first

	// While the fleet runs, operators command a sample of devices; the
	// simulated firmware obeys known commands and refuses unknown ones. A
	// command may still be queued when the REST wait ends (a device
	// flapping or rebooting): wait for it to settle.
	waitUntil(t, "fleet connected", 60*time.Second, func() bool { return fleet.Stats().Connected >= 250 })
	for i, name := range []string{"set_interval", "set_fault_rate", "reboot", "self_destruct"} {
		for _, dev := range []int{1 + i, 2 + i*7, 150 + i} { // both transports
			device := fmt.Sprintf("sim-%d", dev)
			params := map[string]any{"seconds": 0.5, "rate": 0.0}
			st, cmd := h.send(t, h.adminToken, device, "?wait=10s", map[string]any{"name": name, "params": params}, nil)
			if st != 200 && st != 202 {
				t.Fatalf("%s to %s: HTTP %d %v", name, device, st, cmd)
			}
			status, _ := cmd["status"].(string)
			id, _ := cmd["id"].(string)
			waitUntil(t, fmt.Sprintf("%s to %s settled", name, device), 60*time.Second, func() bool {
				if status == "queued" || status == "sent" {
					status = h.commandStatus(t, device, id)
				}
				return status != "queued" && status != "sent"
			})
			want := "succeeded"
			if name == "self_destruct" {
				want = "failed"
			}
			if status != want {
				t.Errorf("%s to %s: %s, want %s", name, device, status, want)
			}
		}
	}
	finishBy := time.Now().Add(5 * time.Minute)
	for fleet.Stats().Finished != devices {
		if time.Now().After(finishBy) {
			t.Fatalf("timed out after 5m waiting for every device to send %d messages and get every answer: %s\n%s",
				count, fleet.Stats().Line(), strings.Join(fleet.Unfinished(20), "\n"))
		}
		time.Sleep(100 * time.Millisecond) // polling the fleet's counters, not synchronising
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st := fleet.Stats()
	t.Logf("%s", st.Line())
	// Errors, not fatal: what InfluxDB and the dead-letter file hold
	// below says what a violation cost.
	if st.Violations > 0 {
		t.Errorf("%d contract violations: %v", st.Violations, st.ViolationSamples)
	}
	if b := harness.Bench(st); !b.Verified || b.Lost != 0 {
		t.Errorf("the load harness's check: verified %v, %d acked readings lost", b.Verified, b.Lost)
	}
	if st.FaultsSent == 0 || st.FaultsAnswered != st.FaultsSent {
		t.Errorf("faults answered %d of %d", st.FaultsAnswered, st.FaultsSent)
	}
	if st.ReadingsAcked < devices*count*9/10 {
		t.Fatalf("only %d readings acknowledged, want at least %d", st.ReadingsAcked, devices*count*9/10)
	}
	rec := fleet.Recorded()
	if rec.AckedOver > 0 || int64(len(rec.Acked)) < st.ReadingsAcked { // more: faulty readings the hub acked

		t.Fatalf("recorded %d acked readings (%d over the cap) of %d", len(rec.Acked), rec.AckedOver, st.ReadingsAcked)
	}
	if len(rec.Refused) == 0 {
		t.Fatal("no refused reading recorded: the faults did not exercise refusal")
	}

	// Wait until as many points as acked readings landed (the hub drains
	// its spool), then check every one: a reading lost or changed on the
	// way shows up by device, ts and value, not as a count off by one.
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		rows, err := influx.Query(`SELECT count("temp") FROM "telemetry" WHERE "device" =~ /^sim-/`)
		if err == nil && len(rows) > 0 && int64(rows[0][1].(float64)) >= st.ReadingsAcked {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling InfluxDB, not synchronising
	}
	v, err := fleet.Verify(context.Background(), influx.URL, influx.DB)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("InfluxDB, reading by reading: %s", v)
	if !v.OK() {
		t.Errorf("acked readings not in InfluxDB as sent: %s", v)
	}

	// Acked means stored: nothing went to the dead-letter file.
	m := scrape(t, h)
	if n, ok := m["fieldhub_influx_points_dead_lettered_total"]; !ok || n != 0 {
		t.Errorf("fieldhub_influx_points_dead_lettered_total = %v (exported %v), want 0", n, ok)
	}
	if n := m["fieldhub_dead_letters_total"]; n != 0 {
		t.Errorf("fieldhub_dead_letters_total = %v, want 0", n)
	}
	dl := filepath.Join(h.env["FIELDHUB_DATA_DIR"], "deadletter.lp")
	if fi, err := os.Stat(dl); err == nil && fi.Size() > 0 {
		b, _ := os.ReadFile(dl)
		t.Errorf("dead-letter file has %d bytes:\n%.2000s", fi.Size(), b)
	}
}
