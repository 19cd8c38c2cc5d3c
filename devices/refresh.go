package devices

import (
	"context"
	"fmt"
	"slices"
)

// Refresh reloads the registry from its store, for hub instances sharing
// one store: another instance created, rotated or deleted devices or
// operator tokens or sessions. Devices whose tokens changed or that are
// gone get OnCredentialsChanged, so their sessions on this instance are
// checked again; operator tokens and sessions that are gone get
// OnOperatorEnded; presence, which is per instance, is kept.
func (r *Registry) Refresh(ctx context.Context) error {
	// Load without the lock, so authentication goes on meanwhile; a
	// snapshot that may predate a write of our own is loaded again, and
	// after a few tries under the lock.
	var snap Snapshot
	for attempt := 0; ; attempt++ {
		r.mu.RLock()
		gen := r.gen
		r.mu.RUnlock()
		var err error
		if snap, err = r.store.Load(ctx); err != nil {
			return fmt.Errorf("refresh registry: %w", err)
		}
		r.mu.Lock()
		if r.gen == gen {
			break // keep the lock
		}
		if attempt < 3 {
			r.mu.Unlock()
			continue
		}
		if snap, err = r.store.Load(ctx); err != nil {
			r.mu.Unlock()
			return fmt.Errorf("refresh registry: %w", err)
		}
		break
	}
	now := r.opts.Now()
	var changed []string
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	seen := make(map[string]bool, len(snap.Devices))
	for _, rec := range snap.Devices {
		seen[rec.ID] = true
		e, ok := r.devices[rec.ID]
		if ok && slices.Equal(e.rec.Tokens, rec.Tokens) {
			// Same credentials: take labels and name, keep our last_seen
			// when it is newer.
			if e.rec.LastSeen.After(rec.LastSeen) {
				rec.LastSeen = e.rec.LastSeen
			}
			e.rec = rec
			continue
		}
		if ok {
			for _, t := range e.rec.Tokens {
				delete(r.byHash, t.Hash)
			}
			changed = append(changed, rec.ID)
		} else {
			e = &entry{}
			if !rec.LastSeen.IsZero() {
				ls := rec.LastSeen
				e.presence.LastSeen = &ls
			}
			r.devices[rec.ID] = e
		}
		e.rec = rec
		for _, t := range rec.Tokens {
			r.byHash[t.Hash] = rec.ID
			r.scheduleExpiry(rec.ID, t.ExpiresAt, now)
		}
	}
	for id, e := range r.devices {
		if seen[id] {
			continue
		}
		r.forgetLocked(id, e)
		changed = append(changed, id)
	}
	var ends []OperatorEnded
	ops := make(map[string]*OperatorToken, len(snap.Operators))
	opByHash := make(map[TokenHash]string, len(snap.Operators))
	for _, o := range snap.Operators {
		if cur, ok := r.operators[o.ID]; ok && cur.LastUsed.After(o.LastUsed) {
			o.LastUsed = cur.LastUsed
		}
		ops[o.ID] = &o
		opByHash[o.Hash] = o.ID
	}
	for id := range r.operators {
		if ops[id] == nil {
			ends = append(ends, OperatorEnded{TokenID: id, Reason: "revoked"})
		}
	}
	r.operators, r.opByHash = ops, opByHash
	ends = append(ends, r.refreshSessionsLocked(snap.Sessions, now)...)
	r.mu.Unlock()
	for _, id := range changed {
		r.changed(id)
	}
	for _, e := range ends {
		r.ended(e)
	}
	return nil
}
