package devices

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Role is what an operator token may do. Each role includes the ones below.
type Role string

// Roles, lowest first.
const (
	RoleViewer   Role = "viewer"   // read devices, readings, live values
	RoleOperator Role = "operator" // + send commands
	RoleAdmin    Role = "admin"    // + manage devices and tokens
)

func (r Role) rank() int {
	switch r {
	case RoleViewer:
		return 1
	case RoleOperator:
		return 2
	case RoleAdmin:
		return 3
	}
	return 0
}

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return r.rank() > 0 }

// Allows reports whether a token with role r may do what needs role need.
func (r Role) Allows(need Role) bool { return r.rank() >= need.rank() && need.rank() > 0 }

// BootstrapAdminName names the admin token the hub generates on first start
// when FIELDHUB_ADMIN_TOKEN is unset.
const BootstrapAdminName = "bootstrap-admin"

// SetBootstrapAdmin makes token (from FIELDHUB_ADMIN_TOKEN) an admin
// credential for this process. It is never stored.
func (r *Registry) SetBootstrapAdmin(token string) {
	h := HashToken(token)
	r.mu.Lock()
	r.bootstrap = &h
	r.mu.Unlock()
}

// EnsureAdmin generates and stores an admin token when none exists, for a
// first start without FIELDHUB_ADMIN_TOKEN. It returns the new secret (to be
// shown once) or "" when an admin token already exists.
func (r *Registry) EnsureAdmin(ctx context.Context) (string, error) {
	r.mu.RLock()
	for _, o := range r.operators {
		if o.Role == RoleAdmin {
			r.mu.RUnlock()
			return "", nil
		}
	}
	r.mu.RUnlock()
	_, secret, err := r.CreateOperatorToken(ctx, BootstrapAdminName, RoleAdmin)
	return secret, err
}

// CreateOperatorToken issues an API token; the secret is returned once.
func (r *Registry) CreateOperatorToken(ctx context.Context, name string, role Role) (OperatorToken, string, error) {
	if !role.Valid() {
		return OperatorToken{}, "", fmt.Errorf("%w: role must be viewer, operator or admin", ErrInvalid)
	}
	name = strings.TrimSpace(name)
	if name == "" || len(name) > MaxNameLen {
		return OperatorToken{}, "", fmt.Errorf("%w: name must be 1 to %d bytes", ErrInvalid, MaxNameLen)
	}
	if telemetry.HasControl(name) {
		return OperatorToken{}, "", fmt.Errorf("%w: name must be UTF-8 text without control characters", ErrInvalid)
	}
	secret := newToken(OperatorTokenPrefix)
	var idb [8]byte
	_, _ = rand.Read(idb[:])
	o := OperatorToken{ID: "tok-" + hex.EncodeToString(idb[:]), Name: name, Role: role,
		CreatedAt: r.opts.Now().UTC().Truncate(time.Millisecond), Hash: HashToken(secret)}
	r.mu.Lock()
	if err := r.applyLocked(ctx, Change{PutOperators: []OperatorToken{o}}); err != nil {
		r.mu.Unlock()
		return OperatorToken{}, "", err
	}
	r.operators[o.ID] = &o
	r.opByHash[o.Hash] = o.ID
	r.mu.Unlock()
	r.notify(func() Changed { return Changed{Operators: true} })
	return o, secret, nil
}

// ListOperatorTokens returns every operator token, oldest first.
func (r *Registry) ListOperatorTokens() []OperatorToken {
	r.mu.RLock()
	out := make([]OperatorToken, 0, len(r.operators))
	for _, o := range r.operators {
		out = append(out, *o)
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b OperatorToken) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out
}

// RevokeOperatorToken deletes an operator token and its dashboard
// sessions; they stop working at once, and OnOperatorEnded closes the
// connections they opened.
func (r *Registry) RevokeOperatorToken(ctx context.Context, id string) error {
	r.mu.Lock()
	o, ok := r.operators[id]
	if !ok {
		r.mu.Unlock()
		return fmt.Errorf("token %q: %w", id, ErrNotFound)
	}
	// The token and its dashboard sessions go in one write.
	sessions := r.tokenSessionsLocked(id)
	c := Change{DeleteOperators: []string{id}}
	for _, s := range sessions {
		c.DeleteSessions = append(c.DeleteSessions, s.Hash)
	}
	if err := r.applyLocked(ctx, c); err != nil {
		r.mu.Unlock()
		return err
	}
	for _, s := range sessions {
		if s.timer != nil {
			s.timer.Stop()
		}
		delete(r.sessions, s.Hash)
	}
	delete(r.opByHash, o.Hash)
	delete(r.operators, id)
	r.mu.Unlock()
	r.ended(OperatorEnded{TokenID: id, Reason: "revoked"})
	r.notify(func() Changed { return Changed{Operators: true} })
	return nil
}

// Operator is an authenticated operator.
type Operator struct {
	TokenID string
	Name    string
	Role    Role
	// Session is the key (OperatorSession.Key) of the dashboard session
	// the operator came with, empty for a bearer token.
	Session string
}

// lastUsedEvery bounds how often last_used is written per token.
const lastUsedEvery = time.Minute

// AuthenticateOperator returns the operator a token belongs to.
func (r *Registry) AuthenticateOperator(ctx context.Context, token string) (Operator, bool) {
	if token == "" || len(token) > 256 {
		return Operator{}, false
	}
	h := HashToken(token)
	now := r.opts.Now().UTC()
	r.mu.Lock()
	if r.bootstrap != nil && r.bootstrap.Equal(h) {
		r.mu.Unlock()
		return Operator{TokenID: envTokenID, Name: EnvAdminName, Role: RoleAdmin}, true
	}
	id, ok := r.opByHash[h]
	if !ok {
		r.mu.Unlock()
		return Operator{}, false
	}
	o := r.operators[id]
	if !o.Hash.Equal(h) {
		r.mu.Unlock()
		return Operator{}, false
	}
	op := Operator{TokenID: o.ID, Name: o.Name, Role: o.Role}
	var persist *OperatorToken
	if now.Sub(o.LastUsed) > lastUsedEvery {
		o.LastUsed = now.Truncate(time.Second)
		cp := *o
		persist = &cp
	}
	r.mu.Unlock()
	if persist != nil {
		if err := r.store.Apply(ctx, Change{PutOperators: []OperatorToken{*persist}}); err != nil {
			r.log.Warn("persist token last_used", "token_id", persist.ID, "err", err)
		}
	}
	return op, true
}
