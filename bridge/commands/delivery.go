package commands

import (
	"github.com/fieldhub/fieldhub/telemetry"
)

// Delivery: the sessions here, and writing commands to them (or, through
// the Router, beyond this instance) within the window.

// SessionOpened tells the service that the device has a new session on
// this instance, which takes commands through deliver (which must not
// block); its pending commands follow. The bridge calls it, after
// releasing its own lock, so two connects of one device may reach it in
// either order; the bridge numbers sessions in the order they become
// current, so a sid lower than the session held already is a superseded
// session arriving late, and is ignored.
func (s *Service) SessionOpened(device string, sid uint64, deliver func(telemetry.Command) bool) {
	s.smu.Lock()
	if cur, ok := s.sessions[device]; ok && cur.id > sid {
		s.smu.Unlock()
		return
	}
	s.sessions[device] = session{id: sid, deliver: deliver}
	s.smu.Unlock()
	s.DeliverCommands(device)
}

// SessionClosed tells the service that session sid of the device ended.
// A newer session of the device is left alone.
func (s *Service) SessionClosed(device string, sid uint64) {
	s.smu.Lock()
	if cur, ok := s.sessions[device]; ok && cur.id == sid {
		delete(s.sessions, device)
	}
	s.smu.Unlock()
}

// current returns the device's session on this instance.
func (s *Service) current(device string) (session, bool) {
	s.smu.Lock()
	defer s.smu.Unlock()
	cur, ok := s.sessions[device]
	return cur, ok
}

// DeliverCommands writes the device's queued commands, and sent commands
// still waiting for a result that the current target has not seen, to
// the device's current session (or, through the router, to the instance
// that has it), in order, keeping at most Window unanswered on it.
// Transports call it when a session becomes able to receive commands; it
// does not wait.
func (s *Service) DeliverCommands(device string) {
	s.nudge(func() { s.deliver(device) })
}

// deliver is DeliverCommands on the owner goroutine.
func (s *Service) deliver(device string) {
	sid, send, ok := s.target(device)
	if !ok {
		return
	}
	now := s.opts.Now().UTC()
	inWindow := 0
	for _, a := range s.active[device] {
		if a.deliveredTo == sid && !a.rec.Final() {
			inWindow++
		}
	}
	for _, a := range s.active[device] {
		if a.deliveredTo == sid || a.rec.Final() {
			continue
		}
		if inWindow >= Window || !send(telemetry.Command{ID: a.rec.ID, Name: a.rec.Name, Params: []byte(a.rec.Params)}) {
			return // keep the order: the rest waits for the next chance
		}
		inWindow++
		a.deliveredTo = sid
		a.rec.Deliveries++
		first := a.rec.Status == Queued
		if first {
			t := now
			a.rec.SentAt = &t
			s.setStatus(a, Sent, now)
		}
		s.changed(a.rec, first)
	}
}

// target is where the device's commands go now: its session here, or
// what the router offers.
func (s *Service) target(device string) (uint64, func(telemetry.Command) bool, bool) {
	if cur, ok := s.current(device); ok {
		return cur.id, cur.deliver, true
	}
	return s.opts.Router.away(device)
}

// pendingDelivery lists devices with commands their current target has
// not been given yet. Owner goroutine.
func (s *Service) pendingDelivery() []string {
	var out []string
	for device, list := range s.active {
		sid, _, ok := s.target(device)
		if !ok {
			continue
		}
		for _, a := range list {
			if a.deliveredTo != sid {
				out = append(out, device)
				break
			}
		}
	}
	return out
}
