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

// Devices is what the bridge needs of the registry. The bridge only
// reads the slice Tags returns.
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
// commands now, the command results devices send (CommandResult returns
// an error for a command the device does not have pending: unknown, or
// already final), and that a device's credentials changed (its HTTP long
// polls re-check their token). The calls must not block on I/O.
type Commands interface {
	SessionOpened(device string, sid uint64, deliver func(telemetry.Command) bool)
	SessionClosed(device string, sid uint64)
	CommandResult(device string, r *telemetry.CommandResult) error
	WakePollers(device string)
}

// State takes the reported-state patches devices send
// (*state.Service implements it): ReportState merges patch into the
// device's reported document and returns its new version; a refusal is a
// *telemetry.Error (invalid, with a field path) and changes nothing.
type State interface {
	ReportState(ctx context.Context, device string, patch []byte) (version int64, err error)
}

// ErrNoState is the answer to a state message on a hub without a state
// service.
var ErrNoState = &telemetry.Error{Code: telemetry.CodeUnknownType, Message: "type: device state is not served by this hub"}

// Rejections keeps what the pipeline refused, per device, for operators
// (*devices.Registry implements it). Rejected is called inline on the
// refusal path and must not block.
type Rejections interface {
	Rejected(device, transport, id string, e *telemetry.Error)
}

// BatchFanout is a Fanout that takes every reading of one message in one
// call: the device's reader then makes one non-blocking send per message
// (the live hub's shape). When Options.Fanout has PublishBatch, the
// pipeline uses it for readings; the slice is the fan-out's from then on.
type BatchFanout interface {
	PublishBatch(evs []telemetry.Event)
}

// noCommands is the Commands of a hub without a command service.
type noCommands struct{}

func (noCommands) SessionOpened(string, uint64, func(telemetry.Command) bool) {}
func (noCommands) SessionClosed(string, uint64)                               {}
func (noCommands) WakePollers(string)                                         {}

// ErrNoCommands is the answer to a command result on a hub without a
// command service: nothing is pending.
var ErrNoCommands = errors.New("bridge: no command service")

func (noCommands) CommandResult(string, *telemetry.CommandResult) error { return ErrNoCommands }

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
	// ReasonBackpressure: an MQTT 3.1.1 publish could not be stored in
	// time; its PUBACK was withheld and the connection closed so the
	// device resends it after reconnecting.
	ReasonBackpressure = "store_backpressure"
)

// Options configures a Bridge. Zero values take the documented defaults.
type Options struct {
	Codec   *telemetry.Codec
	Store   Store
	Devices Devices
	Fanout  Fanout // optional
	// Commands is told of sessions that can take commands; default none.
	Commands Commands
	// State takes reported-state patches; nil: state messages are refused.
	State State
	// Rejections is told of every refused message (Accept, Reject); nil:
	// nobody is.
	Rejections Rejections
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
	batch    BatchFanout // Options.Fanout's PublishBatch, or nil
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
	b.batch, _ = opts.Fanout.(BatchFanout)
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

// Reject counts and (rate-limited) logs a refusal a transport decided on
// its own, so every refusal shows up in the same metrics.
func (b *Bridge) Reject(s *Session, e *telemetry.Error) {
	b.reject(s, e)
	if b.opts.Rejections != nil {
		b.opts.Rejections.Rejected(s.DeviceID, s.Transport, "", e)
	}
}

func (b *Bridge) reject(s *Session, e *telemetry.Error) *telemetry.Error {
	b.stats.rejected(e.Code).Add(1)
	s.logReject(b.log, e)
	return e
}
