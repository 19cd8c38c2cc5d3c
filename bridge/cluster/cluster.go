// Package cluster runs the hub as one of several instances on an external
// MQTT broker (FIELDHUB_MQTT_BROKER): the broker carries everything that
// must cross instances, and this package is the hub's paho client of it.
//
//   - Ingest: shared subscriptions $share/fieldhub/devices/+/telemetry and
//     .../commands/result, QoS 1 on four persistent sessions per instance,
//     acknowledged to the broker only after the bridge made the message
//     durable, so load spreads over instances and a crash loses nothing
//     the broker holds.
//   - Live: every event of this instance's bridge goes to its own
//     dashboards and once to fieldhub/live/{device} (QoS 0); events of the
//     other instances come back from that topic (not shared). Presence of
//     MQTT devices is inferred from their messages (presence.go); an
//     instance's broker will marks its devices offline elsewhere
//     (instances.go).
//   - Commands: published to devices/{id}/commands; the instance holding
//     the device's WebSocket forwards them; MQTT devices get them from the
//     broker.
//   - Device state: desired updates published retained on
//     devices/{id}/state/desired; reported patches through the shared
//     subscription $share/fieldhub/devices/+/state/reported (state.go).
//   - Registry: a change on any instance is announced on fieldhub/registry
//     and every instance reloads from the shared store, so a revoke cuts
//     sessions everywhere within a second.
//   - Mosquitto's dynamic-security plugin, optionally, mirrors device
//     credentials and per-device ACLs (sub-package dynsec, which owns the
//     plugin's control-topic protocol; this package carries its messages).
//
// The broker client is behind the Client interface (client.go), made by
// Options.ClientFactory; the default, NewPahoClient, makes this the hub's
// only importer of paho.
//
// It imports bridge, bridge/cluster/dynsec, devices and telemetry.
package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/cluster/dynsec"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Topics and the shared-subscription group every instance joins.
const (
	ShareGroup    = "fieldhub"
	topicLive     = "fieldhub/live/+"
	livePrefix    = "fieldhub/live/"
	topicRegistry = "fieldhub/registry"
	// An instance's broker will: when its connection breaks, the others
	// mark the devices it held offline.
	instancesPrefix = "fieldhub/instances/"
	topicInstances  = instancesPrefix + "+"
)

// deviceFilter is the filter of every device's topic of kind k.
func deviceFilter(k telemetry.Kind) string { return telemetry.Topic("+", k) }

// sharedFilter is deviceFilter in the instances' shared subscription.
func sharedFilter(k telemetry.Kind) string { return "$share/" + ShareGroup + "/" + deviceFilter(k) }

// Registry is what the cluster needs of the device registry.
type Registry interface {
	Refresh(ctx context.Context) error
	Exists(id string) bool
	Get(id string) (devices.Device, error)
	SetPresence(id string, p devices.Presence)
	Touch(id string, at time.Time)
}

// Options configures a Cluster. Zero values take the documented defaults.
type Options struct {
	// BrokerURL is tcp://host:1883, ssl://host:8883, ws:// or wss://.
	BrokerURL string
	Username  string
	Password  string
	TLS       *tls.Config // for ssl:// and wss://; nil: system roots
	// ClientID names this instance's persistent session at the broker; it
	// must be stable across restarts and unique per instance.
	ClientID string
	Registry Registry
	// Local is this instance's live fan-out (its dashboards).
	Local bridge.Fanout
	// Dynsec mirrors device credentials into Mosquitto's dynamic-security
	// plugin.
	Dynsec bool
	// Workers bounds the broker messages being made durable at once;
	// default 128. Queue bounds those waiting for a worker; default 1024.
	// Full queue: paho's router waits, the broker's in-flight window
	// fills and the broker holds the rest.
	Workers int
	Queue   int
	// MaxMessageBytes is the largest device message taken from the
	// broker; larger ones are refused with too_large (the broker's own
	// max_packet_size should stop them first). Default 256 KiB.
	MaxMessageBytes int
	// IngestConns is how many extra broker connections take part in the
	// shared ingest subscriptions, each with its own persistent session
	// ({ClientID}-in1...); default 3. paho handles one connection's
	// messages and acknowledgements one at a time through a chain of
	// goroutines, which caps one connection near 4,000 acknowledged
	// messages/s on a busy 2-core box.
	IngestConns int
	// LiveQueue bounds live events waiting to be published; default 16384.
	// Full: the event is dropped for other instances (counted); this
	// instance's dashboards got it.
	LiveQueue int
	// BrokerIdle is how long an MQTT device on the broker stays online
	// without being heard from; default 2 minutes.
	BrokerIdle time.Duration
	// RefreshEvery is the full registry reload that catches announcements
	// missed while disconnected; default 30 s.
	RefreshEvery time.Duration
	// ClientFactory makes each broker connection; default NewPahoClient.
	// Tests give an in-memory broker's.
	ClientFactory func(ClientOptions) Client
	Logger        *slog.Logger
}

// Stats counts what the cluster did, for metrics.
type Stats struct {
	Ingested atomic.Int64 // broker messages made durable and acknowledged
	Refused  atomic.Int64 // broker messages refused with an error to the device
	// ConnectFailures counts failed attempts to connect to the broker, on
	// any of the instance's connections.
	ConnectFailures atomic.Int64
	Redelivered     atomic.Int64 // broker redeliveries of messages already durable, acknowledged again
	LiveOut         atomic.Int64 // live events published for other instances
	LiveIn          atomic.Int64 // live events received from other instances
	LiveDropped     atomic.Int64 // live events not published: queue full or broker down
	// RemoteReadings counts readings other instances accepted (their live
	// events), so this instance's overview can show the fleet's rate.
	RemoteReadings atomic.Int64
	Forwarded      atomic.Int64 // commands forwarded to a local session
	Refreshes      atomic.Int64 // registry reloads
	DynsecErrors   atomic.Int64 // dynamic-security commands that failed
}

// Cluster is the hub's connection to the external broker. It implements
// bridge.Fanout and commands.Publisher.
type Cluster struct {
	opts   Options
	log    *slog.Logger
	client Client   // everything: ingest, live, commands, registry, dynsec
	ingest []Client // shared-subscription ingest only
	stats  Stats

	delivered *delivered // recent durable messages, to recognise redeliveries
	// peers are set by Run before any goroutine or broker callback that
	// reads them starts, and never change after.
	peers     Peers
	inbound   chan Message
	live      chan telemetry.Event
	refresh   chan struct{}
	dynsec    *dynsec.Sync // nil unless Options.Dynsec
	connected atomic.Bool
	ready     chan struct{} // closed after the first subscription succeeded
	ownLive   []byte        // how our own live messages start
	desired   desiredOut    // desired-state updates for the broker (state.go)

	failMu   sync.Mutex // guards lastFail
	lastFail failure    // the connection failure last reported

	presMu      sync.Mutex           // guards brokerHeard, unknown and owner
	brokerHeard map[string]time.Time // MQTT devices online through the broker: last heard
	unknown     map[string]time.Time // devices not in the registry, when last found so
	owner       map[string]string    // device -> the other instance holding its session
	readyOnce   sync.Once
}

// New returns a Cluster; Run connects it.
func New(opts Options) (*Cluster, error) {
	if opts.BrokerURL == "" || opts.ClientID == "" || opts.Registry == nil || opts.Local == nil {
		return nil, errors.New("cluster: BrokerURL, ClientID, Registry and Local are required")
	}
	if opts.Workers <= 0 {
		opts.Workers = 128
	}
	if opts.Queue <= 0 {
		opts.Queue = 1024
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = 256 << 10
	}
	if opts.IngestConns == 0 {
		opts.IngestConns = 3
	}
	if opts.IngestConns < 0 {
		opts.IngestConns = 0
	}
	if opts.LiveQueue <= 0 {
		opts.LiveQueue = 16384
	}
	if opts.BrokerIdle <= 0 {
		opts.BrokerIdle = 2 * time.Minute
	}
	if opts.RefreshEvery <= 0 {
		opts.RefreshEvery = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ClientFactory == nil {
		opts.ClientFactory = NewPahoClient
	}
	c := &Cluster{
		opts: opts, log: opts.Logger,
		inbound: make(chan Message, opts.Queue),
		live:    make(chan telemetry.Event, opts.LiveQueue),
		refresh: make(chan struct{}, 1),
		ready:   make(chan struct{}),

		delivered: newDelivered(durableMemory),

		brokerHeard: map[string]time.Time{},
		unknown:     map[string]time.Time{},
		owner:       map[string]string{},
		desired:     desiredOut{pending: map[string][]byte{}, ready: make(chan struct{}, 1)},
	}
	c.ownLive = originPrefix(opts.ClientID)
	c.client = c.newClient(opts.ClientID, true, c.onConnect, func(err error) {
		c.connected.Store(false)
		c.log.Warn("broker connection lost; reconnecting", "err", err)
	})
	for i := range opts.IngestConns {
		c.ingest = append(c.ingest, c.newClient(fmt.Sprintf("%s-in%d", opts.ClientID, i+1), false, c.onIngestConnect, func(err error) {
			c.log.Warn("broker ingest connection lost; reconnecting", "err", err)
		}))
	}
	if opts.Dynsec {
		var err error
		c.dynsec, err = dynsec.New(dynsec.Options{ID: opts.ClientID, Publish: c.publishControl, Connected: c.connected.Load,
			Exists: opts.Registry.Exists, Errors: &c.stats.DynsecErrors, Logger: c.log})
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
	}
	return c, nil
}

// newClient configures one broker connection with its own persistent
// session, through Options.ClientFactory.
func (c *Cluster) newClient(id string, will bool, onConnect func(Client), onLost func(error)) Client {
	o := c.opts
	co := ClientOptions{
		BrokerURL: o.BrokerURL, ClientID: id, Username: o.Username, Password: o.Password, TLS: o.TLS,
		OnMessage: c.dispatch,
		OnConnect: func(cl Client) {
			c.connectSucceeded()
			onConnect(cl)
		},
		OnLost:          onLost,
		OnConnectFailed: func(err error) { c.connectFailed(id, err) },
	}
	if will {
		down, _ := json.Marshal(instanceNotice{Origin: id, Up: false})
		co.Will = &Will{Topic: instancesPrefix + id, Payload: down, QoS: 1}
	}
	return o.ClientFactory(co)
}

// connectFailed reports a failed connection attempt: why, once per
// reason for all of the instance's connections, and again each minute
// while it lasts, so a wrong password, certificate or address is said
// plainly without a line per connection and retry.
func (c *Cluster) connectFailed(clientID string, err error) {
	c.stats.ConnectFailures.Add(1)
	reason := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) {
		reason = strings.ReplaceAll(reason, ue.URL, "(broker URL)") // it may carry credentials
	}
	now := time.Now()
	c.failMu.Lock()
	say := c.lastFail.reason != reason || now.Sub(c.lastFail.at) >= time.Minute
	if say {
		c.lastFail = failure{reason: reason, at: now}
	}
	c.failMu.Unlock()
	if say {
		c.log.Error("cannot connect to the broker; retrying", "client_id", clientID, "err", reason)
	}
}

// connectSucceeded forgets the failures, so the next outage is reported
// afresh.
func (c *Cluster) connectSucceeded() {
	c.failMu.Lock()
	c.lastFail = failure{}
	c.failMu.Unlock()
}

// failure is the last connection failure reported.
type failure struct {
	reason string
	at     time.Time
}

// onIngestConnect subscribes an extra ingest connection to the shared
// subscriptions only.
func (c *Cluster) onIngestConnect(cl Client) {
	subs := map[string]byte{
		sharedFilter(telemetry.KindTelemetry):     1,
		sharedFilter(telemetry.KindCommandResult): 1,
		sharedFilter(telemetry.KindStateReported): 1,
	}
	go func() { // owner: the client's connect callback; ends when subscribed or the connection is gone
		c.subscribed(cl, subs)
	}()
}

// subscribeWait bounds the wait for a SUBACK.
const subscribeWait = 10 * time.Second

// subscribed subscribes and repeats the subscription while the broker
// does not answer and the connection stays up; a lost connection
// subscribes again on reconnect. (Disconnecting instead would stop
// automatic reconnects for good.) It returns the QoS granted per filter,
// or ok false when the connection went away first.
func (c *Cluster) subscribed(cl Client, subs map[string]byte) (granted map[string]byte, ok bool) {
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		ctx, cancel := context.WithTimeout(context.Background(), subscribeWait)
		granted, err := cl.Subscribe(ctx, subs)
		cancel()
		if err == nil {
			return granted, true
		}
		if !cl.IsConnectionOpen() {
			return nil, false
		}
		c.log.Error("subscribe at broker failed; retrying", "err", err)
		time.Sleep(wait) // backoff, not synchronisation
		if !cl.IsConnectionOpen() {
			return nil, false
		}
	}
}

// publishControl sends a dynamic-security control message at QoS 1 and
// waits until the broker took it or ctx ended.
func (c *Cluster) publishControl(ctx context.Context, payload []byte) error {
	tok := c.client.Publish(dynsec.Topic, 1, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("publish: %w", ctx.Err())
	}
}

// Stats returns the cluster's counters.
func (c *Cluster) Stats() *Stats { return &c.stats }

// Connected reports whether the broker connection is up, for readiness.
func (c *Cluster) Connected() bool { return c.connected.Load() }

// Ready is closed once the first connection subscribed to everything.
func (c *Cluster) Ready() <-chan struct{} { return c.ready }

func (c *Cluster) onConnect(cl Client) {
	subs := map[string]byte{
		sharedFilter(telemetry.KindTelemetry):     1,
		sharedFilter(telemetry.KindCommandResult): 1,
		sharedFilter(telemetry.KindStateReported): 1,
		deviceFilter(telemetry.KindCommands):      1,
		topicLive:                                 0,
		topicRegistry:                             1,
		topicInstances:                            1,
	}
	if c.dynsec != nil {
		subs[dynsec.ResponseTopic] = 0
	}
	go func() { // owner: the client's connect callback; ends when subscribed or the connection is gone
		granted, ok := c.subscribed(cl, subs) // messages go to dispatch
		if !ok {
			return
		}
		for topic, code := range granted {
			if code == 0x80 {
				c.log.Error("broker refused a subscription; check the hub's broker ACL", "topic", topic)
			}
		}
		c.connected.Store(true)
		c.log.Info("connected to broker", "client_id", c.opts.ClientID)
		c.readyOnce.Do(func() { close(c.ready) })
		c.requestRefresh() // catch up on changes made while we were away
		c.announceSessions()
		if c.dynsec != nil {
			c.dynsec.ReconcileSoon()
		}
	}()
}

// dispatch is paho's handler for every message. It decodes nothing and
// waits for nothing unbounded: durable work goes to the workers' queue.
func (c *Cluster) dispatch(m Message) {
	topic := m.Topic()
	switch {
	case strings.HasPrefix(topic, livePrefix):
		c.onLive(m.Payload())
	case topic == topicRegistry:
		m.Ack()
		c.requestRefresh()
	case strings.HasPrefix(topic, instancesPrefix):
		m.Ack()
		c.onInstance(m.Payload())
	case topic == dynsec.ResponseTopic:
		if c.dynsec != nil {
			c.dynsec.OnResponse(m.Payload())
		}
	default:
		if _, kind, ok := telemetry.ParseTopic(topic); ok && kind == telemetry.KindCommands {
			c.onCommand(topic, m.Payload())
			m.Ack()
			return
		}
		// Telemetry and command results: acknowledged when durable.
		// Full queue: this waits, so the connection's in-flight window
		// fills and the broker holds the rest.
		c.inbound <- m
	}
}

// Peers are the parts of this instance that broker traffic goes to. They
// are built after the Cluster, whose Fanout and command Publisher they
// use, and handed to Run.
type Peers struct {
	// Bridge makes device messages from the broker durable; its sessions
	// say which devices are connected here.
	Bridge *bridge.Bridge
	// Commands takes results, commands other instances published, and
	// news of commands and devices elsewhere.
	Commands Commands
}

// Run connects and serves until ctx ends: the workers that make broker
// messages durable, the live publisher, registry refreshes and the
// dynamic-security sync. p must be the bridge and command service this
// Cluster is the Fanout and command Publisher of; only a Cluster that
// never receives device traffic (a test of the live relay) may run with
// zero Peers.
func (c *Cluster) Run(ctx context.Context, p Peers) error {
	c.peers = p
	var wg sync.WaitGroup
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	for range c.opts.Workers {
		wg.Go(func() { c.work(workCtx) })
	}
	wg.Go(func() { c.publishLive(workCtx) })
	wg.Go(func() { c.publishDesired(workCtx) })
	wg.Go(func() { c.refreshLoop(workCtx) })
	wg.Go(func() { c.sweepPresence(workCtx) })
	if c.dynsec != nil {
		wg.Go(func() { c.dynsec.Run(workCtx) })
	}
	c.client.Connect() // retries in the background until it connects
	for _, cl := range c.ingest {
		cl.Connect()
	}
	<-ctx.Done()
	// Let the last live events (sessions closing at shutdown) go out.
	for drain := time.Now().Add(500 * time.Millisecond); len(c.live) > 0 && c.connected.Load() && time.Now().Before(drain); {
		time.Sleep(10 * time.Millisecond)
	}
	// Stop taking messages first; what is queued and not yet durable is
	// not acknowledged, and the broker gives it to us again on reconnect.
	for _, cl := range c.ingest {
		cl.Disconnect(250 * time.Millisecond)
	}
	c.client.Disconnect(250 * time.Millisecond)
	c.connected.Store(false)
	stopWork()
	wg.Wait()
	return nil
}
