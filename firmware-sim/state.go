package firmwaresim

import (
	"encoding/json"
	"maps"
	"strconv"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Firmware is the version the simulated devices report as `firmware` in
// their reported state.
const Firmware = "fieldhub-sim/1.0.0"

// Desired keys the simulated firmware understands; any other desired key
// stays in the delta, as it would with firmware that does not know it.
const (
	stateInterval  = "interval"   // seconds between readings, (0, 86400]
	stateFaultRate = "fault_rate" // share of faulty messages, [0, 1]
)

// desiredDoc is what the hub sends a device about its desired state: the
// WebSocket "state" frame and the payload on devices/{id}/state/desired.
type desiredDoc struct {
	Desired map[string]json.RawMessage `json:"desired"`
	Delta   map[string]json.RawMessage `json:"delta"`
	Version int64                      `json:"version"`
}

// deviceState is a device's own view of its state: when it booted and
// what it last reported. The device's mu guards it.
type deviceState struct {
	bootTime time.Time
	// reported is what the device last sent as reported (values as JSON
	// numbers and strings), so a desired document that changes nothing
	// the device knows sends no patch.
	reported map[string]any
	// desiredVersion is the version of the last desired document applied.
	desiredVersion int64
}

// connectReport returns the reported merge patch a device sends at every
// connect: its firmware, boot time and the settings it runs with, all of
// them, since the hub may have lost nothing or everything.
func (d *device) connectReport() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	interval := d.readingInterval()
	// The value last reported, when the device still runs with it: the
	// desired number exactly, not one rounded through a time.Duration.
	if v, ok := d.st.reported[stateInterval].(float64); ok && d.intervalOf(v) == d.interval {
		interval = v
	}
	patch := map[string]any{
		"firmware":     Firmware,
		"boot_time":    d.st.bootTime.UTC().Format(time.RFC3339),
		stateInterval:  interval,
		stateFaultRate: d.faultRate,
	}
	d.st.reported = maps.Clone(patch)
	return d.reportFrame(patch)
}

// readingInterval is the seconds between readings (a message carries
// Batch of them). The caller holds d.mu.
func (d *device) readingInterval() float64 {
	return d.interval.Seconds() / float64(d.f.cfg.Batch)
}

// intervalOf is the message interval of readings s seconds apart.
func (d *device) intervalOf(s float64) time.Duration {
	return time.Duration(s * float64(d.f.cfg.Batch) * float64(time.Second))
}

// applyDesired applies the desired keys the firmware understands and
// returns the reported patch of what changed, or nil when nothing did.
// A value out of range is not applied (it stays in the delta) and counted.
func (d *device) applyDesired(doc desiredDoc) []byte {
	d.f.c.desiredReceived.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.st.desiredVersion = doc.Version
	patch := map[string]any{}
	rateChanged := false
	if raw, ok := doc.Desired[stateInterval]; ok {
		var s float64
		if json.Unmarshal(raw, &s) != nil || s <= 0 || s > 86400 {
			d.f.c.desiredRefused.Add(1)
		} else if s != d.readingInterval() || d.st.reported[stateInterval] != s {
			d.interval = d.intervalOf(s)
			patch[stateInterval] = s
			rateChanged = true
		}
	}
	if raw, ok := doc.Desired[stateFaultRate]; ok {
		var r float64
		if json.Unmarshal(raw, &r) != nil || r < 0 || r > 1 {
			d.f.c.desiredRefused.Add(1)
		} else if r != d.faultRate || d.st.reported[stateFaultRate] != r {
			d.faultRate = r
			patch[stateFaultRate] = r
		}
	}
	if rateChanged {
		select {
		case d.rateChanged <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
	if len(patch) == 0 {
		return nil
	}
	if d.st.reported == nil {
		d.st.reported = map[string]any{}
	}
	maps.Copy(d.st.reported, patch)
	return d.reportFrame(patch)
}

// reportFrame is the WebSocket frame of a reported patch; its id starts
// with "s" so the answer is told apart from telemetry acks. The caller
// holds d.mu.
func (d *device) reportFrame(patch map[string]any) []byte {
	d.seq++
	b, _ := json.Marshal(map[string]any{"type": "state", "id": "s" + strconv.Itoa(d.seq), "reported": patch}) // numbers and strings: cannot fail
	return b
}

// reportPatch is the merge patch of a reported frame, the MQTT payload.
func reportPatch(frame []byte) []byte {
	var f struct {
		Reported json.RawMessage `json:"reported"`
	}
	_ = json.Unmarshal(frame, &f) // built by reportFrame
	return f.Reported
}

// isStateID reports whether a message id is a reported patch's.
func isStateID(id string) bool { return len(id) > 1 && id[0] == 's' }

// stateAnswered counts the hub's answer to a reported patch: an ack, or
// an error the simulator's valid patches must never get.
func (d *device) stateAnswered(id, code string) {
	if code != "" {
		d.f.c.errorCode(code)
		d.f.c.violation("%s: reported state %s refused with %q", d.cred.ID, id, code)
		return
	}
	d.f.c.stateAcked.Add(1)
}

// DeviceState is what one simulated device runs with, as it would report
// it: for tests that check a fleet converged to what operators desired.
type DeviceState struct {
	ID             string
	Interval       float64 // seconds between readings
	FaultRate      float64
	DesiredVersion int64 // of the last desired document the device applied
	BootTime       time.Time
}

// States returns every device's state now.
func (f *Fleet) States() []DeviceState {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]DeviceState, 0, len(f.devices))
	for _, d := range f.devices { // lock order: f.mu, then d.mu
		d.mu.Lock()
		out = append(out, DeviceState{ID: d.cred.ID, Interval: d.readingInterval(), FaultRate: d.faultRate, DesiredVersion: d.st.desiredVersion, BootTime: d.st.bootTime})
		d.mu.Unlock()
	}
	return out
}

// desiredQueue hands the latest desired document from a connection's
// reader to its send loop. Capacity 1, coalescing when full: a desired
// document replaces any older one not yet applied (only the newest
// matters), so the reader never blocks.
type desiredQueue chan desiredDoc

func newDesiredQueue() desiredQueue { return make(desiredQueue, 1) }

// put offers doc; with one waiting, the older is dropped. Only the
// connection's one reader calls put, so the second send finds room.
func (q desiredQueue) put(doc desiredDoc) {
	select {
	case q <- doc:
		return
	default:
	}
	select {
	case <-q: // drop the older document
	default:
	}
	select {
	case q <- doc:
	default: // unreachable with one reader; never block
	}
}

// stateDesiredTopic and stateReportedTopic are a device's state topics,
// from the one topic table.
func stateDesiredTopic(id string) string  { return telemetry.Topic(id, telemetry.KindStateDesired) }
func stateReportedTopic(id string) string { return telemetry.Topic(id, telemetry.KindStateReported) }
