// Package mqtt is the device MQTT endpoint: the hub's own device gateway
// (MQTT 3.1.1 and 5.0, over TCP, TLS and WebSocket) with per-device
// authentication, a fixed per-device topic model and ack-after-durable
// ingest through the bridge. Devices talk to the hub, never to each other,
// so this is a gateway and not a general broker: there is no routing
// between clients, no retained store, no wildcard subscriptions.
//
// Packets are encoded and decoded by mochi-mqtt's packets package (the
// codec only; no broker); every rule it does not enforce by itself, and
// every answer, is decided here, as docs/protocol.md states with the
// specification section for each.
//
// Topics (device {id}):
//
//	devices/{id}/telemetry        device -> hub, telemetry JSON ("type" optional)
//	devices/{id}/commands         hub -> device, QoS 1
//	devices/{id}/commands/result  device -> hub
//	devices/{id}/errors           hub -> device, error frames, QoS 0
//
// Concurrency: one goroutine per connection reads and processes its
// packets in order, inline (a publish is acknowledged only once durable, so
// a device's next packet waits for its previous one); its answers are
// appended to the connection's output buffer and written together once no
// more input is buffered. Commands and error frames, which come from other
// goroutines, are appended to the same bounded buffer and written by a
// short-lived flusher goroutine. Lock order (docs/locks.md): conn.wmu
// before conn.mu; Broker.mu is never held while writing to a socket, and
// never taken under conn.mu.
package mqtt

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/hijack"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Authenticator checks a device id and token pair. *devices.Registry
// implements it.
type Authenticator interface {
	AuthenticateDevice(id, token string) (devices.TokenHash, bool)
	StillValid(id string, h devices.TokenHash) bool
}

// Commands is the command service as the gateway uses it
// (*commands.Service): delivery once a device subscribed or has room in
// its window again, and results.
type Commands interface {
	DeliverCommands(device string)
	CommandResult(device string, r *telemetry.CommandResult) error
}

// Options configures the gateway. Zero values take the documented defaults.
type Options struct {
	Bridge   *bridge.Bridge
	Commands Commands
	// State serves devices/{id}/state/desired subscriptions; nil: the
	// topic is refused like any other.
	State State
	Auth  Authenticator
	// Failures rate-limits failed authentications per (client address,
	// username); nil disables it.
	Failures *devices.FailureLimiter
	// Connects bounds new connections per client address on every
	// listener and on MQTT over WebSocket; the hub shares one with its
	// other ways in. Nil: the gateway makes its own from ConnectRate and
	// ConnectBurst.
	Connects *devices.ConnectLimiter
	// Proxies are the trusted reverse proxies in front of MQTT over
	// WebSocket (X-Forwarded-For); nil trusts none.
	Proxies *devices.Proxies
	// Listener is the plain MQTT listener; TLSListener, if set, an already
	// TLS-wrapped one. The caller binds them so bind errors surface first.
	Listener    net.Listener
	TLSListener net.Listener
	// MaxPacketBytes bounds every packet, CONNECT included; default 256 KiB.
	MaxPacketBytes int
	// ConnectTimeout bounds the wait for CONNECT after TCP accept (and the
	// TLS handshake); default 10 s.
	ConnectTimeout time.Duration
	// MaxConns caps open connections; default 60,000.
	MaxConns int
	// ConnectRate and ConnectBurst bound new connections per client
	// address when Connects is nil; defaults 20/s and 50.
	ConnectRate  float64
	ConnectBurst int
	// MaxKeepalive is the longest keep-alive a client may have; a client
	// asking for none or more gets this (v5 clients are told). Default 300 s.
	MaxKeepalive time.Duration
	// MaxSessionExpiry bounds how long a persistent session outlives its
	// connection; default 1 h.
	MaxSessionExpiry time.Duration
	// WriteTimeout bounds one write to a client; a client that does not
	// read for this long is cut as a slow consumer. Default 10 s.
	WriteTimeout time.Duration
	// AllowedOrigins are browser origins besides the hub's own allowed on
	// MQTT over WebSocket.
	AllowedOrigins []string
	// OnAuthFailure and OnACLDenied, if set, observe refusals (metrics).
	OnAuthFailure func(transport string)
	OnACLDenied   func()
	Logger        *slog.Logger
}

// The gateway's fixed limits, stated in every MQTT 5 CONNACK.
const (
	// receiveMaximum is how many QoS 2 publishes a client may have
	// awaiting PUBREL (QoS 1 is answered inline, so it never queues).
	receiveMaximum = 32
	// topicAliasMaximum is how many inbound topic aliases a v5 client
	// may set.
	topicAliasMaximum = 16
	// maxWatchers bounds the debug watch sessions per device.
	maxWatchers = 4
	// outBufferBytes bounds what waits to be written to one client.
	outBufferBytes = 256 << 10
)

func (o *Options) ensureDefaults() {
	if o.MaxPacketBytes <= 0 {
		o.MaxPacketBytes = 256 << 10
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 60000
	}
	if o.ConnectRate <= 0 {
		o.ConnectRate = 20
	}
	if o.ConnectBurst <= 0 {
		o.ConnectBurst = 50
	}
	if o.MaxKeepalive <= 0 {
		o.MaxKeepalive = 300 * time.Second
	}
	if o.MaxKeepalive > 65535*time.Second {
		o.MaxKeepalive = 65535 * time.Second
	}
	if o.MaxSessionExpiry <= 0 {
		o.MaxSessionExpiry = time.Hour
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.Connects == nil {
		o.Connects = devices.NewConnectLimiter(o.ConnectRate, o.ConnectBurst)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Broker is the device MQTT gateway.
type Broker struct {
	opts   Options
	log    *slog.Logger
	denied atomic.Int64
	open   atomic.Int64 // connections past accept, for MaxConns

	// mu guards sessions and watchers. It is never held while writing to
	// a socket or calling the bridge, and never taken under a conn's mu.
	mu       sync.Mutex
	sessions map[string]*session       // device id -> MQTT session state
	watchers map[string]map[*conn]bool // device id -> its debug watchers
	expiry   map[string]*time.Timer    // device id -> end of a detached persistent session
	wills    map[string]pendingWill    // device id -> a delayed will waiting to be published
	conns    hijack.Conns[*conn]       // every connection past CONNECT, for shutdown
	serving  sync.WaitGroup            // accept loops and connection goroutines
	wsConns  hijack.Conns[*wsConn]     // MQTT-over-WebSocket handlers, for closeWS
	wsBufs   sync.Pool                 // write buffers shared by idle WebSocket clients
	stopping atomic.Bool
	// connecting serialises the CONNECTs of one device (striped by id):
	// taking the session and becoming the bridge's current session are
	// one step. Taken before mu.
	connecting [64]sync.Mutex
	background sync.WaitGroup // results handed to the command service

	// connectLog and publishLog rate-limit the refusal log lines.
	connectLog, publishLog bridge.LogLimiter
}

// New returns a gateway serving on opts' listeners once Run is called.
func New(opts Options) (*Broker, error) {
	if opts.Bridge == nil || opts.Commands == nil || opts.Auth == nil || opts.Listener == nil {
		return nil, errors.New("mqtt: Bridge, Commands, Auth and Listener are required")
	}
	opts.ensureDefaults()
	return &Broker{
		opts: opts, log: opts.Logger,
		sessions: map[string]*session{},
		watchers: map[string]map[*conn]bool{},
		expiry:   map[string]*time.Timer{},
		wills:    map[string]pendingWill{},
	}, nil
}

// Run serves until ctx ends, then closes every connection (MQTT 5 clients
// are told 0x8B Server shutting down) and waits for their goroutines.
func (b *Broker) Run(ctx context.Context) error {
	lns := []net.Listener{b.opts.Listener}
	if b.opts.TLSListener != nil {
		lns = append(lns, b.opts.TLSListener)
	}
	for _, ln := range lns {
		b.serving.Add(1)
		go b.accept(ln) // owner: Run; ends when the listener is closed below
	}
	<-ctx.Done()
	b.stopping.Store(true)
	for _, ln := range lns {
		_ = ln.Close()
	}
	// Every connection, over WebSocket too, is told first (MQTT 5:
	// DISCONNECT 0x8B) and ends as a shutdown, not as a network error
	// (which would fire its will); then the WebSocket handlers go.
	open := b.conns.Close()
	for _, c := range open {
		c.kick(bridge.ReasonServerShutdown)
	}
	for _, c := range open {
		c.waitKicked()
	}
	b.closeWS()
	b.serving.Wait()
	b.conns.Wait()
	b.background.Wait()
	b.mu.Lock()
	for _, t := range b.expiry {
		t.Stop()
	}
	for _, w := range b.wills {
		w.t.Stop()
	}
	b.mu.Unlock()
	return nil
}

// lockDevice takes the device's connect stripe and returns its unlock.
func (b *Broker) lockDevice(id string) func() {
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	m := &b.connecting[h%uint32(len(b.connecting))]
	m.Lock()
	return m.Unlock
}

// accept serves one listener until it is closed.
func (b *Broker) accept(ln net.Listener) {
	defer b.serving.Done()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || b.stopping.Load() {
				return
			}
			// Out of file descriptors (EMFILE) and the like pass: back
			// off and go on, as net/http does, never stop taking devices.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if n, ok := b.connectLog.Allow(); ok {
				b.log.Warn("mqtt accept failed; retrying", "err", err, "retry_in", backoff, "suppressed", n)
			}
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !b.opts.Connects.Allow(remoteIP(nc.RemoteAddr().String())) || b.stopping.Load() {
			_ = nc.Close()
			continue
		}
		b.serving.Add(1)
		go func() { // owner: Run, through serving
			defer b.serving.Done()
			b.serveConn(nc, remoteIP(nc.RemoteAddr().String()), devices.TransportMQTT)
		}()
	}
}

// Addr returns the plain listener's address.
func (b *Broker) Addr() net.Addr { return b.opts.Listener.Addr() }

// ACLDenials returns how many publishes and subscriptions the ACL refused.
func (b *Broker) ACLDenials() int64 { return b.denied.Load() }

// CredentialsChanged closes the device's debug watchers whose token no
// longer works (its own connection is the bridge's to kick), and forgets
// what that token left behind: a detached persistent session (its
// commands in flight, its subscriptions) and a delayed will. The registry
// calls it beside Bridge.CredentialsChanged.
func (b *Broker) CredentialsChanged(id string) {
	b.mu.Lock()
	var stale []*conn
	for c := range b.watchers[id] {
		if !b.opts.Auth.StillValid(id, c.hash) {
			stale = append(stale, c)
		}
	}
	if w, ok := b.wills[id]; ok && !b.opts.Auth.StillValid(id, w.hash) {
		w.t.Stop()
		delete(b.wills, id)
	}
	if s := b.sessions[id]; s != nil && !b.opts.Auth.StillValid(id, s.hash) {
		s.mu.Lock()
		detached := s.conn == nil
		s.mu.Unlock()
		if detached { // an attached one ends with its connection, kicked by the bridge
			delete(b.sessions, id)
			if t := b.expiry[id]; t != nil {
				t.Stop()
				delete(b.expiry, id)
			}
		}
	}
	b.mu.Unlock()
	for _, c := range stale {
		c.kick(bridge.ReasonRevoked)
	}
}

func remoteIP(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// topicAllowed is the gateway's form of the device ACL
// (telemetry.DeviceACL): write is a publish, otherwise a subscribe.
func topicAllowed(id, topic string, write bool) bool {
	a := telemetry.Subscribe
	if write {
		a = telemetry.Publish
	}
	return telemetry.Allowed(id, topic, a)
}

// aclDenied counts and logs one refused publish or subscription.
func (b *Broker) aclDenied(id, topic string, write bool) {
	b.denied.Add(1)
	if b.opts.OnACLDenied != nil {
		b.opts.OnACLDenied()
	}
	b.log.Debug("mqtt acl denied", "device", id, "topic", telemetry.Truncate(topic, 128), "write", write)
}

// attach makes c the connection of its device's session, resuming the
// stored one unless clean, and reports whether it did (CONNACK session
// present). A resumed session's delayed will is cancelled (5.0 §3.1.3.2.2).
func (b *Broker) attach(c *conn, clean bool, expiry time.Duration) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	id := c.device
	if t := b.expiry[id]; t != nil {
		t.Stop()
		delete(b.expiry, id)
	}
	s := b.sessions[id]
	// Only the token that opened a session resumes it: after a rotation
	// or a delete and re-create the old one's commands are not handed on.
	present := s != nil && !clean && s.hash == c.hash
	if w, ok := b.wills[id]; ok {
		w.t.Stop()
		delete(b.wills, id)
		if !present {
			// A clean start ends the old session: its delayed will goes
			// now (5.0 §3.1.2.5: at the delay or the session's end,
			// whichever is first); a resume cancels it.
			b.publishWillLater(id, w)
		}
	}
	if !present {
		s = newSession(id, c.hash)
		b.sessions[id] = s
	}
	s.expiry = expiry
	s.mu.Lock()
	s.conn = c
	s.mu.Unlock()
	c.sess = s
	return present
}

// detach ends c's hold on its session: a session that is not persistent
// ends with it, a persistent one waits, detached, for its expiry.
func (b *Broker) detach(c *conn) {
	s := c.sess
	if s == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s.mu.Lock()
	mine := s.conn == c
	if mine {
		s.conn = nil
	}
	s.mu.Unlock()
	id := c.device
	if !mine || b.sessions[id] != s {
		return // superseded: the session is another connection's now
	}
	if s.expiry <= 0 || b.stopping.Load() {
		delete(b.sessions, id)
		return
	}
	b.expiry[id] = time.AfterFunc(s.expiry, func() { b.expire(id, s) })
}

// expire ends a detached persistent session whose expiry passed.
func (b *Broker) expire(id string, s *session) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sessions[id] != s {
		return
	}
	s.mu.Lock()
	attached := s.conn != nil
	s.mu.Unlock()
	if !attached {
		delete(b.sessions, id)
		delete(b.expiry, id)
	}
}

// setExpiry applies the Session Expiry Interval of c's MQTT 5 DISCONNECT
// to its session, if c still holds it; a session that had none cannot be
// given one then (5.0 §3.14.2.2.2).
func (b *Broker) setExpiry(c *conn, seconds uint32) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := c.sess
	s.mu.Lock()
	mine := s.conn == c
	s.mu.Unlock()
	if !mine || s.expiry == 0 {
		return
	}
	s.expiry = min(time.Duration(seconds)*time.Second, b.opts.MaxSessionExpiry)
}

// watchersOf returns the device's debug watchers.
func (b *Broker) watchersOf(id string) []*conn {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.watchers[id]) == 0 {
		return nil
	}
	out := make([]*conn, 0, len(b.watchers[id]))
	for c := range b.watchers[id] {
		out = append(out, c)
	}
	return out
}

// scheduleWill publishes a will now, or after its delay unless the session
// is resumed first (5.0 §3.1.2.11.2: the will goes out when the delay or
// the session ends, whichever is first).
func (b *Broker) scheduleWill(device, remote, transport string, h devices.TokenHash, w *will, s *session) {
	delay := w.delay
	if s != nil {
		b.mu.Lock()
		delay = min(delay, s.expiry)
		b.mu.Unlock()
	}
	if delay <= 0 || b.stopping.Load() {
		b.publishWill(device, remote, transport, w)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if old, ok := b.wills[device]; ok {
		old.t.Stop()
		b.publishWillLater(device, old) // its session ended before this one
	}
	pw := pendingWill{hash: h, device: device, remote: remote, transport: transport, will: w}
	var t *time.Timer
	t = time.AfterFunc(delay, func() {
		b.mu.Lock()
		mine := b.wills[device].t == t
		if mine {
			delete(b.wills, device)
		}
		b.mu.Unlock()
		if mine {
			b.publishWill(device, remote, transport, w)
		}
	})
	pw.t = t
	b.wills[device] = pw
}

// publishWillLater publishes a pending will from a goroutine of its own
// (the caller holds mu; the pipeline may take a while).
func (b *Broker) publishWillLater(device string, w pendingWill) {
	b.background.Add(1)
	go func() { // owner: the Broker; Run waits for background
		defer b.background.Done()
		b.publishWill(device, w.remote, w.transport, w.will)
	}()
}

// hasExpiry reports whether c's session outlives its connection.
func (b *Broker) hasExpiry(c *conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return c.sess.expiry > 0
}

// pendingWill is a delayed will and the token whose connection left it:
// a revocation of that token cancels it.
type pendingWill struct {
	t                 *time.Timer
	hash              devices.TokenHash
	device            string
	remote, transport string
	will              *will
}

// publishWill runs a will through the pipeline like any publish of the
// device (docs/protocol.md, "MQTT: wills").
func (b *Broker) publishWill(device, remote, transport string, w *will) {
	s := b.opts.Bridge.Ephemeral(device, transport, remote)
	a := b.opts.Bridge.Accept(context.Background(), s, bridge.Message{Kind: w.kind, Payload: w.payload})
	if a.Err != nil {
		b.log.Info("mqtt will refused", "device", device, "code", a.Err.Code, "reason", telemetry.Truncate(a.Err.Message, 200))
		return
	}
	b.log.Debug("mqtt will stored", "device", device)
}
