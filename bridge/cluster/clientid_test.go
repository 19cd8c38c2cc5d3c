package cluster

import (
	"context"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/devices"
)

// TestBrokerClientIDIsDeviceID: on Mosquitto, as on the embedded broker, a
// device with its own valid credentials and another device's client id is
// refused, and the other device stays connected (Mosquitto would otherwise
// hand it the other device's session). The client ids are mirrored into
// dynamic security with the passwords.
func TestBrokerClientIDIsDeviceID(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	a, err := r.reg.Create(ctx, devices.Spec{ID: "dev-a"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.reg.Create(ctx, devices.Spec{ID: "dev-b"})
	if err != nil {
		t.Fatal(err)
	}
	lostB := make(chan error, 1)
	r.device(t, "dev-b", b.Token, nil, lostB)
	r.device(t, "dev-a", a.Token, nil, nil) // both clients exist at the broker
	for _, clean := range []bool{true, false} {
		o := paho.NewClientOptions().SetProtocolVersion(4).AddBroker(r.mq.URL).SetClientID("dev-b").SetUsername("dev-a").SetPassword(a.Token).
			SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetCleanSession(clean)
		c := paho.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(eventWait) {
			t.Fatal("no CONNACK")
		}
		if tok.Error() == nil {
			c.Disconnect(0)
			t.Fatalf("clean=%v: dev-a connected to the broker with dev-b's client id", clean)
		}
	}
	select {
	case err := <-lostB:
		t.Fatalf("dev-b was disconnected: %v", err)
	default:
	}
}
