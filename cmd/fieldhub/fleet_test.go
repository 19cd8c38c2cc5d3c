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
	if err := fleet.Run(ctx); err != nil {
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
