package firmwaresim

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Transports a fleet can use.
const (
	TransportWS   = "ws"
	TransportMQTT = "mqtt"
	TransportMix  = "mix"
)

// Config describes a fleet and its run. Zero values take the defaults
// documented on each field.
type Config struct {
	// Hub is the REST and WebSocket base URL, e.g. http://127.0.0.1:8080.
	Hub string
	// MQTT is the broker address host:port, for MQTT devices.
	MQTT string
	// MoreHubs and MoreMQTT are further hub URLs and broker addresses of
	// the same deployment: devices spread over them and, like firmware
	// that fails over, move to the next one when a connection fails.
	MoreHubs []string
	MoreMQTT []string
	// AdminToken provisions devices through the REST API.
	AdminToken string
	// Provision creates (or re-keys) the fleet's devices before the run.
	Provision bool
	// Creds are the fleet's device ids and tokens when not provisioning
	// (e.g. read from a bulk-provisioning file with ReadCreds).
	Creds []Cred
	// Anonymous devices <Prefix>-1..N connect with no username, password
	// or provisioning to a plain MQTT broker that allows anonymous
	// clients, and publish exactly what they would publish to the hub: the
	// same load through another pipeline (Mosquitto -> Telegraf ->
	// InfluxDB in scripts/bench-peer). MQTT fleets only; excludes
	// Provision and Creds.
	Anonymous bool
	// Prefix names provisioned devices <prefix>-<n>; default "sim".
	Prefix string
	// Devices is the fleet size; default 10.
	Devices int
	// Transport is ws, mqtt or mix (alternating); default ws.
	Transport string
	// Rate is readings per second per device; default 1.
	Rate float64
	// Batch is readings per message; default 1.
	Batch int
	// FaultRate is the share of messages (and connects) that are
	// deliberately faulty, 0 to 1.
	FaultRate float64
	// Faults are the fault kinds drawn from at FaultRate (FaultKinds
	// lists them); empty means every kind but spike. A test that wants
	// alerts from the fleet names e.g. spike and flap.
	Faults []string
	// Duration and Count bound the run: wall time, and messages per
	// device. Zero means unbounded (until ctx ends). Tests bound a run by
	// Count: it means the same on a loaded machine as on an idle one.
	Duration time.Duration
	Count    int
	// Hold keeps a device that has sent Count messages, each answered,
	// connected and obeying commands until ctx ends (or Duration passes),
	// so a test can command devices without racing the end of their
	// readings. Stats.Finished counts the devices that got there.
	Hold bool
	// RecordAcked, when above zero, makes the fleet remember up to this
	// many readings the hub acknowledged (device, ts, values) and as many
	// readings of faulty messages it refused, for Recorded and Verify.
	// Each costs about 300 bytes; zero records nothing.
	RecordAcked int
	// MaxInflight bounds unacknowledged messages per device; default 100.
	MaxInflight int
	// DropRate is the share of good messages before which the device
	// skips 1 to 3 sequence numbers, as readings lost on a lossy radio
	// would (never before the first message of a boot: the hub takes a
	// boot's first seq as its start). SeqGaps lists exactly what was
	// skipped. RebootRate is the share of good messages before which the
	// device restarts: a new boot, its seq counter back to 0 (readings
	// still unacknowledged keep their boot and seq when resent).
	DropRate, RebootRate float64
	// Seed makes the signals and faults repeatable; default 1.
	Seed uint64
	// Idle devices connect and send nothing (memory per connection).
	Idle bool
	// QoS0 publishes MQTT telemetry at QoS 0 instead of 1: no acks, so
	// what landed in InfluxDB is what counts.
	QoS0 bool
	// Stamp, if set, gives every reading a fleet-wide sequence number
	// (metric "stamp"), so a load harness (package firmware-sim/load) can
	// match what dashboards receive to when it was sent. It must be safe
	// for concurrent use.
	Stamp func() int64
	// Progress, if set, receives a progress line every ProgressEvery
	// (default 5 s).
	Progress      io.Writer
	ProgressEvery time.Duration
	Logger        *slog.Logger
}

func (c *Config) ensureDefaults() error {
	if c.Hub == "" && (c.Provision || c.Transport != TransportMQTT) {
		return errors.New("firmwaresim: Hub URL is required")
	}
	if c.Prefix == "" {
		c.Prefix = "sim"
	}
	if c.Devices <= 0 {
		c.Devices = 10
	}
	if c.Transport == "" {
		c.Transport = TransportWS
	}
	switch c.Transport {
	case TransportWS, TransportMQTT, TransportMix:
	default:
		return fmt.Errorf("firmwaresim: transport must be ws, mqtt or mix, not %q", c.Transport)
	}
	if c.Transport != TransportWS && c.MQTT == "" {
		return errors.New("firmwaresim: MQTT address is required for mqtt and mix fleets")
	}
	if c.Rate <= 0 {
		c.Rate = 1
	}
	if c.Batch <= 0 {
		c.Batch = 1
	}
	if c.FaultRate < 0 || c.FaultRate > 1 {
		return errors.New("firmwaresim: fault rate must be between 0 and 1")
	}
	for _, k := range c.Faults {
		if !slices.Contains(FaultKinds(), k) {
			return fmt.Errorf("firmwaresim: unknown fault kind %q (known: %s)", k, strings.Join(FaultKinds(), ", "))
		}
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = 100
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.ProgressEvery <= 0 {
		c.ProgressEvery = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Anonymous {
		if c.Provision || len(c.Creds) > 0 {
			return errors.New("firmwaresim: an anonymous fleet has no credentials to provision or read")
		}
		if c.Transport != TransportMQTT {
			return errors.New("firmwaresim: an anonymous fleet must be an mqtt fleet")
		}
		return nil
	}
	if !c.Provision && len(c.Creds) == 0 {
		return errors.New("firmwaresim: give device credentials or set Provision")
	}
	return nil
}

// anonymousCreds names an anonymous fleet's devices <prefix>-1..n, with
// no tokens.
func anonymousCreds(prefix string, n int) []Cred {
	creds := make([]Cred, n)
	for i := range creds {
		creds[i] = Cred{ID: fmt.Sprintf("%s-%d", prefix, i+1)}
	}
	return creds
}

// Cred is one device's id and token.
type Cred struct {
	ID, Token string
}

// Fleet is a running (or finished) simulated fleet.
type Fleet struct {
	cfg   Config
	log   *slog.Logger
	creds []Cred
	c     counters
	rec   recorder
	start time.Time

	mu      sync.Mutex // guards devices, creds and start once Run began
	devices []*device
	started chan struct{} // closed once Run launched every device

	msgFaults []string // the message fault kinds of Config.Faults, read-only
	wrongAuth bool     // whether wrong_token connects are among them
}

// counters are the fleet's totals, updated by every device.
type counters struct {
	sent, acked, readingsSent, readingsAcked atomic.Int64
	reconnects, connected                    atomic.Int64
	faultsSent, faultsAnswered, violations   atomic.Int64
	commands, commandsOK, commandsFailed     atomic.Int64
	dropped                                  atomic.Int64
	stateAcked, desiredReceived              atomic.Int64
	desiredRefused                           atomic.Int64

	mu         sync.Mutex
	errors     map[string]int64
	samples    []string
	latencies  []time.Duration // a bounded reservoir of ack latencies
	latSeen    int64
	latencyMax time.Duration
	rng        *rand.Rand
	// marks start the windows of send time Mark opened; ackedByMark[i]
	// counts the acknowledged readings sent in window i (window 0: before
	// the first mark). One window per load step: a handful.
	marks       []time.Time
	ackedByMark []int64
}

const reservoirSize = 100000

func (c *counters) errorCode(code string) {
	c.mu.Lock()
	c.errors[code]++
	c.mu.Unlock()
}

func (c *counters) violation(format string, args ...any) {
	c.violations.Add(1)
	c.mu.Lock()
	if len(c.samples) < 20 {
		c.samples = append(c.samples, fmt.Sprintf(format, args...))
	}
	c.mu.Unlock()
}

// ack counts an acknowledged message of n readings sent at sentAt, with
// its ack latency d.
func (c *counters) ack(sentAt time.Time, n int, d time.Duration) {
	c.mu.Lock()
	w := len(c.marks)
	for w > 0 && sentAt.Before(c.marks[w-1]) {
		w-- // a message sent before the latest mark, acked after it
	}
	if w < len(c.ackedByMark) {
		c.ackedByMark[w] += int64(n)
	}
	c.latSeen++
	if len(c.latencies) < reservoirSize {
		c.latencies = append(c.latencies, d)
	} else if i := c.rng.Int64N(c.latSeen); i < reservoirSize {
		c.latencies[i] = d
	}
	c.latencyMax = max(c.latencyMax, d)
	c.mu.Unlock()
}

// Stats is a snapshot of a fleet's counters.
type Stats struct {
	Devices          int              `json:"devices"`
	Connected        int64            `json:"connected"`
	Finished         int64            `json:"devices_finished"`
	Elapsed          float64          `json:"elapsed_seconds"`
	Sent             int64            `json:"messages_sent"`
	Acked            int64            `json:"messages_acked"`
	ReadingsSent     int64            `json:"readings_sent"`
	ReadingsAcked    int64            `json:"readings_acked"`
	Errors           map[string]int64 `json:"errors_by_code"`
	Reconnects       int64            `json:"reconnects"`
	FaultsSent       int64            `json:"faults_sent"`
	FaultsAnswered   int64            `json:"faults_answered_as_documented"`
	Violations       int64            `json:"contract_violations"`
	ViolationSamples []string         `json:"violation_samples,omitempty"`
	Commands         int64            `json:"commands_received"`
	CommandsOK       int64            `json:"commands_ok"`
	CommandsFailed   int64            `json:"commands_failed"`
	Dropped          int64            `json:"unacked_dropped"`
	// StateAcked counts reported state patches the hub acknowledged;
	// DesiredReceived the desired documents devices got; DesiredRefused
	// the desired values out of range the firmware did not apply.
	StateAcked      int64   `json:"state_reports_acked"`
	DesiredReceived int64   `json:"desired_received"`
	DesiredRefused  int64   `json:"desired_values_refused"`
	AckP50          float64 `json:"ack_latency_p50_ms"`
	AckP99          float64 `json:"ack_latency_p99_ms"`
	AckMax          float64 `json:"ack_latency_max_ms"`

	ReadingsPerSecSent  float64 `json:"readings_per_second_offered"`
	ReadingsPerSecAcked float64 `json:"readings_per_second_acked"`
}

// New prepares a fleet; Run provisions it and runs it.
func New(cfg Config) (*Fleet, error) {
	if err := cfg.ensureDefaults(); err != nil {
		return nil, err
	}
	f := &Fleet{cfg: cfg, log: cfg.Logger, rec: recorder{cap: cfg.RecordAcked}, started: make(chan struct{})}
	f.c.errors = map[string]int64{}
	f.msgFaults, f.wrongAuth = messageFaults, true
	if len(cfg.Faults) > 0 {
		f.msgFaults = slices.DeleteFunc(slices.Clone(cfg.Faults), func(k string) bool { return k == faultWrongAuth })
		f.wrongAuth = slices.Contains(cfg.Faults, faultWrongAuth)
	}
	f.c.rng = rand.New(rand.NewPCG(cfg.Seed, 7))
	return f, nil
}

// Started is closed once Run has launched every device (after
// provisioning), so a harness can steer a running fleet.
func (f *Fleet) Started() <-chan struct{} { return f.started }

// Size is how many devices the fleet runs (known once Started is closed).
func (f *Fleet) Size() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.creds)
}

// Connected is how many devices are connected now (cheaper than Stats).
func (f *Fleet) Connected() int64 { return f.c.connected.Load() }

// SetRate sets the fleet's total readings/s, spread evenly over its
// devices, and starts a new ack-latency sample, so the next Stats
// percentiles describe the new rate only.
func (f *Fleet) SetRate(total float64) {
	f.mu.Lock()
	per := total / float64(max(len(f.devices), 1))
	for _, d := range f.devices { // lock order: f.mu, then d.mu
		d.setRate(per)
	}
	f.mu.Unlock()
	f.c.mu.Lock()
	f.c.latencies, f.c.latSeen = f.c.latencies[:0], 0
	f.c.mu.Unlock()
}

// Mark opens a new window of send time and returns its start: the next
// whole millisecond, so a reading's millisecond timestamp tells its window
// exactly. AckedByMark counts acknowledged readings by the window they
// were sent in, so a load step can compare what was acked with what
// landed in the same span of reading timestamps (a message acked after
// its step ended still counts in its step). Exact for single readings; a
// batch's earlier readings are timestamped before the message was sent.
func (f *Fleet) Mark() time.Time {
	now := time.Now()
	start := now.Truncate(time.Millisecond).Add(time.Millisecond)
	f.c.mu.Lock()
	if len(f.c.ackedByMark) == 0 {
		f.c.ackedByMark = append(f.c.ackedByMark, 0) // window 0, before any mark
	}
	f.c.marks = append(f.c.marks, start)
	f.c.ackedByMark = append(f.c.ackedByMark, 0)
	f.c.mu.Unlock()
	return start
}

// AckedByMark returns the readings acknowledged so far by the window of
// send time they were sent in: index 0 before the first Mark, i after the
// i-th. Empty before the first Mark.
func (f *Fleet) AckedByMark() []int64 {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	return slices.Clone(f.c.ackedByMark)
}

// Violation records a contract violation found outside the fleet (a load
// harness's check of what landed in InfluxDB); it counts in Stats like
// the fleet's own.
func (f *Fleet) Violation(format string, args ...any) { f.c.violation(format, args...) }

// Recording reports whether the fleet remembers acked readings for Verify.
func (f *Fleet) Recording() bool { return f.cfg.RecordAcked > 0 }

// Stats returns the fleet's counters so far.
func (f *Fleet) Stats() Stats {
	c := &f.c
	c.mu.Lock()
	errs := make(map[string]int64, len(c.errors))
	for k, v := range c.errors {
		errs[k] = v
	}
	lat := slices.Clone(c.latencies)
	st := Stats{Errors: errs, ViolationSamples: slices.Clone(c.samples), AckMax: ms(c.latencyMax)}
	c.mu.Unlock()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if n := len(lat); n > 0 {
		st.AckP50, st.AckP99 = ms(lat[n/2]), ms(lat[min(n-1, n*99/100)])
	}
	f.mu.Lock()
	st.Devices = len(f.creds)
	if !f.start.IsZero() {
		st.Elapsed = time.Since(f.start).Seconds()
	}
	for _, d := range f.devices { // lock order: f.mu, then d.mu
		if d.done() {
			st.Finished++
		}
	}
	f.mu.Unlock()
	st.Connected, st.Sent, st.Acked = c.connected.Load(), c.sent.Load(), c.acked.Load()
	st.ReadingsSent, st.ReadingsAcked = c.readingsSent.Load(), c.readingsAcked.Load()
	st.Reconnects, st.FaultsSent, st.FaultsAnswered, st.Violations = c.reconnects.Load(), c.faultsSent.Load(), c.faultsAnswered.Load(), c.violations.Load()
	st.Commands, st.CommandsOK, st.CommandsFailed, st.Dropped = c.commands.Load(), c.commandsOK.Load(), c.commandsFailed.Load(), c.dropped.Load()
	st.StateAcked, st.DesiredReceived, st.DesiredRefused = c.stateAcked.Load(), c.desiredReceived.Load(), c.desiredRefused.Load()
	if st.Elapsed > 0 {
		st.ReadingsPerSecSent = float64(st.ReadingsSent) / st.Elapsed
		st.ReadingsPerSecAcked = float64(st.ReadingsAcked) / st.Elapsed
	}
	return st
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Creds returns the fleet's device credentials (after provisioning).
func (f *Fleet) Creds() []Cred {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.creds)
}

// Run provisions the fleet if asked, connects every device and runs until
// ctx ends, the duration passes or every device sent Count messages and
// got every answer (with Hold, only the first two). It
// returns an error only when the fleet could not run; contract violations
// are in Stats.
func (f *Fleet) Run(ctx context.Context) error {
	creds := f.cfg.Creds
	if f.cfg.Anonymous {
		creds = anonymousCreds(f.cfg.Prefix, f.cfg.Devices)
	}
	if f.cfg.Provision {
		var err error
		if creds, err = provision(ctx, f.cfg); err != nil {
			return err
		}
	}
	if len(creds) > f.cfg.Devices {
		creds = creds[:f.cfg.Devices]
	}
	if f.cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.cfg.Duration)
		defer cancel()
	}
	f.mu.Lock()
	f.creds, f.start = creds, time.Now()
	f.mu.Unlock()
	devCtx, stopDevices := context.WithCancel(ctx)
	defer stopDevices()
	var wg sync.WaitGroup
	for i, cr := range creds {
		transport := f.cfg.Transport
		if transport == TransportMix {
			transport = []string{TransportWS, TransportMQTT}[i%2]
		}
		d := newDevice(f, i, cr, transport)
		f.mu.Lock()
		f.devices = append(f.devices, d)
		f.mu.Unlock()
		wg.Go(func() { d.run(devCtx) })
	}
	close(f.started)
	progressDone := make(chan struct{})
	if f.cfg.Progress != nil {
		go func() { // owner: Run; stops with progressDone
			t := time.NewTicker(f.cfg.ProgressEvery)
			defer t.Stop()
			for {
				select {
				case <-progressDone:
					return
				case <-t.C:
					fmt.Fprintln(f.cfg.Progress, f.Stats().Line())
				}
			}
		}()
	}
	wg.Wait()
	close(progressDone)
	return nil
}

// Line is the one-line progress summary.
func (s Stats) Line() string {
	var codes []string
	for k, v := range s.Errors {
		codes = append(codes, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(codes)
	return fmt.Sprintf("%6.1fs  connected %d/%d  sent %d  acked %d  readings/s %.0f  errors {%s}  reconnects %d  faults %d/%d  violations %d  ack p50 %.1fms p99 %.1fms",
		s.Elapsed, s.Connected, s.Devices, s.Sent, s.Acked, float64(s.ReadingsAcked)/max(s.Elapsed, 0.001),
		strings.Join(codes, " "), s.Reconnects, s.FaultsAnswered, s.FaultsSent, s.Violations, s.AckP50, s.AckP99)
}

// SeqGap is one range of sequence numbers a device skipped (From and To
// inclusive) within Boot: what the hub's ledger must report as a gap.
type SeqGap struct {
	Device, Boot string
	From, To     uint64
}

// SeqGaps returns every range the fleet's devices skipped (DropRate), by
// device in fleet order, oldest first.
func (f *Fleet) SeqGaps() []SeqGap {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []SeqGap
	for _, d := range f.devices { // lock order: f.mu, then d.mu
		d.mu.Lock()
		out = append(out, d.skipped...)
		d.mu.Unlock()
	}
	return out
}

// Unfinished describes up to limit devices that have not yet sent Count
// messages with every one answered, each with its unanswered messages, so a
// test that waits for the fleet to finish can say what it is waiting for.
func (f *Fleet) Unfinished(limit int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, d := range f.devices { // lock order: f.mu, then d.mu
		if len(out) >= limit {
			break
		}
		d.mu.Lock()
		if d.f.cfg.Count > 0 && d.sentMsgs >= d.f.cfg.Count && len(d.ledger) == 0 {
			d.mu.Unlock()
			continue
		}
		s := fmt.Sprintf("%s (%s): sent %d, unanswered", d.cred.ID, d.transport, d.sentMsgs)
		for _, id := range d.order {
			if p, ok := d.ledger[id]; ok {
				s += fmt.Sprintf(" %s[%s %s ago]", id, cmp.Or(p.fault, "good"), time.Since(p.at).Round(time.Millisecond))
			}
		}
		d.mu.Unlock()
		out = append(out, s)
	}
	return out
}
