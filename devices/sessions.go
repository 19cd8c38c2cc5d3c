package devices

import (
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"time"
)

// Dashboard sessions: a sign-in exchanges an operator token for a random
// session id that the browser keeps in an HttpOnly cookie. The hub keeps
// the id's hash only (like tokens), persisted in the store so sessions
// survive a restart, with an idle and an absolute expiry. A session ends
// when it signs out, expires, or its token is revoked; each end is
// announced through Options.OnOperatorEnded so its live sockets close.

// Session defaults and bounds.
const (
	DefaultSessionIdle = 12 * time.Hour
	DefaultSessionMax  = 7 * 24 * time.Hour
	// MaxSessionsPerToken bounds the sessions one token may hold; a
	// sign-in past it ends the token's oldest session.
	MaxSessionsPerToken = 16
	// SessionPrefix marks session ids, like the token prefixes.
	SessionPrefix = "fhs_"
	// sessionTouchEvery bounds how often last_used is written per session.
	sessionTouchEvery = time.Minute
	// envTokenID is the token id of FIELDHUB_ADMIN_TOKEN, which is never
	// stored; its sessions are kept in memory only (after a restart the
	// variable may hold another secret), so they need a new sign-in.
	envTokenID = "env"
	// EnvAdminName is the name shown for FIELDHUB_ADMIN_TOKEN.
	EnvAdminName = "admin"
)

// OperatorEnded says which operator credential stopped working: a whole
// token (Session empty: every connection it opened, with or without a
// session) or one session of it.
type OperatorEnded struct {
	TokenID string
	Session string // OperatorSession.Key
	Reason  string // "revoked", "signed_out", "expired", "evicted"
}

// session is a live OperatorSession with its expiry timer. Guarded by
// Registry.mu.
type session struct {
	OperatorSession
	memOnly bool   // a session of FIELDHUB_ADMIN_TOKEN, never stored
	seq     uint64 // order of sign-in on this instance (0: loaded from the store)
	timer   *time.Timer
}

// deadline is when the session ends unless it is used again.
func (r *Registry) sessionDeadline(s *session) time.Time {
	idle := s.LastUsed.Add(r.opts.SessionIdle)
	abs := s.CreatedAt.Add(r.opts.SessionMax)
	if abs.Before(idle) {
		return abs
	}
	return idle
}

// loadSessions takes the stored sessions at Open, dropping (and deleting)
// those expired or whose token is gone. Callers need no lock: the
// registry is not shared yet.
func (r *Registry) loadSessions(ctx context.Context, stored []OperatorSession, now time.Time) {
	var stale []TokenHash
	for _, o := range stored {
		s := &session{OperatorSession: o}
		if r.operators[o.TokenID] == nil || !now.Before(r.sessionDeadline(s)) {
			stale = append(stale, o.Hash)
			continue
		}
		r.sessions[o.Hash] = s
		r.scheduleSessionLocked(s, now)
	}
	if len(stale) > 0 {
		if err := r.store.Apply(ctx, Change{DeleteSessions: stale}); err != nil {
			r.log.Warn("delete expired operator sessions", "count", len(stale), "err", err)
		}
	}
}

// scheduleSessionLocked arms the session's expiry timer. Callers hold mu.
func (r *Registry) scheduleSessionLocked(s *session, now time.Time) {
	if r.closed {
		return
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	h := s.Hash
	s.timer = time.AfterFunc(r.sessionDeadline(s).Sub(now)+time.Millisecond, func() { r.expireSession(h) })
}

// expireSession ends a session whose deadline passed; one used meanwhile
// is scheduled again.
func (r *Registry) expireSession(h TokenHash) {
	now := r.opts.Now().UTC()
	r.mu.Lock()
	s := r.sessions[h]
	if s == nil || r.closed {
		r.mu.Unlock()
		return
	}
	if now.Before(r.sessionDeadline(s)) {
		r.scheduleSessionLocked(s, now)
		r.mu.Unlock()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r.dropSessionsLocked(ctx, []*session{s})
	r.mu.Unlock()
	r.ended(OperatorEnded{TokenID: s.TokenID, Session: s.Key(), Reason: "expired"})
}

// dropSessionsLocked deletes sessions from the store (best effort: a
// session whose delete failed is gone from memory, and Open drops it once
// expired) and from memory. Callers hold mu.
func (r *Registry) dropSessionsLocked(ctx context.Context, list []*session) {
	var hashes []TokenHash
	for _, s := range list {
		if s.timer != nil {
			s.timer.Stop()
		}
		delete(r.sessions, s.Hash)
		if !s.memOnly {
			hashes = append(hashes, s.Hash)
		}
	}
	if len(hashes) > 0 {
		if err := r.applyLocked(ctx, Change{DeleteSessions: hashes}); err != nil {
			r.log.Warn("delete operator sessions", "count", len(hashes), "err", err)
		}
	}
}

// ended announces a credential's end. Callers do not hold mu.
func (r *Registry) ended(e OperatorEnded) {
	r.log.Info("operator credential ended", "token_id", e.TokenID, "session", e.Session != "", "reason", e.Reason)
	for _, s := range r.listeners() {
		if s.OnOperatorEnded != nil {
			s.OnOperatorEnded(e)
		}
	}
}

// CreateSession signs op in: it returns a new session id for the cookie
// (shown once; only its hash is kept). A token past MaxSessionsPerToken
// loses its oldest session.
func (r *Registry) CreateSession(ctx context.Context, op Operator) (string, error) {
	secret := newToken(SessionPrefix)
	now := r.opts.Now().UTC().Truncate(time.Millisecond)
	s := &session{OperatorSession: OperatorSession{Hash: HashToken(secret), TokenID: op.TokenID, CreatedAt: now, LastUsed: now},
		memOnly: op.TokenID == envTokenID}
	r.mu.Lock()
	if !s.memOnly && r.operators[op.TokenID] == nil {
		r.mu.Unlock()
		return "", fmt.Errorf("token %q: %w", op.TokenID, ErrNotFound)
	}
	r.sessionSeq++
	s.seq = r.sessionSeq
	var mine []*session
	for _, x := range r.sessions {
		if x.TokenID == op.TokenID {
			mine = append(mine, x)
		}
	}
	var evict []*session
	if n := len(mine) - MaxSessionsPerToken + 1; n > 0 {
		// Oldest first; sign-ins in the same millisecond by their order.
		slices.SortFunc(mine, func(a, b *session) int {
			if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
				return c
			}
			return cmp.Compare(a.seq, b.seq)
		})
		evict = mine[:n]
	}
	if !s.memOnly {
		if err := r.applyLocked(ctx, Change{PutSessions: []OperatorSession{s.OperatorSession}}); err != nil {
			r.mu.Unlock()
			return "", err
		}
	}
	r.dropSessionsLocked(ctx, evict)
	r.sessions[s.Hash] = s
	r.scheduleSessionLocked(s, now)
	r.mu.Unlock()
	for _, e := range evict {
		r.ended(OperatorEnded{TokenID: e.TokenID, Session: e.Key(), Reason: "evicted"})
	}
	r.notify(func() Changed { return Changed{Operators: true} })
	return secret, nil
}

// AuthenticateSession returns the operator a session id belongs to, with
// Operator.Session set. Using a session keeps it from idling out.
func (r *Registry) AuthenticateSession(ctx context.Context, secret string) (Operator, bool) {
	if !LooksLikeToken(secret, SessionPrefix) {
		return Operator{}, false
	}
	h := HashToken(secret)
	now := r.opts.Now().UTC()
	r.mu.Lock()
	s, ok := r.sessions[h]
	if !ok || !s.Hash.Equal(h) {
		r.mu.Unlock()
		return Operator{}, false
	}
	op, ok := r.sessionOperatorLocked(s)
	if !ok || !now.Before(r.sessionDeadline(s)) {
		// The timer is about to end it; end it now.
		r.dropSessionsLocked(ctx, []*session{s})
		r.mu.Unlock()
		r.ended(OperatorEnded{TokenID: s.TokenID, Session: s.Key(), Reason: "expired"})
		return Operator{}, false
	}
	if now.Sub(s.LastUsed) > min(sessionTouchEvery, r.opts.SessionIdle/4) {
		s.LastUsed = now.Truncate(time.Second)
		if !s.memOnly {
			// Under mu, so a touch is never written after the delete of
			// the same session (TouchSessions never recreates one either).
			if err := r.store.Apply(ctx, Change{TouchSessions: []OperatorSession{s.OperatorSession}}); err != nil {
				r.log.Warn("persist session last_used", "token_id", s.TokenID, "err", err)
			}
		}
	}
	r.mu.Unlock()
	return op, true
}

// sessionOperatorLocked returns the operator behind a session, false when
// its token is gone. Callers hold mu.
func (r *Registry) sessionOperatorLocked(s *session) (Operator, bool) {
	if s.TokenID == envTokenID {
		if r.bootstrap == nil {
			return Operator{}, false
		}
		return Operator{TokenID: envTokenID, Name: EnvAdminName, Role: RoleAdmin, Session: s.Key()}, true
	}
	o := r.operators[s.TokenID]
	if o == nil {
		return Operator{}, false
	}
	return Operator{TokenID: o.ID, Name: o.Name, Role: o.Role, Session: s.Key()}, true
}

// DeleteSession signs a session out. An unknown id is not an error:
// signing out twice is signing out.
func (r *Registry) DeleteSession(ctx context.Context, secret string) error {
	if !LooksLikeToken(secret, SessionPrefix) {
		return nil
	}
	h := HashToken(secret)
	r.mu.Lock()
	s, ok := r.sessions[h]
	if !ok {
		r.mu.Unlock()
		return nil
	}
	if !s.memOnly {
		if err := r.applyLocked(ctx, Change{DeleteSessions: []TokenHash{h}}); err != nil {
			r.mu.Unlock()
			return err
		}
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	delete(r.sessions, h)
	r.mu.Unlock()
	r.ended(OperatorEnded{TokenID: s.TokenID, Session: s.Key(), Reason: "signed_out"})
	r.notify(func() Changed { return Changed{Operators: true} })
	return nil
}

// OperatorActive reports whether the credential op was authenticated with
// still works: its token exists and, for a session, the session too. Live
// connections check it once registered, so a revocation that raced their
// authentication still ends them.
func (r *Registry) OperatorActive(op Operator) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if op.TokenID == envTokenID {
		if r.bootstrap == nil {
			return false
		}
	} else if r.operators[op.TokenID] == nil {
		return false
	}
	if op.Session == "" {
		return true
	}
	var h TokenHash
	if b, err := hex.DecodeString(op.Session); err != nil || len(b) != len(h) {
		return false
	} else {
		copy(h[:], b)
	}
	s := r.sessions[h]
	return s != nil && s.TokenID == op.TokenID
}

// tokenSessionsLocked returns the sessions of a token. Callers hold mu.
func (r *Registry) tokenSessionsLocked(tokenID string) []*session {
	var out []*session
	for _, s := range r.sessions {
		if s.TokenID == tokenID {
			out = append(out, s)
		}
	}
	return out
}

// refreshSessionsLocked takes the store's sessions after a Refresh:
// sessions another instance created appear, those it deleted end here.
// It returns the ends to announce. Callers hold mu.
func (r *Registry) refreshSessionsLocked(stored []OperatorSession, now time.Time) []OperatorEnded {
	seen := make(map[TokenHash]bool, len(stored))
	for _, o := range stored {
		seen[o.Hash] = true
		if s := r.sessions[o.Hash]; s != nil {
			if o.LastUsed.After(s.LastUsed) {
				s.LastUsed = o.LastUsed
			}
			continue
		}
		if r.operators[o.TokenID] == nil {
			continue
		}
		s := &session{OperatorSession: o}
		r.sessions[o.Hash] = s
		r.scheduleSessionLocked(s, now)
	}
	var ends []OperatorEnded
	for h, s := range r.sessions {
		if seen[h] || s.memOnly {
			continue
		}
		if s.timer != nil {
			s.timer.Stop()
		}
		delete(r.sessions, h)
		ends = append(ends, OperatorEnded{TokenID: s.TokenID, Session: s.Key(), Reason: "signed_out"})
	}
	return ends
}

// SessionMax is how long a session may last at most, for the cookie's
// Max-Age.
func (r *Registry) SessionMax() time.Duration { return r.opts.SessionMax }
