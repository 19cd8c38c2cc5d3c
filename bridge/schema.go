package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Field types of the hub's metric schema: the InfluxDB field type a metric
// name has fleet-wide (one measurement). The hub writes every number as a
// float, so number, bool and string are the types it writes; integer is a
// field another writer created, to which the hub cannot write at all.
const (
	FieldNumber  = "number"
	FieldBool    = "bool"
	FieldString  = "string"
	FieldInteger = "integer"
)

// Default bounds of the schema, as documented in docs/protocol.md.
const (
	DefaultMaxMetricsPerDevice = 256
	DefaultMaxMetricNames      = 10000
)

// Schema refusal reasons, the label of Stats.SchemaRejected.
const (
	SchemaTypeConflict  = "type_conflict"
	SchemaDeviceMetrics = "device_metrics"
	SchemaMetricNames   = "metric_names"
)

// SchemaStore persists the metric schema: every name's type and each
// device's names, shared by the instances that share the store.
// devices.BoltStore and pg.Store implement it.
type SchemaStore interface {
	LoadSchema(ctx context.Context) (devices.Schema, error)
	// ClaimFields records the type of each name that has none yet and
	// returns the stored type of every name given and the names this call
	// was first to claim: the first claim wins.
	ClaimFields(ctx context.Context, fields map[string]string) (map[string]string, []string, error)
	// AddDeviceMetrics adds names to device's unless it would then have
	// more than max (devices.ErrTooManyMetrics); it returns the stored names.
	AddDeviceMetrics(ctx context.Context, device string, names []string, max int) ([]string, error)
	// ReleaseFields deletes each name whose stored type is still the one
	// given: the undo of a claim by a message that was not stored.
	ReleaseFields(ctx context.Context, fields map[string]string) error
	// RemoveDeviceMetrics forgets names of device added by a message that
	// was not stored.
	RemoveDeviceMetrics(ctx context.Context, device string, names []string) error
}

// claims is what one message newly claimed in the schema, released again
// when the spool refuses the message (docs/protocol.md: the first
// *accepted* reading decides a name's type).
type claims struct {
	fields map[string]string // names this message was first to claim -> type
	names  []string          // names this message added to its device
}

// schema is the bridge's copy of the metric schema. The hot path reads it
// without a write lock: field types from a sync.Map, a device's names from
// an immutable set behind an atomic pointer. Only a reading that brings a
// name new to the hub or to its device takes the slow path (the store,
// then the device's namesMu).
type schema struct {
	store        SchemaStore // nil: in memory only
	maxPerDevice int
	maxNames     int
	fields       sync.Map // metric name -> field type (string)
	nfields      atomic.Int64
	initial      map[string][]string // device names loaded at start; guarded by Bridge.mu, emptied as devices are first seen
}

// deviceState is what the bridge keeps per registered device, across its
// sessions and transports: the clock of hub-assigned times and the set of
// metric names it has sent. Created for authenticated devices only.
type deviceState struct {
	clock    atomic.Int64 // last hub-assigned time, unix ns (telemetry.HubTime)
	names    atomic.Pointer[map[string]struct{}]
	namesMu  sync.Mutex // serialises changes of names (slow path)
	presence presence   // the device's presence writes (presence.go)
}

func newDeviceState(names []string) *deviceState {
	d := &deviceState{}
	d.names.Store(setOf(names))
	return d
}

// loadSchema fills the schema from the store and from what InfluxDB
// already holds (known: name -> type, which wins over the store: it is
// what InfluxDB will enforce).
func (b *Bridge) loadSchema(ctx context.Context, known map[string]string) error {
	sc := &b.schema
	if sc.store != nil {
		stored, err := sc.store.LoadSchema(ctx)
		if err != nil {
			return err
		}
		for n, t := range stored.Fields {
			sc.fields.Store(n, t)
		}
		sc.nfields.Store(int64(len(stored.Fields)))
		sc.initial = stored.DeviceMetrics
		if len(known) > 0 {
			if _, _, err := sc.store.ClaimFields(ctx, known); err != nil {
				return err
			}
		}
	}
	for n, t := range known {
		if _, loaded := sc.fields.Swap(n, t); !loaded {
			sc.nfields.Add(1)
		}
	}
	return nil
}

// deviceLocked returns the device's state, creating it on first sight.
// Callers hold b.mu.
func (b *Bridge) deviceLocked(id string) *deviceState {
	d := b.devs[id]
	if d == nil {
		d = newDeviceState(b.schema.initial[id])
		delete(b.schema.initial, id)
		b.devs[id] = d
	}
	return d
}

// forgetDevice empties the metric names of a deleted device (the store
// deleted them with it), so a device created again under its id starts
// afresh. Its clock stays: its points share the old series.
func (b *Bridge) forgetDevice(id string) {
	b.mu.Lock()
	d := b.devs[id]
	b.mu.Unlock()
	if d == nil {
		return
	}
	d.namesMu.Lock()
	d.names.Store(setOf(nil))
	d.namesMu.Unlock()
}

func fieldType(k telemetry.ValueKind) string {
	switch k {
	case telemetry.KindBool:
		return FieldBool
	case telemetry.KindString:
		return FieldString
	}
	return FieldNumber
}

func typeWord(t string) string {
	switch t {
	case FieldNumber:
		return "a number"
	case FieldBool:
		return "a boolean"
	case FieldString:
		return "a string"
	case FieldInteger:
		return "an integer (written by another client; this hub writes numbers as floats)"
	}
	return "of type " + t
}

func metricPath(t *telemetry.Telemetry, i int, name string) string {
	if t.Single {
		return "metrics." + name
	}
	return fmt.Sprintf("readings[%d].metrics.%s", i, name)
}

func seqConflict(t *telemetry.Telemetry, i int, have string) telemetry.FieldError {
	path := "seq"
	if !t.Single {
		path = fmt.Sprintf("readings[%d].seq", i)
	}
	return telemetry.FieldError{Field: path, Reason: fmt.Sprintf("InfluxDB already holds the field seq as %s, and seq is stored as an integer: send no seq, or drop that field from InfluxDB", strings.TrimSuffix(typeWord(have), " (written by another client; this hub writes numbers as floats)"))}
}

func conflict(path, have, got string) telemetry.FieldError {
	return telemetry.FieldError{Field: path, Reason: fmt.Sprintf("is %s on this hub, got %s", typeWord(have), typeWord(got))}
}

func fieldsError(errs []telemetry.FieldError) *telemetry.Error {
	slices.SortFunc(errs, func(a, b telemetry.FieldError) int {
		switch {
		case a.Field < b.Field:
			return -1
		case a.Field > b.Field:
			return 1
		}
		return 0
	})
	e := &telemetry.Error{Code: telemetry.CodeInvalid, Fields: errs, Message: errs[0].Field + ": " + errs[0].Reason}
	if len(errs) > 1 {
		e.Message += fmt.Sprintf(" (and %d more)", len(errs)-1)
	}
	return e
}

type newName struct {
	typ  string
	path string // where the message first uses it
}

// checkSchema refuses a message whose values conflict with the type its
// metric names have on this hub, or that brings more names than the
// bounds allow, and claims the types of new names before the message is
// acknowledged (two concurrent first uses of a name with different types:
// one wins, the other is refused). Nothing here locks unless a name is new
// to the hub or to the device.
func (b *Bridge) checkSchema(ctx context.Context, s *Session, d *deviceState, t *telemetry.Telemetry, c *claims) *telemetry.Error {
	sc := &b.schema
	names := *d.names.Load()
	var errs []telemetry.FieldError
	var fresh, devNew map[string]newName
	// The field seq is the readings' sequence numbers, written as
	// integers: where InfluxDB (or this hub's schema, from before seq was
	// reserved) holds it as another type, InfluxDB would refuse every
	// reading with a seq, so they are refused here, before the ack.
	if have, ok := sc.fields.Load(telemetry.SeqField); ok && have.(string) != FieldInteger {
		for i := range t.Readings {
			if t.Readings[i].HasSeq {
				errs = append(errs, seqConflict(t, i, have.(string)))
				break // one is enough: it is the same cause for every reading
			}
		}
	}
	for i := range t.Readings {
		for k, v := range t.Readings[i].Metrics {
			typ := fieldType(v.Kind)
			if have, ok := sc.fields.Load(k); ok {
				if have.(string) != typ {
					errs = append(errs, conflict(metricPath(t, i, k), have.(string), typ))
				}
			} else if n, ok := fresh[k]; ok {
				if n.typ != typ {
					errs = append(errs, conflict(metricPath(t, i, k), n.typ, typ))
				}
			} else {
				if fresh == nil {
					fresh = map[string]newName{}
				}
				fresh[k] = newName{typ, metricPath(t, i, k)}
			}
			if _, ok := names[k]; !ok {
				if _, ok := devNew[k]; !ok {
					if devNew == nil {
						devNew = map[string]newName{}
					}
					devNew[k] = newName{typ, metricPath(t, i, k)}
				}
			}
		}
	}
	if len(errs) > 0 {
		b.stats.schemaRejected(SchemaTypeConflict).Add(1)
		return fieldsError(errs)
	}
	if len(devNew) == 0 && len(fresh) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.opts.StoreTimeout)
	defer cancel()
	d.namesMu.Lock()
	defer d.namesMu.Unlock()
	names = *d.names.Load()
	var add []string
	for k := range devNew {
		if _, ok := names[k]; !ok {
			add = append(add, k)
		}
	}
	slices.Sort(add)
	if len(names)+len(add) > sc.maxPerDevice {
		b.stats.schemaRejected(SchemaDeviceMetrics).Add(1)
		return fieldsError([]telemetry.FieldError{{Field: devNew[add[0]].path, Reason: fmt.Sprintf(
			"a device may send at most %d distinct metric names (FIELDHUB_MAX_METRICS_PER_DEVICE); this one has %d and the message adds %d",
			sc.maxPerDevice, len(names), len(add))}})
	}
	if len(fresh) > 0 {
		if e := b.claimFields(ctx, s, t, fresh, c); e != nil {
			return e
		}
	}
	if len(add) == 0 {
		return nil
	}
	all := slices.Concat(keysOf(names), add)
	if sc.store != nil {
		stored, err := sc.store.AddDeviceMetrics(ctx, s.DeviceID, add, sc.maxPerDevice)
		switch {
		case errors.Is(err, devices.ErrTooManyMetrics):
			// Another instance recorded names for this device meanwhile.
			d.names.Store(setOf(stored))
			b.stats.schemaRejected(SchemaDeviceMetrics).Add(1)
			return fieldsError([]telemetry.FieldError{{Field: devNew[add[0]].path, Reason: fmt.Sprintf(
				"a device may send at most %d distinct metric names (FIELDHUB_MAX_METRICS_PER_DEVICE); this one has %d and the message adds %d",
				sc.maxPerDevice, len(stored), len(add))}})
		case err != nil:
			b.log.Error("record metric names failed", "device", s.DeviceID, "err", err)
			return telemetry.ErrInternal
		}
		all = stored
	}
	d.names.Store(setOf(all))
	c.names = add
	return nil
}

// claimFields claims the types of names new to this instance: through the
// store when there is one (the first claim wins across instances), in
// memory otherwise (sync.Map.LoadOrStore is the atomic claim).
func (b *Bridge) claimFields(ctx context.Context, s *Session, t *telemetry.Telemetry, fresh map[string]newName, c *claims) *telemetry.Error {
	sc := &b.schema
	if n := sc.nfields.Load(); n+int64(len(fresh)) > int64(sc.maxNames) {
		b.stats.schemaRejected(SchemaMetricNames).Add(1)
		first := slices.Sorted(func(yield func(string) bool) {
			for k := range fresh {
				if !yield(k) {
					return
				}
			}
		})[0]
		return fieldsError([]telemetry.FieldError{{Field: fresh[first].path, Reason: fmt.Sprintf(
			"the hub already stores %d distinct metric names, at most %d are allowed (FIELDHUB_MAX_METRIC_NAMES); use a metric name the fleet already sends", n, sc.maxNames)}})
	}
	got := make(map[string]string, len(fresh))
	if sc.store != nil {
		want := make(map[string]string, len(fresh))
		for k, n := range fresh {
			want[k] = n.typ
		}
		stored, claimed, err := sc.store.ClaimFields(ctx, want)
		if err != nil {
			b.log.Error("claim metric types failed", "device", s.DeviceID, "err", err)
			return telemetry.ErrInternal
		}
		for k, typ := range stored {
			if _, loaded := sc.fields.Swap(k, typ); !loaded {
				sc.nfields.Add(1)
			}
			got[k] = typ
		}
		for _, k := range claimed {
			c.claimField(k, want[k])
		}
	} else {
		for k, n := range fresh {
			have, loaded := sc.fields.LoadOrStore(k, n.typ)
			if !loaded {
				sc.nfields.Add(1)
				c.claimField(k, n.typ)
			}
			got[k] = have.(string)
		}
	}
	var errs []telemetry.FieldError
	for k, n := range fresh {
		if got[k] != n.typ {
			errs = append(errs, conflict(n.path, got[k], n.typ))
		}
	}
	if len(errs) > 0 {
		b.stats.schemaRejected(SchemaTypeConflict).Add(1)
		return fieldsError(errs)
	}
	return nil
}

func (c *claims) claimField(name, typ string) {
	if c.fields == nil {
		c.fields = map[string]string{}
	}
	c.fields[name] = typ
}

// releaseTimeout bounds the undo of a refused message's claims; it runs on
// a fresh context, since the message's own may be what expired.
const releaseTimeout = 5 * time.Second

// releaseClaims undoes what a message refused after its schema check (the
// spool did not take it) claimed: the field types it was first to claim,
// where the type is still the one it claimed, and the names it added to
// its device, in memory and in the store. A failed release is logged and
// counted (Stats.SchemaReleaseFailed); the claim then stays.
func (b *Bridge) releaseClaims(ctx context.Context, s *Session, d *deviceState, c *claims) {
	if len(c.fields) == 0 && len(c.names) == 0 {
		return
	}
	sc := &b.schema
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if len(c.fields) > 0 {
		if sc.store != nil {
			if err := sc.store.ReleaseFields(ctx, c.fields); err != nil {
				b.stats.SchemaReleaseFailed.Add(1)
				b.log.Error("release metric types failed", "device", s.DeviceID, "err", err)
			}
		}
		for k, typ := range c.fields {
			if sc.fields.CompareAndDelete(k, typ) {
				sc.nfields.Add(-1)
			}
		}
	}
	if len(c.names) > 0 {
		d.namesMu.Lock()
		defer d.namesMu.Unlock()
		if sc.store != nil {
			if err := sc.store.RemoveDeviceMetrics(ctx, s.DeviceID, c.names); err != nil {
				b.stats.SchemaReleaseFailed.Add(1)
				b.log.Error("release metric names failed", "device", s.DeviceID, "err", err)
				return
			}
		}
		names := *d.names.Load()
		keep := make([]string, 0, len(names))
		for k := range names {
			if !slices.Contains(c.names, k) {
				keep = append(keep, k)
			}
		}
		d.names.Store(setOf(keep))
	}
}

// FieldType returns the type the metric name has on this hub, if any.
func (b *Bridge) FieldType(name string) (string, bool) {
	t, ok := b.schema.fields.Load(name)
	if !ok {
		return "", false
	}
	return t.(string), true
}

func keysOf(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func setOf(names []string) *map[string]struct{} {
	set := make(map[string]struct{}, len(names))
	for _, n := range names {
		set[n] = struct{}{}
	}
	return &set
}
