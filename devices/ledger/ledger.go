// Package ledger keeps, per device, the proof of no silent loss: what the
// hub received, refused (by code), made durable, wrote to InfluxDB and
// dead-lettered, and what the device's sequence numbers say it sent but
// the hub never saw (gaps), sent twice (duplicates) or restarted (resets).
// docs/protocol.md "Sequence numbers and the ledger" is the contract.
//
// It owns that state, its persistence (through the Store it declares)
// and its HTTP views. It imports only telemetry and the standard library.
//
// With a SharedStore (several instances on PostgreSQL) seq is tracked
// once per device in the store from every instance's observations
// (shared.go); otherwise each Ledger tracks it in memory.
//
// Locking: one mutex per device (device.mu), never held across devices or
// during I/O; the device table is a sync.Map, so the hot path takes no
// lock shared by two devices.
package ledger

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Counter indices of a device's counts and of a window bucket.
const (
	cReceived = iota
	cRefused
	cDurable
	cWritten
	cDead
	cGaps
	cDuplicates
	cResets
	nCounters
)

// buckets is the recent window: one bucket per minute over the last hour.
const buckets = 60

// Store persists the ledger: one record per device per instance, so
// instances sharing a database never overwrite each other's counts.
// LoadLedger returns this instance's records; SaveLedger upserts put and
// deletes the devices in del.
type Store interface {
	LoadLedger(ctx context.Context, instance string) (map[string][]byte, error)
	SaveLedger(ctx context.Context, instance string, put map[string][]byte, del []string) error
}

// Options configures a Ledger. Zero values take the documented defaults.
type Options struct {
	// Exists reports whether a device is registered: the ledger keeps
	// state only for devices that exist, so its size is bounded by the
	// registry's. Required.
	Exists func(id string) bool
	// Store persists the ledger; nil keeps it in memory only.
	Store Store
	// Instance names this hub's records in Store; default "local".
	Instance string
	// PersistInterval is how often changed devices are saved (and, with
	// a SharedStore, the instances' seq observations merged); default 10 s.
	PersistInterval time.Duration
	// MaxOpenGaps bounds a device's open gaps; default DefaultMaxOpenGaps.
	MaxOpenGaps int
	// OnGapsChanged is told a device's new number of open gaps whenever
	// it changes (the alert condition "gaps" hangs off it). It is called
	// inline on the ingest path, outside the ledger's locks, and must not
	// block.
	OnGapsChanged func(device string, open int)
	Now           func() time.Time
	Logger        *slog.Logger
}

// Ledger is the per-device ledger of one hub instance.
type Ledger struct {
	opts   Options
	devs   sync.Map // device id -> *device
	totals [nCounters]atomic.Uint64

	// shared is opts.Store as a SharedStore, nil when seq is tracked here.
	shared SharedStore
	// saveSoon asks Run for an early save: a device's batch is full.
	saveSoon chan struct{}
	// fleetOpen and fleetWith are the fleet's open gaps and devices with
	// some, as of this instance's last Sync (shared mode).
	fleetOpen, fleetWith atomic.Int64

	delMu   sync.Mutex           // guards deleted
	deleted map[string]time.Time // when each was forgotten
}

type bucket struct {
	Minute int64             `json:"minute"`
	C      [nCounters]uint32 `json:"c"`
}

// window is a device's last hour, one bucket per minute (at minute%60).
type window [buckets]bucket

// MarshalJSON stores only the buckets in use.
func (w window) MarshalJSON() ([]byte, error) {
	used := make([]bucket, 0, buckets)
	for _, b := range w {
		if b.Minute != 0 {
			used = append(used, b)
		}
	}
	return json.Marshal(used)
}

// UnmarshalJSON puts stored buckets back at their minute.
func (w *window) UnmarshalJSON(data []byte) error {
	var used []bucket
	if err := json.Unmarshal(data, &used); err != nil {
		return err
	}
	*w = window{}
	for _, b := range used {
		if b.Minute > 0 {
			w[b.Minute%buckets] = b
		}
	}
	return nil
}

// device is one device's ledger; mu guards everything but openN. In
// shared mode Seq stays empty (the tracker is the store's sequence
// record, a device too) and pend holds the numbers made durable since
// the last save.
type device struct {
	mu      sync.Mutex
	C       [nCounters]uint64 `json:"c"`
	Refused map[string]uint64 `json:"refused"` // by code: bounded by the codes telemetry defines
	Win     window            `json:"win"`
	Seq     seqState          `json:"seq"`
	dirty   bool
	pend    *pending
	openN   atomic.Int32
}

// New returns a Ledger with this instance's persisted records loaded.
func New(ctx context.Context, opts Options) (*Ledger, error) {
	if opts.Exists == nil {
		return nil, fmt.Errorf("ledger: Exists is required")
	}
	if opts.Instance == "" {
		opts.Instance = "local"
	}
	if opts.PersistInterval <= 0 {
		opts.PersistInterval = 10 * time.Second
	}
	if opts.MaxOpenGaps <= 0 {
		opts.MaxOpenGaps = DefaultMaxOpenGaps
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	l := &Ledger{opts: opts, deleted: map[string]time.Time{}, saveSoon: make(chan struct{}, 1)}
	if opts.Store == nil {
		return l, nil
	}
	l.shared, _ = opts.Store.(SharedStore)
	if l.shared != nil {
		if err := l.shared.Join(ctx, opts.Instance, opts.Now(), l.liveFor()); err != nil {
			return nil, fmt.Errorf("ledger: join: %w", err)
		}
	}
	recs, err := opts.Store.LoadLedger(ctx, opts.Instance)
	if err != nil {
		return nil, fmt.Errorf("ledger: load: %w", err)
	}
	for id, b := range recs {
		d := &device{}
		if err := json.Unmarshal(b, d); err != nil {
			opts.Logger.Warn("ledger record unreadable; starting the device's ledger again", "device", id, "err", err)
			continue
		}
		if !d.Seq.valid(max(opts.MaxOpenGaps, DefaultMaxOpenGaps)) {
			opts.Logger.Warn("ledger record not one the hub writes; starting the device's ledger again", "device", id)
			continue
		}
		if l.shared != nil { // the store's sequence record is the tracker
			d.Seq = seqState{}
		}
		d.openN.Store(int32(len(d.Seq.Open)))
		for i := range nCounters {
			l.totals[i].Add(d.C[i])
		}
		l.devs.Store(id, d)
	}
	return l, nil
}

// dev returns id's ledger, creating it for a registered device; nil for
// an unknown one.
func (l *Ledger) dev(id string) *device {
	if d, ok := l.devs.Load(id); ok {
		return d.(*device)
	}
	if !l.opts.Exists(id) {
		return nil
	}
	d, _ := l.devs.LoadOrStore(id, &device{})
	return d.(*device)
}

// add counts n at counter c, since creation and in the current minute.
// d.mu must be held.
func (l *Ledger) add(d *device, c int, n uint64, minute int64) {
	d.C[c] += n
	b := &d.Win[minute%buckets]
	if b.Minute != minute {
		*b = bucket{Minute: minute}
	}
	b.C[c] += uint32(min(n, 1<<31))
	d.dirty = true
	l.totals[c].Add(n)
}

func (l *Ledger) minute() (time.Time, int64) {
	now := l.opts.Now()
	return now, now.Unix() / 60
}

// Received counts one message a device sent (accepted or refused).
func (l *Ledger) Received(id string) {
	if d := l.dev(id); d != nil {
		_, m := l.minute()
		d.mu.Lock()
		l.add(d, cReceived, 1, m)
		d.mu.Unlock()
	}
}

// Refused counts one refused message by its code.
func (l *Ledger) Refused(id, code string) {
	if d := l.dev(id); d != nil {
		_, m := l.minute()
		d.mu.Lock()
		l.add(d, cRefused, 1, m)
		if d.Refused == nil {
			d.Refused = map[string]uint64{}
		}
		d.Refused[code]++
		d.mu.Unlock()
	}
}

// Durable counts the readings of one message the store made durable and
// runs their sequence numbers (boot is the message's) through the
// device's tracker.
func (l *Ledger) Durable(id, boot string, readings []telemetry.Reading) {
	d := l.dev(id)
	if d == nil {
		return
	}
	now, m := l.minute()
	d.mu.Lock()
	l.add(d, cDurable, uint64(len(readings)), m)
	if l.shared != nil {
		full := false
		for i := range readings {
			if readings[i].HasSeq {
				if d.pend == nil {
					d.pend = &pending{}
				}
				full = d.pend.add(boot, readings[i].Seq, now) || full
			}
		}
		d.mu.Unlock()
		if full {
			select {
			case l.saveSoon <- struct{}{}:
			default:
			}
		}
		return
	}
	before := len(d.Seq.Open)
	for i := range readings {
		if !readings[i].HasSeq {
			continue
		}
		ev, reset := d.Seq.observe(boot, readings[i].Seq, now, l.opts.MaxOpenGaps)
		if reset {
			l.add(d, cResets, 1, m)
		}
		switch ev {
		case evGap:
			l.add(d, cGaps, 1, m)
		case evDuplicate:
			l.add(d, cDuplicates, 1, m)
		}
	}
	after := len(d.Seq.Open)
	d.mu.Unlock()
	if after != before {
		d.openN.Store(int32(after))
		if l.opts.OnGapsChanged != nil {
			l.opts.OnGapsChanged(id, after)
		}
	}
}

// Written counts points InfluxDB confirmed, from the line protocol the
// writer wrote (influx.WriterObservers.OnWritten).
func (l *Ledger) Written(data []byte) { l.lines(data, cWritten) }

// DeadLettered counts points InfluxDB refused for good, from the line
// protocol the writer dead-lettered.
func (l *Ledger) DeadLettered(data []byte) { l.lines(data, cDead) }

// lines counts the points of data per device at counter c: one pass over
// the bytes, one lock per run of one device's lines (a spool record is
// one message of one device, so runs are long).
func (l *Ledger) lines(data []byte, c int) {
	prefix := []byte(telemetry.Measurement + "," + telemetry.DeviceTag + "=")
	var cur []byte
	var n uint64
	flush := func() {
		if n > 0 {
			if d := l.dev(string(cur)); d != nil {
				_, m := l.minute()
				d.mu.Lock()
				l.add(d, c, n, m)
				d.mu.Unlock()
			}
		}
		n = 0
	}
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if !bytes.HasPrefix(line, prefix) {
			continue
		}
		id := line[len(prefix):]
		if i := bytes.IndexAny(id, ", "); i >= 0 { // device ids need no escapes
			id = id[:i]
		}
		if !bytes.Equal(id, cur) {
			flush()
			cur = id
		}
		n++
	}
	flush()
}

// OpenGaps returns a device's number of open gaps: one atomic load, for
// alert conditions and the overview. In shared mode it is as of the last
// time this instance settled the device.
func (l *Ledger) OpenGaps(id string) int {
	if d, ok := l.devs.Load(id); ok {
		return int(d.(*device).openN.Load())
	}
	return 0
}

// Forget drops a deleted device's ledger (and its record at the next
// persist).
func (l *Ledger) Forget(id string) {
	if _, ok := l.devs.LoadAndDelete(id); ok {
		at := l.opts.Now()
		l.delMu.Lock()
		l.deleted[id] = at
		l.delMu.Unlock()
	}
}

// Totals is the fleet's counts of this instance, for Prometheus.
type Totals struct {
	Received, Refused, Durable, Written, DeadLettered, Gaps, Duplicates, Resets uint64
	OpenGaps                                                                    int
}

// Totals returns the counts since start of every device this instance
// keeps, and the open gaps now (in shared mode the fleet's, as of this
// instance's last Sync; its seq counts are those its Syncs settled).
func (l *Ledger) Totals() Totals {
	t := Totals{
		Received: l.totals[cReceived].Load(), Refused: l.totals[cRefused].Load(), Durable: l.totals[cDurable].Load(),
		Written: l.totals[cWritten].Load(), DeadLettered: l.totals[cDead].Load(), Gaps: l.totals[cGaps].Load(),
		Duplicates: l.totals[cDuplicates].Load(), Resets: l.totals[cResets].Load(),
	}
	if l.shared != nil {
		t.OpenGaps = int(l.fleetOpen.Load())
		return t
	}
	l.devs.Range(func(_, v any) bool {
		t.OpenGaps += int(v.(*device).openN.Load())
		return true
	})
	return t
}

// Run saves changed devices every PersistInterval and once more when ctx
// ends; it returns after that last save.
func (l *Ledger) Run(ctx context.Context) error {
	if l.opts.Store == nil {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(l.opts.PersistInterval)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			err := l.Persist(sctx)
			if l.shared != nil && err == nil {
				// The others' watermark stops waiting for this instance.
				err = l.shared.Leave(sctx, l.opts.Instance)
			}
			return err
		case <-l.saveSoon:
			if time.Since(last) < time.Second { // at most one early save a second
				continue
			}
		case <-t.C:
		}
		last = time.Now()
		if err := l.Persist(ctx); err != nil && ctx.Err() == nil {
			l.opts.Logger.Warn("ledger persist failed; retrying at the next interval", "err", err)
		}
	}
}

// Persist saves every device changed since the last save: each is
// encoded under its own lock, the store is written with no lock held.
func (l *Ledger) Persist(ctx context.Context) error {
	if l.opts.Store == nil {
		return nil
	}
	if l.shared != nil {
		return l.sync(ctx)
	}
	sv := l.collect()
	if len(sv.put) == 0 && len(sv.del) == 0 {
		return nil
	}
	if err := l.opts.Store.SaveLedger(ctx, l.opts.Instance, sv.put, sv.del); err != nil {
		l.restore(sv)
		return fmt.Errorf("save ledger of %d devices: %w", len(sv.put), err)
	}
	return nil
}

// save is one save's worth of records: the changed devices encoded, the
// deleted ones, and (shared mode) the batches taken from the devices.
type save struct {
	put     map[string][]byte
	dirty   []*device
	del     []string
	purge   []Purge // every deleted device, re-created or not
	batches map[string]Batch
	sent    map[*device][]bucketSeq
}

// collect encodes every device changed since the last save, each under
// its own lock, and takes its batch.
func (l *Ledger) collect() save {
	sv := save{put: map[string][]byte{}}
	if l.shared != nil {
		sv.batches, sv.sent = map[string]Batch{}, map[*device][]bucketSeq{}
	}
	l.devs.Range(func(k, v any) bool {
		d := v.(*device)
		d.mu.Lock()
		if d.dirty {
			if b, err := json.Marshal(d); err == nil {
				sv.put[k.(string)] = b
				d.dirty = false
				sv.dirty = append(sv.dirty, d)
			}
		}
		if d.pend != nil && len(d.pend.b) > 0 {
			if b, err := json.Marshal(d.pend.b); err == nil {
				sv.batches[k.(string)] = Batch{From: time.Unix(d.pend.b[0].Sec, 0), Data: b}
				sv.sent[d] = d.pend.b
				d.pend = nil
			}
		}
		d.mu.Unlock()
		return true
	})
	l.delMu.Lock()
	for id, at := range l.deleted {
		if _, again := sv.put[id]; !again { // deleted and created again since: the new record stands
			sv.del = append(sv.del, id)
		}
		sv.purge = append(sv.purge, Purge{Device: id, At: at})
	}
	clear(l.deleted)
	l.delMu.Unlock()
	return sv
}

// restore puts back what a failed save took, to be saved next time.
func (l *Ledger) restore(sv save) {
	for _, d := range sv.dirty {
		d.mu.Lock()
		d.dirty = true
		d.mu.Unlock()
	}
	for d, b := range sv.sent {
		d.mu.Lock()
		if d.pend == nil {
			d.pend = &pending{}
		}
		d.pend.prepend(b)
		d.mu.Unlock()
	}
	l.delMu.Lock()
	for _, p := range sv.purge { // del is a subset of purge
		if _, again := l.deleted[p.Device]; !again {
			l.deleted[p.Device] = p.At
		}
	}
	l.delMu.Unlock()
}
