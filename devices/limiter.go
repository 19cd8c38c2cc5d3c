package devices

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// FailureLimiter rate-limits failed authentications per client address, so
// guessing tokens is slow and a misconfigured fleet cannot swamp the hub.
// Only failures spend from the bucket; successes are free. Its table is
// bounded: when full, idle entries are dropped, and if none is idle the
// oldest is.
type FailureLimiter struct {
	perSec float64
	burst  int
	max    int

	mu      sync.Mutex
	entries map[string]*limiterEntry
}

type limiterEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

// NewFailureLimiter allows perSec failures a second per address, with burst.
func NewFailureLimiter(perSec float64, burst int) *FailureLimiter {
	return &FailureLimiter{perSec: perSec, burst: burst, max: 10000, entries: map[string]*limiterEntry{}}
}

// Blocked reports whether addr has no failures left to spend right now; a
// blocked client is refused before its credentials are even checked.
func (l *FailureLimiter) Blocked(addr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[addr]
	return ok && e.lim.Tokens() < 1
}

// Fail records a failed authentication from addr.
func (l *FailureLimiter) Fail(addr string) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[addr]
	if !ok {
		if len(l.entries) >= l.max {
			l.evict(now)
		}
		e = &limiterEntry{lim: rate.NewLimiter(rate.Limit(l.perSec), l.burst)}
		l.entries[addr] = e
	}
	e.seen = now
	e.lim.AllowN(now, 1)
}

// evict drops entries that have refilled; called with mu held.
func (l *FailureLimiter) evict(now time.Time) {
	var oldest string
	var oldestAt time.Time
	for k, e := range l.entries {
		if e.lim.TokensAt(now) >= float64(l.burst) {
			delete(l.entries, k)
			continue
		}
		if oldest == "" || e.seen.Before(oldestAt) {
			oldest, oldestAt = k, e.seen
		}
	}
	if len(l.entries) >= l.max {
		delete(l.entries, oldest)
	}
}
