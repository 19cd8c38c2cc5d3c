package live

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// wait is how long a test waits for an event it expects: generous for a
// loaded machine; every wait ends as soon as the event happens.
const wait = 60 * time.Second

// running starts h's goroutine for the test.
func running(t *testing.T, opts Options) *Hub {
	t.Helper()
	h := New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

func reading(dev string, ts int64, kv ...any) telemetry.Event {
	m := telemetry.Metrics{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = telemetry.Number(kv[i+1].(float64))
	}
	return telemetry.Event{Type: telemetry.EventReading, Device: dev, TS: ts, Metrics: m}
}

func presence(dev string, at int64) telemetry.Event {
	on := true
	return telemetry.Event{Type: telemetry.EventPresence, Device: dev, Online: &on, At: at}
}

// added is a subscriber of token tok following devs, admitted to h.
func added(t *testing.T, h *Hub, tok, session string, devs ...string) *Subscriber {
	t.Helper()
	s := h.NewSubscriber(devices.Operator{TokenID: tok, Session: session})
	if err := h.Add(s); err != nil {
		t.Fatalf("add: %v", err)
	}
	h.Subscribe(s, func(f *Filter) { f.Subscribe(devs, nil) })
	return s
}

// settle waits until the hub goroutine has handled everything published
// before it: an op runs after the round that took the inputs, and Stats
// is one. (State events go back to the state input only while readings
// still wait in the channel.)
func settle(h *Hub) {
	for len(h.in) > 0 || h.stateWaiting() > 0 {
		h.Stats()
	}
	h.Stats()
}

// stateWaiting is how many state events wait for the hub.
func (h *Hub) stateWaiting() int {
	h.smu.Lock()
	defer h.smu.Unlock()
	return len(h.state)
}

// drain takes what the subscriber holds once everything published is
// handled and it is notified.
func drain(t *testing.T, s *Subscriber) []*Event {
	t.Helper()
	settle(s.hub)
	select {
	case <-s.Notify():
	case <-time.After(wait):
		t.Fatal("subscriber never notified")
	}
	return s.Take(nil)
}

// TestCoalescedReadingsDelivered: readings past a full queue are merged
// to the latest value per device and metric, and the writer's next take
// delivers them: nothing coalesced is dropped.
func TestCoalescedReadingsDelivered(t *testing.T) {
	h := running(t, Options{QueueLen: 2, SlowAfter: time.Hour})
	s := added(t, h, "tok", "", "*")
	h.PublishBatch([]telemetry.Event{
		reading("d1", 1, "a", 1.0), reading("d1", 2, "a", 2.0), // fill the queue
		reading("d1", 3, "a", 3.0), reading("d1", 5, "b", 5.0), reading("d1", 4, "c", 4.0), // coalesced
		reading("d2", 6, "a", 6.0), // coalesced, another device
	})
	settle(h)
	got := s.Take(nil)
	if len(got) != 4 {
		t.Fatalf("took %d events, want 2 queued + 2 coalesced", len(got))
	}
	if got[0].Ev.TS != 1 || got[1].Ev.TS != 2 {
		t.Errorf("queued events out of order: %d, %d", got[0].Ev.TS, got[1].Ev.TS)
	}
	byDev := map[string]telemetry.Event{}
	for _, le := range got[2:] {
		byDev[le.Ev.Device] = le.Ev
	}
	d1 := byDev["d1"]
	if d1.TS != 5 || d1.Metrics["a"].Num != 3 || d1.Metrics["b"].Num != 5 || d1.Metrics["c"].Num != 4 {
		t.Errorf("coalesced d1 = %+v, want ts 5, a=3 b=5 c=4", d1)
	}
	if byDev["d2"].Metrics["a"].Num != 6 {
		t.Errorf("coalesced d2 = %+v, want a=6", byDev["d2"])
	}
	if c := h.Stats().Coalesced; c != 4 {
		t.Errorf("Coalesced = %d, want 4", c)
	}
	// Taken: the next take starts empty, and queueing resumes.
	if rest := s.Take(nil); len(rest) != 0 {
		t.Errorf("a second take found %d events", len(rest))
	}
	s.CaughtUp()
	h.Publish(reading("d1", 7, "a", 7.0))
	if got := drain(t, s); len(got) != 1 || got[0].Ev.TS != 7 {
		t.Errorf("after catching up: %d events", len(got))
	}
}

// TestSlowConsumerCut: a subscriber whose writer is away (took a batch
// and has not caught up) for longer than SlowAfter while events wait, or
// whose queue of unmergeable events is full, is marked slow once and
// counted; later events are not queued for it.
func TestSlowConsumerCut(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(h *Hub, s *Subscriber)
	}{
		{"writer away past SlowAfter", func(h *Hub, s *Subscriber) {
			h.Publish(reading("d1", 1, "a", 1.0))
			settle(h)
			s.Take(nil) // busy from now, never caught up
			deadline := time.Now().Add(wait)
			for !s.IsKicked() && time.Now().Before(deadline) {
				h.Publish(reading("d1", 2, "a", 2.0))
				settle(h)
			}
		}},
		{"queue of presence events full", func(h *Hub, s *Subscriber) {
			for i := range 2*h.opts.QueueLen + 1 {
				h.Publish(presence("d1", int64(i)))
			}
			settle(h)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			slowAfter := time.Hour
			if tc.name == "writer away past SlowAfter" {
				slowAfter = 20 * time.Millisecond
			}
			h := running(t, Options{QueueLen: 4, SlowAfter: slowAfter})
			s := added(t, h, "tok", "", "*")
			fast := added(t, h, "tok2", "", "d9") // another device: not behind
			tc.run(h, s)
			select {
			case <-s.Kicked():
			case <-time.After(wait):
				t.Fatal("slow subscriber not kicked")
			}
			if n := h.Stats().SlowDisconnects; n != 1 {
				t.Errorf("SlowDisconnects = %d, want 1", n)
			}
			s.MarkSlow() // the writer's path finding it too counts nothing more
			if n := h.Stats().SlowDisconnects; n != 1 {
				t.Errorf("SlowDisconnects after a second MarkSlow = %d, want 1", n)
			}
			s.Take(nil)
			h.Publish(reading("d9", 99, "a", 1.0))
			settle(h)
			if got := s.Take(nil); len(got) != 0 {
				t.Errorf("%d events queued for a slow subscriber", len(got))
			}
			if fast.IsKicked() {
				t.Error("the other subscriber was kicked too")
			}
			if got := fast.Take(nil); len(got) != 1 || got[0].Ev.TS != 99 {
				t.Errorf("the other subscriber got %d events, want the one after the cut", len(got))
			}
		})
	}
}

// TestSlowNotJudgedWhileCaughtUp: a writer that keeps up is never cut,
// however long it has been connected.
func TestSlowNotJudgedWhileCaughtUp(t *testing.T) {
	h := running(t, Options{QueueLen: 4, SlowAfter: time.Nanosecond})
	s := added(t, h, "tok", "", "*")
	for i := range 20 {
		h.Publish(reading("d1", int64(i), "a", 1.0))
		drain(t, s)
		s.CaughtUp()
	}
	if s.IsKicked() {
		t.Fatal("a subscriber that caught up was kicked")
	}
	// Busy (an SSE resume) then events: judged.
	s.Busy()
	time.Sleep(time.Millisecond) // let SlowAfter (1 ns) pass; not synchronisation
	h.Publish(reading("d1", 100, "a", 1.0))
	settle(h)
	if !s.IsKicked() {
		t.Fatal("a busy writer behind SlowAfter was not kicked")
	}
}

// TestRevocation: ending a credential revokes exactly its subscribers: a
// token ends all of them, a session only its own.
func TestRevocation(t *testing.T) {
	h := running(t, Options{})
	a1 := added(t, h, "a", "s1")
	a2 := added(t, h, "a", "s2")
	b := added(t, h, "b", "s1")
	h.CloseCredential(devices.OperatorEnded{TokenID: "a", Session: "s1"})
	if !a1.IsRevoked() || a2.IsRevoked() || b.IsRevoked() {
		t.Fatalf("session end: revoked a1=%v a2=%v b=%v, want only a1", a1.IsRevoked(), a2.IsRevoked(), b.IsRevoked())
	}
	h.CloseCredential(devices.OperatorEnded{TokenID: "a"})
	if !a2.IsRevoked() || b.IsRevoked() {
		t.Fatalf("token end: revoked a2=%v b=%v, want only a2", a2.IsRevoked(), b.IsRevoked())
	}
	select {
	case <-a2.Revoked():
	default:
		t.Fatal("Revoked not closed")
	}
	h.CloseCredential(devices.OperatorEnded{TokenID: "a"}) // again: no panic
}

// TestCloseCredentialBeforeRun returns at once: there is no subscriber
// before the hub runs, and the registry may call it while wiring.
func TestCloseCredentialBeforeRun(t *testing.T) {
	h := New(Options{})
	h.CloseCredential(devices.OperatorEnded{TokenID: "a"})
}

// TestCaps: the per-credential cap and the hub-wide cap, as a table of
// admissions in order; Remove frees a place.
func TestCaps(t *testing.T) {
	h := running(t, Options{MaxSubscribers: 3, MaxPerCredential: 2})
	var subs []*Subscriber
	for i, tc := range []struct {
		tok  string
		want error
	}{
		{"a", nil}, {"a", nil}, {"a", ErrPerCredential}, {"b", nil}, {"c", ErrFull}, {"b", ErrFull},
	} {
		s := h.NewSubscriber(devices.Operator{TokenID: tc.tok})
		if err := h.Add(s); !errors.Is(err, tc.want) {
			t.Fatalf("admission %d (%s): %v, want %v", i, tc.tok, err, tc.want)
		}
		if tc.want == nil {
			subs = append(subs, s)
		}
	}
	st := h.Stats()
	if st.Subscribers != 3 || st.RefusedPerCredential != 1 || st.RefusedFull != 2 {
		t.Errorf("stats %+v", st)
	}
	h.Remove(subs[0])
	h.Remove(subs[0]) // twice: counted once
	if err := h.Add(h.NewSubscriber(devices.Operator{TokenID: "a"})); err != nil {
		t.Errorf("after a removal: %v", err)
	}
	if err := h.Add(h.NewSubscriber(devices.Operator{TokenID: "a"})); !errors.Is(err, ErrFull) {
		t.Errorf("past the cap again: %v, want ErrFull", err)
	}
}

// TestStopped: a stopped hub refuses admissions and its other calls
// return.
func TestStopped(t *testing.T) {
	h := New(Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = h.Run(ctx)
	s := h.NewSubscriber(devices.Operator{TokenID: "a"})
	if err := h.Add(s); !errors.Is(err, ErrStopped) {
		t.Fatalf("Add on a stopped hub: %v", err)
	}
	h.Remove(s)
	h.Subscribe(s, func(f *Filter) { f.All = true })
	h.CloseCredential(devices.OperatorEnded{TokenID: "a"})
	h.Forget("d1")
	if st := h.Stats(); st.Subscribers != 0 || st.FilterDevices != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestFilterDelivery: a subscriber gets the devices it follows, the
// snapshot of each newly followed device first, then only later events.
func TestFilterDelivery(t *testing.T) {
	h := running(t, Options{})
	h.Publish(reading("d1", 1, "a", 1.0))
	h.Publish(reading("d1", 2, "b", 2.0))
	h.Publish(reading("d2", 3, "a", 3.0))
	settle(h)
	s := added(t, h, "tok", "", "d1")
	snap := drain(t, s)
	if len(snap) != 1 || snap[0].Ev.Device != "d1" || snap[0].Ev.TS != 2 || len(snap[0].Ev.Metrics) != 2 || snap[0].Seq != 0 {
		t.Fatalf("snapshot %+v, want d1's merged latest (ts 2, a and b)", snap)
	}
	s.CaughtUp()
	h.Publish(reading("d2", 4, "a", 4.0))
	h.Publish(reading("d1", 5, "a", 5.0))
	got := drain(t, s)
	if len(got) != 1 || got[0].Ev.Device != "d1" || got[0].Ev.TS != 5 {
		t.Fatalf("live %+v, want d1 only", got)
	}
	if st := h.Stats(); st.FilterDevices != 1 {
		t.Errorf("FilterDevices = %d", st.FilterDevices)
	}
	s.Update(func(f *Filter) { f.Unsubscribe([]string{"d1"}) })
	h.Publish(reading("d1", 6, "a", 6.0))
	settle(h)
	if got := s.Take(nil); len(got) != 0 {
		t.Errorf("after unsubscribe: %d events", len(got))
	}
}

// TestFilterTable: the filter's rules as a table.
func TestFilterTable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sub      []string
		unsub    []string
		device   string
		matches  bool
		wouldAdd []string
		holds    int
	}{
		{"nothing", nil, nil, "d1", false, []string{"d1"}, 1},
		{"device", []string{"d1"}, nil, "d1", true, []string{"d1", "d2", "d2", "*"}, 2},
		{"other device", []string{"d1"}, nil, "d2", false, nil, 1},
		{"wildcard", []string{"*"}, nil, "dz", true, []string{"*"}, 0},
		{"unsubscribed", []string{"d1", "d2"}, []string{"d1"}, "d1", false, nil, 1},
		{"wildcard off clears all", []string{"*", "d1"}, []string{"*"}, "d1", false, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f Filter
			f.Subscribe(tc.sub, nil)
			f.Unsubscribe(tc.unsub)
			ev := telemetry.Event{Device: tc.device}
			if got := f.Matches(&ev); got != tc.matches {
				t.Errorf("Matches(%s) = %v", tc.device, got)
			}
			if got := f.WouldHold(tc.wouldAdd); got != tc.holds {
				t.Errorf("WouldHold(%v) = %d, want %d", tc.wouldAdd, got, tc.holds)
			}
		})
	}
}

// TestFrameMetricFilter: a metric filter keeps only its metrics of a
// reading, drops a reading left empty, and leaves other events whole.
func TestFrameMetricFilter(t *testing.T) {
	only := map[string]bool{"a": true}
	le := &Event{Ev: reading("d1", 1, "a", 1.0, "b", 2.0)}
	if got := string(Frame(le, only)); got != `{"type":"reading","device":"d1","ts":1,"metrics":{"a":1}}` {
		t.Errorf("filtered: %s", got)
	}
	if got := string(Frame(le, nil)); got != `{"type":"reading","device":"d1","ts":1,"metrics":{"a":1,"b":2}}` {
		t.Errorf("unfiltered: %s", got)
	}
	if got := Frame(&Event{Ev: reading("d1", 1, "b", 2.0)}, only); got != nil {
		t.Errorf("a reading with none of the metrics: %s", got)
	}
	if got := string(Frame(&Event{Ev: presence("d1", 7)}, only)); got != `{"type":"presence","device":"d1","online":true,"at":7}` {
		t.Errorf("presence: %s", got)
	}
}

// TestReplayWindow: Since returns what followed a sequence number, in
// order, and says whether the window still reaches back that far.
func TestReplayWindow(t *testing.T) {
	h := running(t, Options{ReplayLen: 3})
	if evs, complete := h.Since(0); len(evs) != 0 || !complete {
		t.Fatalf("empty window: %d, %v", len(evs), complete)
	}
	for i := range 5 {
		h.Publish(reading("d1", int64(i+1), "a", 1.0))
	}
	settle(h)
	for _, tc := range []struct {
		after    uint64
		want     []int64
		complete bool
	}{
		{0, []int64{3, 4, 5}, false},
		{1, []int64{3, 4, 5}, false},
		{2, []int64{3, 4, 5}, true},
		{4, []int64{5}, true},
		{5, nil, true},
	} {
		evs, complete := h.Since(tc.after)
		var got []int64
		for _, le := range evs {
			got = append(got, le.Ev.TS)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) || complete != tc.complete {
			t.Errorf("Since(%d) = %v, %v; want %v, %v", tc.after, got, complete, tc.want, tc.complete)
		}
	}
}

// TestLatestPresenceForget: the latest reading merges metrics and ignores
// older timestamps; the presence log is bounded; Forget drops both.
func TestLatestPresenceForget(t *testing.T) {
	h := running(t, Options{})
	h.Publish(reading("d1", 5, "a", 1.0))
	h.Publish(reading("d1", 3, "a", 9.0)) // older: ignored
	h.Publish(reading("d1", 6, "b", 2.0))
	for i := range presenceKept + 5 {
		h.Publish(presence("d1", int64(i)))
	}
	settle(h)
	ev, ok := h.Latest("d1")
	if !ok || ev.TS != 6 || ev.Metrics["a"].Num != 1 || ev.Metrics["b"].Num != 2 {
		t.Errorf("latest %+v", ev)
	}
	ev.Metrics["a"] = telemetry.Number(42) // a copy
	if again, _ := h.Latest("d1"); again.Metrics["a"].Num != 1 {
		t.Error("Latest handed out the hub's own map")
	}
	log := h.PresenceLog("d1")
	if len(log) != presenceKept || log[0].At != 5 || log[len(log)-1].At != presenceKept+4 {
		t.Errorf("presence log: %d entries from %d", len(log), log[0].At)
	}
	h.Forget("d1")
	if _, ok := h.Latest("d1"); ok || len(h.PresenceLog("d1")) != 0 {
		t.Error("Forget left state behind")
	}
}

// TestInputFullDropsAndCounts: a full hub input drops the batch and counts
// its events; Publish never blocks.
func TestInputFullDropsAndCounts(t *testing.T) {
	h := New(Options{InputLen: 2}) // not running: nothing drains
	h.PublishBatch([]telemetry.Event{reading("d1", 1, "a", 1.0)})
	h.Publish(reading("d1", 2, "a", 1.0))
	h.PublishBatch([]telemetry.Event{reading("d1", 3, "a", 1.0), reading("d1", 4, "a", 1.0)})
	h.PublishBatch(nil)
	if n := h.inputDropped.Load(); n != 2 {
		t.Fatalf("InputDropped = %d, want 2", n)
	}
}

// TestGatherOneRound: batches waiting when the hub wakes are fanned out
// in one round: the subscriber is notified once with all of them.
func TestGatherOneRound(t *testing.T) {
	h := New(Options{})
	s := h.NewSubscriber(devices.Operator{TokenID: "a"})
	h.subs[s] = struct{}{}
	s.f.All = true
	for i := range 3 {
		h.Publish(reading("d1", int64(i), "a", 1.0))
	}
	h.round(nil)
	if got := s.Take(nil); len(got) != 3 || got[0].Seq != 1 || got[2].Seq != 3 {
		t.Fatalf("one round took %d events", len(got))
	}
}

// TestDefaults: zero or negative options take the documented defaults;
// positive ones are kept.
func TestDefaults(t *testing.T) {
	want := Options{QueueLen: 1024, SlowAfter: 5 * time.Second, ReplayLen: 10000, MaxSubscribers: 1000, MaxFilterDevices: 10000, MaxPerCredential: 20, InputLen: 65536, InputEvents: 262144}
	for _, in := range []Options{{}, {QueueLen: -1, SlowAfter: -1, ReplayLen: -1, MaxSubscribers: -1, MaxFilterDevices: -1, MaxPerCredential: -1, InputLen: -1, InputEvents: -1}} {
		got := New(in).Options()
		got.Logger = nil
		if got != want {
			t.Errorf("New(%+v).Options() = %+v, want %+v", in, got, want)
		}
	}
	kept := Options{QueueLen: 1, SlowAfter: time.Nanosecond, ReplayLen: 1, MaxSubscribers: 1, MaxFilterDevices: 1, MaxPerCredential: 1, InputLen: 1, InputEvents: 1}
	got := New(kept).Options()
	got.Logger = nil
	if got != kept {
		t.Errorf("New(%+v).Options() = %+v", kept, got)
	}
	if cap(New(kept).in) != 1 {
		t.Error("InputLen does not bound the input")
	}
}

// lines counts the records a logger is handed.
type lines struct {
	slog.Handler
	n *atomic.Int64
}

func (l lines) Handle(context.Context, slog.Record) error { l.n.Add(1); return nil }
func (l lines) Enabled(context.Context, slog.Level) bool  { return true }

// TestInputFullLogsOnce: drops are logged at most once per dropLogEvery.
func TestInputFullLogsOnce(t *testing.T) {
	var n atomic.Int64
	h := New(Options{InputLen: 1, Logger: slog.New(lines{slog.DiscardHandler, &n})})
	for range 4 {
		h.Publish(reading("d1", 1, "a", 1.0))
	}
	if got := n.Load(); got != 1 {
		t.Fatalf("%d log lines for 3 drops, want 1", got)
	}
}

// TestGatherBounded: one round takes at most gatherMax events, the rest
// wait for the next.
func TestGatherBounded(t *testing.T) {
	h := New(Options{InputLen: gatherMax + 10})
	for i := range gatherMax + 5 {
		h.Publish(reading("d1", int64(i), "a", 1.0))
	}
	bs, cut := h.gather(nil)
	got := 0
	for _, b := range bs {
		got += len(b.evs)
	}
	if got != gatherMax || !cut {
		t.Fatalf("one round gathered %d events (cut %v), want %d", got, cut, gatherMax)
	}
	if q := h.queued.Load(); q != 5 {
		t.Fatalf("%d readings counted as queued, want 5", q)
	}
	if len(h.in) != 5 {
		t.Fatalf("%d batches left, want 5", len(h.in))
	}
}

// TestLatestSameTimestampMerges: a reading with the same timestamp as the
// latest adds its metrics to it.
func TestLatestSameTimestampMerges(t *testing.T) {
	h := running(t, Options{})
	h.Publish(reading("d1", 5, "a", 1.0))
	h.Publish(reading("d1", 5, "b", 2.0))
	settle(h)
	if ev, _ := h.Latest("d1"); len(ev.Metrics) != 2 {
		t.Fatalf("latest %+v, want a and b", ev)
	}
}

// TestPerCredentialAfterRemove: removing one of a credential's
// subscribers frees one place, not the credential's whole count.
func TestPerCredentialAfterRemove(t *testing.T) {
	h := running(t, Options{MaxPerCredential: 2})
	a1 := added(t, h, "a", "")
	added(t, h, "a", "")
	h.Remove(a1)
	added(t, h, "a", "")
	if err := h.Add(h.NewSubscriber(devices.Operator{TokenID: "a"})); !errors.Is(err, ErrPerCredential) {
		t.Fatalf("third live client of a: %v, want ErrPerCredential", err)
	}
}

// TestFilterMetrics: a subscribe with metric names filters on them; one
// without (nil or empty) keeps every metric.
func TestFilterMetrics(t *testing.T) {
	var f Filter
	f.Subscribe([]string{"d1"}, []string{"a", "b"})
	if len(f.Metrics) != 2 || !f.Metrics["a"] {
		t.Errorf("metrics %v", f.Metrics)
	}
	f.Subscribe([]string{"d1"}, []string{})
	if f.Metrics != nil {
		t.Errorf("an empty metric list filters: %v", f.Metrics)
	}
}

// TestEmptyTakeIsNotBusy: a writer whose take found nothing is not
// behind, so it is not judged slow.
func TestEmptyTakeIsNotBusy(t *testing.T) {
	h := running(t, Options{SlowAfter: time.Nanosecond})
	s := added(t, h, "tok", "", "*")
	s.Take(nil)
	time.Sleep(time.Millisecond) // let SlowAfter (1 ns) pass; not synchronisation
	h.Publish(reading("d1", 1, "a", 1.0))
	settle(h)
	if s.IsKicked() {
		t.Fatal("a writer that took nothing was judged slow")
	}
}

// TestRemoveForgetsEmptyCredential: a credential whose last client left
// holds no entry in the per-credential count (tokens come and go; the
// map does not grow with every token ever seen).
func TestRemoveForgetsEmptyCredential(t *testing.T) {
	h := running(t, Options{})
	a1, a2 := added(t, h, "a", "s1"), added(t, h, "a", "s2")
	entries := func() (n int) {
		h.do(func() { n = len(h.perPrincipal) })
		return n
	}
	h.Remove(a1)
	if n := entries(); n != 1 {
		t.Fatalf("%d credentials counted with one client left, want 1", n)
	}
	h.Remove(a2)
	if n := entries(); n != 0 {
		t.Errorf("%d credentials counted after the last client left, want 0", n)
	}
}
