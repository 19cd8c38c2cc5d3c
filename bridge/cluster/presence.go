package cluster

import (
	"context"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// ReasonIdle is why an MQTT device on the external broker went offline:
// no hub heard from it for Options.BrokerIdle.
const ReasonIdle = "idle"

// Presence of MQTT devices on the external broker. The broker does not
// tell its clients who connects, so it is inferred: a device is online
// from the first message any instance takes from it, and offline
// (ReasonIdle) when none was heard for BrokerIdle. Every instance sees
// every reading (live events), so every instance keeps the same clock;
// the instance that first hears a device announces it online, and each
// instance that finds it idle announces it offline (a duplicate offline is
// harmless).

// heardFromBroker is called for every message taken from a device through
// the broker.
func (c *Cluster) heardFromBroker(device string) {
	now := time.Now()
	c.presMu.Lock()
	_, tracked := c.brokerHeard[device]
	c.brokerHeard[device] = now
	c.presMu.Unlock()
	if tracked {
		return
	}
	if c.peers.Bridge.Current(device) != nil {
		return
	}
	d, err := c.opts.Registry.Get(device)
	if err != nil || d.Online {
		return // announced by another instance already, or on a session
	}
	c.opts.Registry.SetPresence(device, devices.Presence{Online: true, Transport: devices.TransportMQTT, ConnectedAt: &now, LastSeen: &now, RemoteAddr: "broker"})
	online := true
	c.Publish(telemetry.Event{Type: telemetry.EventPresence, Device: device, Online: &online, Transport: devices.TransportMQTT, At: now.UnixMilli()})
}

// observePresence keeps the idle clock in step with the other instances'
// events: their broker devices' presence and every reading.
func (c *Cluster) observePresence(ev telemetry.Event) {
	c.presMu.Lock()
	defer c.presMu.Unlock()
	switch ev.Type {
	case telemetry.EventReading:
		if _, ok := c.brokerHeard[ev.Device]; ok {
			c.brokerHeard[ev.Device] = time.Now()
		}
	case telemetry.EventPresence:
		if ev.Online != nil && *ev.Online && ev.Transport == devices.TransportMQTT {
			c.brokerHeard[ev.Device] = time.Now()
		} else {
			delete(c.brokerHeard, ev.Device) // offline, or on a session now
		}
	}
}

// sweepPresence turns devices not heard from for BrokerIdle offline.
func (c *Cluster) sweepPresence(ctx context.Context) {
	t := time.NewTicker(max(c.opts.BrokerIdle/10, 50*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		var idle []string
		c.presMu.Lock()
		for device, at := range c.brokerHeard {
			if now.Sub(at) > c.opts.BrokerIdle {
				idle = append(idle, device)
				delete(c.brokerHeard, device)
			}
		}
		c.presMu.Unlock()
		for _, device := range idle {
			if c.peers.Bridge.Current(device) != nil {
				continue
			}
			d, err := c.opts.Registry.Get(device)
			if err != nil || !d.Online || d.Transport != devices.TransportMQTT {
				continue
			}
			c.opts.Registry.SetPresence(device, devices.Presence{Online: false, Reason: ReasonIdle})
			online := false
			c.Publish(telemetry.Event{Type: telemetry.EventPresence, Device: device, Online: &online, Transport: devices.TransportMQTT, Reason: ReasonIdle, At: now.UnixMilli()})
		}
	}
}
