package influx

import (
	"context"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// TestHistoryDownsample: points=N picks the window itself, returns at most
// N points, keeps empty windows as nil values (a gap), and takes last for
// booleans and strings, which mean cannot aggregate.
func TestHistoryDownsample(t *testing.T) {
	srv := influxtest.Start(t)
	r := newRig(t, srv).start()
	base := time.Now().Add(-2 * time.Hour).Truncate(time.Hour)
	var rs []telemetry.Reading
	// One reading a minute for 60 minutes, with nothing in minutes 20-39.
	for i := range 60 {
		if i >= 20 && i < 40 {
			continue
		}
		rs = append(rs, telemetry.Reading{TS: base.Add(time.Duration(i) * time.Minute).UnixMilli(),
			Metrics: telemetry.Metrics{"temp": telemetry.Number(float64(i)), "on": telemetry.Bool(i%2 == 0), "mode": telemetry.String("m" + string(rune('a'+i%3)))}})
	}
	r.append(t, "ds", rs...)
	r.waitCount(t, "ds", "temp", 40)
	ctx := context.Background()
	stop := base.Add(time.Hour)
	tests := []struct {
		name   string
		q      HistoryQuery
		points int // exactly this many come back
		check  func(t *testing.T, ps []Point)
	}{
		{"numbers, 6 windows of 10 min", HistoryQuery{Metric: "temp", Points: 6, Fn: "mean"}, 6, func(t *testing.T, ps []Point) {
			want := []any{4.5, 14.5, nil, nil, 44.5, 54.5}
			for i, p := range ps {
				if p.Value != want[i] {
					t.Errorf("window %d = %v, want %v (all %+v)", i, p.Value, want[i], ps)
				}
			}
			if ps[0].TS != base.Add(10*time.Minute).UnixMilli() {
				t.Errorf("first window ends at %d, want %d", ps[0].TS, base.Add(10*time.Minute).UnixMilli())
			}
		}},
		{"window rounded up to a whole second", HistoryQuery{Metric: "temp", Points: 7}, 7, nil},
		{"booleans take last", HistoryQuery{Metric: "on", Points: 6, Fn: "last"}, 6, func(t *testing.T, ps []Point) {
			if ps[0].Value != false || ps[2].Value != nil || ps[5].Value != false { // minute 9, a gap, minute 59
				t.Errorf("bool windows %+v", ps)
			}
		}},
		{"strings take last", HistoryQuery{Metric: "mode", Points: 6, Fn: "last"}, 6, func(t *testing.T, ps []Point) {
			if ps[0].Value != "ma" || ps[3].Value != nil { // minute 9 is 9%3=0
				t.Errorf("string windows %+v", ps)
			}
		}},
		{"more points than 2 s windows", HistoryQuery{Metric: "temp", Points: 2000}, 1800, func(t *testing.T, ps []Point) {
			n := 0
			for _, p := range ps {
				if p.Value != nil {
					n++
				}
			}
			if n != 40 {
				t.Errorf("%d non-empty windows, want 40", n)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.q.Device, tc.q.Start, tc.q.Stop = "ds", base, stop
			ps, err := r.client.History(ctx, tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if len(ps) != tc.points {
				t.Fatalf("%d points, want %d", len(ps), tc.points)
			}
			for i := 1; i < len(ps); i++ {
				if ps[i].TS <= ps[i-1].TS {
					t.Fatal("points not in time order")
				}
			}
			if tc.check != nil {
				tc.check(t, ps)
			}
		})
	}
	for _, q := range []HistoryQuery{
		{Device: "ds", Metric: "temp", Start: base, Stop: stop, Points: 2001},
		{Device: "ds", Metric: "temp", Start: base, Stop: stop, Points: 10, Every: time.Minute},
	} {
		if _, err := q.Flux("b"); err == nil {
			t.Errorf("query %+v accepted", q)
		}
	}
}
