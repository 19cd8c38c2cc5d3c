package dashboard

import (
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/dashboard/live"
)

// TestShutdownClosesLiveStreams: Shutdown closes the open /ws/live
// sockets with 1001 and ends the SSE streams, waits for their handlers,
// and refuses new streams with 503 (net/http's Shutdown does neither
// for hijacked or long-lived responses).
func TestShutdownClosesLiveStreams(t *testing.T) {
	r := newLiveRig(t, live.Options{})
	ws, sse, req := r.openStreams(t)

	done := make(chan struct{})
	go func() { // owner: this test; it waits on done below
		r.api.Shutdown()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(loadWait):
		t.Fatal("Shutdown did not return with live streams open")
	}
	_ = ws.SetReadDeadline(time.Now().Add(loadWait))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
				t.Fatalf("socket ended with %v, want close 1001", err)
			}
			break
		}
	}
	if _, err := io.Copy(io.Discard, sse.Body); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("SSE stream after Shutdown: %v", err)
	}

	dialer := websocket.Dialer{HandshakeTimeout: loadWait}
	_, resp, err := dialer.Dial(r.wsURL(), http.Header{"Authorization": {"Bearer " + r.viewer}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/ws/live after Shutdown: %v %v, want 503", err, resp)
	}
	again, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	again.Body.Close()
	if again.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("SSE after Shutdown: %d, want 503", again.StatusCode)
	}
}

// openStreams opens one /ws/live socket subscribed to every device and
// one SSE stream, both live before it returns, and the SSE request (to
// try again); the SSE body is closed when the test ends.
func (r *liveRig) openStreams(t *testing.T) (*websocket.Conn, *http.Response, *http.Request) {
	t.Helper()
	ws := r.dial(t, nil)
	subscribe(t, ws, `{"type":"subscribe","devices":["*"]}`)
	waitSubscribed(t, r, ws, "d1")
	req, _ := http.NewRequest("GET", r.srv.URL+"/api/v1/live", nil)
	req.Header.Set("Authorization", "Bearer "+r.viewer)
	sse, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sse.Body.Close() })
	if sse.StatusCode != 200 {
		t.Fatalf("SSE: %d", sse.StatusCode)
	}
	return ws, sse, req
}
