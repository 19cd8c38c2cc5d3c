package pgstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/devices/pg"
	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
)

func TestCommandsOnPostgreSQL(t *testing.T) {
	ctx := context.Background()
	reg, err := pg.Open(ctx, pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	st := New(reg.Pool())
	for i := range commands.MaxKept + 30 {
		status := commands.Succeeded
		if i < 3 {
			status = commands.Queued
		}
		c := commands.Record{ID: fmt.Sprintf("cmd-%06d", i), Device: "d", Name: "x", Status: status, CreatedAt: time.Now()}
		if err := st.PutCommand(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	// Creating one more queued command prunes old final ones, never active ones.
	if err := st.PutCommand(ctx, commands.Record{ID: "cmd-999999", Device: "d", Status: commands.Queued}); err != nil {
		t.Fatal(err)
	}
	all, err := st.ListCommands(ctx, "d", "", 10*commands.MaxKept)
	if err != nil || len(all) > commands.MaxKept+3 {
		t.Fatalf("kept %d commands, %v", len(all), err)
	}
	active, err := st.ActiveCommands(ctx)
	if err != nil || len(active) != 4 {
		t.Fatalf("active %d, %v", len(active), err)
	}
	page, err := st.ListCommands(ctx, "d", "cmd-000500", 5)
	if err != nil || len(page) != 5 || page[0].ID != "cmd-000499" || page[4].ID != "cmd-000495" {
		t.Fatalf("page before cmd-000500: %v %v", ids(page), err)
	}
	if _, err := st.GetCommand(ctx, "d", "nope"); err == nil {
		t.Fatal("missing command found")
	}
	// The first final status wins: a late "sent" from another instance
	// does not undo a result.
	for _, status := range []string{commands.Succeeded, commands.Sent, commands.TimedOut} {
		if err := st.PutCommand(ctx, commands.Record{ID: "cmd-999999", Device: "d", Status: status}); err != nil {
			t.Fatal(err)
		}
	}
	if c, _ := st.GetCommand(ctx, "d", "cmd-999999"); c.Status != commands.Succeeded {
		t.Fatalf("status %s, want the first final status (succeeded)", c.Status)
	}
}

func ids(cs []commands.Record) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}
