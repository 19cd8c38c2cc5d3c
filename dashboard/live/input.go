package live

import (
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// The hub has two inputs. Readings, the bulk, go through a bounded
// channel of batches (one per device message) that drops and counts when
// full: the latest values coalesce anyway, and a publisher is a device's
// reader that must not wait. Presence changes, command statuses and
// Forget go through the state input, a short list under Hub.smu that is
// never dropped from: past stateKept it is coalesced to the latest event
// per key (device for presence, command for its status), so a device's
// offline is never lost and never overtaken by its older online. Every
// publish takes a stamp from one counter, and a round applies the two
// inputs merged in stamp order, so a device's last reading and the
// offline published after it reach the dashboards in that order.

// batch is one message's readings with its publish stamp.
type batch struct {
	at  uint64
	evs []telemetry.Event
}

// stateEvent is a presence change, a command status or a Forget (forget
// set; ev.Device says which device) with its publish stamp. applied, if
// set, is closed once the hub has applied the Forget.
type stateEvent struct {
	at      uint64
	ev      telemetry.Event
	forget  bool
	applied chan struct{}
}

// key says which events coalesce: the latest presence per device, the
// latest status per command, the latest change per alert, the latest
// state document per device, one waiterless Forget per device. A Forget
// with a waiter never coalesces (its caller waits for it, so there are
// no more of those than callers).
func (se *stateEvent) key() (string, bool) {
	switch {
	case se.forget && se.applied != nil:
		return "", false
	case se.forget:
		return "f\x00" + se.ev.Device, true
	case se.ev.Type == telemetry.EventCommand:
		return "c\x00" + se.ev.Device + "\x00" + se.ev.ID, true
	case se.ev.Type == telemetry.EventAlert:
		return "a\x00" + se.ev.Device + "\x00" + se.ev.ID, true
	default:
		return string(se.ev.Type) + "\x00" + se.ev.Device, true
	}
}

// stateKept is how many state events wait before the state input is
// coalesced (normally the hub takes them within a round, so nothing is
// ever coalesced).
const stateKept = 4096

// Publish implements bridge.Fanout. A reading is PublishBatch of one; a
// presence change or a command status goes to the state input, which
// never drops it. It never blocks.
func (h *Hub) Publish(ev telemetry.Event) {
	if ev.Type == telemetry.EventReading {
		h.sendReadings([]telemetry.Event{ev})
		return
	}
	h.publishState(stateEvent{ev: ev})
}

// PublishBatch hands the events of one message to the hub without
// waiting. The hub owns evs afterwards. Readings go in one non-blocking
// send; if the hub's input is full (Options.InputLen batches or
// Options.InputEvents readings) they are dropped, counted
// (Stats.InputDropped) and logged at most once per dropLogEvery: the
// publisher is a device's reader waiting to ack, and is never held up by
// dashboards. Any other event goes to the state input (Publish), in
// order with the readings around it.
func (h *Hub) PublishBatch(evs []telemetry.Event) {
	start := 0
	for i := range evs {
		if evs[i].Type == telemetry.EventReading {
			continue
		}
		if i > start {
			h.sendReadings(evs[start:i])
		}
		h.publishState(stateEvent{ev: evs[i]})
		start = i + 1
	}
	if start < len(evs) {
		h.sendReadings(evs[start:])
	}
}

// sendReadings is the readings' input: one non-blocking send, counted
// against InputEvents before it so the bound holds for concurrent
// publishers; a full input drops the batch.
func (h *Hub) sendReadings(evs []telemetry.Event) {
	n := int64(len(evs))
	if h.queued.Add(n) > int64(h.opts.InputEvents) {
		h.queued.Add(-n)
		h.dropReadings(n)
		return
	}
	select {
	case h.in <- batch{at: h.stamp.Add(1), evs: evs}:
	default:
		h.queued.Add(-n)
		h.dropReadings(n)
	}
}

// dropReadings counts n dropped readings and logs at most once per
// dropLogEvery.
func (h *Hub) dropReadings(n int64) {
	h.inputDropped.Add(n)
	now := time.Now().UnixNano()
	if next := h.dropLogNext.Load(); now >= next && h.dropLogNext.CompareAndSwap(next, now+int64(dropLogEvery)) {
		h.log.Warn("live events dropped", "reason", "hub_input_full", "dropped_total", h.inputDropped.Load())
	}
}

// dropLogEvery spaces the log lines of a full hub input.
const dropLogEvery = 10 * time.Second

// publishState appends se to the state input with its stamp and wakes
// the hub. Full case: past stateCoalesceAt the list is coalesced to the
// latest event per key, which bounds it by the devices and commands with
// an event waiting; the threshold then doubles from what is left, so a
// flood over many keys coalesces in amortised constant time per event.
func (h *Hub) publishState(se stateEvent) {
	h.smu.Lock()
	se.at = h.stamp.Add(1) // under smu: the list stays in stamp order
	h.state = append(h.state, se)
	if len(h.state) > h.stateCoalesceAt {
		h.state = coalesceState(h.state)
		h.stateCoalesceAt = max(stateKept, 2*len(h.state))
	}
	h.smu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default: // the hub is already due to look
	}
}

// coalesceState keeps the latest event of each key (stateEvent.key), in
// order, reusing list.
func coalesceState(list []stateEvent) []stateEvent {
	last := make(map[string]int, len(list))
	for i := range list {
		if k, ok := list[i].key(); ok {
			last[k] = i
		}
	}
	out := list[:0]
	for i := range list {
		if k, ok := list[i].key(); !ok || last[k] == i {
			out = append(out, list[i])
		}
	}
	clear(list[len(out):])
	return out
}

// gatherMax bounds the readings one fan-out round takes from the input.
const gatherMax = 1024

// gather takes first (if any) and the batches already waiting in the
// input, up to gatherMax readings, without waiting: one fan-out round
// then costs each subscriber one lock and its writer one wake-up,
// however many publishers were busy meanwhile. cut says it stopped at
// gatherMax rather than at an empty input. The slice is the hub's
// scratch, valid until the next gather.
func (h *Hub) gather(first *batch) (bs []batch, cut bool) {
	bs = h.batches[:0]
	n := 0
	if first != nil {
		h.queued.Add(-int64(len(first.evs)))
		bs = append(bs, *first)
		n += len(first.evs)
	}
	for n < gatherMax {
		select {
		case b := <-h.in:
			h.queued.Add(-int64(len(b.evs)))
			bs = append(bs, b)
			n += len(b.evs)
		default:
			return bs, false
		}
	}
	return bs, true
}

// round is one turn of the hub goroutine: it takes the state input, then
// gathers the readings (so a reading sent before a state event was
// published is in this round), and applies both in stamp order: the
// state events stamped before a batch go before it, a Forget between the
// events it follows and those after it. When the gather stopped at
// gatherMax with readings still waiting, the state events stamped after
// the last batch taken go back to the front of the state input for the
// next round, so they do not overtake readings published before them.
func (h *Hub) round(first *batch) {
	h.smu.Lock()
	st := h.state
	h.state = nil
	h.stateCoalesceAt = stateKept
	h.smu.Unlock()
	bs, cut := h.gather(first)
	evs := h.gathered[:0]
	si := 0
	for _, b := range bs {
		for ; si < len(st) && st[si].at < b.at; si++ {
			evs = h.applyState(evs, &st[si])
		}
		evs = append(evs, b.evs...)
	}
	if rest := st[si:]; len(rest) > 0 && cut && len(h.in) > 0 {
		h.smu.Lock()
		h.state = append(append(make([]stateEvent, 0, len(rest)+len(h.state)), rest...), h.state...)
		if len(h.state) > h.stateCoalesceAt {
			h.state = coalesceState(h.state)
			h.stateCoalesceAt = max(stateKept, 2*len(h.state))
		}
		h.smu.Unlock()
	} else {
		for ; si < len(st); si++ {
			evs = h.applyState(evs, &st[si])
		}
	}
	if len(evs) > 0 {
		h.fanout(evs)
	}
	clear(evs)
	h.gathered = evs[:0]
	clear(bs)
	h.batches = bs[:0]
}

// applyState adds a state event to the round's events; a Forget first
// fans out the events before it, then applies.
func (h *Hub) applyState(evs []telemetry.Event, se *stateEvent) []telemetry.Event {
	if !se.forget {
		return append(evs, se.ev)
	}
	if len(evs) > 0 {
		h.fanout(evs)
		clear(evs)
		evs = evs[:0]
	}
	h.forget(se)
	return evs
}
