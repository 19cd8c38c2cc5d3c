package firmwaresim

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Fault kinds and the answer the protocol documents for each.
const (
	faultMalformed = "malformed_json" // -> bad_json
	faultFutureTS  = "future_ts"      // -> invalid
	faultBadMetric = "bad_metric"     // -> invalid
	faultConflict  = "type_conflict"  // temp as a string on a hub that stores it as a number -> invalid
	faultReserved  = "reserved_name"  // a metric named time, which InfluxDB drops -> invalid
	faultOversized = "oversized"      // -> connection closed (WebSocket 1009, MQTT disconnect)
	faultWrongAuth = "wrong_token"    // -> 401 / CONNACK refused
	faultFlap      = "flap"           // -> nothing: the device drops and comes back
	faultSpike     = "spike"          // -> acked: good readings whose temp jumps to spikeTemp for spikeReadings readings, then back
)

// A spike is spikeReadings readings in a row whose temp is about
// spikeTemp, far above the sensor's usual 10-40 and its natural glitches
// (at most +25): a value a threshold alert rule must catch. The readings
// are good ones (acked and stored); the next reading is back in range.
const (
	spikeReadings = 3
	spikeTemp     = 150.0
)

// messageFaults are the fault kinds next draws from when Config.Faults is
// empty: every fault of a message but spike, which is opt-in because it
// changes what good readings say. wrong_token is a fault of the connect.
var messageFaults = []string{faultMalformed, faultFutureTS, faultBadMetric, faultOversized, faultFlap, faultConflict, faultReserved}

// FaultKinds are the names Config.Faults and --faults accept.
func FaultKinds() []string {
	return append(append([]string(nil), messageFaults...), faultSpike, faultWrongAuth)
}

var expectedCode = map[string]string{
	faultMalformed: telemetry.CodeBadJSON,
	faultFutureTS:  telemetry.CodeInvalid,
	faultBadMetric: telemetry.CodeInvalid,
	faultConflict:  telemetry.CodeInvalid,
	faultReserved:  telemetry.CodeInvalid,
}

// pending is a message sent and not yet answered.
type pending struct {
	at       time.Time
	payload  []byte
	readings int
	fault    string
	recorded []Reading // the readings as sent, when the fleet records them
}

// device is one simulated device. Its ledger of unanswered messages
// survives reconnects so good readings are resent.
type device struct {
	f         *Fleet
	idx       int
	cred      Cred
	transport string
	rng       *rand.Rand
	sensor    *sensor

	mu        sync.Mutex
	seq       int
	ledger    map[string]*pending
	order     []string // ledger ids in send order
	interval  time.Duration
	faultRate float64
	sentMsgs  int
	ackedMsgs int      // good messages acknowledged
	lastTS    int64    // readings get strictly increasing timestamps (unique points)
	spikeLeft int      // readings of the current spike still to send
	target    int      // which hub (of Hub and MoreHubs) this device connects to now
	boots     int      // restarts so far (RebootRate): the message's boot is "b<boots>"
	rseq      uint64   // the next good reading's seq within the boot
	skipped   []SeqGap // the seqs skipped (DropRate), exactly
	st        deviceState

	// rateChanged wakes the device's stream when setRate changed its
	// interval, so a new rate applies at once, not after the wait of the
	// old one. Capacity 1: a second change before the stream woke is the
	// same wake-up (setRate never blocks).
	rateChanged chan struct{}
}

// endpoint returns the device's current hub URL and broker address.
func (d *device) endpoint() (hub, broker string) {
	hubs := append([]string{d.f.cfg.Hub}, d.f.cfg.MoreHubs...)
	brokers := append([]string{d.f.cfg.MQTT}, d.f.cfg.MoreMQTT...)
	d.mu.Lock()
	defer d.mu.Unlock()
	return hubs[d.target%len(hubs)], brokers[d.target%len(brokers)]
}

// failover moves the device to the next hub after a failed connection.
func (d *device) failover() {
	d.mu.Lock()
	d.target++
	d.mu.Unlock()
}

func newDevice(f *Fleet, idx int, c Cred, transport string) *device {
	seed := f.cfg.Seed*1_000_003 + uint64(idx)
	return &device{
		f: f, idx: idx, cred: c, transport: transport,
		rng:      rand.New(rand.NewPCG(seed, 99)),
		sensor:   newSensor(seed),
		ledger:   map[string]*pending{},
		interval: time.Duration(float64(time.Second) * float64(f.cfg.Batch) / f.cfg.Rate),

		rateChanged: make(chan struct{}, 1),
		faultRate:   f.cfg.FaultRate,
		target:      idx, // spread the fleet over the hubs
		st:          deviceState{bootTime: time.Now()},
	}
}

// run connects, streams and reconnects until ctx ends or Count is reached.
func (d *device) run(ctx context.Context) {
	// Spread the fleet's first connects over a second, like a real fleet
	// coming up, so the hub is not hit by all of them at the same instant.
	if !sleep(ctx, time.Duration(d.rng.Int64N(int64(time.Second)))) {
		return
	}
	attempt := 0
	for ctx.Err() == nil && !d.leave() {
		var err error
		switch d.transport {
		case TransportMQTT:
			err = d.runMQTT(ctx)
		default:
			err = d.runWS(ctx)
		}
		if ctx.Err() != nil || d.leave() {
			return
		}
		d.f.c.reconnects.Add(1)
		if err == errReboot {
			d.mu.Lock()
			d.st.bootTime = time.Now() // reported at the next connect
			d.mu.Unlock()
		}
		if err == errReboot || err == errFlap {
			attempt = 0
		} else {
			attempt++
			d.failover()
		}
		if !sleep(ctx, backoff(d.rng, attempt)) {
			return
		}
	}
}

// backoff is capped exponential backoff with full jitter.
func backoff(rng *rand.Rand, attempt int) time.Duration {
	const base, ceiling = 100 * time.Millisecond, 10 * time.Second
	d := ceiling
	if attempt < 10 {
		d = min(ceiling, base<<attempt)
	}
	return time.Duration(rng.Int64N(int64(d)) + 1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (d *device) done() bool {
	if d.f.cfg.Count <= 0 {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sentMsgs >= d.f.cfg.Count && len(d.ledger) == 0
}

// leave reports whether the device is done and may disconnect for good:
// with Hold it stays until ctx ends.
func (d *device) leave() bool {
	return !d.f.cfg.Hold && d.done()
}

func (d *device) roll() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.faultRate > 0 && d.rng.Float64() < d.faultRate
}

func (d *device) pickFault(kinds ...string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return kinds[d.rng.IntN(len(kinds))]
}

// next builds the next message: a good telemetry message or, at the fault
// rate, a faulty one. ok is false when Count is reached or too many
// messages are unanswered (the device waits, as firmware with a bounded
// buffer would).
func (d *device) next(now time.Time, maxBytes int) (id string, payload []byte, fault string, ok bool) {
	if d.f.cfg.Idle {
		return "", nil, "", false
	}
	faulty := d.roll()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f.cfg.Count > 0 && d.sentMsgs >= d.f.cfg.Count || len(d.ledger) >= d.f.cfg.MaxInflight {
		return "", nil, "", false
	}
	d.seq++
	d.sentMsgs++
	id = strconv.Itoa(d.seq)
	if kinds := d.f.msgFaults; faulty && len(kinds) > 0 {
		fault = kinds[d.rng.IntN(len(kinds))]
		if fault == faultConflict && d.ackedMsgs == 0 {
			// A conflict needs the hub to know temp as a number first:
			// the device's own good reading, stored before this one.
			fault = faultBadMetric
			if !slices.Contains(kinds, faultBadMetric) {
				fault = ""
			}
		}
		if fault == faultSpike {
			// A good message as far as the protocol goes: only its
			// values are unusual.
			d.spikeLeft, fault = spikeReadings, ""
		}
	}
	b := make([]byte, 0, 160*d.f.cfg.Batch)
	var rs []Reading
	switch fault {
	case faultMalformed:
		b = append(b, `{"type":"telemetry","id":"`+id+`","metrics":{"temp":`...)
	case faultFutureTS:
		b, rs = d.appendMessage(b, id, now.Add(time.Hour), "", true)
	case faultBadMetric:
		b, rs = d.appendMessage(b, id, now, "bad metric!", true)
	case faultConflict, faultReserved:
		b, rs = d.appendMessage(b, id, now, fault, true)
	case faultOversized:
		b = append(b, `{"type":"telemetry","id":"`+id+`","metrics":{"blob":"`...)
		b = append(b, strings.Repeat("x", maxBytes+1024)...)
		b = append(b, `"}}`...)
	default:
		d.seqFaults()
		b, rs = d.appendMessage(b, id, now, "", false)
	}
	readings := d.f.cfg.Batch
	if fault == "" || fault == faultFlap {
		d.ledger[id] = &pending{at: now, payload: b, readings: readings, recorded: rs}
		d.order = append(d.order, id)
	} else {
		d.ledger[id] = &pending{at: now, payload: b, fault: fault, recorded: rs}
		d.order = append(d.order, id)
	}
	return id, b, fault, true
}

// seqFaults applies the reboot and drop faults before a good message.
// The caller holds d.mu.
func (d *device) seqFaults() {
	if d.rseq == 0 {
		return // a boot's first message: nothing to restart from or skip
	}
	if d.f.cfg.RebootRate > 0 && d.rng.Float64() < d.f.cfg.RebootRate {
		d.boots++
		d.rseq = 0
		return
	}
	if d.f.cfg.DropRate > 0 && d.rng.Float64() < d.f.cfg.DropRate {
		k := 1 + uint64(d.rng.IntN(3))
		d.skipped = append(d.skipped, SeqGap{Device: d.cred.ID, Boot: d.bootName(), From: d.rseq, To: d.rseq + k - 1})
		d.rseq += k
	}
}

func (d *device) bootName() string { return "b" + strconv.Itoa(d.boots) }

// appendMessage appends a telemetry message of Batch readings ending at
// now, spaced by the device's interval. Good readings get strictly
// increasing timestamps, so every one is its own point in InfluxDB; a
// faulty message's timestamps do not move that clock. When the fleet
// records (Config.RecordAcked), it also returns the readings as sent.
func (d *device) appendMessage(b []byte, id string, now time.Time, extraMetric string, faulty bool) ([]byte, []Reading) {
	var rs []Reading
	record := d.f.cfg.RecordAcked > 0
	b = append(b, `{"type":"telemetry","id":"`...)
	b = append(b, id...)
	if !faulty { // good readings carry the device's seq; refused ones take none
		b = append(b, `","boot":"`...)
		b = append(b, d.bootName()...)
	}
	b = append(b, `","readings":[`...)
	step := d.interval / time.Duration(d.f.cfg.Batch)
	for i := range d.f.cfg.Batch {
		if i > 0 {
			b = append(b, ',')
		}
		ts := now.Add(-time.Duration(d.f.cfg.Batch-1-i) * step)
		ms := ts.UnixMilli()
		if !faulty {
			ms = max(ms, d.lastTS+1)
			d.lastTS = ms
		}
		b = append(b, `{"ts":`...)
		b = strconv.AppendInt(b, ms, 10)
		if !faulty {
			b = append(b, `,"seq":`...)
			b = strconv.AppendUint(b, d.rseq, 10)
			d.rseq++
		}
		b = append(b, `,"metrics":{`...)
		m := d.sensor.read(ts)
		if !faulty && d.spikeLeft > 0 {
			d.spikeLeft--
			m["temp"] = spikeTemp + float64(d.rng.IntN(100))/10
		}
		if d.f.cfg.Stamp != nil {
			b = append(b, `"stamp":`...)
			seq := d.f.cfg.Stamp()
			b = strconv.AppendInt(b, seq, 10)
			b = append(b, ',')
			if record {
				m["stamp"] = float64(seq)
			}
		}
		first := true
		for _, k := range [...]string{"temp", "humidity", "battery", "count"} {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, '"')
			b = append(b, k...)
			b = append(b, `":`...)
			if k == "temp" && extraMetric == faultConflict {
				b = append(b, `"hot"`...) // temp is a number on this hub
				delete(m, k)
				continue
			}
			b = strconv.AppendFloat(b, m[k], 'f', -1, 64)
		}
		switch extraMetric {
		case "":
		case faultReserved:
			b = append(b, `,"time":1`...) // not recorded: a query cannot select a field named time
		case faultConflict:
		default:
			b = append(b, `,"`+extraMetric+`":1`...)
			if record {
				m[extraMetric] = 1
			}
		}
		b = append(b, `}}`...)
		if record {
			rs = append(rs, Reading{Device: d.cred.ID, TS: ms, Metrics: m})
		}
	}
	return append(b, `]}`...), rs
}

// answered settles message id with an ack (code "") or an error code.
func (d *device) answered(id, code string, now time.Time) {
	d.mu.Lock()
	if id == "" && code == telemetry.CodeBadJSON {
		// The hub cannot read the id of a message that is not JSON: the
		// answer is the oldest malformed message's (answers keep order).
		id = d.oldestFault(faultMalformed)
	}
	p, ok := d.ledger[id]
	if ok {
		delete(d.ledger, id)
	}
	d.mu.Unlock()
	c := &d.f.c
	if code != "" {
		c.errorCode(code)
	}
	if !ok {
		return // an answer to a message already settled (a resend's duplicate)
	}
	switch {
	case p.fault != "" && p.fault != faultFlap:
		c.faultsSent.Add(1)
		if want := expectedCode[p.fault]; want != "" && code == want {
			c.faultsAnswered.Add(1)
		} else {
			c.violation("%s: %s message %s answered %q, want %q", d.cred.ID, p.fault, id, code, want)
		}
		// Refused readings must not be stored; an acked faulty one is a
		// violation and, like any acked reading, must be.
		d.f.rec.add(code == "", p.recorded)
	case code == "":
		d.mu.Lock()
		d.ackedMsgs++
		d.mu.Unlock()
		d.f.rec.add(true, p.recorded)
		c.acked.Add(1)
		c.readingsAcked.Add(int64(p.readings))
		c.ack(p.at, p.readings, now.Sub(p.at))
	case code == telemetry.CodeRateLimited || code == telemetry.CodeOverloaded || code == telemetry.CodeInternal:
		// Not stored: firmware keeps the readings and sends them again.
		d.mu.Lock()
		d.ledger[id] = p
		d.mu.Unlock()
	default:
		c.violation("%s: good message %s refused with %q", d.cred.ID, id, code)
	}
}

// unsettled reports whether message id still waits for its answer.
func (d *device) unsettled(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.ledger[id]
	return ok
}

// settleUnacked forgets a message that gets no acknowledgement (MQTT QoS 0).
func (d *device) settleUnacked(id string) {
	d.mu.Lock()
	delete(d.ledger, id)
	d.mu.Unlock()
}

// oldestFault returns the id of the oldest unanswered message with the
// given fault, or "". The caller holds d.mu.
func (d *device) oldestFault(fault string) string {
	for _, k := range d.order {
		if p, ok := d.ledger[k]; ok && p.fault == fault {
			return k
		}
	}
	return ""
}

// closedByFault settles a message whose documented answer is the
// connection closing (an oversized message).
func (d *device) closedByFault() {
	d.mu.Lock()
	var id string
	for _, k := range d.order {
		if p, ok := d.ledger[k]; ok && p.fault == faultOversized {
			id = k
			break
		}
	}
	if id != "" {
		delete(d.ledger, id)
	}
	d.mu.Unlock()
	if id != "" {
		d.f.c.faultsSent.Add(1)
		d.f.c.faultsAnswered.Add(1)
	}
}

// unanswered returns the good messages still waiting for an ack, oldest
// first, for resending after a reconnect. Faulty ones are dropped: their
// answer was lost with the connection.
func (d *device) unanswered() [][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out [][]byte
	order := d.order[:0]
	for _, id := range d.order {
		p, ok := d.ledger[id]
		if !ok {
			continue
		}
		if p.fault != "" && p.fault != faultFlap {
			delete(d.ledger, id)
			continue
		}
		order = append(order, id)
		out = append(out, p.payload)
	}
	d.order = order
	return out
}

// command obeys a command and returns the result frame to send, and
// whether the device must reboot (disconnect and come back).
func (d *device) command(id, name string, params json.RawMessage) (result []byte, reboot bool) {
	d.f.c.commands.Add(1)
	status, errMsg := telemetry.ResultOK, ""
	var res any = map[string]any{}
	switch name {
	case "set_interval":
		var p struct {
			Seconds float64 `json:"seconds"`
		}
		if json.Unmarshal(params, &p) != nil || p.Seconds <= 0 || p.Seconds > 86400 {
			status, errMsg = telemetry.ResultError, "params.seconds must be between 0 and 86400"
			break
		}
		d.mu.Lock()
		d.interval = time.Duration(p.Seconds * float64(time.Second))
		d.mu.Unlock()
		res = map[string]any{"interval_seconds": p.Seconds}
	case "set_fault_rate":
		var p struct {
			Rate float64 `json:"rate"`
		}
		if json.Unmarshal(params, &p) != nil || p.Rate < 0 || p.Rate > 1 {
			status, errMsg = telemetry.ResultError, "params.rate must be between 0 and 1"
			break
		}
		d.mu.Lock()
		d.faultRate = p.Rate
		d.mu.Unlock()
		res = map[string]any{"fault_rate": p.Rate}
	case "reboot":
		reboot = true
		res = map[string]any{"rebooting": true}
	default:
		status, errMsg = telemetry.ResultError, "unknown command "+strconv.Quote(name)
	}
	if status == telemetry.ResultOK {
		d.f.c.commandsOK.Add(1)
	} else {
		d.f.c.commandsFailed.Add(1)
	}
	b, _ := json.Marshal(map[string]any{"type": telemetry.TypeCommandResult, "id": id, "status": status, "result": res, "error": errMsg})
	if errMsg == "" {
		b, _ = json.Marshal(map[string]any{"type": telemetry.TypeCommandResult, "id": id, "status": status, "result": res})
	}
	return b, reboot
}

// setRate sets the device's readings per second (load steps).
func (d *device) setRate(perDevice float64) {
	d.mu.Lock()
	d.interval = time.Duration(float64(time.Second) * float64(d.f.cfg.Batch) / perDevice)
	d.mu.Unlock()
	select {
	case d.rateChanged <- struct{}{}:
	default: // a wake-up is already pending
	}
}

func (d *device) currentInterval() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.interval
}

// phase returns the wait before a stream's first message, or its first at
// a new rate: a uniformly random part of the interval, as a fleet's
// devices keep unrelated clocks. A fleet then offers its rate from the
// start (the devices do not all wait a whole interval first, which at a
// slow rate would mean sending nothing for many seconds).
func (d *device) phase() time.Duration {
	iv := d.currentInterval()
	d.mu.Lock()
	defer d.mu.Unlock()
	return time.Duration(float64(iv) * d.rng.Float64())
}

// jittered returns the wait before the next message: the interval ±10%.
func (d *device) jittered() time.Duration {
	iv := d.currentInterval()
	d.mu.Lock()
	defer d.mu.Unlock()
	return time.Duration(float64(iv) * (0.9 + 0.2*d.rng.Float64()))
}
