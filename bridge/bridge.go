package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

// Store makes encoded readings durable. *spool.Spool implements it.
//
// Append borrows payload only until it returns, whatever it returns (nil,
// an error, or the context's error after a store timeout): an
// implementation never reads payload afterwards, so the bridge returns
// the buffer to its pool at once.
type Store interface {
	Append(ctx context.Context, points int, payload []byte) error
}

// Devices is what the bridge needs of the registry.
type Devices interface {
	Tags(id string) []telemetry.Tag
	Touch(id string, at time.Time)
	SetPresence(id string, p devices.Presence)
	StillValid(id string, h devices.TokenHash) bool
	Exists(id string) bool
}

// Fanout receives live events for dashboards. Publish must not block: the
// fan-out owns its queues and their overflow policy.
type Fanout interface {
	Publish(ev telemetry.Event)
}

// Commands is all the bridge knows of the command service
// (bridge/commands implements it): which session of a device can take
// commands now, and that a device's credentials changed (its HTTP long
// polls re-check their token). The calls must not block on I/O.
type Commands interface {
	SessionOpened(device string, sid uint64, deliver func(telemetry.Command) bool)
	SessionClosed(device string, sid uint64)
	WakePollers(device string)
}

// noCommands is the Commands of a hub without a command service.
type noCommands struct{}

func (noCommands) SessionOpened(string, uint64, func(telemetry.Command) bool) {}
func (noCommands) SessionClosed(string, uint64)                               {}
func (noCommands) WakePollers(string)                                         {}

// Disconnect reasons: why a session ended. Low-cardinality; used in
// presence events, logs and metrics.
const (
	ReasonClientClosed     = "client_closed"
	ReasonHeartbeatTimeout = "heartbeat_timeout"
	ReasonSuperseded       = "superseded"
	ReasonRevoked          = "revoked"
	ReasonReadLimit        = "read_limit"
	ReasonProtocolError    = "protocol_error"
	ReasonServerShutdown   = "server_shutdown"
	ReasonSlowConsumer     = "slow_consumer"
	ReasonNetworkError     = "network_error"
)

// Options configures a Bridge. Zero values take the documented defaults.
type Options struct {
	Codec   *telemetry.Codec
	Store   Store
	Devices Devices
	Fanout  Fanout // optional
	// Commands is told of sessions that can take commands; default none.
	Commands Commands
	// RatePerSec and Burst bound each device's messages; defaults 50 and 100.
	RatePerSec float64
	Burst      int
	// StoreTimeout bounds how long one message waits for the spool before
	// the device is told "overloaded"; default 5 s.
	StoreTimeout time.Duration
	// Schema persists each metric name's type and each device's metric
	// names (shared by instances sharing the store); nil keeps them in
	// memory only. KnownFields are the types InfluxDB already has (name
	// -> FieldNumber, FieldBool, FieldString or FieldInteger), learned at
	// start; they win over the store.
	Schema      SchemaStore
	KnownFields map[string]string
	// MaxMetricsPerDevice bounds the distinct metric names of one device
	// (default 256) and MaxMetricNames those of the fleet (default 10,000):
	// names are client input and each costs memory in the hub and a
	// series in InfluxDB.
	MaxMetricsPerDevice int
	MaxMetricNames      int

	Logger *slog.Logger
	Now    func() time.Time
}

// Bridge is the ingest pipeline and session table shared by all transports.
type Bridge struct {
	opts   Options
	log    *slog.Logger
	stats  Stats
	bufs   sync.Pool // *[]byte line-protocol buffers
	logLim LogLimiter

	mu       sync.Mutex // guards sessions and limiters
	sessions map[string]*Session
	limiters map[string]*rate.Limiter
	devs     map[string]*deviceState // per registered device that connected
	schema   schema
	nextID   atomic.Uint64
}

// New returns a Bridge.
func New(opts Options) (*Bridge, error) {
	if opts.Codec == nil || opts.Store == nil || opts.Devices == nil {
		return nil, errors.New("bridge: Codec, Store and Devices are required")
	}
	if opts.RatePerSec <= 0 {
		opts.RatePerSec = 50
	}
	if opts.Burst <= 0 {
		opts.Burst = 100
	}
	if opts.StoreTimeout <= 0 {
		opts.StoreTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Commands == nil {
		opts.Commands = noCommands{}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxMetricsPerDevice <= 0 {
		opts.MaxMetricsPerDevice = DefaultMaxMetricsPerDevice
	}
	if opts.MaxMetricNames <= 0 {
		opts.MaxMetricNames = DefaultMaxMetricNames
	}
	b := &Bridge{opts: opts, log: opts.Logger, sessions: map[string]*Session{}, limiters: map[string]*rate.Limiter{}, devs: map[string]*deviceState{}}
	b.stats.init()
	b.schema.store, b.schema.maxPerDevice, b.schema.maxNames = opts.Schema, opts.MaxMetricsPerDevice, opts.MaxMetricNames
	if err := b.loadSchema(context.Background(), opts.KnownFields); err != nil {
		return nil, fmt.Errorf("bridge: %w", err)
	}
	b.bufs.New = func() any { b := make([]byte, 0, 512); return &b }
	return b, nil
}

// Codec returns the codec every transport decodes with.
func (b *Bridge) Codec() *telemetry.Codec { return b.opts.Codec }

// Stats returns the bridge's counters.
func (b *Bridge) Stats() *Stats { return &b.stats }

// Ingest runs one telemetry payload through the pipeline: rate limit,
// decode and validate, spool, live fan-out. It returns the message id to
// acknowledge, or the error to send back. Nothing is stored unless it
// returns a nil error, and a nil error means every reading is durable.
func (b *Bridge) Ingest(ctx context.Context, s *Session, payload []byte) (string, *telemetry.Error) {
	if err := b.Admit(s); err != nil {
		return "", err
	}
	f, err := b.opts.Codec.Decode(payload)
	if f != nil && f.Type == "" && s.Transport != devices.TransportWS {
		f.Type, err = telemetry.TypeTelemetry, nil // the MQTT topic or HTTP path says what it is
	}
	if err != nil {
		return idOf(f), b.reject(s, asError(err))
	}
	if f.Type != telemetry.TypeTelemetry {
		return f.ID, b.reject(s, &telemetry.Error{Code: telemetry.CodeUnknownType, Message: `type: expected "telemetry" here`})
	}
	return b.IngestFrame(ctx, s, f)
}

// Admit counts one incoming message of s and applies the device's rate
// limit. Transports that decode frames themselves call it first for every
// frame, before spending any work on it.
func (b *Bridge) Admit(s *Session) *telemetry.Error {
	b.stats.messages(s.Transport).Add(1)
	if !s.limiter.Allow() {
		return b.reject(s, telemetry.ErrRateLimited)
	}
	return nil
}

// IngestFrame is Ingest for a frame the transport already admitted and
// decoded (the WebSocket reader decodes once to dispatch on type).
func (b *Bridge) IngestFrame(ctx context.Context, s *Session, f *telemetry.Frame) (string, *telemetry.Error) {
	t, err := b.opts.Codec.Telemetry(f)
	if err != nil {
		return f.ID, b.reject(s, asError(err))
	}
	d := s.dev
	if d == nil {
		b.mu.Lock()
		d = b.deviceLocked(s.DeviceID)
		b.mu.Unlock()
	}
	var c claims
	if e := b.checkSchema(ctx, s, d, t, &c); e != nil {
		return t.ID, b.reject(s, e)
	}
	for i := range t.Readings {
		if r := &t.Readings[i]; r.Nanos != 0 { // sent without ts: unique per device
			r.Nanos = telemetry.HubTime(&d.clock, r.Nanos)
			r.TS = r.Nanos / int64(time.Millisecond)
		}
	}
	bufp := b.bufs.Get().(*[]byte)
	buf := telemetry.AppendLines((*bufp)[:0], s.DeviceID, b.opts.Devices.Tags(s.DeviceID), t.Readings)
	ctx, cancel := context.WithTimeout(ctx, b.opts.StoreTimeout)
	serr := b.opts.Store.Append(ctx, len(t.Readings), buf)
	cancel()
	*bufp = buf
	if cap(buf) <= 64<<10 {
		b.bufs.Put(bufp)
	}
	if serr != nil {
		if !errors.Is(serr, spool.ErrMaybeStored) { // it may be stored: its claims stay
			b.releaseClaims(ctx, s, d, &c)
		}
		switch {
		case errors.Is(serr, spool.ErrFull), errors.Is(serr, context.DeadlineExceeded), errors.Is(serr, spool.ErrClosed):
			return t.ID, b.reject(s, telemetry.ErrOverloaded)
		case errors.Is(serr, spool.ErrTooLarge):
			return t.ID, b.reject(s, &telemetry.Error{Code: telemetry.CodeTooLarge, Message: "message too large"})
		default:
			b.log.Error("spool append failed", "device", s.DeviceID, "err", serr)
			return t.ID, b.reject(s, telemetry.ErrInternal)
		}
	}
	now := b.opts.Now()
	b.opts.Devices.Touch(s.DeviceID, now)
	b.stats.readings(s.Transport).Add(int64(len(t.Readings)))
	if b.opts.Fanout != nil {
		for _, r := range t.Readings {
			b.opts.Fanout.Publish(telemetry.Event{Type: telemetry.EventReading, Device: s.DeviceID, TS: r.TS, Metrics: r.Metrics})
		}
	}
	return t.ID, nil
}

func idOf(f *telemetry.Frame) string {
	if f == nil {
		return ""
	}
	return f.ID
}

func asError(err error) *telemetry.Error {
	var e *telemetry.Error
	if errors.As(err, &e) {
		return e
	}
	return &telemetry.Error{Code: telemetry.CodeBadJSON, Message: err.Error()}
}

// Reject counts and (rate-limited) logs a refusal a transport decided on
// its own, so every refusal shows up in the same metrics.
func (b *Bridge) Reject(s *Session, e *telemetry.Error) { b.reject(s, e) }

func (b *Bridge) reject(s *Session, e *telemetry.Error) *telemetry.Error {
	b.stats.rejected(e.Code).Add(1)
	s.logReject(b.log, e)
	return e
}
