package cluster

import (
	"context"
	"log/slog"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/go-json-experiment/json"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/cluster/dynsec"
	"github.com/fieldhub/fieldhub/bridge/cluster/mosquittotest"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
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

// TestBrokerClientIDBoundAtStart: a dynamic-security client created before
// the hub bound client ids (createClient without clientid) accepts its
// device under any client id, so that device could take over another's
// session. A hub that starts binds every such device client to client id
// = device id, and leaves its own and other non-device clients alone.
func TestBrokerClientIDBoundAtStart(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	old, err := r.reg.Create(ctx, devices.Spec{ID: "old-1"})
	if err != nil {
		t.Fatal(err)
	}
	r.device(t, "old-1", old.Token, nil, nil) // its client exists
	client := func(user string) (clientID string, found bool) {
		t.Helper()
		res, err := r.cl.dynsec.Send(ctx, []map[string]any{{"command": "getClient", "username": user}})
		if err != nil {
			t.Fatal(err)
		}
		var data struct {
			Client struct {
				ClientID string `json:"clientid"`
			} `json:"client"`
		}
		if res[0].Error != "" || json.Unmarshal(res[0].Data, &data, json.RejectUnknownMembers(false)) != nil {
			return "", false
		}
		return data.Client.ClientID, true
	}
	// Made as a hub before the binding made it: no clientid.
	role := []map[string]any{{"rolename": dynsec.DeviceRolePrefix + "old-1"}}
	res, err := r.cl.dynsec.Send(ctx, []map[string]any{
		{"command": "deleteClient", "username": "old-1"},
		{"command": "createClient", "username": "old-1", "password": old.Token, "roles": role},
	})
	if err != nil || res[0].Error != "" || res[1].Error != "" {
		t.Fatalf("recreate old-1 unbound: %v %v", res, err)
	}
	if id, ok := client("old-1"); !ok || id != "" {
		t.Fatalf("old-1's client: id %q, found %v; want it unbound", id, ok)
	}
	connect := func(clientID string) error {
		o := paho.NewClientOptions().SetProtocolVersion(4).AddBroker(r.mq.URL).SetClientID(clientID).SetUsername("old-1").
			SetPassword(old.Token).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetCleanSession(true)
		c := paho.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			t.Fatal("no CONNACK")
		}
		if tok.Error() == nil {
			c.Disconnect(0)
		}
		return tok.Error()
	}
	if err := connect("someone-else"); err != nil {
		t.Fatalf("the unbound client should still take any client id (the bug this test is about): %v", err)
	}

	// A hub starts (its first reconcile binds).
	hub2, err := New(Options{
		BrokerURL: r.mq.URL, Username: mosquittotest.HubUser, Password: mosquittotest.HubPass,
		ClientID: "hub-test-2", Registry: r.reg, Local: &recorder{}, Dynsec: true, BrokerIdle: time.Second,
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	br2, err := bridge.New(bridge.Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: r.store,
		Devices: r.reg, Fanout: hub2, RatePerSec: 10000, Burst: 10000})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, stop2 := context.WithCancel(ctx)
	done2 := make(chan struct{})
	go func() { _ = hub2.Run(ctx2, Peers{Bridge: br2, Commands: &commandsFake{}}); close(done2) }() // owner: this test; ends with stop2
	t.Cleanup(func() { stop2(); <-done2 })

	waitFor(t, "old-1's broker client bound to client id old-1", 20*time.Second, func() bool {
		id, _ := client("old-1")
		return id == "old-1"
	})
	if err := connect("someone-else"); err == nil {
		t.Fatal("old-1 still connects under another client id after the hub started")
	}
	if err := connect("old-1"); err != nil {
		t.Fatalf("old-1 with its own client id refused: %v", err)
	}
	if id, ok := client(mosquittotest.HubUser); !ok || id != "" {
		t.Fatalf("the hub's own broker client was touched: client id %q (found %v)", id, ok)
	}
}
