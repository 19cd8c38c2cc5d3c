// Package load is the load harness around a simulated fleet: it tags
// readings with sequence numbers and measures device -> dashboard latency
// on /ws/live sockets, samples the hub's CPU and RSS from /proc, steps the
// fleet through total rates until acks fall behind, and counts and checks
// what landed in InfluxDB. The fleet itself (package firmwaresim) is a
// device and knows nothing of this; cmd/firmware-sim and end-to-end tests
// wrap a fleet in a Harness.
//
// It may import firmwaresim, telemetry and gorilla/websocket (the
// dashboard sockets), nothing of the hub.
package load

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Options say which measurements a Harness makes; zero values turn each
// off.
type Options struct {
	// Hub and AdminToken open the dashboard sockets.
	Hub, AdminToken string
	// Dashboards opens that many /ws/live sockets subscribed to everything
	// and measures device -> dashboard latency (the fleet's Config.Stamp
	// must be the Harness's Stamp).
	Dashboards int
	// HubPID samples the hub's CPU and RSS from /proc.
	HubPID int
	// Procs are the other processes of the system under test (its
	// InfluxDB; for another pipeline, its broker and bridge), whose CPU
	// counts with the hub's in Bench.CPU and each Step's CPU, read from
	// /proc/<pid>/stat. The load generator is never one of them.
	Procs []Proc
	// InfluxURL and InfluxDB count what landed after the run; with
	// RecordAcked set on the fleet, every acked reading is checked.
	InfluxURL, InfluxDB string
	// InfluxMeasurement is the measurement the landed count and the check
	// read; default telemetry.Measurement, what the hub writes.
	InfluxMeasurement string
	// LandedStall ends the wait for acked readings to land once the count
	// has not grown for this long; zero waits up to two minutes. A
	// pipeline that lost readings would otherwise hold the run for all of
	// it.
	LandedStall time.Duration
	// Prefix is the fleet's device id prefix (for the landed count).
	Prefix string
	// Steps runs the fleet at each total readings/s in turn for
	// StepDuration (default 20 s), stopping when acks fall behind unless
	// AllSteps is set: a comparison of two systems runs every rate on
	// both, since one that falls behind by losing data instead of
	// slowing its acks never stops stepping.
	Steps        []float64
	StepDuration time.Duration
	AllSteps     bool
	// Progress, if set, receives a line per step.
	Progress io.Writer
	Logger   *slog.Logger
}

// Proc names a process whose CPU a Harness measures.
type Proc struct {
	Name string
	PID  int
}

// hubProc is the name of Options.HubPID in Bench.CPU and Step.CPU.
const hubProc = "hub"

// Bench are the load-mode figures.
type Bench struct {
	DashReceived     int64   `json:"dashboard_readings_received,omitempty"`
	DashP50          float64 `json:"dashboard_latency_p50_ms,omitempty"`
	DashP99          float64 `json:"dashboard_latency_p99_ms,omitempty"`
	DashMax          float64 `json:"dashboard_latency_max_ms,omitempty"`
	HubCPUSeconds    float64 `json:"hub_cpu_seconds,omitempty"`
	HubCPUPerMillion float64 `json:"hub_cpu_seconds_per_million_readings,omitempty"`
	HubRSSStartMiB   float64 `json:"hub_rss_start_mib,omitempty"`
	HubPeakRSSMiB    float64 `json:"hub_peak_rss_mib,omitempty"`
	HubRSSPerConnKiB float64 `json:"hub_rss_per_connection_kib,omitempty"`
	ConnectionsHeld  int64   `json:"connections_held,omitempty"`
	Landed           int64   `json:"readings_landed_in_influxdb,omitempty"`
	LandedPerSec     float64 `json:"readings_per_second_landed,omitempty"`
	Lost             int64   `json:"acked_readings_missing_from_influxdb,omitempty"`
	Verified         bool    `json:"acked_readings_checked_one_by_one,omitempty"`
	// CPU is each measured process's CPU seconds over the run (the hub as
	// "hub", then Options.Procs by name); CPUPerMillion is their sum per
	// million readings landed (sent, without a landed count).
	CPU           map[string]float64 `json:"cpu_seconds_by_process,omitempty"`
	CPUPerMillion float64            `json:"cpu_seconds_per_million_readings,omitempty"`
	Steps         []Step             `json:"steps,omitempty"`
}

// Step is one rate step of a stepped run.
type Step struct {
	Target     float64 `json:"target_readings_per_second"`
	Offered    float64 `json:"offered_readings_per_second"`
	Acked      float64 `json:"acked_readings_per_second"`
	AckP50     float64 `json:"ack_latency_p50_ms"`
	AckP99     float64 `json:"ack_latency_p99_ms"`
	Errors     int64   `json:"errors"`
	FellBehind bool    `json:"fell_behind"`
	// Start and End bound the step (Unix milliseconds). The readings
	// sent from Start until the next step's Start (or, for the last, until
	// the fleet stopped) are the step's: their timestamps say so.
	Start int64 `json:"start_unix_ms"`
	End   int64 `json:"end_unix_ms"`
	// Sent and AckedN count the readings sent and acknowledged during the
	// step. With Options.InfluxURL, AckedSent counts the step's readings
	// (by send time) that were acknowledged, whenever their ack came;
	// Landed the points in InfluxDB timestamped in the step; Lost those
	// acknowledged but not landed.
	Sent      int64 `json:"readings_sent"`
	AckedN    int64 `json:"readings_acked"`
	AckedSent int64 `json:"readings_sent_in_step_and_acked,omitempty"`
	Landed    int64 `json:"readings_landed,omitempty"`
	Lost      int64 `json:"acked_readings_missing,omitempty"`
	// CPU is each measured process's CPU seconds during the step;
	// CPUPerMillion is their sum per million readings landed (acked,
	// without a landed count).
	CPU           map[string]float64 `json:"cpu_seconds_by_process,omitempty"`
	CPUPerMillion float64            `json:"cpu_seconds_per_million_readings,omitempty"`
}

// Harness runs one fleet under measurement. Make it with New, pass its
// Stamp to the fleet's Config, then call Run once.
type Harness struct {
	opts Options
	lat  *latencyRing

	mu       sync.Mutex // guards the fields below; no I/O under it
	b        Bench
	cpu0     float64
	procCPU0 map[string]float64
	rssStart float64
	peakRSS  float64
	held     int64
	partial  bool // the one-by-one check covered only the recorded readings
	start    time.Time
	dash     reservoir
	dashRecv atomic.Int64
}

// New prepares a harness.
func New(opts Options) *Harness {
	if len(opts.Steps) > 0 && opts.StepDuration <= 0 {
		opts.StepDuration = 20 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.InfluxMeasurement == "" {
		opts.InfluxMeasurement = telemetry.Measurement
	}
	return &Harness{opts: opts, lat: newLatencyRing(), dash: reservoir{rng: rand.New(rand.NewPCG(1, 8))}}
}

// Stamp returns the next fleet-wide sequence number and records its send
// time; it is the fleet's Config.Stamp when Dashboards > 0. Safe for
// concurrent use (lock-free).
func (h *Harness) Stamp() int64 { return h.lat.stamp() }

// Run runs the fleet (fleet.Run) with the measurements switched on and
// returns when it ended and the figures are final. A stepped run ends
// after its last step (or the first that fell behind); otherwise the
// fleet's own Duration, Count or ctx ends it.
func (h *Harness) Run(ctx context.Context, fleet *firmwaresim.Fleet) error {
	if n := len(h.opts.Steps); n > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(n)*h.opts.StepDuration+connectWait+10*time.Second)
		defer cancel()
	}
	stop, err := h.startSampling(ctx, fleet)
	if err != nil {
		return err
	}
	defer stop()
	h.mu.Lock()
	h.start = time.Now()
	h.mu.Unlock()
	fleetCtx, stopFleet := context.WithCancel(ctx)
	defer stopFleet()
	runErr := make(chan error, 1)
	go func() { runErr <- fleet.Run(fleetCtx) }() // owner: Run; waited on runErr below
	if len(h.opts.Steps) > 0 {
		select {
		case <-fleet.Started():
			h.awaitConnected(ctx, fleet)
			h.runSteps(ctx, fleet)
			stopFleet() // the steps are the run
		case err := <-runErr:
			runErr <- err
		}
	}
	if err := <-runErr; err != nil {
		return err
	}
	stop()
	h.finish(context.WithoutCancel(ctx), fleet)
	return nil
}

// latencyRing remembers when each sequence-numbered reading was sent, so
// dashboards can match what they receive. It is lock-free and bounded: a
// reading older than a million newer ones is no longer matched.
type latencyRing struct {
	next atomic.Int64
	seq  []atomic.Int64
	at   []atomic.Int64
}

const ringSize = 1 << 20

func newLatencyRing() *latencyRing {
	return &latencyRing{seq: make([]atomic.Int64, ringSize), at: make([]atomic.Int64, ringSize)}
}

// stamp returns the next sequence number and records its send time.
func (r *latencyRing) stamp() int64 {
	n := r.next.Add(1)
	i := n & (ringSize - 1)
	r.at[i].Store(time.Now().UnixNano())
	r.seq[i].Store(n)
	return n
}

// since returns how long ago reading n was sent, if it is still known.
func (r *latencyRing) since(n int64, now time.Time) (time.Duration, bool) {
	i := n & (ringSize - 1)
	at := r.at[i].Load()
	if r.seq[i].Load() != n {
		return 0, false
	}
	return now.Sub(time.Unix(0, at)), true
}

// reservoirSize bounds the dashboard latencies kept for percentiles.
const reservoirSize = 100000

// reservoir is a bounded uniform sample of latencies (Algorithm R);
// guarded by Harness.mu.
type reservoir struct {
	rng  *rand.Rand
	seen int64
	lat  []time.Duration
	max  time.Duration
}

func (r *reservoir) add(d time.Duration) {
	r.seen++
	if len(r.lat) < reservoirSize {
		r.lat = append(r.lat, d)
	} else if i := r.rng.Int64N(r.seen); i < reservoirSize {
		r.lat[i] = d
	}
	r.max = max(r.max, d)
}

// procStats reads a process's CPU seconds and resident set size.
func procStats(pid int) (cpuSec, rssMiB float64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name (which may hold spaces) start after ')'.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	if len(f) < 22 {
		return 0, 0, fmt.Errorf("short /proc stat")
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	const hz = 100 // USER_HZ on Linux
	st2, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer st2.Close()
	sc := bufio.NewScanner(st2)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			rssMiB = kb / 1024
		}
	}
	return (ut + st) / hz, rssMiB, nil
}

// startSampling opens the dashboard sockets and the hub sampler. The
// returned stop function ends them; it is safe to call twice.
func (h *Harness) startSampling(ctx context.Context, fleet *firmwaresim.Fleet) (func(), error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	pid := h.opts.HubPID
	if pid > 0 {
		cpu, rss, err := procStats(pid)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("hub pid %d: %w", pid, err)
		}
		h.cpu0, h.rssStart, h.peakRSS = cpu, rss, rss
	}
	cpu0, err := h.procsCPU()
	if err != nil {
		cancel()
		return nil, err
	}
	h.procCPU0 = cpu0
	wg.Go(func() { // samples RSS and connections held until stopped
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				held := fleet.Connected()
				rss := -1.0
				if pid > 0 {
					if _, r, err := procStats(pid); err == nil {
						rss = r
					}
				}
				h.mu.Lock()
				h.held = max(h.held, held)
				h.peakRSS = max(h.peakRSS, rss)
				h.mu.Unlock()
			}
		}
	})
	for i := range h.opts.Dashboards {
		u := strings.Replace(strings.TrimRight(h.opts.Hub, "/"), "http", "ws", 1) + "/ws/live"
		c, _, err := websocket.DefaultDialer.DialContext(ctx, u, http.Header{"Authorization": {"Bearer " + h.opts.AdminToken}})
		if err != nil {
			cancel()
			wg.Wait()
			return nil, fmt.Errorf("dashboard %d: %w", i, err)
		}
		if err := c.WriteJSON(map[string]any{"type": "subscribe", "devices": []string{"*"}}); err != nil {
			c.Close()
			cancel()
			wg.Wait()
			return nil, err
		}
		wg.Go(func() { <-ctx.Done(); c.Close() })
		wg.Go(func() { h.readDashboard(c) })
	}
	var once sync.Once
	return func() { once.Do(func() { cancel(); wg.Wait() }) }, nil
}

// procsCPU reads the CPU seconds of every measured process: the hub (as
// "hub") and Options.Procs.
func (h *Harness) procsCPU() (map[string]float64, error) {
	procs := h.opts.Procs
	if h.opts.HubPID > 0 {
		procs = append([]Proc{{hubProc, h.opts.HubPID}}, procs...)
	}
	if len(procs) == 0 {
		return nil, nil
	}
	cpu := make(map[string]float64, len(procs))
	for _, p := range procs {
		c, _, err := procStats(p.PID)
		if err != nil {
			return nil, fmt.Errorf("%s pid %d: %w", p.Name, p.PID, err)
		}
		cpu[p.Name] += c
	}
	return cpu, nil
}

// cpuSince returns each process's CPU seconds since cpu0 (nil when a
// process can no longer be read) and their sum.
func (h *Harness) cpuSince(cpu0 map[string]float64) (map[string]float64, float64) {
	if len(cpu0) == 0 {
		return nil, 0
	}
	now, err := h.procsCPU()
	if err != nil {
		h.opts.Logger.Warn("read process CPU", "err", err)
		return nil, 0
	}
	var sum float64
	for k, v := range now {
		now[k] = v - cpu0[k]
		sum += now[k]
	}
	return now, sum
}

// perMillion is cpu seconds per million of n readings (0 for none).
func perMillion(cpu float64, n int64) float64 {
	if n <= 0 {
		return 0
	}
	return cpu * 1e6 / float64(n)
}

// readDashboard matches the readings a dashboard receives to their send
// time by sequence number.
func (h *Harness) readDashboard(c *websocket.Conn) {
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		now := time.Now()
		var e struct {
			Type    string             `json:"type"`
			Metrics map[string]float64 `json:"metrics"`
		}
		if json.Unmarshal(data, &e) != nil || e.Type != "reading" {
			continue
		}
		seq, ok := e.Metrics["stamp"]
		if !ok {
			continue
		}
		h.dashRecv.Add(1)
		if d, ok := h.lat.since(int64(seq), now); ok {
			h.mu.Lock()
			h.dash.add(d)
			h.mu.Unlock()
		}
	}
}

// connectWait bounds how long a stepped run waits for the whole fleet to
// connect before its first step; a fleet that is not connected by then
// steps anyway (and the first step may fall behind).
const connectWait = 60 * time.Second

// awaitConnected waits until every device of the fleet is connected, at
// most connectWait, so the first step neither loses the time the fleet
// takes to come up nor counts the connects' CPU as the step's.
func (h *Harness) awaitConnected(ctx context.Context, fleet *firmwaresim.Fleet) {
	deadline := time.NewTimer(connectWait)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for fleet.Connected() < int64(fleet.Size()) {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			h.opts.Logger.Warn("fleet not connected before the first step", "connected", fleet.Connected(), "devices", fleet.Size())
			return
		case <-tick.C:
		}
	}
}

// runSteps sets the fleet to each target rate in turn, recording what was
// offered and acknowledged, until acks fall behind (fellBehind), or
// through every rate with Options.AllSteps.
func (h *Harness) runSteps(ctx context.Context, fleet *firmwaresim.Fleet) {
	for _, target := range h.opts.Steps {
		start := fleet.Mark()
		fleet.SetRate(target)
		s0 := fleet.Stats()
		cpu0, _ := h.procsCPU() // an unreadable process leaves the step's CPU out (cpuSince)
		select {
		case <-ctx.Done():
			return
		case <-time.After(h.opts.StepDuration):
		}
		end := time.Now()
		el := end.Sub(start).Seconds()
		s := fleet.Stats()
		st := Step{Target: target, Offered: float64(s.ReadingsSent-s0.ReadingsSent) / el, Acked: float64(s.ReadingsAcked-s0.ReadingsAcked) / el,
			Errors: errorTotal(s) - errorTotal(s0), Start: start.UnixMilli(), End: end.UnixMilli(),
			Sent: s.ReadingsSent - s0.ReadingsSent, AckedN: s.ReadingsAcked - s0.ReadingsAcked}
		var cpu float64
		st.CPU, cpu = h.cpuSince(cpu0)
		st.CPUPerMillion = perMillion(cpu, st.AckedN) // per landed once finish counted them
		st.AckP50, st.AckP99 = s.AckP50, s.AckP99
		st.FellBehind = fellBehind(st)
		h.mu.Lock()
		h.b.Steps = append(h.b.Steps, st)
		h.mu.Unlock()
		if h.opts.Progress != nil {
			fmt.Fprintf(h.opts.Progress, "step %.0f/s: offered %.0f/s, acked %.0f/s, ack p99 %.1f ms, errors %d\n", target, st.Offered, st.Acked, st.AckP99, st.Errors)
		}
		if st.FellBehind && !h.opts.AllSteps {
			return
		}
	}
}

// fellBehind is the step policy: the hub fell behind when it acked under
// 97 % of what was offered, its p99 ack latency passed 2 s, or the fleet
// could not even offer 90 % of the target (the hub pushing back).
func fellBehind(st Step) bool {
	return st.Acked < 0.97*st.Offered || st.AckP99 > 2000 || st.Offered < 0.9*st.Target
}

func errorTotal(s firmwaresim.Stats) int64 {
	var n int64
	for _, v := range s.Errors {
		n += v
	}
	return n
}

// finish reads the hub's CPU and counts, with a query, what landed in
// InfluxDB: nothing is taken on trust. Problems it finds are the fleet's
// contract violations.
func (h *Harness) finish(ctx context.Context, fleet *firmwaresim.Fleet) {
	if h.opts.HubPID > 0 {
		if cpu, _, err := procStats(h.opts.HubPID); err == nil {
			h.mu.Lock()
			h.b.HubCPUSeconds = cpu - h.cpu0
			h.mu.Unlock()
		}
	}
	// CPU is read before the wait for the landed count: what the pipeline
	// still spends draining its backlog is left out (it shows as points
	// landing late, or not at all).
	cpu, _ := h.cpuSince(h.procCPU0)
	h.mu.Lock()
	h.b.CPU = cpu
	h.mu.Unlock()
	if h.opts.InfluxURL == "" {
		return
	}
	// Wait until every acked reading can have landed (the hub drains its
	// spool): as many points as acks, or, with nothing acked (QoS 0), a
	// count that stopped growing; at most two minutes.
	acked := fleet.Stats().ReadingsAcked
	h.mu.Lock()
	from := h.start.Add(-time.Minute)
	h.mu.Unlock()
	var last int64 = -1
	grew := time.Now()
	for range 120 {
		n, err := h.countLanded(ctx, from, time.Time{})
		if err != nil {
			h.opts.Logger.Warn("count readings in InfluxDB", "err", err)
			return
		}
		if acked > 0 && n >= acked || acked == 0 && n == last && n > 0 {
			last = n
			break
		}
		if n != last {
			grew = time.Now()
		} else if h.opts.LandedStall > 0 && time.Since(grew) >= h.opts.LandedStall {
			break // nothing more is landing: the rest is lost
		}
		last = n
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
		if ctx.Err() != nil {
			break
		}
	}
	h.mu.Lock()
	h.b.Landed = max(last, 0)
	steps := slices.Clone(h.b.Steps)
	h.mu.Unlock()
	ackedByMark := fleet.AckedByMark() // [0] before the first step
	for i, st := range steps {
		var to time.Time // the last step's readings run until the fleet stopped
		if i+1 < len(steps) {
			to = time.UnixMilli(steps[i+1].Start)
		}
		n, err := h.countLanded(ctx, time.UnixMilli(st.Start), to)
		if err != nil {
			h.opts.Logger.Warn("count a step's readings in InfluxDB", "err", err)
			break
		}
		var cpu float64
		for _, c := range st.CPU {
			cpu += c
		}
		var acked int64
		if i+1 < len(ackedByMark) {
			acked = ackedByMark[i+1]
		}
		h.mu.Lock()
		h.b.Steps[i].Landed, h.b.Steps[i].CPUPerMillion = n, perMillion(cpu, n)
		h.b.Steps[i].AckedSent, h.b.Steps[i].Lost = acked, max(0, acked-n)
		h.mu.Unlock()
	}
	if !fleet.Recording() {
		return
	}
	// Reading by reading: every acked reading at its timestamp with its
	// values, no refused one stored. Problems are contract violations.
	v, err := fleet.VerifyIn(ctx, h.opts.InfluxURL, h.opts.InfluxDB, h.opts.InfluxMeasurement)
	if err != nil {
		h.opts.Logger.Warn("verify readings in InfluxDB", "err", err)
		return
	}
	h.mu.Lock()
	h.b.Verified, h.b.Lost, h.partial = true, int64(v.Missing+v.Wrong), v.Incomplete
	h.mu.Unlock()
	if v.Missing+v.Wrong+v.RefusedStored+v.Unacked > 0 { // Incomplete alone is a cap, not a fault
		fleet.Violation("influxdb: acked %d, found %d, missing %d, wrong %d, refused but stored %d, unacked points %d, incomplete %v",
			v.Acked, v.Found, v.Missing, v.Wrong, v.RefusedStored, v.Unacked, v.Incomplete)
		for _, s := range v.Samples {
			fleet.Violation("influxdb: %s", s)
		}
	}
}

// countLanded counts the fleet's points in InfluxDB with timestamps from
// from on, and before to unless it is zero.
func (h *Harness) countLanded(ctx context.Context, from, to time.Time) (int64, error) {
	q := landedQuery(h.opts.InfluxMeasurement, h.opts.Prefix, from, to)
	form := url.Values{"q": {q}, "db": {h.opts.InfluxDB}}
	req, err := http.NewRequestWithContext(ctx, "POST", strings.TrimRight(h.opts.InfluxURL, "/")+"/query", strings.NewReader(form.Encode()))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var out struct {
		Results []struct {
			Series []struct {
				Values [][]any `json:"values"`
			} `json:"series"`
			Error string `json:"error"`
		} `json:"results"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, err
	}
	if len(out.Results) == 0 || len(out.Results[0].Series) == 0 || len(out.Results[0].Series[0].Values) == 0 {
		return 0, nil
	}
	if out.Results[0].Error != "" {
		return 0, fmt.Errorf("%s", out.Results[0].Error)
	}
	n, _ := out.Results[0].Series[0].Values[0][1].(float64)
	return int64(n), nil
}

// landedQuery is the InfluxQL count of a fleet's points: measurement,
// devices <prefix>-*, timestamps from from on and before to unless it is
// zero. Every reading the simulator sends has the metric battery.
func landedQuery(measurement, prefix string, from, to time.Time) string {
	if prefix == "" {
		prefix = "sim"
	}
	q := fmt.Sprintf(`SELECT count("battery") FROM "%s" WHERE "device" =~ /^%s-/ AND time >= %dms`,
		strings.ReplaceAll(measurement, `"`, `\"`), regexp.QuoteMeta(prefix), from.UnixMilli())
	if !to.IsZero() {
		q += fmt.Sprintf(" AND time < %dms", to.UnixMilli())
	}
	return q
}

// Bench returns the load-mode figures for the fleet's final stats st.
func (h *Harness) Bench(st firmwaresim.Stats) Bench {
	h.mu.Lock()
	b, partial := h.b, h.partial
	b.Steps = slices.Clone(h.b.Steps)
	b.ConnectionsHeld = max(h.held, st.Connected)
	if h.opts.HubPID > 0 {
		b.HubRSSStartMiB, b.HubPeakRSSMiB = h.rssStart, h.peakRSS
		if b.ConnectionsHeld > 0 {
			b.HubRSSPerConnKiB = (h.peakRSS - h.rssStart) * 1024 / float64(b.ConnectionsHeld)
		}
	}
	lat := slices.Clone(h.dash.lat)
	b.DashMax = ms(h.dash.max)
	h.mu.Unlock()
	b.DashReceived = h.dashRecv.Load()
	slices.Sort(lat)
	if n := len(lat); n > 0 {
		b.DashP50, b.DashP99 = ms(lat[n/2]), ms(lat[min(n-1, n*99/100)])
	}
	if st.ReadingsSent > 0 && b.HubCPUSeconds > 0 {
		b.HubCPUPerMillion = b.HubCPUSeconds * 1e6 / float64(st.ReadingsSent)
	}
	if len(b.CPU) > 0 {
		b.CPU = maps.Clone(b.CPU)
		var cpu float64
		for _, c := range b.CPU {
			cpu += c
		}
		n := b.Landed
		if h.opts.InfluxURL == "" {
			n = st.ReadingsSent
		}
		b.CPUPerMillion = perMillion(cpu, n)
	}
	if st.Elapsed > 0 && b.Landed > 0 {
		b.LandedPerSec = float64(b.Landed) / st.Elapsed
	}
	if (!b.Verified || partial) && b.Landed > 0 && st.ReadingsAcked > b.Landed {
		b.Lost = max(b.Lost, st.ReadingsAcked-b.Landed)
	}
	return b
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
