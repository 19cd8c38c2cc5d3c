package devices

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// limiterTableMax bounds every limiter's table: keys come from client
// input (addresses, claimed identities), so the table must not grow with it.
const limiterTableMax = 10000

// FailureLimiter rate-limits failed authentications per (client address,
// claimed identity) pair, so a client that keeps failing is told to back
// off without anyone else paying for it. Only failures spend from a pair's
// bucket; successes are free.
//
// The policy (docs/protocol.md, "Authentication failures"): credentials are
// always checked first, and a valid credential is always accepted, whatever
// failed before from its address or under its identity. The limiter only
// decides how a failed attempt is answered: within the pair's budget with
// 401 and a log line, past it with 429 rate_limited (Retry-After) and no
// log line. Guessing is defeated by the tokens' 192 random bits, not by the
// limiter, so it never needs to refuse a valid credential (which would let
// anyone sharing an address lock a known device id out).
//
// Its table is bounded: when full, refilled entries are dropped, and if
// that is not enough, the tenth least recently seen.
type FailureLimiter struct {
	perSec float64
	burst  int
	max    int

	mu      sync.Mutex // guards entries
	entries map[string]*limiterEntry

	logs     *rate.Limiter // the failure log lines of every way in
	unlogged atomic.Int64  // failures not logged since the last line
}

type limiterEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

// NewFailureLimiter allows perSec failures a second per key, with burst.
func NewFailureLimiter(perSec float64, burst int) *FailureLimiter {
	return &FailureLimiter{perSec: perSec, burst: burst, max: limiterTableMax, entries: map[string]*limiterEntry{},
		logs: rate.NewLimiter(failureLogsPerSec, failureLogsBurst)}
}

// Failure log lines, hub-wide: a client presenting a new bad credential
// each time never exhausts any pair's budget, so the lines themselves are
// bounded too.
const (
	failureLogsPerSec = 10
	failureLogsBurst  = 20
)

// Log reports whether to log a failed authentication now (within the
// hub-wide budget for such lines) and how many were not logged since the
// last line that was, for its "suppressed" attribute. A nil limiter logs
// every failure.
func (l *FailureLimiter) Log() (suppressed int64, ok bool) {
	if l == nil {
		return 0, true
	}
	if !l.logs.Allow() {
		l.unlogged.Add(1)
		return 0, false
	}
	return l.unlogged.Swap(0), true
}

// FailureKey is the limiter key of a claimed identity (a device id, an MQTT
// username, or a presented token) from a client address. The identity is
// hashed: the key never holds a secret and its length is bounded whatever
// the client sent.
func FailureKey(addr, identity string) string {
	sum := sha256.Sum256([]byte(identity))
	if len(addr) > 64 {
		addr = addr[:64]
	}
	return addr + "|" + hex.EncodeToString(sum[:12])
}

// Blocked reports whether key has no failures left to spend right now.
func (l *FailureLimiter) Blocked(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[key]
	return ok && e.lim.Tokens() < 1
}

// Fail records a failed authentication under key (see FailureKey) and
// reports whether it was within the key's budget; false means the client
// is to be answered rate_limited.
func (l *FailureLimiter) Fail(key string) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[key]
	if !ok {
		if len(l.entries) >= l.max {
			l.evict(now)
		}
		e = &limiterEntry{lim: rate.NewLimiter(rate.Limit(l.perSec), l.burst)}
		l.entries[key] = e
	}
	e.seen = now
	return e.lim.AllowN(now, 1)
}

// Len returns the number of keys held, for tests of the bound.
func (l *FailureLimiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries)
}

// evict drops entries that have refilled, then, if the table is still
// full, the tenth least recently seen (so a full table is scanned once
// per max/10 new keys, not on every one); called with mu held.
func (l *FailureLimiter) evict(now time.Time) {
	for k, e := range l.entries {
		if e.lim.TokensAt(now) >= float64(l.burst) {
			delete(l.entries, k)
		}
	}
	if len(l.entries) < l.max {
		return
	}
	seen := make([]time.Time, 0, len(l.entries))
	for _, e := range l.entries {
		seen = append(seen, e.seen)
	}
	slices.SortFunc(seen, func(a, b time.Time) int { return a.Compare(b) })
	cut := seen[len(seen)/10]
	for k, e := range l.entries {
		if !e.seen.After(cut) {
			delete(l.entries, k)
		}
	}
}

// ConnectLimiter bounds new connections per client address: one instance
// is shared by every way in that opens a connection (MQTT over TCP and
// TLS, MQTT over WebSocket, the device WebSocket), so a storm cannot pick
// the unguarded door. Its table is the failure limiter's: bounded, and
// when full, refilled entries go first, then the least recently seen
// tenth, so a flood of new addresses never locks out the next one and a
// full table is scanned once per 1,000 new addresses, not on each.
type ConnectLimiter struct {
	t *FailureLimiter
}

// NewConnectLimiter allows perSec new connections a second per client
// address, with burst (at least 1).
func NewConnectLimiter(perSec float64, burst int) *ConnectLimiter {
	return &ConnectLimiter{t: NewFailureLimiter(perSec, max(burst, 1))}
}

// Allow spends one connection from addr's budget (an address without its
// port, see Proxies.ClientAddr) and reports whether it may go on.
func (l *ConnectLimiter) Allow(addr string) bool { return l.t.Fail(addr) }

// Len returns the number of addresses held, for tests of the bound.
func (l *ConnectLimiter) Len() int { return l.t.Len() }

// Refuse is the one failed-authentication flow of every way in. It counts
// a failure of identity from addr (FailureKey) and logs it: past the
// budget, a Debug line with reason rate_limited, and it reports true (the
// caller answers "too many failed authentications", 429); within it, an
// Info line within the hub-wide budget for such lines (Log) with the count
// of lines skipped, and it reports false (the caller answers 401 or bad
// credentials). A nil limiter never limits; a nil log logs nothing. attrs
// follow "remote" on each line.
func (l *FailureLimiter) Refuse(log *slog.Logger, msg, addr, identity string, attrs ...any) (limited bool) {
	if l != nil && !l.Fail(FailureKey(addr, identity)) {
		if log != nil {
			log.Debug(msg, append(append([]any{"remote", addr}, attrs...), "reason", "rate_limited")...)
		}
		return true
	}
	if log == nil {
		return false
	}
	if n, ok := l.Log(); ok {
		log.Info(msg, append(append([]any{"remote", addr}, attrs...), "suppressed", n)...)
	}
	return false
}
