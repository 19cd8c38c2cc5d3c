package live

import (
	"maps"
	"sync"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Subscriber is one dashboard connection's queue. The hub goroutine
// offers to it; the connection's writer takes from it. Its lock, mu, is
// taken by those two only (once per batch on the hub's side, once per
// take on the writer's), never held across I/O, and nothing is taken
// while holding it.
type Subscriber struct {
	hub *Hub
	// owner is the credential that opened the connection; never changed.
	owner devices.Operator

	mu         sync.Mutex
	f          Filter
	queue      []*Event
	pending    map[string]*telemetry.Event // coalesced readings by device
	pendingSeq uint64
	busySince  time.Time // the writer took what it is writing; zero once it caught up
	slow       bool

	notify     chan struct{} // cap 1: full means the writer is already due to look
	kick       chan struct{} // closed once when the subscriber is too slow
	kickOnce   sync.Once
	revoked    chan struct{} // closed once when owner stopped working
	revokeOnce sync.Once
}

// NewSubscriber returns a subscriber owned by op's credential: ending the
// credential (Hub.CloseCredential) revokes it. Hub.Add admits it.
func (h *Hub) NewSubscriber(op devices.Operator) *Subscriber {
	return &Subscriber{hub: h, owner: op, notify: make(chan struct{}, 1), kick: make(chan struct{}), revoked: make(chan struct{})}
}

// Owner returns the credential that opened the subscriber.
func (s *Subscriber) Owner() devices.Operator { return s.owner }

// Notify receives when events wait for the writer to Take them.
func (s *Subscriber) Notify() <-chan struct{} { return s.notify }

// Kicked is closed when the subscriber is a slow consumer (MarkSlow).
func (s *Subscriber) Kicked() <-chan struct{} { return s.kick }

// Revoked is closed when the credential that opened it ended.
func (s *Subscriber) Revoked() <-chan struct{} { return s.revoked }

func (s *Subscriber) revoke() {
	s.revokeOnce.Do(func() { close(s.revoked) })
}

// IsRevoked reports whether the credential ended: the writers check it
// before each frame, so nothing is sent after a revocation.
func (s *Subscriber) IsRevoked() bool {
	select {
	case <-s.revoked:
		return true
	default:
		return false
	}
}

// IsKicked reports whether the subscriber was marked slow.
func (s *Subscriber) IsKicked() bool {
	select {
	case <-s.kick:
		return true
	default:
		return false
	}
}

// offer queues the events s's filter selects, coalescing readings once
// the queue is full, and wakes the writer once. It never blocks. Called
// by the hub goroutine only.
func (s *Subscriber) offer(les []*Event, now time.Time) {
	opts := &s.hub.opts
	s.mu.Lock()
	if s.slow {
		s.mu.Unlock()
		return
	}
	queued := false
	for _, le := range les {
		if !s.f.Matches(&le.Ev) {
			continue
		}
		queued = true
		switch {
		case len(s.queue) < opts.QueueLen && len(s.pending) == 0:
			s.queue = append(s.queue, le)
		case le.Ev.Type == telemetry.EventReading:
			// Behind: keep only the latest value per device and metric.
			if s.pending == nil {
				s.pending = map[string]*telemetry.Event{}
			}
			p, ok := s.pending[le.Ev.Device]
			if !ok {
				cp := le.Ev
				cp.Metrics = maps.Clone(le.Ev.Metrics)
				s.pending[le.Ev.Device] = &cp
			} else {
				maps.Copy(p.Metrics, le.Ev.Metrics)
				if le.Ev.TS > p.TS {
					p.TS = le.Ev.TS
				}
			}
			s.pendingSeq = le.Seq
			s.hub.coalesced.Add(1)
		case len(s.queue) < 2*opts.QueueLen:
			// Presence and command events are rare and not mergeable:
			// they get extra room before the subscriber counts as stalled.
			s.queue = append(s.queue, le)
		default:
			s.slow = true
		}
	}
	// Slow: events wait for a writer that has been away longer than
	// SlowAfter, busy with what it took. It may be blocked in a write to
	// a client that stopped reading, so this is judged here, on the hub's
	// side, while its in-flight frame can still finish and be followed by
	// a clean close 1013 (the write deadline is longer).
	if queued && !s.slow && !s.busySince.IsZero() && now.Sub(s.busySince) > opts.SlowAfter {
		s.slow = true
	}
	slow := s.slow
	s.mu.Unlock()
	if slow {
		s.MarkSlow()
		return
	}
	if !queued {
		return
	}
	select {
	case s.notify <- struct{}{}:
	default: // the writer is already due to look
	}
}

// MarkSlow marks the subscriber as a slow consumer, whichever path found
// it (the hub's lag check or the writer's deadline): the first call
// closes Kicked and counts it, later ones do nothing.
func (s *Subscriber) MarkSlow() {
	s.kickOnce.Do(func() {
		s.mu.Lock()
		s.slow = true
		s.mu.Unlock()
		close(s.kick)
		s.hub.slowDisconnects.Add(1)
	})
}

// Take removes everything queued into buf: events in order, then the
// coalesced readings. The writer is busy with them until it calls
// CaughtUp.
func (s *Subscriber) Take(buf []*Event) []*Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	buf = append(buf[:0], s.queue...)
	clear(s.queue)
	s.queue = s.queue[:0]
	for _, p := range s.pending {
		buf = append(buf, &Event{Seq: s.pendingSeq, Ev: *p})
	}
	s.pending = nil
	if len(buf) > 0 && s.busySince.IsZero() {
		s.busySince = time.Now()
	}
	return buf
}

// Busy tells the subscriber its writer is busy with frames it took
// besides the queue (an SSE resume or snapshot), so the lag check applies.
func (s *Subscriber) Busy() {
	s.mu.Lock()
	if s.busySince.IsZero() {
		s.busySince = time.Now()
	}
	s.mu.Unlock()
}

// CaughtUp tells the subscriber its writer wrote the batch it took: it
// is no longer behind.
func (s *Subscriber) CaughtUp() {
	s.mu.Lock()
	s.busySince = time.Time{}
	s.mu.Unlock()
}

// Update changes what the subscriber receives and returns a copy of the
// new filter. Removing devices needs no snapshot, so a connection's
// reader calls it directly; adding goes through Hub.Subscribe.
func (s *Subscriber) Update(fn func(f *Filter)) Filter {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(&s.f)
	return s.f.clone()
}

// Metrics returns the subscriber's metric filter (nil: every metric).
// The map is replaced, never changed, by Filter.Subscribe.
func (s *Subscriber) Metrics() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.Metrics
}

// Frame returns the bytes to send for le under the metric filter
// metrics, or nil when the filter leaves nothing of a reading.
func Frame(le *Event, metrics map[string]bool) []byte {
	if metrics == nil || le.Ev.Type != telemetry.EventReading {
		return le.Encoded()
	}
	ev := le.Ev
	ev.Metrics = make(telemetry.Metrics, len(metrics))
	for k, v := range le.Ev.Metrics {
		if metrics[k] {
			ev.Metrics[k] = v
		}
	}
	if len(ev.Metrics) == 0 {
		return nil
	}
	return encodeEvent(ev)
}
