package commands

import (
	"context"

	"github.com/fieldhub/fieldhub/telemetry"
)

// News from other instances (cluster mode): a device connected elsewhere,
// a command changed elsewhere, a command forwarded from elsewhere.
//
// The first two must not be lost (a lost "connected elsewhere" leaves the
// device's commands "sent" to nobody until they time out; a lost "changed
// elsewhere" leaves a waiter asleep for its whole wait), and their callers
// (the cluster's broker callbacks) must not wait. So they do not go
// through the request queue: they mark the device or command in a small
// set under newsMu and wake the owner goroutine, which drains the set on
// that wake and on every tick.

// maxNews bounds the entries of the news set. Its keys are registered
// devices and active commands, so it stays small; should it fill up
// anyway, it is replaced by one "rescan everything" mark (full), so
// nothing is lost: the owner then re-hands every command given to the
// cluster and asks the store about every active command.
const maxNews = 4096

// news is what other instances reported and the owner goroutine has not
// looked at yet.
type news struct {
	connected map[string]struct{}    // devices that connected to another instance
	changed   map[[2]string]struct{} // {device, id}: commands another instance changed
	full      bool                   // the set overflowed: rescan all devices and commands
}

// markNews records one piece of news (device connected if id is empty,
// command changed otherwise) and wakes the owner goroutine. It never
// waits: the set is bounded by maxNews and the wake channel holds one
// signal, which is all the owner needs to drain the whole set.
func (s *Service) markNews(device, id string) {
	s.newsMu.Lock()
	switch {
	case s.news.full:
		// Everything is rescanned already.
	case len(s.news.connected)+len(s.news.changed) >= maxNews:
		s.news = news{full: true}
		s.stats.NewsOverflows.Add(1)
	case id == "":
		s.news.connected[device] = struct{}{}
	default:
		s.news.changed[[2]string{device, id}] = struct{}{}
	}
	s.newsMu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default: // a wake is pending already; it drains this news too
	}
}

func emptyNews() news {
	return news{connected: map[string]struct{}{}, changed: map[[2]string]struct{}{}}
}

// takeNews empties the news set and returns what it held.
func (s *Service) takeNews() news {
	s.newsMu.Lock()
	defer s.newsMu.Unlock()
	n := s.news
	s.news = emptyNews()
	return n
}

// drainNews acts on the news from other instances. Owner goroutine.
func (s *Service) drainNews() {
	n := s.takeNews()
	if n.full {
		n = emptyNews()
		for device, list := range s.active {
			n.connected[device] = struct{}{}
			for _, a := range list {
				n.changed[[2]string{device, a.rec.ID}] = struct{}{}
			}
		}
	}
	if len(n.changed) > 0 {
		// One deadline for the whole batch: a hung store holds the owner
		// for at most storeTimeout here.
		ctx, cancel := s.storeCtx()
		for k := range n.changed {
			s.changedElsewhere(ctx, k[0], k[1])
		}
		cancel()
	}
	for device := range n.connected {
		s.connectedElsewhere(device)
	}
}

// CommandChanged tells the service that another instance changed a
// command (its live event came through the broker). A command this
// instance tracks and the shared store says is final is let go, and its
// waiters wake. It does not wait, and the news is not lost while the
// owner goroutine is busy.
func (s *Service) CommandChanged(device, id string) {
	s.markNews(device, id)
}

// changedElsewhere is CommandChanged on the owner goroutine. A store
// failure is logged; the command is still let go by the clock (which asks
// the store again at its ttl or timeout).
func (s *Service) changedElsewhere(ctx context.Context, device, id string) {
	for i, a := range s.active[device] {
		if a.rec.ID != id {
			continue
		}
		rec, err := s.opts.Store.GetCommand(ctx, device, id)
		if err != nil {
			s.log.Warn("read command changed elsewhere", "device", device, "command", id, "err", err)
			return
		}
		if rec.Final() {
			a.rec = rec
			s.remove(device, i)
		}
		return
	}
}

// RemoteConnected tells the service that the device connected to another
// instance: commands handed to the router before are handed over again,
// for that instance to deliver (at least once). It does not wait, and the
// news is not lost while the owner goroutine is busy.
func (s *Service) RemoteConnected(device string) {
	if _, here := s.current(device); here {
		return
	}
	s.markNews(device, "")
}

// connectedElsewhere is RemoteConnected on the owner goroutine.
func (s *Service) connectedElsewhere(device string) {
	list := s.active[device]
	if len(list) == 0 {
		return
	}
	for _, a := range list {
		if a.deliveredTo == awaySession {
			a.deliveredTo = 0
		}
	}
	s.deliver(device)
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
