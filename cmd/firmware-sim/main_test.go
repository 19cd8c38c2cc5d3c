package main

import (
	"testing"

	"github.com/fieldhub/fieldhub/firmware-sim/load"
)

func TestParseProc(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want load.Proc
		ok   bool
	}{
		{"influxd=1234", load.Proc{Name: "influxd", PID: 1234}, true},
		{"telegraf=1", load.Proc{Name: "telegraf", PID: 1}, true},
		{"1234", load.Proc{}, false},
		{"=1234", load.Proc{}, false},
		{"influxd=", load.Proc{}, false},
		{"influxd=0", load.Proc{}, false},
		{"influxd=x", load.Proc{}, false},
	} {
		got, err := parseProc(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseProc(%q) = %+v, %v; want %+v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
