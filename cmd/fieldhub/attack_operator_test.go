package main

// The attack suite, operator sessions and revocation (issue 18, "Revocation
// and sessions"): every long-lived connection is bound to the credential
// that opened it and ends when that credential does.

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/bridge/ws"
	"github.com/fieldhub/fieldhub/telemetry/influxtest"
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
	influx := influxtest.Start(t)
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
	influx := influxtest.Start(t)
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
