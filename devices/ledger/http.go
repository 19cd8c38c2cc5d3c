package ledger

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// maxGapsShown bounds the gaps one device's view lists (the most recent).
const maxGapsShown = 100

// maxFleetDevices bounds the devices with open gaps the fleet view lists
// (the most open gaps first).
const maxFleetDevices = 100

// Counts are one device's (or the fleet's) counts over some span.
type Counts struct {
	Received     uint64            `json:"received"`
	Refused      map[string]uint64 `json:"refused,omitempty"`
	RefusedTotal uint64            `json:"refused_total"`
	Durable      uint64            `json:"durable"`
	Written      uint64            `json:"written"`
	DeadLettered uint64            `json:"dead_lettered"`
	Gaps         uint64            `json:"gaps"`
	Duplicates   uint64            `json:"duplicates"`
	Resets       uint64            `json:"resets"`
}

// SeqView is the sequence part of a device's ledger.
type SeqView struct {
	OpenGaps   int    `json:"open_gaps"`
	Gaps       []Gap  `json:"gaps"`
	GapsTotal  uint64 `json:"gaps_total"`
	Duplicates uint64 `json:"duplicates"`
	Resets     uint64 `json:"resets"`
}

// DeviceView is GET /api/v1/devices/{id}/ledger (docs/protocol.md).
type DeviceView struct {
	Device       string            `json:"device"`
	Received     uint64            `json:"received"`
	Refused      map[string]uint64 `json:"refused"`
	Durable      uint64            `json:"durable"`
	Written      uint64            `json:"written"`
	DeadLettered uint64            `json:"dead_lettered"`
	Seq          SeqView           `json:"seq"`
	// LastHour is the same counts over the last 60 one-minute buckets.
	LastHour Counts `json:"last_hour"`
	// Instances is how many hub instances hold a record of the device,
	// whose counts are summed (0 before it sent anything; more than 1
	// only when several instances share PostgreSQL, where seq is the
	// one merged tracker of every instance's numbers).
	Instances int `json:"instances"`
}

// RowReader is a Store that also reads every instance's record of one
// device (pgstore: instances sharing PostgreSQL), so a device's view sums
// the counts every instance keeps.
type RowReader interface {
	LedgerRows(ctx context.Context, device string) (map[string][]byte, error)
}

// Device returns a device's ledger view, or false when the ledger keeps
// nothing for it (unknown, or it never sent anything).
func (l *Ledger) Device(id string) (DeviceView, bool) {
	v, ok := l.devs.Load(id)
	if !ok {
		return DeviceView{}, false
	}
	d := v.(*device)
	_, m := l.minute()
	d.mu.Lock()
	defer d.mu.Unlock()
	out := DeviceView{Instances: 1,
		Device: id, Received: d.C[cReceived], Refused: map[string]uint64{}, Durable: d.C[cDurable],
		Written: d.C[cWritten], DeadLettered: d.C[cDead], Seq: seqView(d),
	}
	for k, n := range d.Refused {
		out.Refused[k] = n
	}
	out.LastHour = hourCounts(d, m)
	return out, true
}

// seqView is the sequence part of d's view. d.mu is held, or d is a
// private copy.
func seqView(d *device) SeqView {
	v := SeqView{OpenGaps: d.Seq.confirmedOpen(), GapsTotal: d.C[cGaps], Duplicates: d.C[cDuplicates], Resets: d.C[cResets]}
	gaps := make([]Gap, 0, min(v.OpenGaps, maxGapsShown)+keptClosed)
	for _, g := range d.Seq.Open { // provisional ones are not reported yet
		if !g.provisional() {
			gaps = append(gaps, g)
		}
	}
	gaps = gaps[max(0, len(gaps)-maxGapsShown):]
	for _, g := range d.Seq.Closed {
		if g != nil {
			gaps = append(gaps, *g)
		}
	}
	// The most recent first: by when a gap was last changed (closed, or
	// noticed while open).
	slices.SortStableFunc(gaps, func(a, b Gap) int { return b.lastChange().Compare(a.lastChange()) })
	v.Gaps = gaps[:min(len(gaps), maxGapsShown)]
	return v
}

// addShared puts the store's sequence record of v's device (shared
// mode: the merged tracker of every instance) into v.
func (l *Ledger) addShared(ctx context.Context, v *DeviceView) error {
	rec, err := l.shared.SeqRecord(ctx, v.Device)
	if err != nil {
		return fmt.Errorf("read the sequence record of %s: %w", v.Device, err)
	}
	d, err := l.decodeRecord(v.Device, rec)
	if err != nil {
		// The store answered, with a record the next settle starts
		// again: an empty seq part, not an outage.
		l.opts.Logger.Warn("ledger sequence record unreadable; shown empty", "device", v.Device, "err", err)
		d = &device{}
	}
	v.Seq = seqView(d)
	_, m := l.minute()
	h := hourCounts(d, m)
	v.LastHour.Gaps, v.LastHour.Duplicates, v.LastHour.Resets = h.Gaps, h.Duplicates, h.Resets
	return nil
}

// hourCounts sums d's buckets of the hour ending at minute m. d.mu is
// held, or d is a private copy.
func hourCounts(d *device, m int64) Counts {
	var h [nCounters]uint64
	for _, b := range d.Win {
		if b.Minute > m-buckets && b.Minute <= m {
			for i := range nCounters {
				h[i] += uint64(b.C[i])
			}
		}
	}
	return Counts{Received: h[cReceived], RefusedTotal: h[cRefused], Durable: h[cDurable], Written: h[cWritten],
		DeadLettered: h[cDead], Gaps: h[cGaps], Duplicates: h[cDuplicates], Resets: h[cResets]}
}

// addInstances adds to v the counts other instances saved for its
// device (their last save: at most PersistInterval old). The sequence
// view stays this instance's.
func (l *Ledger) addInstances(ctx context.Context, v *DeviceView) error {
	rr, ok := l.opts.Store.(RowReader)
	if !ok {
		return nil
	}
	rows, err := rr.LedgerRows(ctx, v.Device)
	if err != nil {
		return fmt.Errorf("read other instances' ledger of %s: %w", v.Device, err)
	}
	_, m := l.minute()
	for inst, b := range rows {
		if inst == l.opts.Instance {
			continue
		}
		var d device
		if json.Unmarshal(b, &d) != nil {
			continue // an unreadable row: that instance's own load says so
		}
		v.Instances++
		v.Received += d.C[cReceived]
		v.Durable += d.C[cDurable]
		v.Written += d.C[cWritten]
		v.DeadLettered += d.C[cDead]
		for c, n := range d.Refused {
			v.Refused[c] += n
		}
		h := hourCounts(&d, m)
		v.LastHour.Received += h.Received
		v.LastHour.RefusedTotal += h.RefusedTotal
		v.LastHour.Durable += h.Durable
		v.LastHour.Written += h.Written
		v.LastHour.DeadLettered += h.DeadLettered
	}
	return nil
}

func (g Gap) lastChange() time.Time {
	if g.ClosedAt != nil {
		return *g.ClosedAt
	}
	return g.NoticedAt
}

// DeviceGaps is one entry of the fleet view's devices with open gaps.
type DeviceGaps struct {
	Device   string `json:"device"`
	OpenGaps int    `json:"open_gaps"`
}

// FleetView is GET /api/v1/ledger: this instance's totals since start of
// every device it keeps, and the devices with open gaps (most first,
// bounded; Truncated says more have some).
type FleetView struct {
	Devices         int          `json:"devices"`
	Totals          Counts       `json:"totals"`
	OpenGaps        int          `json:"open_gaps"`
	DevicesWithGaps []DeviceGaps `json:"devices_with_open_gaps"`
	Truncated       bool         `json:"truncated"`
	GeneratedAt     time.Time    `json:"generated_at"`
}

// Fleet returns the fleet view.
func (l *Ledger) Fleet() FleetView {
	out := FleetView{DevicesWithGaps: []DeviceGaps{}, GeneratedAt: l.opts.Now().UTC()}
	refused := map[string]uint64{}
	l.devs.Range(func(k, v any) bool {
		d := v.(*device)
		out.Devices++
		if n := int(d.openN.Load()); n > 0 {
			out.OpenGaps += n
			out.DevicesWithGaps = append(out.DevicesWithGaps, DeviceGaps{Device: k.(string), OpenGaps: n})
		}
		d.mu.Lock()
		for c, n := range d.Refused {
			refused[c] += n
		}
		d.mu.Unlock()
		return true
	})
	slices.SortFunc(out.DevicesWithGaps, func(a, b DeviceGaps) int {
		return cmp.Or(cmp.Compare(b.OpenGaps, a.OpenGaps), cmp.Compare(a.Device, b.Device))
	})
	if len(out.DevicesWithGaps) > maxFleetDevices {
		out.DevicesWithGaps, out.Truncated = out.DevicesWithGaps[:maxFleetDevices], true
	}
	t := l.Totals()
	out.Totals = Counts{Received: t.Received, Refused: refused, RefusedTotal: t.Refused, Durable: t.Durable, Written: t.Written,
		DeadLettered: t.DeadLettered, Gaps: t.Gaps, Duplicates: t.Duplicates, Resets: t.Resets}
	return out
}

// ServeDevice answers GET /api/v1/devices/{id}/ledger; the caller checks
// the operator's role. A registered device that sent nothing yet has an
// empty ledger; an unknown one is 404.
func (l *Ledger) ServeDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	v, ok := l.Device(id)
	if !ok {
		if !l.opts.Exists(id) {
			writeJSON(w, http.StatusNotFound, map[string]map[string]string{"error": {"code": "not_found", "message": "no such device"}})
			return
		}
		v = DeviceView{Device: id, Refused: map[string]uint64{}, Seq: SeqView{Gaps: []Gap{}}}
	}
	if err := l.addInstances(r.Context(), &v); err != nil {
		// This instance's counts alone, said so by instances: 1.
		l.opts.Logger.Warn("ledger: other instances' counts unavailable", "device", id, "err", err)
	}
	if l.shared != nil {
		if err := l.addShared(r.Context(), &v); err != nil {
			// No seq part at all rather than a wrong one.
			l.opts.Logger.Warn("ledger: sequence record unavailable", "device", id, "err", err)
			writeUnavailable(w)
			return
		}
	}
	writeJSON(w, http.StatusOK, v)
}

// ServeFleet answers GET /api/v1/ledger; the caller checks the role. In
// shared mode the devices with open gaps are the fleet's, from the
// store.
func (l *Ledger) ServeFleet(w http.ResponseWriter, r *http.Request) {
	f := l.Fleet()
	if l.shared != nil {
		top, n, open, err := l.shared.FleetGaps(r.Context(), maxFleetDevices)
		if err != nil {
			l.opts.Logger.Warn("ledger: fleet gaps unavailable", "err", err)
			writeUnavailable(w)
			return
		}
		f.DevicesWithGaps, f.OpenGaps, f.Truncated = top, open, n > len(top)
		if f.DevicesWithGaps == nil {
			f.DevicesWithGaps = []DeviceGaps{}
		}
	}
	writeJSON(w, http.StatusOK, f)
}

func writeUnavailable(w http.ResponseWriter) {
	writeJSON(w, http.StatusServiceUnavailable, map[string]map[string]string{"error": {"code": "unavailable", "message": "the ledger's store is unavailable; try again"}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away: nothing to do
}
