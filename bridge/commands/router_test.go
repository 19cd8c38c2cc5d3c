package commands

import (
	"context"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// TestClusterHandOver: two services share one store, as two hub
// instances share PostgreSQL, each with a ClusterRouter over a fake of
// the broker. A command for a device connected elsewhere goes to the
// broker (sent); the instance where the device answers finishes it in the
// shared store; the creating instance lets go of it and wakes its waiter
// when it hears of the change; when the device connects elsewhere again,
// unanswered commands are handed over again; the command clock never
// times out a command another instance finished; an HTTP poll on either
// instance takes a command once.
func TestClusterHandOver(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	pubA, pubB := &publisher{}, &publisher{}
	a := newRig(t, st, ClusterRouter(pubA))
	b := newRig(t, st, ClusterRouter(pubB))

	rec := a.send(t, "d1", "reboot")
	if got := pubA.published(); len(got) != 1 || got[0] != rec.ID || rec.Status != Sent {
		t.Fatalf("published %v, status %s: want the command handed to the broker and sent", got, rec.Status)
	}
	// The broker is down: the command waits, and goes once it is back.
	pubA.down.Store(true)
	late := a.send(t, "d1", "later")
	if late.Status != Queued {
		t.Fatalf("with the broker down: %s", late.Status)
	}
	pubA.down.Store(false)
	a.tick(t)
	if got := pubA.published(); len(got) != 2 || got[1] != late.ID {
		t.Fatalf("after the broker came back: %v", got)
	}

	// The device answers on instance B, which did not create the command.
	waited := make(chan Record, 1)
	go func() { // owner: this test; ends when A hears of the result
		r, _ := a.s.WaitCommand(ctx, "d1", rec.ID, time.Hour)
		waited <- r
	}()
	if err := b.result(t, "d1", rec.ID, telemetry.ResultOK); err != nil {
		t.Fatal(err)
	}
	if s := a.status(t, "d1", rec.ID); s != Succeeded {
		t.Fatalf("shared store says %s, want succeeded", s)
	}
	if s := b.ev.statuses(rec.ID); len(s) != 1 || s[0] != Succeeded {
		t.Fatalf("instance B announced %v", s)
	}
	// A duplicate answer changes nothing, and is no error.
	if err := b.result(t, "d1", rec.ID, telemetry.ResultError); err != nil {
		t.Fatal(err)
	}
	if s := a.status(t, "d1", rec.ID); s != Succeeded {
		t.Fatalf("a duplicate answer changed the command to %s", s)
	}
	// A result for a command no instance created.
	if err := b.result(t, "d1", "cmd-nope", telemetry.ResultOK); err == nil {
		t.Fatal("a result for an unknown command was taken")
	}
	a.s.CommandChanged("d1", rec.ID) // B's event reached A through the broker
	select {
	case r := <-waited:
		if r.Status != Succeeded {
			t.Fatalf("waiter on A saw %s", r.Status)
		}
	case <-time.After(waitLong):
		t.Fatal("the waiter on A did not wake")
	}
	a.sync(t)
	for _, x := range a.s.active["d1"] {
		if x.rec.ID == rec.ID {
			t.Fatal("A still tracks the command B finished")
		}
	}

	// Unanswered commands are handed over again when the device connects
	// to another instance.
	a.s.RemoteConnected("d1")
	a.sync(t)
	if got := pubA.published(); len(got) != 3 || got[2] != late.ID {
		t.Fatalf("published %v: want %s again", got, late.ID)
	}
	// ... but not when the device is connected here.
	c := &conn{}
	a.s.SessionOpened("d1", 5, c.deliver)
	a.sync(t)
	a.s.RemoteConnected("d1")
	a.sync(t)
	if got := pubA.published(); len(got) != 3 {
		t.Fatalf("handed over while connected here: %v", got)
	}
	if got := c.ids(); len(got) != 1 || got[0] != late.ID {
		t.Fatalf("the session here got %v", got)
	}
	a.s.SessionClosed("d1", 5)

	// B finishes it and A misses the announcement: when the timeout comes,
	// A's clock adopts the final status instead of timing it out.
	if err := b.result(t, "d1", late.ID, telemetry.ResultError); err != nil {
		t.Fatal(err)
	}
	a.clk.add(2 * time.Minute)
	a.tick(t)
	if s := a.status(t, "d1", late.ID); s != Failed {
		t.Fatalf("after A's clock: %s, want failed", s)
	}
	if n := a.s.Stats().Finished[TimedOut].Load(); n != 0 {
		t.Fatalf("A counted %d timeouts", n)
	}
	a.sync(t)
	if n := len(a.s.active["d1"]); n != 0 {
		t.Fatalf("A still tracks %d commands", n)
	}

	// An HTTP device polls instance B for a command created on A: B's poll
	// is woken when the command shows up on the broker (ForwardCommand
	// without a session here), takes it from the shared store, and never
	// hands it out twice.
	polled := make(chan telemetry.Command, 1)
	go func() { // owner: this test; ends when the command comes
		cmd, _, _ := b.s.NextCommand(ctx, "d2", devices.TokenHash{}, time.Hour)
		polled <- cmd
	}()
	eventually(t, "the poll on B", func() bool {
		n := 0
		_ = b.s.do(ctx, func() { n = len(b.s.pollers["d2"]) })
		return n == 1
	})
	rec3 := a.send(t, "d2", "poll_me")
	if b.s.ForwardCommand("d2", telemetry.Command{ID: rec3.ID}) {
		t.Fatal("forwarded to a session B does not have")
	}
	select {
	case cmd := <-polled:
		if cmd.ID != rec3.ID {
			t.Fatalf("poll on B got %q, want %s", cmd.ID, rec3.ID)
		}
	case <-time.After(waitLong):
		t.Fatal("the poll on B did not get the command created on A")
	}
	if cmd, ok, _ := b.s.NextCommand(ctx, "d2", devices.TokenHash{}, 10*time.Millisecond); ok {
		t.Fatalf("command %s handed out twice", cmd.ID)
	}
	if cmd, ok, _ := a.s.NextCommand(ctx, "d2", devices.TokenHash{}, 10*time.Millisecond); ok {
		t.Fatalf("command %s handed out again by A", cmd.ID)
	}
	if err := b.result(t, "d2", rec3.ID, telemetry.ResultOK); err != nil {
		t.Fatal(err)
	}
	got, _ := a.s.GetCommand(ctx, "d2", rec3.ID)
	if got.Status != Succeeded || got.PolledAt == nil {
		t.Fatalf("polled command: %s, polled_at %v", got.Status, got.PolledAt)
	}

	// A session on B takes what another instance forwards.
	cb := &conn{}
	b.s.SessionOpened("d3", 9, cb.deliver)
	if !b.s.ForwardCommand("d3", telemetry.Command{ID: "cmd-x"}) || len(cb.ids()) != 1 {
		t.Fatalf("forward to a session here: %v", cb.ids())
	}
}

// TestLocalRouter: one instance hands nothing beyond itself.
func TestLocalRouter(t *testing.T) {
	r := newRig(t, nil, LocalRouter())
	rec := r.send(t, "d", "x")
	r.tick(t)
	if rec.Status != Queued || r.status(t, "d", rec.ID) != Queued {
		t.Fatalf("a command for a device without a session is %s", rec.Status)
	}
	r.s.RemoteConnected("d")
	r.s.CommandChanged("d", rec.ID)
	r.sync(t)
	if len(r.s.active["d"]) != 1 {
		t.Fatal("news from other instances changed a local command")
	}
}
