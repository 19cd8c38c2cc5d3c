package dashboard

import (
	"errors"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// liveEvent is one published event with a hub-wide sequence number. It is
// shared by every subscriber it goes to, and encoded at most once.
type liveEvent struct {
	seq  uint64
	ev   telemetry.Event
	once sync.Once
	data []byte
}

func (e *liveEvent) encoded() []byte {
	e.once.Do(func() { e.data = encodeEvent(e.ev) })
	return e.data
}

// encodeEvent is telemetry's one live-event encoder.
func encodeEvent(ev telemetry.Event) []byte { return telemetry.EncodeEvent(ev) }

// LiveOptions configures the live fan-out. Zero values take the defaults.
type LiveOptions struct {
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
	Logger           *slog.Logger
}

// Live is the live fan-out: it receives every accepted reading, presence
// change and command status (bridge.Fanout) and republishes them to the
// dashboards subscribed to that device. Publish never blocks: each
// subscriber has a bounded queue and a coalescing overflow, so one slow or
// stalled dashboard delays no one else and never holds up ingest.
//
// Lock order: Live.mu, then subscriber.mu; latestMu and replayMu are leaves.
type Live struct {
	opts LiveOptions
	log  *slog.Logger
	seq  atomic.Uint64

	mu           sync.RWMutex
	subs         map[*subscriber]struct{}
	perPrincipal map[string]int // live clients per credential; bounded by subs

	latestMu sync.Mutex
	latest   map[string]telemetry.Event   // last reading per device, metrics merged
	presence map[string][]telemetry.Event // recent presence changes per device, oldest first

	replayMu sync.Mutex
	replay   []*liveEvent // ring
	replayAt int

	sent, coalesced, slowDisconnects  atomic.Int64
	refusedFull, refusedPerCredential atomic.Int64
}

// NewLive returns a live fan-out.
func NewLive(opts LiveOptions) *Live {
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
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Live{opts: opts, log: opts.Logger, subs: map[*subscriber]struct{}{}, perPrincipal: map[string]int{}, latest: map[string]telemetry.Event{}, presence: map[string][]telemetry.Event{}, replay: make([]*liveEvent, 0, opts.ReplayLen)}
}

// LiveStats are the fan-out's counters for metrics.
type LiveStats struct {
	Subscribers, Sent, Coalesced, SlowDisconnects int64
	// FilterDevices is the devices followed, summed over live clients.
	FilterDevices int64
	// RefusedFull and RefusedPerCredential count live clients refused at
	// the global cap and at the per-credential cap.
	RefusedFull, RefusedPerCredential int64
}

// Stats returns the fan-out's counters.
func (l *Live) Stats() LiveStats {
	l.mu.RLock()
	n := len(l.subs)
	var followed int64
	for s := range l.subs {
		s.mu.Lock()
		followed += int64(len(s.f.devices))
		s.mu.Unlock()
	}
	l.mu.RUnlock()
	return LiveStats{Subscribers: int64(n), FilterDevices: followed, Sent: l.sent.Load(), Coalesced: l.coalesced.Load(), SlowDisconnects: l.slowDisconnects.Load(),
		RefusedFull: l.refusedFull.Load(), RefusedPerCredential: l.refusedPerCredential.Load()}
}

// Publish implements bridge.Fanout. It never blocks on a subscriber.
func (l *Live) Publish(ev telemetry.Event) {
	le := &liveEvent{seq: l.seq.Add(1), ev: ev}
	if ev.Type == telemetry.EventReading {
		// The latest map is Live's own: merged in place, copied when
		// handed out (snapshot, latestOf).
		l.latestMu.Lock()
		cur, ok := l.latest[ev.Device]
		switch {
		case !ok:
			l.latest[ev.Device] = telemetry.Event{Type: ev.Type, Device: ev.Device, TS: ev.TS, Metrics: maps.Clone(ev.Metrics)}
		case ev.TS >= cur.TS:
			maps.Copy(cur.Metrics, ev.Metrics)
			cur.TS = ev.TS
			l.latest[ev.Device] = cur
		}
		l.latestMu.Unlock()
	}
	if ev.Type == telemetry.EventPresence {
		l.latestMu.Lock()
		log := append(l.presence[ev.Device], ev)
		if len(log) > presenceKept {
			log = log[len(log)-presenceKept:]
		}
		l.presence[ev.Device] = log
		l.latestMu.Unlock()
	}
	l.replayMu.Lock()
	if len(l.replay) < l.opts.ReplayLen {
		l.replay = append(l.replay, le)
	} else {
		l.replay[l.replayAt] = le
		l.replayAt = (l.replayAt + 1) % l.opts.ReplayLen
	}
	l.replayMu.Unlock()
	now := time.Now()
	l.mu.RLock()
	for s := range l.subs {
		s.offer(le, now)
	}
	l.mu.RUnlock()
}

// presenceKept bounds the presence changes remembered per device.
const presenceKept = 50

// Forget drops a deleted device's latest values and presence log.
func (l *Live) Forget(device string) {
	l.latestMu.Lock()
	delete(l.latest, device)
	delete(l.presence, device)
	l.latestMu.Unlock()
}

// presenceLog returns a device's recent presence changes, oldest first.
func (l *Live) presenceLog(device string) []telemetry.Event {
	l.latestMu.Lock()
	defer l.latestMu.Unlock()
	return append([]telemetry.Event(nil), l.presence[device]...)
}

// latestOf returns a device's latest reading, metrics merged.
func (l *Live) latestOf(device string) (telemetry.Event, bool) {
	l.latestMu.Lock()
	defer l.latestMu.Unlock()
	ev, ok := l.latest[device]
	ev.Metrics = maps.Clone(ev.Metrics)
	return ev, ok
}

// Why add refuses a live client.
var (
	errLiveFull          = errors.New("too many live connections")
	errLivePerCredential = errors.New("too many live connections for this credential")
)

// add admits s as a live client of principal (the credential that opened
// it), or says which cap refuses it.
func (l *Live) add(s *subscriber, principal string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.subs) >= l.opts.MaxSubscribers {
		l.refusedFull.Add(1)
		return errLiveFull
	}
	if l.perPrincipal[principal] >= l.opts.MaxPerCredential {
		l.refusedPerCredential.Add(1)
		return errLivePerCredential
	}
	s.principal = principal
	l.perPrincipal[principal]++
	l.subs[s] = struct{}{}
	return nil
}

func (l *Live) remove(s *subscriber) {
	l.mu.Lock()
	if _, ok := l.subs[s]; ok {
		delete(l.subs, s)
		if l.perPrincipal[s.principal]--; l.perPrincipal[s.principal] <= 0 {
			delete(l.perPrincipal, s.principal)
		}
	}
	l.mu.Unlock()
}

// CloseCredential ends the live connections opened with an operator
// credential that stopped working (devices.Options.OnOperatorEnded): every
// connection of the token when e.Session is empty, else those of that
// dashboard session. WebSockets get close 4003, SSE streams end.
func (l *Live) CloseCredential(e devices.OperatorEnded) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for s := range l.subs {
		if s.owner.TokenID == e.TokenID && (e.Session == "" || s.owner.Session == e.Session) {
			s.revoke() // each connection logs its own close
		}
	}
}

// subscribe changes a subscriber's filter and queues the latest value of
// each newly selected device, with Publish held off so no live event can
// slip in before the snapshot and be followed by an older value.
func (l *Live) subscribe(s *subscriber, change func(f *filter)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := s.update(change)
	now := time.Now()
	for _, ev := range l.snapshot(&f) {
		s.offer(&liveEvent{ev: ev}, now)
	}
}

// snapshot returns the latest reading of each device the filter selects.
func (l *Live) snapshot(f *filter) []telemetry.Event {
	l.latestMu.Lock()
	defer l.latestMu.Unlock()
	var out []telemetry.Event
	if f.all {
		for _, ev := range l.latest {
			ev.Metrics = maps.Clone(ev.Metrics)
			out = append(out, ev)
		}
		return out
	}
	for d := range f.devices {
		if ev, ok := l.latest[d]; ok {
			ev.Metrics = maps.Clone(ev.Metrics)
			out = append(out, ev)
		}
	}
	return out
}

// since returns the replay-window events after seq, oldest first, and
// whether the window still reaches back to seq.
func (l *Live) since(seq uint64) ([]*liveEvent, bool) {
	l.replayMu.Lock()
	defer l.replayMu.Unlock()
	n := len(l.replay)
	ordered := make([]*liveEvent, 0, n)
	ordered = append(ordered, l.replay[l.replayAt:]...)
	ordered = append(ordered, l.replay[:l.replayAt]...)
	complete := n == 0 || ordered[0].seq <= seq+1
	var out []*liveEvent
	for _, e := range ordered {
		if e.seq > seq {
			out = append(out, e)
		}
	}
	return out, complete
}

// filter selects the events a subscriber receives.
type filter struct {
	all     bool
	devices map[string]bool
	metrics map[string]bool // nil: every metric
}

func (f *filter) matches(ev *telemetry.Event) bool {
	return f.all || f.devices[ev.Device]
}

// subscriber is one dashboard connection's queue. offer runs on publishers'
// goroutines; the connection's writer takes from it.
type subscriber struct {
	live      *Live
	principal string // set once by Live.add
	// owner is the credential that opened the connection; set before
	// the subscriber is added, never changed.
	owner devices.Operator

	mu         sync.Mutex
	f          filter
	queue      []*liveEvent
	pending    map[string]*telemetry.Event // coalesced readings by device
	pendingSeq uint64
	busySince  time.Time // the writer took what it is writing; zero once it caught up
	slow       bool
	notify     chan struct{} // cap 1
	kick       chan struct{} // closed once when the subscriber is too slow
	kickOnce   sync.Once
	revoked    chan struct{} // closed once when owner stopped working
	revokeOnce sync.Once
}

func newSubscriber(l *Live) *subscriber {
	return &subscriber{live: l, notify: make(chan struct{}, 1), kick: make(chan struct{}), revoked: make(chan struct{})}
}

// revoke tells the connection's writer that its credential ended.
func (s *subscriber) revoke() {
	s.revokeOnce.Do(func() { close(s.revoked) })
}

// isRevoked reports whether revoke was called: the writers check it
// before each batch, so nothing is sent after a revocation.
func (s *subscriber) isRevoked() bool {
	select {
	case <-s.revoked:
		return true
	default:
		return false
	}
}

// offer queues le for the subscriber, coalescing readings once the queue
// is full. It never blocks.
func (s *subscriber) offer(le *liveEvent, now time.Time) {
	s.mu.Lock()
	if s.slow || !s.f.matches(&le.ev) {
		s.mu.Unlock()
		return
	}
	switch {
	case len(s.queue) < s.live.opts.QueueLen && len(s.pending) == 0:
		s.queue = append(s.queue, le)
	case le.ev.Type == telemetry.EventReading:
		// Behind: keep only the latest value per device and metric.
		if s.pending == nil {
			s.pending = map[string]*telemetry.Event{}
		}
		p, ok := s.pending[le.ev.Device]
		if !ok {
			cp := le.ev
			cp.Metrics = maps.Clone(le.ev.Metrics)
			s.pending[le.ev.Device] = &cp
		} else {
			maps.Copy(p.Metrics, le.ev.Metrics)
			if le.ev.TS > p.TS {
				p.TS = le.ev.TS
			}
		}
		s.pendingSeq = le.seq
		s.live.coalesced.Add(1)
	case len(s.queue) < 2*s.live.opts.QueueLen:
		// Presence and command events are rare and not mergeable: they get
		// extra room before the subscriber counts as stalled.
		s.queue = append(s.queue, le)
	default:
		s.slow = true
	}
	// Slow: events wait for a writer that has been away longer than
	// SlowAfter, busy with what it took. It may be blocked in a write to
	// a client that stopped reading, so this is judged here, on the
	// publisher's side, while its in-flight frame can still finish and be
	// followed by a clean close 1013 (the write deadline is longer).
	if !s.slow && !s.busySince.IsZero() && now.Sub(s.busySince) > s.live.opts.SlowAfter {
		s.slow = true
	}
	slow := s.slow
	s.mu.Unlock()
	if slow {
		s.markSlow()
		return
	}
	select {
	case s.notify <- struct{}{}:
	default: // the writer is already due to look
	}
}

// markSlow marks the subscriber as a slow consumer, whichever path found
// it (the publisher's lag check or the writer's deadline): the first call
// closes kick and counts it, later ones do nothing.
func (s *subscriber) markSlow() {
	s.kickOnce.Do(func() {
		s.mu.Lock()
		s.slow = true
		s.mu.Unlock()
		close(s.kick)
		s.live.slowDisconnects.Add(1)
	})
}

// isKicked reports whether the subscriber was marked slow.
func (s *subscriber) isKicked() bool {
	select {
	case <-s.kick:
		return true
	default:
		return false
	}
}

// take removes everything queued: events in order, then the coalesced
// readings. The writer is busy with them until it calls caughtUp.
func (s *subscriber) take(buf []*liveEvent) []*liveEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	buf = append(buf[:0], s.queue...)
	clear(s.queue)
	s.queue = s.queue[:0]
	for _, p := range s.pending {
		buf = append(buf, &liveEvent{seq: s.pendingSeq, ev: *p})
	}
	s.pending = nil
	if len(buf) > 0 && s.busySince.IsZero() {
		s.busySince = time.Now()
	}
	return buf
}

// busy tells the subscriber its writer is busy with frames it took
// besides the queue (an SSE resume or snapshot), so the lag check applies.
func (s *subscriber) busy() {
	s.mu.Lock()
	if s.busySince.IsZero() {
		s.busySince = time.Now()
	}
	s.mu.Unlock()
}

// caughtUp tells the subscriber its writer wrote the batch it took: it
// is no longer behind.
func (s *subscriber) caughtUp() {
	s.mu.Lock()
	s.busySince = time.Time{}
	s.mu.Unlock()
}

// update changes what the subscriber receives and returns a copy of the
// new filter.
func (s *subscriber) update(fn func(f *filter)) filter {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(&s.f)
	return filter{all: s.f.all, devices: maps.Clone(s.f.devices), metrics: maps.Clone(s.f.metrics)}
}

// frame returns the bytes to send for le under the subscriber's metric
// filter.
func (s *subscriber) frame(le *liveEvent, metrics map[string]bool) []byte {
	if metrics == nil || le.ev.Type != telemetry.EventReading {
		return le.encoded()
	}
	ev := le.ev
	ev.Metrics = make(telemetry.Metrics, len(metrics))
	for k, v := range le.ev.Metrics {
		if metrics[k] {
			ev.Metrics[k] = v
		}
	}
	if len(ev.Metrics) == 0 {
		return nil
	}
	return encodeEvent(ev)
}
