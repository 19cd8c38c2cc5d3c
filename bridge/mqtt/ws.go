package mqtt

import (
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/devices"
)

// ServeWebSocket is MQTT over WebSocket (subprotocol "mqtt") for
// browser-based devices, mounted on the hub's HTTP server. Unlike the
// broker's stock WebSocket listener it checks Origin: a browser page may
// connect only from the hub's own origin or an allowed one (devices still
// authenticate with id and token in CONNECT).
func (b *Broker) ServeWebSocket(w http.ResponseWriter, r *http.Request) {
	if !b.originAllowed(r) {
		http.Error(w, "Origin not allowed", http.StatusForbidden)
		return
	}
	remote := b.opts.Proxies.ClientAddr(r)
	if !b.opts.Connects.Allow(remote) {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many connections from this address; retry later", http.StatusTooManyRequests)
		return
	}
	conn := &wsConn{remote: wsAddr(remote)}
	if !b.wsConns.Add(conn) {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	defer b.wsConns.Done(conn)
	up := websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   1024,
		WriteBufferSize:  1024,
		WriteBufferPool:  &b.wsBufs,
		Subprotocols:     []string{"mqtt"},
		CheckOrigin:      func(*http.Request) bool { return true }, // checked above
		// EnableCompression stays off: the gateway's packet limit then
		// counts the bytes the hub holds; with permessage-deflate a small
		// message could inflate to far more.
	}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	// No read limit on a WebSocket message: one message may carry many
	// MQTT packets ([MQTT-6.0.0-2]) and is streamed, never held whole;
	// the gateway's reader bounds each packet (MaxPacketBytes).
	conn.setWS(ws)
	if b.wsConns.Closing() { // closeWS ran during the upgrade
		_ = ws.Close()
		return
	}
	b.serveConn(conn, string(conn.remote.(wsAddr)), devices.TransportMQTT) // returns when the client is gone
}

// closeWS closes MQTT-over-WebSocket connections (the broker closes only
// its own listeners' clients; sessions were already told by the bridge's
// CloseAll) and waits for their handlers. It keeps its own set rather than
// asking mochi (v2.7.9's Clients.GetByListener takes its read lock twice
// and deadlocks against a waiting writer).
func (b *Broker) closeWS() {
	for _, c := range b.wsConns.Close() {
		c.shut()
	}
	b.wsConns.Wait()
}

// originAllowed is the hub's one Origin policy for browser streams.
func (b *Broker) originAllowed(r *http.Request) bool {
	return devices.OriginAllowed(r, b.opts.AllowedOrigins)
}

// wsConn presents a WebSocket as the byte stream MQTT expects: binary
// messages in, one binary message per write out. The gateway reads from one
// goroutine and serialises its writes (conn.wmu).
type wsConn struct {
	ws     *websocket.Conn // set once, by setWS, before the broker sees the conn
	remote net.Addr        // the client behind any trusted proxy
	r      io.Reader
	wm     sync.Mutex
	// upgraded is ws for closeWS, which may run before the upgrade ends.
	upgraded atomic.Pointer[websocket.Conn]
}

// setWS gives c its socket once the upgrade succeeded.
func (c *wsConn) setWS(ws *websocket.Conn) {
	c.ws = ws
	c.upgraded.Store(ws)
}

// shut closes c's socket if it has one yet (closeWS; the handler closes a
// socket upgraded after that itself).
func (c *wsConn) shut() {
	if ws := c.upgraded.Load(); ws != nil {
		_ = ws.Close()
	}
}

// wsAddr is a client address computed by devices.Proxies.ClientAddr (no
// port), as the gateway logs it.
type wsAddr string

func (a wsAddr) Network() string { return "tcp" }
func (a wsAddr) String() string  { return string(a) }

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			mt, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if mt != websocket.BinaryMessage {
				return 0, io.ErrUnexpectedEOF // MQTT over WebSocket is binary only
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wm.Lock()
	defer c.wm.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Close() error                      { return c.ws.Close() }
func (c *wsConn) LocalAddr() net.Addr               { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr              { return c.remote }
func (c *wsConn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetWriteDeadline takes the write lock: gorilla keeps the write deadline
// in a field its writers read.
func (c *wsConn) SetWriteDeadline(t time.Time) error {
	c.wm.Lock()
	defer c.wm.Unlock()
	return c.ws.SetWriteDeadline(t)
}

func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.ws.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}
