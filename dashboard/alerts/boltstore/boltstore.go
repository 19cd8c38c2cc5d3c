// Package boltstore is the embedded alerts.Store and notify.Outbox: its
// own buckets (alert_*) in the registry's bbolt file (the *bbolt.DB
// devices.BoltStore opened, handed in by cmd/fieldhub). Every transition,
// its timeline events and its outbox entries are written in one bbolt
// transaction. It may import dashboard/alerts, its notify package and
// bbolt.
package boltstore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fieldhub/fieldhub/dashboard/alerts"
	"github.com/fieldhub/fieldhub/dashboard/alerts/notify"
)

// Store keeps alerts in an open bbolt database, which it does not own:
// whoever opened db closes it.
type Store struct {
	db *bolt.DB
	// MaxOutbox bounds the deliveries queued per target (default
	// alerts.MaxOutboxPerTgt); past it the oldest is dropped and counted.
	MaxOutbox int
	dropped   atomic.Int64
}

// New returns the Store over db.
func New(db *bolt.DB) *Store { return &Store{db: db, MaxOutbox: alerts.MaxOutboxPerTgt} }

// OutboxDropped counts deliveries dropped because a target's outbox was full.
func (s *Store) OutboxDropped() int64 { return s.dropped.Load() }

var (
	bRules    = []byte("alert_rules")
	bAlerts   = []byte("alert_alerts")
	bOpen     = []byte("alert_open")     // rule NUL device -> alert id
	bResolved = []byte("alert_resolved") // resolved_at ns (8 bytes) + id -> nil
	bEvents   = []byte("alert_events")   // id NUL seq (8 bytes) -> event
	bSilences = []byte("alert_silences")
	bOutbox   = []byte("alert_outbox")      // target NUL seq (8 bytes) -> delivery
	bOutKeys  = []byte("alert_outbox_keys") // target NUL key -> seq
	bMeta     = []byte("alert_meta")        // counters
)

func u64(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

func buckets(tx *bolt.Tx) (map[string]*bolt.Bucket, error) {
	m := map[string]*bolt.Bucket{}
	for _, name := range [][]byte{bRules, bAlerts, bOpen, bResolved, bEvents, bSilences, bOutbox, bOutKeys, bMeta} {
		b, err := tx.CreateBucketIfNotExists(name)
		if err != nil {
			return nil, err
		}
		m[string(name)] = b
	}
	return m, nil
}

func (s *Store) update(what string, f func(bk map[string]*bolt.Bucket) error) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		bk, err := buckets(tx)
		if err != nil {
			return err
		}
		return f(bk)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func (s *Store) view(f func(tx *bolt.Tx) error) error { return s.db.View(f) }

// PutRule stores r, a compare-and-set on its version (alerts.RuleStore).
func (s *Store) PutRule(ctx context.Context, r alerts.Rule, prev int64) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.update("store alert rule", func(bk map[string]*bolt.Bucket) error {
		old := bk[string(bRules)].Get([]byte(r.ID))
		switch {
		case prev == 0 && old != nil:
			return alerts.ErrConflict
		case prev != 0 && old == nil:
			return alerts.ErrNotFound
		case prev != 0:
			var o alerts.Rule
			if err := json.Unmarshal(old, &o); err != nil {
				return err
			}
			if o.Version != prev {
				return alerts.ErrConflict
			}
		}
		return bk[string(bRules)].Put([]byte(r.ID), v)
	})
}

// DeleteRule removes a rule; its open alerts are the engine's to resolve.
func (s *Store) DeleteRule(ctx context.Context, id string) error {
	return s.update("delete alert rule", func(bk map[string]*bolt.Bucket) error {
		if bk[string(bRules)].Get([]byte(id)) == nil {
			return alerts.ErrNotFound
		}
		return bk[string(bRules)].Delete([]byte(id))
	})
}

// Rules lists every rule.
func (s *Store) Rules(ctx context.Context) ([]alerts.Rule, error) {
	out := []alerts.Rule{}
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bRules)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var r alerts.Rule
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list alert rules: %w", err)
	}
	return out, nil
}

func openKey(rule, device string) []byte { return []byte(rule + "\x00" + device) }

func eventKey(id string, seq int64) []byte { return append([]byte(id+"\x00"), u64(uint64(seq))...) }

func counter(b *bolt.Bucket, name string, delta int64) int64 {
	var n int64
	if v := b.Get([]byte(name)); len(v) == 8 {
		n = int64(binary.BigEndian.Uint64(v))
	}
	n += delta
	_ = b.Put([]byte(name), u64(uint64(n)))
	return n
}

// Apply writes one transition atomically (alerts.AlertStore).
func (s *Store) Apply(ctx context.Context, t alerts.Transition) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	rec, err := json.Marshal(t.Alert)
	if err != nil {
		return err
	}
	return s.update("store alert transition", func(bk map[string]*bolt.Bucket) error {
		ab, ob := bk[string(bAlerts)], bk[string(bOpen)]
		id := []byte(t.Alert.ID)
		old := ab.Get(id)
		if t.Prev == 0 {
			if old != nil || ob.Get(openKey(t.Alert.RuleID, t.Alert.Device)) != nil {
				return alerts.ErrConflict
			}
		} else {
			if old == nil {
				return alerts.ErrConflict
			}
			var o alerts.Record
			if err := json.Unmarshal(old, &o); err != nil {
				return err
			}
			if o.Version != t.Prev || !o.Open() {
				return alerts.ErrConflict
			}
		}
		if t.Alert.Version != t.Prev+1 {
			return fmt.Errorf("version %d after %d", t.Alert.Version, t.Prev)
		}
		if err := ab.Put(id, rec); err != nil {
			return err
		}
		if t.Alert.Open() {
			if err := ob.Put(openKey(t.Alert.RuleID, t.Alert.Device), id); err != nil {
				return err
			}
		} else {
			if err := ob.Delete(openKey(t.Alert.RuleID, t.Alert.Device)); err != nil {
				return err
			}
			if err := s.addResolved(bk, t.Alert); err != nil {
				return err
			}
		}
		eb := bk[string(bEvents)]
		for _, ev := range t.Events {
			v, err := json.Marshal(ev)
			if err != nil {
				return err
			}
			if err := eb.Put(eventKey(t.Alert.ID, ev.Seq), v); err != nil {
				return err
			}
		}
		// The timeline keeps the newest MaxEventsPerAlert.
		if cut := t.Alert.Seq - alerts.MaxEventsPerAlert; cut > 0 {
			prefix := []byte(t.Alert.ID + "\x00")
			c := eb.Cursor()
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && int64(binary.BigEndian.Uint64(k[len(prefix):])) <= cut; k, _ = c.Seek(prefix) {
				if err := eb.Delete(k); err != nil {
					return err
				}
			}
		}
		for _, target := range t.Targets {
			for _, n := range t.Notify {
				if err := s.enqueue(bk, target, n); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// addResolved indexes a resolved alert and drops the oldest beyond
// alerts.MaxResolvedKept, with their timelines.
func (s *Store) addResolved(bk map[string]*bolt.Bucket, r alerts.Record) error {
	rb := bk[string(bResolved)]
	at := r.Since
	if r.ResolvedAt != nil {
		at = *r.ResolvedAt
	}
	if err := rb.Put(append(u64(uint64(at.UnixNano())), r.ID...), nil); err != nil {
		return err
	}
	if counter(bk[string(bMeta)], "resolved", 1) <= alerts.MaxResolvedKept {
		return nil
	}
	k, _ := rb.Cursor().First()
	id := string(k[8:])
	if err := rb.Delete(k); err != nil {
		return err
	}
	counter(bk[string(bMeta)], "resolved", -1)
	if err := bk[string(bAlerts)].Delete([]byte(id)); err != nil {
		return err
	}
	eb, prefix := bk[string(bEvents)], []byte(id+"\x00")
	c := eb.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := eb.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

type stored struct {
	notify.Delivery
	Seq        uint64    `json:"seq"`
	LeaseUntil time.Time `json:"lease_until"`
}

func outKey(target string, seq uint64) []byte { return append([]byte(target+"\x00"), u64(seq)...) }

func (s *Store) enqueue(bk map[string]*bolt.Bucket, target string, n notify.Notification) error {
	kb, qb := bk[string(bOutKeys)], bk[string(bOutbox)]
	if kb.Get([]byte(target+"\x00"+n.Key)) != nil {
		return nil // queued already: one entry per transition and target
	}
	seq, err := qb.NextSequence()
	if err != nil {
		return err
	}
	v, err := json.Marshal(stored{Delivery: notify.Delivery{Notification: n, Target: target, NextAt: n.At}, Seq: seq})
	if err != nil {
		return err
	}
	if err := qb.Put(outKey(target, seq), v); err != nil {
		return err
	}
	if err := kb.Put([]byte(target+"\x00"+n.Key), u64(seq)); err != nil {
		return err
	}
	// Full: the oldest delivery of the target is dropped and counted.
	if counter(bk[string(bMeta)], "outbox\x00"+target, 1) > int64(s.MaxOutbox) {
		prefix := []byte(target + "\x00")
		k, ov := qb.Cursor().Seek(prefix)
		if k != nil && bytes.HasPrefix(k, prefix) {
			var old stored
			if err := json.Unmarshal(ov, &old); err != nil {
				return err
			}
			if err := qb.Delete(k); err != nil {
				return err
			}
			if err := kb.Delete([]byte(target + "\x00" + old.Key)); err != nil {
				return err
			}
			counter(bk[string(bMeta)], "outbox\x00"+target, -1)
			s.dropped.Add(1)
		}
	}
	return nil
}

// Open lists open alerts, of one device or ("") all (alerts.AlertStore).
func (s *Store) Open(ctx context.Context, device string) ([]alerts.Record, error) {
	out := []alerts.Record{}
	err := s.view(func(tx *bolt.Tx) error {
		ob, ab := tx.Bucket(bOpen), tx.Bucket(bAlerts)
		if ob == nil {
			return nil
		}
		return ob.ForEach(func(k, id []byte) error {
			if device != "" && !bytes.HasSuffix(k, []byte("\x00"+device)) {
				return nil
			}
			var r alerts.Record
			if err := json.Unmarshal(ab.Get(id), &r); err != nil {
				return err
			}
			if device == "" || r.Device == device {
				out = append(out, r)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list open alerts: %w", err)
	}
	return out, nil
}

// Alert returns one alert with its timeline, oldest first.
func (s *Store) Alert(ctx context.Context, id string) (alerts.Record, []alerts.Event, error) {
	var r alerts.Record
	evs := []alerts.Event{}
	err := s.view(func(tx *bolt.Tx) error {
		ab := tx.Bucket(bAlerts)
		if ab == nil {
			return alerts.ErrNotFound
		}
		v := ab.Get([]byte(id))
		if v == nil {
			return alerts.ErrNotFound
		}
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		prefix := []byte(id + "\x00")
		c := tx.Bucket(bEvents).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var ev alerts.Event
			if err := json.Unmarshal(v, &ev); err != nil {
				return err
			}
			evs = append(evs, ev)
		}
		return nil
	})
	if err != nil {
		return r, nil, fmt.Errorf("alert %q: %w", id, err)
	}
	return r, evs, nil
}

// Alerts lists alerts matching q: open ones first, newest first.
func (s *Store) Alerts(ctx context.Context, q alerts.Query) ([]alerts.Record, error) {
	var all []alerts.Record
	err := s.view(func(tx *bolt.Tx) error {
		ab := tx.Bucket(bAlerts)
		if ab == nil {
			return nil
		}
		return ab.ForEach(func(_, v []byte) error {
			var r alerts.Record
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			if q.Matches(&r) {
				all = append(all, r)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list alerts: %w", err)
	}
	SortAlerts(all)
	if q.Limit > 0 && len(all) > q.Limit {
		all = all[:q.Limit]
	}
	if all == nil {
		all = []alerts.Record{}
	}
	return all, nil
}

// SortAlerts orders alerts open first, then newest started first.
func SortAlerts(list []alerts.Record) {
	slices.SortFunc(list, func(a, b alerts.Record) int {
		if a.Open() != b.Open() {
			if a.Open() {
				return -1
			}
			return 1
		}
		return cmp.Or(b.StartedAt.Compare(a.StartedAt), cmp.Compare(b.ID, a.ID))
	})
}

// PutSilence stores a silence, dropping the ones that ended.
func (s *Store) PutSilence(ctx context.Context, sil alerts.Silence) error {
	v, err := json.Marshal(sil)
	if err != nil {
		return err
	}
	return s.update("store silence", func(bk map[string]*bolt.Bucket) error {
		b := bk[string(bSilences)]
		var ended [][]byte
		_ = b.ForEach(func(k, v []byte) error {
			var o alerts.Silence
			if json.Unmarshal(v, &o) == nil && o.Until.Before(sil.CreatedAt) {
				ended = append(ended, bytes.Clone(k))
			}
			return nil
		})
		for _, k := range ended {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return b.Put([]byte(sil.ID), v)
	})
}

// DeleteSilence removes a silence.
func (s *Store) DeleteSilence(ctx context.Context, id string) error {
	return s.update("delete silence", func(bk map[string]*bolt.Bucket) error {
		if bk[string(bSilences)].Get([]byte(id)) == nil {
			return alerts.ErrNotFound
		}
		return bk[string(bSilences)].Delete([]byte(id))
	})
}

// Silences lists every stored silence.
func (s *Store) Silences(ctx context.Context) ([]alerts.Silence, error) {
	out := []alerts.Silence{}
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bSilences)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var sil alerts.Silence
			if err := json.Unmarshal(v, &sil); err != nil {
				return err
			}
			out = append(out, sil)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list silences: %w", err)
	}
	return out, nil
}

// Claim leases up to max due deliveries of target, oldest first
// (notify.Outbox).
func (s *Store) Claim(ctx context.Context, target string, now time.Time, lease time.Duration, max int) ([]notify.Delivery, error) {
	var out []notify.Delivery
	err := s.update("claim notifications", func(bk map[string]*bolt.Bucket) error {
		qb := bk[string(bOutbox)]
		prefix := []byte(target + "\x00")
		c := qb.Cursor()
		type upd struct{ k, v []byte }
		var puts []upd
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(out) < max; k, v = c.Next() {
			var d stored
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			if d.NextAt.After(now) || d.LeaseUntil.After(now) {
				continue
			}
			d.LeaseUntil = now.Add(lease)
			nv, err := json.Marshal(d)
			if err != nil {
				return err
			}
			puts = append(puts, upd{bytes.Clone(k), nv})
			out = append(out, d.Delivery)
		}
		for _, p := range puts {
			if err := qb.Put(p.k, p.v); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

func (s *Store) find(bk map[string]*bolt.Bucket, target, key string) ([]byte, *stored, error) {
	seq := bk[string(bOutKeys)].Get([]byte(target + "\x00" + key))
	if seq == nil {
		return nil, nil, alerts.ErrNotFound
	}
	k := append([]byte(target+"\x00"), seq...)
	v := bk[string(bOutbox)].Get(k)
	if v == nil {
		return nil, nil, alerts.ErrNotFound
	}
	var d stored
	if err := json.Unmarshal(v, &d); err != nil {
		return nil, nil, err
	}
	return k, &d, nil
}

// Delivered removes a delivery for good (notify.Outbox).
func (s *Store) Delivered(ctx context.Context, target, key string) error {
	return s.update("mark notification delivered", func(bk map[string]*bolt.Bucket) error {
		k, _, err := s.find(bk, target, key)
		if err != nil {
			return err
		}
		if err := bk[string(bOutbox)].Delete(k); err != nil {
			return err
		}
		counter(bk[string(bMeta)], "outbox\x00"+target, -1)
		return bk[string(bOutKeys)].Delete([]byte(target + "\x00" + key))
	})
}

// Retry records a failed attempt and ends the lease (notify.Outbox).
func (s *Store) Retry(ctx context.Context, target, key string, attempts int, next time.Time, lastErr string) error {
	return s.update("reschedule notification", func(bk map[string]*bolt.Bucket) error {
		k, d, err := s.find(bk, target, key)
		if err != nil {
			return err
		}
		d.Attempts, d.NextAt, d.LastError, d.LeaseUntil = attempts, next, lastErr, time.Time{}
		v, err := json.Marshal(d)
		if err != nil {
			return err
		}
		return bk[string(bOutbox)].Put(k, v)
	})
}

var _ alerts.Store = (*Store)(nil)

// Queued says how many deliveries of target wait in the outbox
// (notify.QueueCounter), from the counter the outbox keeps.
func (s *Store) Queued(ctx context.Context, target string) (int, error) {
	var n int64
	err := s.view(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bMeta); b != nil {
			if v := b.Get([]byte("outbox\x00" + target)); len(v) == 8 {
				n = int64(binary.BigEndian.Uint64(v))
			}
		}
		return nil
	})
	return int(n), err
}
