package firmwaresim

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
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
)

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

type benchResult struct {
	mu       sync.Mutex
	b        Bench
	cpu0     float64
	rssStart float64
	peakRSS  float64
	held     int64
	partial  bool // the one-by-one check covered only the recorded readings
	dashRecv atomic.Int64
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

// startBench opens the dashboard sockets and the hub sampler. The returned
// stop function ends them; it is safe to call twice.
func (f *Fleet) startBench(ctx context.Context) (func(), error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	br := &f.bench
	if f.cfg.HubPID > 0 {
		cpu, rss, err := procStats(f.cfg.HubPID)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("hub pid %d: %w", f.cfg.HubPID, err)
		}
		br.cpu0, br.rssStart, br.peakRSS = cpu, rss, rss
	}
	wg.Go(func() { // samples RSS and connections held until stopped
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				br.mu.Lock()
				br.held = max(br.held, f.c.connected.Load())
				if f.cfg.HubPID > 0 {
					if _, rss, err := procStats(f.cfg.HubPID); err == nil {
						br.peakRSS = max(br.peakRSS, rss)
					}
				}
				br.mu.Unlock()
			}
		}
	})
	for i := range f.cfg.Dashboards {
		u := strings.Replace(strings.TrimRight(f.cfg.Hub, "/"), "http", "ws", 1) + "/ws/live"
		c, _, err := websocket.DefaultDialer.DialContext(ctx, u, http.Header{"Authorization": {"Bearer " + f.cfg.AdminToken}})
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
		wg.Go(func() { f.readDashboard(c) })
	}
	var once sync.Once
	return func() { once.Do(func() { cancel(); wg.Wait() }) }, nil
}

// readDashboard matches the readings a dashboard receives to their send
// time by sequence number.
func (f *Fleet) readDashboard(c *websocket.Conn) {
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
		f.bench.dashRecv.Add(1)
		if d, ok := f.lat.since(int64(seq), now); ok {
			f.dash.latency(d)
		}
	}
}

// runSteps sets the fleet to each target rate in turn, recording what was
// offered and acknowledged, until acks fall behind (under 97 % of what was
// offered, or a p99 ack latency over 2 s).
func (f *Fleet) runSteps(ctx context.Context) {
	for _, target := range f.cfg.Steps {
		f.mu.Lock()
		per := target / float64(len(f.devices))
		for _, d := range f.devices {
			d.setRate(per)
		}
		f.mu.Unlock()
		sent0, acked0 := f.c.readingsSent.Load(), f.c.readingsAcked.Load()
		errs0 := f.errorTotal()
		f.c.mu.Lock()
		f.c.latencies, f.c.latSeen = f.c.latencies[:0], 0
		f.c.mu.Unlock()
		start := time.Now()
		if !sleep(ctx, f.cfg.StepDuration) {
			return
		}
		el := time.Since(start).Seconds()
		st := Step{Target: target, Offered: float64(f.c.readingsSent.Load()-sent0) / el, Acked: float64(f.c.readingsAcked.Load()-acked0) / el,
			Errors: f.errorTotal() - errs0}
		s := f.Stats()
		st.AckP50, st.AckP99 = s.AckP50, s.AckP99
		st.FellBehind = st.Acked < 0.97*st.Offered || st.AckP99 > 2000 || st.Offered < 0.9*target
		f.bench.mu.Lock()
		f.bench.b.Steps = append(f.bench.b.Steps, st)
		f.bench.mu.Unlock()
		if f.cfg.Progress != nil {
			fmt.Fprintf(f.cfg.Progress, "step %.0f/s: offered %.0f/s, acked %.0f/s, ack p99 %.1f ms, errors %d\n", target, st.Offered, st.Acked, st.AckP99, st.Errors)
		}
		if st.FellBehind {
			return
		}
	}
}

func (f *Fleet) errorTotal() int64 {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	var n int64
	for _, v := range f.c.errors {
		n += v
	}
	return n
}

// finishBench reads the hub's CPU and counts, with a query, what landed in
// InfluxDB: nothing is taken on trust.
func (f *Fleet) finishBench(ctx context.Context) {
	br := &f.bench
	if f.cfg.HubPID > 0 {
		if cpu, _, err := procStats(f.cfg.HubPID); err == nil {
			br.mu.Lock()
			br.b.HubCPUSeconds = cpu - br.cpu0
			br.mu.Unlock()
		}
	}
	if f.cfg.InfluxURL == "" {
		return
	}
	// Wait until every acked reading can have landed (the hub drains its
	// spool): as many points as acks, or, with nothing acked (QoS 0), a
	// count that stopped growing; at most two minutes.
	acked := f.c.readingsAcked.Load()
	var last int64 = -1
	for range 120 {
		n, err := f.countLanded(ctx)
		if err != nil {
			f.log.Warn("count readings in InfluxDB", "err", err)
			return
		}
		if acked > 0 && n >= acked || acked == 0 && n == last && n > 0 {
			last = n
			break
		}
		last = n
		if !sleep(ctx, time.Second) {
			break
		}
	}
	br.mu.Lock()
	br.b.Landed = max(last, 0)
	br.mu.Unlock()
	if f.cfg.RecordAcked <= 0 {
		return
	}
	// Reading by reading: every acked reading at its timestamp with its
	// values, no refused one stored. Problems are contract violations.
	v, err := f.Verify(ctx, f.cfg.InfluxURL, f.cfg.InfluxDB)
	if err != nil {
		f.log.Warn("verify readings in InfluxDB", "err", err)
		return
	}
	br.mu.Lock()
	br.b.Verified, br.b.Lost, br.partial = true, int64(v.Missing+v.Wrong), v.Incomplete
	br.mu.Unlock()
	if v.Missing+v.Wrong+v.RefusedStored+v.Unacked > 0 { // Incomplete alone is a cap, not a fault
		f.c.violation("influxdb: acked %d, found %d, missing %d, wrong %d, refused but stored %d, unacked points %d, incomplete %v",
			v.Acked, v.Found, v.Missing, v.Wrong, v.RefusedStored, v.Unacked, v.Incomplete)
		for _, s := range v.Samples {
			f.c.violation("influxdb: %s", s)
		}
	}
}

func (f *Fleet) countLanded(ctx context.Context) (int64, error) {
	f.mu.Lock()
	start := f.start
	f.mu.Unlock()
	q := fmt.Sprintf(`SELECT count("battery") FROM "telemetry" WHERE "device" =~ /^%s-/ AND time >= %dms`, f.cfg.Prefix, start.Add(-time.Minute).UnixMilli())
	form := url.Values{"q": {q}, "db": {f.cfg.InfluxDB}}
	req, err := http.NewRequestWithContext(ctx, "POST", strings.TrimRight(f.cfg.InfluxURL, "/")+"/query", strings.NewReader(form.Encode()))
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

// fillBench copies the load-mode figures into st.
func (f *Fleet) fillBench(st *Stats) {
	br := &f.bench
	br.mu.Lock()
	b, partial := br.b, br.partial
	b.Steps = slices.Clone(br.b.Steps)
	b.ConnectionsHeld = max(br.held, st.Connected)
	if f.cfg.HubPID > 0 {
		b.HubRSSStartMiB, b.HubPeakRSSMiB = br.rssStart, br.peakRSS
		if b.ConnectionsHeld > 0 {
			b.HubRSSPerConnKiB = (br.peakRSS - br.rssStart) * 1024 / float64(b.ConnectionsHeld)
		}
	}
	br.mu.Unlock()
	b.DashReceived = br.dashRecv.Load()
	d := f.dash
	d.mu.Lock()
	lat := slices.Clone(d.latencies)
	b.DashMax = ms(d.latencyMax)
	d.mu.Unlock()
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
	st.Bench = b
}
