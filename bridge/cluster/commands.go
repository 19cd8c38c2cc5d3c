package cluster

import (
	"errors"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/go-json-experiment/json"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Commands is the command service as the cluster uses it
// (*commands.Service with commands.ClusterRouter over this Cluster).
type Commands interface {
	// CommandResult records a device's answer that came through the broker.
	CommandResult(device string, r *telemetry.CommandResult) error
	// ForwardCommand writes a command another instance published to the
	// device's session here, or wakes its HTTP polls here.
	ForwardCommand(device string, cmd telemetry.Command) bool
	// RemoteConnected: the device connected to another instance.
	RemoteConnected(device string)
	// CommandChanged: another instance changed a command.
	CommandChanged(device, id string)
}

func (c *Cluster) handleResult(br *bridge.Bridge, s *bridge.Session, m paho.Message) {
	defer m.Ack()
	f, err := br.Codec().Decode(m.Payload())
	if f != nil && f.Type == "" {
		f.Type, err = telemetry.TypeCommandResult, nil
	}
	var res *telemetry.CommandResult
	if err == nil {
		res, err = br.Codec().CommandResult(f)
	}
	if err != nil {
		var terr *telemetry.Error
		if !errors.As(err, &terr) {
			terr = &telemetry.Error{Code: telemetry.CodeBadJSON, Message: "malformed command result"}
		}
		br.Reject(s, terr)
		id := ""
		if f != nil {
			id = f.ID
		}
		c.publishError(s.DeviceID, id, terr)
		return
	}
	if err := c.peers.Commands.CommandResult(s.DeviceID, res); err != nil {
		c.log.Debug("command result for an unknown command", "device", s.DeviceID, "command", truncate(res.ID, 64), "err", err)
	}
}

// publishError tells an MQTT device why its message was refused, on the
// same errors topic the embedded broker uses.
func (c *Cluster) publishError(device, msgID string, terr *telemetry.Error) {
	c.client.Publish("devices/"+device+"/errors", 0, false, telemetry.EncodeError(msgID, terr))
}

// PublishCommand implements commands.Publisher: QoS 1 on the device's
// commands topic. It never waits: paho queues the publish and resends it
// after a reconnect.
func (c *Cluster) PublishCommand(device string, cmd telemetry.Command) bool {
	if !c.connected.Load() {
		return false
	}
	c.client.Publish("devices/"+device+"/commands", 1, false, telemetry.EncodeCommand(cmd, false))
	return true
}

// maxCommandBytes bounds a command read back from the broker; commands
// are validated when queued, so anything larger is not ours.
const maxCommandBytes = 64 << 10

func (c *Cluster) onCommand(topic string, payload []byte) {
	device := deviceOf(topic)
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
