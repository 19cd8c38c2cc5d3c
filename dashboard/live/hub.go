package live

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Options configures the live fan-out. Zero values take the defaults.
type Options struct {
	// QueueLen bounds each subscriber's queue of events; past it, readings
	// are coalesced to the latest value per device and metric. Default 1024.
	QueueLen int
	// SlowAfter is how long a subscriber may stay behind (events waiting
	// while its writer is not through what it took; readings meanwhile
	// coalesced past QueueLen) before it is disconnected (close 1013,
	// logged, counted). Default 5 s.
	SlowAfter time.Duration
	// ReplayLen bounds the in-memory window SSE clients resume from with
	// Last-Event-ID. Default 10,000 events.
	ReplayLen int
	// MaxSubscribers caps concurrent live clients; default 1,000.
	MaxSubscribers int
	// MaxFilterDevices caps the devices one live socket follows (besides
	// "*"); a subscribe past it is refused. Default 10,000.
	MaxFilterDevices int
	// MaxPerCredential caps the live clients of one operator credential
	// (token), below MaxSubscribers so no principal can starve another;
	// default 20.
	MaxPerCredential int
	// InputLen bounds the batches of readings waiting for the hub
	// goroutine. Past it a batch is dropped and counted
	// (Stats.InputDropped), never waited for: a publisher is a device's
	// reader before its ack. Default 65,536 (about 13 s of a 5,000
	// messages/s fleet).
	InputLen int
	// InputEvents bounds the readings waiting in those batches (a batch
	// is one message, up to 100 readings): a batch that would take the
	// count past it is dropped and counted the same way. Default 262,144.
	// Presence, command status and Forget never go through this input
	// and are never dropped (see publishState).
	InputEvents int
	Logger      *slog.Logger
}

// Why Hub.Add refuses a live client.
var (
	// ErrFull is the hub-wide cap (Options.MaxSubscribers).
	ErrFull = errors.New("too many live connections")
	// ErrPerCredential is the per-credential cap (Options.MaxPerCredential).
	ErrPerCredential = errors.New("too many live connections for this credential")
	// ErrStopped is a hub whose Run has returned.
	ErrStopped = errors.New("live hub stopped")
)

// presenceKept bounds the presence changes remembered per device.
const presenceKept = 50

// Hub is the live fan-out (see the package doc). Publish and
// PublishBatch never block; Forget and the methods that change
// subscribers are run by the hub goroutine between rounds, so a subscription's
// snapshot and the live events after it are in order.
type Hub struct {
	opts   Options
	log    *slog.Logger
	in     chan batch    // readings; bounded by InputLen batches and InputEvents events; full: drop and count
	queued atomic.Int64  // readings in in: added by the publisher before its send, taken off by the hub
	stamp  atomic.Uint64 // publish order across in and the state input (see round)
	wake   chan struct{} // cap 1: full means the hub is already due to take the state input

	ops     chan func()   // run on the hub goroutine; callers wait for done
	started chan struct{} // closed when Run starts
	done    chan struct{} // closed when Run returns
	seq     uint64        // hub goroutine only

	// smu guards state, the presence, command status and Forget events
	// waiting for the hub goroutine, in publish order (stamps ascending),
	// and stateCoalesceAt. A leaf: nothing is taken while holding it, no
	// I/O under it. Bounded: past stateCoalesceAt the list is coalesced
	// to the latest event per key (see coalesceState).
	smu             sync.Mutex
	state           []stateEvent
	stateCoalesceAt int

	// Owned by the hub goroutine: no lock. gathered, batches and fanned are its
	// scratch, reused per round (offer copies what it keeps).
	gathered     []telemetry.Event
	batches      []batch
	fanned       []*Event
	subs         map[*Subscriber]struct{}
	perPrincipal map[string]int

	// mu guards latest, presence and replay: written only by the hub
	// goroutine (once per batch), read by REST handlers and SSE resumes.
	// A leaf: nothing is taken while holding it, no I/O under it.
	mu       sync.RWMutex
	latest   map[string]telemetry.Event   // last reading per device, metrics merged
	presence map[string][]telemetry.Event // recent presence changes per device, oldest first
	replay   []*Event                     // ring
	replayAt int

	subscribers                                    atomic.Int64 // published by the hub goroutine
	sent, coalesced, slowDisconnects, inputDropped atomic.Int64
	refusedFull, refusedPerCredential              atomic.Int64
	dropLogNext                                    atomic.Int64
}

// New returns a live fan-out; Run must be running for subscribers to
// be admitted and events delivered.
func New(opts Options) *Hub {
	if opts.QueueLen <= 0 {
		opts.QueueLen = 1024
	}
	if opts.SlowAfter <= 0 {
		opts.SlowAfter = 5 * time.Second
	}
	if opts.ReplayLen <= 0 {
		opts.ReplayLen = 10000
	}
	if opts.MaxSubscribers <= 0 {
		opts.MaxSubscribers = 1000
	}
	if opts.MaxFilterDevices <= 0 {
		opts.MaxFilterDevices = 10000
	}
	if opts.MaxPerCredential <= 0 {
		opts.MaxPerCredential = 20
	}
	if opts.InputLen <= 0 {
		opts.InputLen = 65536
	}
	if opts.InputEvents <= 0 {
		opts.InputEvents = 262144
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Hub{opts: opts, log: opts.Logger, in: make(chan batch, opts.InputLen), wake: make(chan struct{}, 1), stateCoalesceAt: stateKept, ops: make(chan func()), started: make(chan struct{}), done: make(chan struct{}),
		subs: map[*Subscriber]struct{}{}, perPrincipal: map[string]int{},
		latest: map[string]telemetry.Event{}, presence: map[string][]telemetry.Event{}, replay: make([]*Event, 0, opts.ReplayLen)}
}

// Options returns the hub's options with defaults applied.
func (h *Hub) Options() Options { return h.opts }

// Run is the hub goroutine: it applies published batches and subscriber
// changes in arrival order until ctx ends. Batches still queued then are
// not delivered (the dashboards are closing).
func (h *Hub) Run(ctx context.Context) error {
	close(h.started)
	defer close(h.done)
	for {
		select {
		case <-ctx.Done():
			return nil
		case b := <-h.in:
			h.round(&b)
		case <-h.wake:
			h.round(nil)
		case op := <-h.ops:
			op()
		}
	}
}

// do runs op on the hub goroutine and waits for it; false if the hub
// has stopped.
func (h *Hub) do(op func()) bool {
	fin := make(chan struct{})
	select {
	case h.ops <- func() { op(); close(fin) }:
	case <-h.done:
		return false
	}
	<-fin
	return true
}

// fanout runs on the hub goroutine: it records one batch (latest values,
// presence, replay window) under one lock, then offers it to each
// subscriber, one lock of that subscriber per batch.
func (h *Hub) fanout(evs []telemetry.Event) {
	les := slices.Grow(h.fanned[:0], len(evs))[:len(evs)]
	defer func() { clear(les); h.fanned = les[:0] }()
	h.mu.Lock()
	for i, ev := range evs {
		h.seq++
		le := &Event{Seq: h.seq, Ev: ev}
		les[i] = le
		switch ev.Type {
		case telemetry.EventReading:
			// The latest map is the hub's own: merged in place, copied
			// when handed out (Snapshot, Latest).
			cur, ok := h.latest[ev.Device]
			switch {
			case !ok:
				h.latest[ev.Device] = telemetry.Event{Type: ev.Type, Device: ev.Device, TS: ev.TS, Metrics: maps.Clone(ev.Metrics)}
			case ev.TS >= cur.TS:
				maps.Copy(cur.Metrics, ev.Metrics)
				cur.TS = ev.TS
				h.latest[ev.Device] = cur
			}
		case telemetry.EventPresence:
			log := append(h.presence[ev.Device], ev)
			if len(log) > presenceKept {
				log = log[len(log)-presenceKept:]
			}
			h.presence[ev.Device] = log
		}
		if len(h.replay) < h.opts.ReplayLen {
			h.replay = append(h.replay, le)
		} else {
			h.replay[h.replayAt] = le
			h.replayAt = (h.replayAt + 1) % h.opts.ReplayLen
		}
	}
	h.mu.Unlock()
	now := time.Now()
	for s := range h.subs {
		s.offer(les, now)
	}
}

// Stats are the fan-out's counters for metrics.
type Stats struct {
	Subscribers, Sent, Coalesced, SlowDisconnects int64
	// FilterDevices is the devices followed, summed over live clients.
	FilterDevices int64
	// RefusedFull and RefusedPerCredential count live clients refused at
	// the global cap and at the per-credential cap.
	RefusedFull, RefusedPerCredential int64
	// InputDropped counts readings dropped because the hub's input was
	// full (Options.InputLen, Options.InputEvents).
	InputDropped int64
}

// Stats returns the fan-out's counters.
func (h *Hub) Stats() Stats {
	var followed int64
	if !h.do(func() {
		for s := range h.subs {
			s.mu.Lock()
			followed += int64(len(s.f.Devices))
			s.mu.Unlock()
		}
	}) {
		followed = 0
	}
	return Stats{Subscribers: h.subscribers.Load(), FilterDevices: followed, Sent: h.sent.Load(), Coalesced: h.coalesced.Load(), SlowDisconnects: h.slowDisconnects.Load(),
		RefusedFull: h.refusedFull.Load(), RefusedPerCredential: h.refusedPerCredential.Load(), InputDropped: h.inputDropped.Load()}
}

// CountSent counts n events a connection's writer wrote.
func (h *Hub) CountSent(n int64) { h.sent.Add(n) }

// Forget drops a deleted device's latest values and presence log. It is
// queued in publish order with the events (publishState), so readings
// and presence already published for the device are applied first and
// do not bring it back; events published after it are applied after it.
// Once Run has started it waits until the hub has applied it (or
// stopped); before, it returns at once and Run applies it in order.
func (h *Hub) Forget(device string) {
	select {
	case <-h.started:
	default:
		h.publishState(stateEvent{ev: telemetry.Event{Device: device}, forget: true})
		return
	}
	applied := make(chan struct{})
	h.publishState(stateEvent{ev: telemetry.Event{Device: device}, forget: true, applied: applied})
	select {
	case <-applied:
	case <-h.done:
	}
}

// forget applies a Forget on the hub goroutine.
func (h *Hub) forget(se *stateEvent) {
	h.mu.Lock()
	delete(h.latest, se.ev.Device)
	delete(h.presence, se.ev.Device)
	h.mu.Unlock()
	if se.applied != nil {
		close(se.applied)
	}
}

// PresenceLog returns a device's recent presence changes, oldest first.
func (h *Hub) PresenceLog(device string) []telemetry.Event {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return append([]telemetry.Event(nil), h.presence[device]...)
}

// Latest returns a device's latest reading, metrics merged.
func (h *Hub) Latest(device string) (telemetry.Event, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	ev, ok := h.latest[device]
	ev.Metrics = maps.Clone(ev.Metrics)
	return ev, ok
}

// Add admits s as a live client of its owner's credential, or says which
// cap refuses it (ErrFull, ErrPerCredential) or that the hub stopped.
func (h *Hub) Add(s *Subscriber) error {
	var err error
	if !h.do(func() {
		switch {
		case len(h.subs) >= h.opts.MaxSubscribers:
			h.refusedFull.Add(1)
			err = ErrFull
		case h.perPrincipal[s.owner.TokenID] >= h.opts.MaxPerCredential:
			h.refusedPerCredential.Add(1)
			err = ErrPerCredential
		default:
			h.perPrincipal[s.owner.TokenID]++
			h.subs[s] = struct{}{}
			h.subscribers.Store(int64(len(h.subs)))
		}
	}) {
		return ErrStopped
	}
	return err
}

// Remove ends s's membership; a no-op for one not added or after Run.
func (h *Hub) Remove(s *Subscriber) {
	h.do(func() {
		if _, ok := h.subs[s]; !ok {
			return
		}
		delete(h.subs, s)
		if h.perPrincipal[s.owner.TokenID]--; h.perPrincipal[s.owner.TokenID] <= 0 {
			delete(h.perPrincipal, s.owner.TokenID)
		}
		h.subscribers.Store(int64(len(h.subs)))
	})
}

// CloseCredential ends the live connections opened with an operator
// credential that stopped working (devices.Options.OnOperatorEnded): every
// connection of the token when e.Session is empty, else those of that
// dashboard session. Their writers see Subscriber.Revoked. Before Run
// starts there is no subscriber to close, and it returns at once (the
// registry may call it while the hub is still being wired).
func (h *Hub) CloseCredential(e devices.OperatorEnded) {
	select {
	case <-h.started:
	default:
		return
	}
	h.do(func() {
		for s := range h.subs {
			if s.owner.TokenID == e.TokenID && (e.Session == "" || s.owner.Session == e.Session) {
				s.revoke() // each connection logs its own close
			}
		}
	})
}

// Subscribe changes s's filter with change and queues the latest value
// of each device the new filter selects, on the hub goroutine, so no live
// event can slip in before the snapshot and be followed by an older
// value. change may refuse by leaving the filter as it is.
func (h *Hub) Subscribe(s *Subscriber, change func(f *Filter)) {
	if !h.do(func() {
		f := s.Update(change)
		snap := h.Snapshot(&f)
		les := make([]*Event, len(snap))
		for i, ev := range snap {
			les[i] = &Event{Ev: ev}
		}
		s.offer(les, time.Now())
	}) {
		s.Update(change) // a stopped hub delivers nothing; the filter still says what was asked
	}
}

// Snapshot returns the latest reading of each device f selects.
func (h *Hub) Snapshot(f *Filter) []telemetry.Event {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var out []telemetry.Event
	if f.All {
		for _, ev := range h.latest {
			ev.Metrics = maps.Clone(ev.Metrics)
			out = append(out, ev)
		}
		return out
	}
	for d := range f.Devices {
		if ev, ok := h.latest[d]; ok {
			ev.Metrics = maps.Clone(ev.Metrics)
			out = append(out, ev)
		}
	}
	return out
}

// Since returns the replay-window events after seq, oldest first, and
// whether the window still reaches back to seq.
func (h *Hub) Since(seq uint64) ([]*Event, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	n := len(h.replay)
	ordered := make([]*Event, 0, n)
	ordered = append(ordered, h.replay[h.replayAt:]...)
	ordered = append(ordered, h.replay[:h.replayAt]...)
	complete := n == 0 || ordered[0].Seq <= seq+1
	var out []*Event
	for _, e := range ordered {
		if e.Seq > seq {
			out = append(out, e)
		}
	}
	return out, complete
}
