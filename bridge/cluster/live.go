package cluster

import (
	"bytes"
	"context"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Live relay: this instance's events to the others and theirs to this
// instance's dashboards; news of sessions and commands elsewhere goes to
// the command service.

// envelope is what travels on fieldhub/live/{device}: one or more live
// events of that device, oldest first, with the instance they came from
// so an instance skips its own.
type envelope struct {
	Origin string            `json:"o"`
	Events []telemetry.Event `json:"e"`
}

// Publish implements bridge.Fanout: this instance's dashboards at once,
// the other instances through the broker. It never blocks.
func (c *Cluster) Publish(ev telemetry.Event) {
	if ev.Type == telemetry.EventPresence && ev.Transport != devices.TransportMQTT {
		c.observePresence(ev) // a session here: no longer a broker device
	}
	c.opts.Local.Publish(ev)
	select {
	case c.live <- ev:
	default:
		c.stats.LiveDropped.Add(1)
	}
}

// maxLiveBatch bounds the events of one device in one broker message.
const maxLiveBatch = 128

// publishLive sends live events to the other instances. An idle hub sends
// each event at once; under load, what queued up while the last messages
// went out leaves as one message per device, so the per-message cost of
// the broker round trip is shared instead of limiting the rate.
func (c *Cluster) publishLive(ctx context.Context) {
	byDevice := map[string][]telemetry.Event{}
	var order []string
	add := func(ev telemetry.Event) {
		if _, ok := byDevice[ev.Device]; !ok {
			order = append(order, ev.Device)
		}
		byDevice[ev.Device] = append(byDevice[ev.Device], ev)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-c.live:
			add(ev)
		}
	drain:
		for n := 1; n < maxLiveBatch*8; n++ {
			select {
			case ev := <-c.live:
				add(ev)
			default:
				break drain
			}
		}
		for _, device := range order {
			evs := byDevice[device]
			for len(evs) > 0 {
				k := min(len(evs), maxLiveBatch)
				c.sendLive(device, evs[:k])
				evs = evs[k:]
			}
			delete(byDevice, device)
		}
		order = order[:0]
	}
}

func (c *Cluster) sendLive(device string, evs []telemetry.Event) {
	if !c.connected.Load() {
		c.stats.LiveDropped.Add(int64(len(evs)))
		return
	}
	b, err := json.Marshal(envelope{Origin: c.opts.ClientID, Events: evs})
	if err != nil {
		c.log.Error("encode live events", "err", err)
		return
	}
	c.client.Publish(livePrefix+device, 0, b)
	c.stats.LiveOut.Add(int64(len(evs)))
}

// originPrefix is how every live message of instance id starts: the
// envelope's first member.
func originPrefix(id string) []byte {
	b, err := json.Marshal(envelope{Origin: id})
	if err != nil {
		return nil
	}
	if i := bytes.Index(b, []byte(`,"e"`)); i > 0 {
		return b[:i]
	}
	return nil
}

// maxLiveBytes bounds a live message read back from the broker.
const maxLiveBytes = 1 << 20

// onLive takes another instance's live events: to this instance's
// dashboards, presence to the registry, and to the command service.
func (c *Cluster) onLive(payload []byte) {
	if len(payload) > maxLiveBytes || (len(c.ownLive) > 0 && bytes.HasPrefix(payload, c.ownLive)) {
		return // our own events, back from the broker: skipped undecoded
	}
	var env envelope
	if err := json.Unmarshal(payload, &env); err != nil || env.Origin == c.opts.ClientID || len(env.Events) > maxLiveBatch {
		return
	}
	for _, ev := range env.Events {
		if devices.ValidID(ev.Device) {
			c.trackOwner(env.Origin, ev)
			c.onRemoteEvent(ev)
		}
	}
}

func (c *Cluster) onRemoteEvent(ev telemetry.Event) {
	c.stats.LiveIn.Add(1)
	c.observePresence(ev)
	switch ev.Type {
	case telemetry.EventReading:
		c.stats.RemoteReadings.Add(1)
		c.opts.Registry.Touch(ev.Device, time.Now())
	case telemetry.EventPresence:
		at := time.UnixMilli(ev.At)
		p := devices.Presence{LastSeen: &at, Reason: ev.Reason}
		if ev.Online != nil && *ev.Online {
			p = devices.Presence{Online: true, Transport: ev.Transport, ConnectedAt: &at, LastSeen: &at}
		}
		if c.peers.Bridge.Current(ev.Device) == nil { // our own session's presence wins here
			c.opts.Registry.SetPresence(ev.Device, p)
		}
		if p.Online {
			c.peers.Commands.RemoteConnected(ev.Device)
		}
	case telemetry.EventCommand:
		c.peers.Commands.CommandChanged(ev.Device, ev.ID)
	}
	c.opts.Local.Publish(ev)
}
