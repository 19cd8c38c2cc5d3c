package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/commands"
)

// Raw-socket conformance tests: the packets paho hides or refuses to send.
// Client packets are encoded with mochi's packets encoders and the server's
// decoded with its decoders; bytes are written by hand only where the input
// is malformed on purpose.

// patience bounds every wait for the server; generous, for a loaded box.
const patience = 20 * time.Second

// encodePacket encodes a client (or, for the fuzz seeds, any) packet with
// mochi's encoder for its type.
func encodePacket(pk packets.Packet) ([]byte, error) {
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	case packets.Auth:
		err = pk.AuthEncode(&buf)
	default:
		return nil, fmt.Errorf("no encoder for packet type %d", pk.FixedHeader.Type)
	}
	return buf.Bytes(), err
}

// errNotServerPacket is a packet type a server never sends.
var errNotServerPacket = errors.New("not a server packet type")

// readPacket reads one server packet of protocol version v (4 or 5) and
// decodes it with mochi's decoders; a remaining length above max is an
// error (the test client's own limit).
func readPacket(r *bufio.Reader, v byte, max int) (packets.Packet, error) {
	var pk packets.Packet
	hb, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, fmt.Errorf("fixed header %#02x: %w", hb, err)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return pk, fmt.Errorf("remaining length: %w", err)
	}
	if n > max {
		return pk, fmt.Errorf("remaining length %d over the client's %d", n, max)
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return pk, fmt.Errorf("body of packet type %d: %w", pk.FixedHeader.Type, err)
	}
	pk.ProtocolVersion = v
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubrel:
		err = pk.PubrelDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Unsuback:
		err = pk.UnsubackDecode(body)
	case packets.Pingresp:
		err = pk.PingrespDecode(body)
	case packets.Disconnect:
		if v == 5 && n == 1 { // a lone reason code, which mochi's decoder skips
			pk.ReasonCode = body[0]
			break
		}
		err = pk.DisconnectDecode(body)
	case packets.Auth:
		err = pk.AuthDecode(body)
	default:
		err = fmt.Errorf("packet type %d: %w", pk.FixedHeader.Type, errNotServerPacket)
	}
	if err != nil {
		return pk, fmt.Errorf("decode packet type %d: %w", pk.FixedHeader.Type, err)
	}
	return pk, nil
}

// rawClient is a socket speaking MQTT packet by packet, with no client
// logic at all: it acknowledges nothing by itself.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
	v    byte
}

func dialRaw(t *testing.T, addr string, v byte) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, r: bufio.NewReader(conn), v: v}
}

// send encodes pk (in the client's protocol version) and writes it.
func (c *rawClient) send(pk packets.Packet) {
	c.t.Helper()
	pk.ProtocolVersion = c.v
	b, err := encodePacket(pk)
	if err != nil {
		c.t.Fatalf("encode packet type %d: %v", pk.FixedHeader.Type, err)
	}
	c.write(b)
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(patience))
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next returns the server's next packet within d.
func (c *rawClient) next(d time.Duration) (packets.Packet, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(d))
	return readPacket(c.r, c.v, 1<<20)
}

// expect returns the next packet, which must be of type typ.
func (c *rawClient) expect(typ byte) packets.Packet {
	c.t.Helper()
	pk, err := c.next(patience)
	if err != nil {
		c.t.Fatalf("waiting for packet type %d: %v", typ, err)
	}
	if pk.FixedHeader.Type != typ {
		c.t.Fatalf("got packet type %d (reason %#02x %q), want type %d", pk.FixedHeader.Type, pk.ReasonCode, pk.Properties.ReasonString, typ)
	}
	return pk
}

// expectDisconnect wants a DISCONNECT with code, then the connection closed.
func (c *rawClient) expectDisconnect(code byte) {
	c.t.Helper()
	pk := c.expect(packets.Disconnect)
	if pk.ReasonCode != code {
		c.t.Fatalf("DISCONNECT reason %#02x (%q), want %#02x", pk.ReasonCode, pk.Properties.ReasonString, code)
	}
	c.expectClosed()
}

// expectClosed wants the server to close the connection without sending
// anything more.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	pk, err := c.next(patience)
	if err == nil {
		c.t.Fatalf("packet type %d (reason %#02x) where the connection should close", pk.FixedHeader.Type, pk.ReasonCode)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection still open after %s", patience)
	}
}

// expectSilence wants no packet for d (for what must not be sent yet).
func (c *rawClient) expectSilence(d time.Duration) {
	c.t.Helper()
	pk, err := c.next(d)
	if err == nil {
		c.t.Fatalf("unexpected packet type %d (id %d, %q)", pk.FixedHeader.Type, pk.PacketID, pk.Payload)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("connection ended: %v", err)
	}
}

// connectPacket is d's CONNECT (clean start, keep-alive 30 s).
func connectPacket(v byte, id, token string) packets.Packet {
	return packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id,
			UsernameFlag: true, Username: []byte(id), PasswordFlag: true, Password: []byte(token),
		},
	}
}

// raw5 connects device id over MQTT 5 with the CONNECT tweak changes and
// returns the client and the CONNACK.
func (r *rig) raw5(t *testing.T, id string, tweak func(*packets.Packet)) (*rawClient, packets.Packet) {
	t.Helper()
	c := dialRaw(t, r.addr, 5)
	pk := connectPacket(5, id, r.tokens[id])
	if tweak != nil {
		tweak(&pk)
	}
	c.send(pk)
	return c, c.expect(packets.Connack)
}

// raw5OK is raw5 that must be accepted.
func (r *rig) raw5OK(t *testing.T, id string, tweak func(*packets.Packet)) *rawClient {
	t.Helper()
	c, ack := r.raw5(t, id, tweak)
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#02x (%q)", ack.ReasonCode, ack.Properties.ReasonString)
	}
	return c
}

func publishPacket(topic string, qos byte, id uint16, payload string) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic, PacketID: id, Payload: []byte(payload)}
}

func subscribePacket(id uint16, filters ...string) packets.Packet {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: id}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	return pk
}

func ackPacket(typ byte, id uint16) packets.Packet {
	fh := packets.FixedHeader{Type: typ}
	if typ == packets.Pubrel {
		fh.Qos = 1
	}
	return packets.Packet{FixedHeader: fh, PacketID: id}
}

// subscribeCommands subscribes the client to device id's commands and
// wants them granted at QoS 1.
func (c *rawClient) subscribeCommands(id string, pid uint16) {
	c.t.Helper()
	c.send(subscribePacket(pid, "devices/"+id+"/commands"))
	sa := c.expect(packets.Suback)
	if sa.PacketID != pid || !bytes.Equal(sa.ReasonCodes, []byte{1}) {
		c.t.Fatalf("SUBACK id %d codes % x, want id %d granted 1", sa.PacketID, sa.ReasonCodes, pid)
	}
}

// sendCommand queues a command for device and returns its id.
func (r *rig) sendCommand(t *testing.T, device, name string) string {
	t.Helper()
	rec, _, err := r.cmds.SendCommand(context.Background(), commands.Spec{Device: device, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return rec.ID
}

// TestV5ConnackProperties: what a v5 CONNACK states (contract "v5 CONNACK
// states"; MQTT 5.0 §3.2.2.3), decoded so that an absent property is told
// from one sent with its default.
func TestV5ConnackProperties(t *testing.T) {
	r := newRig(t, Options{MaxPacketBytes: 100 << 10, MaxKeepalive: 60 * time.Second})
	u16 := func(v uint16) *uint16 { return &v }
	u32 := func(v uint32) *uint32 { return &v }
	tests := []struct {
		name          string
		keepalive     uint16
		expiry        *uint32 // Session Expiry Interval asked
		serverKA      *uint16 // nil: Server Keep Alive absent
		serverExpiry  *uint32 // nil: Session Expiry Interval absent
		assignedID    string
		emptyClientID bool
	}{
		{name: "keep-alive within the maximum", keepalive: 30},
		{name: "keep-alive 0: the maximum", keepalive: 0, serverKA: u16(60)},
		{name: "keep-alive over the maximum", keepalive: 600, serverKA: u16(60)},
		{name: "session expiry within the cap", keepalive: 30, expiry: u32(600)},
		{name: "session expiry over the cap: reduced", keepalive: 30, expiry: u32(7200), serverExpiry: u32(3600)},
		{name: "empty client id: assigned", keepalive: 30, emptyClientID: true, assignedID: "d1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ack := r.raw5(t, "d1", func(pk *packets.Packet) {
				pk.Connect.Keepalive = tt.keepalive
				if tt.expiry != nil {
					pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = *tt.expiry, true
				}
				if tt.emptyClientID {
					pk.Connect.ClientIdentifier = ""
				}
			})
			defer c.conn.Close()
			p := ack.Properties
			if ack.ReasonCode != 0 {
				t.Fatalf("CONNACK %#02x", ack.ReasonCode)
			}
			checks := []struct {
				what string
				ok   bool
				got  any
			}{
				{"Maximum Packet Size = MaxPacketBytes", p.MaximumPacketSize == 100<<10, p.MaximumPacketSize},
				{"Receive Maximum 32", p.ReceiveMaximum == 32, p.ReceiveMaximum},
				{"Retain Available 0", p.RetainAvailableFlag && p.RetainAvailable == 0, [2]any{p.RetainAvailableFlag, p.RetainAvailable}},
				{"Wildcard Subscription Available 0", p.WildcardSubAvailableFlag && p.WildcardSubAvailable == 0, [2]any{p.WildcardSubAvailableFlag, p.WildcardSubAvailable}},
				{"Subscription Identifiers Available 0", p.SubIDAvailableFlag && p.SubIDAvailable == 0, [2]any{p.SubIDAvailableFlag, p.SubIDAvailable}},
				{"Shared Subscription Available 0", p.SharedSubAvailableFlag && p.SharedSubAvailable == 0, [2]any{p.SharedSubAvailableFlag, p.SharedSubAvailable}},
				{"Topic Alias Maximum 16", p.TopicAliasMaximum == 16, p.TopicAliasMaximum},
				{"no Maximum QoS (QoS 2 is supported)", !p.MaximumQosFlag, [2]any{p.MaximumQosFlag, p.MaximumQos}},
				{"Server Keep Alive", tt.serverKA == nil && !p.ServerKeepAliveFlag || tt.serverKA != nil && p.ServerKeepAliveFlag && p.ServerKeepAlive == *tt.serverKA, [2]any{p.ServerKeepAliveFlag, p.ServerKeepAlive}},
				{"Session Expiry Interval", tt.serverExpiry == nil && !p.SessionExpiryIntervalFlag || tt.serverExpiry != nil && p.SessionExpiryIntervalFlag && p.SessionExpiryInterval == *tt.serverExpiry, [2]any{p.SessionExpiryIntervalFlag, p.SessionExpiryInterval}},
				{"Assigned Client Identifier", p.AssignedClientID == tt.assignedID, p.AssignedClientID},
			}
			for _, ck := range checks {
				if !ck.ok {
					t.Errorf("%s: got %v", ck.what, ck.got)
				}
			}
		})
	}
}

// TestV5QoS2Exchange: PUBREC only once the reading is durable; a repeated
// PUBLISH with an id awaiting PUBREL is answered PUBREC again and not
// stored again; PUBREL -> PUBCOMP; an unknown PUBREL -> PUBCOMP 0x92
// (contract "QoS 2"; MQTT 5.0 §4.3.3, §3.7.2.1).
func TestV5QoS2Exchange(t *testing.T) {
	r := newRig(t, Options{})
	c := r.raw5OK(t, "d1", nil)
	const topic = "devices/d1/telemetry"

	c.send(publishPacket(topic, 2, 7, `{"id":"a","metrics":{"temp":1}}`))
	rec := c.expect(packets.Pubrec)
	if rec.PacketID != 7 || rec.ReasonCode != 0 {
		t.Fatalf("PUBREC id %d reason %#02x, want 7 0x00", rec.PacketID, rec.ReasonCode)
	}
	if n := r.stored(t); n != 1 {
		t.Fatalf("at PUBREC %d readings durable, want 1", n)
	}

	dup := publishPacket(topic, 2, 7, `{"id":"a","metrics":{"temp":1}}`)
	dup.FixedHeader.Dup = true
	c.send(dup)
	if rec := c.expect(packets.Pubrec); rec.PacketID != 7 || rec.ReasonCode != 0 {
		t.Fatalf("PUBREC for the repeat: id %d reason %#02x, want 7 0x00", rec.PacketID, rec.ReasonCode)
	}
	c.send(ackPacket(packets.Pubrel, 7))
	if cp := c.expect(packets.Pubcomp); cp.PacketID != 7 || cp.ReasonCode != 0 {
		t.Fatalf("PUBCOMP id %d reason %#02x, want 7 0x00", cp.PacketID, cp.ReasonCode)
	}
	if n := r.stored(t); n != 1 {
		t.Fatalf("the repeated PUBLISH was stored again: %d readings", n)
	}

	// The id is released: PUBREL again is for an unknown id.
	c.send(ackPacket(packets.Pubrel, 7))
	if cp := c.expect(packets.Pubcomp); cp.PacketID != 7 || cp.ReasonCode != packets.ErrPacketIdentifierNotFound.Code {
		t.Fatalf("PUBCOMP for a released id: id %d reason %#02x, want 7 0x92", cp.PacketID, cp.ReasonCode)
	}
	c.send(ackPacket(packets.Pubrel, 9))
	if cp := c.expect(packets.Pubcomp); cp.PacketID != 9 || cp.ReasonCode != packets.ErrPacketIdentifierNotFound.Code {
		t.Fatalf("PUBCOMP for a never used id: id %d reason %#02x, want 9 0x92", cp.PacketID, cp.ReasonCode)
	}

	// ...and a new message may use it.
	c.send(publishPacket(topic, 2, 7, `{"id":"b","metrics":{"temp":2}}`))
	if rec := c.expect(packets.Pubrec); rec.PacketID != 7 || rec.ReasonCode != 0 {
		t.Fatalf("PUBREC for a new message on id 7: reason %#02x", rec.ReasonCode)
	}
	if n := r.stored(t); n != 2 {
		t.Fatalf("new message on a released id: %d readings durable, want 2", n)
	}
}

// TestV5QoS2AwaitingPubrelLimit: at most Receive Maximum (32) QoS 2
// messages awaiting PUBREL; the next is a DISCONNECT 0x93 (contract "QoS
// 2"; MQTT 5.0 §3.3.4 [MQTT-3.3.4-9]).
func TestV5QoS2AwaitingPubrelLimit(t *testing.T) {
	r := newRig(t, Options{})
	c := r.raw5OK(t, "d1", nil)
	for i := 1; i <= 33; i++ {
		c.send(publishPacket("devices/d1/telemetry", 2, uint16(i), fmt.Sprintf(`{"id":"%d","metrics":{"n":%d}}`, i, i)))
	}
	for i := 1; i <= 32; i++ {
		if rec := c.expect(packets.Pubrec); rec.PacketID != uint16(i) || rec.ReasonCode != 0 {
			t.Fatalf("PUBREC %d: id %d reason %#02x", i, rec.PacketID, rec.ReasonCode)
		}
	}
	c.expectDisconnect(packets.ErrReceiveMaximum.Code)
}

// TestV5ProtocolDisconnects: what the server answers with a DISCONNECT
// and a close (contract "Publish in", "Subscribe", "Connect").
func TestV5ProtocolDisconnects(t *testing.T) {
	r := newRig(t, Options{MaxPacketBytes: 16 << 10})
	alias := func(topic string, a uint16) packets.Packet {
		pk := publishPacket(topic, 1, 1, `{"metrics":{"a":1}}`)
		pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = a, true
		return pk
	}
	retained := publishPacket("devices/d1/telemetry", 1, 1, `{"metrics":{"a":1}}`)
	retained.FixedHeader.Retain = true
	subID := subscribePacket(1, "devices/d1/commands")
	subID.Properties.SubscriptionIdentifier = []int{5}
	// The fixed header of a PUBLISH announcing one byte more than the
	// maximum, and no body: the server must answer without reading it.
	var oversize bytes.Buffer
	(&packets.FixedHeader{Type: packets.Publish, Qos: 1, Remaining: 16<<10 + 1}).Encode(&oversize)
	tests := []struct {
		name string
		pk   *packets.Packet
		raw  []byte
		code byte
	}{
		{"retain 1 (Retain Available 0)", &retained, nil, packets.ErrRetainNotSupported.Code},
		{"topic alias 17 (maximum 16)", ptr(alias("devices/d1/telemetry", 17)), nil, packets.ErrTopicAliasInvalid.Code},
		{"unknown topic alias, empty topic", ptr(alias("", 3)), nil, packets.ErrProtocolViolation.Code},
		{"SUBSCRIBE with a Subscription Identifier", &subID, nil, packets.ErrSubscriptionIdentifiersNotSupported.Code},
		{"a second CONNECT", ptr(connectPacket(5, "d1", r.tokens["d1"])), nil, packets.ErrProtocolViolation.Code},
		{"remaining length over Maximum Packet Size", nil, oversize.Bytes(), packets.ErrPacketTooLarge.Code},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := r.stored(t)
			c := r.raw5OK(t, "d1", nil)
			if tt.pk != nil {
				c.send(*tt.pk)
			} else {
				c.write(tt.raw)
			}
			c.expectDisconnect(tt.code)
			if n := r.stored(t); n != before {
				t.Fatalf("stored %d readings", n-before)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestV5PublishWildcardTopic: a PUBLISH topic with a wildcard is not a
// topic at all ([MQTT-3.3.2-2]): a protocol error, DISCONNECT 0x90 Topic
// Name invalid (5.0 §4.13), nothing stored.
func TestV5PublishWildcardTopic(t *testing.T) {
	r := newRig(t, Options{})
	for _, tt := range []struct {
		topic string
		qos   byte
	}{{"devices/+/telemetry", 1}, {"devices/d1/#", 1}, {"devices/+/telemetry", 2}, {"devices/d1/#", 0}} {
		c := r.raw5OK(t, "d1", nil)
		c.send(publishPacket(tt.topic, tt.qos, uint16(min(tt.qos, 1)), `{"metrics":{"a":1}}`))
		c.expectDisconnect(rcTopicNameInvalid)
	}
	if n := r.stored(t); n != 0 {
		t.Fatalf("stored %d readings", n)
	}
}

// TestV5TopicAlias: an alias set with a topic, then used with an empty
// topic, publishes to that topic (contract "v5 topic alias"; MQTT 5.0
// §3.3.2.3.4).
func TestV5TopicAlias(t *testing.T) {
	r := newRig(t, Options{})
	c := r.raw5OK(t, "d1", nil)
	for i, topic := range []string{"devices/d1/telemetry", "", ""} {
		pk := publishPacket(topic, 1, uint16(i+1), fmt.Sprintf(`{"id":"%d","metrics":{"n":%d}}`, i, i))
		pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 16, true
		c.send(pk)
		if ack := c.expect(packets.Puback); ack.PacketID != uint16(i+1) || ack.ReasonCode != 0 {
			t.Fatalf("publish %d (topic %q, alias 16): PUBACK id %d reason %#02x %q", i, topic, ack.PacketID, ack.ReasonCode, ack.Properties.ReasonString)
		}
		if n := r.stored(t); n != i+1 {
			t.Fatalf("after publish %d: %d readings", i, n)
		}
	}
	// An alias pointing at a topic the device may not publish to is
	// refused like the topic itself.
	pk := publishPacket("devices/d2/telemetry", 1, 9, `{"metrics":{"n":1}}`)
	pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 2, true
	c.send(pk)
	pk = publishPacket("", 1, 10, `{"metrics":{"n":1}}`)
	pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 2, true
	c.send(pk)
	for _, id := range []uint16{9, 10} {
		if ack := c.expect(packets.Puback); ack.PacketID != id || ack.ReasonCode != packets.ErrNotAuthorized.Code {
			t.Fatalf("publish %d to d2 through an alias: PUBACK id %d reason %#02x", id, ack.PacketID, ack.ReasonCode)
		}
	}
	if n := r.stored(t); n != 3 {
		t.Fatalf("%d readings, want 3", n)
	}
}

// TestV5ProblemInformation: reason strings are omitted when the client set
// Request Problem Information 0 or when they would exceed its Maximum
// Packet Size (contract "Reason strings"; MQTT 5.0 §3.1.2.11.7,
// §3.1.2.11.4 [MQTT-3.1.2-25]).
func TestV5ProblemInformation(t *testing.T) {
	r := newRig(t, Options{})
	tests := []struct {
		name   string
		tweak  func(*packets.Packet)
		reason bool
	}{
		{"default: a reason string", nil, true},
		{"Request Problem Information 1", func(pk *packets.Packet) {
			pk.Properties.RequestProblemInfo, pk.Properties.RequestProblemInfoFlag = 1, true
		}, true},
		{"Request Problem Information 0", func(pk *packets.Packet) {
			pk.Properties.RequestProblemInfo, pk.Properties.RequestProblemInfoFlag = 0, true
		}, false},
		{"client Maximum Packet Size 32", func(pk *packets.Packet) { pk.Properties.MaximumPacketSize = 32 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := r.raw5OK(t, "d1", tt.tweak)
			c.send(publishPacket("devices/d1/telemetry", 1, 3, `{"metrics":{"temp":null}}`))
			ack := c.expect(packets.Puback)
			if ack.PacketID != 3 || ack.ReasonCode != packets.ErrPayloadFormatInvalid.Code {
				t.Fatalf("PUBACK id %d reason %#02x, want 3 0x99", ack.PacketID, ack.ReasonCode)
			}
			rs := ack.Properties.ReasonString
			if tt.reason && (!strings.Contains(rs, "metrics.temp") || len(rs) > 256) {
				t.Fatalf("reason string %q, want the field path, at most 256 bytes", rs)
			}
			if !tt.reason && (rs != "" || len(ack.Properties.User) > 0) {
				t.Fatalf("reason string %q, user properties %v: want none", rs, ack.Properties.User)
			}
		})
	}
}

// TestV5SessionResume: a session with a Session Expiry Interval outlives
// its connection with a command in flight; the device resumes it with
// clean start 0 (session present 1), gets the command again first with
// DUP=1 and its packet id, and later commands flow without a new
// SUBSCRIBE (contract "Session state"; MQTT 5.0 §4.4 [MQTT-4.4.0-1]).
func TestV5SessionResume(t *testing.T) {
	r := newRig(t, Options{})
	persistent := func(clean bool) func(*packets.Packet) {
		return func(pk *packets.Packet) {
			pk.Connect.Clean = clean
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 600, true
		}
	}
	c, ack := r.raw5(t, "d1", persistent(true))
	if ack.ReasonCode != 0 || ack.SessionPresent {
		t.Fatalf("first CONNACK %#02x session present %v", ack.ReasonCode, ack.SessionPresent)
	}
	c.subscribeCommands("d1", 1)
	first := r.sendCommand(t, "d1", "reboot")
	pub := c.expect(packets.Publish)
	if pub.FixedHeader.Qos != 1 || pub.FixedHeader.Dup || !strings.Contains(string(pub.Payload), first) {
		t.Fatalf("command PUBLISH qos %d dup %v payload %s", pub.FixedHeader.Qos, pub.FixedHeader.Dup, pub.Payload)
	}
	c.conn.Close() // gone without PUBACK or DISCONNECT
	waitFor(t, "d1 offline", func() bool { d, _ := r.reg.Get("d1"); return !d.Online })

	c2, ack := r.raw5(t, "d1", persistent(false))
	if ack.ReasonCode != 0 || !ack.SessionPresent {
		t.Fatalf("resume CONNACK %#02x session present %v, want 0x00 and 1", ack.ReasonCode, ack.SessionPresent)
	}
	re := c2.expect(packets.Publish)
	if !re.FixedHeader.Dup || re.PacketID != pub.PacketID || !bytes.Equal(re.Payload, pub.Payload) || re.TopicName != pub.TopicName {
		t.Fatalf("first packet after resume: dup %v id %d (want %d) topic %s payload %s", re.FixedHeader.Dup, re.PacketID, pub.PacketID, re.TopicName, re.Payload)
	}
	c2.send(ackPacket(packets.Puback, re.PacketID))
	second := r.sendCommand(t, "d1", "blink")
	for {
		p := c2.expect(packets.Publish)
		c2.send(ackPacket(packets.Puback, p.PacketID))
		if strings.Contains(string(p.Payload), second) {
			break
		}
	}

	// Clean start 1 discards the session.
	c2.conn.Close()
	waitFor(t, "d1 offline", func() bool { d, _ := r.reg.Get("d1"); return !d.Online })
	_, ack = r.raw5(t, "d1", persistent(true))
	if ack.ReasonCode != 0 || ack.SessionPresent {
		t.Fatalf("clean start CONNACK %#02x session present %v, want 0", ack.ReasonCode, ack.SessionPresent)
	}
}

// TestV5PacketIDsIndependent: the client's packet ids and the server's
// are independent: with a command in flight as server packet id X, a
// SUBSCRIBE, a PUBLISH and an UNSUBSCRIBE using X are answered normally,
// and the client's PUBACK X then frees the server's X (contract "SUBACK/
// UNSUBACK carry the SUBSCRIBE's packet id"; MQTT 5.0 §2.2.1).
func TestV5PacketIDsIndependent(t *testing.T) {
	r := newRig(t, Options{})
	c := r.raw5OK(t, "d1", func(pk *packets.Packet) { pk.Properties.ReceiveMaximum = 1 })
	c.subscribeCommands("d1", 100)
	r.sendCommand(t, "d1", "first")
	pub := c.expect(packets.Publish)
	x := pub.PacketID
	c.send(subscribePacket(x, "devices/d1/errors"))
	if sa := c.expect(packets.Suback); sa.PacketID != x || !bytes.Equal(sa.ReasonCodes, []byte{1}) {
		t.Fatalf("SUBSCRIBE on id %d: SUBACK id %d codes % x", x, sa.PacketID, sa.ReasonCodes)
	}
	c.send(publishPacket("devices/d1/telemetry", 1, x, `{"metrics":{"a":1}}`))
	if ack := c.expect(packets.Puback); ack.PacketID != x || ack.ReasonCode != 0 {
		t.Fatalf("PUBLISH on id %d: PUBACK id %d reason %#02x", x, ack.PacketID, ack.ReasonCode)
	}
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: x, Filters: packets.Subscriptions{{Filter: "devices/d1/errors"}}})
	if ua := c.expect(packets.Unsuback); ua.PacketID != x || !bytes.Equal(ua.ReasonCodes, []byte{0}) {
		t.Fatalf("UNSUBSCRIBE on id %d: UNSUBACK id %d codes % x", x, ua.PacketID, ua.ReasonCodes)
	}
	// Receive Maximum 1: the next command comes only once the client's
	// PUBACK x frees the server's packet.
	second := r.sendCommand(t, "d1", "second")
	c.send(ackPacket(packets.Puback, x))
	if p := c.expect(packets.Publish); !strings.Contains(string(p.Payload), second) {
		t.Fatalf("after PUBACK %d: %s, want command %s", x, p.Payload, second)
	}
}

// TestV5SubscribeRefusals: SUBACK reason codes per filter (MQTT 5.0
// §3.9.3); a wildcard or shared filter, which CONNACK said are not
// available, is a protocol error: DISCONNECT 0xA2 / 0x9E (§3.2.2.3.11,
// §3.2.2.3.13).
func TestV5SubscribeRefusals(t *testing.T) {
	r := newRig(t, Options{})
	c := r.raw5OK(t, "d1", nil)
	tests := []struct {
		filter string
		qos    byte
		code   byte
	}{
		{"devices/d1/commands", 1, 0x01},
		{"devices/d1/commands", 2, 0x01}, // granted min(requested, 1)
		{"devices/d1/errors", 0, 0x00},
		{"devices/d2/commands", 1, 0x87},
		{"devices/d2/errors", 1, 0x87},
		{"devices/d1/telemetry", 1, 0x87},
		{"$SYS/broker/uptime", 0, 0x87},
	}
	for i, tt := range tests {
		pk := subscribePacket(uint16(i+1), tt.filter)
		pk.Filters[0].Qos = tt.qos
		c.send(pk)
		sa := c.expect(packets.Suback)
		if sa.PacketID != uint16(i+1) || !bytes.Equal(sa.ReasonCodes, []byte{tt.code}) {
			t.Errorf("subscribe %s qos %d: SUBACK id %d codes % x, want %#02x", tt.filter, tt.qos, sa.PacketID, sa.ReasonCodes, tt.code)
		}
	}
	// All in one SUBSCRIBE: one code per filter, in order.
	pk := subscribePacket(99)
	var want []byte
	for _, tt := range tests {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: tt.filter, Qos: tt.qos})
		want = append(want, tt.code)
	}
	c.send(pk)
	if sa := c.expect(packets.Suback); sa.PacketID != 99 || !bytes.Equal(sa.ReasonCodes, want) {
		t.Errorf("one SUBSCRIBE: SUBACK id %d codes % x, want % x", sa.PacketID, sa.ReasonCodes, want)
	}
	for _, tt := range []struct {
		filter string
		code   byte
	}{{"devices/+/commands", 0xA2}, {"devices/d1/#", 0xA2}, {"#", 0xA2}, {"$share/g/devices/d1/commands", 0x9E}} {
		c := r.raw5OK(t, "d1", nil)
		c.send(subscribePacket(1, "devices/d1/commands", tt.filter))
		c.expectDisconnect(tt.code)
	}
}

// TestV5ReceiveMaximum: commands are sent within the client's Receive
// Maximum: with 1, the second arrives only after the first PUBACK
// (contract "Out"; MQTT 5.0 §3.3.4 [MQTT-3.3.4-7]).
func TestV5ReceiveMaximum(t *testing.T) {
	r := newRig(t, Options{})
	c := r.raw5OK(t, "d1", func(pk *packets.Packet) { pk.Properties.ReceiveMaximum = 1 })
	c.subscribeCommands("d1", 1)
	first, second := r.sendCommand(t, "d1", "first"), r.sendCommand(t, "d1", "second")
	p := c.expect(packets.Publish)
	if !strings.Contains(string(p.Payload), first) {
		t.Fatalf("first PUBLISH %s, want command %s", p.Payload, first)
	}
	// Nothing more while the one allowed is unacknowledged. (An absence:
	// bounded by a short window, long enough for a server that would send.)
	c.expectSilence(time.Second)
	c.send(ackPacket(packets.Puback, p.PacketID))
	if p := c.expect(packets.Publish); !strings.Contains(string(p.Payload), second) {
		t.Fatalf("second PUBLISH %s, want command %s", p.Payload, second)
	}
}

// TestV5Keepalive: a connection silent for 1.5x its keep-alive is closed,
// with DISCONNECT 0x8D or without (contract "Keepalive"; MQTT 5.0
// §3.1.2.10 [MQTT-3.1.2-22]).
func TestV5Keepalive(t *testing.T) {
	r := newRig(t, Options{})
	start := time.Now()
	c := r.raw5OK(t, "d1", func(pk *packets.Packet) { pk.Connect.Keepalive = 1 })
	pk, err := c.next(patience)
	switch {
	case err == nil && pk.FixedHeader.Type == packets.Disconnect:
		if pk.ReasonCode != packets.ErrKeepAliveTimeout.Code {
			t.Fatalf("DISCONNECT %#02x, want 0x8D", pk.ReasonCode)
		}
		c.expectClosed()
	case err == nil:
		t.Fatalf("packet type %d instead of a keep-alive timeout", pk.FixedHeader.Type)
	default:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("silent connection not closed within %s", patience)
		}
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("closed after %s, before the keep-alive of 1 s", d)
	}
	waitFor(t, "heartbeat_timeout presence", func() bool { d, _ := r.reg.Get("d1"); return !d.Online && d.Reason == bridge.ReasonHeartbeatTimeout })
}

// TestV5ReservedConnectFlag: the reserved CONNECT flag set is a malformed
// packet: CONNACK 0x81 (contract "Connect"; MQTT 5.0 §3.1.2.3
// [MQTT-3.1.2-3]).
func TestV5ReservedConnectFlag(t *testing.T) {
	r := newRig(t, Options{})
	c := dialRaw(t, r.addr, 5)
	b, err := encodePacket(connectPacket(5, "d1", r.tokens["d1"]))
	if err != nil {
		t.Fatal(err)
	}
	// Malformed on purpose: the flags byte follows the protocol name and
	// the level.
	i := bytes.Index(b, []byte("\x00\x04MQTT\x05"))
	if i < 0 {
		t.Fatalf("no protocol name in % x", b)
	}
	b[i+7] |= 0x01
	c.write(b)
	if ack := c.expect(packets.Connack); ack.ReasonCode != packets.ErrMalformedPacket.Code {
		t.Fatalf("CONNACK %#02x, want 0x81", ack.ReasonCode)
	}
	c.expectClosed()
}
