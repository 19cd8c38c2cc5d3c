package devices

import (
	"context"
	"fmt"
	"slices"
)

// Refresh catches up with changes other hub instances sharing the store
// made: devices created, rotated or deleted, operator tokens, sessions.
// With a ChangeFeed store (PostgreSQL) it reads only the devices changed
// since the snapshot's cursor; other stores are reloaded whole. Devices
// whose tokens changed or that are gone get OnCredentialsChanged, so their
// sessions on this instance are checked again; operator tokens and sessions
// that are gone get OnOperatorEnded; presence, which is per instance, is
// kept. It holds the device writer token throughout, and mu only to swap
// operator state.
func (r *Registry) Refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.StoreTimeout)
	defer cancel()
	if err := r.lockWriter(ctx); err != nil {
		return fmt.Errorf("refresh registry: %w", err)
	}
	cur := r.snap.Load()
	// Operator tokens and sessions are written under mu, not the writer
	// token: a load that may predate one of our own writes is done again,
	// and after a few tries under mu.
	var ch Changes
	for attempt := 0; ; attempt++ {
		r.mu.RLock()
		gen := r.gen
		r.mu.RUnlock()
		var err error
		if ch, err = r.changesSince(ctx, cur.cursor); err != nil {
			r.unlockWriter()
			return fmt.Errorf("refresh registry: %w", err)
		}
		r.mu.Lock()
		if r.gen == gen {
			break // keep mu
		}
		if attempt < 3 {
			r.mu.Unlock()
			continue
		}
		if ch, err = r.changesSince(ctx, cur.cursor); err != nil {
			r.mu.Unlock()
			r.unlockWriter()
			return fmt.Errorf("refresh registry: %w", err)
		}
		break
	}
	if r.closed {
		r.mu.Unlock()
		r.unlockWriter()
		return nil
	}
	next, changed, expiries := applyChanges(cur, ch)
	r.snap.Store(next)
	now := r.opts.Now()
	ends := r.refreshOperatorsLocked(ch)
	r.mu.Unlock()
	r.unlockWriter()
	for _, e := range expiries {
		for _, t := range e.Tokens {
			r.scheduleExpiry(e.ID, t.ExpiresAt, now)
		}
	}
	for _, id := range changed {
		r.stopTimersIfGone(id)
		r.changed(id)
	}
	for _, e := range ends {
		r.ended(e)
	}
	return nil
}

// changesSince asks a ChangeFeed store for what changed after cursor, or
// reloads any other store whole.
func (r *Registry) changesSince(ctx context.Context, cursor uint64) (Changes, error) {
	if f, ok := r.store.(ChangeFeed); ok {
		return f.ChangesSince(ctx, cursor)
	}
	snap, err := r.store.Load(ctx)
	if err != nil {
		return Changes{}, err
	}
	return Changes{Full: true, Devices: snap.Devices, Operators: snap.Operators, Sessions: snap.Sessions, Cursor: snap.Cursor}, nil
}

// applyChanges builds the snapshot that follows cur once ch is applied. It
// returns the ids whose credentials changed or that are gone, and the
// records whose token expiries need timers. It is a pure function of its
// inputs: the caller publishes the result.
func applyChanges(cur *snapshot, ch Changes) (next *snapshot, changed []string, expiries []Record) {
	next = cur.clone()
	next.cursor = ch.Cursor
	seen := make(map[string]bool, len(ch.Devices))
	for _, rec := range ch.Devices {
		seen[rec.ID] = true
		d, ok := next.devices[rec.ID]
		if ok && sameTokens(d.rec.Tokens, rec.Tokens) {
			// Same credentials: take labels and name; last_seen stays ours
			// unless the store's is newer.
			raiseLastSeen(d.live, rec)
			next.devices[rec.ID] = &device{rec: rec, live: d.live}
			continue
		}
		live := newLive(rec.LastSeen)
		if ok {
			for _, t := range d.rec.Tokens {
				delete(next.byHash, t.Hash)
			}
			raiseLastSeen(d.live, rec)
			live = d.live
			changed = append(changed, rec.ID)
		}
		next.devices[rec.ID] = &device{rec: rec, live: live}
		for _, t := range rec.Tokens {
			next.byHash[t.Hash] = rec.ID
		}
		expiries = append(expiries, rec)
	}
	gone := ch.Deleted
	if ch.Full {
		gone = nil
		for id := range next.devices {
			if !seen[id] {
				gone = append(gone, id)
			}
		}
	}
	for _, id := range gone {
		if d, ok := next.devices[id]; ok && !seen[id] {
			forget(next, id, d)
			changed = append(changed, id)
		}
	}
	return next, changed, expiries
}

// sameTokens reports whether two token lists are the same credentials:
// same hashes, same expiry instants (a time read back from a store has
// lost its monotonic reading and maybe its zone, so == would not do).
func sameTokens(a, b []StoredToken) bool {
	return slices.EqualFunc(a, b, func(x, y StoredToken) bool {
		return x.Hash == y.Hash && x.ExpiresAt.Equal(y.ExpiresAt)
	})
}

// raiseLastSeen takes the store's last_seen when it is newer than ours
// (another instance heard from the device later).
func raiseLastSeen(l *liveState, rec Record) {
	if n := nanos(rec.LastSeen); n > l.lastSeen.Load() {
		l.lastSeen.Store(n)
		l.stored.Store(n)
	}
}

// stopTimersIfGone drops the timers of a device that Refresh found gone.
func (r *Registry) stopTimersIfGone(id string) {
	if !r.Exists(id) {
		r.stopTimers(id)
	}
}

// refreshOperatorsLocked takes the store's operator tokens and sessions
// and returns the ends to announce. Callers hold mu.
func (r *Registry) refreshOperatorsLocked(ch Changes) []OperatorEnded {
	var ends []OperatorEnded
	ops := make(map[string]*OperatorToken, len(ch.Operators))
	opByHash := make(map[TokenHash]string, len(ch.Operators))
	for _, o := range ch.Operators {
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
	return append(ends, r.refreshSessionsLocked(ch.Sessions, r.opts.Now())...)
}
