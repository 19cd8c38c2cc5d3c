package devices

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Command statuses. queued -> sent -> succeeded | failed | timed_out;
// queued -> expired | cancelled.
const (
	CommandQueued    = "queued"
	CommandSent      = "sent"
	CommandSucceeded = "succeeded"
	CommandFailed    = "failed"
	CommandTimedOut  = "timed_out"
	CommandExpired   = "expired"
	CommandCancelled = "cancelled"
)

// CommandSpec is an operator's request to send a command.
type CommandSpec struct {
	Device         string
	Name           string
	Params         json.RawMessage
	TTL            time.Duration // how long it may wait for delivery; default 1 h
	Timeout        time.Duration // how long a sent command may wait for its result; default 30 s
	CreatedBy      string
	IdempotencyKey string
}

// StatusChange is one step of a command's audit trail.
type StatusChange struct {
	Status string    `json:"status"`
	At     time.Time `json:"at"`
}

// CommandRecord is a command to a device with its delivery history. Who
// sent what, when, and what became of it is kept (audit).
type CommandRecord struct {
	ID          string          `json:"id"`
	Device      string          `json:"device"`
	Name        string          `json:"name"`
	Params      json.RawMessage `json:"params"`
	Status      string          `json:"status"`
	CreatedAt   time.Time       `json:"created_at"`
	CreatedBy   string          `json:"created_by"`
	ExpiresAt   time.Time       `json:"expires_at"`
	TimeoutMS   int64           `json:"timeout_ms"`
	SentAt      *time.Time      `json:"sent_at,omitempty"`
	CompletedAt *time.Time      `json:"completed_at,omitempty"`
	Deliveries  int             `json:"deliveries"`
	// PolledAt is when the device took the command over the HTTP long
	// poll, which must hand each command out once.
	PolledAt       *time.Time      `json:"polled_at,omitempty"`
	Result         json.RawMessage `json:"result,omitempty"`
	Error          string          `json:"error,omitempty"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
	History        []StatusChange  `json:"history"`
}

// Final reports whether the command's status can no longer change.
func (c *CommandRecord) Final() bool {
	switch c.Status {
	case CommandQueued, CommandSent:
		return false
	}
	return true
}

// MaxCommandsKept bounds the commands kept per device; the oldest final
// ones are deleted first.
const MaxCommandsKept = 1000

var bucketCommands = []byte("commands")

func commandKey(device, id string) []byte { return []byte(device + "\x00" + id) }

// PutCommand stores a command, creating or replacing it. Creating one
// prunes the device's oldest final commands beyond MaxCommandsKept. A
// command whose stored status is final is never changed again: with
// several instances sharing a store, a late write of an older status
// (one instance marking "sent" after another recorded the result) must
// not undo the result; the first final status wins.
func (s *BoltStore) PutCommand(ctx context.Context, c CommandRecord) error {
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
			var old CommandRecord
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
		for i := 0; len(keys)-i > MaxCommandsKept && i < len(keys); i++ {
			var old CommandRecord
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
func (s *BoltStore) GetCommand(ctx context.Context, device, id string) (CommandRecord, error) {
	var c CommandRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCommands)
		if b == nil {
			return ErrNotFound
		}
		v := b.Get(commandKey(device, id))
		if v == nil {
			return ErrNotFound
		}
		return json.Unmarshal(v, &c)
	})
	if err != nil {
		return CommandRecord{}, fmt.Errorf("command %q: %w", id, err)
	}
	return c, nil
}

// ListCommands returns a device's commands newest first, starting after
// the command id before ("" for the newest).
func (s *BoltStore) ListCommands(ctx context.Context, device, before string, limit int) ([]CommandRecord, error) {
	out := []CommandRecord{}
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
			var c CommandRecord
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
func (s *BoltStore) ActiveCommands(ctx context.Context) ([]CommandRecord, error) {
	var out []CommandRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCommands)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var c CommandRecord
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
