package bridge

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// remoteStub records commands handed to the broker (our own interface).
type remoteStub struct {
	mu  sync.Mutex
	ids []string
}

func (r *remoteStub) PublishCommand(device string, cmd telemetry.Command) bool {
	r.mu.Lock()
	r.ids = append(r.ids, cmd.ID)
	r.mu.Unlock()
	return true
}

func (r *remoteStub) published() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ids...)
}

// eventLog is a Fanout that keeps command events.
type eventLog struct {
	mu     sync.Mutex
	events []telemetry.Event
}

func (l *eventLog) Publish(ev telemetry.Event) {
	l.mu.Lock()
	l.events = append(l.events, ev)
	l.mu.Unlock()
}

func (l *eventLog) statuses(id string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, ev := range l.events {
		if ev.Type == telemetry.EventCommand && ev.ID == id {
			out = append(out, ev.Status)
		}
	}
	return out
}

type nopStore struct{}

func (nopStore) Append(context.Context, int, []byte) error { return nil }

// TestCommandsAcrossInstances: two bridges share one command store, as two
// hub instances share PostgreSQL. A command for a device connected
// elsewhere goes to Remote (sent); the instance where the device answers
// finishes it in the shared store; the creating instance lets go of it
// and wakes its waiter when it hears of the change; when the device
// connects elsewhere again, unanswered commands are handed over again;
// the command clock never times out a command another instance finished.
func TestCommandsAcrossInstances(t *testing.T) {
	ctx := context.Background()
	st, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	clock := func() time.Time { return now }
	newBridge := func(remote RemoteCommands, fan Fanout) *Bridge {
		br, err := New(Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: nopStore{}, Devices: registryStub{},
			Fanout: fan, Commands: st, Remote: remote, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		return br
	}
	remoteA := &remoteStub{}
	eventsB := &eventLog{}
	a := newBridge(remoteA, &eventLog{})
	b := newBridge(&remoteStub{}, eventsB)

	rec, _, err := a.SendCommand(ctx, devices.CommandSpec{Device: "d1", Name: "reboot", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if got := remoteA.published(); len(got) != 1 || got[0] != rec.ID || rec.Status != devices.CommandSent {
		t.Fatalf("published %v, status %s: want the command handed to Remote and sent", got, rec.Status)
	}

	// The device answers on instance B, which did not create the command.
	waited := make(chan devices.CommandRecord, 1)
	go func() {
		r, _ := a.WaitCommand(ctx, "d1", rec.ID, 10*time.Second)
		waited <- r
	}()
	if err := b.CommandResult("d1", &telemetry.CommandResult{ID: rec.ID, Status: telemetry.ResultOK}); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.GetCommand(ctx, "d1", rec.ID); got.Status != devices.CommandSucceeded {
		t.Fatalf("shared store says %s, want succeeded", got.Status)
	}
	if s := eventsB.statuses(rec.ID); len(s) != 1 || s[0] != devices.CommandSucceeded {
		t.Fatalf("instance B announced %v", s)
	}
	// A duplicate answer changes nothing.
	if err := b.CommandResult("d1", &telemetry.CommandResult{ID: rec.ID, Status: telemetry.ResultError}); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.GetCommand(ctx, "d1", rec.ID); got.Status != devices.CommandSucceeded {
		t.Fatalf("a duplicate answer changed the command to %s", got.Status)
	}
	a.CommandChanged("d1", rec.ID) // B's event reached A through the broker
	select {
	case r := <-waited:
		if r.Status != devices.CommandSucceeded {
			t.Fatalf("waiter on A saw %s", r.Status)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter on A did not wake")
	}

	// Unanswered commands are handed over again when the device connects
	// to another instance.
	rec2, _, err := a.SendCommand(ctx, devices.CommandSpec{Device: "d1", Name: "open", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	a.RemoteConnected("d1")
	if got := remoteA.published(); len(got) != 3 || got[1] != rec2.ID || got[2] != rec2.ID {
		t.Fatalf("published %v: want %s twice", got, rec2.ID)
	}

	// B finishes it and A misses the announcement: when the timeout comes,
	// A's clock adopts the final status instead of timing it out.
	if err := b.CommandResult("d1", &telemetry.CommandResult{ID: rec2.ID, Status: telemetry.ResultError, Error: "stuck"}); err != nil {
		t.Fatal(err)
	}
	a.commands.tick(now.Add(2 * time.Minute))
	got, _ := st.GetCommand(ctx, "d1", rec2.ID)
	if got.Status != devices.CommandFailed || got.Error != "stuck" {
		t.Fatalf("after A's clock: %s %q, want failed \"stuck\"", got.Status, got.Error)
	}
	if n := len(a.commands.active["d1"]); n != 0 {
		t.Fatalf("A still tracks %d commands", n)
	}

	// An HTTP device polls instance B for a command created on A: B's
	// poll is woken when the command shows up on the broker, takes it
	// from the shared store, and never hands it out twice.
	polled := make(chan telemetry.Command, 1)
	go func() {
		cmd, _, _ := b.NextCommand(ctx, "d2", devices.TokenHash{}, 10*time.Second)
		polled <- cmd
	}()
	rec3, _, err := a.SendCommand(ctx, devices.CommandSpec{Device: "d2", Name: "poll_me", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	waitPoller := time.Now().Add(5 * time.Second)
	for {
		b.commands.mu.Lock()
		n := len(b.commands.pollers["d2"])
		b.commands.mu.Unlock()
		if n > 0 || time.Now().After(waitPoller) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	b.WakePollers("d2") // what the cluster does when the command crosses the broker
	select {
	case cmd := <-polled:
		if cmd.ID != rec3.ID {
			t.Fatalf("poll on B got %q, want %s", cmd.ID, rec3.ID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the poll on B did not get the command created on A")
	}
	if cmd, ok, _ := b.NextCommand(ctx, "d2", devices.TokenHash{}, 10*time.Millisecond); ok {
		t.Fatalf("command %s handed out twice", cmd.ID)
	}
	if err := b.CommandResult("d2", &telemetry.CommandResult{ID: rec3.ID, Status: telemetry.ResultOK}); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.GetCommand(ctx, "d2", rec3.ID); got.Status != devices.CommandSucceeded || got.PolledAt == nil {
		t.Fatalf("polled command: %s, polled_at %v", got.Status, got.PolledAt)
	}
}
