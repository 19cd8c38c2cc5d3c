// Package boltstore is the embedded commands.Store: the "commands"
// bucket of the registry's bbolt file (the *bbolt.DB devices.BoltStore
// opened, handed in by cmd/fieldhub), keyed device NUL id so that a
// device's commands sort by id. The bucket and its JSON values are those
// devices kept before the commands package existed: an existing data
// directory loads its commands. It may import bridge/commands, devices
// (errors) and bbolt.
package boltstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/devices"
)

// Store keeps commands in an open bbolt database, which it does not own:
// whoever opened db closes it.
type Store struct {
	db *bolt.DB
}

// New returns the Store over db.
func New(db *bolt.DB) *Store { return &Store{db: db} }

var bucketCommands = []byte("commands")

func commandKey(device, id string) []byte { return []byte(device + "\x00" + id) }

// PutCommand stores a command, creating or replacing it. Creating one
// prunes the device's oldest final commands beyond commands.MaxKept. A
// command whose stored status is final is never changed again: with
// several instances sharing a store, a late write of an older status
// (one instance marking "sent" after another recorded the result) must
// not undo the result; the first final status wins.
func (s *Store) PutCommand(ctx context.Context, c commands.Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode command: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketCommands)
		if err != nil {
			return err
		}
		key := commandKey(c.Device, c.ID)
		prev := b.Get(key)
		isNew := prev == nil
		if !isNew {
			var old commands.Record
			if json.Unmarshal(prev, &old) == nil && old.Final() {
				return nil
			}
		}
		if err := b.Put(key, v); err != nil {
			return err
		}
		if !isNew {
			return nil
		}
		prefix := []byte(c.Device + "\x00")
		var keys [][]byte
		cur := b.Cursor()
		for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
			keys = append(keys, bytes.Clone(k))
		}
		for i := 0; len(keys)-i > commands.MaxKept && i < len(keys); i++ {
			var old commands.Record
			if json.Unmarshal(b.Get(keys[i]), &old) == nil && old.Final() {
				if err := b.Delete(keys[i]); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store command: %w", err)
	}
	return nil
}

// GetCommand returns one command of a device.
func (s *Store) GetCommand(ctx context.Context, device, id string) (commands.Record, error) {
	var c commands.Record
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCommands)
		if b == nil {
			return devices.ErrNotFound
		}
		v := b.Get(commandKey(device, id))
		if v == nil {
			return devices.ErrNotFound
		}
		return json.Unmarshal(v, &c)
	})
	if err != nil {
		return commands.Record{}, fmt.Errorf("command %q: %w", id, err)
	}
	return c, nil
}

// ListCommands returns a device's commands newest first, starting after
// the command id before ("" for the newest).
func (s *Store) ListCommands(ctx context.Context, device, before string, limit int) ([]commands.Record, error) {
	out := []commands.Record{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCommands)
		if b == nil {
			return nil
		}
		prefix := []byte(device + "\x00")
		cur := b.Cursor()
		// Position on the largest key below the start: the device's first
		// key after its range, or the cursor "before".
		start := []byte(device + "\x01")
		if before != "" {
			start = commandKey(device, before)
		}
		var k, v []byte
		if k, _ = cur.Seek(start); k == nil {
			k, v = cur.Last()
		} else {
			k, v = cur.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix) && len(out) < limit; k, v = cur.Prev() {
			var c commands.Record
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			out = append(out, c)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list commands: %w", err)
	}
	return out, nil
}

// ActiveCommands returns every command that is not final, oldest first per
// device, for the command service to take up after a restart.
func (s *Store) ActiveCommands(ctx context.Context) ([]commands.Record, error) {
	var out []commands.Record
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCommands)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var c commands.Record
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			if !c.Final() {
				out = append(out, c)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load active commands: %w", err)
	}
	return out, nil
}
