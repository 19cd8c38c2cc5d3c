package influx

import (
	"context"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// TestWriterReady: Ready is nil while InfluxDB answers and the writes
// succeed, an error while it is down, and nil again once it is back.
func TestWriterReady(t *testing.T) {
	srv := influxtest.Start(t)
	r := newRig(t, srv).start()
	ctx := context.Background()
	if err := r.w.Ready(ctx); err != nil {
		t.Fatalf("Ready with influxd up = %v", err)
	}
	srv.Stop()
	if err := r.w.Ready(ctx); err == nil {
		t.Fatal("Ready with influxd stopped = nil, want the ping's error")
	}
	// A write fails while it is down: Ready reports it until one succeeds.
	r.append(t, "d1", readings(time.Now().Add(-time.Hour).UnixMilli(), 10)...)
	waitFor(t, "writer to notice the outage", 30*time.Second, func() bool { return !r.w.Stats().Healthy })
	srv.Restart()
	waitFor(t, "Ready after the restart", 30*time.Second, func() bool { return r.w.Ready(ctx) == nil })
	if st := r.w.Stats(); !st.Healthy {
		t.Fatalf("Ready nil while the last write failed: %+v", st)
	}
}
