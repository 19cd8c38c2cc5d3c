package commands

import (
	"github.com/fieldhub/fieldhub/telemetry"
)

// News from other instances (cluster mode): a device connected elsewhere,
// a command changed elsewhere, a command forwarded from elsewhere.

// CommandChanged tells the service that another instance changed a
// command (its live event came through the broker). A command this
// instance tracks and the shared store says is final is let go, and its
// waiters wake. It does not wait.
func (s *Service) CommandChanged(device, id string) {
	s.nudge(func() {
		for i, a := range s.active[device] {
			if a.rec.ID != id {
				continue
			}
			ctx, cancel := s.storeCtx()
			rec, err := s.opts.Store.GetCommand(ctx, device, id)
			cancel()
			if err == nil && rec.Final() {
				a.rec = rec
				s.remove(device, i)
			}
			return
		}
	})
}

// RemoteConnected tells the service that the device connected to another
// instance: commands handed to the router before are handed over again,
// for that instance to deliver (at least once). It does not wait.
func (s *Service) RemoteConnected(device string) {
	if _, here := s.current(device); here {
		return
	}
	s.nudge(func() {
		for _, a := range s.active[device] {
			if a.deliveredTo == awaySession {
				a.deliveredTo = 0
			}
		}
		s.deliver(device)
	})
}

// ForwardCommand writes a command another instance published to this
// instance's session of the device, if it holds one; without one it wakes
// the device's HTTP long polls here, which take it from the shared store.
// It reports whether a session took it.
func (s *Service) ForwardCommand(device string, cmd telemetry.Command) bool {
	if cur, ok := s.current(device); ok {
		return cur.deliver(cmd)
	}
	s.WakePollers(device)
	return false
}
