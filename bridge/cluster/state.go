package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Device state on the broker (docs/architecture.md, "Device state"):
// every change of a device's desired state (or of its delta) is published
// retained at QoS 1 on devices/{id}/state/desired, so an MQTT device on
// the broker gets the current document whenever it subscribes; reported
// patches come in through the shared subscription like telemetry.

// retainer is a broker Client that can publish retained messages (the
// paho client); a Client without it publishes desired updates unretained.
type retainer interface {
	PublishRetained(topic string, qos byte, payload []byte) Token
}

// PublishRetained sends payload on topic, retained, with qos.
func (p *pahoClient) PublishRetained(topic string, qos byte, payload []byte) Token {
	return p.c.Publish(topic, qos, true, payload)
}

// desiredOut coalesces the desired updates waiting for the broker: one
// per device, the latest wins, so the set is bounded by the devices that
// exist (only a registered device's state changes) and a slow broker
// costs memory for one document per device, never a queue.
type desiredOut struct {
	mu      sync.Mutex // guards pending
	pending map[string][]byte
	ready   chan struct{} // cap 1: one wake is enough, the loop takes everything
}

// PublishDesired hands the device's desired update (its MQTT form,
// {"desired","delta","version"}) to the broker publisher; it never
// blocks (state.Options.OnDesired). An empty payload clears the retained
// document (a deleted device).
func (c *Cluster) PublishDesired(device string, payload []byte) {
	c.desired.mu.Lock()
	c.desired.pending[device] = payload
	c.desired.mu.Unlock()
	select {
	case c.desired.ready <- struct{}{}:
	default: // the publisher is told already
	}
}

// desiredPublishWait bounds the wait for the broker to take one retained
// desired update before it is tried again.
const desiredPublishWait = 10 * time.Second

// publishDesired publishes the pending desired updates until ctx ends;
// one the broker did not take goes back into the set unless a newer one
// arrived meanwhile.
func (c *Cluster) publishDesired(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.desired.ready:
		}
		c.desired.mu.Lock()
		batch := c.desired.pending
		c.desired.pending = map[string][]byte{}
		c.desired.mu.Unlock()
		failed := false
		for device, payload := range batch {
			topic := telemetry.Topic(device, telemetry.KindStateDesired)
			var tok Token
			if r, ok := c.client.(retainer); ok {
				tok = r.PublishRetained(topic, 1, payload)
			} else {
				tok = c.client.Publish(topic, 1, payload)
			}
			select {
			case <-tok.Done():
			case <-time.After(desiredPublishWait):
			case <-ctx.Done():
				return
			}
			if !isDone(tok) || tok.Error() != nil {
				failed = true
				c.desired.mu.Lock()
				if _, newer := c.desired.pending[device]; !newer {
					c.desired.pending[device] = payload
				}
				c.desired.mu.Unlock()
			}
		}
		if failed {
			c.log.Warn("desired state not published to the broker; retrying", "devices", len(batch))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second): // backoff, not synchronisation
			}
			select {
			case c.desired.ready <- struct{}{}:
			default:
			}
		}
	}
}

func isDone(t Token) bool {
	select {
	case <-t.Done():
		return true
	default:
		return false
	}
}

// handleState stores a reported-state patch from the broker through the
// pipeline and acknowledges it; a refusal goes to the device's errors
// topic. One the hub cannot take now is retried until ctx ends (then not
// acknowledged: the broker redelivers it).
func (c *Cluster) handleState(ctx context.Context, br *bridge.Bridge, s *bridge.Session, device string, m Message) {
	backoff := 50 * time.Millisecond
	for {
		a := br.Accept(ctx, s, bridge.Message{Kind: telemetry.KindStateReported, Payload: m.Payload()})
		if a.Err == nil {
			c.stats.Ingested.Add(1)
			m.Ack()
			c.heardFromBroker(device)
			return
		}
		if a.Err.Code != telemetry.CodeOverloaded && a.Err.Code != telemetry.CodeInternal {
			c.stats.Refused.Add(1)
			c.publishError(device, a.ID, a.Err)
			m.Ack()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}
