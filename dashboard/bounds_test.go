package dashboard

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/dashboard/live"
	"github.com/fieldhub/fieldhub/devices"
)

// TestCheckRange is the history range policy as a table.
func TestCheckRange(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	for _, tc := range []struct {
		name        string
		start, stop time.Time
		rule        string // "" means allowed
	}{
		{"last hour", now.Add(-time.Hour), now, ""},
		{"up to a day ahead", now.Add(-time.Hour), now.Add(day), ""},
		{"from 1970", time.Unix(0, 0), time.Unix(0, 0).Add(399 * day), ""},
		{"exactly 400 days", now.Add(-400 * day), now, ""},
		{"year 9999", now.Add(-time.Hour), time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), "in the future"},
		{"a day and a second ahead", now, now.Add(day + time.Second), "in the future"},
		{"start equals stop", now, now, "start must be before stop"},
		{"start after stop", now, now.Add(-time.Hour), "start must be before stop"},
		{"before 1970", time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), now, "1970"},
		{"401 days", now.Add(-401 * day), now, "400 days"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkRange(tc.start, tc.stop, now)
			switch {
			case tc.rule == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.rule != "" && (err == nil || !strings.Contains(err.Error(), tc.rule)):
				t.Fatalf("got %v, want the rule %q", err, tc.rule)
			}
		})
	}
}

// TestRateRing: the rate is over the last 10 s of samples, whoever asks
// and whenever, and right from the first second.
func TestRateRing(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var g rateRing
	if r, _ := g.add(t0, 0, 0); r != 0 {
		t.Fatalf("first sample: %v, want 0", r)
	}
	// 100 readings/s and 2 rejected/s for 30 s: the rate is right from the
	// second sample on, and the ring never holds more than the window.
	for i := 1; i <= 30; i++ {
		r, j := g.add(t0.Add(time.Duration(i)*time.Second), int64(100*i), int64(2*i))
		if r != 100 || j != 2 {
			t.Fatalf("second %d: %v/s, %v/s; want 100 and 2", i, r, j)
		}
		if len(g.samples) > 11 {
			t.Fatalf("second %d: %d samples kept", i, len(g.samples))
		}
	}
	// The flow stops: the rate falls over the window, to 0 after it.
	for i := 31; i <= 41; i++ {
		r, _ := g.add(t0.Add(time.Duration(i)*time.Second), 3000, 60)
		if want := 100 * float64(40-i) / 10; i <= 40 && r != want {
			t.Fatalf("second %d after the flow stopped: %v, want %v", i, r, want)
		}
		if i == 41 && r != 0 {
			t.Fatalf("a window after the flow stopped: %v, want 0", r)
		}
	}
}

// TestLiveFilterBounded: a socket follows only registered devices, at most
// MaxFilterDevices of them, and is told about what it asked for in vain.
func TestLiveFilterBounded(t *testing.T) {
	r := newLiveRig(t, live.Options{MaxFilterDevices: 2})
	for _, id := range []string{"d2", "d3"} {
		if _, err := r.api.opts.Registry.Create(context.Background(), devices.Spec{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	c := r.dial(t, nil)
	answer := func() map[string]any {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			var m map[string]any
			if err := c.ReadJSON(&m); err != nil {
				t.Fatal(err)
			}
			if m["type"] == "error" {
				return m
			}
		}
	}
	subscribe(t, c, `{"type":"subscribe","devices":["d1","ghost-1","ghost-2","d1"]}`)
	if m := answer(); m["code"] != "unknown_devices" || !strings.Contains(fmt.Sprint(m["message"]), `2 device ids are not in the registry and were ignored: ["ghost-1","ghost-2"]`) {
		t.Fatalf("answer %v", m)
	}
	subscribe(t, c, `{"type":"subscribe","devices":["d2","d1"]}`) // d1 again: still 2
	subscribe(t, c, `{"type":"subscribe","devices":["d3"]}`)
	if m := answer(); m["code"] != "too_many_devices" || !strings.Contains(fmt.Sprint(m["message"]), "at most 2 devices") {
		t.Fatalf("answer %v", m)
	}
	if n := r.live.Stats().FilterDevices; n != 2 {
		t.Fatalf("filter holds %d devices, want 2", n)
	}
	// The wildcard is not a device: always allowed.
	subscribe(t, c, `{"type":"subscribe","devices":["*"]}`)
	waitSubscribed(t, r, c, "d3")
}
