package telemetry_test

import (
	"math"
	"testing"

	"github.com/fieldhub/fieldhub/telemetry"
)

func TestEncodeEvent(t *testing.T) {
	on := true
	off := false
	tests := []struct {
		name string
		ev   telemetry.Event
		want string
	}{
		{"reading", telemetry.Event{Type: telemetry.EventReading, Device: "d1", TS: 5, Metrics: telemetry.Metrics{
			"z": telemetry.Number(21.5), "a": telemetry.Bool(true), "m": telemetry.String("<ok>")}},
			`{"type":"reading","device":"d1","ts":5,"metrics":{"a":true,"m":"<ok>","z":21.5}}`},
		{"online", telemetry.Event{Type: telemetry.EventPresence, Device: "d1", Online: &on, Transport: "ws", At: 7},
			`{"type":"presence","device":"d1","online":true,"transport":"ws","at":7}`},
		{"offline", telemetry.Event{Type: telemetry.EventPresence, Device: "d1", Online: &off, Reason: "revoked", At: 7},
			`{"type":"presence","device":"d1","online":false,"reason":"revoked","at":7}`},
		{"command", telemetry.Event{Type: telemetry.EventCommand, Device: "d1", ID: "c1", Status: "sent", At: 9},
			`{"type":"command","device":"d1","at":9,"id":"c1","status":"sent"}`},
		{"not finite", telemetry.Event{Type: telemetry.EventReading, Device: "d1", Metrics: telemetry.Metrics{"x": telemetry.Number(math.Inf(1))}},
			`{"type":"error","message":"encode event"}`},
	}
	for _, tt := range tests {
		if got := string(telemetry.EncodeEvent(tt.ev)); got != tt.want {
			t.Errorf("%s: %s\nwant %s", tt.name, got, tt.want)
		}
	}
}
