package influx

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/influxtest"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

type rig struct {
	srv    *influxtest.Server
	sp     *spool.Spool
	client *Client
	w      *Writer
	dead   string
	cancel context.CancelFunc
	done   chan error
}

func newRig(t testing.TB, srv *influxtest.Server) *rig { return newRigGzip(t, srv, false) }

func newRigGzip(t testing.TB, srv *influxtest.Server, gzip bool) *rig {
	t.Helper()
	dir := t.TempDir()
	sp, err := spool.Open(spool.Options{Dir: filepath.Join(dir, "spool")})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{srv: srv, sp: sp, dead: filepath.Join(dir, "deadletter.lp")}
	r.client = NewClient(Options{URL: srv.URL, Bucket: srv.Bucket, DeadLetterPath: r.dead, MaxBackoff: 300 * time.Millisecond, Timeout: 2 * time.Second, Gzip: gzip})
	r.w, err = NewWriter(r.client, sp, WriterObservers{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if r.cancel != nil {
			r.cancel()
			if err := <-r.done; err != nil {
				t.Errorf("writer Run: %v", err)
			}
		}
		sp.Close()
		r.client.Close()
	})
	return r
}

func (r *rig) start() *rig {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan error, 1)
	go func() { r.done <- r.w.Run(ctx) }()
	return r
}

func (r *rig) append(t testing.TB, device string, readings ...telemetry.Reading) {
	t.Helper()
	if err := r.sp.Append(context.Background(), len(readings), telemetry.AppendLines(nil, device, nil, readings)); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *rig) waitCount(t testing.TB, device, field string, want int) {
	t.Helper()
	var got int
	waitFor(t, fmt.Sprintf("%d points of %s in influxdb", want, device), 30*time.Second, func() bool {
		got, _ = r.srv.Count(device, field)
		return got >= want
	})
	if got != want {
		t.Fatalf("%s has %d points, want %d", device, got, want)
	}
}

func readings(start int64, n int) []telemetry.Reading {
	out := make([]telemetry.Reading, n)
	for i := range out {
		out[i] = telemetry.Reading{TS: start + int64(i), Metrics: telemetry.Metrics{"temp": telemetry.Number(float64(i))}}
	}
	return out
}

func TestWriterDrainsAndSurvivesOutage(t *testing.T) {
	srv := influxtest.Start(t)
	r := newRig(t, srv).start()
	base := time.Now().Add(-time.Hour).UnixMilli()
	r.append(t, "d1", readings(base, 500)...)
	r.waitCount(t, "d1", "temp", 500)
	waitFor(t, "spool drained", 5*time.Second, func() bool { return r.sp.Stats().PendingPoints == 0 })

	srv.Stop()
	for i := range 20 {
		r.append(t, "d1", readings(base+500+int64(i)*100, 100)...)
	}
	waitFor(t, "writer to notice the outage", 10*time.Second, func() bool { return !r.w.Stats().Healthy })
	if p := r.sp.Stats().PendingPoints; p != 2000 {
		t.Fatalf("pending during outage = %d, want 2000", p)
	}
	srv.Restart()
	r.waitCount(t, "d1", "temp", 2500)
	waitFor(t, "writer healthy", 10*time.Second, func() bool { return r.w.Stats().Healthy })
	if st := r.w.Stats(); st.Retries == 0 || st.ErrorsByClass[ClassNetwork] == 0 {
		t.Errorf("stats %+v: want network errors and retries counted", st)
	}
}

func TestWriterDeadLettersTypeConflict(t *testing.T) {
	srv := influxtest.Start(t)
	r := newRig(t, srv).start()
	base := time.Now().Add(-time.Hour).UnixMilli()
	r.append(t, "d2", readings(base, 10)...)
	r.waitCount(t, "d2", "temp", 10)
	// One batch: good points around a string where "temp" is a float.
	batch := readings(base+100, 50)
	batch[17].Metrics = telemetry.Metrics{"temp": telemetry.String("hot")}
	r.append(t, "d2", batch...)
	r.waitCount(t, "d2", "temp", 10+49)
	waitFor(t, "dead letter", 10*time.Second, func() bool { return r.w.Stats().DeadLettered == 1 })
	b, err := os.ReadFile(r.dead)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `temp="hot"`) || !strings.Contains(string(b), "status=400") || strings.Count(string(b), "\ntelemetry") != 1 {
		t.Fatalf("dead letter file:\n%s", b)
	}
	// The rejected point does not block the queue.
	waitFor(t, "spool drained past the rejected point", 10*time.Second, func() bool { return r.sp.Stats().PendingPoints == 0 })
}

func TestHistory(t *testing.T) {
	srv := influxtest.Start(t)
	r := newRig(t, srv).start()
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Minute)
	var rs []telemetry.Reading
	for i := range 120 { // one reading every 10 s for 20 minutes
		rs = append(rs, telemetry.Reading{TS: base.Add(time.Duration(i) * 10 * time.Second).UnixMilli(),
			Metrics: telemetry.Metrics{"temp": telemetry.Number(float64(i % 6)), "state": telemetry.String("idle")}})
	}
	r.append(t, "d3", rs...)
	r.waitCount(t, "d3", "temp", 120)
	ctx := context.Background()

	raw, err := r.client.History(ctx, HistoryQuery{Device: "d3", Metric: "temp", Start: base.Add(-time.Minute), Stop: time.Now(), Limit: 50})
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 50 || raw[0].TS != base.UnixMilli() || raw[0].Value != 0.0 || raw[1].Value != 1.0 {
		t.Fatalf("raw = %d points, first %+v", len(raw), raw[:2])
	}
	for i := 1; i < len(raw); i++ {
		if raw[i].TS <= raw[i-1].TS {
			t.Fatal("raw points not in time order")
		}
	}
	agg, err := r.client.History(ctx, HistoryQuery{Device: "d3", Metric: "temp", Start: base, Stop: base.Add(20 * time.Minute), Every: time.Minute, Fn: "mean"})
	if err != nil {
		t.Fatal(err)
	}
	if len(agg) != 20 {
		t.Fatalf("aggregated into %d windows, want 20: %+v", len(agg), agg)
	}
	for _, p := range agg {
		if p.Value != 2.5 { // mean of 0..5
			t.Fatalf("window mean = %v, want 2.5", p.Value)
		}
	}
	str, err := r.client.History(ctx, HistoryQuery{Device: "d3", Metric: "state", Start: base, Stop: time.Now(), Limit: 1})
	if err != nil || len(str) != 1 || str[0].Value != "idle" {
		t.Fatalf("string history = %+v, %v", str, err)
	}
	// Injection attempts never reach InfluxDB.
	for _, q := range []HistoryQuery{
		{Device: "d3", Metric: `temp") |> drop(`, Start: base, Stop: time.Now()},
		{Device: "d3", Metric: "temp", Start: base, Stop: time.Now(), Every: time.Minute, Fn: "mean) |> yield("},
	} {
		if _, err := r.client.History(ctx, q); err == nil {
			t.Errorf("query %+v accepted", q)
		}
	}
	// A device id with quotes is quoted, not interpreted.
	none, err := r.client.History(ctx, HistoryQuery{Device: `d3" or true or "`, Metric: "temp", Start: base, Stop: time.Now()})
	if err != nil || len(none) != 0 {
		t.Fatalf("quoted device: %d points, %v", len(none), err)
	}
}

// BenchmarkWriter measures how fast a backlog (as after an outage) drains
// from the spool into a real influxd, with and without gzip.
func BenchmarkWriter(b *testing.B) {
	srv := influxtest.Start(b)
	for _, gz := range []bool{false, true} {
		b.Run(fmt.Sprintf("gzip=%v", gz), func(b *testing.B) {
			r := newRigGzip(b, srv, gz)
			const perMsg = 100
			base := time.Now().Add(-time.Hour).UnixMilli()
			msgs := max(1, b.N/perMsg)
			for m := range msgs {
				batch := make([]telemetry.Reading, perMsg)
				for i := range batch {
					batch[i] = telemetry.Reading{TS: base + int64(m*perMsg+i), Metrics: telemetry.Metrics{"temp": telemetry.Number(21.5), "hum": telemetry.Number(40), "batt": telemetry.Number(3.7)}}
				}
				r.append(b, fmt.Sprintf("sim-%d", m%100), batch...)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			r.start()
			waitFor(b, "backlog drained", 5*time.Minute, func() bool { return r.sp.Stats().PendingPoints == 0 })
			b.ReportMetric(float64(msgs*perMsg)/b.Elapsed().Seconds(), "points/s")
			b.ReportMetric((cpuTime()-cpu0).Seconds()*1e6/float64(msgs*perMsg), "cpu-s/M-points")
		})
	}
}

// cpuTime is this process's CPU time (the hub side only; influxd runs in
// its own process).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestErrorsCarryNoURL(t *testing.T) {
	c := NewClient(Options{URL: "http://127.0.0.1:1", Bucket: "secret-bucket", DeadLetterPath: "x", Timeout: time.Second})
	defer c.Close()
	err := c.Ping(context.Background())
	if err == nil || strings.Contains(err.Error(), "http://") || strings.Contains(err.Error(), "/ping") {
		t.Fatalf("ping error %v: want an error without the URL", err)
	}
}

// TestUpgradeMillis: lines an older hub spooled with millisecond
// timestamps are written at the same instants after the switch to
// nanoseconds; nanosecond lines pass through untouched.
func TestUpgradeMillis(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"nanoseconds untouched", "t,device=a v=1 1795000000000000001\n", "t,device=a v=1 1795000000000000001\n"},
		{"milliseconds upgraded", "t,device=a v=1 1795000000000\n", "t,device=a v=1 1795000000000000000\n"},
		{"mixed", "t,device=a v=1 1795000000000\nt,device=a s=\"a b\" 1795000000000000002\nt,device=b v=2 1795000000001\n",
			"t,device=a v=1 1795000000000000000\nt,device=a s=\"a b\" 1795000000000000002\nt,device=b v=2 1795000000001000000\n"},
		{"no final newline", "t,device=a v=1 1795000000000", "t,device=a v=1 1795000000000000000"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(upgradeMillis([]byte(tt.in))); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}
