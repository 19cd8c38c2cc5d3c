package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
)

// TestHubOnPostgreSQL runs the hub with FIELDHUB_DATABASE_URL: the registry
// and the command queue live in PostgreSQL, so a second hub with a fresh
// data directory (another instance) sees them.
func TestHubOnPostgreSQL(t *testing.T) {
	influx := startInflux(t)
	db := pgtest.Database(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_DATABASE_URL": db})
	h.createDevice(t, "shared-1")
	st, cmd := h.send(t, h.adminToken, "shared-1", "", map[string]any{"name": "open_valve"}, nil)
	if st != 202 || cmd["status"] != "queued" {
		t.Fatalf("command: %d %v", st, cmd)
	}
	h.stop(t)
	h2 := startHub(t, influx, map[string]string{"FIELDHUB_DATABASE_URL": db, "FIELDHUB_DATA_DIR": filepath.Join(t.TempDir(), "other")})
	if st, m := h2.api(t, "GET", "/api/v1/devices/shared-1", h2.adminToken, nil); st != 200 {
		t.Fatalf("device on the second hub: %d %v", st, m)
	}
	if got := h2.commandStatus(t, "shared-1", cmd["id"].(string)); got != "queued" {
		t.Fatalf("command on the second hub: %s", got)
	}
	if st, _ := h2.api(t, "GET", "/readyz", "", nil); st != 200 {
		t.Fatalf("readyz %d", st)
	}
	if out := h2.stderr.String() + h2.stdout.String(); strings.Contains(out, db) {
		t.Fatal("the database URL appears in the output")
	}
}

// TestFleetFailsOverBetweenHubs: two hubs share a PostgreSQL registry and
// one InfluxDB; a simulated fleet spreads over both, and when the first hub
// stops its devices move to the second. Every acknowledged reading is in
// InfluxDB.
func TestFleetFailsOverBetweenHubs(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two hubs and a fleet; run without -short")
	}
	influx := startInflux(t)
	db := pgtest.Database(t)
	h1 := startHub(t, influx, map[string]string{"FIELDHUB_DATABASE_URL": db})
	var creds []firmwaresim.Cred
	for i := range 6 {
		id := fmt.Sprintf("fo-%d", i)
		creds = append(creds, firmwaresim.Cred{ID: id, Token: h1.createDevice(t, id)})
	}
	h2 := startHub(t, influx, map[string]string{"FIELDHUB_DATABASE_URL": db, "FIELDHUB_ADMIN_TOKEN": h1.adminToken})
	fleet, err := firmwaresim.New(firmwaresim.Config{Hub: h1.url, MoreHubs: []string{h2.url}, Creds: creds, Devices: 6, Rate: 20, Prefix: "fo"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fleet.Run(ctx) }()
	online := func(h *hub) float64 {
		_, s := h.api(t, "GET", "/api/v1/stats", h1.adminToken, nil) // both hubs take h1's admin token
		n, _ := s["online"].(float64)
		return n
	}
	waitUntil(t, "the fleet spread over both hubs", loadWait, func() bool { return online(h1) == 3 && online(h2) == 3 })
	h1.stop(t)
	waitUntil(t, "every device on the second hub", loadWait, func() bool { return online(h2) == 6 })
	acked := fleet.Stats().ReadingsAcked
	waitUntil(t, "more readings acknowledged by the second hub", loadWait, func() bool { return fleet.Stats().ReadingsAcked > acked+100 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := fleet.Stats()
	if st.Violations > 0 {
		t.Fatalf("violations: %v", st.ViolationSamples)
	}
	waitUntil(t, "every acknowledged reading in InfluxDB", loadWait, func() bool {
		rows, err := influx.Query(`SELECT count("temp") FROM "telemetry" WHERE "device" =~ /^fo-/`)
		return err == nil && len(rows) > 0 && int64(rows[0][1].(float64)) >= st.ReadingsAcked
	})
	t.Logf("%d readings acknowledged across the failover, all in InfluxDB", st.ReadingsAcked)
}
