package main

// The attack suite, operator sessions and revocation (issue 18, "Revocation
// and sessions"): every long-lived connection is bound to the credential
// that opened it and ends when that credential does.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/bridge/ws"
)

// opWaitClose waits up to d for c to be closed by the hub and returns the
// close error (nil if it stayed open). Frames before the close are handed
// to seen, if set.
func opWaitClose(c *websocket.Conn, d time.Duration, seen func([]byte)) error {
	_ = c.SetReadDeadline(time.Now().Add(d))
	for {
		_, b, err := c.ReadMessage()
		if err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				return ce
			}
			return nil
		}
		if seen != nil {
			seen(b)
		}
	}
}

// TestAttackDoubleRotationKeepsFirstGrace: rotate with a 1 s grace, then
// again with 5 s. The first token's session must end after its own grace,
// not the second one's: the close must come before the second grace could
// have ended.
func TestAttackDoubleRotationKeepsFirstGrace(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	first := h.createDevice(t, "rot-1")
	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + first}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st, m := h.api(t, "POST", "/api/v1/devices/rot-1/token", h.adminToken, map[string]any{"grace": "1s"}); st != 200 {
		t.Fatalf("rotate 1: %d %v", st, m)
	}
	const secondGrace = 5 * time.Second
	if st, m := h.api(t, "POST", "/api/v1/devices/rot-1/token", h.adminToken, map[string]any{"grace": secondGrace.String()}); st != 200 {
		t.Fatalf("rotate 2: %d %v", st, m)
	}
	second := time.Now()
	defer func() {
		t.Logf("first token's session closed %s after the second rotation", time.Since(second).Round(time.Millisecond))
	}()
	// Upper bound: the second token's grace, less a margin for the timer
	// that the second rotation (wrongly) schedules.
	err = opWaitClose(c, time.Until(second.Add(secondGrace-time.Second)), nil)
	if err == nil {
		t.Fatal("the first token's session outlived its 1 s grace up to the second rotation's grace")
	}
	if !websocket.IsCloseError(err, ws.CloseRevoked) {
		t.Fatalf("closed with %v, want %d (revoked)", err, ws.CloseRevoked)
	}
}

// TestAttackLongPollEndsOnRotation: a long poll opened before a rotation
// without grace ends with 401 at once (not when its 20 s wait runs out),
// and a command queued right after the rotation is not handed to it.
func TestAttackLongPollEndsOnRotation(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	type result struct {
		st   int
		body string
	}
	startPoll := func(device string) chan result {
		old := h.createDevice(t, device)
		polled := make(chan result, 1)
		go func() {
			req, _ := http.NewRequest("GET", h.url+"/api/v1/commands/next?wait=20s", nil)
			req.Header.Set("Authorization", "Bearer "+old)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				polled <- result{0, err.Error()}
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			polled <- result{resp.StatusCode, string(b)}
		}()
		// The poll is about to wait once the device was touched.
		waitUntil(t, "the long poll to start", 10*time.Second, func() bool {
			_, m := h.api(t, "GET", "/api/v1/devices/"+device, h.adminToken, nil)
			d, _ := m["device"].(map[string]any)
			return d != nil && d["last_seen"] != nil
		})
		if st, m := h.api(t, "POST", "/api/v1/devices/"+device+"/token", h.adminToken, map[string]any{}); st != 200 {
			t.Fatalf("rotate: %d %v", st, m)
		}
		return polled
	}
	// Well within the poll's 20 s wait.
	const ends = 8 * time.Second

	// A rotation alone ends the poll.
	polled := startPoll("poll-1")
	select {
	case r := <-polled:
		if r.st != http.StatusUnauthorized {
			t.Fatalf("long poll answered %d %s, want 401", r.st, r.body)
		}
	case <-time.After(ends):
		t.Fatal("the long poll of the rotated token went on waiting")
	}

	// A command queued right after the rotation does not reach the old
	// token's poll.
	polled = startPoll("poll-2")
	st, cmd := h.send(t, h.adminToken, "poll-2", "", map[string]any{"name": "open_valve"}, nil)
	if st != http.StatusAccepted {
		t.Fatalf("queue command: %d %v", st, cmd)
	}
	select {
	case r := <-polled:
		if r.st != http.StatusUnauthorized || strings.Contains(r.body, cmd["id"].(string)) {
			t.Fatalf("long poll answered %d %s, want 401 without the command", r.st, r.body)
		}
	case <-time.After(ends):
		t.Fatal("the long poll of the rotated token went on waiting")
	}
	if s := h.commandStatus(t, "poll-2", cmd["id"].(string)); s != "queued" {
		t.Fatalf("command status %q, want queued", s)
	}
}

// opSSE opens GET /api/v1/live and returns the response and a channel of
// its events' data lines, closed when the stream ends.
func opSSE(t *testing.T, h *hub, token, origin string) (*http.Response, chan string) {
	t.Helper()
	req, _ := http.NewRequest("GET", h.url+"/api/v1/live?devices=*", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	lines := make(chan string, 1024)
	if resp.StatusCode != 200 {
		close(lines)
		return resp, lines
	}
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				select {
				case lines <- d:
				default: // the test reads what it needs
				}
			}
		}
	}()
	return resp, lines
}

// opReading is one telemetry message with the given sequence number.
func opReading(n int) []byte {
	b, _ := json.Marshal(map[string]any{"type": "telemetry", "metrics": map[string]any{"n": n}})
	return b
}

// opViewer creates a viewer token and returns its id and secret.
func opViewer(t *testing.T, h *hub, name string) (id, secret string) {
	t.Helper()
	st, m := h.api(t, "POST", "/api/v1/tokens", h.adminToken, map[string]any{"name": name, "role": "viewer"})
	if st != 201 {
		t.Fatalf("create token: %d %v", st, m)
	}
	return m["token"].(map[string]any)["id"].(string), m["secret"].(string)
}

// opDevice is a WebSocket device that sends one reading per call and
// waits for its ack.
func opDevice(t *testing.T, h *hub, id string) func(n int) {
	t.Helper()
	tok := h.createDevice(t, id)
	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + tok}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return func(n int) {
		t.Helper()
		if err := c.WriteMessage(websocket.TextMessage, opReading(n)); err != nil {
			t.Fatal(err)
		}
		var ack map[string]any
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := c.ReadJSON(&ack); err != nil || ack["type"] != "ack" {
			t.Fatalf("reading %d: %v %v", n, ack, err)
		}
	}
}

// opLiveWS opens /ws/live with hdr, subscribed to every device.
func opLiveWS(t *testing.T, h *hub, hdr http.Header) *websocket.Conn {
	t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/live", hdr)
	if err != nil {
		t.Fatalf("dial /ws/live: %v (%v)", err, resp)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.WriteJSON(map[string]any{"type": "subscribe", "devices": []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	return c
}

// opN returns the "n" metric of a live reading event, or -1.
func opN(b []byte) int {
	var e struct {
		Type    string
		Metrics map[string]float64
	}
	if json.Unmarshal(b, &e) != nil || e.Type != "reading" {
		return -1
	}
	if n, ok := e.Metrics["n"]; ok {
		return int(n)
	}
	return -1
}

// opSeen waits until the WebSocket delivered reading n.
func opSeenWS(t *testing.T, c *websocket.Conn, n int) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, b, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("live socket before the revocation: %v", err)
		}
		if opN(b) == n {
			return
		}
	}
}

// opSeenSSE waits until the SSE stream delivered reading n.
func opSeenSSE(t *testing.T, lines chan string, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case d, ok := <-lines:
			if !ok {
				t.Fatal("SSE stream ended before the revocation")
			}
			if opN([]byte(d)) == n {
				return
			}
		case <-deadline:
			t.Fatalf("SSE stream never delivered reading %d", n)
		}
	}
}

// opAfterEnd checks that a live WebSocket is closed with 4003 and an SSE
// stream ends, both within a generous deadline, and that neither
// delivered a reading numbered from or above after.
func opAfterEnd(t *testing.T, c *websocket.Conn, lines chan string, after int) {
	t.Helper()
	if c != nil {
		err := opWaitClose(c, 10*time.Second, func(b []byte) {
			if n := opN(b); n >= after {
				t.Errorf("live socket got reading %d after the credential ended", n)
			}
		})
		if !websocket.IsCloseError(err, 4003) {
			t.Errorf("live socket: %v, want close 4003 within 10s", err)
		} else if ce := err.(*websocket.CloseError); ce.Text == "" {
			t.Error("close 4003 without a reason")
		}
	}
	if lines != nil {
		deadline := time.After(10 * time.Second)
		for open := true; open; {
			select {
			case d, ok := <-lines:
				if !ok {
					open = false
					break
				}
				if n := opN([]byte(d)); n >= after {
					t.Errorf("SSE stream got reading %d after the credential ended", n)
				}
			case <-deadline:
				t.Error("SSE stream still open 10s after the credential ended")
				open = false
			}
		}
	}
}

// TestAttackRevokedTokenEndsLiveStreams: deleting a viewer token closes
// its /ws/live socket (4003) and ends its SSE stream, and neither gets an
// event published after the deletion.
func TestAttackRevokedTokenEndsLiveStreams(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	id, viewer := opViewer(t, h, "wall-screen")
	send := opDevice(t, h, "rev-1")
	c := opLiveWS(t, h, http.Header{"Authorization": {"Bearer " + viewer}})
	_, lines := opSSE(t, h, viewer, "")
	// Both streams are live: they see a reading sent now.
	send(1)
	opSeenWS(t, c, 1)
	opSeenSSE(t, lines, 1)
	revoked := time.Now()
	if st, m := h.api(t, "DELETE", "/api/v1/tokens/"+id, h.adminToken, nil); st != 204 {
		t.Fatalf("revoke: %d %v", st, m)
	}
	// Published after the deletion: must reach neither stream.
	for n := 1000; n < 1020; n++ {
		send(n)
	}
	opAfterEnd(t, c, lines, 1000)
	t.Logf("both streams ended %s after the DELETE was sent", time.Since(revoked).Round(time.Millisecond))
	if st, _ := h.api(t, "GET", "/api/v1/devices", viewer, nil); st != 401 {
		t.Errorf("REST with the revoked token: %d, want 401", st)
	}
}

// TestAttackSSEForeignOrigin: the SSE stream applies the same Origin
// policy as /ws/live.
func TestAttackSSEForeignOrigin(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	for _, tt := range []struct {
		origin string
		want   int
	}{
		{"https://evil.example", 403},
		{"null", 403},
		{h.url, 200},
		{"", 200},
	} {
		resp, _ := opSSE(t, h, h.adminToken, tt.origin)
		if resp.StatusCode != tt.want {
			t.Errorf("SSE with Origin %q: %d, want %d", tt.origin, resp.StatusCode, tt.want)
		}
		resp.Body.Close()
	}
}

// opSignIn signs in with token and returns the session cookie.
func opSignIn(t *testing.T, h *hub, token string) *http.Cookie {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"token": token})
	resp, err := http.Post(h.url+"/api/v1/session", "application/json", strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, c := range resp.Cookies() {
		if c.Name == "fieldhub_session" {
			if resp.StatusCode != 204 {
				t.Fatalf("sign-in: %d", resp.StatusCode)
			}
			return c
		}
	}
	t.Fatalf("sign-in: %d without a cookie", resp.StatusCode)
	return nil
}

// opCookieGet does GET path with the session cookie and returns the status
// and body.
func opCookieGet(t *testing.T, h *hub, path string, c *http.Cookie) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", h.url+path, nil)
	req.AddCookie(c)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// TestAttackSessionCookie: the dashboard cookie is a server-side session,
// not the token; sign-out ends it and closes its sockets; deleting the
// token ends all its sessions; a session survives a restart; a session
// ends at its absolute expiry and so do its sockets.
func TestAttackSessionCookie(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_SESSION_MAX": "1h"})
	id, viewer := opViewer(t, h, "night-shift")
	send := opDevice(t, h, "sess-1")

	cookie := opSignIn(t, h, viewer)
	if strings.Contains(cookie.Value, viewer) || strings.Contains(viewer, cookie.Value) {
		t.Fatal("the session cookie carries the API token")
	}
	if !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		t.Errorf("cookie %+v: want HttpOnly, SameSite=Strict", cookie)
	}
	if st, m := opCookieGet(t, h, "/api/v1/session", cookie); st != 200 || m["name"] != "night-shift" || m["signed_in"] != true {
		t.Fatalf("session: %d %v", st, m)
	}

	// Sign-out ends the session on the hub: the cookie stops working and
	// its live socket closes.
	hdr := http.Header{"Cookie": {cookie.String()}}
	c := opLiveWS(t, h, hdr)
	send(1)
	opSeenWS(t, c, 1)
	req, _ := http.NewRequest("DELETE", h.url+"/api/v1/session", nil)
	req.AddCookie(cookie)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("sign-out: %d", resp.StatusCode)
	}
	for n := 1000; n < 1010; n++ {
		send(n)
	}
	opAfterEnd(t, c, nil, 1000)
	if st, _ := opCookieGet(t, h, "/api/v1/devices", cookie); st != 401 {
		t.Errorf("a signed-out cookie still works: %d", st)
	}

	// A session survives a restart of the hub.
	kept := opSignIn(t, h, viewer)
	env := h.env
	h.stop(t)
	h = startHub(t, influx, map[string]string{"FIELDHUB_DATA_DIR": env["FIELDHUB_DATA_DIR"], "FIELDHUB_SESSION_MAX": "1h"})
	if st, m := opCookieGet(t, h, "/api/v1/me", kept); st != 200 || m["name"] != "night-shift" {
		t.Fatalf("session after restart: %d %v", st, m)
	}

	// Deleting the token ends every session of it and closes their
	// sockets.
	other := opSignIn(t, h, viewer)
	send = opDevice(t, h, "sess-2")
	c1 := opLiveWS(t, h, http.Header{"Cookie": {kept.String()}})
	_, lines := opSSECookie(t, h, other)
	send(2)
	opSeenWS(t, c1, 2)
	opSeenSSE(t, lines, 2)
	if st, m := h.api(t, "DELETE", "/api/v1/tokens/"+id, h.adminToken, nil); st != 204 {
		t.Fatalf("revoke: %d %v", st, m)
	}
	for n := 2000; n < 2010; n++ {
		send(n)
	}
	opAfterEnd(t, c1, lines, 2000)
	for _, ck := range []*http.Cookie{kept, other} {
		if st, _ := opCookieGet(t, h, "/api/v1/devices", ck); st != 401 {
			t.Errorf("a session of the deleted token still works: %d", st)
		}
	}

	// The env admin token signs in too, and the header names no variable.
	admin := opSignIn(t, h, h.adminToken)
	if _, m := opCookieGet(t, h, "/api/v1/session", admin); m["name"] == "FIELDHUB_ADMIN_TOKEN" || m["role"] != "admin" {
		t.Errorf("env admin session: %v", m)
	}
}

// TestAttackSessionExpiryClosesSockets: a session at its absolute expiry
// ends, and its live socket closes with it.
func TestAttackSessionExpiryClosesSockets(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_SESSION_MAX": "2s"})
	_, viewer := opViewer(t, h, "short")
	cookie := opSignIn(t, h, viewer)
	c := opLiveWS(t, h, http.Header{"Cookie": {cookie.String()}})
	opAfterEnd(t, c, nil, 0)
	if st, _ := opCookieGet(t, h, "/api/v1/devices", cookie); st != 401 {
		t.Errorf("an expired session still works: %d", st)
	}
}

// opSSECookie is opSSE with a session cookie.
func opSSECookie(t *testing.T, h *hub, c *http.Cookie) (*http.Response, chan string) {
	t.Helper()
	req, _ := http.NewRequest("GET", h.url+"/api/v1/live?devices=*", nil)
	req.AddCookie(c)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	lines := make(chan string, 1024)
	if resp.StatusCode != 200 {
		t.Fatalf("SSE with cookie: %d", resp.StatusCode)
	}
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				select {
				case lines <- d:
				default:
				}
			}
		}
	}()
	return resp, lines
}

// opFillWide sends n wide readings (41 metrics each) from a new device,
// each acked, to fill the hub's replay window.
func opFillWide(t *testing.T, h *hub, dev string, n int) {
	t.Helper()
	tok := h.createDevice(t, dev)
	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + tok}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < n; i++ {
		m := map[string]any{"n": i}
		for k := 0; k < 40; k++ {
			m[fmt.Sprintf("padding_metric_name_for_width_%02d", k)] = i*100 + k
		}
		b, _ := json.Marshal(map[string]any{"type": "telemetry", "metrics": m})
		if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
			t.Fatal(err)
		}
		var ack map[string]any
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if err := c.ReadJSON(&ack); err != nil || ack["type"] != "ack" {
			t.Fatalf("reading %d: %v %v", i, ack, err)
		}
	}
}

// TestAttackSSEResumeEndsOnRevocation: an SSE client resuming from a full
// replay window (Last-Event-ID: 0) on a socket with a 4 KiB receive buffer
// has its token deleted early in the resume: the stream ends at once, not
// after the thousands of replayed frames still to go.
func TestAttackSSEResumeEndsOnRevocation(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_RATE_LIMIT": "100000", "FIELDHUB_RATE_BURST": "100000"})
	id, viewer := opViewer(t, h, "resumer")
	const n = 3000
	opFillWide(t, h, "wide-1", n)

	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/v1/live?devices=* HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nLast-Event-ID: 0\r\n\r\n", viewer)
	br := bufio.NewReaderSize(conn, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if status, err := br.ReadString('\n'); err != nil || !strings.Contains(status, "200") {
		t.Fatalf("status %q %v", status, err)
	}
	if st, m := h.api(t, "DELETE", "/api/v1/tokens/"+id, h.adminToken, nil); st != 204 {
		t.Fatalf("revoke: %d %v", st, m)
	}
	revoked := time.Now()
	// Read at the client's slow pace until the hub ends the stream; the
	// whole replay at this pace takes minutes.
	const within = 20 * time.Second
	_ = conn.SetReadDeadline(revoked.Add(within))
	var events int
	buf := make([]byte, 4096)
	for {
		k, err := br.Read(buf)
		events += strings.Count(string(buf[:k]), "event: reading")
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("SSE stream of a deleted token still open %s after the DELETE (%d readings read meanwhile)", within, events)
		}
		if err != nil {
			break
		}
	}
	t.Logf("stream ended %s after the DELETE; %d of %d replayed readings read after it (in flight in socket buffers)", time.Since(revoked).Round(time.Millisecond), events, n)
	if events >= n {
		t.Errorf("the whole replay window went to a deleted token")
	}
	waitUntil(t, "revocation logged", 10*time.Second, func() bool {
		l := h.stderr.String()
		return strings.Contains(l, "reason=revoked") && strings.Contains(l, "transport=sse")
	})
}
