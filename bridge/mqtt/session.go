package mqtt

import (
	"sync"
	"time"

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
}

func newSession(device string) *session {
	return &session{device: device, in: map[uint16]struct{}{}}
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

// acked forgets the command in flight with packet id; it reports whether
// there was one.
func (s *session) acked(id uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.out {
		if f.id == id {
			s.out = append(s.out[:i], s.out[i+1:]...)
			return true
		}
	}
	return false
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
		return c.sendPublish(topic, payload, 0, 0, false)
	}
	id := s.nextPacketID()
	if !c.sendPublish(topic, payload, 1, id, false) {
		return false
	}
	s.out = append(s.out, inflight{id: id, command: cmd.ID, payload: payload})
	return true
}

// resend writes every command in flight again on c, with DUP set and its
// packet id, before anything else the session sends (§4.4, [MQTT-4.4.0-1]).
func (s *session) resend(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	topic := telemetry.Topic(s.device, telemetry.KindCommands)
	for _, f := range s.out {
		c.resendPublish(topic, f.payload, f.id)
	}
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

// released forgets a QoS 2 packet id at PUBREL; false if it was unknown.
func (s *session) released(id uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.in[id]
	delete(s.in, id)
	return ok
}
