package devices

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Record is the persistent form of a device.
type Record struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	Tokens    []StoredToken     `json:"tokens"`
	LastSeen  time.Time         `json:"last_seen,omitzero"`
}

// StoredToken is a device token's hash and, during a rotation's grace
// period, when it stops working.
type StoredToken struct {
	Hash      TokenHash `json:"hash"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// OperatorToken is an operator's API credential, without its secret.
type OperatorToken struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	CreatedAt time.Time `json:"created_at"`
	LastUsed  time.Time `json:"last_used,omitzero"`
	Hash      TokenHash `json:"-"`
}

type storedOperator struct {
	OperatorToken
	Hash TokenHash `json:"hash"`
}

// OperatorSession is a dashboard sign-in: the browser's cookie holds a
// random session id, the store only its hash. It belongs to one operator
// token and ends with it.
type OperatorSession struct {
	Hash      TokenHash `json:"hash"`
	TokenID   string    `json:"token_id"`
	CreatedAt time.Time `json:"created_at"`
	LastUsed  time.Time `json:"last_used"`
}

// Key is the session's store key: the hex of its hash.
func (s OperatorSession) Key() string { return hex.EncodeToString(s.Hash[:]) }

// Snapshot is everything a Store holds.
type Snapshot struct {
	Devices   []Record
	Operators []OperatorToken
	Sessions  []OperatorSession
	// Cursor is the store's change cursor at the instant of the load, for
	// ChangesSince; 0 for a store that is no ChangeFeed.
	Cursor uint64
}

// LastSeen is when a device was last heard from, for Change.TouchDevices.
// CreatedAt names which device of that id was heard from: a touch applies
// only to the record created then, never to one deleted and created
// again with the same id since.
type LastSeen struct {
	ID        string
	CreatedAt time.Time
	At        time.Time
}

// ChangeFeed is a Store shared by several hub instances that can say what
// changed since a cursor, so Refresh reads only that instead of every
// device. Stores without one are reloaded whole.
type ChangeFeed interface {
	ChangesSince(ctx context.Context, cursor uint64) (Changes, error)
}

// Changes is what a ChangeFeed saw change after a cursor.
type Changes struct {
	// Full means the cursor was too old (the deletions it would need were
	// pruned): Devices is then every device, and a device not in it is gone.
	Full bool
	// Devices are the records created or whose credentials, name or labels
	// changed after the cursor (a last_seen write does not count).
	Devices []Record
	// Deleted are the ids of devices deleted after the cursor.
	Deleted []string
	// Operators and Sessions are every operator token and session: they
	// are few, and Refresh compares them whole.
	Operators []OperatorToken
	Sessions  []OperatorSession
	// Cursor is where the next ChangesSince starts.
	Cursor uint64
}

// Change is one atomic write to a Store.
type Change struct {
	// CreateDevices inserts new devices; the Change fails with ErrExists
	// (and writes nothing) when any id is already in the store, whether
	// or not this instance has seen it.
	CreateDevices []Record
	// UpdateDevices replaces devices that exist; the Change fails with
	// ErrNotFound (and writes nothing) when any is no longer in the store,
	// so a stale instance cannot bring back a device another deleted.
	UpdateDevices []Record
	DeleteDevices []string
	// TouchDevices raises the last_seen of devices that still exist (never
	// lowers it, never recreates a deleted device) without counting as a
	// change for ChangesSince: a flush of last_seen is not news to other
	// instances.
	TouchDevices    []LastSeen
	PutOperators    []OperatorToken
	DeleteOperators []string
	PutSessions     []OperatorSession
	// TouchSessions updates sessions that still exist and never recreates
	// one: a stale last_used write cannot bring back a signed-out session.
	TouchSessions  []OperatorSession
	DeleteSessions []TokenHash
}

// Store persists the registry. Apply must be atomic: all of a Change or
// none of it. The embedded bbolt store is the default; a PostgreSQL store
// serves several hub instances.
type Store interface {
	Load(ctx context.Context) (Snapshot, error)
	Apply(ctx context.Context, c Change) error
	Close() error
}

var (
	bucketDevices   = []byte("devices")
	bucketOperators = []byte("operator_tokens")
	bucketSessions  = []byte("operator_sessions")
)

// BoltStore is the embedded Store: one bbolt file, fsynced on every commit.
type BoltStore struct {
	db *bolt.DB
}

// OpenBolt opens or creates the registry database at path.
func OpenBolt(path string) (*BoltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open registry %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDevices, bucketOperators, bucketSessions} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init registry: %w", err)
	}
	return &BoltStore{db: db}, nil
}

// Load reads every device and operator token.
func (s *BoltStore) Load(ctx context.Context) (Snapshot, error) {
	var snap Snapshot
	err := s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("device %q: %w", k, err)
			}
			snap.Devices = append(snap.Devices, r)
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketOperators).ForEach(func(k, v []byte) error {
			var o storedOperator
			if err := json.Unmarshal(v, &o); err != nil {
				return fmt.Errorf("operator token %q: %w", k, err)
			}
			o.OperatorToken.Hash = o.Hash
			snap.Operators = append(snap.Operators, o.OperatorToken)
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketSessions).ForEach(func(k, v []byte) error {
			var o OperatorSession
			if err := json.Unmarshal(v, &o); err != nil {
				return fmt.Errorf("operator session %.8s: %w", k, err)
			}
			snap.Sessions = append(snap.Sessions, o)
			return nil
		})
	})
	if err != nil {
		return Snapshot{}, fmt.Errorf("load registry: %w", err)
	}
	return snap, nil
}

// Apply writes c in one transaction.
func (s *BoltStore) Apply(ctx context.Context, c Change) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		devs, ops := tx.Bucket(bucketDevices), tx.Bucket(bucketOperators)
		for i, r := range slices.Concat(c.CreateDevices, c.UpdateDevices) {
			create := i < len(c.CreateDevices)
			switch have := devs.Get([]byte(r.ID)) != nil; {
			case create && have:
				return fmt.Errorf("device %q: %w", r.ID, ErrExists)
			case !create && !have:
				return fmt.Errorf("device %q: %w", r.ID, ErrNotFound)
			}
			v, err := json.Marshal(r)
			if err != nil {
				return err
			}
			if err := devs.Put([]byte(r.ID), v); err != nil {
				return err
			}
		}
		for _, id := range c.DeleteDevices {
			if err := devs.Delete([]byte(id)); err != nil {
				return err
			}
			if err := deleteDeviceMetrics(tx, id); err != nil {
				return err
			}
		}
		for _, ls := range c.TouchDevices {
			if err := touchDevice(devs, ls); err != nil {
				return err
			}
		}
		for _, o := range c.PutOperators {
			v, err := json.Marshal(storedOperator{OperatorToken: o, Hash: o.Hash})
			if err != nil {
				return err
			}
			if err := ops.Put([]byte(o.ID), v); err != nil {
				return err
			}
		}
		for _, id := range c.DeleteOperators {
			if err := ops.Delete([]byte(id)); err != nil {
				return err
			}
		}
		sess := tx.Bucket(bucketSessions)
		for i, o := range slices.Concat(c.PutSessions, c.TouchSessions) {
			if i >= len(c.PutSessions) && sess.Get([]byte(o.Key())) == nil {
				continue // a touch never recreates a session
			}
			v, err := json.Marshal(o)
			if err != nil {
				return err
			}
			if err := sess.Put([]byte(o.Key()), v); err != nil {
				return err
			}
		}
		for _, h := range c.DeleteSessions {
			if err := sess.Delete([]byte(OperatorSession{Hash: h}.Key())); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write registry: %w", err)
	}
	return nil
}

// touchDevice raises one device's stored last_seen, inside Apply's
// transaction, if the stored device is the one the touch names (same
// created_at).
func touchDevice(devs *bolt.Bucket, ls LastSeen) error {
	v := devs.Get([]byte(ls.ID))
	if v == nil {
		return nil // deleted since: a touch never recreates a device
	}
	var r Record
	if err := json.Unmarshal(v, &r); err != nil {
		return fmt.Errorf("device %q: %w", ls.ID, err)
	}
	if !r.CreatedAt.Equal(ls.CreatedAt) {
		return nil // deleted and created again since: not the device heard from
	}
	if !ls.At.After(r.LastSeen) {
		return nil
	}
	r.LastSeen = ls.At
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return devs.Put([]byte(ls.ID), v)
}

// Close closes the database file.
func (s *BoltStore) Close() error {
	if err := s.db.Close(); err != nil && !errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("close registry: %w", err)
	}
	return nil
}

// DB returns the open database, which the BoltStore owns and closes, for
// the command store (bridge/commands/boltstore) to keep its bucket in the
// same file.
func (s *BoltStore) DB() *bolt.DB { return s.db }
