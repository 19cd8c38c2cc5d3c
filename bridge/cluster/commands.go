package cluster

import (
	"context"

	"github.com/go-json-experiment/json"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Commands is the command service as the cluster uses it
// (*commands.Service with commands.ClusterRouter over this Cluster).
type Commands interface {
	// ForwardCommand writes a command another instance published to the
	// device's session here, or wakes its HTTP polls here.
	ForwardCommand(device string, cmd telemetry.Command) bool
	// RemoteConnected: the device connected to another instance.
	RemoteConnected(device string)
	// CommandChanged: another instance changed a command.
	CommandChanged(device, id string)
}

// handleResult takes a command result through the bridge's one entry
// point (which defaults the frame type for the topic's kind) and
// acknowledges it: a refusal goes to the device's errors topic.
func (c *Cluster) handleResult(ctx context.Context, br *bridge.Bridge, s *bridge.Session, m Message) {
	defer m.Ack()
	a := br.Accept(ctx, s, bridge.Message{Kind: telemetry.KindCommandResult, Payload: m.Payload()})
	switch {
	case a.Err != nil:
		c.publishError(s.DeviceID, a.ID, a.Err)
	case a.Unknown:
		c.log.Debug("command result for an unknown command", "device", s.DeviceID, "command", telemetry.Truncate(a.ID, 64))
	}
}

// publishError tells an MQTT device why its message was refused, on the
// same errors topic the embedded broker uses.
func (c *Cluster) publishError(device, msgID string, terr *telemetry.Error) {
	c.client.Publish(telemetry.Topic(device, telemetry.KindErrors), 0, telemetry.EncodeError(msgID, terr))
}

// PublishCommand implements commands.Publisher: QoS 1 on the device's
// commands topic. It never waits: paho queues the publish and resends it
// after a reconnect.
func (c *Cluster) PublishCommand(device string, cmd telemetry.Command) bool {
	if !c.connected.Load() {
		return false
	}
	c.client.Publish(telemetry.Topic(device, telemetry.KindCommands), 1, telemetry.EncodeCommand(cmd, false))
	return true
}

// maxCommandBytes bounds a command read back from the broker; commands
// are validated when queued, so anything larger is not ours.
const maxCommandBytes = 64 << 10

func (c *Cluster) onCommand(topic string, payload []byte) {
	device, _, _ := telemetry.ParseTopic(topic)
	if device == "" || len(payload) > maxCommandBytes {
		return
	}
	var cmd telemetry.Command
	if err := json.Unmarshal(payload, &cmd); err != nil || cmd.ID == "" {
		c.log.Debug("malformed command on the broker", "device", device)
		return
	}
	// Without a session here it wakes the device's HTTP polls here,
	// which take the command from the shared store.
	if c.peers.Commands.ForwardCommand(device, cmd) {
		c.stats.Forwarded.Add(1)
	}
}
