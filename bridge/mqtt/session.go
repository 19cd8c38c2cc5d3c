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
	// out is the commands sent at QoS 1 and not yet acknowledged, in the
	// order sent (resent in that order, with DUP, on resume); nextID the
	// last packet id given. Server packet ids are the server's alone: a
	// client's own ids (in, SUBSCRIBE) never collide with them (§2.3.1).
	out    []inflight
	nextID uint16
	// in is the client's QoS 2 packet ids awaiting PUBREL: the readings
	// are stored, a repeated PUBLISH with one of these ids is a duplicate.
	in map[uint16]struct{}
}

// inflight is one command PUBLISH awaiting its PUBACK.
type inflight struct {
	id      uint16
	command string
	payload []byte
	// written: sent on the current connection. A resume resends only as
	// many as the new connection's Receive Maximum allows, the rest as
	// PUBACKs free the window ([MQTT-3.3.4-7]).
	written bool
}

func newSession(device string, h devices.TokenHash) *session {
	return &session{device: device, hash: h, in: map[uint16]struct{}{}}
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
			return true
		}
	}
	return false
}

// writeHeld resends commands in flight not yet written on c, within its
// window. Caller holds s.mu.
func (s *session) writeHeld(c *conn) {
	topic := telemetry.Topic(s.device, telemetry.KindCommands)
	written := 0
	for i := range s.out {
		if s.out[i].written {
			written++
		}
	}
	for i := range s.out {
		if written >= c.window() {
			return
		}
		if !s.out[i].written {
			c.resendPublish(topic, s.out[i].payload, s.out[i].id)
			s.out[i].written = true
			written++
		}
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
		if f.command == cmd.ID {
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

// awaitingRelease reports whether the client's QoS 2 packet id is stored
// and awaiting PUBREL, and how many are.
func (s *session) awaitingRelease(id uint16) (bool, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.in[id]
	return ok, len(s.in)
}

// received records a stored QoS 2 publish awaiting PUBREL.
func (s *session) received(id uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.in[id] = struct{}{}
}

// released forgets a QoS 2 packet id at PUBREL; false if it was unknown
// (or c no longer holds the session).
func (s *session) released(c *conn, id uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != c {
		return false
	}
	_, ok := s.in[id]
	delete(s.in, id)
	return ok
}
