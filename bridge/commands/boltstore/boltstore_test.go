package boltstore

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/devices"
)

func TestCommandStore(t *testing.T) {
	ctx := context.Background()
	st, err := open(t)
	if err != nil {
		t.Fatal(err)
	}
	put := func(device string, i int, status string) {
		t.Helper()
		if err := st.PutCommand(ctx, commands.Record{ID: fmt.Sprintf("cmd-%04d", i), Device: device, Name: "x", Status: status, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 25 {
		put("a", i, commands.Succeeded)
		put("b", i, commands.Queued)
	}
	put("aa", 0, commands.Queued) // a device whose id extends "a"
	var got []string
	before := ""
	for {
		page, err := st.ListCommands(ctx, "a", before, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range page {
			if c.Device != "a" {
				t.Fatalf("listed %s's command", c.Device)
			}
			got = append(got, c.ID)
		}
		if len(page) < 10 {
			break
		}
		before = page[len(page)-1].ID
	}
	if len(got) != 25 || got[0] != "cmd-0024" || got[24] != "cmd-0000" {
		t.Fatalf("pages newest first: %v", got)
	}
	active, err := st.ActiveCommands(ctx)
	if err != nil || len(active) != 26 {
		t.Fatalf("active: %d, %v", len(active), err)
	}
	c, err := st.GetCommand(ctx, "b", "cmd-0003")
	if err != nil || c.Status != commands.Queued {
		t.Fatalf("get: %+v %v", c, err)
	}
	if _, err := st.GetCommand(ctx, "b", "nope"); err == nil {
		t.Fatal("missing command found")
	}
}

func TestCommandStorePrunesOldestFinal(t *testing.T) {
	ctx := context.Background()
	st, err := open(t)
	if err != nil {
		t.Fatal(err)
	}
	for i := range commands.MaxKept + 50 {
		status := commands.Succeeded
		if i == 0 {
			status = commands.Queued // never pruned: not final
		}
		if err := st.PutCommand(ctx, commands.Record{ID: fmt.Sprintf("cmd-%06d", i), Device: "d", Status: status}); err != nil {
			t.Fatal(err)
		}
	}
	all, _ := st.ListCommands(ctx, "d", "", 10*commands.MaxKept)
	if len(all) > commands.MaxKept+1 {
		t.Fatalf("kept %d commands", len(all))
	}
	if _, err := st.GetCommand(ctx, "d", "cmd-000000"); err != nil {
		t.Fatal("an active command was pruned")
	}
}

// TestFinalCommandNeverChanges: the first final status wins, so a late
// write of an older status (another hub instance marking "sent" after the
// result was recorded) cannot undo a result.
func TestFinalCommandNeverChanges(t *testing.T) {
	ctx := context.Background()
	st, err := open(t)
	if err != nil {
		t.Fatal(err)
	}
	for _, status := range []string{commands.Queued, commands.Succeeded, commands.Sent, commands.TimedOut} {
		if err := st.PutCommand(ctx, commands.Record{ID: "cmd-1", Device: "d", Status: status}); err != nil {
			t.Fatal(err)
		}
	}
	if c, _ := st.GetCommand(ctx, "d", "cmd-1"); c.Status != commands.Succeeded {
		t.Fatalf("status %s, want the first final status (succeeded)", c.Status)
	}
}

// open returns a Store in the bucket of a fresh registry file, as
// cmd/fieldhub builds it.
func open(t *testing.T) (*Store, error) {
	t.Helper()
	reg, err := devices.OpenBolt(filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = reg.Close() })
	return New(reg.DB()), nil
}

// TestExistingDataDir: commands that devices.BoltStore wrote before the
// commands package existed (bucket "commands", key device NUL id, the
// record's JSON) load as they were.
func TestExistingDataDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	old := `{"id":"cmd-0000000000001000001aabbccdd","device":"pump-1","name":"reboot","params":{"delay":5},"status":"sent",` +
		`"created_at":"2026-01-02T03:04:05Z","created_by":"op","expires_at":"2026-01-02T04:04:05Z","timeout_ms":30000,` +
		`"sent_at":"2026-01-02T03:04:06Z","deliveries":1,"idempotency_key":"k1","history":[{"status":"queued","at":"2026-01-02T03:04:05Z"},{"status":"sent","at":"2026-01-02T03:04:06Z"}]}`
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("commands"))
		if err != nil {
			return err
		}
		return b.Put([]byte("pump-1\x00cmd-0000000000001000001aabbccdd"), []byte(old))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	reg, err := devices.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	st := New(reg.DB())
	active, err := st.ActiveCommands(context.Background())
	if err != nil || len(active) != 1 {
		t.Fatalf("active %v, %v", active, err)
	}
	c := active[0]
	if c.ID != "cmd-0000000000001000001aabbccdd" || c.Device != "pump-1" || c.Status != commands.Sent || c.Deliveries != 1 ||
		c.IdempotencyKey != "k1" || string(c.Params) != `{"delay":5}` || c.SentAt == nil || len(c.History) != 2 || c.TimeoutMS != 30000 {
		t.Fatalf("loaded %+v", c)
	}
	if got, err := st.GetCommand(context.Background(), "pump-1", c.ID); err != nil || got.CreatedBy != "op" {
		t.Fatalf("get: %+v %v", got, err)
	}
}
