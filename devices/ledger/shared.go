package ledger

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Several instances (docs/architecture.md "The ledger: where each count
// is kept"). Behind one broker a device's messages are spread over
// instances (a shared subscription hands each message to one of them),
// so no instance alone sees its whole seq stream. With a SharedStore the
// instances do not track seq themselves: each keeps the numbers it made
// durable since its last save in one-second buckets (spans per boot, by
// the second they were received in), and its save writes them and its
// heartbeat. A device's sequence record (the tracker of seq.go, its
// gaps, duplicates and resets) lives once in the store; whichever
// instance saves next settles every bucket older than the watermark (the
// oldest heartbeat among instances that saved within LiveFor, less a
// slack), all instances' buckets of those seconds merged and sorted, so
// the tracker sees the stream as one instance would. Buckets are aligned
// to whole seconds so that every instance cuts at the same second: a
// number is settled together with every number received in the same or
// an earlier second anywhere, and a gap is reported only once its
// numbers can no longer be waiting on another instance.

// SharedStore is a Store that several instances share (pgstore). Sync is
// one transaction; the ledger calls it every PersistInterval.
type SharedStore interface {
	Store
	// Sync saves this instance's records (Put, Del) and batches,
	// records its heartbeat, then
	// settles up to MaxSettle devices whose batches are ready (received
	// before the watermark less Slack) and not being settled by another
	// instance: for each it calls Settle with the stored sequence record
	// (nil at first) and the ready batches in the order they were saved,
	// stores the result and deletes those batches (or keeps the part
	// Settle left).
	Sync(ctx context.Context, req SyncRequest) (SyncResult, error)
	// Join records this instance's heartbeat at start, before it
	// accepts anything: the others' watermark waits for it from then.
	Join(ctx context.Context, instance string, at time.Time, liveFor time.Duration) error
	// Leave removes this instance's heartbeat after its last Sync, so
	// the others' watermark stops waiting for it.
	Leave(ctx context.Context, instance string) error
	// SeqRecord returns a device's sequence record (nil if none).
	SeqRecord(ctx context.Context, device string) ([]byte, error)
	// FleetGaps returns the devices with open gaps, most first, at most
	// limit, and the number of such devices and of open gaps in all.
	FleetGaps(ctx context.Context, limit int) (top []DeviceGaps, devices, open int, err error)
}

// SyncRequest is one instance's save (see SharedStore.Sync).
type SyncRequest struct {
	Instance string
	// SavedAt is when the instance took the snapshot it saves: every
	// number it made durable before then is in Batches or already saved.
	SavedAt time.Time
	Put     map[string][]byte
	Del     []string
	// Purge are deleted devices whose sequence record and batches go,
	// before Batches are written (a device deleted and created again
	// since starts again).
	Purge   []Purge
	Batches map[string]Batch
	// LiveFor is how recent this instance's heartbeat must be for the
	// others' watermark to wait for it (a crashed instance is waited for
	// no longer); each heartbeat carries its own.
	LiveFor time.Duration
	// Slack absorbs clock differences between instances.
	Slack     time.Duration
	MaxSettle int
	// Settle applies the buckets of rows older than mark to rec (nil at
	// first) and returns the new record and the rows still holding
	// younger buckets (same ID, new Data and From); the others are done.
	Settle func(device string, rec []byte, rows []BatchRow, mark time.Time) ([]byte, Settled, []BatchRow, error)
}

// Purge is a deleted device, and when this instance was told: its
// sequence record (if last settled before At) and its batches received
// before At go. A re-created device's newer ones stay, even when this
// instance's save comes late.
type Purge struct {
	Device string
	At     time.Time
}

// Batch is one device's seq numbers an instance made durable since its
// last save: Data (encoded buckets, for Settle) and the start of its
// oldest bucket, which the watermark must pass before any of it is
// settled.
type Batch struct {
	From time.Time
	Data []byte
}

// BatchRow is a stored Batch.
type BatchRow struct {
	ID int64
	Batch
}

// Settled is what settling one device's batches changed.
type Settled struct {
	Device         string
	OpenGapsBefore int // confirmed, before and after
	OpenGaps       int
	// ConfirmAt is the merge second (Unix) from which its oldest
	// provisional gap can be confirmed, 0 when none waits: the device
	// is settled again then, batches or not.
	ConfirmAt int64
	Counts    seqCounts
}

// SyncResult is what a Sync settled, and the fleet's open gaps after it.
type SyncResult struct {
	Settled     []Settled
	FleetOpen   int
	FleetWithIt int
}

// maxSpans bounds the spans one device's buckets keep between saves.
// Numbers arriving in order make one span a second; interleaved
// delivery (every other number to this instance) one per number. Beyond
// it the two closest spans of a boot are joined: the numbers between
// count as seen, which can hide a gap but never invent one.
const maxSpans = 4096

// maxBoots bounds the boots one device's buckets keep between saves:
// a further boot evicts the one least recently used, whose numbers are
// dropped and which counts as one reset (a device rebooting more often
// than that is broken; memory mode keeps two boots). The boot in use is
// never the one evicted.
const maxBoots = 8

// confirmAfter is how many merge seconds a provisional gap waits: a
// number of it that another instance stamped up to the slack later by
// its clock (or that was in a bucket of the next second) is merged by
// then.
const confirmAfter = 3

// maxBuckets bounds a device's buckets between saves (saves that keep
// failing): beyond it the oldest is folded into the next, which only
// settles its numbers a little later.
const maxBuckets = 600

// numSpan is an inclusive range of seq numbers, [from, to] in JSON.
type numSpan [2]uint64

// bootSpans is one boot's numbers in a bucket, ascending, disjoint.
// Approx says spans were joined (over maxSpans): numbers inside them
// may not have been seen, so they count no duplicates.
type bootSpans struct {
	Boot   string    `json:"boot"`
	Spans  []numSpan `json:"spans"`
	Approx bool      `json:"approx,omitempty"`
}

// bucket is the seq numbers one instance made durable for one device in
// one second (Sec, Unix time): per boot in the order the boots appeared,
// and how many it saw twice within the bucket.
type bucketSeq struct {
	Sec   int64       `json:"sec"`
	Dups  uint64      `json:"dups,omitempty"`
	Boots []bootSpans `json:"boots"`
	// Resets counts boots beyond maxBoots, whose numbers were dropped.
	Resets uint64 `json:"resets,omitempty"`
}

// pending is a device's buckets since its last save, oldest first.
type pending struct {
	b     []bucketSeq
	spans int
	boots []string // distinct, least recently used first, at most maxBoots
}

// add records n of boot received at now; it reports whether the device
// is over its span bound (the caller asks for an early save).
func (p *pending) add(boot string, n uint64, now time.Time) bool {
	sec := now.Unix()
	if k := len(p.b); k == 0 || p.b[k-1].Sec < sec {
		p.b = append(p.b, bucketSeq{Sec: sec})
		if len(p.b) > maxBuckets {
			p.b[1].fold(p.b[0])
			p.b = slices.Delete(p.b, 0, 1)
			p.recount()
		}
	}
	b := &p.b[len(p.b)-1] // a clock that went back keeps filling the newest
	if k := len(p.boots); k == 0 || p.boots[k-1] != boot {
		if j := slices.Index(p.boots, boot); j >= 0 {
			p.boots = append(slices.Delete(p.boots, j, j+1), boot)
		} else {
			if k == maxBoots {
				p.evict(p.boots[0])
				b.Resets++
			}
			p.boots = append(p.boots, boot)
		}
	}
	i := slices.IndexFunc(b.Boots, func(bs bootSpans) bool { return bs.Boot == boot })
	if i < 0 {
		b.Boots = append(b.Boots, bootSpans{Boot: boot})
		i = len(b.Boots) - 1
	}
	bs := &b.Boots[i]
	before := len(bs.Spans)
	if !addNum(&bs.Spans, n) {
		b.Dups++
	}
	p.spans += len(bs.Spans) - before
	if p.spans <= maxSpans {
		return false
	}
	if len(bs.Spans) > 1 {
		joinClosest(&bs.Spans)
		bs.Approx = true
		p.spans--
	}
	return true
}

// evict drops boot's numbers from every bucket.
func (p *pending) evict(boot string) {
	p.boots = slices.DeleteFunc(p.boots, func(x string) bool { return x == boot })
	for i := range p.b {
		p.b[i].Boots = slices.DeleteFunc(p.b[i].Boots, func(bs bootSpans) bool { return bs.Boot == boot })
	}
	p.recount()
}

// recount recomputes spans and boots from the buckets.
func (p *pending) recount() {
	p.spans = 0
	var boots []string
	for _, b := range p.b {
		for _, bs := range b.Boots {
			p.spans += len(bs.Spans)
			if !slices.Contains(boots, bs.Boot) {
				boots = append(boots, bs.Boot)
			}
		}
	}
	// Keep the recency order of the boots still present.
	kept := slices.DeleteFunc(slices.Clone(p.boots), func(x string) bool { return !slices.Contains(boots, x) })
	for _, x := range boots {
		if !slices.Contains(kept, x) {
			kept = append([]string{x}, kept...)
		}
	}
	p.boots = kept
}

// prepend puts older buckets (a failed save's) back before p's.
func (p *pending) prepend(older []bucketSeq) {
	p.b = append(slices.Clone(older), p.b...)
	for len(p.b) > maxBuckets {
		p.b[1].fold(p.b[0])
		p.b = slices.Delete(p.b, 0, 1)
	}
	p.recount()
	for len(p.boots) > maxBoots {
		p.evict(p.boots[0])
		p.b[len(p.b)-1].Resets++
	}
}

// addNum adds n to the sorted disjoint spans; false when it was there.
// A number one past the last span (the usual case) costs a binary
// search and no allocation.
func addNum(spans *[]numSpan, n uint64) bool {
	sp := *spans
	i := sort.Search(len(sp), func(i int) bool { return sp[i][0] > n }) // the first span after n
	if i > 0 && sp[i-1][1] >= n {
		return false
	}
	joinPrev := i > 0 && sp[i-1][1]+1 == n
	joinNext := i < len(sp) && n+1 == sp[i][0]
	switch {
	case joinPrev && joinNext:
		sp[i-1][1] = sp[i][1]
		sp = slices.Delete(sp, i, i+1)
	case joinPrev:
		sp[i-1][1] = n
	case joinNext:
		sp[i][0] = n
	default:
		sp = slices.Insert(sp, i, numSpan{n, n})
	}
	*spans = sp
	return true
}

// joinClosest joins the two neighbouring spans with the fewest numbers
// between them.
func joinClosest(spans *[]numSpan) {
	sp := *spans
	if len(sp) < 2 {
		return
	}
	best := 0
	for i := 1; i+1 < len(sp); i++ {
		if sp[i+1][0]-sp[i][1] < sp[best+1][0]-sp[best][1] {
			best = i
		}
	}
	sp[best][1] = sp[best+1][1]
	*spans = slices.Delete(sp, best+1, best+2)
}

// fold joins o into b: spans unioned (numbers in both are duplicates:
// two instances, or a resend, stored them); b keeps its second.
func (b *bucketSeq) fold(o bucketSeq) {
	b.Dups += o.Dups
	b.Resets += o.Resets
	for _, bs := range o.Boots {
		i := slices.IndexFunc(b.Boots, func(x bootSpans) bool { return x.Boot == bs.Boot })
		if i < 0 {
			b.Boots = append(b.Boots, bootSpans{Boot: bs.Boot})
			i = len(b.Boots) - 1
		}
		x := &b.Boots[i]
		var dups uint64
		x.Spans, dups = union(append(slices.Clone(x.Spans), bs.Spans...))
		x.Approx = x.Approx || bs.Approx
		if !x.Approx {
			b.Dups += dups
		}
	}
}

// union sorts and merges spans, returning the numbers they overlap in
// (each a duplicate: two instances, or a resend, stored it).
func union(all []numSpan) ([]numSpan, uint64) {
	slices.SortFunc(all, func(x, y numSpan) int { return cmp.Compare(x[0], y[0]) })
	var out []numSpan
	var dups uint64
	for _, s := range all {
		if n := len(out); n > 0 && out[n-1][1]+1 >= s[0] {
			last := &out[n-1]
			if s[0] <= last[1] {
				dups += min(s[1], last[1]) - s[0] + 1
			}
			last[1] = max(last[1], s[1])
			continue
		}
		out = append(out, s)
	}
	return out, dups
}

// settle applies a device's buckets older than mark's second, from
// every instance's rows, to its stored sequence record rec (nil at
// first): merged into one bucket and sorted first, so numbers two
// instances took in the same seconds are seen in order, as one instance
// would see them. It returns the new record and the rows left with
// younger buckets.
func (l *Ledger) settle(id string, rec []byte, rows []BatchRow, mark time.Time) ([]byte, Settled, []BatchRow, error) {
	out := Settled{Device: id}
	d, err := l.decodeRecord(id, rec)
	if err != nil {
		// An unreadable record is started again rather than blocking
		// the device's settling for good.
		l.opts.Logger.Warn("ledger sequence record unreadable; starting it again", "device", id, "err", err)
		d = &device{}
	}
	out.OpenGapsBefore = d.Seq.confirmedOpen()
	cut := mark.Unix() // buckets of earlier seconds are complete everywhere
	var ready []bucketSeq
	var left []BatchRow
	for _, r := range rows {
		var bs []bucketSeq
		if err := json.Unmarshal(r.Data, &bs); err != nil || !validBuckets(bs) {
			l.opts.Logger.Warn("ledger batch unreadable; skipped", "device", id, "err", err)
			continue
		}
		var young []bucketSeq
		for _, b := range bs {
			if b.Sec < cut {
				ready = append(ready, b)
			} else {
				young = append(young, b)
			}
		}
		if len(young) > 0 {
			data, err := json.Marshal(young)
			if err != nil {
				return nil, Settled{}, nil, fmt.Errorf("encode batch of %s: %w", id, err)
			}
			left = append(left, BatchRow{ID: r.ID, Batch: Batch{From: time.Unix(young[0].Sec, 0), Data: data}})
		}
	}
	slices.SortStableFunc(ready, func(a, b bucketSeq) int { return cmp.Compare(a.Sec, b.Sec) })
	var all bucketSeq
	for _, b := range ready {
		all.fold(b)
	}
	now, m := l.minute()
	d.Seq.cut = cut // gaps opened now are provisional
	for _, bs := range all.Boots {
		for _, s := range bs.Spans {
			c := d.Seq.observeSpan(bs.Boot, s[0], s[1], now, l.opts.MaxOpenGaps)
			if !bs.Approx {
				out.Counts.duplicates += c.duplicates
			}
			out.Counts.resets += c.resets
		}
		if bs.Approx && len(bs.Spans) > 0 { // which numbers the joins invented is unknown
			d.Seq.addFuzzy(bs.Boot, bs.Spans[0][0], bs.Spans[len(bs.Spans)-1][1])
		}
	}
	d.Seq.cut = 0
	out.Counts.duplicates += all.Dups
	out.Counts.resets += all.Resets
	// Provisional gaps the bound on open gaps expired are counted, as
	// memory mode counts every gap it opened.
	out.Counts.gaps += d.Seq.expired
	d.Seq.expired = 0
	// Gaps still open confirmAfter merge seconds after they were
	// noticed are real: counted now (the parts of a split gap once),
	// listed from now on.
	type origin struct {
		boot  string
		epoch uint32
		cut   int64
		orig  uint64
	}
	var counted []origin
	for i := range d.Seq.Open {
		g := &d.Seq.Open[i]
		switch {
		case !g.provisional():
		case g.Cut+confirmAfter <= cut:
			if o := (origin{g.Boot, g.Epoch, g.Cut, g.Orig}); !slices.Contains(counted, o) {
				counted = append(counted, o)
				out.Counts.gaps++
			}
			g.Cut, g.Orig = 0, 0
		case out.ConfirmAt == 0 || g.Cut+confirmAfter < out.ConfirmAt:
			out.ConfirmAt = g.Cut + confirmAfter
		}
	}
	addSeq(d, out.Counts, m)
	out.OpenGaps = d.Seq.confirmedOpen()
	b, err := json.Marshal(d)
	if err != nil {
		return nil, Settled{}, nil, fmt.Errorf("encode sequence record of %s: %w", id, err)
	}
	return b, out, left, nil
}

// decodeRecord decodes a stored sequence record (nil: a new one),
// refusing one this code could not have written.
func (l *Ledger) decodeRecord(id string, rec []byte) (*device, error) {
	d := &device{}
	if len(rec) == 0 {
		return d, nil
	}
	if err := json.Unmarshal(rec, d); err != nil {
		return nil, fmt.Errorf("decode the sequence record of %s: %w", id, err)
	}
	if !d.Seq.valid(max(l.opts.MaxOpenGaps, DefaultMaxOpenGaps)) {
		return nil, fmt.Errorf("the sequence record of %s is not one the hub writes", id)
	}
	return d, nil
}

// validBuckets reports whether stored buckets are ones an instance
// could have saved: bounded, each span ascending within the seq range.
func validBuckets(bs []bucketSeq) bool {
	if len(bs) > maxBuckets {
		return false
	}
	for _, b := range bs {
		if len(b.Boots) > maxBoots {
			return false
		}
		for _, x := range b.Boots {
			if len(x.Spans) > maxSpans {
				return false
			}
			for _, sp := range x.Spans {
				if sp[0] > sp[1] || sp[1] > telemetry.MaxSeq {
					return false
				}
			}
		}
	}
	return true
}

// addSeq counts c into a sequence record's counters and window.
func addSeq(d *device, c seqCounts, minute int64) {
	for _, x := range []struct {
		i int
		n uint64
	}{{cGaps, c.gaps}, {cDuplicates, c.duplicates}, {cResets, c.resets}} {
		if x.n == 0 {
			continue
		}
		d.C[x.i] += x.n
		b := &d.Win[minute%buckets]
		if b.Minute != minute {
			*b = bucket{Minute: minute}
		}
		b.C[x.i] += uint32(min(x.n, 1<<31))
	}
}

// maxSettle bounds the devices one Sync settles; the rest wait for the
// next (any instance's).
const maxSettle = 1000

// syncSlack absorbs clock differences between instances: a batch is
// settled once every live instance saved this much past its last number.
const syncSlack = 2 * time.Second

// liveFor is how long the others wait for this instance's next save
// before they take it for crashed.
func (l *Ledger) liveFor() time.Duration { return 3*l.opts.PersistInterval + syncSlack }

// sync is Persist in shared mode: this instance's records and batches
// and heartbeat in one transaction that also settles the devices whose
// batches are ready. It runs every PersistInterval even when nothing
// changed here: the heartbeat moves the watermark, and other instances'
// batches need settling.
func (l *Ledger) sync(ctx context.Context) error {
	savedAt := l.opts.Now()
	sv := l.collect()
	res, err := l.shared.Sync(ctx, SyncRequest{
		Instance: l.opts.Instance, SavedAt: savedAt, Put: sv.put, Del: sv.del, Batches: sv.batches,
		Purge: sv.purge, LiveFor: l.liveFor(), Slack: syncSlack, MaxSettle: maxSettle, Settle: l.settle,
	})
	if err != nil {
		l.restore(sv)
		return fmt.Errorf("sync ledger of %d devices: %w", len(sv.put), err)
	}
	for _, st := range res.Settled {
		l.totals[cGaps].Add(st.Counts.gaps)
		l.totals[cDuplicates].Add(st.Counts.duplicates)
		l.totals[cResets].Add(st.Counts.resets)
		if d, ok := l.devs.Load(st.Device); ok {
			d.(*device).openN.Store(int32(st.OpenGaps))
		}
		if st.OpenGaps != st.OpenGapsBefore && l.opts.OnGapsChanged != nil {
			l.opts.OnGapsChanged(st.Device, st.OpenGaps)
		}
	}
	l.fleetOpen.Store(int64(res.FleetOpen))
	l.fleetWith.Store(int64(res.FleetWithIt))
	return nil
}
