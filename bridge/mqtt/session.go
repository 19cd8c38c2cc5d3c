package mqtt

import (
	"sync"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// maxInflight bounds the unacknowledged commands on one session whatever
// the client's Receive Maximum (the command service's own window).
const maxInflight = 16

// session is a device's MQTT session state (3.1.1 §4.1, 5.0 §4.1): what a
// persistent session keeps across its connections. The attached
// connection's reader and the command service (through Deliver) both use
// it; s.mu is taken before the connection's mu (docs/locks.md).
type session struct {
	device string
	// hash is the token that opened the session: a connection with
	// another (rotated, or a new device under a deleted one's id) never
	// resumes it.
	hash devices.TokenHash

	// Guarded by the Broker's mu: the session table's view of it.
	expiry time.Duration // how long it outlives its connection; 0: it ends with it

	mu   sync.Mutex
	conn *conn // attached connection; nil while detached. Guarded by mu.
	// Subscriptions, guarded by mu: the device's commands topic (and the
	// QoS granted) and its errors topic.
	commands    bool
	commandsQoS byte
	errors      bool
	// desired: subscribed to the desired-state topic at desiredQoS;
	// stateVer is the last desired version queued for the device (-1:
	// none, send the current one), statePending the update waiting for
	// the window (state.go).
	desired      bool
	desiredQoS   byte
	stateVer     int64
	statePending []byte
	// out is the commands sent at QoS 1 and not yet acknowledged, in the
	// order sent (resent in that order, with DUP, on resume); nextID the
	// last packet id given. Server packet ids are the server's alone: a
	// client's own ids (in, SUBSCRIBE) never collide with them (§2.3.1).
	out    []inflight
	nextID uint16
	// in is the client's QoS 2 packet ids awaiting PUBREL: the readings
	// are stored, a repeated PUBLISH with one of these ids is a duplicate.
	// An id is entered before its reading is stored, so a resend through a
	// newer connection (a takeover while the store is slow) waits for the
	// first copy's outcome instead of storing it twice.
	in map[uint16]*qos2
}

// inflight is one command PUBLISH awaiting its PUBACK.
type inflight struct {
	id      uint16
	command string
	// state marks a desired-state update (command is then "").
	state   bool
	payload []byte
	// written: sent on the current connection. A resume resends only as
	// many as the new connection's Receive Maximum allows, the rest as
	// PUBACKs free the window ([MQTT-3.3.4-7]).
	written bool
}

func newSession(device string, h devices.TokenHash) *session {
	return &session{device: device, hash: h, in: map[uint16]*qos2{}, stateVer: -1}
}

// nextPacketID returns a packet id no command in flight has. Caller holds
// s.mu; len(s.out) < 65535 by maxInflight.
func (s *session) nextPacketID() uint16 {
	for {
		s.nextID++
		if s.nextID == 0 {
			s.nextID = 1
		}
		free := true
		for _, f := range s.out {
			if f.id == s.nextID {
				free = false
				break
			}
		}
		if free {
			return s.nextID
		}
	}
}

// acked forgets the command in flight with packet id, if c holds the
// session, and sends the next one a resume held back; it reports whether
// there was one.
func (s *session) acked(c *conn, id uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != c {
		return false // superseded: the session is another connection's
	}
	for i, f := range s.out {
		if f.id == id {
			s.out = append(s.out[:i], s.out[i+1:]...)
			s.writeHeld(c)
			s.sendStateLocked(c)
			return true
		}
	}
	return false
}

// writeHeld resends commands in flight not yet written on c, within its
// window. Caller holds s.mu.
func (s *session) writeHeld(c *conn) {
	commands := telemetry.Topic(s.device, telemetry.KindCommands)
	written := 0
	for i := range s.out {
		if s.out[i].written {
			written++
		}
	}
	for i := 0; i < len(s.out); i++ {
		if written >= c.window() {
			return
		}
		if s.out[i].written {
			continue
		}
		topic := commands
		if s.out[i].state {
			topic = telemetry.Topic(s.device, telemetry.KindStateDesired)
		}
		if c.publishOut(topic, s.out[i].payload, 1, s.out[i].id, true, 1<<30) == dropped {
			// Too large for the client resuming the session (a smaller
			// Maximum Packet Size than before): it fails, and frees its slot.
			if !s.out[i].state {
				c.commandTooLarge(s.out[i].command)
			}
			s.out = append(s.out[:i], s.out[i+1:]...)
			i--
			continue
		}
		s.out[i].written = true
		written++
	}
}

// deliver sends cmd to the device on c, the session's connection: false
// when it cannot take it now (not subscribed, not attached to c, window
// full, output buffer full); the command service tries again when the
// device subscribes or acknowledges. A command already in flight on the
// session (resent on resume) is not sent twice.
func (s *session) deliver(c *conn, cmd telemetry.Command) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != c || !s.commands {
		return false
	}
	for _, f := range s.out {
		if !f.state && f.command == cmd.ID {
			return true
		}
	}
	if len(s.out) >= c.window() {
		return false
	}
	topic := telemetry.Topic(s.device, telemetry.KindCommands)
	payload := telemetry.EncodeCommand(cmd, false)
	if s.commandsQoS == 0 {
		switch c.publishOut(topic, payload, 0, 0, false, outBufferBytes) {
		case refused:
			return false
		case dropped:
			c.commandTooLarge(cmd.ID)
		}
		return true
	}
	id := s.nextPacketID()
	switch c.publishOut(topic, payload, 1, id, false, outBufferBytes) {
	case refused:
		return false
	case dropped:
		c.commandTooLarge(cmd.ID)
		return true
	}
	s.out = append(s.out, inflight{id: id, command: cmd.ID, payload: payload, written: true})
	return true
}

// resend writes the commands in flight again on c, with DUP set and
// their packet ids, before anything else the session sends (§4.4,
// [MQTT-4.4.0-1]), as many as c's window allows; the rest follow as
// PUBACKs come (acked).
func (s *session) resend(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.out {
		s.out[i].written = false
	}
	s.writeHeld(c)
}

// qos2 is one QoS 2 publish of the client: being stored until done is
// closed, then stored (awaiting PUBREL) or forgotten.
type qos2 struct {
	done   chan struct{}
	stored bool // set before done is closed
}

// awaitingRelease reports the client's QoS 2 publish with packet id, if
// one is being stored or awaits PUBREL, and how many there are.
func (s *session) awaitingRelease(id uint16) (*qos2, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.in[id], len(s.in)
}

// receiving enters a QoS 2 publish being stored.
func (s *session) receiving(id uint16) *qos2 {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := &qos2{done: make(chan struct{})}
	s.in[id] = q
	return q
}

// received ends q's storing: stored, it awaits PUBREL; otherwise its id is
// free again.
func (s *session) received(id uint16, q *qos2, stored bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q.stored = stored
	close(q.done)
	if !stored && s.in[id] == q {
		delete(s.in, id)
	}
}

// released forgets a stored QoS 2 packet id at PUBREL; false if it was
// unknown or not stored yet (or c no longer holds the session).
func (s *session) released(c *conn, id uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != c {
		return false
	}
	q, ok := s.in[id]
	if !ok || !isDone(q.done) || !q.stored {
		return false
	}
	delete(s.in, id)
	return true
}

func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
