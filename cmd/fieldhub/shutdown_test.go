package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// stopOrder is the components' "component stopped" log lines of a hub's
// shutdown, in order.
func stopOrder(t *testing.T, logs string) []string {
	t.Helper()
	var got []string
	for _, line := range strings.Split(logs, "\n") {
		var e struct{ Msg, Component string }
		if json.Unmarshal([]byte(line), &e) == nil && e.Msg == "component stopped" {
			got = append(got, e.Component)
		}
	}
	return got
}

// TestShutdownOrder: the real hub stops its components in the order
// docs/architecture.md gives ("Lifecycle and shutdown"): stop accepting ->
// close device sockets -> broker (or cluster) -> dashboard sockets -> live
// hub -> rates -> commands -> registry flush -> drain the spool -> writer.
// The stores close after that, by serve's defers.
func TestShutdownOrder(t *testing.T) {
	h := startHub(t, startInflux(t), map[string]string{"FIELDHUB_LOG_FORMAT": "json"})
	h.stop(t)
	want := []string{"http server", "device sockets", "mqtt broker", "dashboard sockets", "live hub", "rates",
		"commands", "registry", "spool drain", "influx writer"}
	if got := stopOrder(t, h.stderr.String()); !slices.Equal(got, want) {
		t.Fatalf("stop order\n got %q\nwant %q", got, want)
	}
}
