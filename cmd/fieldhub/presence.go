package main

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Bounds of the presence recorder: the changes it holds before writing
// (a fleet reconnecting at once), the most it writes in one append, and
// how long one append may take.
const (
	presenceQueue    = 16384
	presenceBatch    = 1024
	presenceAppendIn = 10 * time.Second
)

// presenceRecorder makes devices' presence changes durable as points of
// telemetry.PresenceMeasurement, through a spool and writer of their own
// (the readings' spool, its bounds and its metrics stay the readings'),
// so the presence history survives a restart. It sees the changes of the
// devices connected to this instance: it sits between the bridge and the
// fan-out (presenceTee).
type presenceRecorder struct {
	store bridge.Store
	log   *slog.Logger
	// queue holds changes not yet appended. Full: the change is dropped
	// and counted in dropped (the live fan-out still has it); record never
	// blocks, for the bridge publishes under the device's presence lock.
	queue   chan telemetry.Event
	dropped atomic.Int64
	seq     int64 // sub-millisecond part of each point's time; Run's alone
}

func newPresenceRecorder(store bridge.Store, log *slog.Logger) *presenceRecorder {
	return &presenceRecorder{store: store, log: log, queue: make(chan telemetry.Event, presenceQueue)}
}

// record queues a presence change; anything else is ignored.
func (p *presenceRecorder) record(ev telemetry.Event) {
	if ev.Type != telemetry.EventPresence {
		return
	}
	select {
	case p.queue <- ev:
	default:
		p.dropped.Add(1)
	}
}

// Run appends queued changes until ctx ends, then appends what is still
// queued (the offline changes of the shutdown itself) and returns.
func (p *presenceRecorder) Run(ctx context.Context) error {
	batch := make([]telemetry.Event, 0, presenceBatch)
	var buf []byte
	for {
		select {
		case <-ctx.Done():
			for {
				batch = p.take(batch[:0])
				if len(batch) == 0 {
					return nil
				}
				buf = p.write(context.WithoutCancel(ctx), batch, buf)
			}
		case ev := <-p.queue:
			batch = p.take(append(batch[:0], ev))
			buf = p.write(ctx, batch, buf)
		}
	}
}

// take adds what is queued to batch, up to presenceBatch, without waiting.
func (p *presenceRecorder) take(batch []telemetry.Event) []telemetry.Event {
	for len(batch) < presenceBatch {
		select {
		case ev := <-p.queue:
			batch = append(batch, ev)
		default:
			return batch
		}
	}
	return batch
}

// write appends batch as one spool record; a failure drops and counts it.
func (p *presenceRecorder) write(ctx context.Context, batch []telemetry.Event, buf []byte) []byte {
	buf = buf[:0]
	for _, ev := range batch {
		// Changes of one millisecond stay distinct points (InfluxDB keeps
		// one point per series and instant).
		p.seq = (p.seq + 1) % int64(time.Millisecond)
		buf = telemetry.AppendPresenceLine(buf, ev, ev.At*int64(time.Millisecond)+p.seq)
	}
	actx, cancel := context.WithTimeout(ctx, presenceAppendIn)
	defer cancel()
	if err := p.store.Append(actx, len(batch), buf); err != nil {
		p.dropped.Add(int64(len(batch)))
		p.log.Warn("presence changes not recorded", "changes", len(batch), "err", err)
	}
	return buf
}

// presenceTee is the bridge's fan-out with the presence recorder in
// front: every event goes on to next, presence changes also to the
// recorder. It keeps next's batch path for readings.
type presenceTee struct {
	next  bridge.Fanout
	batch bridge.BatchFanout // next's, or nil
	rec   *presenceRecorder
}

func newPresenceTee(next bridge.Fanout, rec *presenceRecorder) *presenceTee {
	t := &presenceTee{next: next, rec: rec}
	t.batch, _ = next.(bridge.BatchFanout)
	return t
}

func (t *presenceTee) Publish(ev telemetry.Event) {
	t.rec.record(ev)
	t.next.Publish(ev)
}

// PublishBatch carries readings only (bridge.BatchFanout).
func (t *presenceTee) PublishBatch(evs []telemetry.Event) {
	if t.batch != nil {
		t.batch.PublishBatch(evs)
		return
	}
	for _, ev := range evs {
		t.next.Publish(ev)
	}
}
