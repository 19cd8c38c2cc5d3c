package mqtt

// Conformance of the device gateway to MQTT 3.1.1 (protocol level 4) and
// to the gateway contract (issue #20), driven with third-party clients:
// paho.mqtt.golang, and a hand-driven raw client (packets built and read
// with mochi's packets codec) for what paho will not do: withhold an ack,
// reuse a packet id, send an odd CONNECT, stop talking. The mosquitto
// command-line clients are in conformance_cli_test.go.

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/devices"
)

// eventually polls cond until it holds, failing the test after patience.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", patience, what)
		}
		time.Sleep(10 * time.Millisecond) // polling, not synchronisation
	}
}

// encode returns pk's bytes (3.1.1 unless it says otherwise), with the
// fixed header flags 0b0010 PUBREL, SUBSCRIBE and UNSUBSCRIBE must have.
func encode(t *testing.T, pk packets.Packet) []byte {
	t.Helper()
	if pk.ProtocolVersion == 0 {
		pk.ProtocolVersion = 4
	}
	switch pk.FixedHeader.Type {
	case packets.Pubrel, packets.Subscribe, packets.Unsubscribe:
		pk.FixedHeader.Qos = 1
	}
	b, err := encodePacket(pk)
	if err != nil {
		t.Fatalf("encode %s: %v", packets.PacketNames[pk.FixedHeader.Type], err)
	}
	return b
}

func varint(b []byte, n int) []byte {
	for {
		if n < 0x80 {
			return append(b, byte(n))
		}
		b = append(b, byte(n&0x7f|0x80))
		n >>= 7
	}
}

// wire re-encodes a decoded 3.1.1 acknowledgement from the server, to
// compare it whole with the bytes the contract names; the remaining length
// is the one that came.
func wire(p packets.Packet) []byte {
	h := []byte{p.FixedHeader.Type << 4, byte(p.FixedHeader.Remaining)}
	id := []byte{byte(p.PacketID >> 8), byte(p.PacketID)}
	switch p.FixedHeader.Type {
	case packets.Connack:
		var sp byte
		if p.SessionPresent {
			sp = 1
		}
		return append(h, sp, p.ReasonCode)
	case packets.Puback, packets.Pubrec, packets.Pubcomp, packets.Unsuback:
		return append(h, id...)
	case packets.Suback:
		return append(append(h, id...), p.ReasonCodes...)
	}
	return h
}

// describe is a short form of a server packet for failure messages.
func describe(p packets.Packet) string {
	if p.FixedHeader.Type == packets.Publish {
		return fmt.Sprintf("PUBLISH(q%d dup=%v id=%d %s %q)", p.FixedHeader.Qos, p.FixedHeader.Dup, p.PacketID, p.TopicName, p.Payload)
	}
	return fmt.Sprintf("%s(% x)", packets.PacketNames[p.FixedHeader.Type], wire(p))
}

func describeAll(ps []packets.Packet) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = describe(p)
	}
	return "[" + strings.Join(s, " ") + "]"
}

// untilClosed reads until the server ends the connection and returns what
// came before and the read error; a connection still open after patience
// fails the test.
func (c *rawClient) untilClosed() ([]packets.Packet, error) {
	c.t.Helper()
	deadline := time.Now().Add(patience)
	var seen []packets.Packet
	for {
		p, err := c.next(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("connection still open after %s (received %s)", patience, describeAll(seen))
			}
			return seen, err
		}
		seen = append(seen, p)
	}
}

// closedByServer reports whether err is how a read ends when the server
// closed the connection: EOF, or a reset if it closed with our bytes unread.
func closedByServer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// connectPk is a 3.1.1 CONNECT with keep-alive 30 s; an empty user or
// pass leaves its flag off.
func connectPk(id, user, pass string, clean bool) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: clean, Keepalive: 30,
			Username: []byte(user), UsernameFlag: user != "", Password: []byte(pass), PasswordFlag: pass != ""}}
}

func withWill(pk packets.Packet, topic, payload string, qos byte, retain bool) packets.Packet {
	pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, topic, []byte(payload)
	pk.Connect.WillQos, pk.Connect.WillRetain = qos, retain
	return pk
}

func subscribePk(id uint16, filters ...packets.Subscription) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: id, Filters: filters}
}

func disconnectPk() packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
}

// raw3 connects a raw 3.1.1 client with pk and returns it with the
// CONNACK's bytes; it fails the test if no CONNACK comes.
func (r *rig) raw3(t *testing.T, pk packets.Packet) (*rawClient, []byte) {
	t.Helper()
	c := dialRaw(t, r.addr, 4)
	c.send(pk)
	ack := c.expect(packets.Connack)
	return c, wire(ack)
}

// device registers another device and returns its token.
func (r *rig) device(t *testing.T, id string) string {
	t.Helper()
	c, err := r.reg.Create(context.Background(), devices.Spec{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return c.Token // not kept in r.tokens: parallel subtests call this
}

// expectCommand reads until the PUBLISH of command id on device's commands
// topic and returns it; PUBLISHes of the commands in skip (redeliveries the
// command service may add: at least once) are acknowledged and passed over.
func (c *rawClient) expectCommand(device, id string, skip ...string) packets.Packet {
	c.t.Helper()
	for {
		p := c.expect(packets.Publish)
		if p.TopicName != "devices/"+device+"/commands" {
			c.t.Fatalf("PUBLISH on %s, want %s's commands", p.TopicName, device)
		}
		if bytes.Contains(p.Payload, []byte(id)) {
			return p
		}
		known := false
		for _, s := range skip {
			known = known || bytes.Contains(p.Payload, []byte(s))
		}
		if !known {
			c.t.Fatalf("got %s, want command %s", describe(p), id)
		}
		if p.FixedHeader.Qos > 0 {
			c.send(ackPacket(packets.Puback, p.PacketID))
		}
	}
}

func connack(sessionPresent, code byte) []byte { return []byte{0x20, 0x02, sessionPresent, code} }

const reading = `{"metrics":{"temp":21.5}}`

// TestV3ConnackReturnCodes: a 3.1.1 client only ever gets the return codes
// 0-5 of §3.2.2.3, in the 2-byte CONNACK, and a refused one is closed
// after it [MQTT-3.2.2-5]; what is no CONNECT at all gets no CONNACK.
func TestV3ConnackReturnCodes(t *testing.T) {
	r := newRig(t, Options{})
	tok := r.tokens["d1"]
	tests := []struct {
		name   string
		pk     packets.Packet
		mangle func([]byte) // applied to the encoded CONNECT
		want   []byte       // the CONNACK; nil: none, the connection is closed
	}{
		{name: "own id", pk: connectPk("d1", "d1", tok, true), want: connack(0, 0)},
		{name: "wrong token", pk: connectPk("d1", "d1", "fhd_wrong", true), want: connack(0, v3NotAuthorized)},
		{name: "another device's token", pk: connectPk("d1", "d1", r.tokens["d2"], true), want: connack(0, v3NotAuthorized)},
		{name: "empty password, password flag set", pk: func() packets.Packet {
			pk := connectPk("d1", "d1", "", true)
			pk.Connect.PasswordFlag = true
			return pk
		}(), want: connack(0, v3NotAuthorized)},
		{name: "username without password", pk: connectPk("d1", "d1", "", true), want: connack(0, v3NotAuthorized)},
		{name: "no username, no password", pk: connectPk("d1", "", "", true), want: connack(0, v3NotAuthorized)},
		{name: "client id of another device", pk: connectPk("d2", "d1", tok, true), want: connack(0, 2)},
		{name: "made-up client id", pk: connectPk("d1-client", "d1", tok, true), want: connack(0, 2)},
		{name: "empty client id, clean session 0", pk: connectPk("", "d1", tok, false), want: connack(0, 2)},
		{name: "empty client id, clean session 1", pk: connectPk("", "d1", tok, true), want: connack(0, 0)},
		{name: "protocol level 6", pk: func() packets.Packet { pk := connectPk("d1", "d1", tok, true); pk.ProtocolVersion = 6; return pk }(), want: connack(0, 1)},
		{name: "MQIsdp level 3 is served as 3.1.1", pk: func() packets.Packet {
			pk := connectPk("d1", "d1", tok, true)
			pk.ProtocolVersion, pk.Connect.ProtocolName = 3, []byte("MQIsdp")
			return pk
		}(), want: connack(0, 0)},
		{name: "unknown protocol name", pk: func() packets.Packet {
			pk := connectPk("d1", "d1", tok, true)
			pk.Connect.ProtocolName = []byte("MQTX")
			return pk
		}()},
		// Fixed header 2 bytes, "MQTT" 6, level 1: the connect flags are byte 9.
		{name: "reserved connect flag set", pk: connectPk("d1", "d1", tok, true), mangle: func(b []byte) { b[9] |= 0x01 }},
		{name: "will on own telemetry", pk: withWill(connectPk("d1", "d1", tok, true), "devices/d1/telemetry", reading, 1, false), want: connack(0, 0)},
		{name: "will on own command results", pk: withWill(connectPk("d1", "d1", tok, true), "devices/d1/commands/result", `{"id":"x","status":"ok"}`, 0, false), want: connack(0, 0)},
		{name: "will with retain is accepted", pk: withWill(connectPk("d1", "d1", tok, true), "devices/d1/telemetry", reading, 2, true), want: connack(0, 0)},
		{name: "will on another device's telemetry", pk: withWill(connectPk("d1", "d1", tok, true), "devices/d2/telemetry", reading, 1, false), want: connack(0, 5)},
		{name: "will on own commands", pk: withWill(connectPk("d1", "d1", tok, true), "devices/d1/commands", `{"id":"x","name":"reboot"}`, 1, false), want: connack(0, 5)},
		{name: "will on $SYS", pk: withWill(connectPk("d1", "d1", tok, true), "$SYS/x", "x", 0, false), want: connack(0, 5)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, r.addr, 4)
			b := encode(t, tt.pk)
			if tt.mangle != nil {
				tt.mangle(b)
			}
			c.write(b)
			if tt.want == nil {
				seen, err := c.untilClosed()
				if len(seen) > 0 || !closedByServer(err) {
					t.Fatalf("received %s then %v, want the connection closed without an answer", describeAll(seen), err)
				}
				return
			}
			ack := c.expect(packets.Connack)
			if !bytes.Equal(wire(ack), tt.want) {
				t.Fatalf("CONNACK % x, want % x", wire(ack), tt.want)
			}
			if tt.want[3] == 0 {
				c.send(disconnectPk())
				return
			}
			if seen, err := c.untilClosed(); len(seen) > 0 || !closedByServer(err) {
				t.Fatalf("after a refusal: received %s then %v, want the connection closed", describeAll(seen), err)
			}
		})
	}

	t.Run("second CONNECT", func(t *testing.T) {
		c, ack := r.raw3(t, connectPk("d1", "d1", tok, true))
		if !bytes.Equal(ack, connack(0, 0)) {
			t.Fatalf("CONNACK % x", ack)
		}
		c.send(connectPk("d1", "d1", tok, true))
		if seen, err := c.untilClosed(); len(seen) > 0 || !closedByServer(err) {
			t.Fatalf("received %s then %v, want the connection closed [MQTT-3.1.0-2]", describeAll(seen), err)
		}
	})
	t.Run("first packet not CONNECT", func(t *testing.T) {
		c := dialRaw(t, r.addr, 4)
		c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		if seen, err := c.untilClosed(); len(seen) > 0 || !closedByServer(err) {
			t.Fatalf("received %s then %v, want the connection closed [MQTT-3.1.0-1]", describeAll(seen), err)
		}
	})
}

// TestV3ConnackPaho: the same return codes as paho.mqtt.golang sees them.
func TestV3ConnackPaho(t *testing.T) {
	r := newRig(t, Options{})
	tests := []struct {
		name, clientID, token string
		clean                 bool
		want                  byte
	}{
		{"own id", "d1", r.tokens["d1"], true, 0},
		{"wrong token", "d1", "fhd_wrong", true, 5},
		{"client id of another device", "d2", r.tokens["d1"], true, 2},
		{"empty client id, clean session 0", "", r.tokens["d1"], false, 2},
		{"empty client id, clean session 1", "", r.tokens["d1"], true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, tok := r.v3(t, "d1", tt.token, func(o *paho.ClientOptions) { o.SetClientID(tt.clientID).SetCleanSession(tt.clean) })
			defer c.Disconnect(50)
			if rc := tok.(*paho.ConnectToken).ReturnCode(); rc != tt.want || (tok.Error() == nil) != (tt.want == 0) {
				t.Fatalf("return code %d (err %v), want %d", rc, tok.Error(), tt.want)
			}
		})
	}
}

// TestV3PublishQoS: paho publishes at QoS 0, 1 and 2; QoS 1 and 2 are
// acknowledged only once the reading is durable, and each reading is
// stored exactly once.
func TestV3PublishQoS(t *testing.T) {
	r := newRig(t, Options{})
	c, tok := r.v3(t, "d1", r.tokens["d1"], nil)
	if tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for i, qos := range []byte{0, 1, 2, 1, 2} {
		pt := c.Publish("devices/d1/telemetry", qos, false, fmt.Sprintf(`{"id":"q%d-%d","metrics":{"temp":%d}}`, qos, i, i))
		if !pt.WaitTimeout(patience) || pt.Error() != nil {
			t.Fatalf("publish %d at QoS %d: %v", i, qos, pt.Error())
		}
		if qos == 0 {
			eventually(t, "the QoS 0 reading to be stored", func() bool { return r.stored(t) >= i+1 })
		}
		if n := r.stored(t); n != i+1 {
			t.Fatalf("after publish %d (QoS %d) acknowledged: %d readings stored, want %d", i, qos, n, i+1)
		}
	}
}

// TestV3QoS2Exchange: the QoS 2 flow by hand [§4.3.3]: PUBREC once
// durable; a repeated PUBLISH awaiting PUBREL gets PUBREC again and is not
// stored again [MQTT-4.3.3-2]; PUBREL gets PUBCOMP, for an unknown id too;
// after PUBCOMP the id is free for a new message.
func TestV3QoS2Exchange(t *testing.T) {
	r := newRig(t, Options{})
	c, ack := r.raw3(t, connectPk("d1", "d1", r.tokens["d1"], true))
	if !bytes.Equal(ack, connack(0, 0)) {
		t.Fatalf("CONNACK % x", ack)
	}
	step := func(what string, send packets.Packet, want []byte, stored int) {
		t.Helper()
		c.send(send)
		p, err := c.next(patience)
		if err != nil || !bytes.Equal(wire(p), want) {
			t.Fatalf("%s: got %s (%v), want % x", what, describe(p), err, want)
		}
		if n := r.stored(t); n != stored {
			t.Fatalf("%s: %d readings stored, want %d", what, n, stored)
		}
	}
	pub := publishPacket("devices/d1/telemetry", 2, 7, `{"id":"a","metrics":{"temp":1}}`)
	step("PUBLISH id 7", pub, []byte{0x50, 0x02, 0x00, 0x07}, 1)
	pub.FixedHeader.Dup = true
	step("PUBLISH id 7 again, DUP", pub, []byte{0x50, 0x02, 0x00, 0x07}, 1)
	step("PUBREL 7", ackPacket(packets.Pubrel, 7), []byte{0x70, 0x02, 0x00, 0x07}, 1)
	step("PUBREL of an unknown id", ackPacket(packets.Pubrel, 9), []byte{0x70, 0x02, 0x00, 0x09}, 1)
	step("QoS 1 marker", publishPacket("devices/d1/telemetry", 1, 8, `{"id":"m","metrics":{"temp":2}}`), []byte{0x40, 0x02, 0x00, 0x08}, 2)
	step("a new message with id 7", publishPacket("devices/d1/telemetry", 2, 7, `{"id":"b","metrics":{"temp":3}}`), []byte{0x50, 0x02, 0x00, 0x07}, 3)
	step("PUBREL 7", ackPacket(packets.Pubrel, 7), []byte{0x70, 0x02, 0x00, 0x07}, 3)

	t.Run("more than 32 awaiting PUBREL", func(t *testing.T) {
		c, _ := r.raw3(t, connectPk("d2", "d2", r.tokens["d2"], true))
		pub := func(id uint16) []byte {
			return encode(t, publishPacket("devices/d2/telemetry", 2, id, fmt.Sprintf(`{"id":"r%d","metrics":{"n":%d}}`, id, id)))
		}
		var all []byte
		for id := uint16(1); id <= 32; id++ {
			all = append(all, pub(id)...)
		}
		c.write(all)
		for id := uint16(1); id <= 32; id++ {
			if p := c.expect(packets.Pubrec); p.PacketID != id {
				t.Fatalf("PUBREC %d, want %d", p.PacketID, id)
			}
		}
		c.write(pub(33))
		if seen, err := c.untilClosed(); len(seen) > 0 || !closedByServer(err) {
			t.Fatalf("33rd awaiting PUBREL: received %s then %v, want the connection closed", describeAll(seen), err)
		}
	})
}

// TestV3Supersede: a new connection for a device closes the old one's
// network connection: paho sees it lost, a raw reader just reads EOF, and
// no DISCONNECT packet ever goes to a 3.1.1 client [§3.14: client to
// server only].
func TestV3Supersede(t *testing.T) {
	r := newRig(t, Options{})
	lost := make(chan error, 1)
	_, tok := r.v3(t, "d1", r.tokens["d1"], func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	})
	if tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	old, ack := r.raw3(t, connectPk("d1", "d1", r.tokens["d1"], true))
	if !bytes.Equal(ack, connack(0, 0)) {
		t.Fatalf("superseding CONNACK % x", ack)
	}
	select {
	case <-lost:
	case <-time.After(patience):
		t.Fatal("paho's connection not closed when superseded")
	}
	c, tok := r.v3(t, "d1", r.tokens["d1"], nil)
	if tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	seen, err := old.untilClosed()
	if len(seen) > 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("superseded raw client received %s then %v, want EOF and nothing else (no DISCONNECT 0xE0)", describeAll(seen), err)
	}
	if pt := c.Publish("devices/d1/telemetry", 1, false, reading); !pt.WaitTimeout(patience) || pt.Error() != nil {
		t.Fatalf("publish on the new connection: %v", pt.Error())
	}
}

// TestV3SessionResume: a persistent session (clean session 0) keeps its
// subscription and the command in flight; on reconnect CONNACK says
// session present and the command comes again first, DUP set, with its
// packet id [MQTT-4.4.0-1], and later commands flow without a new
// SUBSCRIBE. Clean session 1 discards the session.
func TestV3SessionResume(t *testing.T) {
	for _, leave := range []string{"DISCONNECT", "dropped"} {
		t.Run(leave, func(t *testing.T) {
			r := newRig(t, Options{})
			tok := r.tokens["d1"]
			c, ack := r.raw3(t, connectPk("d1", "d1", tok, false))
			if !bytes.Equal(ack, connack(0, 0)) {
				t.Fatalf("first CONNACK % x", ack)
			}
			c.send(subscribePk(1, packets.Subscription{Filter: "devices/d1/commands", Qos: 1}))
			if sa := c.expect(packets.Suback); !bytes.Equal(wire(sa), []byte{0x90, 0x03, 0x00, 0x01, 0x01}) {
				t.Fatalf("SUBACK % x", wire(sa))
			}
			id1 := r.sendCommand(t, "d1", "reboot")
			first := c.expectCommand("d1", id1)
			if first.FixedHeader.Qos != 1 || first.FixedHeader.Dup {
				t.Fatalf("command delivered as %s, want QoS 1 without DUP", describe(first))
			}
			// Not acknowledged: the command is in flight when the device leaves.
			if leave == "DISCONNECT" {
				c.send(disconnectPk())
			} else {
				_ = c.conn.(*net.TCPConn).SetLinger(0)
			}
			c.conn.Close()

			c2, ack := r.raw3(t, connectPk("d1", "d1", tok, false))
			if !bytes.Equal(ack, connack(1, 0)) {
				t.Fatalf("resuming CONNACK % x, want session present", ack)
			}
			again := c2.expect(packets.Publish)
			if !again.FixedHeader.Dup || again.PacketID != first.PacketID || !bytes.Equal(again.Payload, first.Payload) || again.TopicName != first.TopicName {
				t.Fatalf("first packet on resume %s, want %s again with DUP", describe(again), describe(first))
			}
			c2.send(ackPacket(packets.Puback, again.PacketID))
			id2 := r.sendCommand(t, "d1", "reboot")
			next := c2.expectCommand("d1", id2, id1)
			c2.send(ackPacket(packets.Puback, next.PacketID))
			c2.send(disconnectPk())
			c2.conn.Close()

			_, ack = r.raw3(t, connectPk("d1", "d1", tok, true))
			if !bytes.Equal(ack, connack(0, 0)) {
				t.Fatalf("clean session CONNACK % x, want no session present [MQTT-3.2.2-1]", ack)
			}
		})
	}
}

// TestV3PacketIDsIndependent: the client's packet ids and the server's are
// separate spaces [§2.3.1]: a SUBSCRIBE and an UNSUBSCRIBE reusing the id
// of the server's PUBLISH in flight are answered normally, with that id,
// and commands still flow.
func TestV3PacketIDsIndependent(t *testing.T) {
	r := newRig(t, Options{})
	c, ack := r.raw3(t, connectPk("d1", "d1", r.tokens["d1"], true))
	if !bytes.Equal(ack, connack(0, 0)) {
		t.Fatalf("CONNACK % x", ack)
	}
	c.send(subscribePk(1, packets.Subscription{Filter: "devices/d1/commands", Qos: 1}))
	c.expect(packets.Suback)
	id1 := r.sendCommand(t, "d1", "reboot")
	p := c.expectCommand("d1", id1)
	pid := p.PacketID

	c.send(subscribePk(pid,
		packets.Subscription{Filter: "devices/d1/errors", Qos: 0},
		packets.Subscription{Filter: "devices/d1/commands", Qos: 2},
		packets.Subscription{Filter: "devices/d2/commands", Qos: 1}))
	sa := c.expect(packets.Suback)
	if want := []byte{0x90, 0x05, byte(pid >> 8), byte(pid), 0x00, 0x01, 0x80}; !bytes.Equal(wire(sa), want) {
		t.Fatalf("SUBACK % x, want % x", wire(sa), want)
	}
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: pid, Filters: packets.Subscriptions{{Filter: "devices/d1/errors"}}})
	// A resubscription may bring the unacknowledged command again.
	ua := c.expect(packets.Unsuback)
	if want := []byte{0xB0, 0x02, byte(pid >> 8), byte(pid)}; !bytes.Equal(wire(ua), want) {
		t.Fatalf("UNSUBACK % x, want % x", wire(ua), want)
	}
	c.send(ackPacket(packets.Puback, pid))
	id2 := r.sendCommand(t, "d1", "reboot")
	c.expectCommand("d1", id2, id1)
}

// TestV3OversizePublish: a packet over MaxPacketBytes closes the
// connection, without the server waiting for (or reading) its body.
func TestV3OversizePublish(t *testing.T) {
	r := newRig(t, Options{MaxPacketBytes: 4096})
	t.Run("raw: announced 1 MiB, 100 bytes sent", func(t *testing.T) {
		c, _ := r.raw3(t, connectPk("d1", "d1", r.tokens["d1"], true))
		b := varint([]byte{0x32}, 1<<20)
		b = append(b, encode(t, publishPacket("devices/d1/telemetry", 1, 3, strings.Repeat("x", 80)))[2:]...)
		c.write(b)
		if seen, err := c.untilClosed(); len(seen) > 0 || !closedByServer(err) {
			t.Fatalf("received %s then %v, want the connection closed", describeAll(seen), err)
		}
	})
	t.Run("paho: 8 KiB", func(t *testing.T) {
		lost := make(chan error, 1)
		c, tok := r.v3(t, "d2", r.tokens["d2"], func(o *paho.ClientOptions) {
			o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
		})
		if tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		c.Publish("devices/d2/telemetry", 1, false, `{"metrics":{"s":"`+strings.Repeat("x", 8<<10)+`"}}`)
		select {
		case <-lost:
		case <-time.After(patience):
			t.Fatal("connection not closed after an oversize PUBLISH")
		}
		if n := r.stored(t); n != 0 {
			t.Fatalf("%d readings stored", n)
		}
	})
}

// TestV3RefusalClosesConnection: a QoS 1 reading the hub cannot take now
// (rate limited, spool full) gets an error frame and no PUBACK, and the
// connection is closed, so that the device resends it after reconnecting
// (3.1.1 clients resend only then [MQTT-4.4.0-1]); the resend is stored.
func TestV3RefusalClosesConnection(t *testing.T) {
	tests := []struct {
		name   string
		bridge func(*bridge.Options)
		setup  func(*rig)
		code   string
		warmup bool // one reading first, to spend the burst
	}{
		{name: "spool full", setup: func(r *rig) { r.store.refuse.Store(1) }, code: "overloaded"},
		{name: "rate limited", bridge: func(o *bridge.Options) { o.RatePerSec, o.Burst = 2, 1 }, code: "rate_limited", warmup: true},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/raw", func(t *testing.T) {
			var bo []func(*bridge.Options)
			if tt.bridge != nil {
				bo = append(bo, tt.bridge)
			}
			r := newRig(t, Options{}, bo...)
			if tt.setup != nil {
				tt.setup(r)
			}
			tok := r.tokens["d1"]
			c, _ := r.raw3(t, connectPk("d1", "d1", tok, false))
			c.send(subscribePk(1, packets.Subscription{Filter: "devices/d1/errors", Qos: 0}))
			c.expect(packets.Suback)
			want := 1
			var out []byte
			if tt.warmup {
				out = encode(t, publishPacket("devices/d1/telemetry", 1, 4, `{"id":"w","metrics":{"temp":1}}`))
				want = 2
			}
			pub := publishPacket("devices/d1/telemetry", 1, 5, `{"id":"x","metrics":{"temp":2}}`)
			c.write(append(out, encode(t, pub)...))
			seen, err := c.untilClosed()
			frame := false
			for _, p := range seen {
				if p.FixedHeader.Type == packets.Puback && p.PacketID == 5 {
					t.Fatalf("PUBACK for the refused reading (received %s)", describeAll(seen))
				}
				frame = frame || p.FixedHeader.Type == packets.Publish && p.TopicName == "devices/d1/errors" && bytes.Contains(p.Payload, []byte(`"code":"`+tt.code+`"`))
			}
			if !closedByServer(err) || !frame {
				t.Fatalf("received %s then %v, want an error frame %q and the connection closed", describeAll(seen), err, tt.code)
			}
			if n := r.stored(t); n != want-1 {
				t.Fatalf("%d readings stored before the resend, want %d", n, want-1)
			}
			// The device reconnects and resends, as often as it takes, with
			// a device's back-off between attempts (the rate limit refills
			// a token every 500 ms; hammering would meet the connect limit).
			pub.FixedHeader.Dup = true
			deadline := time.Now().Add(patience)
			backoff := time.NewTicker(200 * time.Millisecond)
			defer backoff.Stop()
			for r.stored(t) < want {
				if time.Now().After(deadline) {
					t.Fatal("the resent reading was never stored")
				}
				<-backoff.C
				c, ack := r.raw3(t, connectPk("d1", "d1", tok, false))
				if !bytes.Equal(ack, connack(1, 0)) {
					t.Fatalf("reconnect CONNACK % x, want session present", ack)
				}
				c.send(pub)
				for {
					p, err := c.next(patience)
					if err != nil {
						break // refused again (rate): reconnect
					}
					if p.FixedHeader.Type == packets.Puback && p.PacketID == 5 {
						if n := r.stored(t); n != want {
							t.Fatalf("PUBACK of the resend with %d readings stored, want %d", n, want)
						}
						break
					}
				}
				c.conn.Close()
			}
		})
	}
	t.Run("spool full/paho", func(t *testing.T) {
		r := newRig(t, Options{})
		r.store.refuse.Store(1)
		lost := make(chan error, 1)
		c, tok := r.v3(t, "d1", r.tokens["d1"], func(o *paho.ClientOptions) {
			o.SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(100 * time.Millisecond).
				SetConnectionLostHandler(func(_ paho.Client, err error) {
					select {
					case lost <- err:
					default:
					}
				})
		})
		if tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		c.Publish("devices/d1/telemetry", 1, false, reading)
		select {
		case <-lost:
		case <-time.After(patience):
			t.Fatal("connection not closed after a refused reading")
		}
		eventually(t, "paho's resend to be stored", func() bool { return r.stored(t) == 1 })
	})
}

// TestV3Will: a will on the device's own telemetry is stored as a reading
// when the connection ends without DISCONNECT (dropped, protocol error,
// superseded: [MQTT-3.1.2-8]), at any QoS and with retain (ignored); not
// after DISCONNECT.
func TestV3Will(t *testing.T) {
	r := newRig(t, Options{})
	tok := r.tokens["d1"]
	tests := []struct {
		name   string
		qos    byte
		retain bool
		end    func(t *testing.T, c *rawClient)
		stored bool
	}{
		{"dropped, QoS 0", 0, false, drop, true},
		{"dropped, QoS 1", 1, false, drop, true},
		{"dropped, QoS 2", 2, false, drop, true},
		{"dropped, retain", 1, true, drop, true},
		{"protocol error", 1, false, func(t *testing.T, c *rawClient) {
			c.write([]byte{0x36, 0x00}) // PUBLISH at QoS 3 [MQTT-3.3.1-4]
			if _, err := c.untilClosed(); !closedByServer(err) {
				t.Fatalf("malformed PUBLISH: %v, want the connection closed", err)
			}
		}, true},
		{"DISCONNECT", 1, false, func(t *testing.T, c *rawClient) {
			c.send(disconnectPk())
			if _, err := c.untilClosed(); !closedByServer(err) {
				t.Fatal(err)
			}
		}, false},
		{"superseded", 1, false, func(t *testing.T, c *rawClient) {
			_, _ = r.raw3(t, connectPk("d1", "d1", tok, true))
			if _, err := c.untilClosed(); !closedByServer(err) {
				t.Fatal(err)
			}
		}, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := r.stored(t)
			c, ack := r.raw3(t, withWill(connectPk("d1", "d1", tok, true), "devices/d1/telemetry", fmt.Sprintf(`{"id":"will-%d","metrics":{"will":%d}}`, i, i), tt.qos, tt.retain))
			if !bytes.Equal(ack, connack(0, 0)) {
				t.Fatalf("CONNACK % x", ack)
			}
			tt.end(t, c)
			if tt.stored {
				eventually(t, "the will to be stored", func() bool { return r.stored(t) == before+1 })
				return
			}
			// A marker through a new connection: acknowledged once stored,
			// after the old connection's end was handled.
			m, _ := r.raw3(t, connectPk("d1", "d1", tok, true))
			m.send(publishPacket("devices/d1/telemetry", 1, 1, fmt.Sprintf(`{"id":"marker-%d","metrics":{"m":1}}`, i)))
			m.expect(packets.Puback)
			if n := r.stored(t); n != before+1 {
				t.Fatalf("%d readings stored, want only the marker (%d): the will was published", n, before+1)
			}
			m.send(disconnectPk())
		})
	}
}

func drop(t *testing.T, c *rawClient) {
	_ = c.conn.(*net.TCPConn).SetLinger(0)
	c.conn.Close()
}

// TestV3Keepalive: a client silent for 1.5x its keep-alive is closed
// [MQTT-3.1.2-24], and the will goes out; keep-alive 0 or over
// MaxKeepalive gets MaxKeepalive; a client that pings stays.
func TestV3Keepalive(t *testing.T) {
	r := newRig(t, Options{})
	rmax := newRig(t, Options{MaxKeepalive: time.Second})
	tests := []struct {
		name      string
		r         *rig
		keepalive uint16
		will      bool
		ping      bool
	}{
		{name: "keep-alive 1 s", r: r, keepalive: 1},
		{name: "keep-alive 1 s, will", r: r, keepalive: 1, will: true},
		{name: "keep-alive 0, MaxKeepalive 1 s", r: rmax, keepalive: 0},
		{name: "keep-alive 60 s, MaxKeepalive 1 s", r: rmax, keepalive: 60},
		{name: "keep-alive 1 s, pinging", r: r, keepalive: 1, ping: true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id := fmt.Sprintf("ka%d", i)
			tok := tt.r.device(t, id)
			pk := connectPk(id, id, tok, true)
			pk.Connect.Keepalive = tt.keepalive
			if tt.will {
				pk = withWill(pk, "devices/"+id+"/telemetry", reading, 1, false)
			}
			before := tt.r.stored(t)
			start := time.Now()
			c, ack := tt.r.raw3(t, pk)
			if !bytes.Equal(ack, connack(0, 0)) {
				t.Fatalf("CONNACK % x", ack)
			}
			if tt.ping {
				tick := time.NewTicker(500 * time.Millisecond) // pacing the client, well inside 1.5 s
				defer tick.Stop()
				for range 4 {
					<-tick.C
					c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
					if p := c.expect(packets.Pingresp); !bytes.Equal(wire(p), []byte{0xD0, 0x00}) {
						t.Fatalf("PINGRESP % x", wire(p))
					}
				}
				return
			}
			seen, err := c.untilClosed()
			if len(seen) > 0 || !closedByServer(err) {
				t.Fatalf("received %s then %v, want the connection closed", describeAll(seen), err)
			}
			if d := time.Since(start); d < 1400*time.Millisecond {
				t.Fatalf("closed after %s, before 1.5x the keep-alive", d)
			}
			if tt.will {
				eventually(t, "the will to be stored", func() bool { return tt.r.stored(t) > before })
			}
		})
	}
}

// TestV3Watcher: "{id}:errors" with the device's credentials watches the
// device's error frames beside it: it does not supersede the device, has
// a clean session, may subscribe only the errors topic, may not publish,
// and at most 4 watch one device (the 5th: return code 0x03).
func TestV3Watcher(t *testing.T) {
	r := newRig(t, Options{})
	tok := r.tokens["d1"]
	lost := make(chan error, 1)
	dev, dtok := r.v3(t, "d1", tok, func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	})
	if dtok.Error() != nil {
		t.Fatal(dtok.Error())
	}
	frames := make(chan string, 16)
	for i := range 3 {
		w, wt := r.v3(t, "d1", tok, func(o *paho.ClientOptions) { o.SetClientID("d1:errors") })
		if wt.Error() != nil {
			t.Fatalf("watcher %d: %v", i, wt.Error())
		}
		st := w.Subscribe("devices/d1/errors", 1, func(_ paho.Client, m paho.Message) { frames <- string(m.Payload()) })
		if !st.WaitTimeout(patience) || st.(*paho.SubscribeToken).Result()["devices/d1/errors"] != 1 {
			t.Fatalf("watcher %d subscribe: %v %v", i, st.Error(), st.(*paho.SubscribeToken).Result())
		}
	}
	raw, ack := r.raw3(t, connectPk("d1:errors", "d1", tok, false))
	if !bytes.Equal(ack, connack(0, 0)) {
		t.Fatalf("4th watcher (clean session 0) CONNACK % x, want accepted with no session present", ack)
	}
	raw.send(subscribePk(1,
		packets.Subscription{Filter: "devices/d1/errors", Qos: 0},
		packets.Subscription{Filter: "devices/d1/commands", Qos: 1},
		packets.Subscription{Filter: "devices/d1/telemetry", Qos: 1}))
	if sa := raw.expect(packets.Suback); !bytes.Equal(wire(sa), []byte{0x90, 0x05, 0x00, 0x01, 0x00, 0x80, 0x80}) {
		t.Fatalf("watcher SUBACK % x, want errors granted, the rest 0x80", wire(sa))
	}
	_, ack = r.raw3(t, connectPk("d1:errors", "d1", tok, true))
	if !bytes.Equal(ack, connack(0, 3)) {
		t.Fatalf("5th watcher CONNACK % x, want 0x03", ack)
	}
	_, ack = r.raw3(t, connectPk("d2:errors", "d1", tok, true))
	if !bytes.Equal(ack, connack(0, 2)) {
		t.Fatalf("watcher of another device CONNACK % x, want 0x02", ack)
	}

	if pt := dev.Publish("devices/d1/telemetry", 1, false, `{"metrics":{"temp":null}}`); !pt.WaitTimeout(patience) || pt.Error() != nil {
		t.Fatalf("invalid reading not acknowledged: %v", pt.Error())
	}
	for i := range 3 {
		select {
		case f := <-frames:
			if !strings.Contains(f, `"type":"error"`) || !strings.Contains(f, `"code":"invalid"`) {
				t.Fatalf("error frame %s", f)
			}
		case <-time.After(patience):
			t.Fatalf("paho watcher %d: no error frame", i)
		}
	}
	if p := raw.expect(packets.Publish); p.TopicName != "devices/d1/errors" || !bytes.Contains(p.Payload, []byte(`"code":"invalid"`)) {
		t.Fatalf("raw watcher got %s", describe(p))
	}
	raw.send(publishPacket("devices/d1/telemetry", 1, 2, reading))
	if seen, err := raw.untilClosed(); len(seen) > 0 || !closedByServer(err) {
		t.Fatalf("watcher publishing: received %s then %v, want the connection closed", describeAll(seen), err)
	}
	if pt := dev.Publish("devices/d1/telemetry", 1, false, reading); !pt.WaitTimeout(patience) || pt.Error() != nil {
		t.Fatalf("device publish beside its watchers: %v", pt.Error())
	}
	select {
	case err := <-lost:
		t.Fatalf("the device lost its connection to a watcher: %v", err)
	default:
	}
	if n := r.stored(t); n != 1 {
		t.Fatalf("%d readings stored, want the device's one", n)
	}

	// The token rotated without grace: the watchers are closed.
	w, ack := r.raw3(t, connectPk("d1:errors", "d1", tok, true))
	if !bytes.Equal(ack, connack(0, 0)) {
		t.Fatalf("watcher after one left: CONNACK % x", ack)
	}
	if _, err := r.reg.Rotate(context.Background(), "d1", 0); err != nil {
		t.Fatal(err)
	}
	if seen, err := w.untilClosed(); len(seen) > 0 || !closedByServer(err) {
		t.Fatalf("watcher after the rotation: received %s then %v, want the connection closed", describeAll(seen), err)
	}
}

// TestV3Transports: paho over TLS and over WebSocket publishes at QoS 2
// and receives commands.
func TestV3Transports(t *testing.T) {
	cert, pool := selfSigned(t)
	tests := []struct {
		name  string
		setup func(t *testing.T) (*rig, string, *tls.Config)
	}{
		{"tls", func(t *testing.T) (*rig, string, *tls.Config) {
			ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
			if err != nil {
				t.Fatal(err)
			}
			r := newRig(t, Options{TLSListener: ln})
			return r, "ssl://" + ln.Addr().String(), &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}},
		{"websocket", func(t *testing.T) (*rig, string, *tls.Config) {
			r := newRig(t, Options{})
			srv := httptest.NewServer(http.HandlerFunc(r.broker.ServeWebSocket))
			t.Cleanup(srv.Close)
			return r, "ws" + strings.TrimPrefix(srv.URL, "http") + "/mqtt", nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, url, tc := tt.setup(t)
			got := make(chan string, 4)
			o := paho.NewClientOptions().AddBroker(url).SetClientID("d1").SetUsername("d1").SetPassword(r.tokens["d1"]).
				SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(patience)
			if tc != nil {
				o.SetTLSConfig(tc)
			}
			c := paho.NewClient(o)
			if tok := c.Connect(); !tok.WaitTimeout(patience) || tok.Error() != nil {
				t.Fatalf("connect: %v", tok.Error())
			}
			defer c.Disconnect(50)
			st := c.Subscribe("devices/d1/commands", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) })
			if !st.WaitTimeout(patience) || st.Error() != nil {
				t.Fatalf("subscribe: %v", st.Error())
			}
			if pt := c.Publish("devices/d1/telemetry", 2, false, reading); !pt.WaitTimeout(patience) || pt.Error() != nil {
				t.Fatalf("QoS 2 publish: %v", pt.Error())
			}
			if n := r.stored(t); n != 1 {
				t.Fatalf("%d readings stored", n)
			}
			id := r.sendCommand(t, "d1", "reboot")
			select {
			case m := <-got:
				if !strings.Contains(m, id) {
					t.Fatalf("command %s, want %s", m, id)
				}
			case <-time.After(patience):
				t.Fatal("no command")
			}
		})
	}
}
