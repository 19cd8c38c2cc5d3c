package mqtt

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	pahopackets "github.com/eclipse/paho.golang/packets"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Errors of reading one packet; each ends the connection (docs/protocol.md,
// "MQTT: malformed and oversize packets").
var (
	// errTooLarge: the packet is larger than MaxPacketBytes (fixed
	// header included);
	// the body is never read (MQTT 5 DISCONNECT 0x95, 3.1.1 close).
	errTooLarge = errors.New("packet larger than the maximum packet size")
	// errMalformed: the packet does not decode (MQTT 5 DISCONNECT 0x81).
	errMalformed = errors.New("malformed packet")
)

// smallBody is the read buffer a connection keeps between packets; a
// larger packet gets its own buffer, dropped once it is handled, so an idle
// connection holds little.
const smallBody = 4 << 10

// reader reads MQTT packets off one connection, reusing one body buffer:
// a decoded packet's Payload and strings (topic, filters) alias it and are
// valid only until the next read.
type reader struct {
	br      *bufio.Reader
	body    []byte
	max     int
	last    []byte // the body of the packet read last (CONNECT checks)
	version byte   // 0 until CONNECT is read; then 4 (3.1 and 3.1.1) or 5
}

// read reads the next packet into pk, which must be zero. Decoding is mochi's; a decoder that panics
// on hostile input (some index past the end) is a malformed packet.
func (r *reader) read(pk *packets.Packet) error {
	hb, err := r.br.ReadByte()
	if err != nil {
		return err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return fmt.Errorf("%w: %w", errMalformed, err)
	}
	n, lenBytes, err := packets.DecodeLength(r.br)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%w: %w", errMalformed, err)
	}
	if 1+lenBytes+n > r.max { // Maximum Packet Size counts the whole packet (5.0 §3.1.2.11.4)
		return errTooLarge
	}
	pk.FixedHeader.Remaining = n
	buf := r.body
	// mochi's decoders return strings that alias the body: a CONNECT's
	// (device id, client id) are kept for the whole connection, so it gets
	// a buffer of its own; later packets' strings must be cloned if kept.
	if n > cap(buf) || pk.FixedHeader.Type == packets.Connect {
		buf, err = readGrowing(r.br, n)
		if n <= smallBody && pk.FixedHeader.Type != packets.Connect && err == nil {
			r.body = buf
		}
	} else {
		buf = buf[:n]
		_, err = io.ReadFull(r.br, buf)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	r.last = buf
	pk.ProtocolVersion = r.version
	if err := decode(pk, buf); err != nil {
		return fmt.Errorf("%w: %s: %w", errMalformed, packets.PacketNames[pk.FixedHeader.Type], err)
	}
	return nil
}

// readGrowing reads an n-byte body into a buffer that grows as the bytes
// arrive (doubling from smallBody), never to what the fixed header merely
// announced: a client that announces 256 KiB and sends five bytes holds
// 4 KiB, not 256.
func readGrowing(r io.Reader, n int) ([]byte, error) {
	buf := make([]byte, 0, min(n, smallBody))
	for len(buf) < n {
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, min(cap(buf), n-cap(buf)))...)[:len(buf)]
		}
		m, err := r.Read(buf[len(buf):min(cap(buf), n)])
		buf = buf[:len(buf)+m]
		if err != nil && len(buf) < n {
			return nil, err
		}
	}
	return buf, nil
}

// decode decodes the body of pk by its type with mochi's decoders.
func decode(pk *packets.Packet, buf []byte) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("decoder: %v", p)
		}
	}()
	switch pk.FixedHeader.Type {
	case packets.Connect:
		return pk.ConnectDecode(buf)
	case packets.Publish:
		return pk.PublishDecode(buf)
	case packets.Puback:
		return pk.PubackDecode(buf)
	case packets.Pubrec:
		return pk.PubrecDecode(buf)
	case packets.Pubrel:
		return pk.PubrelDecode(buf)
	case packets.Pubcomp:
		return pk.PubcompDecode(buf)
	case packets.Subscribe:
		return pk.SubscribeDecode(buf)
	case packets.Unsubscribe:
		return pk.UnsubscribeDecode(buf)
	case packets.Pingreq:
		return pk.PingreqDecode(buf)
	case packets.Disconnect:
		return pk.DisconnectDecode(buf)
	case packets.Auth:
		return pk.AuthDecode(buf)
	}
	return fmt.Errorf("packet type %d is not sent by clients", pk.FixedHeader.Type)
}

// hasZeroReceiveMaximum reports whether an MQTT 5 CONNECT body carries the
// Receive Maximum property with the value 0, a protocol error (5.0
// §3.1.2.11.3) that mochi's decoder cannot tell from an absent property
// (it keeps the value, not its presence). The property section is decoded
// again by paho.golang's codec, which keeps presence; only the fixed part
// of the variable header before it (protocol name, level, flags,
// keepalive) is skipped here.
func hasZeroReceiveMaximum(body []byte) bool {
	if len(body) < 2 {
		return false
	}
	off := 2 + (int(body[0])<<8 | int(body[1])) + 1 + 1 + 2
	if off >= len(body) {
		return false
	}
	var p pahopackets.Properties
	if err := p.Unpack(bytes.NewBuffer(body[off:]), pahopackets.CONNECT); err != nil {
		return false // mochi's decoder already accepted it; not this check's concern
	}
	return p.ReceiveMaximum != nil && *p.ReceiveMaximum == 0
}
