package devices

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
)

// twoInstances opens two registries over one store, as two hub
// instances over one PostgreSQL database are (bbolt stands in for it:
// both Apply their writes to the same records).
func twoInstances(t *testing.T) (a, b *Registry, st *BoltStore) {
	t.Helper()
	st, err := OpenBolt(filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if a, err = Open(context.Background(), st, Options{}); err != nil {
		t.Fatal(err)
	}
	if b, err = Open(context.Background(), st, Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b, st
}

// TestCreateDoesNotOverwriteAnotherInstancesDevice: B has not refreshed
// since A created d1; B's create of the same id must fail with ErrExists,
// not replace A's record (and with it the token A handed out).
func TestCreateDoesNotOverwriteAnotherInstancesDevice(t *testing.T) {
	ctx := context.Background()
	a, b, _ := twoInstances(t)
	ca, err := a.Create(ctx, Spec{ID: "d1", Name: "from A"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Create(ctx, Spec{ID: "d1", Name: "from B"})
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := a.Authenticate(ca.Token); !ok {
		t.Fatalf("B's create of an existing id (err=%v) replaced A's device: the token A handed out no longer works", err)
	}
	if !errors.Is(err, ErrExists) {
		t.Fatalf("create of an id another instance holds: %v, want ErrExists", err)
	}
}

// TestRotateDoesNotResurrectDeletedDevice: A deleted d1; B, not yet
// refreshed, rotates it. The rotation must fail (not found), not write
// d1 back into the store with a fresh token, and B then knows d1 is gone.
func TestRotateDoesNotResurrectDeletedDevice(t *testing.T) {
	ctx := context.Background()
	a, b, st := twoInstances(t)
	if _, err := a.Create(ctx, Spec{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	_, rerr := b.Rotate(ctx, "d1", 0)
	snap, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range snap.Devices {
		if rec.ID == "d1" {
			t.Fatalf("a rotation on an instance that had not seen the deletion (err=%v) resurrected d1 in the store", rerr)
		}
	}
	if !errors.Is(rerr, ErrNotFound) {
		t.Fatalf("rotate of a device another instance deleted: %v, want ErrNotFound", rerr)
	}
	if _, err := b.Get("d1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after the refused rotation B still has d1 (Get: %v): it did not catch up with the store", err)
	}
}
