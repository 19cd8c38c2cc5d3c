package influx

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

// TestWriterFillsSmallBatches: a batch smaller than BatchPoints waits (up
// to FlushInterval) for more readings and goes out as one write once it
// holds BatchPoints. A batch that already holds BatchPoints goes out at
// once, and a spool record is never split: one of 30 points is a batch
// of its own. FlushInterval is a minute here, so the test
// waits only on points arriving, never on the interval.
func TestWriterFillsSmallBatches(t *testing.T) {
	srv := influxtest.Start(t)
	dir := t.TempDir()
	sp, err := spool.Open(spool.Options{Dir: filepath.Join(dir, "spool")})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	c := NewClient(Options{URL: srv.URL, Bucket: srv.Bucket, DeadLetterPath: filepath.Join(dir, "dead.lp"),
		BatchPoints: 10, FlushInterval: time.Minute, Timeout: 5 * time.Second, MaxBackoff: 300 * time.Millisecond})
	defer c.Close()
	w, err := NewWriter(c, sp, WriterObservers{})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{srv: srv, sp: sp}
	base := time.Now().Add(-time.Hour).UnixMilli()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("writer Run: %v", err)
		}
	}()

	// One reading at a time: the first waits for nine more.
	for i := range 10 {
		r.append(t, "fill", readings(base+int64(i), 1)...)
	}
	r.waitCount(t, "fill", "temp", 10)
	if st := w.Stats(); st.Batches != 1 || st.LastBatchSize != 10 {
		t.Fatalf("%d batches, the last of %d points; want one batch of 10", st.Batches, st.LastBatchSize)
	}
	// Thirty readings in one record, then ten: two more batches.
	r.append(t, "fill", readings(base+100, 30)...)
	r.append(t, "fill", readings(base+200, 10)...)
	r.waitCount(t, "fill", "temp", 50)
	waitFor(t, "the last batch counted", 30*time.Second, func() bool { return w.Stats().WrittenPoints == 50 })
	if st := w.Stats(); st.Batches != 3 || st.LastBatchSize != 10 {
		t.Errorf("%d batches, the last of %d points; want 3, the last of 10", st.Batches, st.LastBatchSize)
	}
}
