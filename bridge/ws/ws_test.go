package ws

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/bridge/commands/boltstore"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

// events records what the bridge publishes for dashboards.
type events struct {
	mu  sync.Mutex
	evs []telemetry.Event
}

func (e *events) Publish(ev telemetry.Event) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }
func (e *events) presence(device string) []telemetry.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []telemetry.Event
	for _, ev := range e.evs {
		if ev.Type == telemetry.EventPresence && ev.Device == device {
			out = append(out, ev)
		}
	}
	return out
}

type rig struct {
	reg    *devices.Registry
	sp     *spool.Spool
	br     *bridge.Bridge
	h      *Handler
	srv    *httptest.Server
	ev     *events
	tokens map[string]string
}

type rigOpts struct {
	spoolMax int64
	rate     float64
	burst    int
	ping     time.Duration
	readLim  int64
}

func newRig(t *testing.T, o rigOpts) *rig { return newRigTB(t, o) }

func newRigTB(t testing.TB, o rigOpts) *rig {
	t.Helper()
	dir := t.TempDir()
	st, err := devices.OpenBolt(filepath.Join(dir, "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{ev: &events{}, tokens: map[string]string{}}
	r.reg, err = devices.Open(context.Background(), st, devices.Options{OnCredentialsChanged: func(id string) { r.br.CredentialsChanged(id) }})
	if err != nil {
		t.Fatal(err)
	}
	r.sp, err = spool.Open(spool.Options{Dir: filepath.Join(dir, "spool"), MaxBytes: o.spoolMax})
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := commands.New(context.Background(), commands.Options{Store: boltstore.New(st.DB()), Devices: r.reg, Fanout: r.ev})
	if err != nil {
		t.Fatal(err)
	}
	cmdsCtx, stopCmds := context.WithCancel(context.Background())
	cmdsDone := make(chan struct{})
	go func() { _ = cmds.Run(cmdsCtx); close(cmdsDone) }() // owner: this rig; ends at cleanup
	t.Cleanup(func() { stopCmds(); <-cmdsDone })
	r.br, err = bridge.New(bridge.Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: r.sp, Devices: r.reg, Fanout: r.ev, Commands: cmds, RatePerSec: o.rate, Burst: o.burst})
	if err != nil {
		t.Fatal(err)
	}
	r.h, err = New(Options{Bridge: r.br, Commands: cmds, Auth: r.reg, Failures: devices.NewFailureLimiter(5, 10), PingInterval: o.ping, ReadLimit: o.readLim})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /ws/device", r.h)
	mux.HandleFunc("POST /api/v1/telemetry", r.h.ServeTelemetry)
	r.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		r.h.Close()
		r.br.CloseAll(bridge.ReasonServerShutdown)
		r.h.Wait()
		r.srv.Close()
		r.sp.Close()
		r.reg.Close()
		st.Close()
	})
	for _, id := range []string{"d1", "d2"} {
		c, err := r.reg.Create(context.Background(), devices.Spec{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		r.tokens[id] = c.Token
	}
	return r
}

func (r *rig) url() string { return "ws" + strings.TrimPrefix(r.srv.URL, "http") + "/ws/device" }

func (r *rig) dial(t *testing.T, token string) *websocket.Conn {
	t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial(r.url(), http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func roundTrip(t *testing.T, c *websocket.Conn, msg string) map[string]any {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	return readFrame(t, c)
}

func readFrame(t *testing.T, c *websocket.Conn) map[string]any {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, data, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("frame %s: %v", data, err)
	}
	return m
}

func (r *rig) stored(t *testing.T) int {
	t.Helper()
	b, err := r.sp.Read(r.sp.Confirmed(), 1<<20, 64<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b.Points
}

func TestAuth(t *testing.T) {
	r := newRig(t, rigOpts{})
	tests := []struct {
		name   string
		header http.Header
		query  string
		status int
	}{
		{"header", http.Header{"Authorization": {"Bearer " + r.tokens["d1"]}}, "", http.StatusSwitchingProtocols},
		{"query", nil, "?token=" + r.tokens["d2"], http.StatusSwitchingProtocols},
		{"missing", nil, "", http.StatusUnauthorized},
		{"wrong", http.Header{"Authorization": {"Bearer fhd_wrong"}}, "", http.StatusUnauthorized},
		{"not bearer", http.Header{"Authorization": {"Basic " + r.tokens["d1"]}}, "", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, resp, err := websocket.DefaultDialer.Dial(r.url()+tt.query, tt.header)
			if resp == nil {
				t.Fatalf("no response: %v", err)
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if c != nil {
				c.Close()
			}
		})
	}
}

func TestAuthFailuresRateLimited(t *testing.T) {
	r := newRig(t, rigOpts{})
	var last int
	for range 30 {
		_, resp, _ := websocket.DefaultDialer.Dial(r.url(), http.Header{"Authorization": {"Bearer fhd_guess"}})
		last = resp.StatusCode
	}
	if last != http.StatusTooManyRequests {
		t.Fatalf("after 30 failures status %d, want 429", last)
	}
}

func TestTelemetryAckAndErrors(t *testing.T) {
	r := newRig(t, rigOpts{})
	c := r.dial(t, r.tokens["d1"])
	now := time.Now().UnixMilli()

	ack := roundTrip(t, c, fmt.Sprintf(`{"type":"telemetry","id":"42","ts":%d,"metrics":{"temp":21.5,"door_open":false,"state":"idle"}}`, now))
	if ack["type"] != "ack" || ack["id"] != "42" {
		t.Fatalf("ack = %v", ack)
	}
	if n := r.stored(t); n != 1 {
		t.Fatalf("acked but %d readings in spool", n)
	}
	batch := roundTrip(t, c, `{"type":"telemetry","id":"43","readings":[{"metrics":{"a":1}},{"metrics":{"a":2}},{"metrics":{"a":3}}]}`)
	if batch["type"] != "ack" || batch["id"] != "43" || r.stored(t) != 4 {
		t.Fatalf("batch ack = %v, stored %d", batch, r.stored(t))
	}
	if pong := roundTrip(t, c, `{"type":"ping"}`); pong["type"] != "pong" {
		t.Fatalf("pong = %v", pong)
	}
	tests := []struct {
		msg, code, field string
	}{
		{`{"type":"telemetry","id":"44","metrics":{"temp":`, "bad_json", ""},
		{`{"type":"telemetry","id":"45","metrics":{"temp":"` + strings.Repeat("x", 300) + `"}}`, "invalid", "metrics.temp"},
		{`{"type":"telemetry","id":"46","readings":[{"metrics":{"a":1}},{"metrics":{"b c":1}}]}`, "invalid", "readings[1].metrics.b c"},
		{`{"type":"launch","id":"47"}`, "unknown_type", ""},
		{`{"type":"telemetry","id":"48","TS":1,"metrics":{"a":1}}`, "bad_json", ""},
	}
	for _, tt := range tests {
		e := roundTrip(t, c, tt.msg)
		if e["type"] != "error" || e["code"] != tt.code {
			t.Errorf("%s -> %v, want code %s", tt.msg, e, tt.code)
			continue
		}
		if tt.field != "" {
			errs, _ := e["errors"].([]any)
			if len(errs) == 0 || errs[0].(map[string]any)["field"] != tt.field {
				t.Errorf("%s -> errors %v, want field %s", tt.msg, e["errors"], tt.field)
			}
		}
	}
	// The connection stays open after payload errors, and nothing bad was stored.
	if ack := roundTrip(t, c, `{"type":"telemetry","id":"49","metrics":{"a":1}}`); ack["type"] != "ack" {
		t.Fatalf("after errors: %v", ack)
	}
	if n := r.stored(t); n != 5 {
		t.Fatalf("stored %d readings, want 5", n)
	}
}

func TestRateLimited(t *testing.T) {
	r := newRig(t, rigOpts{rate: 1, burst: 3})
	c := r.dial(t, r.tokens["d1"])
	other := r.dial(t, r.tokens["d2"])
	codes := map[string]int{}
	for i := range 6 {
		f := roundTrip(t, c, fmt.Sprintf(`{"type":"telemetry","id":"%d","metrics":{"a":1}}`, i))
		codes[fmt.Sprint(f["type"], f["code"])]++
	}
	if codes["ack<nil>"] != 3 || codes["errorrate_limited"] != 3 {
		t.Fatalf("codes %v: want 3 acks then 3 rate_limited", codes)
	}
	// Another device is not slowed by d1's limit.
	if f := roundTrip(t, other, `{"type":"telemetry","metrics":{"a":1}}`); f["type"] != "ack" {
		t.Fatalf("other device: %v", f)
	}
	if n := r.stored(t); n != 4 {
		t.Fatalf("stored %d, want 4", n)
	}
}

func TestOverloadedWhenSpoolFull(t *testing.T) {
	r := newRig(t, rigOpts{spoolMax: 4096})
	c := r.dial(t, r.tokens["d1"])
	var last map[string]any
	for i := range 100 {
		last = roundTrip(t, c, fmt.Sprintf(`{"type":"telemetry","id":"%d","metrics":{"some_metric":%d}}`, i, i))
		if last["type"] == "error" {
			break
		}
	}
	if last["code"] != "overloaded" {
		t.Fatalf("last frame %v, want overloaded", last)
	}
}

func TestOversizedFrameCloses1009(t *testing.T) {
	r := newRig(t, rigOpts{readLim: 1024})
	c := r.dial(t, r.tokens["d1"])
	big := `{"type":"telemetry","metrics":{"s":"` + strings.Repeat("x", 2000) + `"}}`
	if err := c.WriteMessage(websocket.TextMessage, []byte(big)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
		t.Fatalf("err = %v, want close 1009", err)
	}
	if n := r.stored(t); n != 0 {
		t.Fatalf("stored %d from an oversized frame", n)
	}
	waitPresence(t, r, "d1", false, bridge.ReasonReadLimit)
}

func waitPresence(t *testing.T, r *rig, id string, online bool, reason string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, err := r.reg.Get(id)
		if err == nil && d.Online == online && (online || d.Reason == reason) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("presence of %s = %+v, want online=%v reason=%q", id, d.Presence, online, reason)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func expectClose(t *testing.T, c *websocket.Conn, code int, within time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		if !websocket.IsCloseError(err, code) {
			t.Fatalf("err = %v, want close %d within %s", err, code, within)
		}
		return
	}
}

func TestSupersededKeepsNewSessionOnline(t *testing.T) {
	r := newRig(t, rigOpts{})
	first := r.dial(t, r.tokens["d1"])
	waitPresence(t, r, "d1", true, "")
	second := r.dial(t, r.tokens["d1"])
	expectClose(t, first, CloseSuperseded, 2*time.Second)
	// The old session's late close must not flip the device offline.
	if ack := roundTrip(t, second, `{"type":"telemetry","metrics":{"a":1}}`); ack["type"] != "ack" {
		t.Fatalf("new session: %v", ack)
	}
	d, _ := r.reg.Get("d1")
	if !d.Online {
		t.Fatal("device offline after superseded session closed")
	}
	if pr := r.ev.presence("d1"); pr[len(pr)-1].Online == nil || !*pr[len(pr)-1].Online {
		t.Fatalf("last presence event %+v, want online", pr[len(pr)-1])
	}
}

func TestRevokeAndRotateClose4003(t *testing.T) {
	r := newRig(t, rigOpts{})
	c := r.dial(t, r.tokens["d1"])
	waitPresence(t, r, "d1", true, "")
	if _, err := r.reg.Rotate(context.Background(), "d1", 0); err != nil {
		t.Fatal(err)
	}
	expectClose(t, c, CloseRevoked, time.Second)
	waitPresence(t, r, "d1", false, bridge.ReasonRevoked)

	c2 := r.dial(t, r.tokens["d2"])
	waitPresence(t, r, "d2", true, "")
	if err := r.reg.Delete(context.Background(), "d2"); err != nil {
		t.Fatal(err)
	}
	expectClose(t, c2, CloseRevoked, time.Second)
}

func TestHeartbeatTimeout(t *testing.T) {
	r := newRig(t, rigOpts{ping: 100 * time.Millisecond})
	_ = r.dial(t, r.tokens["d1"]) // never reads, so never answers pings
	waitPresence(t, r, "d1", true, "")
	waitPresence(t, r, "d1", false, bridge.ReasonHeartbeatTimeout)
	if n := r.br.Stats().Disconnects["ws"][bridge.ReasonHeartbeatTimeout].Load(); n != 1 {
		t.Fatalf("heartbeat_timeout disconnects = %d", n)
	}
}

func TestHTTPFallback(t *testing.T) {
	r := newRig(t, rigOpts{readLim: 4096})
	post := func(token, body string) (int, map[string]any) {
		req, _ := http.NewRequest("POST", r.srv.URL+"/api/v1/telemetry", strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	if st, m := post(r.tokens["d1"], `{"id":"7","metrics":{"temp":1}}`); st != 200 || m["type"] != "ack" || m["id"] != "7" {
		t.Fatalf("ack: %d %v", st, m)
	}
	if st, m := post(r.tokens["d1"], `{"metrics":{"temp":null}}`); st != 400 || m["code"] != "invalid" {
		t.Fatalf("invalid: %d %v", st, m)
	}
	if st, _ := post("", `{"metrics":{"temp":1}}`); st != 401 {
		t.Fatalf("no token: %d", st)
	}
	big := `{"metrics":{"s":"` + strings.Repeat("x", 5000) + `"}}`
	if st, m := post(r.tokens["d1"], big); st != 413 || m["code"] != "too_large" {
		t.Fatalf("too large: %d %v", st, m)
	}
	if n := r.stored(t); n != 1 {
		t.Fatalf("stored %d, want 1", n)
	}
}

func TestPermessageDeflateOffered(t *testing.T) {
	r := newRig(t, rigOpts{})
	d := websocket.Dialer{EnableCompression: true}
	c, resp, err := d.Dial(r.url(), http.Header{"Authorization": {"Bearer " + r.tokens["d1"]}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.Contains(ext, "permessage-deflate") {
		t.Fatalf("extensions %q: permessage-deflate not negotiated", ext)
	}
	if ack := roundTrip(t, c, `{"type":"telemetry","id":"z","metrics":{"a":1}}`); ack["type"] != "ack" {
		t.Fatalf("compressed session: %v", ack)
	}
}

// TestAuthFailuresSpareValidTokens: failures from an address with one token
// never refuse another token, valid or not, from the same address.
func TestAuthFailuresSpareValidTokens(t *testing.T) {
	r := newRig(t, rigOpts{})
	for range 30 {
		if _, resp, _ := websocket.DefaultDialer.Dial(r.url(), http.Header{"Authorization": {"Bearer fhd_guess"}}); resp == nil {
			t.Fatal("no answer")
		}
	}
	_, resp, err := websocket.DefaultDialer.Dial(r.url(), http.Header{"Authorization": {"Bearer fhd_other"}})
	if resp == nil {
		t.Fatalf("another bad token from the same address: %v", err)
	}
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("another bad token from the same address: %s, want 401", resp.Status)
	}
	c := r.dial(t, r.tokens["d1"])
	c.Close()
}

// TestCompressedMessageBoundAfterDecompression sends, with permessage-
// deflate, messages of a few KiB on the wire: one that stays under the
// read limit once decompressed is taken, one that expands past it closes
// the connection with 1009 and stores nothing.
func TestCompressedMessageBoundAfterDecompression(t *testing.T) {
	const limit = 64 << 10
	tests := []struct {
		name     string
		size     int // decompressed bytes
		wantCode int // close code, 0 for an answer
	}{
		{"under the limit", limit - 100, 0},
		{"just over the limit", limit + 1, websocket.CloseMessageTooBig},
		{"a hundred times the limit, a few KiB on the wire", 100 * limit, websocket.CloseMessageTooBig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, rigOpts{readLim: limit})
			d := websocket.Dialer{EnableCompression: true}
			c, _, err := d.Dial(r.url(), http.Header{"Authorization": {"Bearer " + r.tokens["d1"]}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.SetCompressionLevel(9); err != nil {
				t.Fatal(err)
			}
			msg := `{"type":"telemetry","id":"z","metrics":{"a":1}}`
			msg += strings.Repeat(" ", tt.size-len(msg)) // JSON allows trailing white space
			if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			if tt.wantCode == 0 {
				if f := readFrame(t, c); f["type"] != "ack" {
					t.Fatalf("answer %v, want ack", f)
				}
				return
			}
			expectClose(t, c, tt.wantCode, 10*time.Second)
			if n := r.stored(t); n != 0 {
				t.Fatalf("stored %d readings from a message past the limit", n)
			}
			waitPresence(t, r, "d1", false, bridge.ReasonReadLimit)
		})
	}
}

// TestSendQueueBytes: frames queue toward a device up to SendQueueBytes;
// one frame always fits an empty queue, and what the writer wrote frees
// room again.
func TestSendQueueBytes(t *testing.T) {
	steps := []struct {
		op   string // "queue" n bytes, or "write": the writer takes the next frame, of n bytes
		n    int
		want bool
	}{
		{"queue", 600, true},
		{"queue", 400, true}, // exactly the bound
		{"queue", 1, false},
		{"write", 600, true},
		{"queue", 600, true},
		{"write", 400, true},
		{"write", 600, true},
		{"queue", 5000, true}, // larger than the bound, into an empty queue
		{"queue", 1, false},
	}
	c := &conn_{h: &Handler{opts: Options{SendQueueBytes: 1000}}, send: make(chan []byte, 64)}
	for i, s := range steps {
		switch s.op {
		case "queue":
			if got := c.enqueue(make([]byte, s.n)); got != s.want {
				t.Fatalf("step %d: queue %d bytes with %d queued = %v, want %v", i, s.n, c.queued.Load(), got, s.want)
			}
		case "write":
			f := <-c.send
			if len(f) != s.n {
				t.Fatalf("step %d: wrote a frame of %d bytes, want %d", i, len(f), s.n)
			}
			c.queued.Add(-int64(len(f)))
		}
	}
	c = &conn_{h: &Handler{opts: Options{SendQueueBytes: 1 << 20}}, send: make(chan []byte, 2)}
	for i, want := range []bool{true, true, false} {
		if got := c.enqueue([]byte("x")); got != want {
			t.Fatalf("frame %d of a 2-frame queue: %v, want %v", i, got, want)
		}
	}
	if q := c.queued.Load(); q != 2 {
		t.Fatalf("%d bytes counted after a refused frame, want 2", q)
	}
}
