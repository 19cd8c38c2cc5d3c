// Package mqtt is the device MQTT transport: an embedded broker (mochi-mqtt
// v2) with per-device authentication, a strict per-device ACL and
// ack-after-durable ingest through the bridge. It is the only package that
// imports mochi-mqtt.
//
// Topics (device {id}):
//
//	devices/{id}/telemetry        device -> hub, telemetry JSON ("type" optional)
//	devices/{id}/commands         hub -> device, QoS 1
//	devices/{id}/commands/result  device -> hub
//	devices/{id}/errors           hub -> device, error frames (for MQTT 3.1.1)
//
// The broker's stock defaults are unsafe on an open network, so New sets a
// maximum packet size, a CONNECT deadline, a connection cap, a per-address
// connect rate and keep-alive enforcement.
package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/hijack"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Authenticator checks a device id and token pair. *devices.Registry
// implements it.
type Authenticator interface {
	AuthenticateDevice(id, token string) (devices.TokenHash, bool)
}

// Commands is the command service as the broker uses it
// (*commands.Service): delivery once a device subscribed, and results.
type Commands interface {
	DeliverCommands(device string)
	CommandResult(device string, r *telemetry.CommandResult) error
}

// Options configures the broker. Zero values take the documented defaults.
type Options struct {
	Bridge   *bridge.Bridge
	Commands Commands
	Auth     Authenticator
	// Failures rate-limits failed authentications per (client address,
	// username); nil disables it.
	Failures *devices.FailureLimiter
	// Connects bounds new connections per client address on every
	// listener and on MQTT over WebSocket; the hub shares one with its
	// other ways in. Nil: the broker makes its own from ConnectRate and
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
	// ConnectTimeout bounds the wait for CONNECT after TCP accept; default 10 s.
	ConnectTimeout time.Duration
	// MaxConns caps connected clients; default 60,000.
	MaxConns int
	// ConnectRate and ConnectBurst bound new connections per client
	// address when Connects is nil; defaults 20/s and 50.
	ConnectRate  float64
	ConnectBurst int
	// MaxKeepalive is the longest keep-alive a client may have; a client
	// asking for none or more gets this (v5 clients are told). Default 300 s.
	MaxKeepalive time.Duration
	// AllowedOrigins are browser origins besides the hub's own allowed on
	// MQTT over WebSocket.
	AllowedOrigins []string
	// OnAuthFailure and OnACLDenied, if set, observe refusals (metrics).
	OnAuthFailure func(transport string)
	OnACLDenied   func()
	Logger        *slog.Logger
}

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
	if o.Connects == nil {
		o.Connects = devices.NewConnectLimiter(o.ConnectRate, o.ConnectBurst)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Broker is the embedded MQTT broker.
type Broker struct {
	opts   Options
	log    *slog.Logger
	srv    *mqtt.Server
	hook   *hook
	kicks  hijack.Conns[*conn] // in-flight disconnects started by Kick; closed by Run
	denied atomic.Int64

	wsConns hijack.Conns[*wsConn] // MQTT-over-WebSocket handlers, for closeWS
	wsBufs  sync.Pool             // write buffers shared by idle WebSocket clients
}

// New returns a broker serving on opts' listeners once Run is called.
func New(opts Options) (*Broker, error) {
	if opts.Bridge == nil || opts.Commands == nil || opts.Auth == nil || opts.Listener == nil {
		return nil, errors.New("mqtt: Bridge, Commands, Auth and Listener are required")
	}
	opts.ensureDefaults()
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(opts.MaxPacketBytes)
	caps.MaximumClients = int64(opts.MaxConns)
	caps.RetainAvailable = 0 // devices' messages are never kept
	caps.MaximumQos = 1
	caps.MaximumSessionExpiryInterval = 3600
	caps.MaximumMessageExpiryInterval = 3600
	caps.MaximumClientWritesPending = 256
	b := &Broker{opts: opts, log: opts.Logger}
	b.srv = mqtt.New(&mqtt.Options{
		Capabilities:             caps,
		InlineClient:             true, // the hub publishes commands and errors
		ClientNetWriteBufferSize: 1024,
		ClientNetReadBufferSize:  1024,
		SysTopicResendInterval:   60,
		// mochi logs every connection at info and every broken pipe at
		// warn; the bridge logs connections with their reasons.
		// It also logs whole packets and clients; mochiLogHandler keeps
		// its lines short.
		Logger: slog.New(levelFloor{mochiLogHandler{opts.Logger.Handler()}, slog.LevelError}),
	})
	b.hook = &hook{b: b, pending: map[*mqtt.Client]devices.TokenHash{}, sessions: map[*mqtt.Client]*bridge.Session{}, conns: map[*mqtt.Client]*conn{}}
	if err := b.srv.AddHook(b.hook, nil); err != nil {
		return nil, fmt.Errorf("mqtt: add hook: %w", err)
	}
	limit := opts.Connects
	if err := b.srv.AddListener(listeners.NewNet("tcp", guard(opts.Listener, opts.ConnectTimeout, limit))); err != nil {
		return nil, fmt.Errorf("mqtt: add listener: %w", err)
	}
	if opts.TLSListener != nil {
		if err := b.srv.AddListener(listeners.NewNet("tls", guard(opts.TLSListener, opts.ConnectTimeout, limit))); err != nil {
			return nil, fmt.Errorf("mqtt: add TLS listener: %w", err)
		}
	}
	return b, nil
}

// Run serves until ctx ends, then closes the broker and every client.
func (b *Broker) Run(ctx context.Context) error {
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("mqtt: serve: %w", err)
	}
	<-ctx.Done()
	b.closeWS()
	b.kicks.Close() // a kick from now on is left to srv.Close below
	b.kicks.Wait()
	// Let kicked clients finish leaving before mochi's Close walks its
	// client table: v2.7.9 takes that table's read lock twice there, which
	// deadlocks if a leaving client is waiting for the write lock.
	for deadline := time.Now().Add(3 * time.Second); atomic.LoadInt64(&b.srv.Info.ClientsConnected) > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if err := b.srv.Close(); err != nil {
		return fmt.Errorf("mqtt: close: %w", err)
	}
	return nil
}

// Addr returns the plain listener's address.
func (b *Broker) Addr() net.Addr { return b.opts.Listener.Addr() }

// Publish sends a message from the hub to topic (commands, errors). The
// inline client bypasses the ACL.
func (b *Broker) Publish(topic string, payload []byte, qos byte) error {
	return b.srv.Publish(topic, payload, false, qos)
}

// ACLDenials returns how many publishes and subscriptions the ACL refused.
func (b *Broker) ACLDenials() int64 { return b.denied.Load() }

// levelFloor drops records below a minimum level.
type levelFloor struct {
	slog.Handler
	min slog.Level
}

func (h levelFloor) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h levelFloor) WithAttrs(as []slog.Attr) slog.Handler {
	return levelFloor{h.Handler.WithAttrs(as), h.min}
}

func (h levelFloor) WithGroup(name string) slog.Handler {
	return levelFloor{h.Handler.WithGroup(name), h.min}
}

// mochiLogHandler keeps mochi's log lines to one short line each. mochi
// v2.7.9 logs whole structs (its packets, wills, clients: several KiB each,
// payload and internal state included) with some errors; every such value
// is replaced by a short summary. It drops "publish packet error" for our
// own hook's refusals, which hook.refuse logs itself with device, topic and
// code, rate-limited.
type mochiLogHandler struct{ slog.Handler }

func (h mochiLogHandler) Handle(ctx context.Context, r slog.Record) error {
	var attrs []slog.Attr
	ours := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "hook" && a.Value.Kind() == slog.KindString && a.Value.String() == hookID {
			ours = true
		}
		attrs = append(attrs, shortAttr(a))
		return true
	})
	if ours && r.Message == "publish packet error" {
		return nil
	}
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	nr.AddAttrs(attrs...)
	return h.Handler.Handle(ctx, nr)
}

func (h mochiLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	short := make([]slog.Attr, len(as))
	for i, a := range as {
		short[i] = shortAttr(a)
	}
	return mochiLogHandler{h.Handler.WithAttrs(short)}
}

func (h mochiLogHandler) WithGroup(name string) slog.Handler {
	return mochiLogHandler{h.Handler.WithGroup(name)}
}

// shortAttr replaces a struct value (mochi's packets, wills, clients) with
// a summary of a few fields; errors, strings and numbers stay as they are.
func shortAttr(a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindGroup:
		g := a.Value.Group()
		short := make([]any, len(g))
		for i, ga := range g {
			short[i] = shortAttr(ga)
		}
		return slog.Group(a.Key, short...)
	case slog.KindAny:
	default:
		return a
	}
	switch v := a.Value.Any().(type) {
	case error, fmt.Stringer:
		return a
	case packets.Packet:
		return slog.Group(a.Key, "type", v.FixedHeader.Type, "topic", telemetry.Truncate(v.TopicName, 128), "qos", v.FixedHeader.Qos, "bytes", len(v.Payload))
	case *packets.Packet:
		if v != nil {
			return shortAttr(slog.Any(a.Key, *v))
		}
	case mqtt.Will:
		return slog.Group(a.Key, "topic", telemetry.Truncate(v.TopicName, 128), "bytes", len(v.Payload))
	case *mqtt.Client:
		if v != nil {
			return slog.String(a.Key, telemetry.Truncate(v.ID, 64))
		}
	}
	if k := reflect.Indirect(reflect.ValueOf(a.Value.Any())).Kind(); k == reflect.Struct || k == reflect.Map || k == reflect.Slice {
		return slog.String(a.Key, fmt.Sprintf("%T", a.Value.Any()))
	}
	return a
}

// guardedListener puts a deadline on the CONNECT of every accepted
// connection (mochi replaces it with the keep-alive deadline once the
// client is connected) and sheds addresses that connect too fast.
type guardedListener struct {
	net.Listener
	timeout time.Duration
	limit   *devices.ConnectLimiter
}

func guard(ln net.Listener, timeout time.Duration, limit *devices.ConnectLimiter) net.Listener {
	return &guardedListener{Listener: ln, timeout: timeout, limit: limit}
}

func (g *guardedListener) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if !g.limit.Allow(remoteIP(c.RemoteAddr().String())) {
			c.Close()
			continue
		}
		if err := c.SetDeadline(time.Now().Add(g.timeout)); err != nil {
			c.Close()
			continue
		}
		return c, nil
	}
}
