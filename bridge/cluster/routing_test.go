package cluster

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/fieldhub/fieldhub/telemetry"
)

// newOffline is a Cluster that never connects, with a commandsFake as its
// command service: what it does with broker traffic is testable without
// Mosquitto.
func newOffline(t *testing.T) (*Cluster, *commandsFake, *recorder) {
	t.Helper()
	rec := &recorder{}
	c := &Cluster{opts: Options{ClientID: "me", Registry: registryStub{}, Local: rec}, log: slog.New(slog.DiscardHandler),
		brokerHeard: map[string]time.Time{}, owner: map[string]string{}}
	c.peers = stubPeers(t, rec)
	f := &commandsFake{}
	c.peers.Commands = f
	return c, f, rec
}

// TestCommandsFromTheBroker: a command another instance published goes
// to the command service (which delivers it or wakes polls); anything
// that is not a command of ours is dropped.
func TestCommandsFromTheBroker(t *testing.T) {
	for _, tc := range []struct {
		name, topic, payload string
		want                 []string
	}{
		{"a command", "devices/d1/commands", `{"id":"cmd-1","name":"reboot"}`, []string{"d1/cmd-1"}},
		{"no id", "devices/d1/commands", `{"name":"reboot"}`, nil},
		{"malformed", "devices/d1/commands", `{"id":`, nil},
		{"not a device topic", "other/d1/commands", `{"id":"cmd-1"}`, nil},
		{"too large", "devices/d1/commands", `{"id":"cmd-1","name":"x","params":{"p":"` + strings.Repeat("a", maxCommandBytes) + `"}}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, f, _ := newOffline(t)
			c.onCommand(tc.topic, []byte(tc.payload))
			if strings.Join(f.forwarded, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("forwarded %v, want %v", f.forwarded, tc.want)
			}
			if n := c.stats.Forwarded.Load(); n != int64(len(tc.want)) {
				t.Fatalf("forwarded counter %d", n)
			}
		})
	}
}

// TestRemoteEventsReachCommands: a device online on another instance
// hands its commands over there; a command event from another instance
// lets this one re-read the command; both reach the dashboards here.
func TestRemoteEventsReachCommands(t *testing.T) {
	c, f, rec := newOffline(t)
	online, offline := true, false
	for _, ev := range []telemetry.Event{
		{Type: telemetry.EventPresence, Device: "d1", Online: &online, Transport: "ws", At: 1},
		{Type: telemetry.EventPresence, Device: "d2", Online: &offline, At: 1},
		{Type: telemetry.EventCommand, Device: "d1", ID: "cmd-1", Status: "succeeded", At: 1},
		{Type: telemetry.EventReading, Device: "d3", TS: 1},
	} {
		b, err := json.Marshal(envelope{Origin: "other", Events: []telemetry.Event{ev}})
		if err != nil {
			t.Fatal(err)
		}
		c.onLive(b)
	}
	if strings.Join(f.connected, ",") != "d1" {
		t.Fatalf("RemoteConnected for %v, want d1 only", f.connected)
	}
	if strings.Join(f.changed, ",") != "d1/cmd-1" {
		t.Fatalf("CommandChanged for %v", f.changed)
	}
	if len(rec.events) != 4 {
		t.Fatalf("dashboards got %d events", len(rec.events))
	}
	// Our own events are not news.
	b, _ := json.Marshal(envelope{Origin: "me", Events: []telemetry.Event{{Type: telemetry.EventCommand, Device: "d1", ID: "cmd-2"}}})
	c.onLive(b)
	if len(f.changed) != 1 {
		t.Fatalf("own event taken: %v", f.changed)
	}
}
