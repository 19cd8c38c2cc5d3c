package dashboard

import (
	"fmt"
	"testing"

	"github.com/fieldhub/fieldhub/telemetry"
)

func pev(at int64, online bool, reason string) telemetry.Event {
	return telemetry.Event{Type: telemetry.EventPresence, Device: "d", Online: &online, Transport: "ws", Reason: reason, At: at}
}

// TestMergePresence: what InfluxDB has, then what only memory has yet
// (newer, or of the same millisecond and not stored), never twice.
func TestMergePresence(t *testing.T) {
	a, b, c := pev(10, true, ""), pev(20, false, "client_closed"), pev(20, true, "")
	d := pev(30, false, "heartbeat_timeout")
	tests := []struct {
		name        string
		stored, mem []telemetry.Event
		want        []telemetry.Event
	}{
		{"nothing stored: memory", nil, []telemetry.Event{a, b}, []telemetry.Event{a, b}},
		{"all stored", []telemetry.Event{a, b}, []telemetry.Event{a, b}, []telemetry.Event{a, b}},
		{"newer in memory", []telemetry.Event{a, b}, []telemetry.Event{a, b, d}, []telemetry.Event{a, b, d}},
		{"same millisecond, not stored", []telemetry.Event{a, b}, []telemetry.Event{b, c}, []telemetry.Event{a, b, c}},
		{"memory older than stored (a restart)", []telemetry.Event{b, d}, []telemetry.Event{a}, []telemetry.Event{b, d}},
		{"memory empty", []telemetry.Event{a}, nil, []telemetry.Event{a}},
	}
	for _, tc := range tests {
		if got := mergePresence(tc.stored, tc.mem); fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestCSVField: RFC 4180 quoting, and spreadsheet formulas defused.
func TestCSVField(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"idle", "idle"},
		{"", ""},
		{"a,b", `"a,b"`},
		{`say "hi"`, `"say ""hi"""`},
		{"two\nlines", "\"two\nlines\""},
		{" padded", `" padded"`},
		{"=SUM(A1)", `"'=SUM(A1)"`},
		{"+1 call me", `"'+1 call me"`},
		{"@cmd", `"'@cmd"`},
		{"-5", "-5"}, // a number, not a formula
		{"-x", `"'-x"`},
	} {
		if got := string(appendCSVField(nil, tc.in)); got != tc.want {
			t.Errorf("%q -> %s, want %s", tc.in, got, tc.want)
		}
	}
}
