package live

import (
	"context"
	"fmt"
	"testing"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

func offline(dev string, at int64) telemetry.Event {
	off := false
	return telemetry.Event{Type: telemetry.EventPresence, Device: dev, Online: &off, Reason: "client_closed", At: at}
}

func command(dev, id, status string, at int64) telemetry.Event {
	return telemetry.Event{Type: telemetry.EventCommand, Device: dev, ID: id, Status: status, At: at}
}

// following is a subscriber of every device on a hub whose Run has not
// started (the test owns the subscriber set until then).
func following(h *Hub) *Subscriber {
	s := h.NewSubscriber(devices.Operator{TokenID: "tok"})
	h.subs[s] = struct{}{}
	s.f.All = true
	return s
}

// start runs h's goroutine from now on.
func start(t *testing.T, h *Hub) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// describe lists events as type:device:ts-or-at, for comparisons.
func describe(les []*Event) []string {
	var out []string
	for _, le := range les {
		switch le.Ev.Type {
		case telemetry.EventReading:
			out = append(out, fmt.Sprintf("reading:%s:%d", le.Ev.Device, le.Ev.TS))
		case telemetry.EventPresence:
			out = append(out, fmt.Sprintf("presence:%s:%v:%d", le.Ev.Device, *le.Ev.Online, le.Ev.At))
		default:
			out = append(out, fmt.Sprintf("%s:%s:%s:%s", le.Ev.Type, le.Ev.Device, le.Ev.ID, le.Ev.Status))
		}
	}
	return out
}

// TestPresenceAndCommandNeverDroppedBehindFullInput: with the readings'
// input full, a device's offline and a command's status still reach the
// presence log and the dashboards; only readings are dropped and counted.
func TestPresenceAndCommandNeverDroppedBehindFullInput(t *testing.T) {
	h := New(Options{InputLen: 2}) // not running: nothing drains
	s := following(h)
	for ts := range 3 { // the third does not fit
		h.PublishBatch([]telemetry.Event{reading("d1", int64(ts+1), "a", 1.0)})
	}
	h.Publish(presence("d1", 10))
	h.Publish(offline("d1", 11))
	h.Publish(command("d1", "cmd-1", "succeeded", 12))
	start(t, h)
	settle(h)
	log := h.PresenceLog("d1")
	if len(log) != 2 || *log[1].Online {
		t.Fatalf("presence log %+v: the device's offline was lost", log)
	}
	got := fmt.Sprint(describe(s.Take(nil)))
	if want := "[reading:d1:1 reading:d1:2 presence:d1:true:10 presence:d1:false:11 command:d1:cmd-1:succeeded]"; got != want {
		t.Errorf("delivered %s, want %s", got, want)
	}
	if n := h.Stats().InputDropped; n != 1 {
		t.Errorf("InputDropped = %d, want the one reading that did not fit", n)
	}
}

// TestStateInputCoalescesPastItsBound: while the hub is away, presence
// and command events past stateKept are coalesced to the latest per
// device and per command, never dropped: each device ends in its last
// published state, and an offline is never overtaken by the older online.
func TestStateInputCoalescesPastItsBound(t *testing.T) {
	h := New(Options{})
	s := following(h)
	devs := []string{"d0", "d1", "d2"}
	last := map[string]bool{}
	for i := range stateKept + 1 { // the last one coalesces the list
		d := devs[i%len(devs)]
		online := (i/len(devs))%2 == 0
		ev := presence(d, int64(i))
		ev.Online = &online
		h.Publish(ev)
		last[d] = online
	}
	h.Publish(command("d0", "cmd-1", "sent", 1))
	h.Publish(command("d0", "cmd-1", "succeeded", 2))
	if n := h.stateWaiting(); n > stateKept {
		t.Fatalf("%d state events wait, past the bound %d", n, stateKept)
	}
	start(t, h)
	settle(h)
	for _, d := range devs {
		log := h.PresenceLog(d)
		if len(log) == 0 || *log[len(log)-1].Online != last[d] {
			t.Errorf("%s: presence log ends %+v, want online=%v", d, log[len(log)-1], last[d])
		}
	}
	got := describe(s.Take(nil))
	if len(got) == 0 || got[len(got)-1] != "command:d0:cmd-1:succeeded" {
		t.Errorf("delivered %v, want the command's last status last", got)
	}
}

// TestCoalesceStateTable: what coalescing keeps, as a table: the latest
// event per key, in publish order; a Forget someone waits for is always
// kept.
func TestCoalesceStateTable(t *testing.T) {
	waiter := make(chan struct{})
	for _, tc := range []struct {
		name string
		in   []stateEvent
		want []uint64 // stamps kept
	}{
		{"latest presence per device", []stateEvent{{at: 1, ev: presence("d1", 1)}, {at: 2, ev: presence("d2", 2)}, {at: 3, ev: offline("d1", 3)}}, []uint64{2, 3}},
		{"latest status per command", []stateEvent{{at: 1, ev: command("d1", "c1", "sent", 1)}, {at: 2, ev: command("d1", "c2", "sent", 2)}, {at: 3, ev: command("d1", "c1", "succeeded", 3)}}, []uint64{2, 3}},
		{"presence and command do not merge", []stateEvent{{at: 1, ev: presence("d1", 1)}, {at: 2, ev: command("d1", "c1", "sent", 2)}}, []uint64{1, 2}},
		{"forgets without a waiter coalesce", []stateEvent{{at: 1, ev: telemetry.Event{Device: "d1"}, forget: true}, {at: 2, ev: telemetry.Event{Device: "d1"}, forget: true}}, []uint64{2}},
		{"a waited-for forget is kept", []stateEvent{{at: 1, ev: telemetry.Event{Device: "d1"}, forget: true, applied: waiter}, {at: 2, ev: telemetry.Event{Device: "d1"}, forget: true}}, []uint64{1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []uint64
			for _, se := range coalesceState(tc.in) {
				got = append(got, se.at)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("kept %v, want %v", got, tc.want)
			}
		})
	}
}

// TestStateInPublishOrderWithReadings: a device's reading, its offline,
// then a reading reach a dashboard in that order, though they travel
// through different inputs.
func TestStateInPublishOrderWithReadings(t *testing.T) {
	h := New(Options{})
	s := following(h)
	h.Publish(reading("d1", 1, "a", 1.0))
	h.Publish(offline("d1", 2))
	h.PublishBatch([]telemetry.Event{reading("d1", 3, "a", 1.0), presence("d1", 4), reading("d1", 5, "a", 1.0)})
	h.round(nil)
	got := fmt.Sprint(describe(s.Take(nil)))
	if want := "[reading:d1:1 presence:d1:false:2 reading:d1:3 presence:d1:true:4 reading:d1:5]"; got != want {
		t.Fatalf("delivered %s, want %s", got, want)
	}
}

// TestStateWaitsForReadingsBeforeIt: a round cut at gatherMax with
// readings still waiting keeps the state events published after them
// for the next round, so the offline does not overtake those readings.
func TestStateWaitsForReadingsBeforeIt(t *testing.T) {
	h := New(Options{})
	s := following(h)
	for i := range gatherMax + 10 {
		h.Publish(reading("d1", int64(i), "a", 1.0))
	}
	h.Publish(offline("d1", 99999))
	h.round(nil)
	if got := s.Take(nil); len(got) != gatherMax || got[len(got)-1].Ev.Type != telemetry.EventReading {
		t.Fatalf("first round delivered %d events ending %v, want %d readings", len(got), describe(got[len(got)-1:]), gatherMax)
	}
	if n := h.stateWaiting(); n != 1 {
		t.Fatalf("%d state events wait after the cut round, want the offline", n)
	}
	h.round(nil)
	got := describe(s.Take(nil))
	if len(got) != 11 || got[10] != "presence:d1:false:99999" {
		t.Fatalf("second round delivered %v, want 10 readings then the offline", got)
	}
}

// TestInputBoundCountsEvents: the readings' input is bounded in events
// (InputEvents), not only in batches: a batch that would pass the budget
// is dropped and counted, and the hub's take gives the room back.
func TestInputBoundCountsEvents(t *testing.T) {
	h := New(Options{InputLen: 2, InputEvents: 1500}) // not running
	msg := func() []telemetry.Event {
		evs := make([]telemetry.Event, 1000)
		for i := range evs {
			evs[i] = reading("d1", int64(i), "a", 1.0)
		}
		return evs
	}
	h.PublishBatch(msg())
	h.PublishBatch(msg()) // 2,000 would pass 1,500
	if n := h.inputDropped.Load(); n != 1000 {
		t.Fatalf("InputDropped = %d, want the 1,000 readings past the budget", n)
	}
	if q := h.queued.Load(); q != 1000 {
		t.Fatalf("%d readings counted as queued, want 1,000", q)
	}
	h.round(nil)
	if q := h.queued.Load(); q != 0 {
		t.Fatalf("%d readings counted as queued after the hub took them", q)
	}
	h.PublishBatch(msg())
	if n := h.inputDropped.Load(); n != 1000 || len(h.in) != 1 {
		t.Fatalf("after the take: InputDropped %d, %d batches queued; want the room back", n, len(h.in))
	}
}

// TestForgetInOrderWithInput: Forget is applied after the readings and
// presence published before it, so they do not bring the deleted device
// back; what is published after it is applied after it.
func TestForgetInOrderWithInput(t *testing.T) {
	h := New(Options{}) // not running: everything below waits in the inputs
	h.Publish(reading("d1", 1, "a", 1.0))
	h.Publish(presence("d1", 2))
	h.Publish(reading("d2", 3, "a", 1.0))
	h.Forget("d1") // before Run: queued, returns at once
	h.Publish(reading("d1", 9, "b", 2.0))
	start(t, h)
	settle(h)
	if ev, ok := h.Latest("d1"); !ok || ev.TS != 9 || len(ev.Metrics) != 1 || ev.Metrics["b"].Num != 2 {
		t.Errorf("latest d1 = %+v, %v; want only the reading published after Forget", ev, ok)
	}
	if log := h.PresenceLog("d1"); len(log) != 0 {
		t.Errorf("presence log of the forgotten device: %+v", log)
	}
	if _, ok := h.Latest("d2"); !ok {
		t.Error("Forget of d1 dropped d2")
	}
	// Running: Forget returns once applied.
	h.Publish(reading("d1", 10, "a", 1.0))
	h.Forget("d1")
	if _, ok := h.Latest("d1"); ok {
		t.Error("Forget returned before it was applied")
	}
}

// TestPublishBatchSplitsOnlyAroundReadings: a message's state events
// split its readings into batches, and only non-empty runs of readings
// take a slot of the readings' input (InputLen counts batches).
func TestPublishBatchSplitsOnlyAroundReadings(t *testing.T) {
	r := func(ts int64) telemetry.Event { return reading("d1", ts, "a", 1.0) }
	for _, tc := range []struct {
		name    string
		evs     []telemetry.Event
		batches int
		state   int
	}{
		{"state only", []telemetry.Event{presence("d1", 1)}, 0, 1},
		{"state first", []telemetry.Event{presence("d1", 1), r(2)}, 1, 1},
		{"state last", []telemetry.Event{r(1), presence("d1", 2)}, 1, 1},
		{"state in the middle", []telemetry.Event{r(1), offline("d1", 2), r(3)}, 2, 1},
		{"two states together", []telemetry.Event{r(1), offline("d1", 2), presence("d1", 3), r(4)}, 2, 2},
		{"readings only", []telemetry.Event{r(1), r(2)}, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := New(Options{}) // not running
			h.PublishBatch(tc.evs)
			if len(h.in) != tc.batches || h.stateWaiting() != tc.state {
				t.Errorf("%d batches, %d state events queued; want %d, %d", len(h.in), h.stateWaiting(), tc.batches, tc.state)
			}
		})
	}
}

// TestInputEventBudgetTable: InputEvents is the most readings that may
// wait: a batch that reaches it exactly is taken, one past it dropped;
// a batch dropped because the channel is full (InputLen) gives its
// budget back.
func TestInputEventBudgetTable(t *testing.T) {
	msg := func(n int) []telemetry.Event {
		evs := make([]telemetry.Event, n)
		for i := range evs {
			evs[i] = reading("d1", int64(i), "a", 1.0)
		}
		return evs
	}
	for _, tc := range []struct {
		name            string
		opts            Options
		sizes           []int
		dropped, queued int64
		batches         int
	}{
		{"exactly the budget", Options{InputEvents: 10}, []int{10}, 0, 10, 1},
		{"one past the budget", Options{InputEvents: 10}, []int{11}, 11, 0, 0},
		{"fills the budget in two", Options{InputEvents: 10}, []int{4, 6, 1}, 1, 10, 2},
		{"channel full gives the budget back", Options{InputLen: 1, InputEvents: 100}, []int{3, 5}, 5, 3, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := New(tc.opts) // not running
			for _, n := range tc.sizes {
				h.PublishBatch(msg(n))
			}
			if d, q := h.inputDropped.Load(), h.queued.Load(); d != tc.dropped || q != tc.queued || len(h.in) != tc.batches {
				t.Errorf("dropped %d, queued %d readings in %d batches; want %d, %d in %d", d, q, len(h.in), tc.dropped, tc.queued, tc.batches)
			}
		})
	}
}

// TestRoundGivesBackFirstBatchBudget: the batch the hub goroutine
// received before its round (round's first) leaves the event budget too.
func TestRoundGivesBackFirstBatchBudget(t *testing.T) {
	h := New(Options{})
	s := following(h)
	h.PublishBatch([]telemetry.Event{reading("d1", 1, "a", 1.0), reading("d1", 2, "a", 1.0)})
	h.PublishBatch([]telemetry.Event{reading("d1", 3, "a", 1.0)})
	b := <-h.in
	h.round(&b)
	if q := h.queued.Load(); q != 0 {
		t.Errorf("%d readings counted as queued after the round took them all", q)
	}
	if got := fmt.Sprint(describe(s.Take(nil))); got != "[reading:d1:1 reading:d1:2 reading:d1:3]" {
		t.Errorf("delivered %s", got)
	}
}

// TestStateCoalesceThreshold: the state input is coalesced only once it
// holds more than stateKept events, and after that only once it doubles
// what coalescing left (a flood over many keys does not coalesce on
// every event).
func TestStateCoalesceThreshold(t *testing.T) {
	t.Run("not at the bound", func(t *testing.T) {
		h := New(Options{})
		for i := range stateKept {
			h.Publish(presence("d1", int64(i)))
		}
		if n := h.stateWaiting(); n != stateKept {
			t.Errorf("%d state events wait, want all %d (not past the bound)", n, stateKept)
		}
		h.Publish(presence("d1", stateKept))
		if n := h.stateWaiting(); n != 1 {
			t.Errorf("%d state events wait past the bound, want the one latest", n)
		}
	})
	t.Run("threshold doubles from what is left", func(t *testing.T) {
		h := New(Options{})
		const keys = 3000 // coalescing leaves these, 2*keys > stateKept
		for i := range stateKept + 1 {
			h.Publish(presence(fmt.Sprintf("d%d", i%keys), int64(i)))
		}
		if n := h.stateWaiting(); n != keys {
			t.Fatalf("%d state events wait after coalescing, want %d", n, keys)
		}
		for i := range 2*keys - keys { // up to the doubled threshold, not past it
			h.Publish(presence("d0", int64(stateKept+1+i)))
		}
		if n := h.stateWaiting(); n != 2*keys {
			t.Errorf("%d state events wait, want %d: coalesced before the doubled threshold", n, 2*keys)
		}
	})
}

// TestCutRoundWithEmptyInputAppliesState: a round that stopped at
// exactly gatherMax readings with nothing left waiting applies the state
// events after them at once (nothing is left for them to overtake).
func TestCutRoundWithEmptyInputAppliesState(t *testing.T) {
	h := New(Options{})
	s := following(h)
	for i := range gatherMax {
		h.Publish(reading("d1", int64(i), "a", 1.0))
	}
	h.Publish(offline("d1", 99999))
	h.round(nil)
	got := describe(s.Take(nil))
	if n := h.stateWaiting(); n != 0 || len(got) != gatherMax+1 || got[gatherMax] != "presence:d1:false:99999" {
		t.Fatalf("%d state events wait, delivered %d ending %v; want all %d readings then the offline", n, len(got), got[len(got)-1:], gatherMax)
	}
}

// TestCutRoundKeepsStateUncoalescedWithinBound: state events a cut round
// puts back are coalesced only past stateKept, like the input itself: a
// device's online then offline both reach the dashboards.
func TestCutRoundKeepsStateUncoalescedWithinBound(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state int // state events for d1 published after the readings
	}{
		{"two", 2},
		{"exactly the bound", stateKept},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := New(Options{})
			s := following(h)
			for i := range gatherMax + 10 {
				h.Publish(reading("d1", int64(i), "a", 1.0))
			}
			for i := range tc.state {
				ev := presence("d1", int64(100000+i))
				on := i%2 == 0
				ev.Online = &on
				h.Publish(ev)
			}
			h.round(nil)
			s.Take(nil)
			if n := h.stateWaiting(); n != tc.state {
				t.Fatalf("%d state events wait after the cut round, want all %d", n, tc.state)
			}
			if tc.state > 2*h.opts.QueueLen {
				return // more than one subscriber's queue holds
			}
			h.round(nil)
			if got := s.Take(nil); len(got) != 10+tc.state {
				t.Errorf("second round delivered %d events, want 10 readings and %d state events", len(got), tc.state)
			}
		})
	}
}
