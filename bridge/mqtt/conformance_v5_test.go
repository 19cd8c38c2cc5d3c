package mqtt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	pahov5 "github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

// MQTT 5 conformance of the device gateway with a third-party client,
// eclipse/paho.golang, where paho lets the test say what it wants; the
// rest is in conformance_raw_test.go. Each test names the contract line
// (issue #20) and the MQTT 5.0 section it checks.

// paho5 is a paho.golang connection with what the server sent on the side.
type paho5 struct {
	c    *pahov5.Client
	ack  *pahov5.Connack
	disc chan *pahov5.Disconnect // the server's DISCONNECT
	msgs chan *pahov5.Publish    // PUBLISHes received
	gone chan error              // the connection failed
}

// connect5 is device id's CONNECT with its own credentials, clean start.
// Properties are left nil (paho then sends none): with Properties set,
// paho sends Request Problem Information 0 unless told otherwise.
func connect5(id, token string) *pahov5.Connect {
	return &pahov5.Connect{ClientID: id, Username: id, UsernameFlag: true, Password: []byte(token), PasswordFlag: true, KeepAlive: 30, CleanStart: true}
}

// dial5 connects cp with paho; the connection ends at cleanup.
func (r *rig) dial5(t *testing.T, cp *pahov5.Connect) (*paho5, error) {
	t.Helper()
	conn, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &paho5{disc: make(chan *pahov5.Disconnect, 1), msgs: make(chan *pahov5.Publish, 64), gone: make(chan error, 1)}
	p.c = pahov5.NewClient(pahov5.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(pahov5.PublishReceived) (bool, error){func(pr pahov5.PublishReceived) (bool, error) {
			select {
			case p.msgs <- pr.Packet:
			default: // the test reads far fewer; never block paho
			}
			return true, nil
		}},
		OnServerDisconnect: func(d *pahov5.Disconnect) {
			select {
			case p.disc <- d:
			default:
			}
		},
		OnClientError: func(err error) {
			select {
			case p.gone <- err:
			default:
			}
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	p.ack, err = p.c.Connect(ctx, cp)
	t.Cleanup(func() { _ = p.c.Disconnect(&pahov5.Disconnect{}); conn.Close() })
	return p, err
}

// ok5 is dial5 that must be accepted.
func (r *rig) ok5(t *testing.T, cp *pahov5.Connect) *paho5 {
	t.Helper()
	p, err := r.dial5(t, cp)
	if err != nil {
		t.Fatalf("connect %s: %v (CONNACK %+v)", cp.ClientID, err, p.ack)
	}
	return p
}

// wantDisconnect waits for the server's DISCONNECT with code.
func (p *paho5) wantDisconnect(t *testing.T, code byte) {
	t.Helper()
	select {
	case d := <-p.disc:
		if d.ReasonCode != code {
			t.Fatalf("DISCONNECT %#02x, want %#02x", d.ReasonCode, code)
		}
	case err := <-p.gone:
		t.Fatalf("connection ended without DISCONNECT %#02x: %v", code, err)
	case <-time.After(patience):
		t.Fatalf("no DISCONNECT %#02x within %s", code, patience)
	}
}

func (p *paho5) publish(t *testing.T, topic string, qos byte, payload string) *pahov5.PublishResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	pr, err := p.c.Publish(ctx, &pahov5.Publish{Topic: topic, QoS: qos, Payload: []byte(payload)})
	if err != nil && pr == nil {
		t.Fatalf("publish to %s: %v", topic, err)
	}
	return pr
}

func (p *paho5) subscribe(t *testing.T, filter string, qos byte) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	sa, err := p.c.Subscribe(ctx, &pahov5.Subscribe{Subscriptions: []pahov5.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if sa == nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return sa.Reasons
}

// nextError waits for an error frame on devices/{id}/errors.
func (p *paho5) nextError(t *testing.T, id string) string {
	t.Helper()
	for deadline := time.After(patience); ; {
		select {
		case m := <-p.msgs:
			if m.Topic == "devices/"+id+"/errors" {
				return string(m.Payload)
			}
		case <-deadline:
			t.Fatalf("no error frame on devices/%s/errors within %s", id, patience)
		}
	}
}

// TestV5ConnackReasonCodes: CONNACK reason codes (contract "Connect";
// MQTT 5.0 §3.2.2.2).
func TestV5ConnackReasonCodes(t *testing.T) {
	r := newRig(t, Options{})
	u16 := func(v uint16) *uint16 { return &v }
	will := func(topic string, qos byte, retain bool) func(*pahov5.Connect) {
		return func(cp *pahov5.Connect) {
			cp.WillMessage = &pahov5.WillMessage{Topic: topic, QoS: qos, Retain: retain, Payload: []byte(`{"metrics":{"will":1}}`)}
		}
	}
	tests := []struct {
		name     string
		tweak    func(*pahov5.Connect)
		code     byte
		assigned string
	}{
		{"own credentials", nil, 0x00, ""},
		{"wrong token", func(cp *pahov5.Connect) { cp.Password = []byte("fhd_wrong") }, 0x86, ""},
		{"another device's token", func(cp *pahov5.Connect) { cp.Password = []byte(r.tokens["d2"]) }, 0x86, ""},
		{"empty password", func(cp *pahov5.Connect) { cp.Password = nil }, 0x86, ""},
		{"no credentials, empty client id", func(cp *pahov5.Connect) {
			cp.ClientID, cp.Username, cp.UsernameFlag, cp.Password, cp.PasswordFlag = "", "", false, nil, false
		}, 0x86, ""},
		{"another device's client id", func(cp *pahov5.Connect) { cp.ClientID = "d2" }, 0x85, ""},
		{"a made-up client id", func(cp *pahov5.Connect) { cp.ClientID = "d1-x" }, 0x85, ""},
		{"empty client id: assigned", func(cp *pahov5.Connect) { cp.ClientID = "" }, 0x00, "d1"},
		{"Receive Maximum 0", func(cp *pahov5.Connect) {
			cp.Properties = &pahov5.ConnectProperties{ReceiveMaximum: u16(0), RequestProblemInfo: true}
		}, 0x82, ""},
		{"will on own telemetry", will("devices/d1/telemetry", 1, false), 0x00, ""},
		{"will on own command results, QoS 2", will("devices/d1/commands/result", 2, false), 0x00, ""},
		{"will with retain 1", will("devices/d1/telemetry", 1, true), 0x9A, ""},
		{"will on another device's telemetry", will("devices/d2/telemetry", 1, false), 0x87, ""},
		{"will on own commands", will("devices/d1/commands", 0, false), 0x87, ""},
		{"will on $SYS", will("$SYS/x", 0, false), 0x87, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp := connect5("d1", r.tokens["d1"])
			if tt.tweak != nil {
				tt.tweak(cp)
			}
			p, err := r.dial5(t, cp)
			if p.ack == nil {
				t.Fatalf("no CONNACK: %v", err)
			}
			if p.ack.ReasonCode != tt.code {
				t.Fatalf("CONNACK %#02x (%+v), want %#02x", p.ack.ReasonCode, p.ack.Properties, tt.code)
			}
			if tt.code == 0 && tt.assigned != "" && (p.ack.Properties == nil || p.ack.Properties.AssignedClientID != tt.assigned) {
				t.Fatalf("Assigned Client Identifier %+v, want %q", p.ack.Properties, tt.assigned)
			}
			if tt.code == 0 {
				_ = p.c.Disconnect(&pahov5.Disconnect{})
				waitFor(t, "d1 offline", func() bool { d, _ := r.reg.Get("d1"); return !d.Online })
			}
		})
	}
}

// TestV5QoSLevels: QoS 0 is processed, QoS 1 and 2 are acknowledged once
// durable (contract "Publish in"; MQTT 5.0 §4.3).
func TestV5QoSLevels(t *testing.T) {
	r := newRig(t, Options{})
	p := r.ok5(t, connect5("d1", r.tokens["d1"]))
	for i, qos := range []byte{0, 1, 2, 1, 2, 0} {
		pr := p.publish(t, "devices/d1/telemetry", qos, fmt.Sprintf(`{"id":"%d","metrics":{"temp":%d}}`, i, i))
		if qos == 0 {
			waitFor(t, "the QoS 0 reading", func() bool { return r.stored(t) == i+1 })
			continue
		}
		if pr.ReasonCode != 0 {
			t.Fatalf("QoS %d: reason %#02x", qos, pr.ReasonCode)
		}
		if n := r.stored(t); n != i+1 {
			t.Fatalf("QoS %d acknowledged with %d readings durable, want %d", qos, n, i+1)
		}
	}
}

// TestV5PubackReasonCodes: a refused QoS 1 or 2 publish gets its reason
// code on PUBACK / PUBREC, with a reason string carrying the field path;
// never 0x96 (contract "QoS 1", "Topics the device may publish"; MQTT 5.0
// §3.4.2.1, §3.5.2.1).
func TestV5PubackReasonCodes(t *testing.T) {
	r := newRig(t, Options{})
	p := r.ok5(t, connect5("d1", r.tokens["d1"]))
	const own = "devices/d1/telemetry"
	tests := []struct {
		name, topic, payload string
		qos                  byte
		spoolErr             error // the store refuses with it
		code                 byte
		reason               string // in the reason string
	}{
		{"bad JSON", own, `{"metrics":{"temp":`, 1, nil, 0x99, "bad_json"},
		{"invalid field", own, `{"metrics":{"temp":null}}`, 1, nil, 0x99, "metrics.temp"},
		{"invalid field, QoS 2", own, `{"metrics":{"temp":null}}`, 2, nil, 0x99, "metrics.temp"},
		{"unknown type", own, `{"type":"bogus","metrics":{"temp":1}}`, 1, nil, 0x99, "unknown_type"},
		{"spool full", own, `{"metrics":{"temp":1}}`, 1, spool.ErrFull, 0x97, "overloaded"},
		{"spool full, QoS 2", own, `{"metrics":{"temp":1}}`, 2, spool.ErrFull, 0x97, "overloaded"},
		{"store too slow", own, `{"metrics":{"temp":1}}`, 1, fmt.Errorf("%w: %w", spool.ErrMaybeStored, context.DeadlineExceeded), 0x97, "overloaded"},
		{"store failed", own, `{"metrics":{"temp":1}}`, 1, errors.New("disk on fire"), 0x97, "internal"},
		// Not in the contract's table: whatever the code, it must be one
		// a PUBACK may carry (§3.4.2.1); 0x95 is not.
		{"store says too large", own, `{"metrics":{"temp":1}}`, 1, spool.ErrTooLarge, anyRefusal, "too_large"},
		{"$SYS", "$SYS/x", `{"metrics":{"temp":1}}`, 1, nil, 0x87, ""},
		{"another device's telemetry", "devices/d2/telemetry", `{"metrics":{"temp":1}}`, 1, nil, 0x87, ""},
		{"another device's telemetry, QoS 2", "devices/d2/telemetry", `{"metrics":{"temp":1}}`, 2, nil, 0x87, ""},
		{"another device's command results", "devices/d2/commands/result", `{"id":"x","status":"ok"}`, 1, nil, 0x87, ""},
		{"own commands", "devices/d1/commands", `{"metrics":{"temp":1}}`, 1, nil, 0x87, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.spoolErr != nil {
				r.store.refuseWith.Store(&tt.spoolErr)
				r.store.refuse.Store(1)
				defer r.store.refuse.Store(0)
			}
			pr := p.publish(t, tt.topic, tt.qos, tt.payload)
			if tt.code == anyRefusal {
				if pr.ReasonCode < 0x80 || !bytes.Contains(legalReasons[packets.Puback], []byte{pr.ReasonCode}) {
					t.Fatalf("reason %#02x (%+v), want a refusal a PUBACK may carry", pr.ReasonCode, pr.Properties)
				}
			} else if pr.ReasonCode != tt.code {
				t.Fatalf("reason %#02x (%+v), want %#02x", pr.ReasonCode, pr.Properties, tt.code)
			}
			if tt.reason != "" && (pr.Properties == nil || !strings.Contains(pr.Properties.ReasonString, tt.reason) || len(pr.Properties.ReasonString) > 256) {
				t.Fatalf("reason string %+v, want one with %q", pr.Properties, tt.reason)
			}
			if n := r.stored(t); n != 0 {
				t.Fatalf("refused publish stored: %d readings", n)
			}
		})
	}
}

// anyRefusal in a test table: any refusal code the packet may carry.
const anyRefusal = 0xff

// TestV5RateLimitQuotaExceeded: a rate-limited publish is PUBACK 0x97
// Quota exceeded, never 0x96 (which is no PUBACK code: §3.4.2.1), and the
// connection stays.
func TestV5RateLimitQuotaExceeded(t *testing.T) {
	r := newRig(t, Options{}, func(o *bridge.Options) { o.RatePerSec, o.Burst = 0.001, 2 })
	p := r.ok5(t, connect5("d1", r.tokens["d1"]))
	for i, want := range []byte{0x00, 0x00, 0x97, 0x97} {
		pr := p.publish(t, "devices/d1/telemetry", 1, fmt.Sprintf(`{"id":"%d","metrics":{"temp":%d}}`, i, i))
		if pr.ReasonCode != want {
			t.Fatalf("publish %d: reason %#02x (%+v), want %#02x", i, pr.ReasonCode, pr.Properties, want)
		}
		if want == 0x97 && (pr.Properties == nil || !strings.Contains(pr.Properties.ReasonString, "rate_limited")) {
			t.Fatalf("publish %d: reason string %+v, want rate_limited", i, pr.Properties)
		}
	}
	if n := r.stored(t); n != 2 {
		t.Fatalf("%d readings, want 2", n)
	}
}

// TestV5QoS0RefusalErrorFrame: a refused QoS 0 publish is dropped and the
// device told on its errors topic (contract "QoS 0").
func TestV5QoS0RefusalErrorFrame(t *testing.T) {
	r := newRig(t, Options{})
	p := r.ok5(t, connect5("d1", r.tokens["d1"]))
	if got := p.subscribe(t, "devices/d1/errors", 1); len(got) != 1 || got[0] != 1 {
		t.Fatalf("subscribe errors: % x", got)
	}
	p.publish(t, "devices/d1/telemetry", 0, `{"id":"m1","metrics":{"temp":null}}`)
	if e := p.nextError(t, "d1"); !strings.Contains(e, `"type":"error"`) || !strings.Contains(e, "metrics.temp") || !strings.Contains(e, "m1") {
		t.Fatalf("error frame %s", e)
	}
	p.publish(t, "devices/d2/telemetry", 0, `{"metrics":{"temp":1}}`)
	if e := p.nextError(t, "d1"); !strings.Contains(e, `"type":"error"`) {
		t.Fatalf("error frame %s", e)
	}
	if n := r.stored(t); n != 0 {
		t.Fatalf("stored %d", n)
	}
}

// TestV5UserPropertiesNotEchoed: 180 KB of user properties on a PUBLISH
// are ignored and never echoed, accepted or refused (contract "v5 user
// properties ... never echoed").
func TestV5UserPropertiesNotEchoed(t *testing.T) {
	r := newRig(t, Options{})
	p := r.ok5(t, connect5("d1", r.tokens["d1"]))
	var user pahov5.UserProperties
	for i := range 180 {
		user = append(user, pahov5.UserProperty{Key: fmt.Sprintf("k%03d", i), Value: strings.Repeat("v", 1000)})
	}
	for _, tt := range []struct {
		payload string
		code    byte
	}{{`{"metrics":{"temp":1}}`, 0x00}, {`{"metrics":{"temp":null}}`, 0x99}} {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		pr, err := p.c.Publish(ctx, &pahov5.Publish{Topic: "devices/d1/telemetry", QoS: 1, Payload: []byte(tt.payload), Properties: &pahov5.PublishProperties{User: user}})
		cancel()
		if pr == nil {
			t.Fatalf("publish: %v", err)
		}
		if pr.ReasonCode != tt.code || pr.Properties != nil && len(pr.Properties.User) > 0 {
			t.Fatalf("PUBACK reason %#02x with %d user properties, want %#02x and none", pr.ReasonCode, len(pr.Properties.User), tt.code)
		}
	}
	if n := r.stored(t); n != 1 {
		t.Fatalf("stored %d", n)
	}
}

// TestV5Supersede: a new connection of the device takes the session over;
// the old one gets DISCONNECT 0x8E (contract "One session per device";
// MQTT 5.0 §3.1.4 [MQTT-3.1.4-3]).
func TestV5Supersede(t *testing.T) {
	r := newRig(t, Options{})
	old := r.ok5(t, connect5("d1", r.tokens["d1"]))
	cur := r.ok5(t, connect5("d1", r.tokens["d1"]))
	old.wantDisconnect(t, 0x8E)
	if pr := cur.publish(t, "devices/d1/telemetry", 1, `{"metrics":{"temp":1}}`); pr.ReasonCode != 0 {
		t.Fatalf("new session's publish: %#02x", pr.ReasonCode)
	}
	if d, _ := r.reg.Get("d1"); !d.Online {
		t.Fatal("d1 offline after the takeover")
	}
}

// TestV5SubscribeUnsubscribe with paho: own topics granted QoS
// min(requested, 1), another device's 0x87; UNSUBACK 0x00, then 0x11 No
// subscription existed (contract "Subscribe"; MQTT 5.0 §3.9.3, §3.11.3).
func TestV5SubscribeUnsubscribe(t *testing.T) {
	r := newRig(t, Options{})
	p := r.ok5(t, connect5("d1", r.tokens["d1"]))
	for _, tt := range []struct {
		filter string
		qos    byte
		want   byte
	}{
		{"devices/d1/commands", 2, 0x01},
		{"devices/d1/errors", 0, 0x00},
		{"devices/d2/commands", 1, 0x87},
		{"devices/d2/errors", 0, 0x87},
	} {
		if got := p.subscribe(t, tt.filter, tt.qos); len(got) != 1 || got[0] != tt.want {
			t.Errorf("subscribe %s QoS %d: % x, want %#02x", tt.filter, tt.qos, got, tt.want)
		}
	}
	for _, want := range []byte{0x00, 0x11} {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		ua, err := p.c.Unsubscribe(ctx, &pahov5.Unsubscribe{Topics: []string{"devices/d1/commands"}})
		cancel()
		if ua == nil || len(ua.Reasons) != 1 || ua.Reasons[0] != want {
			t.Fatalf("unsubscribe: %+v (%v), want %#02x", ua, err, want)
		}
	}
}

// TestV5Revocation: a device whose token stops working while connected
// gets DISCONNECT 0x87 (contract "Server DISCONNECT ... 0x87 revoked").
func TestV5Revocation(t *testing.T) {
	tests := []struct {
		name   string
		revoke func(r *rig) error
	}{
		{"token rotated", func(r *rig) error { _, err := r.reg.Rotate(context.Background(), "d1", 0); return err }},
		{"device deleted", func(r *rig) error { return r.reg.Delete(context.Background(), "d1") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, Options{})
			p := r.ok5(t, connect5("d1", r.tokens["d1"]))
			waitFor(t, "d1 online", func() bool { d, _ := r.reg.Get("d1"); return d.Online })
			if err := tt.revoke(r); err != nil {
				t.Fatal(err)
			}
			p.wantDisconnect(t, 0x87)
		})
	}
}

// TestV5Shutdown: shutting down sends DISCONNECT 0x8B (contract "Server
// DISCONNECT ... 0x8B shutdown"), whether the hub closes its sessions
// first or the broker's Run just ends.
func TestV5Shutdown(t *testing.T) {
	tests := []struct {
		name string
		stop func(r *rig)
	}{
		{"the hub closes its sessions", func(r *rig) { r.br.CloseAll(bridge.ReasonServerShutdown) }},
		{"Run's context ends", func(r *rig) { r.shutdown() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, Options{})
			p := r.ok5(t, connect5("d1", r.tokens["d1"]))
			waitFor(t, "d1 online", func() bool { d, _ := r.reg.Get("d1"); return d.Online })
			tt.stop(r)
			p.wantDisconnect(t, 0x8B)
		})
	}
}

// TestV5DebugWatcher: "{id}:errors" with the device's credentials watches
// its error frames beside it: no takeover, not presence, clean session
// forced, read-only, at most 4, closed when the token stops working
// (contract "Debug watcher").
func TestV5DebugWatcher(t *testing.T) {
	r := newRig(t, Options{})
	dev := r.ok5(t, connect5("d1", r.tokens["d1"]))
	if got := dev.subscribe(t, "devices/d1/errors", 0); len(got) != 1 || got[0] != 0 {
		t.Fatalf("device subscribe errors: % x", got)
	}
	watch := func() *pahov5.Connect {
		cp := connect5("d1", r.tokens["d1"])
		cp.ClientID, cp.CleanStart = "d1:errors", false
		return cp
	}
	w := r.ok5(t, watch())
	if w.ack.SessionPresent {
		t.Fatal("watcher: session present 1, want a clean session")
	}
	// The device was not taken over.
	if pr := dev.publish(t, "devices/d1/telemetry", 1, `{"metrics":{"temp":1}}`); pr.ReasonCode != 0 {
		t.Fatalf("device publish beside the watcher: %#02x", pr.ReasonCode)
	}
	select {
	case d := <-dev.disc:
		t.Fatalf("device got DISCONNECT %#02x when the watcher connected", d.ReasonCode)
	default:
	}

	for _, tt := range []struct {
		filter string
		want   byte
	}{{"devices/d1/errors", 0x01}, {"devices/d1/commands", 0x87}, {"devices/d2/errors", 0x87}} {
		if got := w.subscribe(t, tt.filter, 1); len(got) != 1 || got[0] != tt.want {
			t.Errorf("watcher subscribe %s: % x, want %#02x", tt.filter, got, tt.want)
		}
	}
	for _, topic := range []string{"devices/d1/telemetry", "devices/d1/commands/result"} {
		if pr := w.publish(t, topic, 1, `{"metrics":{"temp":2}}`); pr.ReasonCode != 0x87 {
			t.Errorf("watcher publish to %s: %#02x, want 0x87", topic, pr.ReasonCode)
		}
	}
	if n := r.stored(t); n != 1 {
		t.Fatalf("stored %d, want the device's one", n)
	}

	// An error frame the device gets reaches the watcher too.
	dev.publish(t, "devices/d1/telemetry", 0, `{"id":"e1","metrics":{"temp":null}}`)
	for who, p := range map[string]*paho5{"device": dev, "watcher": w} {
		if e := p.nextError(t, "d1"); !strings.Contains(e, "metrics.temp") || !strings.Contains(e, "e1") {
			t.Fatalf("%s's error frame %s", who, e)
		}
	}

	// At most 4 watchers per device.
	watchers := []*paho5{w}
	for range 3 {
		watchers = append(watchers, r.ok5(t, watch()))
	}
	if p, _ := r.dial5(t, watch()); p.ack == nil || p.ack.ReasonCode != 0x97 {
		t.Fatalf("fifth watcher: CONNACK %+v, want 0x97", p.ack)
	}

	// Watchers are not presence: the device leaving makes it offline.
	_ = dev.c.Disconnect(&pahov5.Disconnect{})
	waitFor(t, "d1 offline with watchers connected", func() bool { d, _ := r.reg.Get("d1"); return !d.Online })

	// The token rotated: every watcher is closed.
	if _, err := r.reg.Rotate(context.Background(), "d1", 0); err != nil {
		t.Fatal(err)
	}
	for _, w := range watchers {
		w.wantDisconnect(t, 0x87)
	}
}
