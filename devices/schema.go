package devices

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Schema is what the hub knows of the metrics it stores: the InfluxDB field
// type of every metric name (fleet-wide: one measurement) and the metric
// names each device has sent. The bridge refuses a reading that would
// break it before acknowledging, instead of InfluxDB refusing it after.
type Schema struct {
	// Fields maps a metric name to its type ("number", "bool", "string",
	// or "integer" when another writer made it one).
	Fields map[string]string
	// DeviceMetrics lists each device's metric names.
	DeviceMetrics map[string][]string
}

// ErrTooManyMetrics means a device would have more metric names than the
// bound it was given.
var ErrTooManyMetrics = errors.New("too many metric names for one device")

var (
	bucketFields        = []byte("metric_fields")
	bucketDeviceMetrics = []byte("device_metrics")
)

func deviceMetricKey(device, name string) []byte { return []byte(device + "\x00" + name) }

// LoadSchema reads every claimed field type and each device's metric names.
func (s *BoltStore) LoadSchema(ctx context.Context) (Schema, error) {
	sc := Schema{Fields: map[string]string{}, DeviceMetrics: map[string][]string{}}
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketFields); b != nil {
			if err := b.ForEach(func(k, v []byte) error { sc.Fields[string(k)] = string(v); return nil }); err != nil {
				return err
			}
		}
		if b := tx.Bucket(bucketDeviceMetrics); b != nil {
			return b.ForEach(func(k, _ []byte) error {
				for i, c := range k {
					if c == 0 {
						dev := string(k[:i])
						sc.DeviceMetrics[dev] = append(sc.DeviceMetrics[dev], string(k[i+1:]))
						break
					}
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return Schema{}, fmt.Errorf("load metric schema: %w", err)
	}
	return sc, nil
}

// DeviceMetricTypes returns the metric names device has sent, each with
// its stored type ("" when none is stored), for the history API and the
// device's metric catalogue. It reads the store, so it survives restarts
// and sees what other instances sharing the store recorded.
func (s *BoltStore) DeviceMetricTypes(ctx context.Context, device string) (map[string]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := map[string]string{}
	err := s.db.View(func(tx *bolt.Tx) error {
		dm := tx.Bucket(bucketDeviceMetrics)
		if dm == nil {
			return nil
		}
		fields := tx.Bucket(bucketFields)
		prefix := deviceMetricKey(device, "")
		cur := dm.Cursor()
		for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
			name := string(k[len(prefix):])
			out[name] = ""
			if fields != nil {
				out[name] = string(fields.Get([]byte(name)))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read metric names of %s: %w", device, err)
	}
	return out, nil
}

// ClaimFields records the type of each name in fields that has none yet
// and returns the stored type of every name in fields and the names this
// call was first to claim: the first claim of a name wins (bbolt runs one
// write transaction at a time). Concurrent calls share one transaction and
// one fsync (bbolt's Batch), so a fleet starting up does not queue on the
// disk one device at a time.
func (s *BoltStore) ClaimFields(ctx context.Context, fields map[string]string) (map[string]string, []string, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	got := make(map[string]string, len(fields))
	var claimed []string
	err := s.db.Batch(func(tx *bolt.Tx) error { // may run more than once: starts afresh
		claimed = claimed[:0]
		b, err := tx.CreateBucketIfNotExists(bucketFields)
		if err != nil {
			return err
		}
		for name, typ := range fields {
			if v := b.Get([]byte(name)); v != nil {
				got[name] = string(v)
				continue
			}
			if err := b.Put([]byte(name), []byte(typ)); err != nil {
				return err
			}
			got[name] = typ
			claimed = append(claimed, name)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("claim metric types: %w", err)
	}
	return got, claimed, nil
}

// ReleaseFields undoes claims of a message that was not stored after all:
// it deletes each name of fields whose stored type is still the one given
// (a conditional delete, so a claim made again since is kept).
func (s *BoltStore) ReleaseFields(ctx context.Context, fields map[string]string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Batch(func(tx *bolt.Tx) error { // may run more than once: idempotent
		b := tx.Bucket(bucketFields)
		if b == nil {
			return nil
		}
		for name, typ := range fields {
			if v := b.Get([]byte(name)); v != nil && string(v) == typ {
				if err := b.Delete([]byte(name)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("release metric types: %w", err)
	}
	return nil
}

// RemoveDeviceMetrics forgets names of device that a message added but
// that were not stored after all.
func (s *BoltStore) RemoveDeviceMetrics(ctx context.Context, device string, names []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Batch(func(tx *bolt.Tx) error { // may run more than once: idempotent
		b := tx.Bucket(bucketDeviceMetrics)
		if b == nil {
			return nil
		}
		for _, n := range names {
			if err := b.Delete(deviceMetricKey(device, n)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove metric names of %s: %w", device, err)
	}
	return nil
}

// AddDeviceMetrics records names as metrics of device unless the device
// would then have more than max; either way it returns the device's names
// as stored, and ErrTooManyMetrics when it refused. Concurrent calls share
// one transaction (bbolt's Batch).
func (s *BoltStore) AddDeviceMetrics(ctx context.Context, device string, names []string, max int) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var have []string
	tooMany := false
	err := s.db.Batch(func(tx *bolt.Tx) error { // may run more than once: starts afresh
		b, err := tx.CreateBucketIfNotExists(bucketDeviceMetrics)
		if err != nil {
			return err
		}
		have, tooMany = have[:0], false
		prefix := deviceMetricKey(device, "")
		cur := b.Cursor()
		for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
			have = append(have, string(k[len(prefix):]))
		}
		var add []string
		for _, n := range names {
			if !slices.Contains(have, n) && !slices.Contains(add, n) {
				add = append(add, n)
			}
		}
		if len(have)+len(add) > max {
			tooMany = true
			return nil
		}
		for _, n := range add {
			if err := b.Put(deviceMetricKey(device, n), nil); err != nil {
				return err
			}
		}
		have = append(have, add...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("record metric names of %s: %w", device, err)
	}
	if tooMany {
		return have, ErrTooManyMetrics
	}
	return have, nil
}

// deleteDeviceMetrics forgets the metric names of a deleted device, inside
// the transaction that deletes it.
func deleteDeviceMetrics(tx *bolt.Tx, device string) error {
	b := tx.Bucket(bucketDeviceMetrics)
	if b == nil {
		return nil
	}
	prefix := deviceMetricKey(device, "")
	var keys [][]byte
	cur := b.Cursor()
	for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
