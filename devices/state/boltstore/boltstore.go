// Package boltstore is the embedded state.Store: the "device_state"
// bucket of the registry's bbolt file (the *bbolt.DB devices.BoltStore
// opened, handed in by cmd/fieldhub), one key per device and side
// (device NUL side), the document's JSON as the value. A bbolt write
// transaction is exclusive, so the compare-and-set is a read and a write
// in one Update. It may import devices/state and bbolt.
package boltstore

import (
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/fieldhub/fieldhub/devices/state"
)

// Store keeps state documents in an open bbolt database, which it does
// not own: whoever opened db closes it.
type Store struct {
	db *bolt.DB
}

// New returns the Store over db.
func New(db *bolt.DB) *Store { return &Store{db: db} }

var bucket = []byte("device_state")

func key(device string, side state.Side) []byte { return []byte(device + "\x00" + string(side)) }

// LoadState returns both documents of device; one never written is the
// zero document.
func (s *Store) LoadState(ctx context.Context, device string) (reported, desired state.Doc, err error) {
	if err := ctx.Err(); err != nil {
		return reported, desired, err
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		var err error
		if reported, err = get(b, device, state.Reported); err != nil {
			return err
		}
		desired, err = get(b, device, state.Desired)
		return err
	})
	if err != nil {
		return reported, desired, fmt.Errorf("load state: %w", err)
	}
	return reported, desired, nil
}

func get(b *bolt.Bucket, device string, side state.Side) (state.Doc, error) {
	v := b.Get(key(device, side))
	if v == nil {
		return state.Doc{}, nil
	}
	return state.DecodeDoc(v)
}

// SaveDoc writes doc if the stored version of side is prev.
func (s *Store) SaveDoc(ctx context.Context, device string, side state.Side, doc state.Doc, prev int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v, err := state.EncodeDoc(doc)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		cur, err := get(b, device, side)
		if err != nil {
			return err
		}
		if cur.Version != prev {
			return fmt.Errorf("%s version is %d, not %d: %w", side, cur.Version, prev, state.ErrConflict)
		}
		return b.Put(key(device, side), v)
	})
}

// DesiredVersions returns the desired version of each listed device that
// has one.
func (s *Store) DesiredVersions(ctx context.Context, devices []string) (map[string]int64, error) {
	out := map[string]int64{}
	if err := ctx.Err(); err != nil {
		return out, err
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		for _, id := range devices {
			d, err := get(b, id, state.Desired)
			if err != nil {
				return err
			}
			if d.Version > 0 {
				out[id] = d.Version
			}
		}
		return nil
	})
	return out, err
}

// Forget deletes both documents of a deleted device.
func (s *Store) Forget(ctx context.Context, device string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		if err := b.Delete(key(device, state.Reported)); err != nil {
			return err
		}
		return b.Delete(key(device, state.Desired))
	})
}
