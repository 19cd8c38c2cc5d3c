// Package boltstore is the embedded ledger.Store: the "ledger" bucket of
// the registry's bbolt file (the *bbolt.DB devices.BoltStore opened,
// handed in by cmd/fieldhub), keyed instance NUL device. It may import
// devices/ledger and bbolt.
package boltstore

import (
	"bytes"
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Store keeps ledger records in an open bbolt database, which it does not
// own: whoever opened db closes it.
type Store struct {
	db *bolt.DB
}

// New returns the Store over db.
func New(db *bolt.DB) *Store { return &Store{db: db} }

var bucketLedger = []byte("ledger")

func key(instance, device string) []byte { return []byte(instance + "\x00" + device) }

// LoadLedger returns instance's records by device.
func (s *Store) LoadLedger(ctx context.Context, instance string) (map[string][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	prefix := key(instance, "")
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLedger)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			out[string(k[len(prefix):])] = bytes.Clone(v)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load ledger: %w", err)
	}
	return out, nil
}

// SaveLedger upserts put and deletes del, in one transaction.
func (s *Store) SaveLedger(ctx context.Context, instance string, put map[string][]byte, del []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketLedger)
		if err != nil {
			return err
		}
		for dev, v := range put {
			if err := b.Put(key(instance, dev), v); err != nil {
				return err
			}
		}
		for _, dev := range del {
			if err := b.Delete(key(instance, dev)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save ledger: %w", err)
	}
	return nil
}
