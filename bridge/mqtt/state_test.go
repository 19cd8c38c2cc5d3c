package mqtt

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/state"
	"github.com/fieldhub/fieldhub/devices/state/boltstore"
)

// lateState is the rig's State, bound to a service once the rig's
// registry exists.
type lateState struct{ s *state.Service }

func (l *lateState) Subscribe(ctx context.Context, device string, fn func(*state.Update)) (state.Update, func(), error) {
	return l.s.Subscribe(ctx, device, fn)
}

func stateRig(t *testing.T) (*rig, *state.Service) {
	t.Helper()
	ls := &lateState{}
	r := newRig(t, Options{State: ls})
	st, err := devices.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ls.s, err = state.New(state.Options{Store: boltstore.New(st.DB()), Devices: r.reg})
	if err != nil {
		t.Fatal(err)
	}
	return r, ls.s
}

func patch(t *testing.T, s *state.Service, version int64, p string) {
	t.Helper()
	if _, err := s.PatchDesired(context.Background(), "d1", version, []byte(p), "test"); err != nil {
		t.Fatal(err)
	}
}

// TestV5StateDesiredWindow: desired updates share the command window
// (Receive Maximum 1 here): nothing more while one is unacknowledged,
// and two changes made meanwhile arrive as one, the latest.
func TestV5StateDesiredWindow(t *testing.T) {
	r, s := stateRig(t)
	c := r.raw5OK(t, "d1", func(pk *packets.Packet) { pk.Properties.ReceiveMaximum = 1 })
	c.subscribeCommands("d1", 1)
	c.send(subscribePacket(2, "devices/d1/state/desired"))
	if sa := c.expect(packets.Suback); sa.ReasonCodes[0] != 1 {
		t.Fatalf("SUBACK % x", sa.ReasonCodes)
	}
	p := c.expect(packets.Publish)
	if p.TopicName != "devices/d1/state/desired" || p.FixedHeader.Qos != 1 || string(p.Payload) != `{"desired":{},"delta":{},"version":0}` {
		t.Fatalf("on subscribe: %s qos %d %s", p.TopicName, p.FixedHeader.Qos, p.Payload)
	}
	patch(t, s, 0, `{"interval":5}`)
	patch(t, s, 1, `{"interval":9}`)
	cmd := r.sendCommand(t, "d1", "reboot")
	c.expectSilence(time.Second) // an absence: a server that would send does so at once
	c.send(ackPacket(packets.Puback, p.PacketID))
	got := map[string]string{}
	for range 2 {
		p := c.expect(packets.Publish)
		got[p.TopicName] = string(p.Payload)
		c.expectSilence(200 * time.Millisecond)
		c.send(ackPacket(packets.Puback, p.PacketID))
	}
	if got["devices/d1/state/desired"] != `{"desired":{"interval":9},"delta":{"interval":9},"version":2}` || !strings.Contains(got["devices/d1/commands"], cmd) {
		t.Fatalf("after the PUBACK: %v", got)
	}
	c.expectSilence(500 * time.Millisecond) // version 1 was coalesced away
}

// TestV5StateDesiredResume: an unacknowledged desired update is resent
// with DUP and its packet id first on a session resume, and a change
// made while the device was away follows without a new SUBSCRIBE.
func TestV5StateDesiredResume(t *testing.T) {
	r, s := stateRig(t)
	persistent := func(clean bool) func(*packets.Packet) {
		return func(pk *packets.Packet) {
			pk.Connect.Clean = clean
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 600, true
		}
	}
	c := r.raw5OK(t, "d1", persistent(true))
	c.send(subscribePacket(1, "devices/d1/state/desired"))
	c.expect(packets.Suback)
	first := c.expect(packets.Publish)
	c.conn.Close() // gone without PUBACK
	waitFor(t, "d1 offline", func() bool { d, _ := r.reg.Get("d1"); return !d.Online })
	patch(t, s, 0, `{"fault_rate":0.2}`)

	c2 := r.raw5OK(t, "d1", persistent(false))
	re := c2.expect(packets.Publish)
	if !re.FixedHeader.Dup || re.PacketID != first.PacketID || string(re.Payload) != string(first.Payload) {
		t.Fatalf("first after resume: dup %v id %d (want %d) %s", re.FixedHeader.Dup, re.PacketID, first.PacketID, re.Payload)
	}
	c2.send(ackPacket(packets.Puback, re.PacketID))
	if p := c2.expect(packets.Publish); p.FixedHeader.Dup || string(p.Payload) != `{"desired":{"fault_rate":0.2},"delta":{"fault_rate":0.2},"version":1}` {
		t.Fatalf("the change made while away: dup %v %s", p.FixedHeader.Dup, p.Payload)
	}
}
