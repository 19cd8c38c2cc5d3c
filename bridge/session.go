package bridge

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Conn is what the bridge needs of a transport connection. Neither method
// may block: Close records the reason, starts the close and returns (the
// transport then calls Bridge.Disconnect from its own goroutine); Deliver
// hands a command to the connection's writer and reports false when the
// connection cannot take it now (not subscribed yet, queue full).
type Conn interface {
	Close(reason string)
	Deliver(cmd telemetry.Command) bool
}

// Session is one live connection of one device on one transport.
type Session struct {
	ID          uint64
	DeviceID    string
	Transport   string
	Remote      string
	ConnectedAt time.Time

	hash    devices.TokenHash
	limiter *rate.Limiter
	dev     *deviceState
	conn    Conn
	reason  atomic.Pointer[string]
	ended   atomic.Bool
	logLim  *LogLimiter
	// deadline bounds the store appends of a connected session, made at
	// its first append (an idle connection does not pay for it); an
	// ephemeral session, which lives for one message, has none
	// (appendStore).
	connected bool
	deadline  atomic.Pointer[storeDeadline]
	// messages and readings are the Stats counters of the session's
	// transport, looked up once.
	messages, readings *atomic.Int64
}

// storeDeadline returns the session's reusable store deadline, made on
// first use; nil for an ephemeral session.
func (s *Session) storeDeadline() *storeDeadline {
	if !s.connected {
		return nil
	}
	if d := s.deadline.Load(); d != nil {
		return d
	}
	s.deadline.CompareAndSwap(nil, new(storeDeadline))
	d := s.deadline.Load()
	if s.ended.Load() {
		// Disconnect may have looked before d existed: release it here
		// (Disconnect sets ended before it looks, so one of the two does).
		d.release()
	}
	return d
}

// Kick closes the session for reason; the first reason given wins.
func (s *Session) Kick(reason string) {
	s.reason.CompareAndSwap(nil, &reason)
	s.conn.Close(reason)
}

// Ending records why the transport itself is ending the session, before
// it closes the connection, so that a kick arriving meanwhile (the
// device's reconnect superseding it) does not replace the reason; the
// first reason recorded wins, as with Kick.
func (s *Session) Ending(reason string) { s.reason.CompareAndSwap(nil, &reason) }

// Reason returns why the session was kicked, or def if it was not.
func (s *Session) Reason(def string) string {
	if r := s.reason.Load(); r != nil {
		return *r
	}
	return def
}

func (s *Session) logReject(log *slog.Logger, e *telemetry.Error) {
	// The budget is spent whether or not debug is on (it is shared with
	// the transports' refusal lines); the arguments are built only when
	// the line is written.
	if n, ok := s.logLim.Allow(); ok && log.Enabled(context.Background(), slog.LevelDebug) {
		log.Debug("message rejected", "device", s.DeviceID, "transport", s.Transport, "code", e.Code, "reason", e.Message, "suppressed", n)
	}
}

// Connect registers a new authenticated session. An older session of the
// same device is closed with reason "superseded"; its late Disconnect will
// not touch the new session's presence (the session's ID is its presence
// epoch: see presence.go).
func (b *Bridge) Connect(deviceID, transport, remote string, h devices.TokenHash, c Conn) *Session {
	now := b.opts.Now()
	s := &Session{
		DeviceID: deviceID, Transport: transport, Remote: remote, ConnectedAt: now,
		hash: h, conn: c, logLim: &b.logLim, connected: true,
		messages: b.stats.messages(transport), readings: b.stats.readings(transport),
	}
	b.mu.Lock()
	// The epoch is taken under mu, so epoch order is the order in which
	// sessions become current: presence (presence.go) and the command
	// service (SessionOpened) both rely on it.
	s.ID = b.nextID.Add(1)
	s.limiter = b.limiterLocked(deviceID)
	s.dev = b.deviceLocked(deviceID)
	old := b.sessions[deviceID]
	b.sessions[deviceID] = s
	b.mu.Unlock()
	if old != nil {
		old.Kick(ReasonSuperseded)
	}
	// The transport checked the token before its handshake; a rotation or
	// deletion in between found no session to kick. The registry swaps its
	// snapshot before it calls CredentialsChanged, so either that call sees
	// this session or this check sees the change.
	if !b.opts.Devices.StillValid(deviceID, h) {
		s.Kick(ReasonRevoked)
	}
	b.stats.connects(transport).Add(1)
	b.stats.connected(transport).Add(1)
	b.log.Info("device connected", "device", deviceID, "transport", transport, "remote", remote)
	b.online(s, now)
	b.opts.Commands.SessionOpened(deviceID, s.ID, c.Deliver)
	return s
}

// limiterLocked returns the device's rate limiter: one per device, kept
// across reconnects so reconnecting never refills the bucket. Callers hold mu.
func (b *Bridge) limiterLocked(deviceID string) *rate.Limiter {
	l := b.limiters[deviceID]
	if l == nil {
		l = rate.NewLimiter(rate.Limit(b.opts.RatePerSec), b.opts.Burst)
		b.limiters[deviceID] = l
	}
	return l
}

// Ephemeral returns a session for one request of a device that holds no
// connection (the HTTP fallback). It shares the device's rate limit and
// does not change presence.
func (b *Bridge) Ephemeral(deviceID, transport, remote string) *Session {
	b.mu.Lock()
	lim := b.limiterLocked(deviceID)
	dev := b.deviceLocked(deviceID)
	b.mu.Unlock()
	return &Session{DeviceID: deviceID, Transport: transport, Remote: remote, ConnectedAt: b.opts.Now(), limiter: lim, dev: dev, logLim: &b.logLim,
		messages: b.stats.messages(transport), readings: b.stats.readings(transport)}
}

// Touch records that a device without a session was heard from.
func (b *Bridge) Touch(deviceID string) { b.opts.Devices.Touch(deviceID, b.opts.Now()) }

// Disconnect ends a session. Presence goes offline only if s is still the
// device's current session. It is safe to call more than once.
func (b *Bridge) Disconnect(s *Session, reason string) {
	if !s.ended.CompareAndSwap(false, true) {
		return
	}
	reason = s.Reason(reason)
	if d := s.deadline.Load(); d != nil {
		d.release()
	}
	now := b.opts.Now()
	b.mu.Lock()
	current := b.sessions[s.DeviceID] == s
	if current {
		delete(b.sessions, s.DeviceID)
	}
	b.mu.Unlock()
	b.opts.Commands.SessionClosed(s.DeviceID, s.ID)
	b.stats.connected(s.Transport).Add(-1)
	b.stats.disconnects(s.Transport, reason).Add(1)
	b.log.Info("device disconnected", "device", s.DeviceID, "transport", s.Transport, "remote", s.Remote,
		"duration", now.Sub(s.ConnectedAt).Round(time.Millisecond), "reason", reason)
	if current {
		b.offline(s, reason, now)
	}
}

// CredentialsChanged re-checks the device's session after its tokens
// changed or it was deleted, and closes it with reason "revoked" if its
// token no longer works; it wakes the device's HTTP long polls, which
// check their own token (NextCommand); a deleted device's metric names
// are forgotten. The registry calls it.
func (b *Bridge) CredentialsChanged(deviceID string) {
	b.mu.Lock()
	s := b.sessions[deviceID]
	b.mu.Unlock()
	if s != nil && !b.opts.Devices.StillValid(deviceID, s.hash) {
		s.Kick(ReasonRevoked)
	}
	b.opts.Commands.WakePollers(deviceID)
	if !b.opts.Devices.Exists(deviceID) {
		b.forgetDevice(deviceID)
	}
}

// Current returns the device's current session, or nil.
func (b *Bridge) Current(deviceID string) *Session {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sessions[deviceID]
}

// CloseAll kicks every session, for shutdown.
func (b *Bridge) CloseAll(reason string) {
	for _, s := range b.Sessions() {
		s.Kick(reason)
	}
}

// Sessions returns the current sessions.
func (b *Bridge) Sessions() []*Session {
	b.mu.Lock()
	defer b.mu.Unlock()
	all := make([]*Session, 0, len(b.sessions))
	for _, s := range b.sessions {
		all = append(all, s)
	}
	return all
}

// LogLimiter keeps a flood of refusals (a faulty fleet's per-message
// errors, refused connects and publishes) from flooding the log: 10 lines
// a second, burst 20, and the next line says how many it skipped. The
// zero value is ready to use. Transports use it for their own refusal
// lines.
type LogLimiter struct {
	once       sync.Once
	lim        *rate.Limiter
	suppressed atomic.Int64
}

// Allow reports whether to log now, and how many lines were skipped since
// the last one logged.
func (l *LogLimiter) Allow() (suppressed int64, ok bool) {
	l.once.Do(func() { l.lim = rate.NewLimiter(10, 20) })
	if !l.lim.Allow() {
		l.suppressed.Add(1)
		return 0, false
	}
	return l.suppressed.Swap(0), true
}
