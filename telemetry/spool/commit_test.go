package spool

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCommitInterval: with no interval every append is its own commit,
// as before; with one, an append waits at least the interval for company
// before its sync, a burst of maxGroup concurrent appends shares one
// commit and does not wait the interval out, and Close ends a wait.
func TestCommitInterval(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
		// appends: how many; concurrent: all at once instead of one after another.
		appends    int
		concurrent bool
		// closeEarly closes the spool while the appends wait.
		closeEarly  bool
		wantCommits int64         // 0: not checked
		minLatency  time.Duration // every Append took at least this long
	}{
		{name: "no interval: one commit per sequential append", interval: 0, appends: 20, wantCommits: 20},
		{name: "a sequential append waits the interval", interval: 30 * time.Millisecond, appends: 5, wantCommits: 5, minLatency: 30 * time.Millisecond},
		{name: "a full group commits at once, in one sync", interval: time.Hour, appends: maxGroup, concurrent: true, wantCommits: 1},
		{name: "Close ends the wait", interval: time.Hour, appends: 3, concurrent: true, closeEarly: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			s := open(t, dir, Options{CommitInterval: tt.interval})
			errs := make([]error, tt.appends)
			took := make([]time.Duration, tt.appends)
			appendOne := func(i int) {
				start := time.Now()
				errs[i] = s.Append(context.Background(), 1, line(i))
				took[i] = time.Since(start)
				if errs[i] == nil && !tt.concurrent {
					// Answered only after its write and sync, which count
					// the commit, and with its bytes in the segment.
					if c := s.Stats().Commits; c != int64(i+1) || !onDisk(t, dir, line(i)) {
						t.Errorf("Append %d returned after %d commits (want %d), record on disk %v", i, c, i+1, onDisk(t, dir, line(i)))
					}
				}
			}
			var wg sync.WaitGroup
			for i := range tt.appends {
				if tt.concurrent {
					wg.Go(func() { appendOne(i) })
				} else {
					appendOne(i)
				}
			}
			if tt.closeEarly {
				s.Close()
			}
			finished := make(chan struct{})
			go func() { wg.Wait(); close(finished) }()
			select {
			case <-finished:
			case <-time.After(60 * time.Second):
				t.Fatal("appends still waiting after 60 s")
			}
			acked := 0
			for i, err := range errs {
				if err == nil {
					acked++
				} else if !tt.closeEarly {
					t.Fatalf("Append %d: %v", i, err)
				}
				if err == nil && took[i] < tt.minLatency {
					t.Errorf("Append %d returned after %v, before the %v interval", i, took[i], tt.minLatency)
				}
			}
			if st := s.Stats(); tt.wantCommits > 0 && st.Commits != tt.wantCommits {
				t.Errorf("%d appends in %d commits, want %d", tt.appends, st.Commits, tt.wantCommits)
			}
			s.Close()
			// What was acknowledged is on disk.
			s2 := open(t, dir, Options{})
			if got := readAll(t, s2, s2.Confirmed()); got.Points != acked {
				t.Errorf("reopen replays %d points, want the %d acknowledged", got.Points, acked)
			}
		})
	}
}

// onDisk reports whether a segment file in dir holds b.
func onDisk(t *testing.T, dir string, b []byte) bool {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range segs {
		if data, err := os.ReadFile(p); err == nil && bytes.Contains(data, b) {
			return true
		}
	}
	return false
}

// TestPreallocatedSegments: the active segment is preallocated to its full
// size and every sealed one is cut back to its records, so a crash (here
// a copy of the files while the spool runs) leaves zeros only at the end
// of the newest segment: recovery counts that as one torn tail, finds no
// damage, and replays every acknowledged record once. Close cuts the
// active segment back too.
func TestPreallocatedSegments(t *testing.T) {
	for _, interval := range []time.Duration{0, 2 * time.Millisecond} {
		t.Run(interval.String(), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			const segBytes = 4096
			s := open(t, dir, Options{SegmentBytes: segBytes, CommitInterval: interval})
			const n = 400
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					for i := w; i < n; i += 4 {
						if err := s.Append(context.Background(), 1, line(i)); err != nil {
							t.Errorf("Append %d: %v", i, err)
						}
					}
				})
			}
			wg.Wait()
			segs, err := filepath.Glob(filepath.Join(dir, "*.seg"))
			if err != nil || len(segs) < 3 {
				t.Fatalf("%d segments, want several: %v", len(segs), err)
			}
			crashed := filepath.Join(t.TempDir(), "crashed")
			if err := os.Mkdir(crashed, 0o750); err != nil {
				t.Fatal(err)
			}
			for i, p := range segs {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				used := len(bytes.TrimRight(b, "\x00"))
				if last := i == len(segs)-1; last && len(b) != segBytes {
					t.Errorf("active segment %s holds %d bytes, want preallocated %d", filepath.Base(p), len(b), segBytes)
				} else if !last && used != len(b) {
					t.Errorf("sealed segment %s ends in %d zeros", filepath.Base(p), len(b)-used)
				}
				if err := os.WriteFile(filepath.Join(crashed, filepath.Base(p)), b, 0o640); err != nil {
					t.Fatal(err)
				}
			}
			c := open(t, crashed, Options{SegmentBytes: segBytes})
			st := c.Stats()
			if st.RecoveredTorn != 1 || st.CorruptBytes != 0 || st.PendingPoints != n {
				t.Errorf("after the crash: RecoveredTorn %d, CorruptBytes %d, PendingPoints %d; want 1, 0, %d", st.RecoveredTorn, st.CorruptBytes, st.PendingPoints, n)
			}
			got := replayedLines(t, c)
			for i := range n {
				if got[string(line(i))] != 1 {
					t.Fatalf("line %d replayed %d times, want 1", i, got[string(line(i))])
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			last := segs[len(segs)-1]
			if b, err := os.ReadFile(last); err != nil || len(bytes.TrimRight(b, "\x00")) != len(b) {
				t.Errorf("Close left %s with a zero tail (%d bytes): %v", filepath.Base(last), len(b), err)
			}
		})
	}
}

// crashChildEnv names the spool directory of TestCrashChild's run as the
// process that TestCrashLosesNothingAcked kills.
const crashChildEnv = "FIELDHUB_SPOOL_CRASH_DIR"

// TestCrashLosesNothingAcked: a process appending from eight goroutines
// and printing each acknowledged record is killed (SIGKILL) mid-stream;
// reopening its spool replays every record it acknowledged, with no
// damage. The kill does not drop the page cache, so this checks that an
// acknowledgement follows the write and that recovery reads a
// preallocated segment cut short; that the sync reaches the disk is the
// kernel's part.
func TestCrashLosesNothingAcked(t *testing.T) {
	for _, interval := range []time.Duration{0, 2 * time.Millisecond} {
		t.Run(interval.String(), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
			cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, crashChildEnv+"_INTERVAL="+interval.String())
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// The child appends until killed: kill it whatever happens here.
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			acked := map[string]bool{}
			lines := make(chan string)
			go func() {
				defer close(lines)
				sc := bufio.NewScanner(out)
				for sc.Scan() {
					lines <- sc.Text()
				}
			}()
			deadline := time.After(60 * time.Second)
			for len(acked) < 2000 {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("child exited after %d acknowledgements: %v", len(acked), cmd.Wait())
					}
					if i, ok := strings.CutPrefix(l, "acked "); ok {
						acked[i] = true
					}
				case <-deadline:
					t.Fatalf("only %d acknowledgements in 60 s", len(acked))
				}
			}
			cmd.Process.Kill()
			for l := range lines { // what it printed before it died
				if i, ok := strings.CutPrefix(l, "acked "); ok {
					acked[i] = true
				}
			}
			cmd.Wait()
			s := open(t, dir, Options{})
			if st := s.Stats(); st.CorruptBytes != 0 {
				t.Errorf("CorruptBytes %d after a crash, want 0", st.CorruptBytes)
			}
			got := replayedLines(t, s)
			for i := range acked {
				n, _ := strconv.Atoi(i)
				if got[string(line(n))] != 1 {
					t.Fatalf("acknowledged line %s replayed %d times, want 1", i, got[string(line(n))])
				}
			}
		})
	}
}

// TestCrashChild is the process TestCrashLosesNothingAcked kills; run on
// its own it does nothing.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		return
	}
	interval, err := time.ParseDuration(os.Getenv(crashChildEnv + "_INTERVAL"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(Options{Dir: dir, SegmentBytes: 64 << 10, CommitInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := g; ; i += 8 {
				if err := s.Append(context.Background(), 1, line(i)); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				fmt.Fprintf(w, "acked %d\n", i)
				w.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait() // until killed
}

// TestGivenUpRequestsAreNotReused: appends that time out while still
// queued, followed by appends that reuse pooled requests, never write a
// record twice nor answer an append before its record is written: a
// request Append gave up stays out of the pool, since the committer still
// finds it in the queue.
func TestGivenUpRequestsAreNotReused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := open(t, dir, Options{})
	s.mu.Lock() // holds the committer at the start of its next commit
	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			defer cancel()
			s.Append(ctx, 1, line(i))
		})
	}
	wg.Wait()
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = s.Append(context.Background(), 1, line(n+i)) })
	}
	s.mu.Unlock()
	wg.Wait()
	s.Close()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Append %d: %v", n+i, err)
		}
	}
	got := replayedLines(t, open(t, dir, Options{}))
	for i := range 2 * n {
		if c := got[string(line(i))]; c > 1 || i >= n && c != 1 {
			t.Errorf("line %d replayed %d times", i, c)
		}
	}
}
