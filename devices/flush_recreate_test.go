package devices

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// gateStore holds last_seen writes (TouchDevices) until released, so a
// test can run device writes while a Flush is between reading the
// snapshot and writing the store.
type gateStore struct {
	*BoltStore
	entered chan struct{}
	release chan struct{}
}

func (s *gateStore) Apply(ctx context.Context, c Change) error {
	if len(c.TouchDevices) > 0 {
		s.entered <- struct{}{}
		<-s.release
	}
	return s.BoltStore.Apply(ctx, c)
}

// TestFlushDoesNotCarryLastSeenIntoRecreatedDevice: d1 is heard from,
// a Flush starts, then d1 is deleted and a new device with the same id
// created before the flush's write lands. The new device has never been
// heard from; the deleted one's last_seen must not be written onto it
// (it would show after a restart or on every other instance). With a
// clock that stands still the re-created device would get the old one's
// created_at, which ties a touch to its record, unless creates keep
// created_at increasing.
func TestFlushDoesNotCarryLastSeenIntoRecreatedDevice(t *testing.T) {
	still := time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		now  func() time.Time
	}{
		{"real clock", time.Now},
		{"clock standing still", func() time.Time { return still }},
	} {
		t.Run(tc.name, func(t *testing.T) { testFlushRecreated(t, tc.now) })
	}
}

func testFlushRecreated(t *testing.T, now func() time.Time) {
	ctx := context.Background()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	st := &gateStore{BoltStore: b, entered: make(chan struct{}), release: make(chan struct{})}
	r, err := Open(ctx, st, Options{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Create(ctx, Spec{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	old := now().Add(-time.Hour).UTC()
	r.Touch("d1", old)
	done := make(chan error, 1)
	go func() { done <- r.Flush(ctx) }()
	<-st.entered // the flush read the snapshot and names d1
	if err := r.Delete(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Create(ctx, Spec{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	close(st.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ls := storedLastSeen(t, b, "d1"); !ls.IsZero() {
		t.Fatalf("the re-created d1, never heard from, has the deleted device's last_seen %s in the store", ls)
	}
	r.Close()
	r2, err := Open(ctx, b, Options{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := r2.Get("d1"); d.LastSeen != nil {
		t.Fatalf("after a restart the re-created d1 shows last_seen %s", d.LastSeen)
	}
}
