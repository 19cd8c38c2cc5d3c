package commands

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// TestValidate: the spec's bounds and defaults, one row per rule.
func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		spec    Spec
		wantErr string
	}{
		{"defaults", Spec{Name: "reboot"}, ""},
		{"bad name", Spec{Name: "1reboot"}, "name must match"},
		{"empty name", Spec{}, "name must match"},
		{"params at the limit", Spec{Name: "x", Params: json.RawMessage(`{"a":"` + strings.Repeat("a", MaxParamsBytes-8) + `"}`)}, ""},
		{"params too large", Spec{Name: "x", Params: json.RawMessage(`{"a":"` + strings.Repeat("a", MaxParamsBytes) + `"}`)}, "params must be at most"},
		{"params not an object", Spec{Name: "x", Params: json.RawMessage(`[1]`)}, "params must be a JSON object"},
		{"params null", Spec{Name: "x", Params: json.RawMessage(`null`)}, "params must be a JSON object"},
		{"negative ttl", Spec{Name: "x", TTL: -time.Second}, "ttl must be"},
		{"ttl at the limit", Spec{Name: "x", TTL: MaxTTL}, ""},
		{"ttl too long", Spec{Name: "x", TTL: MaxTTL + 1}, "ttl must be"},
		{"negative timeout", Spec{Name: "x", Timeout: -1}, "timeout must be"},
		{"timeout at the limit", Spec{Name: "x", Timeout: MaxTimeout}, ""},
		{"timeout too long", Spec{Name: "x", Timeout: MaxTimeout + 1}, "timeout must be"},
		{"key at the limit", Spec{Name: "x", IdempotencyKey: strings.Repeat("k", 128)}, ""},
		{"key too long", Spec{Name: "x", IdempotencyKey: strings.Repeat("k", 129)}, "Idempotency-Key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec
			err := validate(&spec)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				if spec.TTL <= 0 || spec.Timeout <= 0 || len(spec.Params) == 0 {
					t.Fatalf("defaults not filled in: %+v", spec)
				}
				if tc.spec.TTL == 0 && spec.TTL != DefaultTTL || tc.spec.Timeout == 0 && spec.Timeout != DefaultTimeout {
					t.Fatalf("defaults %s %s", spec.TTL, spec.Timeout)
				}
				if tc.spec.Params == nil && string(spec.Params) != `{}` {
					t.Fatalf("default params %s", spec.Params)
				}
				return
			}
			if !errors.Is(err, devices.ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("validate = %v, want ErrInvalid with %q", err, tc.wantErr)
			}
		})
	}
}

// TestSendRefusals: an unknown device and a full queue.
func TestSendRefusals(t *testing.T) {
	r := newRig(t, nil, nil)
	ctx := context.Background()
	if _, _, err := r.s.SendCommand(ctx, Spec{Device: "ghost", Name: "x"}); !errors.Is(err, devices.ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
	if _, _, err := r.s.SendCommand(ctx, Spec{Device: "d", Name: "1"}); !errors.Is(err, devices.ErrInvalid) {
		t.Fatalf("invalid spec: %v", err)
	}
	for range MaxQueued {
		r.send(t, "d", "x")
	}
	if _, _, err := r.s.SendCommand(ctx, Spec{Device: "d", Name: "x"}); !errors.Is(err, devices.ErrQueueFull) {
		t.Fatalf("command %d: %v, want ErrQueueFull", MaxQueued+1, err)
	}
	// Another device has its own queue.
	r.send(t, "e", "x")
	// A store that fails refuses the command and keeps nothing of it.
	r.store.fail.Store(true)
	if _, _, err := r.s.SendCommand(ctx, Spec{Device: "f", Name: "x"}); err == nil {
		t.Fatal("a command the store refused was accepted")
	}
	r.store.fail.Store(false)
	if list, _ := r.s.ListCommands(ctx, "f", "", 10); len(list) != 0 {
		t.Fatalf("kept %d commands the store refused", len(list))
	}
}

// TestWindow: a session gets at most Window (16, not 1) unanswered
// commands; each result lets the next one through, in order.
func TestWindow(t *testing.T) {
	if Window != 16 {
		t.Fatalf("Window = %d, the protocol says 16", Window)
	}
	r := newRig(t, nil, nil)
	var ids []string
	for range Window + 4 {
		ids = append(ids, r.send(t, "d", "x").ID)
	}
	c := &conn{}
	r.s.SessionOpened("d", 1, c.deliver)
	r.sync(t)
	got := c.ids()
	if len(got) != Window {
		t.Fatalf("delivered %d commands to a new session, want the window of %d", len(got), Window)
	}
	for i, id := range got {
		if id != ids[i] {
			t.Fatalf("delivery %d is %s, want %s (creation order)", i, id, ids[i])
		}
		if s := r.status(t, "d", id); s != Sent {
			t.Fatalf("delivered command is %s", s)
		}
	}
	if s := r.status(t, "d", ids[Window]); s != Queued {
		t.Fatalf("command beyond the window is %s, want queued", s)
	}
	if err := r.result(t, "d", ids[3], telemetry.ResultOK); err != nil {
		t.Fatal(err)
	}
	if got := c.ids(); len(got) != Window+1 || got[Window] != ids[Window] {
		t.Fatalf("after one result: delivered %v, want the next one", got)
	}
	// A command sent while the window is full waits too.
	r.tick(t)
	if got := c.ids(); len(got) != Window+1 {
		t.Fatalf("the clock delivered past the window: %d", len(got))
	}
}

// TestDeliveryOrderAndRetry: a session whose queue is full stops the
// delivery without skipping a command; the clock tries again.
func TestDeliveryOrderAndRetry(t *testing.T) {
	r := newRig(t, nil, nil)
	c := &conn{}
	c.setClosed(true)
	r.s.SessionOpened("d", 1, c.deliver)
	a, b := r.send(t, "d", "a"), r.send(t, "d", "b")
	if s := r.status(t, "d", a.ID); s != Queued {
		t.Fatalf("a command the session refused is %s", s)
	}
	c.setClosed(false)
	r.tick(t)
	if got := c.ids(); len(got) != 2 || got[0] != a.ID || got[1] != b.ID {
		t.Fatalf("after the clock: %v", got)
	}
	if s := r.ev.statuses(a.ID); len(s) != 2 || s[0] != Queued || s[1] != Sent {
		t.Fatalf("events %v, want queued then sent", s)
	}
}

// TestRedelivery: a sent command without a result goes again to the next
// session of the device, and not again to the same one; an old session's
// end leaves the new one alone.
func TestRedelivery(t *testing.T) {
	r := newRig(t, nil, nil)
	c1 := &conn{}
	r.s.SessionOpened("d", 1, c1.deliver)
	rec := r.send(t, "d", "x")
	r.s.DeliverCommands("d")
	r.tick(t)
	if got := c1.ids(); len(got) != 1 {
		t.Fatalf("session 1 got %v, want the command once", got)
	}
	c2 := &conn{}
	r.s.SessionOpened("d", 2, c2.deliver)
	r.s.SessionClosed("d", 1) // the superseded session's late end
	r.sync(t)
	r.tick(t)
	if got := c2.ids(); len(got) != 1 || got[0] != rec.ID {
		t.Fatalf("session 2 got %v, want the unanswered command again", got)
	}
	got, _ := r.s.GetCommand(context.Background(), "d", rec.ID)
	if got.Deliveries != 2 || got.Status != Sent {
		t.Fatalf("after redelivery: %d deliveries, %s", got.Deliveries, got.Status)
	}
	if len(r.ev.statuses(rec.ID)) != 2 {
		t.Fatalf("a redelivery was announced again: %v", r.ev.statuses(rec.ID))
	}
	r.s.SessionClosed("d", 2)
	r.send(t, "d", "y")
	r.tick(t)
	if len(c2.ids()) != 1 {
		t.Fatalf("a closed session got commands: %v", c2.ids())
	}
}

// TestRestart: a new Service over the same store takes up the commands
// that were queued or sent, in order, with their idempotency keys.
func TestRestart(t *testing.T) {
	st := newMemStore()
	r := newRig(t, st, nil)
	ctx := context.Background()
	a := r.send(t, "d", "a")
	b, _, err := r.s.SendCommand(ctx, Spec{Device: "d", Name: "b", IdempotencyKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	done := r.send(t, "d", "c")
	if _, err := r.s.CancelCommand(ctx, "d", done.ID); err != nil {
		t.Fatal(err)
	}
	r2 := newRig(t, st, nil)
	c := &conn{}
	r2.s.SessionOpened("d", 7, c.deliver)
	r2.sync(t)
	if got := c.ids(); len(got) != 2 || got[0] != a.ID || got[1] != b.ID {
		t.Fatalf("after a restart delivered %v, want %s %s", got, a.ID, b.ID)
	}
	again, replayed, err := r2.s.SendCommand(ctx, Spec{Device: "d", Name: "b", IdempotencyKey: "k"})
	if err != nil || !replayed || again.ID != b.ID {
		t.Fatalf("idempotency key after a restart: %s replayed=%v %v", again.ID, replayed, err)
	}
}

// TestIdempotencyKey: the same key for the same device returns the first
// command, while it is active and after it finished; another device or
// key makes a new one.
func TestIdempotencyKey(t *testing.T) {
	r := newRig(t, nil, nil)
	ctx := context.Background()
	send := func(device, key string) (Record, bool) {
		t.Helper()
		rec, replayed, err := r.s.SendCommand(ctx, Spec{Device: device, Name: "x", IdempotencyKey: key})
		if err != nil {
			t.Fatal(err)
		}
		return rec, replayed
	}
	first, replayed := send("d", "k1")
	if replayed {
		t.Fatal("first use of a key replayed")
	}
	for _, tc := range []struct {
		name, device, key string
		wantSame          bool
	}{
		{"same key, active", "d", "k1", true},
		{"other key", "d", "k2", false},
		{"other device", "e", "k1", false},
	} {
		rec, replayed := send(tc.device, tc.key)
		if (rec.ID == first.ID) != tc.wantSame || replayed != tc.wantSame {
			t.Errorf("%s: id %s replayed=%v, first %s", tc.name, rec.ID, replayed, first.ID)
		}
	}
	if _, err := r.s.CancelCommand(ctx, "d", first.ID); err != nil {
		t.Fatal(err)
	}
	rec, replayed := send("d", "k1")
	if !replayed || rec.ID != first.ID || rec.Status != Cancelled {
		t.Fatalf("same key after it finished: %s %s replayed=%v", rec.ID, rec.Status, replayed)
	}
	// No key: always a new command.
	a, _ := send("d", "")
	b, _ := send("d", "")
	if a.ID == b.ID {
		t.Fatal("two commands without a key share an id")
	}
}

// TestCancel: only a queued command can be cancelled.
func TestCancel(t *testing.T) {
	r := newRig(t, nil, nil)
	ctx := context.Background()
	queued := r.send(t, "d", "q")
	rec, err := r.s.CancelCommand(ctx, "d", queued.ID)
	if err != nil || rec.Status != Cancelled || rec.CompletedAt == nil {
		t.Fatalf("cancel queued: %+v %v", rec, err)
	}
	if s := r.status(t, "d", queued.ID); s != Cancelled {
		t.Fatalf("stored %s", s)
	}
	if n := r.s.Stats().Finished[Cancelled].Load(); n != 1 {
		t.Fatalf("cancelled counter %d", n)
	}
	c := &conn{}
	r.s.SessionOpened("d", 1, c.deliver)
	sent := r.send(t, "d", "s")
	r.sync(t)
	for _, tc := range []struct {
		name, id   string
		wantStatus string
		wantErr    error
	}{
		{"sent", sent.ID, Sent, devices.ErrConflict},
		{"already cancelled", queued.ID, Cancelled, devices.ErrConflict},
		{"unknown", "cmd-nope", "", devices.ErrNotFound},
	} {
		rec, err := r.s.CancelCommand(ctx, "d", tc.id)
		if !errors.Is(err, tc.wantErr) || rec.Status != tc.wantStatus {
			t.Errorf("%s: %s %v, want %s %v", tc.name, rec.Status, err, tc.wantStatus, tc.wantErr)
		}
	}
	if s := r.status(t, "d", sent.ID); s != Sent {
		t.Fatalf("a refused cancel changed the command to %s", s)
	}
}

// TestClock: a queued command expires after its ttl, a sent one times out
// after its timeout; not a moment before.
func TestClock(t *testing.T) {
	for _, tc := range []struct {
		name       string
		connected  bool
		ttl, after time.Duration
		want       string
	}{
		{"queued within ttl", false, time.Minute, time.Minute, Queued},
		{"queued past ttl", false, time.Minute, time.Minute + time.Millisecond, Expired},
		{"sent within timeout", true, time.Hour, 30 * time.Second, Sent},
		{"sent past timeout", true, time.Hour, 30*time.Second + time.Millisecond, TimedOut},
		{"sent outlives its ttl", true, time.Second, 2 * time.Second, Sent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, nil, nil)
			if tc.connected {
				c := &conn{}
				r.s.SessionOpened("d", 1, c.deliver)
			}
			rec, _, err := r.s.SendCommand(context.Background(), Spec{Device: "d", Name: "x", TTL: tc.ttl, Timeout: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			r.clk.add(tc.after)
			r.tick(t)
			if s := r.status(t, "d", rec.ID); s != tc.want {
				t.Fatalf("status %s, want %s", s, tc.want)
			}
			r.sync(t)
			stillActive := len(r.s.active["d"]) == 1
			if stillActive != (tc.want == Queued || tc.want == Sent) {
				t.Fatalf("active set after the clock: %v", r.s.active["d"])
			}
			if tc.want == Expired || tc.want == TimedOut {
				if n := r.s.Stats().Finished[tc.want].Load(); n != 1 {
					t.Fatalf("counter %s = %d", tc.want, n)
				}
				if ev := r.ev.statuses(rec.ID); ev[len(ev)-1] != tc.want {
					t.Fatalf("events %v", ev)
				}
			}
		})
	}
}

// TestResults: what a result does in each state, one row per case.
func TestResults(t *testing.T) {
	for _, tc := range []struct {
		name    string
		state   string // of the command when the result comes: queued, sent, final, unknown
		status  string
		want    string
		wantErr error
	}{
		{"sent ok", Sent, telemetry.ResultOK, Succeeded, nil},
		{"sent error", Sent, telemetry.ResultError, Failed, nil},
		{"queued ok", Queued, telemetry.ResultOK, Succeeded, nil},
		{"duplicate after final", "final", telemetry.ResultError, Succeeded, devices.ErrNotFound},
		{"unknown", "unknown", telemetry.ResultOK, "", devices.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, nil, nil)
			if tc.state != Queued {
				r.s.SessionOpened("d", 1, (&conn{}).deliver)
			}
			rec := r.send(t, "d", "x")
			id := rec.ID
			switch tc.state {
			case "final":
				if err := r.result(t, "d", id, telemetry.ResultOK); err != nil {
					t.Fatal(err)
				}
			case "unknown":
				id = "cmd-unknown"
			}
			err := r.s.CommandResult("d", &telemetry.CommandResult{ID: id, Status: tc.status, Result: []byte(`{"v":1}`), Error: "e"})
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("result: %v, want %v", err, tc.wantErr)
			}
			if tc.want == "" {
				return
			}
			got, _ := r.s.GetCommand(context.Background(), "d", rec.ID)
			if got.Status != tc.want || got.CompletedAt == nil {
				t.Fatalf("status %s (completed %v), want %s", got.Status, got.CompletedAt, tc.want)
			}
			if tc.state != "final" && (string(got.Result) != `{"v":1}` || got.Error != "e") {
				t.Fatalf("result %s error %q not kept", got.Result, got.Error)
			}
			if n := r.s.Stats().Finished[tc.want].Load(); n != 1 {
				t.Fatalf("counter %s = %d, want 1", tc.want, n)
			}
			if h := got.History; h[len(h)-1].Status != tc.want {
				t.Fatalf("history %v", h)
			}
		})
	}
}

// TestWait: a waiter wakes when the command finishes, and returns what is
// stored when its time is up.
func TestWait(t *testing.T) {
	r := newRig(t, nil, nil)
	ctx := context.Background()
	rec := r.send(t, "d", "x")
	got, err := r.s.WaitCommand(ctx, "d", rec.ID, 10*time.Millisecond)
	if err != nil || got.Status != Queued {
		t.Fatalf("wait that ran out: %s %v", got.Status, err)
	}
	waited := make(chan Record, 1)
	go func() { // owner: this test; ends when the command finishes
		r, _ := r.s.WaitCommand(ctx, "d", rec.ID, time.Hour)
		waited <- r
	}()
	eventually(t, "the waiter", func() bool {
		n := 0
		_ = r.s.do(ctx, func() { n = len(r.s.waiters["d\x00"+rec.ID]) })
		return n == 1
	})
	if err := r.result(t, "d", rec.ID, telemetry.ResultOK); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-waited:
		if got.Status != Succeeded {
			t.Fatalf("waiter saw %s", got.Status)
		}
	case <-time.After(waitLong):
		t.Fatal("the waiter did not wake")
	}
	r.sync(t)
	if len(r.s.waiters) != 0 {
		t.Fatalf("waiters left: %v", r.s.waiters)
	}
	// A final command returns at once.
	got, err = r.s.WaitCommand(ctx, "d", rec.ID, time.Hour)
	if err != nil || got.Status != Succeeded {
		t.Fatalf("wait on a final command: %s %v", got.Status, err)
	}
}

// TestPoll: the HTTP long poll takes the oldest queued command once,
// waits for one to come, ends empty when its time is up, and ends with
// ErrRevoked when its token stops working.
func TestPoll(t *testing.T) {
	r := newRig(t, nil, nil)
	ctx := context.Background()
	a, b := r.send(t, "d", "a"), r.send(t, "d", "b")
	for _, want := range []string{a.ID, b.ID} {
		cmd, ok, err := r.s.NextCommand(ctx, "d", devices.TokenHash{}, time.Second)
		if err != nil || !ok || cmd.ID != want || cmd.Type != telemetry.TypeCommand {
			t.Fatalf("poll: %+v ok=%v %v, want %s", cmd, ok, err, want)
		}
		if s := r.status(t, "d", want); s != Sent {
			t.Fatalf("polled command is %s", s)
		}
	}
	if cmd, ok, err := r.s.NextCommand(ctx, "d", devices.TokenHash{}, 10*time.Millisecond); ok || err != nil {
		t.Fatalf("empty queue: %+v ok=%v %v", cmd, ok, err)
	}
	r.sync(t)
	if len(r.s.pollers) != 0 {
		t.Fatalf("a finished poll left its waiter: %v", r.s.pollers)
	}
	polled := make(chan telemetry.Command, 1)
	go func() { // owner: this test; ends when the command comes
		cmd, _, _ := r.s.NextCommand(ctx, "d", devices.TokenHash{}, time.Hour)
		polled <- cmd
	}()
	eventually(t, "the poll", func() bool {
		n := 0
		_ = r.s.do(ctx, func() { n = len(r.s.pollers["d"]) })
		return n == 1
	})
	c := r.send(t, "d", "c")
	select {
	case cmd := <-polled:
		if cmd.ID != c.ID {
			t.Fatalf("waiting poll got %s", cmd.ID)
		}
	case <-time.After(waitLong):
		t.Fatal("the waiting poll did not get the new command")
	}
	// A cancelled request ends the poll.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, ok, err := r.s.NextCommand(cctx, "d", devices.TokenHash{}, time.Hour); ok || err != nil {
		t.Fatalf("cancelled poll: ok=%v %v", ok, err)
	}
	// A revoked token: woken by the credentials change, nothing handed out.
	revoked := make(chan error, 1)
	go func() { // owner: this test; ends at the revocation
		_, _, err := r.s.NextCommand(ctx, "d", devices.TokenHash{}, time.Hour)
		revoked <- err
	}()
	eventually(t, "the poll", func() bool {
		n := 0
		_ = r.s.do(ctx, func() { n = len(r.s.pollers["d"]) })
		return n == 1
	})
	r.reg.valid.Store(0)
	r.s.WakePollers("d")
	select {
	case err := <-revoked:
		if !errors.Is(err, ErrRevoked) {
			t.Fatalf("revoked poll: %v", err)
		}
	case <-time.After(waitLong):
		t.Fatal("the revoked poll did not end")
	}
}

// TestPollRechecksBeforeHandOut: a command already queued does not go to
// a long poll whose token was rotated between its first check and the
// hand-out, on one instance (the local queue) or several (the shared
// store).
func TestPollRechecksBeforeHandOut(t *testing.T) {
	for _, tc := range []struct {
		name   string
		router func() Router
	}{
		{"local", LocalRouter},
		{"cluster", func() Router { return ClusterRouter(&publisher{}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, nil, tc.router())
			rec := r.send(t, "d", "x")
			r.reg.valid.Store(1) // the poll's first check passes; then the token is rotated
			cmd, ok, err := r.s.NextCommand(context.Background(), "d", devices.TokenHash{}, time.Second)
			if ok || !errors.Is(err, ErrRevoked) {
				t.Fatalf("poll got %q ok=%v err=%v, want ErrRevoked and nothing handed out", cmd.ID, ok, err)
			}
			got, _ := r.s.GetCommand(context.Background(), "d", rec.ID)
			if got.PolledAt != nil || tc.name == "local" && got.Status != Queued {
				t.Errorf("command marked polled/delivered for the rotated token: %+v", got)
			}
		})
	}
}

// TestStopped: after Run returns, calls end with ErrStopped instead of
// hanging.
func TestStopped(t *testing.T) {
	s, err := New(context.Background(), Options{Store: newMemStore(), Devices: &registry{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.SendCommand(context.Background(), Spec{Device: "d", Name: "x"}); !errors.Is(err, ErrStopped) {
		t.Fatalf("send after stop: %v", err)
	}
	if err := s.CommandResult("d", &telemetry.CommandResult{ID: "x"}); !errors.Is(err, ErrStopped) {
		t.Fatalf("result after stop: %v", err)
	}
	if _, err := New(context.Background(), Options{}); err == nil {
		t.Fatal("New without a store")
	}
}

// TestOwnerStoreCallsBounded: a store call the owner goroutine makes for
// a caller (SendCommand's write, a cluster poll's read of the shared
// store) is bounded by storeTimeout, not by the caller's ctx: with a hung
// store and a caller without a deadline (context.Background, or an HTTP
// request whose client waits) the owner, and with it every device's
// CommandResult, would otherwise be stuck for good.
func TestOwnerStoreCallsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for storeTimeout")
	}
	for _, tc := range []struct {
		name   string
		router func() Router
		call   func(ctx context.Context, s *Service)
	}{
		{"send", LocalRouter, func(ctx context.Context, s *Service) {
			_, _, _ = s.SendCommand(ctx, Spec{Device: "d", Name: "x"})
		}},
		{"cluster poll", func() Router { return ClusterRouter(&publisher{}) }, func(ctx context.Context, s *Service) {
			_, _, _ = s.NextCommand(ctx, "d", devices.TokenHash{}, time.Hour)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each waits storeTimeout
			st := newHangStore()
			reg := &registry{}
			reg.valid.Store(-1)
			s, err := New(context.Background(), Options{Store: st, Devices: reg, Router: tc.router()})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { _ = s.Run(ctx); close(done) }() // owner: this test; ends at the end
			callCtx, stopCall := context.WithCancel(context.Background())
			called := make(chan struct{})
			defer func() { stopCall(); <-called; cancel(); <-done }()
			st.hang.Store(true)
			go func() { tc.call(callCtx, s); close(called) }() // a caller that keeps waiting
			select {
			case <-st.entered:
			case <-time.After(waitLong):
				t.Fatal("the call never reached the store")
			}
			ran := make(chan struct{})
			s.enqueue(func() { close(ran) })
			select {
			case <-ran:
			case <-time.After(storeTimeout + waitLong):
				t.Errorf("owner goroutine still blocked in one store call after %s (storeTimeout %s)", storeTimeout+waitLong, storeTimeout)
				stopCall() // let it go, so the owner can stop
			}
		})
	}
}

// TestCallerGivesUpWhileQueued: a caller whose ctx ends while its request
// still waits for the busy owner goroutine returns at once with the ctx's
// error, and its request, when the owner comes to it, does nothing: no
// command created, none handed out, no waiter or poller left behind.
func TestCallerGivesUpWhileQueued(t *testing.T) {
	r := newRig(t, nil, nil)
	rec := r.send(t, "d", "x")
	release := parkOwner(t, r.s)
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		name string
		ok   bool
		err  error
	}
	results := make(chan result, 3)
	go func() { // owner: this test; ends when ctx does
		_, _, err := r.s.SendCommand(ctx, Spec{Device: "d", Name: "y"})
		results <- result{"send", false, err}
	}()
	go func() { // owner: this test; ends when ctx does
		_, err := r.s.WaitCommand(ctx, "d", rec.ID, time.Hour)
		results <- result{"wait", false, err}
	}()
	go func() { // owner: this test; ends when ctx does
		_, ok, err := r.s.NextCommand(ctx, "d", devices.TokenHash{}, time.Hour)
		results <- result{"poll", ok, err}
	}()
	eventually(t, "three requests queued", func() bool { return len(r.s.reqs) == 3 })
	cancel()
	for range 3 {
		select {
		case res := <-results:
			if res.ok || res.name != "poll" && !errors.Is(res.err, context.Canceled) {
				t.Errorf("%s: ok %v, err %v; want context.Canceled and nothing", res.name, res.ok, res.err)
			}
		case <-time.After(waitLong):
			t.Fatal("a caller whose ctx ended still waits for the busy owner")
		}
	}
	release()
	r.sync(t)
	var active, waiters, pollers int
	_ = r.s.do(context.Background(), func() {
		active, waiters, pollers = len(r.s.active["d"]), len(r.s.waiters), len(r.s.pollers)
	})
	if active != 1 || waiters != 0 || pollers != 0 {
		t.Fatalf("after the callers left: %d active (want 1), %d waiters, %d pollers", active, waiters, pollers)
	}
	if recs, _ := r.store.ListCommands(context.Background(), "d", "", 10); len(recs) != 1 {
		t.Fatalf("the abandoned send created a command: %d in the store", len(recs))
	}
	if s := r.status(t, "d", rec.ID); s != Queued {
		t.Fatalf("the abandoned poll took the command: %s", s)
	}
}
