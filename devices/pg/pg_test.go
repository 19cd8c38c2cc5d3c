package pg

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
)

func TestRegistryOnPostgreSQL(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	st, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := devices.Open(ctx, st, devices.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := reg.Create(ctx, devices.Spec{ID: "pump-1", Name: "Pump", Labels: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.CreateBatch(ctx, []devices.Spec{{ID: "b1"}, {ID: "b2"}}); err != nil {
		t.Fatal(err)
	}
	rotated, err := reg.Rotate(ctx, "b1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Delete(ctx, "b2"); err != nil {
		t.Fatal(err)
	}
	_, opSecret, err := reg.CreateOperatorToken(ctx, "ops", devices.RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	reg.Close()
	st.Close()

	// A second instance (or a restart) sees the same registry; migrations
	// run again harmlessly.
	st2, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	reg2, err := devices.Open(ctx, st2, devices.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg2.Close()
	if id, _, ok := reg2.Authenticate(c.Token); !ok || id != "pump-1" {
		t.Fatal("device token lost")
	}
	if _, ok := reg2.AuthenticateDevice("b1", rotated); !ok {
		t.Fatal("rotated token lost")
	}
	if reg2.Exists("b2") {
		t.Fatal("deleted device came back")
	}
	if op, ok := reg2.AuthenticateOperator(ctx, opSecret); !ok || op.Role != devices.RoleOperator {
		t.Fatal("operator token lost")
	}
	if d, _ := reg2.Get("pump-1"); d.Labels["site"] != "north" {
		t.Fatalf("labels: %+v", d)
	}
	if err := reg2.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestCommandsOnPostgreSQL(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := range devices.MaxCommandsKept + 30 {
		status := devices.CommandSucceeded
		if i < 3 {
			status = devices.CommandQueued
		}
		c := devices.CommandRecord{ID: fmt.Sprintf("cmd-%06d", i), Device: "d", Name: "x", Status: status, CreatedAt: time.Now()}
		if err := st.PutCommand(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	// Creating one more queued command prunes old final ones, never active ones.
	if err := st.PutCommand(ctx, devices.CommandRecord{ID: "cmd-999999", Device: "d", Status: devices.CommandQueued}); err != nil {
		t.Fatal(err)
	}
	all, err := st.ListCommands(ctx, "d", "", 10*devices.MaxCommandsKept)
	if err != nil || len(all) > devices.MaxCommandsKept+3 {
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
}

func ids(cs []devices.CommandRecord) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}
