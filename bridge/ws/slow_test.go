package ws

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/bridge"
)

// TestSlowDeviceDisconnected: a device that sends but never reads its
// answers is disconnected with slow_consumer (and its presence says so),
// not kept with its answers silently dropped.
func TestSlowDeviceDisconnected(t *testing.T) {
	r := newRig(t, rigOpts{rate: 1e6, burst: 1e6})
	d := websocket.Dialer{
		// A small receive window, so the hub's socket buffers fill after
		// a few answers and its send queue has to take the rest.
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var nd net.Dialer
			c, err := nd.DialContext(ctx, network, addr)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetReadBuffer(4096)
			}
			return c, err
		},
	}
	c, _, err := d.Dial(r.url(), http.Header{"Authorization": {"Bearer " + r.tokens["d1"]}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitPresence(t, r, "d1", true, "")
	// Each message earns an error frame of about 1.5 KB.
	var b strings.Builder
	b.WriteString(`{"type":"telemetry","metrics":{`)
	for i := range 40 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"m` + strings.Repeat("x", 20) + string(rune('a'+i%26)) + string(rune('a'+i/26)) + `":null`)
	}
	b.WriteString(`}}`)
	msg := []byte(b.String())
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
			break // the hub closed the connection
		}
		if cur := r.br.Current("d1"); cur == nil {
			break
		}
	}
	waitPresence(t, r, "d1", false, bridge.ReasonSlowConsumer)
}
