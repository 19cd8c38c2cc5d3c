package main

import (
	"os"
	"testing"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// influxShared is the one influxd the tests of this package share, each in
// a database of its own (startInflux). It is package state only because
// TestMain is the one place that outlives every test: it stops the server
// after m.Run. Tests that stop, kill or restart influxd start their own
// with influxtest.Start.
var influxShared influxtest.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	influxShared.Close()
	os.Exit(code)
}

// startInflux gives t a fresh database on the package's shared influxd.
func startInflux(t testing.TB) *influxtest.Server {
	t.Helper()
	return influxShared.Database(t)
}
