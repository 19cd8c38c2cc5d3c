package devices

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

func TestCommandStore(t *testing.T) {
	ctx := context.Background()
	st, err := OpenBolt(filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	put := func(device string, i int, status string) {
		t.Helper()
		if err := st.PutCommand(ctx, CommandRecord{ID: fmt.Sprintf("cmd-%04d", i), Device: device, Name: "x", Status: status, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 25 {
		put("a", i, CommandSucceeded)
		put("b", i, CommandQueued)
	}
	put("aa", 0, CommandQueued) // a device whose id extends "a"
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
	if err != nil || c.Status != CommandQueued {
		t.Fatalf("get: %+v %v", c, err)
	}
	if _, err := st.GetCommand(ctx, "b", "nope"); err == nil {
		t.Fatal("missing command found")
	}
}

func TestCommandStorePrunesOldestFinal(t *testing.T) {
	ctx := context.Background()
	st, err := OpenBolt(filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := range MaxCommandsKept + 50 {
		status := CommandSucceeded
		if i == 0 {
			status = CommandQueued // never pruned: not final
		}
		if err := st.PutCommand(ctx, CommandRecord{ID: fmt.Sprintf("cmd-%06d", i), Device: "d", Status: status}); err != nil {
			t.Fatal(err)
		}
	}
	all, _ := st.ListCommands(ctx, "d", "", 10*MaxCommandsKept)
	if len(all) > MaxCommandsKept+1 {
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
	st, err := OpenBolt(filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, status := range []string{CommandQueued, CommandSucceeded, CommandSent, CommandTimedOut} {
		if err := st.PutCommand(ctx, CommandRecord{ID: "cmd-1", Device: "d", Status: status}); err != nil {
			t.Fatal(err)
		}
	}
	if c, _ := st.GetCommand(ctx, "d", "cmd-1"); c.Status != CommandSucceeded {
		t.Fatalf("status %s, want the first final status (succeeded)", c.Status)
	}
}
