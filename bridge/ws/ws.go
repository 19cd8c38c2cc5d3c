// Package ws is the device WebSocket transport (GET /ws/device) and the
// plain-HTTP fallback for devices that cannot hold a socket
// (POST /api/v1/telemetry). It is the only package that imports
// gorilla/websocket for devices, and it talks to the rest of the hub only
// through the bridge.
//
// Each connection has exactly one reader (the handler goroutine) and one
// writer goroutine; everything written goes through the writer's bounded
// queue, and a device that stops reading is disconnected rather than
// allowed to hold the hub up.
package ws

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/hijack"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Close codes sent to devices. 1000-1015 are RFC 6455's; 4000-4999 are ours
// and documented in docs/protocol.md.
const (
	CloseSuperseded = 4000 // another connection of the same device took over
	CloseRevoked    = 4003 // the token was revoked or rotated, or the device deleted
)

// Authenticator checks a device token. *devices.Registry implements it.
type Authenticator interface {
	Authenticate(token string) (id string, h devices.TokenHash, ok bool)
}

// Commands is the command service as the device transport uses it
// (*commands.Service): the HTTP long poll and device results.
type Commands interface {
	NextCommand(ctx context.Context, device string, h devices.TokenHash, wait time.Duration) (telemetry.Command, bool, error)
	CommandResult(device string, r *telemetry.CommandResult) error
}

// Options configures the device transport. Zero values take the
// documented defaults.
type Options struct {
	Bridge   *bridge.Bridge
	Commands Commands
	Auth     Authenticator
	// Failures rate-limits failed authentications per (client address,
	// presented token); nil disables it.
	Failures *devices.FailureLimiter
	// Connects bounds new connections per client address, shared with
	// every other way in; each WebSocket upgrade spends one. Nil
	// disables it.
	Connects *devices.ConnectLimiter
	// Proxies are the trusted reverse proxies behind which the client
	// address is read from X-Forwarded-For; nil trusts none.
	Proxies *devices.Proxies
	// ReadLimit is the largest message accepted, counted after
	// permessage-deflate decompression (and after Content-Encoding on
	// HTTP); default 256 KiB. Larger messages close the connection with
	// 1009 (HTTP: 413) and nothing of them is stored; a compressed message
	// is never decompressed past the limit.
	ReadLimit int64
	// PingInterval is how often the hub pings; a device silent for two
	// intervals is disconnected (heartbeat_timeout). Default 30 s.
	PingInterval time.Duration
	// WriteWait bounds one write to a device; default 10 s.
	WriteWait time.Duration
	// SendQueue bounds frames waiting for the writer; default 64.
	SendQueue int
	// SendQueueBytes bounds the bytes of those frames; default 256 KiB. A
	// device whose answers pass either bound is not reading: it is
	// disconnected (slow_consumer, logged and counted); a command that
	// would pass it stays pending. One frame always fits an empty queue.
	SendQueueBytes int64
	// State serves device state (frames, the state endpoints); nil: none.
	// Tokens is required with it (the long poll's re-check).
	State  State
	Tokens Tokens
	// OnAuthFailure, if set, is told of each refused credential (metrics).
	OnAuthFailure func(transport string)
	Logger        *slog.Logger
}

func (o *Options) ensureDefaults() {
	if o.ReadLimit <= 0 {
		o.ReadLimit = 256 << 10
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 30 * time.Second
	}
	if o.WriteWait <= 0 {
		o.WriteWait = 10 * time.Second
	}
	if o.SendQueue <= 0 {
		o.SendQueue = 64
	}
	if o.SendQueueBytes <= 0 {
		o.SendQueueBytes = 256 << 10
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Handler serves the device transports.
type Handler struct {
	opts     Options
	log      *slog.Logger
	upgrader websocket.Upgrader
	conns    hijack.Conns[*http.Request] // live connections, for Close and Wait
}

// New returns a Handler.
func New(opts Options) (*Handler, error) {
	if opts.Bridge == nil || opts.Commands == nil || opts.Auth == nil {
		return nil, errors.New("ws: Bridge, Commands and Auth are required")
	}
	opts.ensureDefaults()
	h := &Handler{opts: opts, log: opts.Logger}
	h.upgrader = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   1024,
		WriteBufferSize:  1024,
		// A shared pool: idle connections hold no write buffer.
		WriteBufferPool:   &sync.Pool{},
		EnableCompression: true,
		// Devices authenticate with an explicit token, never an ambient
		// browser credential, so a cross-site page gains nothing: any
		// Origin is allowed here (the operator socket checks it).
		CheckOrigin: func(*http.Request) bool { return true },
	}
	return h, nil
}

// Close refuses new connections; a connection that raced past it is
// kicked as soon as its session exists. At shutdown: Close, then the
// bridge's CloseAll (which closes the open sockets), then Wait.
func (h *Handler) Close() { h.conns.Close() }

// Wait blocks until every connection handler has returned.
func (h *Handler) Wait() { h.conns.Wait() }

// DeviceToken extracts a device token from Authorization: Bearer or the
// token query parameter.
func DeviceToken(r *http.Request) string {
	if a := r.Header.Get("Authorization"); a != "" {
		if t, ok := strings.CutPrefix(a, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
		return ""
	}
	return r.URL.Query().Get("token")
}

// RemoteIP returns the client's address without its port, trusting no
// proxy; the handler itself uses Options.Proxies.
func RemoteIP(r *http.Request) string {
	var none *devices.Proxies
	return none.ClientAddr(r)
}

// authenticate answers 401/429 itself when the device may not go on. The
// connect limit comes first for a WebSocket upgrade (a new connection; a
// plain HTTP request is bounded by the device's message rate instead, so
// an HTTP fleet behind one NAT is not held to a per-address connect
// budget); then the token is always checked, and a valid
// one always passes: failures (of this address with this same token) only
// turn a refusal's 401 into 429.
func (h *Handler) authenticate(w http.ResponseWriter, r *http.Request) (string, devices.TokenHash, bool) {
	ip := h.opts.Proxies.ClientAddr(r)
	if h.opts.Connects != nil && websocket.IsWebSocketUpgrade(r) && !h.opts.Connects.Allow(ip) {
		writeError(w, "", &telemetry.Error{Code: telemetry.CodeRateLimited, Message: "too many connections from this address; retry later"})
		return "", devices.TokenHash{}, false
	}
	token := DeviceToken(r)
	id, hash, ok := h.opts.Auth.Authenticate(token)
	if !ok {
		if h.opts.OnAuthFailure != nil {
			h.opts.OnAuthFailure(devices.TransportWS)
		}
		if h.opts.Failures.Refuse(h.log, "device authentication failed", ip, token, "path", r.URL.Path) {
			writeError(w, "", &telemetry.Error{Code: telemetry.CodeRateLimited, Message: "too many failed authentications with this token; retry later"})
			return "", devices.TokenHash{}, false
		}
		writeError(w, "", &telemetry.Error{Code: telemetry.CodeUnauthorized, Message: "missing or invalid device token"})
		return "", devices.TokenHash{}, false
	}
	return id, hash, true
}

// writeError answers an HTTP request with the error frame of e (answering
// message id), in the status and with the Retry-After the error table
// (telemetry.AnswerFor) gives its code.
func writeError(w http.ResponseWriter, id string, e *telemetry.Error) {
	a := telemetry.AnswerFor(e.Code)
	if a.RetryAfter != "" {
		w.Header().Set("Retry-After", a.RetryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.HTTPStatus)
	_, _ = w.Write(telemetry.EncodeError(id, e))
}

// ServeHTTP upgrades an authenticated device to a WebSocket session.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, hash, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	if !h.conns.Add(r) {
		writeError(w, "", &telemetry.Error{Code: telemetry.CodeOverloaded, Message: "hub is shutting down"})
		return
	}
	defer h.conns.Done(r)
	conn, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader already answered
	}
	c := &conn_{
		h: h, ws: conn,
		send:  make(chan []byte, h.opts.SendQueue),
		kick:  make(chan string, 1),
		done:  make(chan struct{}),
		state: newPendingState(),
	}
	c.session = h.opts.Bridge.Connect(id, devices.TransportWS, h.opts.Proxies.ClientAddr(r), hash, c)
	if h.conns.Closing() {
		c.session.Kick(bridge.ReasonServerShutdown)
	}
	stopState := c.subscribeState(r.Context())
	defer stopState()
	c.run(r.Context())
}

// conn_ is one device connection.
type conn_ struct {
	h       *Handler
	ws      *websocket.Conn
	session *bridge.Session
	send    chan []byte   // frames for the writer; bounded
	kick    chan string   // close requests for the writer; cap 1
	done    chan struct{} // closed when the reader stops
	state   *pendingState // the desired-state frame waiting for the writer
	// queued is the bytes of the frames in send and being written; the
	// senders add (reserve) before sending, the writer subtracts after
	// writing.
	queued atomic.Int64
}

// reserve counts n more bytes toward the device if they fit
// SendQueueBytes (or the queue holds nothing) and reports whether they did.
func (c *conn_) reserve(n int) bool {
	if q := c.queued.Add(int64(n)); q > c.h.opts.SendQueueBytes && q != int64(n) {
		c.queued.Add(-int64(n))
		return false
	}
	return true
}

// enqueue hands frame to the writer within both bounds.
func (c *conn_) enqueue(frame []byte) bool {
	if !c.reserve(len(frame)) {
		return false
	}
	select {
	case c.send <- frame:
		return true
	default:
		c.queued.Add(-int64(len(frame)))
		return false
	}
}

// Deliver implements bridge.Conn: the command goes through the writer's
// queue like every other frame; one that does not fit now stays pending.
func (c *conn_) Deliver(cmd telemetry.Command) bool {
	return c.enqueue(telemetry.EncodeCommand(cmd, true))
}

// Close implements bridge.Conn: the writer sends the close frame.
func (c *conn_) Close(reason string) {
	select {
	case c.kick <- reason:
	default: // a close is already on its way
	}
}

func (c *conn_) run(ctx context.Context) {
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	reason := c.readLoop(ctx)
	close(c.done)
	<-writerDone
	c.ws.Close()
	c.h.opts.Bridge.Disconnect(c.session, reason)
}

// queue hands an answer to the writer. A full queue (in frames or in
// bytes) means the device is not reading: it is disconnected, never waited
// for, and queue reports false so the reader stops taking its messages.
func (c *conn_) queue(frame []byte) bool {
	if c.enqueue(frame) {
		return true
	}
	c.h.log.Warn("device not reading its answers; disconnecting", "device", c.session.DeviceID, "transport", devices.TransportWS,
		"remote", c.session.Remote, "reason", bridge.ReasonSlowConsumer,
		"queued_bytes", c.queued.Load(), "queued_frames", len(c.send), "max_bytes", c.h.opts.SendQueueBytes, "max_frames", c.h.opts.SendQueue)
	c.session.Kick(bridge.ReasonSlowConsumer)
	// A write blocked on the device gets a second more, not WriteWait.
	_ = c.ws.NetConn().SetWriteDeadline(time.Now().Add(time.Second))
	return false
}

func (c *conn_) readLoop(ctx context.Context) string {
	pongWait := 2 * c.h.opts.PingInterval
	c.ws.SetReadLimit(c.h.opts.ReadLimit)
	_ = c.ws.SetReadDeadline(time.Now().Add(pongWait))
	c.ws.SetPongHandler(func(string) error {
		return c.ws.SetReadDeadline(time.Now().Add(pongWait))
	})
	for {
		mt, data, err := c.readMessage()
		if errors.Is(err, errDecompressedTooLarge) {
			return c.refuseTooLarge()
		}
		if err != nil {
			return readErrorReason(err)
		}
		// Any message proves the device is alive, like a pong.
		_ = c.ws.SetReadDeadline(time.Now().Add(pongWait))
		answer := frameFor(c.h.opts.Bridge.Accept(ctx, c.session, bridge.Message{Kind: telemetry.KindFrame, Payload: data, Binary: mt != websocket.TextMessage}))
		if answer != nil && !c.queue(answer) {
			return bridge.ReasonSlowConsumer
		}
	}
}

// frameFor is the frame answering a, if any: the error table's answer on
// a socket is the error frame (telemetry.WSErrorFrame) for every code a
// frame can earn; a result for no pending command gets none.
func frameFor(a bridge.Answer) []byte {
	switch {
	case a.Err != nil:
		return telemetry.EncodeError(a.ID, a.Err)
	case a.Reply == bridge.ReplyAck && a.State:
		return telemetry.EncodeStateAck(a.ID, a.Version)
	case a.Reply == bridge.ReplyAck:
		return telemetry.EncodeAck(a.ID)
	case a.Reply == bridge.ReplyPong:
		return []byte(`{"type":"pong"}`)
	}
	return nil
}

// errDecompressedTooLarge is a compressed message that expands past the
// read limit.
var errDecompressedTooLarge = errors.New("ws: message exceeds the read limit once decompressed")

// readMessage is ReadMessage with the read limit applied to the message
// as the hub holds it: gorilla's SetReadLimit counts the bytes on the
// wire, and a permessage-deflate message of a few KiB under it can expand
// to gigabytes. The decompressed stream is read through a bound, so no
// more than ReadLimit+1 bytes of a message are ever held, and no more than
// that is ever decompressed: the rest of an oversized message is skipped
// as wire bytes by the next NextReader (refuseTooLarge), never inflated,
// so a device cannot make the hub spend CPU inflating what it refuses.
func (c *conn_) readMessage() (int, []byte, error) {
	mt, r, err := c.ws.NextReader()
	if err != nil {
		return 0, nil, err
	}
	limit := c.h.opts.ReadLimit
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return 0, nil, err
	}
	if int64(len(data)) > limit {
		return 0, nil, errDecompressedTooLarge
	}
	return mt, data, nil
}

// refuseTooLarge closes the connection with 1009 through the writer, like
// gorilla's own read limit, without looking at anything the device sends
// after the oversized message; it waits a moment for the device's close
// answer so the close frame is not lost to a reset.
func (c *conn_) refuseTooLarge() string {
	c.h.opts.Bridge.Reject(c.session, &telemetry.Error{Code: telemetry.CodeTooLarge, Message: "message exceeds the size limit once decompressed"})
	c.session.Kick(bridge.ReasonReadLimit)
	_ = c.ws.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		// NextReader discards any later message unread (nothing more is
		// decompressed) until the device's close, an error or the deadline.
		if _, _, err := c.ws.NextReader(); err != nil {
			return bridge.ReasonReadLimit
		}
	}
}

func readErrorReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		return bridge.ReasonReadLimit
	case websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived):
		return bridge.ReasonClientClosed
	case errors.As(err, &ne) && ne.Timeout():
		return bridge.ReasonHeartbeatTimeout
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return bridge.ReasonNetworkError
	}
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		if ce.Code == websocket.CloseProtocolError || ce.Code == websocket.CloseUnsupportedData {
			return bridge.ReasonProtocolError
		}
		return bridge.ReasonClientClosed
	}
	return bridge.ReasonProtocolError
}

// closeCode maps a kick reason to the close frame the device sees.
func closeCode(reason string) int {
	switch reason {
	case bridge.ReasonSuperseded:
		return CloseSuperseded
	case bridge.ReasonRevoked:
		return CloseRevoked
	case bridge.ReasonServerShutdown:
		return websocket.CloseGoingAway
	case bridge.ReasonSlowConsumer:
		return websocket.ClosePolicyViolation
	case bridge.ReasonReadLimit:
		return websocket.CloseMessageTooBig
	}
	return websocket.CloseNormalClosure
}

func (c *conn_) writeLoop() {
	ping := time.NewTicker(c.h.opts.PingInterval)
	defer ping.Stop()
	wait := c.h.opts.WriteWait
	for {
		select {
		case <-c.done:
			return
		case frame := <-c.send:
			_ = c.ws.SetWriteDeadline(time.Now().Add(wait))
			err := c.ws.WriteMessage(websocket.TextMessage, frame)
			c.queued.Add(-int64(len(frame)))
			if err != nil {
				c.session.Kick(bridge.ReasonNetworkError)
				c.abort()
				return
			}
		case <-c.state.ready:
			frame := c.state.take()
			if frame == nil {
				continue
			}
			_ = c.ws.SetWriteDeadline(time.Now().Add(wait))
			if err := c.ws.WriteMessage(websocket.TextMessage, frame); err != nil {
				c.session.Kick(bridge.ReasonNetworkError)
				c.abort()
				return
			}
		case <-ping.C:
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(wait)); err != nil {
				c.session.Kick(bridge.ReasonNetworkError)
				c.abort()
				return
			}
		case reason := <-c.kick:
			msg := websocket.FormatCloseMessage(closeCode(reason), reason)
			_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
			// Give the device a moment to answer the close, then the
			// reader's deadline ends the connection either way.
			_ = c.ws.SetReadDeadline(time.Now().Add(time.Second))
			<-c.done
			return
		}
	}
}

// abort ends the reader at once after a failed write.
func (c *conn_) abort() { _ = c.ws.SetReadDeadline(time.Now()) }
