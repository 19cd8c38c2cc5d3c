package dashboard

import (
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/dashboard/live"
)

// TestEndSSEEndsStreamsOnly: EndSSE (called as the hub's HTTP server
// begins its Shutdown, which waits for running responses) ends the open
// SSE streams at once and refuses new ones with 503, while the /ws/live
// sockets, hijacked, stay open for Shutdown to close with 1001 at their
// turn. It may be called again, and before Shutdown.
func TestEndSSEEndsStreamsOnly(t *testing.T) {
	r := newLiveRig(t, live.Options{})
	ws, sse, req := r.openStreams(t)

	r.api.EndSSE()
	ended := make(chan error, 1)
	go func() { // owner: this test; ends when the stream does (or the body is closed by the defer), read below
		_, err := io.Copy(io.Discard, sse.Body)
		ended <- err
	}()
	select {
	case err := <-ended:
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("SSE stream after EndSSE: %v", err)
		}
	case <-time.After(loadWait):
		t.Fatal("the SSE stream went on after EndSSE")
	}

	// The socket still gets events: only SSE ended.
	waitSubscribed(t, r, ws, "d1")

	r.api.EndSSE() // again: no effect
	again, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	again.Body.Close()
	if again.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("SSE after EndSSE: %d, want 503", again.StatusCode)
	}
}
