// Package hijack tracks the connections a server took over from net/http
// (WebSocket upgrades): http.Server.Shutdown neither closes nor waits for
// hijacked connections, so each server that holds them refuses new ones
// once it is closing, closes the open ones itself and waits for their
// handlers. It is the one copy of that closing flag, set and WaitGroup,
// shared by the device sockets (bridge/ws), MQTT over WebSocket
// (bridge/mqtt) and the operators' live sockets (dashboard), which may not
// import each other. It imports only the standard library.
package hijack

import "sync"

// Conns is the set of a server's hijacked connections. The zero value is
// ready to use; a Conns must not be copied.
type Conns[C comparable] struct {
	mu      sync.Mutex // guards closing, open and wg.Add against Wait; nothing is taken or done under it
	closing bool
	open    map[C]struct{}
	wg      sync.WaitGroup
}

// Add registers connection c, before its handler goes on. It reports
// false once Close was called: the caller refuses the connection then.
// Every Add that returned true is matched by one Done.
func (s *Conns[C]) Add(c C) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if s.open == nil {
		s.open = map[C]struct{}{}
	}
	s.open[c] = struct{}{}
	s.wg.Add(1)
	return true
}

// Done says c's handler returned.
func (s *Conns[C]) Done(c C) {
	s.mu.Lock()
	delete(s.open, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Closing reports whether Close was called: a connection that raced past
// Add just before it is closed by its handler as soon as it can be.
func (s *Conns[C]) Closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Close refuses new connections and returns those open now, for the
// caller to close (outside any lock).
func (s *Conns[C]) Close() []C {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	open := make([]C, 0, len(s.open))
	for c := range s.open {
		open = append(open, c)
	}
	return open
}

// Wait blocks until every registered connection is Done.
func (s *Conns[C]) Wait() { s.wg.Wait() }
