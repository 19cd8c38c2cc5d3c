package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/dashboard/live"
	"github.com/fieldhub/fieldhub/dashboard/operator"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

type liveRig struct {
	markers int
	srv     *httptest.Server
	live    *live.Hub
	api     *Server
	viewer  string
	session string // a dashboard session of viewer
}

func newLiveRig(t *testing.T, lo live.Options) *liveRig {
	t.Helper()
	st, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := devices.Open(context.Background(), st, devices.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := &liveRig{live: live.New(lo)}
	hubCtx, stopHub := context.WithCancel(context.Background())
	hubDone := make(chan error, 1)
	go func() { hubDone <- r.live.Run(hubCtx) }()
	r.api, err = New(Options{Registry: reg, Live: r.live, AllowedOrigins: []string{"https://ops.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	r.api.Register(mux)
	r.srv = httptest.NewServer(mux)
	_, r.viewer, _ = reg.CreateOperatorToken(context.Background(), "screen", devices.RoleViewer)
	if _, err := reg.Create(context.Background(), devices.Spec{ID: "d1"}); err != nil { // subscriptions name registered devices
		t.Fatal(err)
	}
	op, _ := reg.AuthenticateOperator(context.Background(), r.viewer)
	r.session, _ = reg.CreateSession(context.Background(), op)
	t.Cleanup(func() {
		r.api.Shutdown()
		stopHub()
		<-hubDone
		r.srv.Close()
		reg.Close()
		st.Close()
	})
	return r
}

func (r *liveRig) wsURL() string { return "ws" + strings.TrimPrefix(r.srv.URL, "http") + "/ws/live" }

func (r *liveRig) dial(t *testing.T, h http.Header) *websocket.Conn {
	t.Helper()
	if h == nil {
		h = http.Header{"Authorization": {"Bearer " + r.viewer}}
	}
	c, resp, err := websocket.DefaultDialer.Dial(r.wsURL(), h)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func subscribe(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

type evt struct {
	Type, Device, Reason, Transport string
	TS                              int64
	Online                          *bool
	Metrics                         map[string]any
}

// loadWait is how long a test waits for an event it expects: generous,
// because the tests run beside others on a loaded machine, and every wait
// ends as soon as the event happens.
const loadWait = 60 * time.Second

func next(t *testing.T, c *websocket.Conn) evt {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(loadWait))
	var e evt
	if err := c.ReadJSON(&e); err != nil {
		t.Fatalf("read: %v", err)
	}
	return e
}

func reading(dev string, ts int64, kv ...any) telemetry.Event {
	m := telemetry.Metrics{}
	for i := 0; i < len(kv); i += 2 {
		switch v := kv[i+1].(type) {
		case float64:
			m[kv[i].(string)] = telemetry.Number(v)
		case string:
			m[kv[i].(string)] = telemetry.String(v)
		}
	}
	return telemetry.Event{Type: telemetry.EventReading, Device: dev, TS: ts, Metrics: m}
}

// waitSubscribed publishes a unique marker and reads until the client
// sees it, so the test knows its subscription is in place and nothing
// older is still queued for it.
func waitSubscribed(t *testing.T, r *liveRig, c *websocket.Conn, dev string) {
	t.Helper()
	r.markers++
	want := float64(r.markers)
	r.live.Publish(reading(dev, 1, "marker", want))
	for {
		if e := next(t, c); e.Metrics["marker"] == want {
			return
		}
	}
}

func TestLiveAuthAndOrigin(t *testing.T) {
	r := newLiveRig(t, live.Options{})
	tests := []struct {
		name   string
		url    string
		header http.Header
		status int
	}{
		{"bearer", "", http.Header{"Authorization": {"Bearer " + r.viewer}}, 101},
		{"query", "?token=" + r.viewer, nil, 101},
		{"session cookie", "", http.Header{"Cookie": {operator.SessionCookie + "=" + r.session}}, 101},
		{"token as cookie", "", http.Header{"Cookie": {operator.SessionCookie + "=" + r.viewer}}, 401},
		{"no token", "", nil, 401},
		{"bad token", "?token=fho_x", nil, 401},
		{"foreign origin", "", http.Header{"Authorization": {"Bearer " + r.viewer}, "Origin": {"https://evil.example"}}, 403},
		{"own origin", "", http.Header{"Authorization": {"Bearer " + r.viewer}, "Origin": {r.srv.URL}}, 101},
		{"allowed origin", "", http.Header{"Authorization": {"Bearer " + r.viewer}, "Origin": {"https://ops.example.com"}}, 101},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, resp, _ := websocket.DefaultDialer.Dial(r.wsURL()+tt.url, tt.header)
			if resp == nil || resp.StatusCode != tt.status {
				t.Fatalf("response %v, want %d", resp, tt.status)
			}
			if c != nil {
				c.Close()
			}
		})
	}
}

func TestLiveSubscribeFiltersSnapshotPresence(t *testing.T) {
	r := newLiveRig(t, live.Options{})
	r.live.Publish(reading("d1", 100, "temp", 20.5, "hum", 40.0))
	r.live.Publish(reading("d1", 101, "temp", 21.0))

	c := r.dial(t, nil)
	subscribe(t, c, `{"type":"subscribe","devices":["d1"]}`)
	snap := next(t, c)
	if snap.Type != "reading" || snap.Device != "d1" || snap.Metrics["temp"] != 21.0 || snap.Metrics["hum"] != 40.0 {
		t.Fatalf("snapshot %+v: want latest temp and hum", snap)
	}
	waitSubscribed(t, r, c, "d1")

	r.live.Publish(reading("d2", 200, "temp", 1.0)) // not subscribed
	r.live.Publish(reading("d1", 201, "temp", 22.0))
	if e := next(t, c); e.Device != "d1" || e.TS != 201 {
		t.Fatalf("got %+v, want d1 at 201 only", e)
	}
	online := false
	r.live.Publish(telemetry.Event{Type: telemetry.EventPresence, Device: "d1", Online: &online, Transport: "mqtt", Reason: "heartbeat_timeout", At: 5})
	if e := next(t, c); e.Type != "presence" || e.Online == nil || *e.Online || e.Reason != "heartbeat_timeout" {
		t.Fatalf("presence %+v", e)
	}

	// Metric filter, then everything, then unsubscribe.
	subscribe(t, c, `{"type":"subscribe","devices":["d1"],"metrics":["hum"]}`)
	for e := next(t, c); e.Metrics["temp"] != nil; e = next(t, c) {
	} // the snapshot of the new subscription, filtered
	r.live.Publish(reading("d1", 300, "temp", 1.0, "hum", 50.0))
	if e := next(t, c); e.Metrics["hum"] != 50.0 || e.Metrics["temp"] != nil {
		t.Fatalf("metric filter: %+v", e)
	}
	subscribe(t, c, `{"type":"unsubscribe","devices":["d1"]}`)
	subscribe(t, c, `{"type":"subscribe","devices":["*"]}`)
	waitSubscribed(t, r, c, "d9")
	r.live.Publish(reading("d7", 400, "x", 1.0))
	for e := next(t, c); e.Device != "d7"; e = next(t, c) {
		if e.TS >= 400 || e.Type != "reading" {
			t.Fatalf("wildcard: %+v before d7's reading", e)
		} // else: the wildcard snapshot of the other devices
	}
	subscribe(t, c, `{"type":"bogus"}`)
	var e map[string]any
	_ = c.SetReadDeadline(time.Now().Add(loadWait))
	if err := c.ReadJSON(&e); err != nil || e["code"] != "unknown_type" {
		t.Fatalf("bogus message answer %v %v", e, err)
	}
}

func TestSSE(t *testing.T) {
	r := newLiveRig(t, live.Options{})
	r.live.Publish(reading("d1", 1, "temp", 1.0))
	req, _ := http.NewRequest("GET", r.srv.URL+"/api/v1/live?devices=d1", nil)
	req.Header.Set("Authorization", "Bearer "+r.viewer)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, ct)
	}
	sc := bufio.NewScanner(resp.Body)
	readEvent := func() (id string, data evt) {
		t.Helper()
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "data: "):
				if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &data); err != nil {
					t.Fatal(err)
				}
				return id, data
			}
		}
		t.Fatalf("stream ended: %v", sc.Err())
		return
	}
	if _, snap := readEvent(); snap.Metrics["temp"] != 1.0 {
		t.Fatalf("snapshot %+v", snap)
	}
	r.live.Publish(reading("d2", 2, "temp", 2.0))
	r.live.Publish(reading("d1", 3, "temp", 3.0))
	id3, e := readEvent()
	if e.TS != 3 || id3 == "" {
		t.Fatalf("event %+v id %q", e, id3)
	}
	r.live.Publish(reading("d1", 4, "temp", 4.0))
	r.live.Publish(reading("d1", 5, "temp", 5.0))
	cancel()

	// Resume after id3: exactly 4 and 5, no snapshot.
	req2, _ := http.NewRequest("GET", r.srv.URL+"/api/v1/live?devices=d1&token="+r.viewer, nil)
	req2.Header.Set("Last-Event-ID", id3)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	resp2, err := http.DefaultClient.Do(req2.WithContext(ctx2))
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	sc = bufio.NewScanner(resp2.Body)
	var got []int64
	for range 2 {
		_, e := readEvent()
		got = append(got, e.TS)
	}
	if !slices.Equal(got, []int64{4, 5}) {
		t.Fatalf("resumed %v, want [4 5]", got)
	}
}

// TestStalledSubscriberIsolated: one dashboard stops reading while another
// reads everything. The fast one receives every reading, in order, while
// the stalled one is coalesced, then cut with 1013 and counted.
func TestStalledSubscriberIsolated(t *testing.T) {
	r := newLiveRig(t, live.Options{QueueLen: 16, SlowAfter: 200 * time.Millisecond})
	stalled := r.dial(t, nil)
	subscribe(t, stalled, `{"type":"subscribe","devices":["*"]}`)
	waitSubscribed(t, r, stalled, "dx")
	fast := r.dial(t, nil)
	subscribe(t, fast, `{"type":"subscribe","devices":["*"]}`)
	waitSubscribed(t, r, fast, "dx")

	big := strings.Repeat("x", 200)
	kv := []any{}
	for i := range 40 {
		kv = append(kv, fmt.Sprintf("s%d", i), big)
	}
	var lat []time.Duration
	n := 0
	for ; n < 50000 && r.live.Stats().SlowDisconnects == 0; n++ {
		ev := reading("d1", int64(n+10), kv...)
		start := time.Now()
		r.live.Publish(ev)
		// Lockstep with the fast reader: it must see this reading next.
		e := next(t, fast)
		for e.Metrics["marker"] != nil { // a late duplicate of a subscription marker
			e = next(t, fast)
		}
		lat = append(lat, time.Since(start))
		if e.TS != int64(n+10) {
			t.Fatalf("fast subscriber got ts %d, want %d (lost or reordered)", e.TS, n+10)
		}
	}
	if r.live.Stats().SlowDisconnects != 1 {
		t.Fatalf("stalled subscriber not disconnected after %d readings", n)
	}
	if r.live.Stats().Coalesced == 0 {
		t.Error("stalled subscriber's backlog was not coalesced")
	}
	slices.Sort(lat)
	t.Logf("fast subscriber: %d readings, latency p50 %s p99 %s max %s", n, lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
	// The stalled client, once it reads again, finds a 1013 close.
	_ = stalled.SetReadDeadline(time.Now().Add(loadWait))
	for {
		_, _, err := stalled.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, closeTryAgain) && !strings.Contains(err.Error(), "reset") && !strings.Contains(err.Error(), "EOF") {
				t.Fatalf("stalled client saw %v, want close 1013", err)
			}
			break
		}
	}
	// And the fast one is still live.
	r.live.Publish(reading("d1", 999999, "after", 1.0))
	if e := next(t, fast); e.TS != 999999 {
		t.Fatalf("fast subscriber after the cut: %+v", e)
	}
}
