package spool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func open(t *testing.T, dir string, opts Options) *Spool {
	t.Helper()
	opts.Dir = dir
	s, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func line(i int) []byte { return []byte(fmt.Sprintf("telemetry,device=d v=%d %d\n", i, i)) }

// readAll reads every durable record from pos.
func readAll(t *testing.T, s *Spool, pos Position) Batch {
	t.Helper()
	var all Batch
	all.Next = pos
	for {
		b, err := s.Read(all.Next, 5000, 1<<20, nil)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if b.Points == 0 {
			return all
		}
		all.Data = append(all.Data, b.Data...)
		all.Points += b.Points
		all.Next = b.Next
	}
}

func TestAppendReadConfirmReplay(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := open(t, dir, Options{MaxBytes: 1 << 20, SegmentBytes: 4096})
	const n = 300
	for i := range n {
		if err := s.Append(ctx, 1, line(i)); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
	got := readAll(t, s, s.Confirmed())
	if got.Points != n || strings.Count(string(got.Data), "\n") != n {
		t.Fatalf("read %d points, want %d", got.Points, n)
	}
	// Confirm the first 100 records only, then "crash" (close without more).
	first, err := s.Read(s.Confirmed(), 100, 1<<20, nil)
	if err != nil || first.Points != 100 {
		t.Fatalf("read 100: %d, %v", first.Points, err)
	}
	if err := s.Confirm(first.Next, first.Points); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.PendingPoints != n-100 || st.OldestPending.IsZero() {
		t.Fatalf("stats %+v", st)
	}
	s.Close()

	s2 := open(t, dir, Options{MaxBytes: 1 << 20, SegmentBytes: 4096})
	replay := readAll(t, s2, s2.Confirmed())
	if replay.Points != n-100 {
		t.Fatalf("replayed %d points, want %d", replay.Points, n-100)
	}
	if !strings.HasPrefix(string(replay.Data), string(line(100))) {
		t.Fatalf("replay starts with %q, want line 100", replay.Data[:40])
	}
	if st := s2.Stats(); st.PendingPoints != n-100 {
		t.Fatalf("pending after reopen = %d", st.PendingPoints)
	}
	// Confirming everything deletes all but the active segment.
	if err := s2.Confirm(replay.Next, replay.Points); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segs) > 2 {
		t.Errorf("%d segments left after confirming everything", len(segs))
	}
}

func TestTornAndCorruptTail(t *testing.T) {
	tests := []struct {
		name   string
		damage func(path string) error
	}{
		{"torn header", func(p string) error { return appendBytes(p, []byte{0x10, 0, 0}) }},
		{"torn payload", func(p string) error {
			return appendBytes(p, appendRecord(nil, 1, 1, line(9))[:headerSize+5])
		}},
		{"corrupt checksum", func(p string) error {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b[len(b)-3] ^= 0xff // flip a byte in the last record's payload
			return os.WriteFile(p, b, 0o640)
		}},
		{"garbage length", func(p string) error {
			return appendBytes(p, []byte{0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, Options{})
			for i := range 5 {
				if err := s.Append(context.Background(), 1, line(i)); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
			segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
			if err := tt.damage(segs[len(segs)-1]); err != nil {
				t.Fatal(err)
			}
			s2 := open(t, dir, Options{})
			got := readAll(t, s2, s2.Confirmed())
			want, torn, corrupt := 5, int64(1), int64(0)
			if tt.name == "corrupt checksum" {
				// A whole last record with a bad checksum is damage, not a
				// torn write: the record itself is gone, and only it.
				want, torn, corrupt = 4, 0, 1
			}
			if got.Points != want {
				t.Fatalf("recovered %d points, want %d", got.Points, want)
			}
			if st := s2.Stats(); st.RecoveredTorn != torn || st.CorruptRecords != corrupt {
				t.Errorf("RecoveredTorn = %d, CorruptRecords = %d, want %d, %d", st.RecoveredTorn, st.CorruptRecords, torn, corrupt)
			}
			// The spool keeps working after recovery.
			if err := s2.Append(context.Background(), 1, line(99)); err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, s2, s2.Confirmed()); got.Points != want+1 {
				t.Fatalf("after append %d points, want %d", got.Points, want+1)
			}
		})
	}
}

func appendBytes(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(b)
	return err
}

func TestFullRefusesThenRecovers(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 2048, SegmentBytes: 512})
	ctx := context.Background()
	var accepted int
	var err error
	for i := range 1000 {
		if err = s.Append(ctx, 1, line(i)); err != nil {
			break
		}
		accepted++
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("err = %v, want ErrFull", err)
	}
	if accepted == 0 || s.Stats().Bytes > 2048 {
		t.Fatalf("accepted %d, bytes %d", accepted, s.Stats().Bytes)
	}
	// Draining makes room again.
	b := readAll(t, s, s.Confirmed())
	if b.Points != accepted {
		t.Fatalf("read %d, accepted %d", b.Points, accepted)
	}
	if err := s.Confirm(b.Next, b.Points); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, 1, line(1)); err != nil {
		t.Fatalf("append after drain: %v", err)
	}
}

func TestConcurrentAppendsAllDurable(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentBytes: 64 << 10})
	var wg sync.WaitGroup
	const workers, each = 8, 200
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				if err := s.Append(context.Background(), 1, line(w*each+i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	s.Close()
	s2 := open(t, dir, Options{SegmentBytes: 64 << 10})
	if got := readAll(t, s2, s2.Confirmed()); got.Points != workers*each {
		t.Fatalf("after reopen %d points, want %d", got.Points, workers*each)
	}
}

func TestAppendAfterClose(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	s.Close()
	if err := s.Append(context.Background(), 1, line(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}

func BenchmarkAppend(b *testing.B) {
	for _, tc := range []struct {
		name     string
		points   int
		par      int
		interval time.Duration
	}{
		{"single/64writers", 1, 64, 0}, {"batch100/16writers", 100, 16, 0},
		// 64 writers that each wait for their answer: with an interval,
		// about 64 appends per interval, the ceiling of a closed loop.
		{"single/64writers/interval=2ms", 1, 64, 2 * time.Millisecond},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s, err := Open(Options{Dir: b.TempDir(), MaxBytes: 8 << 30, CommitInterval: tc.interval})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var payload []byte
			for i := range tc.points {
				payload = append(payload, fmt.Sprintf("telemetry,device=sim-%d temp=21.5,hum=40.25,batt=3.71 1795000000%03d\n", i%1000, i)...)
			}
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			b.SetParallelism(tc.par)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := s.Append(context.Background(), tc.points, payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*tc.points)/b.Elapsed().Seconds(), "readings/s")
		})
	}
}

// TestAppendTimeoutLetsGoOfPayload: appends that time out while the
// committer is held up, and whose callers then overwrite their buffers
// (as the bridge does when it returns a buffer to its pool), never put
// the overwritten bytes on disk: every persisted record is exactly a
// payload that was appended.
func TestAppendTimeoutLetsGoOfPayload(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	// Hold the committer at the start of its next commit, after it took
	// a request from the queue.
	s.mu.Lock()
	const n = 500
	var wg sync.WaitGroup
	var timedOut atomic.Int64
	for i := range n {
		wg.Go(func() {
			buf := line(i)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			if err := s.Append(ctx, 1, buf); errors.Is(err, context.DeadlineExceeded) {
				timedOut.Add(1)
			}
			for j := range len(buf) - 1 {
				buf[j] = 'X' // the caller reuses its buffer at once
			}
		})
	}
	wg.Wait()
	s.mu.Unlock()
	if timedOut.Load() == 0 {
		t.Fatal("no append timed out")
	}
	if err := s.Append(context.Background(), 1, line(n)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2 := open(t, dir, Options{})
	got := readAll(t, s2, s2.Confirmed())
	valid := map[string]bool{}
	for i := range n + 1 {
		valid[string(line(i))] = true
	}
	bad := 0
	for _, l := range strings.SplitAfter(string(got.Data), "\n") {
		if l != "" && !valid[l] {
			bad++
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d persisted records hold bytes written after Append returned (%d appends timed out)", bad, got.Points, timedOut.Load())
	}
	t.Logf("%d appends timed out, %d records persisted, all as appended", timedOut.Load(), got.Points)
}

// TestRollFailureRecovers: while the next segment cannot be created,
// appends that need it fail; once the cause is gone, the next append rolls
// and succeeds, and everything acknowledged is replayed.
func TestRollFailureRecovers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := open(t, dir, Options{SegmentBytes: 4096})
	blocker := filepath.Join(dir, segName(2)) // a directory where segment 2 goes
	if err := os.Mkdir(blocker, 0o750); err != nil {
		t.Fatal(err)
	}
	var acked []int
	var err error
	for i := 0; i < 500 && err == nil; i++ {
		if err = s.Append(context.Background(), 1, line(i)); err == nil {
			acked = append(acked, i)
		}
	}
	if err == nil {
		t.Fatal("appends went on although the next segment could not be created")
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	for i := 1000; i < 1005; i++ {
		if err := s.Append(context.Background(), 1, line(i)); err != nil {
			t.Fatalf("append after the cause is gone: %v", err)
		}
		acked = append(acked, i)
	}
	s.Close()
	s2 := open(t, dir, Options{})
	got := string(readAll(t, s2, s2.Confirmed()).Data)
	var want strings.Builder
	for _, i := range acked {
		want.Write(line(i))
	}
	if got != want.String() {
		t.Fatalf("replayed %d bytes, want the %d acknowledged records (%d bytes)", len(got), len(acked), want.Len())
	}
}
