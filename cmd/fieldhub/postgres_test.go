package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// postgresURL creates a database of its own on the machine's PostgreSQL
// (FIELDHUB_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres)
// and drops it when the test ends.
func postgresURL(t *testing.T) string {
	t.Helper()
	admin := os.Getenv("FIELDHUB_TEST_POSTGRES_URL")
	if admin == "" {
		admin = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("PostgreSQL is needed for this test (set FIELDHUB_TEST_POSTGRES_URL): %v", err)
	}
	defer conn.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "fieldhub_test_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c, err := pgx.Connect(ctx, admin); err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)")
			c.Close(ctx)
		}
	})
	cfg, _ := pgx.ParseConfig(admin)
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name)
}

// TestHubOnPostgreSQL runs the hub with FIELDHUB_DATABASE_URL: the registry
// and the command queue live in PostgreSQL, so a second hub with a fresh
// data directory (another instance) sees them.
func TestHubOnPostgreSQL(t *testing.T) {
	influx := influxtest.Start(t)
	db := postgresURL(t)
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
