package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pahov5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
)

// The MQTT identity attacks: a device with its own valid credentials tries
// to become another device through the MQTT client id, and the broker's log
// is flooded with packet dumps. Contract: client id = device id; an empty
// one is assigned the device id; anything else is refused at CONNECT
// (3.1.1 return code 0x02, MQTT 5 reason 0x85) and nothing of any other
// device changes.

// mqttAttackV3 connects an MQTT 3.1.1 client (paho.mqtt.golang) and returns
// it with its CONNECT token, whatever the outcome; tweak adjusts options.
func mqttAttackV3(t *testing.T, h *hub, clientID, user, token string, tweak func(*paho.ClientOptions)) (paho.Client, *paho.ConnectToken) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + h.env["FIELDHUB_MQTT_ADDR"]).SetProtocolVersion(4).
		SetClientID(clientID).SetUsername(user).SetPassword(token).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second)
	if tweak != nil {
		tweak(o)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		t.Fatalf("3.1.1 CONNECT of %s as %q: no CONNACK within 15s", user, clientID)
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, tok.(*paho.ConnectToken)
}

// mqttAttackV5 connects an MQTT 5 client (paho.golang) and returns it with
// the CONNACK (nil if none came) and the error.
func mqttAttackV5(t *testing.T, h *hub, clientID, user, token string, clean bool) (*pahov5.Client, *pahov5.Connack, error) {
	t.Helper()
	conn, err := net.Dial("tcp", h.env["FIELDHUB_MQTT_ADDR"])
	if err != nil {
		t.Fatal(err)
	}
	c := pahov5.NewClient(pahov5.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, &pahov5.Connect{ClientID: clientID, Username: user, UsernameFlag: true,
		Password: []byte(token), PasswordFlag: true, KeepAlive: 30, CleanStart: clean})
	t.Cleanup(func() { _ = c.Disconnect(&pahov5.Disconnect{}); conn.Close() })
	return c, ca, err
}

func (h *hub) mqttAttackPresence(t *testing.T, id string) map[string]any {
	t.Helper()
	_, m := h.api(t, "GET", "/api/v1/devices/"+id, h.adminToken, nil)
	d, _ := m["device"].(map[string]any)
	return d
}

// TestAttackMQTTClientIDTakeover: device A, with its own valid credentials
// and device B's client id, tries to kick B off while B holds an
// unacknowledged command. Before: A was accepted, B was disconnected
// (session taken over) and with a persistent session A received B's
// command with its params. Now A is refused on 3.1.1 and 5, B stays
// connected and answers its own command.
func TestAttackMQTTClientIDTakeover(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	tokA := h.createDevice(t, "atk-a")
	tokB := h.createDevice(t, "atk-b")

	// B: persistent session, subscribed to its commands, acks nothing yet.
	got := make(chan paho.Message, 4)
	var lostB atomic.Bool
	b, ct := mqttAttackV3(t, h, "atk-b", "atk-b", tokB, func(o *paho.ClientOptions) {
		o.SetCleanSession(false).SetAutoAckDisabled(true).
			SetConnectionLostHandler(func(paho.Client, error) { lostB.Store(true) })
	})
	if ct.Error() != nil {
		t.Fatalf("B connect: %v", ct.Error())
	}
	if st := b.Subscribe("devices/atk-b/commands", 1, func(_ paho.Client, m paho.Message) { got <- m }); !st.WaitTimeout(10*time.Second) || st.Error() != nil {
		t.Fatalf("B subscribe: %v", st.Error())
	}
	_, cmd := h.send(t, h.adminToken, "atk-b", "", map[string]any{"name": "unlock", "params": map[string]any{"secret": "b-only"}, "timeout": "60s"}, nil)
	cmdID, _ := cmd["id"].(string)
	var inFlight paho.Message
	select {
	case inFlight = <-got:
	case <-time.After(15 * time.Second):
		t.Fatal("B never received its command")
	}

	// A, as itself, with B's client id: 3.1.1 persistent, 3.1.1 clean, 5.
	var stolen atomic.Int64
	for _, clean := range []bool{false, true} {
		a, act := mqttAttackV3(t, h, "atk-b", "atk-a", tokA, func(o *paho.ClientOptions) {
			o.SetCleanSession(clean).SetDefaultPublishHandler(func(paho.Client, paho.Message) { stolen.Add(1) })
		})
		if act.Error() == nil || act.ReturnCode() != 0x02 {
			t.Errorf("3.1.1 clean=%v: A with B's client id got return code %#x (err %v), want 0x02 identifier rejected", clean, act.ReturnCode(), act.Error())
		}
		if a.IsConnectionOpen() {
			t.Errorf("3.1.1 clean=%v: A is connected with B's client id", clean)
		}
	}
	_, ca, err := mqttAttackV5(t, h, "atk-b", "atk-a", tokA, false)
	if err == nil || ca == nil || ca.ReasonCode != 0x85 {
		t.Errorf("MQTT 5: A with B's client id got CONNACK %+v (err %v), want reason 0x85 client identifier not valid", ca, err)
	}

	// Nothing of B changed: still connected, still online over MQTT, and
	// its command is still its own to answer.
	if lostB.Load() || !b.IsConnectionOpen() {
		t.Fatal("B was disconnected by A's CONNECT")
	}
	if d := h.mqttAttackPresence(t, "atk-b"); d["online"] != true || d["transport"] != "mqtt" {
		t.Fatalf("B's presence after the attack: %v", d)
	}
	if n := stolen.Load(); n != 0 {
		t.Fatalf("A received %d of B's messages", n)
	}
	inFlight.Ack()
	res, _ := json.Marshal(map[string]any{"id": cmdID, "status": "ok", "result": map[string]any{"unlocked": true}})
	if pt := b.Publish("devices/atk-b/commands/result", 1, false, res); !pt.WaitTimeout(10*time.Second) || pt.Error() != nil {
		t.Fatalf("B's result: %v", pt.Error())
	}
	waitUntil(t, "B's command to succeed", 10*time.Second, func() bool { return h.commandStatus(t, "atk-b", cmdID) == "succeeded" })
	if !strings.Contains(h.stderr.String(), "mqtt client id refused") {
		t.Fatalf("no log line for the refused client id:\n%s", h.stderr)
	}
}

// TestAttackMQTTEmptyClientIDIsDeviceID: an empty client id is assigned the
// device id (MQTT 5: Assigned Client Identifier in CONNACK) and works on
// 3.1.1 (clean session) and 5. Before: mochi assigned a random id.
func TestAttackMQTTEmptyClientIDIsDeviceID(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	tok := h.createDevice(t, "atk-e")

	c3, ct := mqttAttackV3(t, h, "", "atk-e", tok, func(o *paho.ClientOptions) { o.SetCleanSession(true) })
	if ct.Error() != nil {
		t.Fatalf("3.1.1 empty client id: %v", ct.Error())
	}
	if pt := c3.Publish("devices/atk-e/telemetry", 1, false, `{"metrics":{"temp":1}}`); !pt.WaitTimeout(10*time.Second) || pt.Error() != nil {
		t.Fatalf("3.1.1 publish: %v", pt.Error())
	}
	c3.Disconnect(50)

	got := make(chan string, 4)
	conn, err := net.Dial("tcp", h.env["FIELDHUB_MQTT_ADDR"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c5 := pahov5.NewClient(pahov5.ClientConfig{Conn: conn, OnPublishReceived: []func(pahov5.PublishReceived) (bool, error){
		func(p pahov5.PublishReceived) (bool, error) { got <- p.Packet.Topic; return true, nil },
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	ca, err := c5.Connect(ctx, &pahov5.Connect{Username: "atk-e", UsernameFlag: true, Password: []byte(tok), PasswordFlag: true, KeepAlive: 30, CleanStart: true})
	if err != nil {
		t.Fatalf("MQTT 5 empty client id: %v", err)
	}
	defer c5.Disconnect(&pahov5.Disconnect{})
	if ca.Properties == nil || ca.Properties.AssignedClientID != "atk-e" {
		t.Fatalf("MQTT 5 CONNACK assigned client id %+v, want atk-e", ca.Properties)
	}
	if pr, err := c5.Publish(ctx, &pahov5.Publish{Topic: "devices/atk-e/telemetry", QoS: 1, Payload: []byte(`{"metrics":{"temp":2}}`)}); err != nil || pr.ReasonCode != 0 {
		t.Fatalf("MQTT 5 publish: %+v %v", pr, err)
	}
	if _, err := c5.Subscribe(ctx, &pahov5.Subscribe{Subscriptions: []pahov5.SubscribeOptions{{Topic: "devices/atk-e/commands", QoS: 1}}}); err != nil {
		t.Fatalf("MQTT 5 subscribe: %v", err)
	}
	h.send(t, h.adminToken, "atk-e", "", map[string]any{"name": "ping"}, nil)
	select {
	case topic := <-got:
		if topic != "devices/atk-e/commands" {
			t.Fatalf("command on %s", topic)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("MQTT 5 client with an assigned id got no command")
	}
}

// TestAttackMQTTPersistentSessionNotResumed: B leaves a persistent session
// holding an unacknowledged command; A, with its own credentials and B's
// client id, must not resume it. Before: A got CONNACK session present and
// B's command, params included, resent to it. Now A is refused and B
// resumes its own session with the command still in it.
func TestAttackMQTTPersistentSessionNotResumed(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	tokA := h.createDevice(t, "atk-a")
	tokB := h.createDevice(t, "atk-b")

	got := make(chan paho.Message, 4)
	b, ct := mqttAttackV3(t, h, "atk-b", "atk-b", tokB, func(o *paho.ClientOptions) { o.SetCleanSession(false).SetAutoAckDisabled(true) })
	if ct.Error() != nil {
		t.Fatalf("B connect: %v", ct.Error())
	}
	if st := b.Subscribe("devices/atk-b/commands", 1, func(_ paho.Client, m paho.Message) { got <- m }); !st.WaitTimeout(10*time.Second) || st.Error() != nil {
		t.Fatalf("B subscribe: %v", st.Error())
	}
	h.send(t, h.adminToken, "atk-b", "", map[string]any{"name": "unlock", "params": map[string]any{"secret": "b-only"}, "timeout": "60s"}, nil)
	select {
	case <-got: // not acked: stays in B's session
	case <-time.After(15 * time.Second):
		t.Fatal("B never received its command")
	}
	b.Disconnect(50)
	waitUntil(t, "B offline", 10*time.Second, func() bool { return h.mqttAttackPresence(t, "atk-b")["online"] == false })

	stolen := make(chan string, 4)
	a, act := mqttAttackV3(t, h, "atk-b", "atk-a", tokA, func(o *paho.ClientOptions) {
		o.SetCleanSession(false).SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { stolen <- string(m.Payload()) })
	})
	if act.Error() == nil || act.ReturnCode() != 0x02 || act.SessionPresent() {
		t.Errorf("A resuming B's session: return code %#x, session present %v (err %v), want 0x02 and no session", act.ReturnCode(), act.SessionPresent(), act.Error())
	}
	if a.IsConnectionOpen() {
		a.Disconnect(50)
	}
	_, ca, err := mqttAttackV5(t, h, "atk-b", "atk-a", tokA, false)
	if err == nil || ca == nil || ca.ReasonCode != 0x85 || ca.SessionPresent {
		t.Errorf("MQTT 5: A resuming B's session got CONNACK %+v (err %v), want 0x85", ca, err)
	}
	select {
	case p := <-stolen:
		t.Fatalf("A received B's message %s", p)
	default:
	}

	// B comes back to its own session, and its command with it.
	resent := make(chan string, 4)
	_, ct = mqttAttackV3(t, h, "atk-b", "atk-b", tokB, func(o *paho.ClientOptions) {
		o.SetCleanSession(false).SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { resent <- string(m.Payload()) })
	})
	if ct.Error() != nil || !ct.SessionPresent() {
		t.Fatalf("B resuming its session: session present %v, err %v", ct.SessionPresent(), ct.Error())
	}
	select {
	case p := <-resent:
		if !strings.Contains(p, "b-only") {
			t.Fatalf("B got %s", p)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("B's unacknowledged command not resent to B")
	}
}

// TestAttackMQTTV5InvalidPublishLogLine: an invalid MQTT 5 publish is
// logged as one short line with device, topic and code. Before: mochi
// logged "publish packet error" with the whole packet struct, payload
// included (about 2.4 KB a line, one per publish, at error level).
func TestAttackMQTTV5InvalidPublishLogLine(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	tok := h.createDevice(t, "atk-log")
	c, _, err := mqttAttackV5(t, h, "atk-log", "atk-log", tok, true)
	if err != nil {
		t.Fatal(err)
	}
	// Refused (an unknown field, a null metric), 2 KB, as a buggy firmware sends.
	payload := []byte(`{"metrics":{"temp":null},"pad":"` + strings.Repeat("x", 2000) + `"}`)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 30
	for i := range n {
		pr, err := c.Publish(ctx, &pahov5.Publish{Topic: "devices/atk-log/telemetry", QoS: 1, Payload: payload})
		if pr == nil || pr.ReasonCode != 0x99 { // paho.golang also returns an error for it
			t.Fatalf("publish %d: %+v %v, want PUBACK 0x99", i, pr, err)
		}
	}
	// mochi logs before it sends the PUBACK: every line is in by now.
	dumps, dumped, first := 0, 0, ""
	for _, l := range strings.Split(h.stderr.String(), "\n") {
		if len(l) > 1000 || strings.Contains(l, "FixedHeader") || strings.Contains(l, "publish packet error") || strings.Contains(l, "xxxxxxxxxx") {
			if dumps == 0 {
				first = l
			}
			dumps, dumped = dumps+1, dumped+len(l)
		}
	}
	if dumps > 0 {
		t.Fatalf("%d log lines with a packet dump for %d publishes, %d bytes in all; the first: %.400s", dumps, n, dumped, first)
	}
	var refused []string
	waitUntil(t, "the refusal log line", 10*time.Second, func() bool {
		refused = refused[:0]
		for _, l := range strings.Split(h.stderr.String(), "\n") {
			if strings.Contains(l, "mqtt publish refused") {
				refused = append(refused, l)
			}
		}
		return len(refused) > 0
	})
	for _, l := range refused {
		if len(l) > 300 || !strings.Contains(l, "device=atk-log") || !strings.Contains(l, "topic=devices/atk-log/telemetry") || !strings.Contains(l, " code=") {
			t.Fatalf("refusal log line (%d bytes) lacks device, topic or code, or is too long: %s", len(l), l)
		}
	}
	if len(refused) > n {
		t.Fatalf("%d refusal lines for %d publishes", len(refused), n)
	}
}

// TestAttackMQTTWillToAnotherDevice: device A connects with a last will on
// B's commands topic ("reboot"). mochi sent wills straight to subscribers,
// outside the ACL. The gateway refuses such a CONNECT outright (3.1.1
// 0x05, 5.0 0x87), so there is no will to send; B gets nothing but the
// operator's command.
func TestAttackMQTTWillToAnotherDevice(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	tokA, tokB := h.createDevice(t, "atk-wa"), h.createDevice(t, "atk-wb")

	got := make(chan string, 8)
	cb, ct := mqttAttackV3(t, h, "atk-wb", "atk-wb", tokB, nil)
	if ct.Error() != nil {
		t.Fatal(ct.Error())
	}
	if st := cb.Subscribe("devices/atk-wb/commands", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }); !st.WaitTimeout(15*time.Second) || st.Error() != nil {
		t.Fatalf("B subscribe: %v", st.Error())
	}
	_, ct = mqttAttackV3(t, h, "atk-wa", "atk-wa", tokA, func(o *paho.ClientOptions) {
		o.SetWill("devices/atk-wb/commands", `{"id":"will-reboot","name":"reboot"}`, 1, false)
	})
	if ct.Error() == nil || ct.ReturnCode() != 0x05 {
		t.Fatalf("CONNECT with a will on B's commands: return code %#x (%v), want 0x05 not authorized", ct.ReturnCode(), ct.Error())
	}
	if st, m := h.send(t, h.adminToken, "atk-wb", "", map[string]any{"name": "ping"}, nil); st/100 != 2 {
		t.Fatalf("send command: %d %v", st, m)
	}
	select {
	case p := <-got:
		if strings.Contains(p, "will-reboot") || !strings.Contains(p, `"ping"`) {
			t.Fatalf("B received %s, want only the operator's ping", p)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("B got no command within 20s")
	}
}

// TestAttackMQTTV3EmptyClientIDPersistentSession: MQTT 3.1.1, clean
// session off, no client id (paho.mqtt.golang sends exactly that; Debian's
// mosquitto_pub refuses to). mochi answered CONNACK 0x80, which is no
// 3.1.1 return code, closed the connection, and paho took it for a
// success. [MQTT-3.1.3-8] wants 0x02 identifier rejected: paho now
// reports the refusal, and the device never shows online.
func TestAttackMQTTV3EmptyClientIDPersistentSession(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	tok := h.createDevice(t, "atk-p")
	_, ct := mqttAttackV3(t, h, "", "atk-p", tok, func(o *paho.ClientOptions) { o.SetCleanSession(false) })
	if ct.Error() == nil || ct.ReturnCode() != 0x02 {
		t.Fatalf("CONNECT: return code %#x, %v; want 0x02 identifier rejected", ct.ReturnCode(), ct.Error())
	}
	if p := h.mqttAttackPresence(t, "atk-p"); p["online"] == true {
		t.Fatalf("presence %v, want not online", p)
	}
}

// TestAttackMQTTAuthHookWithoutClientID: the HTTP hook for an external
// broker. EMQX's default body sends only username and password; the hook
// let that through, so device A could connect as B's client id there. Now
// auth and ACL requests without a client id, or with another one, are
// denied, and the refusal names the placeholder to configure.
func TestAttackMQTTAuthHookWithoutClientID(t *testing.T) {
	influx := startInflux(t)
	const secret = "attack-broker-secret"
	h := startHub(t, influx, map[string]string{"FIELDHUB_MQTT_AUTH_SECRET": secret})
	tok := h.createDevice(t, "atk-h")
	tests := []struct {
		name, path string
		body       map[string]any
		allow      bool
	}{
		{"auth, EMQX default body", "/api/v1/mqtt/auth", map[string]any{"username": "atk-h", "password": tok}, false},
		{"auth, empty client id", "/api/v1/mqtt/auth", map[string]any{"username": "atk-h", "password": tok, "clientid": ""}, false},
		{"auth, another client id", "/api/v1/mqtt/auth", map[string]any{"username": "atk-h", "password": tok, "clientid": "atk-other"}, false},
		{"auth, own client id", "/api/v1/mqtt/auth", map[string]any{"username": "atk-h", "password": tok, "clientid": "atk-h"}, true},
		{"acl, no client id", "/api/v1/mqtt/acl", map[string]any{"username": "atk-h", "topic": "devices/atk-h/telemetry", "action": "publish"}, false},
		{"acl, another client id", "/api/v1/mqtt/acl", map[string]any{"username": "atk-h", "clientid": "atk-other", "topic": "devices/atk-h/telemetry", "action": "publish"}, false},
		{"acl, own client id", "/api/v1/mqtt/acl", map[string]any{"username": "atk-h", "clientid": "atk-h", "topic": "devices/atk-h/telemetry", "action": "publish"}, true},
	}
	for _, tt := range tests {
		st, m := h.api(t, "POST", tt.path, secret, tt.body)
		if st != 200 || (m["result"] == "allow") != tt.allow {
			t.Errorf("%s: %d %v, want allow=%v", tt.name, st, m, tt.allow)
		}
	}
	if _, m := h.api(t, "POST", "/api/v1/mqtt/auth", secret, tests[0].body); !strings.Contains(fmt.Sprint(m["error"]), "${clientid}") {
		t.Errorf("refusal without a client id: %v, want it to name ${clientid}", m)
	}
}
