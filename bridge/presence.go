package bridge

import (
	"sync"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// presence orders one device's presence writes by session epoch. The
// bridge is the only writer of a device's presence (Devices.SetPresence)
// for the sessions it holds, and a session's ID, unique and increasing,
// is its epoch: a session writes "online" only if no later session wrote
// before it, and "offline" only if it is still the last that wrote
// online. So a superseded session's late disconnect, however it races the
// new session's connect, never marks the new one offline.
type presence struct {
	// mu serialises the device's presence writes and events, so the store
	// and the dashboards see them in epoch order. It is taken only by
	// Connect and Disconnect of this one device, never on the ingest path
	// and never with Bridge.mu held; nothing else is taken under it.
	mu    sync.Mutex
	epoch uint64 // guarded by mu: the session that last wrote online
}

// write applies the presence of session epoch if the epoch allows it (see
// presence) and reports whether it did. Callers do not hold p.mu.
func (p *presence) write(epoch uint64, online bool, apply func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case online && epoch > p.epoch:
		p.epoch = epoch
	case !online && epoch == p.epoch:
	default:
		return false
	}
	apply()
	return true
}

// online marks s's device online, unless a later session already did.
func (b *Bridge) online(s *Session, now time.Time) {
	s.dev.presence.write(s.ID, true, func() {
		b.opts.Devices.SetPresence(s.DeviceID, devices.Presence{Online: true, Transport: s.Transport, ConnectedAt: &now, LastSeen: &now, RemoteAddr: s.Remote})
		b.publishPresence(s.DeviceID, true, s.Transport, "", now)
	})
}

// offline marks s's device offline for reason, if s is still the session
// that last marked it online.
func (b *Bridge) offline(s *Session, reason string, now time.Time) {
	s.dev.presence.write(s.ID, false, func() {
		b.opts.Devices.SetPresence(s.DeviceID, devices.Presence{Online: false, LastSeen: &now, Reason: reason})
		b.publishPresence(s.DeviceID, false, s.Transport, reason, now)
	})
}

func (b *Bridge) publishPresence(id string, online bool, transport, reason string, at time.Time) {
	if b.opts.Fanout == nil {
		return
	}
	b.opts.Fanout.Publish(telemetry.Event{Type: telemetry.EventPresence, Device: id, Online: &online, Transport: transport, Reason: reason, At: at.UnixMilli()})
}
