package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Attacks on operator-side state (issue 18, "Bounded operator-side
// state"): one operator client must never exhaust the hub or starve
// another operator.

// opbLiveURL is the hub's /ws/live address.
func opbLiveURL(h *hub) string { return strings.Replace(h.url, "http", "ws", 1) + "/ws/live" }

// opbDialLive opens /ws/live with token; it returns the HTTP status of a
// refused handshake and its body.
func opbDialLive(t *testing.T, h *hub, d *websocket.Dialer, token string) (*websocket.Conn, int, string) {
	t.Helper()
	c, resp, err := d.Dial(opbLiveURL(h), http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		if resp == nil {
			t.Fatalf("dial /ws/live: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, resp.StatusCode, string(b)
	}
	t.Cleanup(func() { c.Close() })
	return c, http.StatusSwitchingProtocols, ""
}

// opbSSE opens the SSE stream with token and returns the response (the
// caller closes its body).
func opbSSE(t *testing.T, h *hub, token string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", h.url+"/api/v1/live?devices=*", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// opbPump makes a device send perMsg readings every period, each with the
// metrics fill gives it, until the returned stop is called. It returns
// the count of readings sent.
func opbPump(t *testing.T, h *hub, token string, period time.Duration, perMsg int, fill func(i int) map[string]any) (sent *atomic.Int64, stop func()) {
	t.Helper()
	c, _ := wsDevice(t, h, token)
	sent = new(atomic.Int64)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(period)
		defer tick.Stop()
		base := time.Now().UnixMilli()
		n := 0
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			readings := make([]map[string]any, perMsg)
			for i := range readings {
				readings[i] = map[string]any{"ts": base + int64(n), "metrics": fill(n)}
				n++
			}
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if err := c.WriteJSON(map[string]any{"type": "telemetry", "readings": readings}); err != nil {
				return
			}
			sent.Add(int64(perMsg))
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	t.Cleanup(stop)
	return sent, stop
}

// TestAttackLivePerTokenCap: one viewer opening sockets until the hub
// refuses must not take the admin's (or anyone else's) live access.
// Before: all 25 accepted, and 1,000 of them starved the admin (503).
func TestAttackLivePerTokenCap(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	viewer := h.token(t, "viewer")
	before := scrape(t, h)

	d := &websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	accepted, refused := 0, 0
	for i := range 25 {
		_, status, body := opbDialLive(t, h, d, viewer)
		switch {
		case status == http.StatusSwitchingProtocols:
			accepted++
			if i >= 20 {
				t.Errorf("socket %d accepted past the per-token cap of 20", i+1)
			}
		case status == http.StatusTooManyRequests:
			refused++
			if i < 20 {
				t.Errorf("socket %d refused below the cap", i+1)
			}
			if !strings.Contains(body, "FIELDHUB_LIVE_MAX_PER_TOKEN") || !strings.Contains(body, "20") {
				t.Errorf("429 body does not say which cap: %s", body)
			}
		default:
			t.Fatalf("socket %d: status %d %s", i+1, status, body)
		}
	}
	if accepted != 20 || refused != 5 {
		t.Fatalf("accepted %d, refused %d; want 20 and 5", accepted, refused)
	}
	// SSE counts toward the same cap.
	resp := opbSSE(t, h, viewer)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("viewer's SSE past the cap: %d, want 429", resp.StatusCode)
	}
	// The admin is not starved, on either stream.
	if _, status, body := opbDialLive(t, h, d, h.adminToken); status != http.StatusSwitchingProtocols {
		t.Fatalf("admin /ws/live: %d %s", status, body)
	}
	resp = opbSSE(t, h, h.adminToken)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("admin SSE: %d", resp.StatusCode)
	}
	after := scrape(t, h)
	key := `fieldhub_live_refused_total{reason="per_token"}`
	if got := after[key] - before[key]; got != 6 {
		t.Errorf("%s moved by %v, want 6", key, got)
	}
	// Logged, but rate-limited: not one line per refusal.
	if n := strings.Count(h.stderr.String(), "live connection refused"); n < 1 || n > 2 {
		t.Errorf("%d refusal log lines for 6 refusals, want 1 (rate-limited)", n)
	}
}

// TestAttackLiveSubscribeFlood: 200 subscribe messages of 5,000 invented
// device ids each. Before: 1,000,000 filter entries, +107 MB of heap held
// by one socket. After: ids not in the registry are ignored (and the
// socket told so); the filter holds at most the fleet.
func TestAttackLiveSubscribeFlood(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	tok := h.createDevice(t, "flood-real")
	viewer := h.token(t, "viewer")
	dev, _ := wsDevice(t, h, tok)
	if err := dev.WriteJSON(map[string]any{"type": "telemetry", "metrics": map[string]any{"temp": 1}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the real device's reading", 15*time.Second, func() bool {
		st, m := h.api(t, "GET", "/api/v1/devices/flood-real/latest", viewer, nil)
		return st == 200 && m["metrics"] != nil && len(m["metrics"].(map[string]any)) > 0
	})

	c, status, body := opbDialLive(t, h, websocket.DefaultDialer, viewer)
	if c == nil {
		t.Fatalf("dial: %d %s", status, body)
	}
	// Read everything the hub answers, in the background.
	var unknownAnswers atomic.Int64
	gotReal := make(chan struct{}, 1)
	go func() {
		for {
			var m map[string]any
			if err := c.ReadJSON(&m); err != nil {
				return
			}
			if m["type"] == "error" && strings.Contains(fmt.Sprint(m["message"]), "not in the registry") {
				unknownAnswers.Add(1)
			}
			if m["type"] == "reading" && m["device"] == "flood-real" {
				select {
				case gotReal <- struct{}{}:
				default:
				}
			}
		}
	}()

	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	heapBefore := heap()
	ids := make([]string, 5000)
	for m := range 200 {
		for i := range ids {
			ids[i] = fmt.Sprintf("g%06d", m*5000+i)
		}
		_ = c.SetWriteDeadline(time.Now().Add(60 * time.Second))
		if err := c.WriteJSON(map[string]any{"type": "subscribe", "devices": ids}); err != nil {
			t.Fatalf("subscribe %d: %v", m, err)
		}
	}
	// The reader handles messages in order: once the real device's
	// snapshot arrives, every flood message has been applied.
	if err := c.WriteJSON(map[string]any{"type": "subscribe", "devices": []string{"flood-real"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gotReal:
	case <-time.After(120 * time.Second):
		t.Fatal("no snapshot of the real device after the flood")
	}
	heapAfter := heap()
	grown := int64(heapAfter) - int64(heapBefore)
	entries := scrape(t, h)["fieldhub_live_filter_devices"]
	t.Logf("subscribe flood of 1,000,000 invented ids: filter entries %v, heap %+.1f MB (%.1f -> %.1f MB)",
		entries, float64(grown)/(1<<20), float64(heapBefore)/(1<<20), float64(heapAfter)/(1<<20))
	if entries != 1 {
		t.Errorf("fieldhub_live_filter_devices = %v, want 1 (only the real device)", entries)
	}
	if grown > 20<<20 {
		t.Errorf("heap grew by %.1f MB under the flood", float64(grown)/(1<<20))
	}
	if unknownAnswers.Load() == 0 {
		t.Error("the socket was never told its ids are not in the registry")
	}
}

// TestAttackLiveSlowConsumer: a dashboard that stops reading (small
// receive buffer). Before: cut silently by the write deadline after ~14 s,
// no 1013, no log line, fieldhub_live_slow_consumer_disconnects_total 0.
// After: counted, one log line, and once it reads again it finds close
// 1013 after the frames the hub had already written.
func TestAttackLiveSlowConsumer(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_RATE_LIMIT": "1000", "FIELDHUB_RATE_BURST": "1000"})
	tok := h.createDevice(t, "slow-src")
	viewer := h.token(t, "viewer")
	before := scrape(t, h)

	d := &websocket.Dialer{HandshakeTimeout: 10 * time.Second, NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			_ = c.(*net.TCPConn).SetReadBuffer(128 << 10) // small, yet two loopback segments: reading again reopens the window at once
		}
		return c, err
	}}
	c, status, body := opbDialLive(t, h, d, viewer)
	if c == nil {
		t.Fatalf("dial: %d %s", status, body)
	}
	if err := c.WriteJSON(map[string]any{"type": "subscribe", "devices": []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("x", 60)
	pumped, stop := opbPump(t, h, tok, 10*time.Millisecond, 10, func(i int) map[string]any {
		m := map[string]any{}
		for k := range 20 {
			m[fmt.Sprintf("s%02d", k)] = fmt.Sprintf("%s-%d", pad, i)
		}
		return m
	})
	// The client reads nothing until the hub has given up on it.
	key := "fieldhub_live_slow_consumer_disconnects_total"
	start := time.Now()
	waitUntil(t, key+" to move", 90*time.Second, func() bool { return scrape(t, h)[key] > before[key] })
	m := scrape(t, h)
	t.Logf("slow consumer counted after %s; %d readings sent, %v sent to dashboards, %v coalesced", time.Since(start).Round(100*time.Millisecond),
		pumped.Load(), m["fieldhub_live_events_sent_total"], m["fieldhub_live_events_coalesced_total"])
	stop()

	var closeErr *websocket.CloseError
	frames := 0
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		_, _, err := c.ReadMessage()
		if err != nil {
			if !errors.As(err, &closeErr) {
				t.Fatalf("after %d frames: %v, want close 1013\n%s", frames, err, opbLines(h, "live"))
			}
			break
		}
		frames++
	}
	if closeErr.Code != 1013 {
		t.Errorf("close code %d %q, want 1013", closeErr.Code, closeErr.Text)
	}
	if got := scrape(t, h)[key] - before[key]; got != 1 {
		t.Errorf("%s moved by %v, want 1", key, got)
	}
	waitUntil(t, "the slow consumer log line", 10*time.Second, func() bool {
		return strings.Count(h.stderr.String(), "live client disconnected") == 1
	})
	lines := 0
	for _, l := range strings.Split(h.stderr.String(), "\n") {
		if strings.Contains(l, "reason=slow_consumer") && strings.Contains(l, "live") {
			lines++
		}
	}
	if lines != 1 {
		t.Errorf("%d slow-consumer log lines, want 1", lines)
	}
}

// TestAttackHistoryRanges: ranges InfluxDB cannot answer are the client's
// error. Before: stop=9999-12-31T23:59:59Z answered 502 "InfluxDB did not
// answer".
func TestAttackHistoryRanges(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	h.createDevice(t, "hist-1")
	viewer := h.token(t, "viewer")
	now := time.Now().UTC()
	for _, tc := range []struct {
		query, rule string
		want        int
	}{
		{"start=-1h&stop=9999-12-31T23:59:59Z", "future", 400},
		{"start=-1h&stop=9999-12-31", "future", 400},
		{"start=-1h&stop=253402300799000", "future", 400},
		{"start=" + now.Format(time.RFC3339) + "&stop=" + now.Format(time.RFC3339), "start must be before stop", 400},
		{"start=-1h&stop=-2h", "start must be before stop", 400},
		{"start=1900-01-01T00:00:00Z&stop=now", "1970", 400},
		{"start=-10000h&stop=now", "400 days", 400},
		{"start=--5m&stop=--10m", "relative times", 400},
		{"start=-1h&stop=now", "", 200},
	} {
		q, _ := url.ParseQuery(tc.query + "&metric=temp")
		st, m := h.api(t, "GET", "/api/v1/devices/hist-1/readings?"+q.Encode(), viewer, nil)
		b, _ := json.Marshal(m)
		if st != tc.want || !strings.Contains(string(b), tc.rule) {
			t.Errorf("%s: %d %s, want %d naming %q", tc.query, st, b, tc.want, tc.rule)
		}
	}
}

// TestAttackStatsRate: the overview rate is the hub's own, over a fixed
// window. Before: each call sampled the counters against the previous
// call, so a viewer's first call said 0 and viewers shared one sample.
func TestAttackStatsRate(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_RATE_LIMIT": "1000", "FIELDHUB_RATE_BURST": "1000"})
	tok := h.createDevice(t, "rate-src")
	a, b := h.token(t, "viewer"), h.token(t, "viewer")
	sent, stop := opbPump(t, h, tok, 100*time.Millisecond, 10, func(i int) map[string]any { return map[string]any{"n": i} })
	defer stop()
	// Let the 10 s window fill with readings flowing.
	started := time.Now()
	waitUntil(t, "11 s of readings", 30*time.Second, func() bool { return time.Since(started) > 11*time.Second })
	offered := float64(sent.Load()) / time.Since(started).Seconds()

	rate := func(token string) float64 {
		st, m := h.api(t, "GET", "/api/v1/stats", token, nil)
		if st != 200 {
			t.Fatalf("stats: %d %v", st, m)
		}
		return m["readings_per_second"].(float64)
	}
	ra := rate(a) // viewer A's first call
	waitUntil(t, "a moment later", 5*time.Second, func() bool { return time.Since(started) > 11500*time.Millisecond })
	rb := rate(b) // viewer B's first call, at another time
	ra2 := rate(a)
	t.Logf("offered %.1f readings/s; viewer A %.1f, viewer B %.1f, A again %.1f", offered, ra, rb, ra2)
	for name, r := range map[string]float64{"A first": ra, "B first": rb, "A again": ra2} {
		if r < offered*0.6 || r > offered*1.4 {
			t.Errorf("viewer %s: %.1f readings/s, offered %.1f", name, r, offered)
		}
	}
	if d := rb - ra2; d < -offered*0.1 || d > offered*0.1 {
		t.Errorf("viewers see different rates at the same moment: %.1f and %.1f", rb, ra2)
	}
}

// opbLines returns the hub's log lines that contain what.
func opbLines(h *hub, what string) string {
	var out []string
	for _, l := range strings.Split(h.stderr.String(), "\n") {
		if strings.Contains(l, what) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestAttackLiveSlowConsumerSSE: the same stalled client on the SSE
// stream. Before: the stream was dropped without a log line or a count.
// After: the stream ends, one log line, the metric moves.
func TestAttackLiveSlowConsumerSSE(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_RATE_LIMIT": "1000", "FIELDHUB_RATE_BURST": "1000"})
	tok := h.createDevice(t, "slow-sse")
	viewer := h.token(t, "viewer")
	before := scrape(t, h)

	var conn net.Conn
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			_ = c.(*net.TCPConn).SetReadBuffer(128 << 10)
			conn = c
		}
		return c, err
	}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("GET", h.url+"/api/v1/live?devices=*", nil)
	req.Header.Set("Authorization", "Bearer "+viewer)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("SSE: %d", resp.StatusCode)
	}
	pad := strings.Repeat("x", 60)
	_, stop := opbPump(t, h, tok, 10*time.Millisecond, 10, func(i int) map[string]any {
		m := map[string]any{}
		for k := range 20 {
			m[fmt.Sprintf("s%02d", k)] = fmt.Sprintf("%s-%d", pad, i)
		}
		return m
	})
	key := "fieldhub_live_slow_consumer_disconnects_total"
	start := time.Now()
	waitUntil(t, key+" to move", 90*time.Second, func() bool { return scrape(t, h)[key] > before[key] })
	t.Logf("slow SSE consumer counted after %s", time.Since(start).Round(100*time.Millisecond))
	stop()
	// Reading again, the client finds the end of the stream.
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		t.Fatalf("after %d bytes: %v, want the end of the stream", n, err)
	}
	if got := scrape(t, h)[key] - before[key]; got != 1 {
		t.Errorf("%s moved by %v, want 1", key, got)
	}
	waitUntil(t, "the slow consumer log line", 10*time.Second, func() bool {
		return strings.Contains(opbLines(h, "live client disconnected"), "transport=sse")
	})
	if n := strings.Count(opbLines(h, "reason=slow_consumer"), "\n") + 1; n != 1 {
		t.Errorf("%d slow-consumer log lines, want 1:\n%s", n, opbLines(h, "reason=slow_consumer"))
	}
}
