package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// TestHubOnPostgreSQL runs the hub with FIELDHUB_DATABASE_URL: the registry
// and the command queue live in PostgreSQL, so a second hub with a fresh
// data directory (another instance) sees them.
func TestHubOnPostgreSQL(t *testing.T) {
	influx := influxtest.Start(t)
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
