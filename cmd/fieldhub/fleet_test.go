package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// TestFleetEndToEnd runs the real hub against a real influxd with a
// simulated fleet on both transports, faults included: every fault gets its
// documented answer, and every acknowledged reading is in InfluxDB.
func TestFleetEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 300-device fleet for 10 s; run without -short")
	}
	influx := influxtest.Start(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_MQTT_CONNECT_RATE": "1000"})
	ctx := context.Background()
	fleet, err := firmwaresim.New(firmwaresim.Config{
		Hub: h.url, MQTT: h.env["FIELDHUB_MQTT_ADDR"], AdminToken: h.adminToken, Provision: true,
		Devices: 300, Transport: firmwaresim.TransportMix, Rate: 5, FaultRate: 0.02, Duration: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- fleet.Run(ctx) }()
	// While the fleet runs, operators command a sample of devices; the
	// simulated firmware obeys known commands and refuses unknown ones.
	waitUntil(t, "fleet connected", 10*time.Second, func() bool { return fleet.Stats().Connected >= 250 })
	for i, name := range []string{"set_interval", "set_fault_rate", "reboot", "self_destruct"} {
		for _, dev := range []int{1 + i, 2 + i*7, 150 + i} { // both transports
			params := map[string]any{"seconds": 0.5, "rate": 0.0}
			st, cmd := h.send(t, h.adminToken, fmt.Sprintf("sim-%d", dev), "?wait=10s", map[string]any{"name": name, "params": params}, nil)
			want := "succeeded"
			if name == "self_destruct" {
				want = "failed"
			}
			if st != 200 || cmd["status"] != want {
				t.Errorf("%s to sim-%d: %d %v, want %s", name, dev, st, cmd["status"], want)
			}
		}
	}
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
	st := fleet.Stats()
	t.Logf("%s", st.Line())
	if st.Violations > 0 {
		t.Fatalf("%d contract violations: %v", st.Violations, st.ViolationSamples)
	}
	if st.FaultsSent == 0 || st.FaultsAnswered != st.FaultsSent {
		t.Fatalf("faults answered %d of %d", st.FaultsAnswered, st.FaultsSent)
	}
	if st.ReadingsAcked < 300*5*5 {
		t.Fatalf("only %d readings acknowledged", st.ReadingsAcked)
	}
	// Every acknowledged reading is in InfluxDB: count what landed.
	var total int
	waitUntil(t, fmt.Sprintf("%d readings in InfluxDB", st.ReadingsAcked), 60*time.Second, func() bool {
		rows, err := influx.Query(`SELECT count("temp") FROM "telemetry" WHERE "device" =~ /^sim-/`)
		if err != nil || len(rows) == 0 {
			return false
		}
		total = int(rows[0][1].(float64))
		return int64(total) >= st.ReadingsAcked
	})
	t.Logf("%d readings acknowledged, %d in InfluxDB", st.ReadingsAcked, total)
}
