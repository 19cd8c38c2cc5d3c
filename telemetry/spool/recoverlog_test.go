package spool

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// recordingHandler keeps every log record as "LEVEL message k=v ..." so a
// test can compare what an operator would read.
type recordingHandler struct {
	mu    sync.Mutex // guards lines
	lines []string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	l := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "segments", "records", "points":
			l += fmt.Sprintf(" %s=%v", a.Key, a.Value)
		}
		return true
	})
	h.mu.Lock()
	h.lines = append(h.lines, l)
	h.mu.Unlock()
	return nil
}

// TestRecoverLogs: Open says what it found, one line per finding, with the
// counts an operator needs (segments repaired, records lost, points to
// replay), and says nothing when there was nothing to find.
func TestRecoverLogs(t *testing.T) {
	const (
		torn    = "WARN spool: truncated a torn tail after a crash segments=1"
		replay5 = "INFO spool: replaying unconfirmed readings points=5"
	)
	opts := Options{SegmentBytes: 4096}
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string)
		want    []string
	}{
		{"new spool", func(*testing.T, string) {}, nil},
		{"everything confirmed", func(t *testing.T, dir string) {
			s := open(t, dir, opts)
			for i := range 5 {
				if err := s.Append(context.Background(), 1, line(i)); err != nil {
					t.Fatal(err)
				}
			}
			b := readAll(t, s, s.Confirmed())
			if err := s.Confirm(b.Next, b.Points); err != nil {
				t.Fatal(err)
			}
			s.Close()
		}, nil},
		{"unconfirmed records", func(t *testing.T, dir string) { writeRecords(t, dir, opts, 5) }, []string{replay5}},
		{"damage starting at the checkpoint", func(t *testing.T, dir string) {
			s := open(t, dir, opts)
			for i := range 20 {
				if err := s.Append(context.Background(), 1, line(i)); err != nil {
					t.Fatal(err)
				}
			}
			b, err := s.Read(s.Confirmed(), 10, 1<<20, nil)
			if err != nil || b.Points != 10 {
				t.Fatalf("read 10: %d, %v", b.Points, err)
			}
			if err := s.Confirm(b.Next, b.Points); err != nil {
				t.Fatal(err)
			}
			s.Close()
			seg := filepath.Join(dir, segName(1))
			data, err := os.ReadFile(seg)
			if err != nil {
				t.Fatal(err)
			}
			data[b.Next.Offset+headerSize+2] ^= 4 // record 10, the first unconfirmed
			if err := os.WriteFile(seg, data, 0o640); err != nil {
				t.Fatal(err)
			}
		}, []string{
			// The damage is padded where it lies: the checkpoint stays a
			// record boundary and is not moved.
			"ERROR spool: skipped corrupt records segments=1 records=1",
			"INFO spool: replaying unconfirmed readings points=9",
		}},
		{"torn tail", func(t *testing.T, dir string) {
			segs := writeRecords(t, dir, opts, 5)
			if err := appendBytes(segs[len(segs)-1], appendRecord(nil, 1, 1, line(9))[:headerSize+5]); err != nil {
				t.Fatal(err)
			}
		}, []string{torn, replay5}},
		{"one damaged record in each of two segments", func(t *testing.T, dir string) {
			segs := writeRecords(t, dir, opts, 200)
			if len(segs) < 3 {
				t.Fatalf("%d segments, want 3 or more", len(segs))
			}
			for _, seg := range segs[:2] {
				b, err := os.ReadFile(seg)
				if err != nil {
					t.Fatal(err)
				}
				offs := recordOffsets(t, b)
				b[offs[1]+headerSize] ^= 1 // the second record's payload
				if err := os.WriteFile(seg, b, 0o640); err != nil {
					t.Fatal(err)
				}
			}
		}, []string{
			"ERROR spool: skipped corrupt records segments=2 records=2",
			"INFO spool: replaying unconfirmed readings points=198",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			tt.prepare(t, dir)
			h := &recordingHandler{}
			o := opts
			o.Logger = slog.New(h)
			open(t, dir, o)
			h.mu.Lock()
			got := slices.Clone(h.lines)
			h.mu.Unlock()
			if !slices.Equal(got, tt.want) {
				t.Errorf("Open logged\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}
