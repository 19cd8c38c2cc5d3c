package spool

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOldestPendingAfterRecovery: after Open, Stats.OldestPending is the
// append time of the oldest unconfirmed reading as the segment recorded
// it. Padding records carry no time and do not count; a time that cannot
// be true (0, or later than now: the clock was wrong when it was written)
// is read as the time of Open, so the age of the backlog is never
// reported as decades or as negative. Confirming a reading drops its time.
func TestOldestPendingAfterRecovery(t *testing.T) {
	hourAgo := time.Now().Add(-time.Hour).UnixMilli()
	future := time.Now().Add(time.Hour).UnixMilli()
	rec := func(at int64) []byte { return appendRecord(nil, 1, at, []byte("m v=1 1\n")) }
	tests := []struct {
		name    string
		records [][]byte
		want    int64 // ms; 0: the time of Open
	}{
		{"an hour old", [][]byte{rec(hourAgo), rec(hourAgo + 1000), rec(hourAgo + 2000)}, hourAgo},
		{"padding first", [][]byte{padding(64), rec(hourAgo), rec(hourAgo + 1000)}, hourAgo},
		{"from the future", [][]byte{rec(future)}, 0},
		{"append time 0", [][]byte{rec(0)}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			if err := os.MkdirAll(dir, 0o750); err != nil {
				t.Fatal(err)
			}
			var seg []byte
			for _, r := range tt.records {
				seg = append(seg, r...)
			}
			if err := os.WriteFile(filepath.Join(dir, segName(1)), seg, 0o640); err != nil {
				t.Fatal(err)
			}
			before := time.Now().Truncate(time.Millisecond)
			s := open(t, dir, Options{})
			after := time.Now()
			got := s.Stats().OldestPending
			if tt.want != 0 {
				if !got.Equal(time.UnixMilli(tt.want)) {
					t.Errorf("OldestPending %v, want %v", got, time.UnixMilli(tt.want))
				}
				// Confirming the oldest reading makes the next one the oldest.
				b, err := s.Read(s.Confirmed(), 1, 1<<20, nil)
				if err != nil || b.Points != 1 {
					t.Fatalf("Read one: %d points, %v", b.Points, err)
				}
				if err := s.Confirm(b.Next, b.Points); err != nil {
					t.Fatal(err)
				}
				if got := s.Stats().OldestPending; !got.Equal(time.UnixMilli(tt.want + 1000)) {
					t.Errorf("after confirming one: OldestPending %v, want %v", got, time.UnixMilli(tt.want+1000))
				}
				return
			}
			if got.Before(before) || got.After(after) {
				t.Errorf("OldestPending %v, want the time of Open (%v .. %v)", got, before, after)
			}
		})
	}
}

// TestReplayFromSegmentStart: a checkpoint at the very start of a segment
// (a batch that ended where a segment did) replays that segment from its
// first record, and nothing before it.
func TestReplayFromSegmentStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	opts := Options{SegmentBytes: 4096}
	segs := writeRecords(t, dir, opts, 300)
	if len(segs) < 3 {
		t.Fatalf("%d segments, want 3 or more", len(segs))
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	inFirst := len(recordOffsets(t, b))
	s := open(t, dir, opts)
	if err := s.Confirm(Position{2, 0}, inFirst); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2 := open(t, dir, opts)
	if got := s2.Confirmed(); got != (Position{2, 0}) {
		t.Errorf("Confirmed %+v, want segment 2 offset 0", got)
	}
	var want strings.Builder
	for i := inFirst; i < 300; i++ {
		want.Write(line(i))
	}
	if got := string(readAll(t, s2, s2.Confirmed()).Data); got != want.String() {
		t.Errorf("replayed %d bytes, want lines %d..299 (%d bytes)", len(got), inFirst, want.Len())
	}
	if st := s2.Stats(); st.PendingPoints != int64(300-inFirst) {
		t.Errorf("PendingPoints %d, want %d", st.PendingPoints, 300-inFirst)
	}
}
