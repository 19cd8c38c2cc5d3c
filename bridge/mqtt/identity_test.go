package mqtt

import (
	"bytes"
	"context"
	"errors"
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
