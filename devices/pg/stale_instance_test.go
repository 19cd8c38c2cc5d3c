package pg

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
)

func openPair(t *testing.T) (a, b *devices.Registry, st *Store) {
	t.Helper()
	ctx := context.Background()
	url := pgtest.Database(t)
	open := func() (*devices.Registry, *Store) {
		st, err := Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		reg, err := devices.Open(ctx, st, devices.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(reg.Close)
		return reg, st
	}
	a, st = open()
	b, _ = open()
	return a, b, st
}

// TestStaleFlushDoesNotTouchRecreatedDevice: instance B deletes d1 and
// creates a new d1; A has not refreshed yet and still holds the old d1
// (its session, its last_seen). A's next Flush must not write the old
// device's last_seen onto the new record.
func TestStaleFlushDoesNotTouchRecreatedDevice(t *testing.T) {
	ctx := context.Background()
	a, b, st := openPair(t)
	if _, err := a.Create(ctx, devices.Spec{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	a.Touch("d1", time.Now().Add(-time.Hour)) // the old d1 was heard on A
	if err := b.Delete(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Create(ctx, devices.Spec{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	snap, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range snap.Devices {
		if r.ID == "d1" && !r.LastSeen.IsZero() {
			t.Fatalf("the new d1, never heard from, got the deleted d1's last_seen %s from a stale instance's flush", r.LastSeen)
		}
	}
}

// TestCreateExistingIDOnStaleInstance: B has not seen A's d1; B's create
// of d1 must be refused (ErrExists), not upsert over A's device.
func TestCreateExistingIDOnStaleInstance(t *testing.T) {
	ctx := context.Background()
	a, b, _ := openPair(t)
	ca, err := a.Create(ctx, devices.Spec{ID: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	_, berr := b.Create(ctx, devices.Spec{ID: "d1"})
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := a.Authenticate(ca.Token); !ok || !errors.Is(berr, devices.ErrExists) {
		t.Fatalf("B's create of an id A holds: err=%v; A's token still works: %v", berr, ok)
	}
}

// TestCreateBatchWithExistingIDWritesNothing: a batch in which one id
// already exists (created by another instance) is refused whole: the
// new ids in it are not written either.
func TestCreateBatchWithExistingIDWritesNothing(t *testing.T) {
	ctx := context.Background()
	a, b, st := openPair(t)
	if _, err := a.Create(ctx, devices.Spec{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateBatch(ctx, []devices.Spec{{ID: "d2"}, {ID: "d1"}}); !errors.Is(err, devices.ErrExists) {
		t.Fatalf("batch with an id another instance holds: %v, want ErrExists", err)
	}
	snap, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range snap.Devices {
		if r.ID == "d2" {
			t.Fatal("a refused batch wrote d2")
		}
	}
}

// TestRotateOnStaleInstanceDoesNotResurrect: A deleted d1; B, not yet
// refreshed, rotates it. The rotation fails with ErrNotFound, the store
// has no d1, and the deletion still reaches a third instance's refresh
// (its tombstone is kept).
func TestRotateOnStaleInstanceDoesNotResurrect(t *testing.T) {
	ctx := context.Background()
	a, b, st := openPair(t)
	if _, err := a.Create(ctx, devices.Spec{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	snap, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Rotate(ctx, "d1", 0); !errors.Is(err, devices.ErrNotFound) {
		t.Fatalf("rotate of a device another instance deleted: %v, want ErrNotFound", err)
	}
	if _, err := b.Get("d1"); !errors.Is(err, devices.ErrNotFound) {
		t.Fatalf("after the refused rotation B still has d1 (Get: %v)", err)
	}
	ch, err := st.ChangesSince(ctx, snap.Cursor)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range ch.Devices {
		if r.ID == "d1" {
			t.Fatal("the refused rotation wrote d1 back")
		}
	}
	if len(ch.Deleted) != 1 || ch.Deleted[0] != "d1" {
		t.Fatalf("deletions since the cursor: %v, want [d1] (tombstone kept)", ch.Deleted)
	}
}
