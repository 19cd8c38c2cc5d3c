package cluster

import (
	"time"

	"github.com/go-json-experiment/json"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// ReasonInstanceLost is why a device shows offline after the instance
// holding its session lost the broker (it crashed, or its network did).
const ReasonInstanceLost = "instance_lost"

// instanceNotice is an instance's broker will on fieldhub/instances/{id}.
type instanceNotice struct {
	Origin string `json:"o"`
	Up     bool   `json:"up"`
}

// Which instance holds which device's session is learnt from presence
// events: when that instance's will arrives, its devices go offline here.
// If only its broker connection broke, it announces its sessions again
// when it reconnects (announceSessions).

// trackOwner records where a device's session is, from another instance's
// presence event.
func (c *Cluster) trackOwner(origin string, ev telemetry.Event) {
	if ev.Type != telemetry.EventPresence {
		return
	}
	c.presMu.Lock()
	defer c.presMu.Unlock()
	if ev.Online != nil && *ev.Online && ev.Transport != devices.TransportMQTT {
		c.owner[ev.Device] = origin
	} else {
		delete(c.owner, ev.Device)
	}
}

func (c *Cluster) onInstance(payload []byte) {
	var n instanceNotice
	if len(payload) > 1024 || json.Unmarshal(payload, &n) != nil || n.Up || n.Origin == "" || n.Origin == c.opts.ClientID {
		return
	}
	var held []string
	c.presMu.Lock()
	for device, origin := range c.owner {
		if origin == n.Origin {
			held = append(held, device)
			delete(c.owner, device)
		}
	}
	c.presMu.Unlock()
	c.log.Warn("another instance lost the broker; its devices show offline until they reconnect", "instance", n.Origin, "devices", len(held))
	now := time.Now()
	for _, device := range held {
		if c.peers.Bridge.Current(device) != nil {
			continue
		}
		d, err := c.opts.Registry.Get(device)
		if err != nil || !d.Online || d.Transport == devices.TransportMQTT {
			continue
		}
		c.opts.Registry.SetPresence(device, devices.Presence{Online: false, LastSeen: &now, Reason: ReasonInstanceLost})
		offline := false
		// Every instance hears the will and does this itself: local only.
		c.opts.Local.Publish(telemetry.Event{Type: telemetry.EventPresence, Device: device, Online: &offline, Transport: d.Transport, Reason: ReasonInstanceLost, At: now.UnixMilli()})
	}
}

// announceSessions tells the other instances again which devices this
// instance holds, after a reconnect: while it was away its will may have
// made them show offline there.
func (c *Cluster) announceSessions() {
	for _, s := range c.peers.Bridge.Sessions() {
		online := true
		at := s.ConnectedAt
		select {
		case c.live <- telemetry.Event{Type: telemetry.EventPresence, Device: s.DeviceID, Online: &online, Transport: s.Transport, At: at.UnixMilli()}:
		default:
			c.stats.LiveDropped.Add(1)
		}
	}
}
