package spool

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
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
	if open := openFiles(t, filepath.Dir(q)); slices.Contains(open, q) {
		t.Fatalf("the quarantine file is still open after Open: %q", open)
	}
}

// openFiles returns the paths under dir that this process holds open.
func openFiles(t *testing.T, dir string) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var open []string
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(target, dir+string(filepath.Separator)) {
			open = append(open, strings.TrimSuffix(target, " (deleted)"))
		}
	}
	slices.Sort(open)
	return open
}

// TestFilesReleased: confirming a segment away closes the spool's reader
// of it, and Close releases every file the spool opened.
func TestFilesReleased(t *testing.T) {
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("needs /proc/self/fd")
	}
	dir := filepath.Join(t.TempDir(), "spool")
	s := open(t, dir, Options{SegmentBytes: 4096})
	for i := range 300 {
		if err := s.Append(context.Background(), 1, line(i)); err != nil {
			t.Fatal(err)
		}
	}
	b := readAll(t, s, s.Confirmed()) // opens a reader per segment
	if err := s.Confirm(b.Next, b.Points); err != nil {
		t.Fatal(err)
	}
	active := filepath.Join(dir, segName(b.Next.Segment))
	for _, f := range openFiles(t, dir) {
		if f != active {
			t.Errorf("%s is still open after its records were confirmed", filepath.Base(f))
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if open := openFiles(t, dir); len(open) > 0 {
		t.Errorf("open after Close: %q", open)
	}
}

// TestCloseCommitsQueued: appends already queued when Close is called are
// committed, not refused: every one returns nil and is replayed; only an
// append that was not queued yet may get ErrClosed. (The committer picks
// between the queue and the stop signal at random, so the scenario runs
// several rounds to take the stop path.)
func TestCloseCommitsQueued(t *testing.T) {
	for round := range 16 {
		dir := t.TempDir()
		s := open(t, dir, Options{})
		s.mu.Lock() // holds the committer at its next commit
		// Start appends until five wait in the queue behind the held
		// committer (it takes at most one group before it blocks).
		errs := make(chan error, 1000)
		started := 0
		for len(s.reqs) < 5 {
			if started == cap(errs) {
				t.Fatal("appends never queued")
			}
			go func(i int) { errs <- s.Append(context.Background(), 1, line(i)) }(started)
			started++
			runtime.Gosched()
		}
		closed := make(chan error, 1)
		go func() { closed <- s.Close() }()
		<-s.quit // Close has begun
		queued := len(s.reqs)
		s.mu.Unlock()
		ok := 0
		for range started {
			switch err := <-errs; {
			case err == nil:
				ok++
			case errors.Is(err, ErrClosed):
			default:
				t.Fatalf("round %d: Append: %v", round, err)
			}
		}
		if err := <-closed; err != nil {
			t.Fatal(err)
		}
		if ok < queued {
			t.Fatalf("round %d: %d appends succeeded, but %d were queued when Close began", round, ok, queued)
		}
		s2 := open(t, dir, Options{})
		if got := readAll(t, s2, s2.Confirmed()); got.Points != ok {
			t.Fatalf("round %d: replayed %d, want the %d that succeeded", round, got.Points, ok)
		}
		s2.Close()
	}
}
