package dashboard

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestLiveWSNothingAfterRevocation: a /ws/live client stops reading while
// a large batch is queued; its credential is revoked mid-batch. The
// writer may finish the frame in flight, then sends nothing more but the
// close 4003 (it checks the revocation per frame, not per batch).
func TestLiveWSNothingAfterRevocation(t *testing.T) {
	r := newLiveRig(t, LiveOptions{QueueLen: 1024, SlowAfter: 10 * time.Minute})
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
	// Queue them as one batch, then let the writer take it.
	var sub *subscriber
	r.live.mu.RLock()
	for s := range r.live.subs {
		sub = s
	}
	r.live.mu.RUnlock()
	sub.mu.Lock()
	for i := range n {
		sub.queue = append(sub.queue, &liveEvent{seq: uint64(i + 1), ev: reading("d1", int64(i+10), kv...)})
	}
	sub.mu.Unlock()
	select {
	case sub.notify <- struct{}{}:
	default: // already due to look
	}
	waitFor(t, "the writer to take the batch", func() bool {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		return !sub.busySince.IsZero() && len(sub.queue) == 0
	})
	sub.revoke()
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
