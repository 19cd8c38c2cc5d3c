package main

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

// uxSendHour makes device send one reading a minute for the hour from
// base, with nothing in minutes 20-39 (a hub restart, say): temp a
// number, on a boolean, mode a string. It waits until InfluxDB has them.
func uxSendHour(t *testing.T, h *hub, device string, base time.Time) {
	t.Helper()
	c := integrityDial(t, h, h.createDevice(t, device))
	var rs []string
	for i := range 60 {
		if i >= 20 && i < 40 {
			continue
		}
		rs = append(rs, fmt.Sprintf(`{"ts":%d,"metrics":{"temp":%d,"on":%t,"mode":"m%d"}}`, base.Add(time.Duration(i)*time.Minute).UnixMilli(), i, i%2 == 0, i%3))
	}
	if f := integritySend(t, c, `{"type":"telemetry","id":"h","readings":[`+strings.Join(rs, ",")+`]}`); f["type"] != "ack" {
		t.Fatalf("telemetry refused: %v", f)
	}
	c.Close()
}

// TestReadingsDownsampled: GET readings with points=N downsamples on the
// server for a chart N pixels wide: at most N points, empty windows as
// null (a gap), mean for numbers and last for booleans and strings, and
// the metric's type from the schema store.
func TestReadingsDownsampled(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	viewer := h.token(t, "viewer")
	base := time.Now().Add(-3 * time.Hour).Truncate(time.Hour)
	uxSendHour(t, h, "chart-1", base)
	waitUntil(t, "40 points in InfluxDB", loadWait, func() bool { n, _ := influx.Count("chart-1", "mode"); return n == 40 })
	rng := fmt.Sprintf("&start=%d&stop=%d", base.UnixMilli(), base.Add(time.Hour).UnixMilli())
	tests := []struct {
		name   string
		query  string
		status int
		typ    string
		values []any // the points' values, when status is 200
		errHas string
	}{
		{"numbers: mean per 10 min, the gap as nulls", "metric=temp&points=6", 200, "number", []any{4.5, 14.5, nil, nil, 44.5, 54.5}, ""},
		{"booleans: last", "metric=on&points=6", 200, "bool", []any{false, false, nil, nil, false, false}, ""},
		{"strings: last", "metric=mode&points=6", 200, "string", []any{"m0", "m1", nil, nil, "m1", "m2"}, ""},
		{"fn overrides for numbers", "metric=temp&points=2&fn=max", 200, "number", []any{19.0, 59.0}, ""},
		{"count works for any type", "metric=mode&points=2&fn=count", 200, "string", []any{20.0, 20.0}, ""},
		{"one point", "metric=temp&points=1&fn=min", 200, "number", []any{0.0}, ""},
		{"mean of a boolean is refused", "metric=on&points=6&fn=mean", 400, "", nil, "fn: on is a bool metric"},
		{"every of a string takes last too", "metric=mode&every=30m", 200, "string", []any{"m1", "m2"}, ""},
		{"points 0", "metric=temp&points=0", 400, "", nil, "points must be 1 to 2000"},
		{"points 2001", "metric=temp&points=2001", 400, "", nil, "points must be 1 to 2000"},
		{"points and every", "metric=temp&points=6&every=1m", 400, "", nil, "points or every"},
		{"points and limit", "metric=temp&points=6&limit=5", 400, "", nil, "points or limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, m := h.api(t, "GET", "/api/v1/devices/chart-1/readings?"+tc.query+rng, viewer, nil)
			if st != tc.status {
				t.Fatalf("status %d, want %d: %v", st, tc.status, m)
			}
			if st != 200 {
				if msg := fmt.Sprint(m["error"]); !strings.Contains(msg, tc.errHas) {
					t.Fatalf("error %s does not say %q", msg, tc.errHas)
				}
				return
			}
			if m["type"] != tc.typ || m["device"] != "chart-1" {
				t.Errorf("type %v device %v, want %s", m["type"], m["device"], tc.typ)
			}
			ps := m["points"].([]any)
			var got []any
			for _, p := range ps {
				got = append(got, p.(map[string]any)["value"])
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.values) {
				t.Fatalf("values %v, want %v", got, tc.values)
			}
		})
	}
	// Raw points say their type too; a metric the device never sent has none.
	q := url.Values{"metric": {"temp"}, "limit": {"3"}, "start": {fmt.Sprint(base.UnixMilli())}}
	if st, m := h.api(t, "GET", "/api/v1/devices/chart-1/readings?"+q.Encode(), viewer, nil); st != 200 || m["type"] != "number" || len(m["points"].([]any)) != 3 {
		t.Fatalf("raw: %d %v", st, m)
	}
	if st, m := h.api(t, "GET", "/api/v1/devices/chart-1/readings?metric=nope&points=10", viewer, nil); st != 200 || m["type"] != "" {
		t.Fatalf("unknown metric: %d %v", st, m)
	}
}
