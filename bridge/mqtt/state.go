package mqtt

import (
	"context"
	"time"

	"github.com/fieldhub/fieldhub/devices/state"
	"github.com/fieldhub/fieldhub/telemetry"
)

// State is the device state service as the gateway uses it
// (*state.Service): a device subscribed to devices/{id}/state/desired
// gets the current desired update, then every change.
type State interface {
	Subscribe(ctx context.Context, device string, fn func(*state.Update)) (state.Update, func(), error)
}

// stateSubscribeTimeout bounds the store read of a desired subscription.
const stateSubscribeTimeout = 5 * time.Second

// Desired-state delivery on a session (docs/locks.md: s.mu before c.mu).
// At most one desired update is in flight (in s.out, sharing the
// command window and resent with DUP on resume like a command); a newer
// one arriving meanwhile waits in s.statePending, one slot, the latest
// wins (coalescing): a device that does not acknowledge is never sent a
// queue of stale documents.

// watchState starts the desired updates of c's device on c, once per
// connection: at a SUBSCRIBE of the desired topic (again asks for the
// current document: fresh) and when a resumed session is subscribed.
func (c *conn) watchState(fresh bool) {
	if c.b.opts.State == nil {
		return
	}
	if fresh {
		c.sess.mu.Lock()
		if c.sess.conn == c {
			c.sess.stateVer = -1
		}
		c.sess.mu.Unlock()
	}
	if c.stateCancel != nil {
		if !fresh {
			return
		}
		c.stopState() // subscribed again: watch afresh, from the current document
	}
	ctx, cancel := context.WithTimeout(context.Background(), stateSubscribeTimeout)
	defer cancel()
	sess := c.sess
	u, stop, err := c.b.opts.State.Subscribe(ctx, c.device, func(u *state.Update) { sess.offerState(c, u) })
	c.stateCancel = stop
	if err != nil {
		c.b.log.Warn("desired state not sent at subscribe", "device", c.device, "err", err)
		return
	}
	sess.offerState(c, &u)
}

// stopState ends c's desired updates (unsubscribe, connection end).
func (c *conn) stopState() {
	if c.stateCancel != nil {
		c.stateCancel()
		c.stateCancel = nil
	}
}

// offerState sends u to the device on c if it is subscribed, c holds the
// session and u is newer than what was sent; it never blocks.
func (s *session) offerState(c *conn, u *state.Update) {
	if u == nil {
		return // a credentials change: the bridge re-checks the session
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != c || !s.desired || u.Version <= s.stateVer {
		return
	}
	s.stateVer = u.Version
	s.statePending = u.Encode(false)
	s.sendStateLocked(c)
}

// sendStateLocked sends the pending desired update if the window has
// room and none is in flight. Caller holds s.mu.
func (s *session) sendStateLocked(c *conn) {
	if s.statePending == nil || s.conn != c {
		return
	}
	topic := telemetry.Topic(s.device, telemetry.KindStateDesired)
	if s.desiredQoS == 0 {
		if c.publishOut(topic, s.statePending, 0, 0, false, outBufferBytes) != refused {
			s.statePending = nil
		}
		return
	}
	for _, f := range s.out {
		if f.state {
			return // one in flight: this one follows its PUBACK
		}
	}
	if len(s.out) >= c.window() {
		return // follows as PUBACKs free the window
	}
	id := s.nextPacketID()
	switch c.publishOut(topic, s.statePending, 1, id, false, outBufferBytes) {
	case refused:
		return // output full: stays pending, sent at the next PUBACK or change
	case dropped:
		s.statePending = nil // larger than the client takes; logged by publishOut
		return
	}
	s.out = append(s.out, inflight{id: id, state: true, payload: s.statePending, written: true})
	s.statePending = nil
}
