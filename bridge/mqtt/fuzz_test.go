package mqtt

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// legalReasons are the reason codes MQTT 5.0 allows a server to send in
// each packet type (§3.2.2.2, §3.4.2.1, §3.5.2.1, §3.7.2.1, §3.9.3,
// §3.11.3, §3.14.2.1; PUBREL is sent by a server only for its own QoS 2,
// §3.6.2.1).
var legalReasons = map[byte][]byte{
	packets.Connack:    {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F},
	packets.Puback:     {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99},
	packets.Pubrec:     {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99},
	packets.Pubrel:     {0x00, 0x92},
	packets.Pubcomp:    {0x00, 0x92},
	packets.Suback:     {0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2},
	packets.Unsuback:   {0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91},
	packets.Disconnect: {0x00, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2},
}

// checkServerPackets reads what the server sends after the CONNACK until
// it closes, and returns why a packet is not what MQTT version v allows
// (nil if all are).
func checkServerPackets(r *bufio.Reader, v byte) error {
	disconnected := false
	for {
		pk, err := readPacket(r, v, 1<<20)
		if err != nil {
			var ne net.Error
			switch {
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, io.ErrUnexpectedEOF) && pk.FixedHeader.Type == 0:
				return nil
			case errors.As(err, &ne) && ne.Timeout():
				return errors.New("the server did not close the connection after the client's end of stream")
			case isReset(err):
				return nil
			}
			return err
		}
		typ := pk.FixedHeader.Type
		if disconnected {
			return errors.New("a packet after DISCONNECT")
		}
		switch typ {
		case packets.Connack:
			return errors.New("a second CONNACK")
		case packets.Auth:
			return errors.New("AUTH, never started by the client")
		case packets.Disconnect:
			if v != 5 {
				return errors.New("DISCONNECT sent to MQTT 3.1.1")
			}
			disconnected = true
		case packets.Publish:
			if pk.FixedHeader.Retain {
				return errors.New("a retained PUBLISH (Retain Available 0)")
			}
		case packets.Suback:
			for _, c := range pk.ReasonCodes {
				if v != 5 && c > 2 && c != 0x80 {
					return errors.New("SUBACK return code not 0, 1, 2 or 0x80 to MQTT 3.1.1")
				}
				if v == 5 && !bytes.Contains(legalReasons[typ], []byte{c}) {
					return errors.New("SUBACK reason code not allowed by MQTT 5.0")
				}
			}
			continue
		case packets.Unsuback:
			for _, c := range pk.ReasonCodes {
				if v == 5 && !bytes.Contains(legalReasons[typ], []byte{c}) {
					return errors.New("UNSUBACK reason code not allowed by MQTT 5.0")
				}
			}
			continue
		}
		if codes, ok := legalReasons[typ]; ok && v == 5 && !bytes.Contains(codes, []byte{pk.ReasonCode}) {
			return fmt.Errorf("reason code %#02x not allowed by MQTT 5.0 in packet type %d", pk.ReasonCode, typ)
		}
	}
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "read"
}

// FuzzPacketPath feeds arbitrary bytes to a gateway connection after a
// valid CONNECT (MQTT 5 when the first byte is odd, 3.1.1 otherwise) and
// half-closes it: the server must not panic, must stay within bounded
// memory, must close the connection, and everything it sends must decode
// with mochi's decoders and carry a reason code legal for its type (and
// to 3.1.1 no DISCONNECT at all).
func FuzzPacketPath(f *testing.F) {
	r := newRigTB(f, Options{MaxPacketBytes: 64 << 10, ConnectRate: 1e9, ConnectBurst: 1 << 30})
	seeds := []packets.Packet{
		subscribePacket(1, "devices/d1/commands", "devices/d1/errors", "#", "$share/g/x"),
		publishPacket("devices/d1/telemetry", 1, 2, `{"metrics":{"temp":1}}`),
		publishPacket("devices/d1/telemetry", 2, 3, `{"metrics":{"temp":null}}`),
		publishPacket("devices/d2/telemetry", 0, 0, `{"metrics":{"temp":1}}`),
		ackPacket(packets.Pubrel, 3),
		ackPacket(packets.Puback, 9),
		{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 4, Filters: packets.Subscriptions{{Filter: "devices/d1/errors"}}},
		{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}},
		{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: 0x04},
	}
	aliased := publishPacket("devices/d1/telemetry", 1, 5, `{"metrics":{"a":1}}`)
	aliased.Properties.TopicAlias, aliased.Properties.TopicAliasFlag = 3, true
	seeds = append(seeds, aliased)
	for _, v := range []byte{4, 5} {
		var all []byte
		for _, pk := range seeds {
			pk.ProtocolVersion = v
			b, err := encodePacket(pk)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(append([]byte{v}, b...))
			all = append(all, b...)
		}
		f.Add(append([]byte{v}, all...))
	}
	f.Add([]byte{5, 0x30, 0xff, 0xff, 0xff, 0x7f}) // a PUBLISH announcing 256 MB
	f.Add([]byte{4, 0xf0, 0x00})                   // AUTH to 3.1.1
	token := r.tokens["d1"]
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		v := byte(4)
		if in[0]&1 == 1 {
			v = 5
		}
		conn, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(patience))
		cp := connectPacket(v, "d1", token)
		b, err := encodePacket(cp)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		ack, err := readPacket(br, v, 1<<20)
		if err != nil || ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
			t.Fatalf("CONNACK %+v: %v", ack, err)
		}
		if _, err := conn.Write(in[1:]); err != nil && !isWriteReset(err) {
			t.Fatal(err)
		}
		_ = conn.(*net.TCPConn).CloseWrite()
		if err := checkServerPackets(br, v); err != nil {
			t.Fatalf("MQTT %d, input % x: %v", v, in, err)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse > 512<<20 {
			t.Fatalf("heap in use %d MiB", ms.HeapInuse>>20)
		}
	})
}

func isWriteReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "write"
}
