package mqtt

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	pahov5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
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
// authentication.
func TestClientIDIsDeviceID(t *testing.T) {
	var logs lockedBuf
	r := newRig(t, Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
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
				waitFor(t, "the session of "+tt.want, func() bool { return r.broker.hasSession(tt.want) })
				return
			}
			if tok.Error() == nil || rc != v3IdentifierRejected {
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
			if err == nil || ca == nil || ca.ReasonCode != rcClientIDNotValid {
				t.Fatalf("CONNACK %+v (err %v), want 0x85", ca, err)
			}
		})
	}
	if !strings.Contains(logs.String(), `msg="mqtt client id refused" device=d1 client_id=d2`) {
		t.Fatalf("no log line for a refused client id:\n%s", logs.String())
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
// ([MQTT-3.1.3-8]); MQTT 5 assigns one in either case (the device id).
func TestV3EmptyClientIDPersistentSession(t *testing.T) {
	r := newRig(t, Options{})

	// paho.mqtt.golang, 3.1.1, CleanSession false, no client id.
	o := paho.NewClientOptions().AddBroker("tcp://" + r.addr).SetClientID("").SetUsername("d1").SetPassword(r.tokens["d1"]).
		SetProtocolVersion(4).SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	pc := paho.NewClient(o)
	tok := pc.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() == nil || tok.(*paho.ConnectToken).ReturnCode() != v3IdentifierRejected {
		t.Fatalf("paho 3.1.1, clean session off, empty client id: %v (return code %#x), want 0x02", tok.Error(), tok.(*paho.ConnectToken).ReturnCode())
	}

	tests := []struct {
		name       string
		level      byte
		user, pass string
		ack        []byte // the whole CONNACK; 5: the first 4 bytes
	}{
		{"3.1.1: identifier rejected", 4, "d1", r.tokens["d1"], []byte{0x20, 0x02, 0x00, 0x02}},
		{"3.1.1: wrong token, identifier checked first", 4, "d1", "fhd_wrong", []byte{0x20, 0x02, 0x00, 0x02}},
		{"3.1.1: no username", 4, "", "", []byte{0x20, 0x02, 0x00, 0x05}},
		{"5: assigned, a new session", 5, "d1", r.tokens["d1"], []byte{0x20, 0, 0x00, 0x00}},
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

// TestWills: a will is honoured through the pipeline when its topic is one
// the device may publish to (stored after an abrupt close, not after a
// normal DISCONNECT); a will on another device's topic is refused at
// CONNECT with 0x05, never published.
func TestWills(t *testing.T) {
	r := newRig(t, Options{})
	refused := [][2]string{
		{"devices/d2/commands", `{"id":"will-1","name":"reboot"}`},
		{"devices/d2/telemetry", `{"metrics":{"will":1}}`},
		{"devices/d1/commands", `{"id":"will-1","name":"reboot"}`},
		{"$SYS/x", `{}`},
	}
	for _, w := range refused {
		c, ack := rawConnect(t, r.addr, 4, true, "d1", "d1", r.tokens["d1"], &w)
		c.Close()
		if !bytes.Equal(ack, []byte{0x20, 0x02, 0x00, v3NotAuthorized}) {
			t.Fatalf("d1 with a will on %s: CONNACK % x, want 20 02 00 05", w[0], ack)
		}
	}
	before := r.stored(t)
	own := [2]string{"devices/d1/telemetry", `{"metrics":{"will":1}}`}
	c, ack := rawConnect(t, r.addr, 4, true, "d1", "d1", r.tokens["d1"], &own)
	if !bytes.Equal(ack, []byte{0x20, 0x02, 0x00, 0x00}) {
		t.Fatalf("d1 with a will on its telemetry: CONNACK % x", ack)
	}
	// A normal DISCONNECT discards the will.
	if _, err := c.Write([]byte{0xE0, 0x00}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "d1's session to end", func() bool { return !r.broker.hasSession("d1") })
	c.Close()
	if after := r.stored(t); after != before {
		t.Fatalf("will stored after a normal DISCONNECT: %d -> %d points", before, after)
	}
	c, ack = rawConnect(t, r.addr, 4, true, "d1", "d1", r.tokens["d1"], &own)
	if !bytes.Equal(ack, []byte{0x20, 0x02, 0x00, 0x00}) {
		t.Fatalf("d1 with a will on its telemetry: CONNACK % x", ack)
	}
	_ = c.(*net.TCPConn).SetLinger(0)
	c.Close() // no DISCONNECT: the will is published now
	waitFor(t, "the will stored", func() bool { return r.stored(t) == before+1 })
}
