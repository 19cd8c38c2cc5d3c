package devices

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// faultStore wraps a real BoltStore: it counts writes, records the last
// one, and on demand fails them or hangs them until their deadline.
type faultStore struct {
	*BoltStore
	mu      sync.Mutex
	applies []Change
	fail    atomic.Bool
	hang    atomic.Bool
	entered chan struct{} // a hung Apply signals here (non-blocking)
}

var errPlanted = errors.New("planted store failure")

func (s *faultStore) Apply(ctx context.Context, c Change) error {
	if s.hang.Load() {
		select {
		case s.entered <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return fmt.Errorf("hung store: %w", ctx.Err())
	}
	if s.fail.Load() {
		return errPlanted
	}
	s.mu.Lock()
	s.applies = append(s.applies, c)
	s.mu.Unlock()
	return s.BoltStore.Apply(ctx, c)
}

func (s *faultStore) writes() []Change {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.applies)
}

func (s *faultStore) reset() {
	s.mu.Lock()
	s.applies = nil
	s.mu.Unlock()
}

func openFault(t *testing.T, path string, opts Options) (*Registry, *faultStore) {
	t.Helper()
	b, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	st := &faultStore{BoltStore: b, entered: make(chan struct{}, 1)}
	r, err := Open(context.Background(), st, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); b.Close() })
	return r, st
}

// storedLastSeen reads the device's last_seen as the store has it.
func storedLastSeen(t *testing.T, st Store, id string) time.Time {
	t.Helper()
	snap, err := st.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range snap.Devices {
		if rec.ID == id {
			return rec.LastSeen
		}
	}
	t.Fatalf("device %s not in the store", id)
	return time.Time{}
}

// TestLastSeenUpdated: Touch and SetPresence move last_seen in what the
// API serves at once, and a flush writes it (the planted regression
// "last_seen never updated" survived the suite before).
func TestLastSeenUpdated(t *testing.T) {
	ctx := context.Background()
	r, st := openFault(t, filepath.Join(t.TempDir(), "r.db"), Options{})
	if _, err := r.Create(ctx, Spec{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if d, _ := r.Get("d1"); d.LastSeen != nil {
		t.Fatalf("a new device has last_seen %v", d.LastSeen)
	}
	t1 := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	r.Touch("d1", t1)
	d, err := r.Get("d1")
	if err != nil || d.LastSeen == nil || !d.LastSeen.Equal(t1) {
		t.Fatalf("after Touch last_seen = %v (%v), want %v", d.LastSeen, err, t1)
	}
	if devs, _, _ := r.List(Filter{}); len(devs) != 1 || devs[0].LastSeen == nil || !devs[0].LastSeen.Equal(t1) {
		t.Fatalf("List does not show last_seen: %+v", devs)
	}
	t2 := t1.Add(time.Minute)
	r.SetPresence("d1", Presence{Online: false, LastSeen: &t2, Reason: "closed"})
	if d, _ := r.Get("d1"); d.LastSeen == nil || !d.LastSeen.Equal(t2) || d.Reason != "closed" || d.Online {
		t.Fatalf("after going offline: %+v", d.Presence)
	}
	// Presence without a last_seen keeps the one known.
	r.SetPresence("d1", Presence{Online: true, Transport: TransportWS})
	if d, _ := r.Get("d1"); d.LastSeen == nil || !d.LastSeen.Equal(t2) || !d.Online {
		t.Fatalf("presence without last_seen lost it: %+v", d.Presence)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := storedLastSeen(t, st, "d1"); !got.Equal(t2) {
		t.Fatalf("stored last_seen %v, want %v", got, t2)
	}
	// Unknown devices are ignored.
	r.Touch("nobody", t2)
	r.SetPresence("nobody", Presence{Online: true})
	if r.Exists("nobody") {
		t.Fatal("Touch created a device")
	}
}

// TestNoStoreWritePerMessage: Touch and SetPresence write nothing; one
// Flush writes every device heard from in one store write, and a Flush
// with nothing new writes nothing.
func TestNoStoreWritePerMessage(t *testing.T) {
	ctx := context.Background()
	r, st := openFault(t, filepath.Join(t.TempDir(), "r.db"), Options{})
	specs := make([]Spec, 50)
	for i := range specs {
		specs[i] = Spec{ID: fmt.Sprintf("d%02d", i)}
	}
	if _, err := r.CreateBatch(ctx, specs); err != nil {
		t.Fatal(err)
	}
	st.reset()
	at := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for i, s := range specs {
		if i%2 == 0 {
			r.Touch(s.ID, at)
		} else {
			r.SetPresence(s.ID, Presence{Online: false, LastSeen: &at, Reason: "closed"})
		}
	}
	if n := len(st.writes()); n != 0 {
		t.Fatalf("%d store writes for presence and touches, want none before a flush", n)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	w := st.writes()
	if len(w) != 1 || len(w[0].TouchDevices) != len(specs) {
		t.Fatalf("flush wrote %d changes (first with %d touches), want one with %d", len(w), len(w[0].TouchDevices), len(specs))
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(st.writes()); n != 1 {
		t.Fatalf("a flush with nothing new wrote to the store (%d writes)", n)
	}
}

// TestFlushAtShutdown: Close writes every unflushed last_seen in one
// store write, and a registry opened on the same file serves it.
func TestFlushAtShutdown(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	b, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	st := &faultStore{BoltStore: b, entered: make(chan struct{}, 1)}
	r, err := Open(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateBatch(ctx, []Spec{{ID: "a"}, {ID: "b"}, {ID: "c"}}); err != nil {
		t.Fatal(err)
	}
	st.reset()
	at := time.Date(2026, 4, 1, 12, 0, 0, 0, time.UTC)
	for _, id := range []string{"a", "b", "c"} {
		r.SetPresence(id, Presence{Online: false, LastSeen: &at, Reason: "server_shutdown"})
	}
	r.Close()
	if w := st.writes(); len(w) != 1 || len(w[0].TouchDevices) != 3 {
		t.Fatalf("shutdown wrote %v, want one write with 3 devices", w)
	}
	b.Close()

	r2 := openRegistry(t, path, Options{})
	for _, id := range []string{"a", "b", "c"} {
		d, err := r2.Get(id)
		if err != nil || d.LastSeen == nil || !d.LastSeen.Equal(at) {
			t.Fatalf("after reopen %s last_seen = %v (%v), want %v", id, d.LastSeen, err, at)
		}
	}
}

// TestRunFlushesOnInterval: Run writes last_seen without a shutdown, and
// once more when its context ends.
func TestRunFlushesOnInterval(t *testing.T) {
	ctx := context.Background()
	r, st := openFault(t, filepath.Join(t.TempDir(), "r.db"), Options{FlushInterval: 10 * time.Millisecond})
	if _, err := r.Create(ctx, Spec{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	at := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	r.Touch("d1", at)
	deadline := time.Now().Add(20 * time.Second)
	for !storedLastSeen(t, st.BoltStore, "d1").Equal(at) {
		if time.Now().After(deadline) {
			t.Fatal("Run never flushed last_seen")
		}
		time.Sleep(5 * time.Millisecond) // polling the store, not synchronising
	}
	// Stop with an hour-long interval pending: the final flush writes it.
	later := at.Add(time.Hour)
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	r.Touch("d1", later)
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := storedLastSeen(t, st.BoltStore, "d1"); !got.Equal(later) {
		t.Fatalf("stored last_seen %v, want %v", got, later)
	}
}

// TestFlushNeverRecreatesDeleted: a device deleted after it was heard
// from stays deleted when last_seen is flushed.
func TestFlushNeverRecreatesDeleted(t *testing.T) {
	ctx := context.Background()
	r, st := openFault(t, filepath.Join(t.TempDir(), "r.db"), Options{})
	if _, err := r.Create(ctx, Spec{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	old := r.snap.Load().devices["d1"]
	if err := r.Delete(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	// A flush that raced the delete still names the device.
	if err := st.Apply(ctx, Change{TouchDevices: []LastSeen{{ID: "d1", At: time.Now()}}}); err != nil {
		t.Fatal(err)
	}
	old.live.lastSeen.Store(time.Now().UnixNano())
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	snap, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Devices) != 0 {
		t.Fatalf("a touch recreated a deleted device: %+v", snap.Devices)
	}
}

// TestFailedWriteLeavesSnapshot: when the store refuses a write, what the
// registry serves is exactly what it served before.
func TestFailedWriteLeavesSnapshot(t *testing.T) {
	ctx := context.Background()
	r, st := openFault(t, filepath.Join(t.TempDir(), "r.db"), Options{})
	c, err := r.Create(ctx, Spec{ID: "d1", Labels: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	before := r.snap.Load()
	st.fail.Store(true)
	if _, err := r.CreateBatch(ctx, []Spec{{ID: "d2"}, {ID: "d3"}}); !errors.Is(err, errPlanted) {
		t.Fatalf("create: %v, want the store's error", err)
	}
	if _, err := r.Rotate(ctx, "d1", 0); !errors.Is(err, errPlanted) {
		t.Fatalf("rotate: %v, want the store's error", err)
	}
	if err := r.Delete(ctx, "d1"); !errors.Is(err, errPlanted) {
		t.Fatalf("delete: %v, want the store's error", err)
	}
	if r.snap.Load() != before {
		t.Fatal("a failed write published a new snapshot")
	}
	if r.Exists("d2") || r.Exists("d3") || !r.Exists("d1") {
		t.Fatal("a failed write changed which devices exist")
	}
	if id, _, ok := r.Authenticate(c.Token); !ok || id != "d1" {
		t.Fatal("a failed rotation or deletion revoked the token")
	}
	// The writer token was given back: the next write succeeds.
	st.fail.Store(false)
	if _, err := r.Create(ctx, Spec{ID: "d2"}); err != nil {
		t.Fatal(err)
	}
}

// TestHungStoreDeadline: a store that never answers fails the write at
// the store deadline, reads go on meanwhile, and a writer queued behind it
// gives up at its own deadline.
func TestHungStoreDeadline(t *testing.T) {
	ctx := context.Background()
	r, st := openFault(t, filepath.Join(t.TempDir(), "r.db"), Options{StoreTimeout: 300 * time.Millisecond})
	c, err := r.Create(ctx, Spec{ID: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	st.hang.Store(true)
	done := make(chan error, 1)
	go func() { _, err := r.Create(ctx, Spec{ID: "d2"}); done <- err }()
	select {
	case <-st.entered:
	case <-time.After(20 * time.Second):
		t.Fatal("the write never reached the store")
	}
	// While the writer waits on the store, the hot path answers.
	if _, _, ok := r.Authenticate(c.Token); !ok {
		t.Fatal("authentication failed during a hung write")
	}
	r.Touch("d1", time.Now())
	if !r.StillValid("d1", HashToken(c.Token)) || func() bool { d, _, _ := r.List(Filter{}); return len(d) != 1 }() {
		t.Fatal("reads wrong during a hung write")
	}
	// A second writer with a short deadline does not wait for the first.
	qctx, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	if err := r.Delete(qctx, "d1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued delete: %v, want its deadline", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("hung create: %v, want the store deadline", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a write to a hung store never returned")
	}
	if r.Exists("d2") || !r.Exists("d1") {
		t.Fatal("the hung writes changed the snapshot")
	}
}

// checkSnapshot verifies the snapshot's invariants: every token hash
// points at a device holding it, and every device's tokens are indexed.
func checkSnapshot(s *snapshot) error {
	for h, id := range s.byHash {
		d, ok := s.devices[id]
		if !ok {
			return fmt.Errorf("hash points at missing device %s", id)
		}
		if !slices.ContainsFunc(d.rec.Tokens, func(t StoredToken) bool { return t.Hash == h }) {
			return fmt.Errorf("hash points at %s, which does not hold it", id)
		}
	}
	n := 0
	for id, d := range s.devices {
		for _, t := range d.rec.Tokens {
			if s.byHash[t.Hash] != id {
				return fmt.Errorf("token of %s not indexed", id)
			}
			n++
		}
	}
	if n != len(s.byHash) {
		return fmt.Errorf("%d indexed hashes, %d tokens", len(s.byHash), n)
	}
	return nil
}

// TestSnapshotConsistentUnderConcurrentWriters: creators, rotators and
// deleters race readers; every snapshot a reader sees is whole, and the
// last one matches the store.
func TestSnapshotConsistentUnderConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	r, st := openFault(t, filepath.Join(t.TempDir(), "r.db"), Options{})
	const n = 20
	var writers sync.WaitGroup
	for w := range 3 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for i := range n {
				id := fmt.Sprintf("w%d-%d", w, i)
				if _, err := r.Create(ctx, Spec{ID: id}); err != nil {
					t.Error(err)
					return
				}
				if _, err := r.Rotate(ctx, id, time.Hour); err != nil {
					t.Error(err)
					return
				}
				if i%2 == 0 {
					if err := r.Delete(ctx, id); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := checkSnapshot(r.snap.Load()); err != nil {
					t.Error(err)
					return
				}
				r.Touch("w0-1", time.Now())
				r.Counts()
			}
		}()
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	snap, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	final := r.snap.Load()
	if len(snap.Devices) != len(final.devices) || len(final.devices) != 3*n/2 {
		t.Fatalf("store has %d devices, memory %d, want %d", len(snap.Devices), len(final.devices), 3*n/2)
	}
	for _, rec := range snap.Devices {
		d, ok := final.devices[rec.ID]
		if !ok || !sameTokens(d.rec.Tokens, rec.Tokens) {
			t.Fatalf("memory and store disagree on %s", rec.ID)
		}
		if len(rec.Tokens) != 2 {
			t.Fatalf("%s has %d tokens after a rotation with grace, want 2", rec.ID, len(rec.Tokens))
		}
	}
}
