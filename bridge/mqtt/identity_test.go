package mqtt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	pahov5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldhub/fieldhub/devices"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestClientIDIsDeviceID is the client id policy as a table: the client
// id must be the device id (the username); an empty one is assigned it;
// anything else gets 0x02 (3.1.1 §3.2.2.3) / 0x85 (5.0 §3.2.2.2) before
// authentication, and mochi's inline client id is never a device's.
func TestClientIDIsDeviceID(t *testing.T) {
	var logs lockedBuf
	r := newRig(t, Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	c, err := r.reg.Create(context.Background(), devices.Spec{ID: mqtt.InlineClientId})
	if err != nil {
		t.Fatal(err)
	}
	r.tokens[mqtt.InlineClientId] = c.Token
	tests := []struct {
		name, clientID, user string
		token                string // default: user's own
		ok                   bool
		want                 string // the id the broker knows the client by
	}{
		{name: "own device id", clientID: "d1", user: "d1", ok: true, want: "d1"},
		{name: "empty: assigned the device id", clientID: "", user: "d1", ok: true, want: "d1"},
		{name: "another device's id", clientID: "d2", user: "d1"},
		{name: "a made-up id", clientID: "d1-client", user: "d1"},
		{name: "a case variant", clientID: "D1", user: "d1"},
		{name: "another device's id, wrong token", clientID: "d2", user: "d1", token: "fhd_wrong"},
		{name: "the inline client's id", clientID: mqtt.InlineClientId, user: mqtt.InlineClientId},
		{name: "empty, as the inline client", clientID: "", user: mqtt.InlineClientId},
	}
	for _, tt := range tests {
		token := tt.token
		if token == "" {
			token = r.tokens[tt.user]
		}
		t.Run(tt.name+"/v3", func(t *testing.T) {
			o := paho.NewClientOptions().AddBroker("tcp://" + r.addr).SetClientID(tt.clientID).SetUsername(tt.user).SetPassword(token).
				SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
			c := paho.NewClient(o)
			tok := c.Connect()
			tok.WaitTimeout(5 * time.Second)
			defer c.Disconnect(50)
			rc := tok.(*paho.ConnectToken).ReturnCode()
			if tt.ok {
				if tok.Error() != nil {
					t.Fatalf("refused: %v", tok.Error())
				}
				if _, ok := r.broker.srv.Clients.Get(tt.want); !ok {
					t.Fatalf("broker does not know the client as %q", tt.want)
				}
				return
			}
			if tok.Error() == nil || rc != packets.Err3ClientIdentifierNotValid.Code {
				t.Fatalf("return code %#x (err %v), want 0x02", rc, tok.Error())
			}
		})
		t.Run(tt.name+"/v5", func(t *testing.T) {
			conn, err := net.Dial("tcp", r.addr)
			if err != nil {
				t.Fatal(err)
			}
			c := pahov5.NewClient(pahov5.ClientConfig{Conn: conn})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			ca, err := c.Connect(ctx, &pahov5.Connect{ClientID: tt.clientID, Username: tt.user, UsernameFlag: true, Password: []byte(token), PasswordFlag: true, KeepAlive: 30, CleanStart: true})
			defer func() { _ = c.Disconnect(&pahov5.Disconnect{}); conn.Close() }()
			if tt.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if tt.clientID == "" && (ca.Properties == nil || ca.Properties.AssignedClientID != tt.want) {
					t.Fatalf("CONNACK assigned client id %+v, want %q", ca.Properties, tt.want)
				}
				return
			}
			if err == nil || ca == nil || ca.ReasonCode != packets.ErrClientIdentifierNotValid.Code {
				t.Fatalf("CONNACK %+v (err %v), want 0x85", ca, err)
			}
		})
	}
	if !strings.Contains(logs.String(), `msg="mqtt client id refused" device=d1 client_id=d2`) {
		t.Fatalf("no log line for a refused client id:\n%s", logs.String())
	}
	// The inline client (the hub's own publisher) was never taken over.
	if err := r.broker.Publish("devices/d1/errors", []byte("{}"), 0); err != nil {
		t.Fatalf("hub publish after the attempts: %v", err)
	}
}

// TestMochiLogHandler: whatever mochi hands its logger, a line stays short
// and never carries a payload; our hook's refusals are logged by the hook.
func TestMochiLogHandler(t *testing.T) {
	big := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "devices/d1/telemetry",
		Payload: bytes.Repeat([]byte("x"), 4096)}
	cl := &mqtt.Client{ID: "d1"}
	tests := []struct {
		name string
		log  func(*slog.Logger)
		want string // "" = no line
	}{
		{"our refusal: dropped", func(l *slog.Logger) {
			l.Error("publish packet error", "error", packets.ErrPayloadFormatInvalid, "hook", hookID, "packet", big)
		}, ""},
		{"another hook's: summarised", func(l *slog.Logger) {
			l.Error("publish packet error", "error", packets.ErrPayloadFormatInvalid, "hook", "other", "packet", big)
		}, "packet.topic=devices/d1/telemetry"},
		{"packet pointer", func(l *slog.Logger) { l.Error("x", "pk", &big) }, "pk.bytes=4096"},
		{"will", func(l *slog.Logger) {
			l.Error("parse will error", "will", mqtt.Will{TopicName: "devices/d1/telemetry", Payload: big.Payload})
		}, "will.bytes=4096"},
		{"client in With", func(l *slog.Logger) { l.With("cl", cl).Error("x") }, "cl=d1"},
		{"other struct", func(l *slog.Logger) { l.Error("x", "subs", struct{ B []byte }{big.Payload}) }, `subs="struct {`},
		{"error kept", func(l *slog.Logger) { l.Error("x", "error", errors.New("boom")) }, "error=boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			tt.log(slog.New(mochiLogHandler{slog.NewTextHandler(&buf, nil)}))
			out := buf.String()
			if tt.want == "" {
				if out != "" {
					t.Fatalf("logged %q", out)
				}
				return
			}
			if strings.Count(out, "\n") != 1 || len(out) > 300 || strings.Contains(out, "xxxx") || !strings.Contains(out, tt.want) {
				t.Fatalf("line (%d bytes) %.400q, want one short line with %q", len(out), out, tt.want)
			}
		})
	}
}

// rawConnect sends one hand-built CONNECT (level 4 = MQTT 3.1.1, 5 = MQTT
// 5, no properties) and returns the connection and the CONNACK's bytes (nil
// if none came), for what real clients refuse to send: mosquitto_pub
// 2.0.11 will not send -V mqttv311 -c without -i ("You must provide a
// client id if you are using the -c option"). user "" sends no username;
// will, when set, is {topic, payload} at QoS 1.
func rawConnect(t *testing.T, addr string, level byte, clean bool, id, user, pass string, will *[2]string) (net.Conn, []byte) {
	t.Helper()
	str := func(b []byte, s string) []byte { return append(binary.BigEndian.AppendUint16(b, uint16(len(s))), s...) }
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	vh := append(str(nil, "MQTT"), level)
	var flags byte
	if clean {
		flags |= 0x02
	}
	if will != nil {
		flags |= 0x04 | 0x08
	}
	if user != "" {
		flags |= 0x80
	}
	if pass != "" {
		flags |= 0x40
	}
	vh = append(vh, flags, 0, 30) // keep-alive 30 s
	if level == 5 {
		vh = append(vh, 0)
	}
	vh = str(vh, id)
	if will != nil {
		if level == 5 {
			vh = append(vh, 0)
		}
		vh = str(str(vh, will[0]), will[1])
	}
	if user != "" {
		vh = str(vh, user)
	}
	if pass != "" {
		vh = str(vh, pass)
	}
	pk := []byte{0x10}
	for n := len(vh); ; n >>= 7 { // remaining length, variable byte integer
		if n < 0x80 {
			pk = append(pk, byte(n))
			break
		}
		pk = append(pk, byte(n&0x7f|0x80))
	}
	if _, err := c.Write(append(pk, vh...)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h := make([]byte, 2)
	if _, err := io.ReadFull(c, h); err != nil || h[0] != 0x20 {
		return c, nil
	}
	body := make([]byte, h[1])
	if _, err := io.ReadFull(c, body); err != nil {
		return c, nil
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, append(h, body...)
}

// TestV3EmptyClientIDPersistentSession: MQTT 3.1.1 allows an empty client
// id only with clean session on, and wants return code 0x02 otherwise
// (§3.1.3-8); 0x80, what mochi answers by itself, is no 3.1.1 return code.
// The hub's contract assigns an empty client id the device id, so such a
// CONNECT is accepted as the device's own persistent session, resumed by
// the device alone; without a username (nothing to assign) it gets 0x02.
func TestV3EmptyClientIDPersistentSession(t *testing.T) {
	r := newRig(t, Options{})

	// paho.mqtt.golang, 3.1.1, CleanSession false, no client id.
	o := paho.NewClientOptions().AddBroker("tcp://" + r.addr).SetClientID("").SetUsername("d1").SetPassword(r.tokens["d1"]).
		SetProtocolVersion(4).SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	pc := paho.NewClient(o)
	tok := pc.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("paho 3.1.1, clean session off, empty client id: %v (return code %#x)", tok.Error(), tok.(*paho.ConnectToken).ReturnCode())
	}
	if cl, ok := r.broker.srv.Clients.Get("d1"); !ok || string(cl.Properties.Username) != "d1" {
		t.Fatalf("broker does not know the session as d1's (found %v)", ok)
	}
	pc.Disconnect(50)
	waitFor(t, "paho's session to end", func() bool { cl, ok := r.broker.srv.Clients.Get("d1"); return ok && cl.Closed() })

	tests := []struct {
		name       string
		level      byte
		user, pass string
		ack        []byte // the whole CONNACK; 5: the first 4 bytes
	}{
		{"3.1.1: the device resumes its own session", 4, "d1", r.tokens["d1"], []byte{0x20, 0x02, 0x01, 0x00}},
		{"3.1.1: another device gets its own", 4, "d2", r.tokens["d2"], []byte{0x20, 0x02, 0x00, 0x00}},
		{"3.1.1: wrong token", 4, "d1", "fhd_wrong", []byte{0x20, 0x02, 0x00, 0x05}},
		{"3.1.1: no username, nothing to assign", 4, "", "", []byte{0x20, 0x02, 0x00, 0x02}},
		{"5: the device resumes its own session", 5, "d1", r.tokens["d1"], []byte{0x20, 0, 0x01, 0x00}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ack := rawConnect(t, r.addr, tt.level, false, "", tt.user, tt.pass, nil)
			defer c.Close()
			n := len(tt.ack)
			if tt.level == 5 && len(ack) >= 4 {
				ack[1] = 0 // properties make the length vary
				n = 4
			}
			if len(ack) < n || !bytes.Equal(ack[:n], tt.ack) {
				t.Fatalf("CONNACK % x, want % x", ack, tt.ack)
			}
		})
	}
}

// TestWillsBlocked: mochi publishes a last will straight to subscribers,
// without the ACL, so OnConnect clearing it is all that keeps device d1
// from leaving a "reboot" on d2's commands topic (or readings on d2's
// telemetry) for when its connection drops.
func TestWillsBlocked(t *testing.T) {
	r := newRig(t, Options{})
	got := make(chan string, 16)
	subscribed := make(chan struct{})
	_, tok := r.v3(t, "d2", r.tokens["d2"], func(o *paho.ClientOptions) {
		o.SetOnConnectHandler(func(c paho.Client) {
			go func() { // owner: this test; ends when the SUBACK comes or the client goes
				if st := c.Subscribe("devices/d2/commands", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }); st.WaitTimeout(10*time.Second) && st.Error() == nil {
					close(subscribed)
				}
			}()
		})
	})
	if tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("d2 not subscribed to its commands within 10s")
	}
	before := r.stored(t)
	wills := [][2]string{
		{"devices/d2/commands", `{"id":"will-1","name":"reboot"}`},
		{"devices/d2/telemetry", `{"metrics":{"will":1}}`},
		{"devices/d1/telemetry", `{"metrics":{"will":1}}`},
	}
	for i, w := range wills {
		c, ack := rawConnect(t, r.addr, 4, true, "d1", "d1", r.tokens["d1"], &w)
		if !bytes.Equal(ack, []byte{0x20, 0x02, 0x00, 0x00}) {
			t.Fatalf("d1 with a will on %s: CONNACK % x", w[0], ack)
		}
		waitFor(t, "d1's session", func() bool { _, ok := r.broker.srv.Clients.Get("d1"); return ok })
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close() // no DISCONNECT: a will would be sent now
		// mochi sends the will before it forgets the client.
		waitFor(t, "d1's session to end", func() bool { _, ok := r.broker.srv.Clients.Get("d1"); return !ok })
		// A marker after it, on the same topic: d2 sees the will first if
		// there is one.
		marker := fmt.Sprintf(`{"id":"marker-%d","name":"noop"}`, i)
		if err := r.broker.Publish("devices/d2/commands", []byte(marker), 1); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-got:
			if m != marker {
				t.Fatalf("d2 received d1's will (%s): %s", w[0], m)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("d2 did not receive the marker within 10s")
		}
	}
	if after := r.stored(t); after != before {
		t.Fatalf("a will was stored as telemetry: %d -> %d points", before, after)
	}
}
