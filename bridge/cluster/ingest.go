package cluster

import (
	"context"
	"fmt"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Ingest: the workers that make device messages from the broker durable
// through the bridge and acknowledge them after.

func (c *Cluster) work(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-c.inbound:
			c.handle(ctx, m)
		}
	}
}

// handle makes one telemetry message or command result durable and
// acknowledges it to the broker. A message the spool cannot take now is
// retried here, not acknowledged, until it fits or the hub stops.
func (c *Cluster) handle(ctx context.Context, m Message) {
	br := c.peers.Bridge
	device, kind, _ := telemetry.ParseTopic(m.Topic()) // only the shared subscriptions' topics come here
	if !devices.ValidID(device) || !c.known(ctx, device) {
		// The broker let it in, but the registry does not know the device
		// (deleted while its broker credentials lingered): nothing to keep.
		c.log.Warn("broker message from a device not in the registry dropped", "device", telemetry.Truncate(device, 64))
		c.stats.Refused.Add(1)
		m.Ack()
		return
	}
	s := br.Ephemeral(device, devices.TransportMQTT, "broker")
	if len(m.Payload()) > c.opts.MaxMessageBytes {
		terr := &telemetry.Error{Code: telemetry.CodeTooLarge, Message: fmt.Sprintf("message of %d bytes; the limit is %d", len(m.Payload()), c.opts.MaxMessageBytes)}
		br.Reject(s, terr)
		c.stats.Refused.Add(1)
		c.publishError(device, "", terr)
		m.Ack()
		return
	}
	if kind == telemetry.KindCommandResult {
		c.handleResult(ctx, br, s, m)
		c.heardFromBroker(device)
		return
	}
	if kind == telemetry.KindStateReported {
		c.handleState(ctx, br, s, device, m)
		return
	}
	key := c.delivered.key(m.Topic(), m.Payload())
	if m.Duplicate() && c.delivered.seen(key) {
		// Made durable already; the broker never saw our PUBACK.
		c.stats.Redelivered.Add(1)
		m.Ack()
		return
	}
	backoff := 50 * time.Millisecond
	for {
		id, terr := br.Ingest(ctx, s, m.Payload())
		if terr == nil {
			c.delivered.remember(key)
			c.stats.Ingested.Add(1)
			c.opts.Registry.Touch(device, time.Now())
			m.Ack()
			c.heardFromBroker(device)
			return
		}
		if terr.Code != telemetry.CodeOverloaded && terr.Code != telemetry.CodeInternal {
			c.stats.Refused.Add(1)
			c.publishError(device, id, terr)
			m.Ack()
			return
		}
		select {
		case <-ctx.Done():
			return // not acknowledged: redelivered when we reconnect
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// unknownWait bounds how long a worker waits for the registry to learn of
// a device another instance just created.
const (
	unknownWait          = 3 * time.Second
	unknownRemember      = 30 * time.Second
	maxUnknownRemembered = 10000
)

// known reports whether the registry has device, reloading it first if
// not: another instance may have created the device a moment ago, and its
// first messages can reach us before the announcement does.
func (c *Cluster) known(ctx context.Context, device string) bool {
	if c.opts.Registry.Exists(device) {
		return true
	}
	// A device found unknown recently is dropped at once: a deleted
	// device whose broker client lingers must not tie up the workers.
	now := time.Now()
	c.presMu.Lock()
	if at, ok := c.unknown[device]; ok && now.Sub(at) < unknownRemember {
		c.presMu.Unlock()
		return false
	}
	c.presMu.Unlock()
	c.requestRefresh()
	deadline := time.Now().Add(unknownWait)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
		if c.opts.Registry.Exists(device) {
			return true
		}
	}
	c.presMu.Lock()
	if len(c.unknown) >= maxUnknownRemembered {
		clear(c.unknown)
	}
	c.unknown[device] = now
	c.presMu.Unlock()
	return false
}
