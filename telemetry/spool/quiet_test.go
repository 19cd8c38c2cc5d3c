package spool

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestHealthySpoolIsQuiet: appends that roll over several segments, reads,
// confirms, Close and a clean reopen log nothing: every line the spool
// logs means something is wrong or being repaired.
func TestHealthySpoolIsQuiet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	h := &recordingHandler{}
	opts := Options{SegmentBytes: 4096, Logger: slog.New(h)}
	s := open(t, dir, opts)
	for i := range 300 {
		if err := s.Append(context.Background(), 1, line(i)); err != nil {
			t.Fatal(err)
		}
	}
	b := readAll(t, s, s.Confirmed())
	if err := s.Confirm(b.Next, b.Points); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	open(t, dir, opts).Close()
	h.mu.Lock()
	got := slices.Clone(h.lines)
	h.mu.Unlock()
	if len(got) > 0 {
		t.Errorf("a healthy spool logged %q", got)
	}
}

// TestOpenClosesQuarantine: the quarantine file is open only while Open
// repairs damage; afterwards no descriptor refers to it.
func TestOpenClosesQuarantine(t *testing.T) {
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("needs /proc/self/fd")
	}
	dir := filepath.Join(t.TempDir(), "spool")
	seg := writeRecords(t, dir, Options{}, 10)[0]
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	b[recordOffsets(t, b)[3]+headerSize] ^= 1
	if err := os.WriteFile(seg, b, 0o640); err != nil {
		t.Fatal(err)
	}
	s := open(t, dir, Options{})
	if st := s.Stats(); st.CorruptRecords != 1 {
		t.Fatalf("CorruptRecords %d, want 1", st.CorruptRecords)
	}
	q := filepath.Clean(dir) + ".quarantine"
	if _, err := os.Stat(q); err != nil {
		t.Fatalf("no quarantine file: %v", err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && target == q {
			t.Fatalf("descriptor %s still refers to the quarantine file after Open", fd.Name())
		}
	}
}
