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
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
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
	// InfluxURL and InfluxDB count what landed after the run; with
	// RecordAcked set on the fleet, every acked reading is checked.
	InfluxURL, InfluxDB string
	// Prefix is the fleet's device id prefix (for the landed count).
	Prefix string
	// Steps runs the fleet at each total readings/s in turn for
	// StepDuration (default 20 s), stopping when acks fall behind.
	Steps        []float64
	StepDuration time.Duration
	// Progress, if set, receives a line per step.
	Progress io.Writer
	Logger   *slog.Logger
}

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
	Steps            []Step  `json:"steps,omitempty"`
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
}

// Harness runs one fleet under measurement. Make it with New, pass its
// Stamp to the fleet's Config, then call Run once.
type Harness struct {
	opts Options
	lat  *latencyRing

	mu       sync.Mutex // guards the fields below; no I/O under it
	b        Bench
	cpu0     float64
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
		ctx, cancel = context.WithTimeout(ctx, time.Duration(n)*h.opts.StepDuration+10*time.Second)
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
		seq, ok := e.Metrics["seq"]
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

// runSteps sets the fleet to each target rate in turn, recording what was
// offered and acknowledged, until acks fall behind (under 97 % of what was
// offered, or a p99 ack latency over 2 s).
func (h *Harness) runSteps(ctx context.Context, fleet *firmwaresim.Fleet) {
	for _, target := range h.opts.Steps {
		fleet.SetRate(target)
		s0 := fleet.Stats()
		start := time.Now()
		select {
		case <-ctx.Done():
			return
		case <-time.After(h.opts.StepDuration):
		}
		el := time.Since(start).Seconds()
		s := fleet.Stats()
		st := Step{Target: target, Offered: float64(s.ReadingsSent-s0.ReadingsSent) / el, Acked: float64(s.ReadingsAcked-s0.ReadingsAcked) / el,
			Errors: errorTotal(s) - errorTotal(s0)}
		st.AckP50, st.AckP99 = s.AckP50, s.AckP99
		st.FellBehind = fellBehind(st)
		h.mu.Lock()
		h.b.Steps = append(h.b.Steps, st)
		h.mu.Unlock()
		if h.opts.Progress != nil {
			fmt.Fprintf(h.opts.Progress, "step %.0f/s: offered %.0f/s, acked %.0f/s, ack p99 %.1f ms, errors %d\n", target, st.Offered, st.Acked, st.AckP99, st.Errors)
		}
		if st.FellBehind {
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
	if h.opts.InfluxURL == "" {
		return
	}
	// Wait until every acked reading can have landed (the hub drains its
	// spool): as many points as acks, or, with nothing acked (QoS 0), a
	// count that stopped growing; at most two minutes.
	acked := fleet.Stats().ReadingsAcked
	var last int64 = -1
	for range 120 {
		n, err := h.countLanded(ctx)
		if err != nil {
			h.opts.Logger.Warn("count readings in InfluxDB", "err", err)
			return
		}
		if acked > 0 && n >= acked || acked == 0 && n == last && n > 0 {
			last = n
			break
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
	h.mu.Unlock()
	if !fleet.Recording() {
		return
	}
	// Reading by reading: every acked reading at its timestamp with its
	// values, no refused one stored. Problems are contract violations.
	v, err := fleet.Verify(ctx, h.opts.InfluxURL, h.opts.InfluxDB)
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

func (h *Harness) countLanded(ctx context.Context) (int64, error) {
	h.mu.Lock()
	start := h.start
	h.mu.Unlock()
	prefix := h.opts.Prefix
	if prefix == "" {
		prefix = "sim"
	}
	q := fmt.Sprintf(`SELECT count("battery") FROM "telemetry" WHERE "device" =~ /^%s-/ AND time >= %dms`, prefix, start.Add(-time.Minute).UnixMilli())
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
	if st.Elapsed > 0 && b.Landed > 0 {
		b.LandedPerSec = float64(b.Landed) / st.Elapsed
	}
	if (!b.Verified || partial) && b.Landed > 0 && st.ReadingsAcked > b.Landed {
		b.Lost = max(b.Lost, st.ReadingsAcked-b.Landed)
	}
	return b
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
