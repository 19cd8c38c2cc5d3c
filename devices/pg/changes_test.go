package pg

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
)

func recIDs(recs []devices.Record) []string {
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestChangesSince: the feed returns exactly the devices written after a
// cursor, deletions as ids, never a last_seen flush; a cursor older than
// pruned tombstones gets a full reload.
func TestChangesSince(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	put := func(ids ...string) {
		t.Helper()
		var recs []devices.Record
		for _, id := range ids {
			recs = append(recs, devices.Record{ID: id, Tokens: []devices.StoredToken{{Hash: devices.HashToken("fhd_" + id)}}})
		}
		if err := st.Apply(ctx, devices.Change{CreateDevices: recs}); err != nil {
			t.Fatal(err)
		}
	}
	put("a", "b")
	snap, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Devices) != 2 || snap.Cursor == 0 {
		t.Fatalf("load: %d devices, cursor %d", len(snap.Devices), snap.Cursor)
	}
	c0 := snap.Cursor
	ch, err := st.ChangesSince(ctx, c0)
	if err != nil || ch.Full || len(ch.Devices)+len(ch.Deleted) != 0 || ch.Cursor != c0 {
		t.Fatalf("nothing changed, feed says %+v (%v)", ch, err)
	}
	// A last_seen flush is no change, and raises last_seen only.
	at := time.Date(2026, 7, 1, 0, 0, 0, 123456000, time.UTC)
	if err := st.Apply(ctx, devices.Change{TouchDevices: []devices.LastSeen{{ID: "a", At: at}, {ID: "ghost", At: at}}}); err != nil {
		t.Fatal(err)
	}
	if err := st.Apply(ctx, devices.Change{TouchDevices: []devices.LastSeen{{ID: "a", At: at.Add(-time.Hour)}}}); err != nil {
		t.Fatal(err)
	}
	if ch, err = st.ChangesSince(ctx, c0); err != nil || len(ch.Devices) != 0 || ch.Cursor != c0 {
		t.Fatalf("a touch counted as a change: %+v (%v)", ch, err)
	}
	snap, _ = st.Load(ctx)
	for _, r := range snap.Devices {
		if r.ID == "a" && !r.LastSeen.Equal(at) {
			t.Fatalf("stored last_seen %v, want %v (raised, never lowered)", r.LastSeen, at)
		}
	}
	if len(snap.Devices) != 2 {
		t.Fatalf("a touch created a device: %v", recIDs(snap.Devices))
	}

	put("c")
	if err := st.Apply(ctx, devices.Change{DeleteDevices: []string{"b"}}); err != nil {
		t.Fatal(err)
	}
	ch, err = st.ChangesSince(ctx, c0)
	if err != nil {
		t.Fatal(err)
	}
	if got := recIDs(ch.Devices); ch.Full || !slices.Equal(got, []string{"c"}) || !slices.Equal(ch.Deleted, []string{"b"}) || ch.Cursor <= c0 {
		t.Fatalf("feed after create c, delete b: devices %v deleted %v full %t cursor %d", got, ch.Deleted, ch.Full, ch.Cursor)
	}
	c1 := ch.Cursor
	// Recreating a deleted id removes its tombstone.
	put("b")
	ch, _ = st.ChangesSince(ctx, c1)
	if !slices.Equal(recIDs(ch.Devices), []string{"b"}) || len(ch.Deleted) != 0 {
		t.Fatalf("feed after recreate: %v deleted %v", recIDs(ch.Devices), ch.Deleted)
	}
	if ch, _ = st.ChangesSince(ctx, c0); slices.Contains(ch.Deleted, "b") {
		t.Fatal("a recreated device is still reported deleted")
	}

	// Tombstones older than TombstoneKeep are pruned with the next delete;
	// a cursor from before them reloads whole.
	if err := st.Apply(ctx, devices.Change{DeleteDevices: []string{"c"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.db.Exec(ctx, `UPDATE fieldhub_device_tombstones SET deleted_at = now() - interval '25 hours'`); err != nil {
		t.Fatal(err)
	}
	if err := st.Apply(ctx, devices.Change{DeleteDevices: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	ch, err = st.ChangesSince(ctx, c1)
	if err != nil || !ch.Full || !slices.Equal(recIDs(ch.Devices), []string{"b"}) {
		t.Fatalf("stale cursor: full %t devices %v (%v), want a full reload of [b]", ch.Full, recIDs(ch.Devices), err)
	}
	if ch, err = st.ChangesSince(ctx, ch.Cursor); err != nil || ch.Full {
		t.Fatalf("a fresh cursor reloads whole: %v", err)
	}
}

// TestIncrementalRefresh: a second instance picks up create, rotate and
// delete through the cursor, and one started later loads everything.
func TestIncrementalRefresh(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	open := func(onCred func(string)) *devices.Registry {
		st, err := Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		reg, err := devices.Open(ctx, st, devices.Options{OnCredentialsChanged: onCred})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(reg.Close)
		return reg
	}
	a := open(nil)
	var rechecked []string
	b := open(func(id string) { rechecked = append(rechecked, id) })
	c1, err := a.Create(ctx, devices.Spec{ID: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if id, _, ok := b.Authenticate(c1.Token); !ok || id != "d1" {
		t.Fatal("b did not pick up a create")
	}
	tok, err := a.Rotate(ctx, "d1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := b.Authenticate(c1.Token); ok {
		t.Fatal("b still takes a rotated-out token")
	}
	if _, _, ok := b.Authenticate(tok); !ok {
		t.Fatal("b does not take the new token")
	}
	if err := a.Delete(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if b.Exists("d1") {
		t.Fatal("b did not pick up a delete")
	}
	if !slices.Equal(rechecked, []string{"d1", "d1"}) {
		t.Fatalf("b re-checked %v, want d1 for the rotation and the deletion", rechecked)
	}
	// last_seen heard on a reaches an instance started later.
	if _, err := a.Create(ctx, devices.Spec{ID: "d2"}); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 8, 1, 0, 0, 0, 0, time.UTC)
	a.Touch("d2", at)
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	c := open(nil)
	if d, err := c.Get("d2"); err != nil || d.LastSeen == nil || !d.LastSeen.Equal(at) {
		t.Fatalf("a later instance sees d2 %+v (%v)", d, err)
	}
}

// TestMigrateExistingDatabase: a database made by the previous schema
// (migrations 1-3) with devices in it is migrated, loaded whole, and then
// followed by the cursor.
func TestMigrateExistingDatabase(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE fieldhub_schema (version int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for i, m := range migrations[:3] {
		if _, err := conn.Exec(ctx, m); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `INSERT INTO fieldhub_schema (version) VALUES ($1)`, i+1); err != nil {
			t.Fatal(err)
		}
	}
	old := devices.Record{ID: "old", Tokens: []devices.StoredToken{{Hash: devices.HashToken("fhd_old")}}}
	if _, err := conn.Exec(ctx, `INSERT INTO fieldhub_devices (id, record) VALUES ($1, $2)`, old.ID, old); err != nil {
		t.Fatal(err)
	}
	st, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg, err := devices.Open(ctx, st, devices.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if !reg.Exists("old") {
		t.Fatal("a device stored before the migration is not loaded")
	}
	other, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Apply(ctx, devices.Change{CreateDevices: []devices.Record{{ID: "new", Tokens: []devices.StoredToken{{Hash: devices.HashToken("fhd_new")}}}}, DeleteDevices: []string{"old"}}); err != nil {
		t.Fatal(err)
	}
	if err := reg.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if reg.Exists("old") || !reg.Exists("new") {
		t.Fatal("refresh after the migration missed a change")
	}
}
