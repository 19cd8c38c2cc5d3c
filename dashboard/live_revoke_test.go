package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/dashboard/live"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// TestLiveWSNothingAfterRevocation: a /ws/live client stops reading while
// a large batch is queued; its credential is revoked mid-batch. The
// writer may finish the frame in flight, then sends nothing more but the
// close 4003 (it checks the revocation per frame, not per batch).
func TestLiveWSNothingAfterRevocation(t *testing.T) {
	r := newLiveRig(t, live.Options{QueueLen: 1024, SlowAfter: 10 * time.Minute})
	// A fixed 64 KiB receive buffer: the hub's writer blocks mid-batch.
	d := websocket.Dialer{NetDialContext: func(ctx context.Context, n, a string) (net.Conn, error) {
		nd := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10) })
		}}
		return nd.DialContext(ctx, n, a)
	}}
	c, resp, err := d.Dial(r.wsURL(), http.Header{"Authorization": {"Bearer " + r.viewer}})
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer c.Close()
	subscribe(t, c, `{"type":"subscribe","devices":["*"]}`)
	waitSubscribed(t, r, c, "d1")

	// 1,000 frames of 16 KiB: far more than the socket buffers hold.
	big := strings.Repeat("x", 400)
	kv := []any{}
	for i := range 40 {
		kv = append(kv, fmt.Sprintf("s%02d", i), big)
	}
	const n = 1000
	before := r.live.Stats().Sent
	// Publish them as one batch: the hub queues it for the subscriber
	// at once and the writer takes it whole, so its first frame out means
	// the whole batch is in the writer's hands.
	evs := make([]telemetry.Event, n)
	for i := range n {
		evs[i] = reading("d1", int64(i+10), kv...)
	}
	r.live.PublishBatch(evs)
	waitFor(t, "the writer to start on the batch", func() bool { return r.live.Stats().Sent > before })
	op, ok := r.api.opts.Registry.AuthenticateOperator(context.Background(), r.viewer)
	if !ok {
		t.Fatal("viewer token does not authenticate")
	}
	r.live.CloseCredential(devices.OperatorEnded{TokenID: op.TokenID})
	atRevoke := r.live.Stats().Sent
	if atRevoke-before >= n {
		t.Fatalf("the whole batch went out before the revocation (%d frames): the test did not stall the writer", atRevoke-before)
	}
	// The client reads again: frames already in the socket buffers, then
	// the close.
	_ = c.SetReadDeadline(time.Now().Add(loadWait))
	for {
		if _, _, err = c.ReadMessage(); err != nil {
			break
		}
	}
	if !websocket.IsCloseError(err, CloseRevoked) {
		t.Fatalf("read: %v, want close %d", err, CloseRevoked)
	}
	after := r.live.Stats().Sent - atRevoke
	t.Logf("frames written: %d before the revocation, %d after (of %d queued)", atRevoke-before, after, n)
	if after > 1 {
		t.Errorf("%d frames written after the revocation, want at most the one in flight", after)
	}
}

// waitFor polls cond until it holds, failing after loadWait.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(loadWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBadMetricFilter(t *testing.T) {
	many := func(n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("m%d", i))
		}
		return out
	}
	for _, c := range []struct {
		name  string
		names []string
		bad   string // substring of the message; "" for accepted
	}{
		{"none", nil, ""},
		{"some", []string{"temp", "hum.rel", "_x-1"}, ""},
		{"at the cap", many(liveMaxMetrics), ""},
		{"duplicates count once", append(many(liveMaxMetrics), many(liveMaxMetrics)...), ""},
		{"past the cap", many(liveMaxMetrics + 1), "at most 256 metric names"},
		{"empty", []string{"temp", ""}, "not valid"},
		{"leading digit", []string{"1a"}, "not valid"},
		{"too long", []string{strings.Repeat("a", 65)}, "not valid"},
		{"quote", []string{`a"b`}, "not valid"},
	} {
		got := badMetricFilter(c.names)
		if (c.bad == "") != (got == "") || !strings.Contains(got, c.bad) {
			t.Errorf("%s: %q, want %q", c.name, got, c.bad)
		}
	}
}

// TestLiveMetricFilterBounded: a subscribe past the metric-name cap, or
// with an invalid name, is refused on the socket and not applied; SSE
// answers 400.
func TestLiveMetricFilterBounded(t *testing.T) {
	r := newLiveRig(t, live.Options{})
	c := r.dial(t, nil)
	var names []string
	for i := range liveMaxMetrics + 1 {
		names = append(names, fmt.Sprintf("m%d", i))
	}
	for _, metrics := range [][]string{names, {"temp", "9lives"}} {
		b, _ := json.Marshal(map[string]any{"type": "subscribe", "devices": []string{"*"}, "metrics": metrics})
		subscribe(t, c, string(b))
		_ = c.SetReadDeadline(time.Now().Add(loadWait))
		var m map[string]string
		if err := c.ReadJSON(&m); err != nil || m["type"] != "error" || m["code"] != "invalid_metrics" {
			t.Fatalf("subscribe with %d metric names: %v %v, want error invalid_metrics", len(metrics), m, err)
		}
	}
	// Neither refused subscribe was applied: after a valid one to d1
	// alone, a reading of another device is not delivered before d1's.
	subscribe(t, c, `{"type":"subscribe","devices":["d1"]}`)
	waitSubscribed(t, r, c, "d1")
	r.live.Publish(reading("dx", 5, "temp", 1.0))
	r.live.Publish(reading("d1", 6, "temp", 2.0))
	if e := next(t, c); e.Device != "d1" || e.TS != 6 {
		t.Errorf("a refused subscribe was applied: got %+v first, want d1's reading", e)
	}
	for _, q := range []string{strings.Join(names, ","), "temp,bad name"} {
		req, _ := http.NewRequest("GET", r.srv.URL+"/api/v1/live?devices=*&metrics="+url.QueryEscape(q), nil)
		req.Header.Set("Authorization", "Bearer "+r.viewer)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("SSE metrics=%.40s...: %d, want 400", q, resp.StatusCode)
		}
	}
}

// TestAdmitLiveRechecksCredential: a credential revoked between
// authentication and the live socket's registration (where
// Hub.CloseCredential could not see the socket yet) is refused 401 and
// leaves no live client behind.
func TestAdmitLiveRechecksCredential(t *testing.T) {
	r := newLiveRig(t, live.Options{})
	reg := r.api.opts.Registry
	op, ok := reg.AuthenticateOperator(context.Background(), r.viewer)
	if !ok {
		t.Fatal("viewer token does not authenticate")
	}
	if err := reg.RevokeOperatorToken(context.Background(), op.TokenID); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/ws/live", nil)
	if end, ok := r.api.openLive(w, req, r.live.NewSubscriber(op)); ok {
		end()
		t.Fatal("a revoked credential was admitted as a live client")
	}
	if w.Code != http.StatusUnauthorized {
		t.Errorf("answer %d, want 401", w.Code)
	}
	if n := r.live.Stats().Subscribers; n != 0 {
		t.Errorf("%d live clients left registered", n)
	}
}
