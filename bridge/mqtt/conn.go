package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// MQTT 3.1.1 CONNACK return codes (3.1.1 §3.2.2.3): the only ones a 3.1.1
// client may see.
const (
	v3Accepted           byte = 0x00
	v3BadProtocolVersion byte = 0x01
	v3IdentifierRejected byte = 0x02
	v3ServerUnavailable  byte = 0x03
	v3BadCredentials     byte = 0x04
	v3NotAuthorized      byte = 0x05
)

// MQTT 5 reason codes the gateway sends (5.0 §2.4), each only on the
// packet types that allow it (docs/protocol.md lists them per packet).
const (
	rcSuccess              byte = 0x00
	rcGrantedQoS1          byte = 0x01
	rcDisconnectWithWill   byte = 0x04
	rcNoSubscription       byte = 0x11
	rcUnspecified          byte = 0x80
	rcMalformed            byte = 0x81
	rcProtocolError        byte = 0x82
	rcBadProtocolVersion   byte = 0x84
	rcClientIDNotValid     byte = 0x85
	rcBadCredentials       byte = 0x86
	rcNotAuthorized        byte = 0x87
	rcServerShuttingDown   byte = 0x8B
	rcKeepAliveTimeout     byte = 0x8D
	rcSessionTakenOver     byte = 0x8E
	rcTopicFilterInvalid   byte = 0x8F
	rcTopicNameInvalid     byte = 0x90
	rcPacketIDNotFound     byte = 0x92
	rcReceiveMaxExceeded   byte = 0x93
	rcTopicAliasInvalid    byte = 0x94
	rcPacketTooLarge       byte = 0x95
	rcQuotaExceeded        byte = 0x97
	rcPayloadFormatInvalid byte = 0x99
	rcRetainNotSupported   byte = 0x9A
	rcSharedNotSupported   byte = 0x9E
	rcSubIDNotSupported    byte = 0xA1
	rcWildcardNotSupported byte = 0xA2
)

// qos2Wait bounds how long a QoS 2 resend waits for its first copy,
// still being stored by an older connection, before it is refused.
const qos2Wait = 30 * time.Second

// kickFor ends the connection from the reader for reason and reports
// false, for handle's callers.
func (c *conn) kickFor(reason string) bool {
	c.fail(disconnectCode(reason), reason)
	return false
}

// answerFlushBytes is how much of the reader's own answers may wait for
// the input to run dry before they are written anyway.
const answerFlushBytes = 64 << 10

// maxFilterPacket bounds a SUBSCRIBE or UNSUBSCRIBE body: a device has two
// topics to subscribe to, and decoding a packet full of tiny filters
// costs far more than its bytes (docs/protocol.md, "Limits").
const maxFilterPacket = 16 << 10

// refusedAlias stands in for the topic of an MQTT 5 topic alias set on a
// topic the device may not publish to: its uses are refused like the topic
// (0x87), without keeping it. It is no valid topic name.
const refusedAlias = "\x00refused"

// watchSuffix turns a device id into the client id of a debug watcher.
const watchSuffix = ":errors"

// conn is one client connection: a device's (bridge.Conn) or a debug
// watcher's.
type conn struct {
	b         *Broker
	nc        net.Conn
	r         reader
	remote    string
	transport string

	// Set by CONNECT, read-only afterwards.
	version     byte // 4 (3.1 and 3.1.1) or 5
	device      string
	hash        devices.TokenHash
	watcher     bool
	keepalive   time.Duration
	maxOut      uint32 // the client's Maximum Packet Size; 0: none
	recvMax     int    // the client's Receive Maximum
	problemInfo bool   // reason strings allowed on acks
	will        *will

	// Reader-goroutine state.
	answered  int // bytes of answers queued since the last flush (reader's own)
	sess      *session
	bs        *bridge.Session
	aliases   map[uint16]string
	watchErrs bool // a watcher subscribed to the errors topic; guarded by mu
	// stateCancel ends the desired-state watch of the connection (state.go);
	// reader goroutine only.
	stateCancel func()

	wmu        sync.Mutex // serialises socket writes; taken before mu
	mu         sync.Mutex // guards out, spare, flushing, closing, reason, watchErrs
	out, spare *bytes.Buffer
	flushing   bool
	closing    bool
	accepted   bool        // a successful CONNACK is queued: DISCONNECTs may follow
	closed     atomic.Bool // closing, for the reader's check between packets
	reason     string
	kickDone   chan struct{} // closed once a kick closed the socket
}

// will is a device's last will: a telemetry reading or command result
// stored through the pipeline when the connection ends abnormally.
type will struct {
	kind    telemetry.Kind
	payload []byte
	delay   time.Duration
}

// serveConn serves one accepted connection until it ends.
func (b *Broker) serveConn(nc net.Conn, remote, transport string) {
	defer nc.Close()
	if b.open.Add(1) > int64(b.opts.MaxConns) {
		b.open.Add(-1)
		return
	}
	defer b.open.Add(-1)
	c := &conn{
		b: b, nc: nc, remote: remote, transport: transport,
		r:   reader{br: bufio.NewReaderSize(nc, 1024), max: b.opts.MaxPacketBytes},
		out: new(bytes.Buffer), spare: new(bytes.Buffer),
	}
	if !b.conns.Add(c) { // shutting down
		return
	}
	defer b.conns.Done(c)
	if !c.open() {
		c.end(bridge.ReasonProtocolError)
		return
	}
	c.end(c.serve())
}

// open reads the CONNECT and answers it; it reports whether the
// connection goes on. Its own frame (the CONNECT packet, authentication)
// is gone from the stack before serve waits for input, so an idle
// connection's stack stays small (BenchmarkIdleConnectionMemory).
func (c *conn) open() bool {
	_ = c.nc.SetDeadline(time.Now().Add(c.b.opts.ConnectTimeout))
	pk := new(packets.Packet)
	err := c.r.read(pk)
	if err != nil || pk.FixedHeader.Type != packets.Connect {
		// Not MQTT, or not a CONNECT first (§3.1, [MQTT-3.1.0-1]); a
		// CONNECT that does not decode is answered in connect.
		if err == nil || !errors.Is(err, errMalformed) || !c.connectMalformed(pk) {
			return false
		}
		c.flush()
		return false
	}
	ok := c.connect(pk)
	c.flush()
	if ok {
		_ = c.nc.SetWriteDeadline(time.Time{})
	}
	return ok
}

// connectMalformed answers a CONNECT that did not decode: an MQTT 5
// client gets CONNACK 0x81 (5.0 §3.1.4), a 3.1.1 one a closed connection.
// pk holds what was decoded before the error.
func (c *conn) connectMalformed(pk *packets.Packet) bool {
	if pk.FixedHeader.Type != packets.Connect || pk.ProtocolVersion != 5 || !bytes.Equal(pk.Connect.ProtocolName, []byte("MQTT")) {
		return false
	}
	c.setVersion(5)
	c.connack(rcMalformed, false, nil)
	return true
}

// serve reads and handles packets until the connection ends, and returns
// the bridge's reason for the end.
func (c *conn) serve() string {
	idle := c.keepalive + c.keepalive/2 // [MQTT-3.1.2-24]
	var armed time.Time                 // when the read deadline was last set
	pk := new(packets.Packet)           // reused: off the stack of an idle reader
	for {
		if c.r.br.Buffered() == 0 {
			if !c.flush() {
				return c.kickReason(bridge.ReasonSlowConsumer)
			}
			c.answered = 0
		}
		// Re-armed before every wait for input, and now and then while a
		// busy client keeps the buffer full.
		if now := time.Now(); c.r.br.Buffered() == 0 || now.Sub(armed) > idle/4 {
			_ = c.nc.SetReadDeadline(now.Add(idle))
			armed = now
		}
		if err := c.r.read(pk); err != nil {
			return c.readFailed(err)
		}
		if c.closed.Load() {
			// Kicked (superseded, revoked): what it read meanwhile must not
			// touch the session its successor may have resumed.
			return c.kickReason(bridge.ReasonNetworkError)
		}
		ok := c.handle(pk)
		*pk = packets.Packet{} // an idle reader keeps no packet (nor its body)
		if !ok {
			return c.kickReason(bridge.ReasonProtocolError)
		}
		// A client that keeps sending without reading what it is answered
		// (PINGREQ floods, a stream that never leaves the input buffer
		// empty) is written to now, and cut if it does not read.
		if c.answered > answerFlushBytes {
			if !c.flush() {
				return c.kickReason(bridge.ReasonSlowConsumer)
			}
			c.answered = 0
		}
	}
}

// handle answers one packet; false ends the connection (the reason was
// recorded by kick where it is not a protocol error).
func (c *conn) handle(pk *packets.Packet) bool {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		return c.publish(pk)
	case packets.Puback:
		if c.sess != nil && c.sess.acked(c, pk.PacketID) {
			c.b.opts.Commands.DeliverCommands(c.device)
		}
		return true
	case packets.Pubrel:
		return c.pubrel(pk)
	case packets.Subscribe:
		return c.subscribe(pk)
	case packets.Unsubscribe:
		return c.unsubscribe(pk)
	case packets.Pingreq:
		c.answer(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}})
		return true
	case packets.Disconnect:
		c.disconnected(pk)
		return false
	}
	// A second CONNECT ([MQTT-3.1.0-2]), PUBREC or PUBCOMP for a QoS 2
	// message the hub never sends, AUTH without an authentication
	// method: protocol errors.
	c.fail(rcProtocolError, bridge.ReasonProtocolError)
	return false
}

// readFailed maps a read error to the connection's end, telling an MQTT 5
// client why where the specification lets the server (§4.13).
func (c *conn) readFailed(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, errTooLarge):
		c.fail(rcPacketTooLarge, bridge.ReasonReadLimit)
	case errors.Is(err, errMalformed):
		c.fail(rcMalformed, bridge.ReasonProtocolError)
	case errors.Is(err, errTooManyFilters):
		c.fail(rcQuotaExceeded, bridge.ReasonProtocolError)
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		c.fail(rcKeepAliveTimeout, bridge.ReasonHeartbeatTimeout)
	case errors.Is(err, io.EOF):
		return c.kickReason(bridge.ReasonClientClosed)
	default:
		return c.kickReason(bridge.ReasonNetworkError)
	}
	return c.kickReason(bridge.ReasonProtocolError)
}

// kickReason is the reason recorded by a kick, or def.
func (c *conn) kickReason(def string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reason != "" {
		return c.reason
	}
	return def
}

// fail ends the connection for a protocol reason: MQTT 5 clients get a
// DISCONNECT with code, 3.1.1 clients a closed connection (3.1.1 has no
// server DISCONNECT).
//
// Reader goroutine only: the bridge session records the reason too, so a
// supersede by the device's reconnect, arriving while this connection is
// still closing, does not replace it.
func (c *conn) fail(code byte, reason string) {
	if c.bs != nil {
		c.bs.Ending(reason)
	}
	c.kickCode(reason, code)
}

// Close is bridge.Conn's: the session was superseded, revoked, or the hub
// is shutting down.
func (c *conn) Close(reason string) { c.kick(reason) }

// Deliver is bridge.Conn's: a command for the device.
func (c *conn) Deliver(cmd telemetry.Command) bool {
	if c.sess == nil {
		return false
	}
	return c.sess.deliver(c, cmd)
}

// disconnectCode is the MQTT 5 DISCONNECT reason code for a bridge end
// reason; 0 sends none.
func disconnectCode(reason string) byte {
	switch reason {
	case bridge.ReasonSuperseded:
		return rcSessionTakenOver
	case bridge.ReasonServerShutdown:
		return rcServerShuttingDown
	case bridge.ReasonRevoked:
		return rcNotAuthorized
	case bridge.ReasonSlowConsumer:
		return rcQuotaExceeded
	case bridge.ReasonBackpressure:
		return rcQuotaExceeded
	}
	return 0
}

// kick ends the connection for reason without blocking: an MQTT 5 client
// is told why (DISCONNECT), then the socket is closed, which ends the
// reader. The first reason wins.
func (c *conn) kick(reason string) { c.kickCode(reason, disconnectCode(reason)) }

func (c *conn) kickCode(reason string, code byte) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.closing, c.reason = true, reason
	c.closed.Store(true)
	if c.version == 5 && code != 0 && c.accepted {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5, ReasonCode: code}
		_ = pk.DisconnectEncode(c.out)
	}
	c.kickDone = make(chan struct{})
	done := c.kickDone
	c.mu.Unlock()
	go func() { // owner: the connection; serveConn's end waits for it
		defer close(done)
		// Answers already queued (acks of stored readings) and the
		// DISCONNECT go out first, briefly.
		c.flushWithin(2 * time.Second)
		_ = c.nc.Close()
	}()
}

// waitKicked waits until a kick's final flush and close are done, if one
// was started.
func (c *conn) waitKicked() {
	c.mu.Lock()
	done := c.kickDone
	c.mu.Unlock()
	if done != nil {
		<-done
	}
}

// end tidies up after the reader stopped: the will, the session table, the
// bridge session.
func (c *conn) end(reason string) {
	c.kick(reason) // closes the socket if nothing else did
	c.mu.Lock()
	done := c.kickDone
	c.mu.Unlock()
	<-done
	b := c.b
	if c.device == "" {
		return // never connected
	}
	c.stopState()
	if c.watcher {
		b.mu.Lock()
		delete(b.watchers[c.device], c)
		if len(b.watchers[c.device]) == 0 {
			delete(b.watchers, c.device)
		}
		b.mu.Unlock()
		return
	}
	if c.will != nil && willFires(reason) && !(c.will.delay > 0 && c.resumedElsewhere()) {
		b.scheduleWill(c.device, c.remote, c.transport, c.hash, c.will, c.sess)
	}
	b.detach(c)
	if c.bs != nil {
		if reason == reasonNormalDisconnect {
			reason = bridge.ReasonClientClosed
		}
		b.opts.Bridge.Disconnect(c.bs, reason)
	}
}

// resumedElsewhere reports whether another connection resumed c's
// session: a delayed will is then never sent ([MQTT-3.1.3-9]).
func (c *conn) resumedElsewhere() bool {
	if c.sess == nil {
		return false
	}
	c.sess.mu.Lock()
	defer c.sess.mu.Unlock()
	return c.sess.conn != nil && c.sess.conn != c
}

// willFires says whether a connection that ended for reason publishes its
// will: after everything but a normal DISCONNECT ([MQTT-3.1.2-8]), a
// supersede included (5.0 §3.1.4); also not after a revocation (the
// credential that set it is no longer good) or a shutdown (every device
// would leave one at each restart): both departures are documented.
func willFires(reason string) bool {
	switch reason {
	case bridge.ReasonRevoked, bridge.ReasonServerShutdown, reasonNormalDisconnect:
		return false
	}
	return true
}

// reasonNormalDisconnect marks a DISCONNECT 0x00 (or a 3.1.1 DISCONNECT)
// from the client: the bridge counts it as client_closed, and the will is
// discarded.
const reasonNormalDisconnect = "client_closed_normally"

// disconnected handles the client's DISCONNECT.
func (c *conn) disconnected(pk *packets.Packet) {
	reason := reasonNormalDisconnect
	if c.version == 5 {
		if pk.ReasonCode != rcSuccess {
			// Only 0x00 Normal disconnection discards the will
			// ([MQTT-3.1.2-10]); 0x04 asks for it, and an error code is
			// an abnormal end ([MQTT-3.1.2-8]).
			reason = bridge.ReasonClientClosed
		}
		if pk.Properties.SessionExpiryIntervalFlag && c.sess != nil {
			if pk.Properties.SessionExpiryInterval > 0 && !c.b.hasExpiry(c) {
				// A session that had none may not be given one now
				// (5.0 §3.14.2.2.2): a protocol error, and the will goes.
				c.fail(rcProtocolError, bridge.ReasonProtocolError)
				return
			}
			c.b.setExpiry(c, pk.Properties.SessionExpiryInterval)
		}
	}
	c.mu.Lock()
	if c.closing { // kicked meanwhile: that reason stands
		c.mu.Unlock()
		return
	}
	c.closing, c.reason = true, reason
	c.closed.Store(true)
	c.kickDone = make(chan struct{})
	done := c.kickDone
	c.mu.Unlock()
	_ = c.nc.Close()
	close(done)
}

// --- writing ---

// answer appends the reader's own answer (an ack) to the output; it goes
// out with the others once no more input is buffered. Reader goroutine
// only (c.answered is its own).
func (c *conn) answer(pk *packets.Packet) {
	pk.ProtocolVersion = c.version
	pk.Mods = packets.Mods{MaxSize: c.maxOut, DisallowProblemInfo: !c.problemInfo}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	n := c.out.Len()
	encodeInto(pk, c.out)
	c.answered += c.out.Len() - n // reader goroutine only, like answer
}

// encodeInto encodes an answer with mochi's encoders.
func encodeInto(pk *packets.Packet, buf *bytes.Buffer) {
	switch pk.FixedHeader.Type {
	case packets.Connack:
		_ = pk.ConnackEncode(buf)
	case packets.Puback:
		_ = pk.PubackEncode(buf)
	case packets.Pubrec:
		_ = pk.PubrecEncode(buf)
	case packets.Pubcomp:
		_ = pk.PubcompEncode(buf)
	case packets.Suback:
		_ = pk.SubackEncode(buf)
	case packets.Unsuback:
		_ = pk.UnsubackEncode(buf)
	case packets.Pingresp:
		_ = pk.PingrespEncode(buf)
	case packets.Publish:
		_ = pk.PublishEncode(buf)
	}
}

// sendPublish appends a PUBLISH from the hub (a command, an error frame)
// and makes sure it is written; false when the connection is closing, the
// output is full, or the packet is larger than the client takes (which
// the specification says to drop: 5.0 §3.1.2.11.4, [MQTT-3.1.2-25]).
func (c *conn) sendPublish(topic string, payload []byte, qos byte, id uint16, dup bool) bool {
	return c.publishOut(topic, payload, qos, id, dup, outBufferBytes) == sent
}

// outcome is what became of a PUBLISH from the hub.
type outcome uint8

const (
	sent    outcome = iota // queued for the client
	refused                // closing or output full: try again later
	dropped                // larger than the client takes: never sendable
)

// commandTooLarge fails a command no PUBLISH to this client can carry
// (larger than its Maximum Packet Size): the operator sees why, and it
// holds no slot of the window. Deliver runs on the command service's own
// goroutine, so the result is handed over from another one.
func (c *conn) commandTooLarge(id string) {
	b := c.b
	b.background.Add(1)
	go func() { // owner: the Broker; Run waits for background
		defer b.background.Done()
		r := &telemetry.CommandResult{ID: id, Status: telemetry.ResultError,
			Error: fmt.Sprintf("command larger than the device's MQTT Maximum Packet Size (%d bytes)", c.maxOut)}
		_ = b.opts.Commands.CommandResult(c.device, r)
	}()
}

func (c *conn) publishOut(topic string, payload []byte, qos byte, id uint16, dup bool, limit int) outcome {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: qos, Dup: dup},
		TopicName:       topic,
		Payload:         payload,
		PacketID:        id,
		ProtocolVersion: c.version,
	}
	c.mu.Lock()
	if c.closing || c.out.Len() > limit {
		c.mu.Unlock()
		return refused
	}
	start := c.out.Len()
	_ = pk.PublishEncode(c.out)
	if c.maxOut > 0 && uint32(c.out.Len()-start) > c.maxOut {
		c.out.Truncate(start)
		c.mu.Unlock()
		if n, ok := c.b.publishLog.Allow(); ok {
			c.b.log.Info("mqtt publish dropped: larger than the client's maximum packet size", "device", c.device,
				"topic", topic, "bytes", len(payload), "max", c.maxOut, "suppressed", n)
		}
		return dropped
	}
	start = 0
	if !c.flushing {
		c.flushing = true
		start = 1
	}
	c.mu.Unlock()
	if start == 1 {
		go c.flushLoop() // owner: the connection; ends once the output is empty
	}
	return sent
}

// flushLoop writes what other goroutines appended until the output is
// empty.
func (c *conn) flushLoop() {
	for {
		if !c.flush() {
			c.mu.Lock()
			c.flushing = false
			c.mu.Unlock()
			c.kick(bridge.ReasonSlowConsumer)
			return
		}
		c.mu.Lock()
		if c.out.Len() == 0 {
			c.flushing = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
	}
}

// flush writes the output; false if the write failed or timed out.
func (c *conn) flush() bool {
	return c.flushDeadline(time.Now().Add(c.b.opts.WriteTimeout))
}

// flushWithin is flush with a shorter deadline (a DISCONNECT on the way out).
func (c *conn) flushWithin(d time.Duration) { c.flushDeadline(time.Now().Add(d)) }

func (c *conn) flushDeadline(deadline time.Time) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	data := c.out
	if data.Len() == 0 {
		c.mu.Unlock()
		return true
	}
	c.out, c.spare = c.spare, nil
	c.mu.Unlock()
	_ = c.nc.SetWriteDeadline(deadline)
	_, err := c.nc.Write(data.Bytes())
	data.Reset()
	if data.Cap() > 64<<10 {
		data = new(bytes.Buffer) // do not keep a large buffer for an idle client
	}
	c.mu.Lock()
	c.spare = data
	c.mu.Unlock()
	return err == nil
}

// --- CONNECT ---

// setVersion records the client's protocol version; under mu, since a
// kick from another goroutine reads it to decide on a DISCONNECT.
func (c *conn) setVersion(v byte) {
	c.mu.Lock()
	c.version = v
	c.mu.Unlock()
}

// connack appends a CONNACK. Once a successful one is out, a kick may
// tell an MQTT 5 client why with a DISCONNECT; before, it may not
// ([MQTT-3.14.0-1]).
func (c *conn) connack(code byte, present bool, props *packets.Properties) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: code, SessionPresent: present}
	if props != nil && c.version == 5 {
		pk.Properties = *props
	}
	c.answer(&pk)
	if code == rcSuccess {
		c.mu.Lock()
		c.accepted = true
		c.mu.Unlock()
	}
}

// refuseConnect answers a refused CONNECT in the client's version and logs
// it (rate-limited). v3 must be a 3.1.1 return code, v5 an MQTT 5 one.
func (c *conn) refuseConnect(v3, v5 byte, why string, user, clientID string) bool {
	code := v3
	if c.version == 5 {
		code = v5
	}
	c.connack(code, false, nil)
	msg := "mqtt connect refused"
	if code == v3IdentifierRejected || code == rcClientIDNotValid {
		msg = "mqtt client id refused"
	}
	if n, ok := c.b.connectLog.Allow(); ok {
		c.b.log.Info(msg, "device", telemetry.Truncate(user, 64), "client_id", telemetry.Truncate(clientID, 64),
			"remote", c.remote, "reason", why, "code", fmt.Sprintf("%#02x", code), "suppressed", n)
	}
	return false
}

// connect checks a CONNECT and, if it is accepted, opens the session; it
// reports whether the connection goes on. The order of the checks is the
// order of docs/protocol.md, "MQTT: connecting".
func (c *conn) connect(pk *packets.Packet) bool {
	name := string(pk.Connect.ProtocolName)
	switch {
	case name == "MQTT" && (pk.ProtocolVersion == 4 || pk.ProtocolVersion == 5), name == "MQIsdp" && pk.ProtocolVersion == 3:
	case name == "MQTT" || name == "MQIsdp":
		// Unsupported level: 0x01 in the 3.1.1 form, which every version
		// reads ([MQTT-3.1.2-2]; 5.0 clients at level 5 never get here).
		c.setVersion(4)
		return c.refuseConnect(v3BadProtocolVersion, v3BadProtocolVersion, "unsupported protocol level", "", "")
	default:
		return false // not MQTT: close without CONNACK ([MQTT-3.1.2-1])
	}
	if pk.ProtocolVersion == 5 {
		c.setVersion(5)
	} else {
		c.setVersion(4)
	}
	c.r.version = c.version
	user, id := string(pk.Connect.Username), pk.Connect.ClientIdentifier
	cf := pk.Connect
	switch {
	case pk.ReservedBit != 0, !cf.WillFlag && (cf.WillQos != 0 || cf.WillRetain), cf.WillQos > 2:
		// Malformed flags ([MQTT-3.1.2-3], [MQTT-3.1.2-11], [MQTT-3.1.2-14]).
		if c.version == 5 {
			return c.refuseConnect(0, rcMalformed, "malformed connect flags", user, id)
		}
		return false
	case c.version == 4 && cf.PasswordFlag && !cf.UsernameFlag:
		return false // [MQTT-3.1.2-22]
	}
	if c.version == 5 {
		if why := connectPropertyError(c.r.last); why != "" {
			return c.refuseConnect(0, rcProtocolError, why, user, id)
		}
	}

	if !cf.UsernameFlag || user == "" {
		return c.badCredentials(user)
	}
	// Client id = device id ("" is assigned it), or the device's watcher.
	switch {
	case id == user && user != "":
	case id == user+watchSuffix && user != "":
		c.watcher = true
	case id == "" && user != "" && (c.version == 5 || cf.Clean):
	case id == "" && c.version == 4:
		// [MQTT-3.1.3-8]: 3.1.1 assigns no id to a persistent session.
		return c.refuseConnect(v3IdentifierRejected, rcClientIDNotValid, "empty client id without clean session", user, id)
	default:
		return c.refuseConnect(v3IdentifierRejected, rcClientIDNotValid, "client id must be the device id", user, id)
	}
	hash, ok := c.b.opts.Auth.AuthenticateDevice(user, string(cf.Password))
	if !ok {
		return c.badCredentials(user)
	}
	c.device, c.hash = user, hash

	if cf.WillFlag {
		if c.version == 5 && cf.WillRetain {
			return c.refuseConnect(0, rcRetainNotSupported, "will retain (retain is not available)", user, id)
		}
		wid, kind, ok := telemetry.ParseTopic(cf.WillTopic)
		if c.watcher || !ok || wid != user || (kind != telemetry.KindTelemetry && kind != telemetry.KindCommandResult) {
			c.b.aclDenied(user, cf.WillTopic, true)
			return c.refuseConnect(v3NotAuthorized, rcNotAuthorized, "will topic not allowed", user, id)
		}
		c.will = &will{kind: kind, payload: bytes.Clone(cf.WillPayload), delay: time.Duration(cf.WillProperties.WillDelayInterval) * time.Second}
	}

	c.keepalive = time.Duration(cf.Keepalive) * time.Second
	props := &packets.Properties{
		MaximumPacketSize: uint32(c.b.opts.MaxPacketBytes),
		ReceiveMaximum:    receiveMaximum,
		TopicAliasMaximum: topicAliasMaximum,
		RetainAvailable:   0, RetainAvailableFlag: true,
		WildcardSubAvailable: 0, WildcardSubAvailableFlag: true,
		SubIDAvailable: 0, SubIDAvailableFlag: true,
		SharedSubAvailable: 0, SharedSubAvailableFlag: true,
	}
	if c.keepalive == 0 || c.keepalive > c.b.opts.MaxKeepalive {
		c.keepalive = c.b.opts.MaxKeepalive
		props.ServerKeepAlive, props.ServerKeepAliveFlag = uint16(c.keepalive/time.Second), true
	}
	if id == "" {
		props.AssignedClientID = user
	}
	c.recvMax = 65535
	c.problemInfo = true
	if c.version == 5 {
		c.maxOut = pk.Properties.MaximumPacketSize
		if pk.Properties.ReceiveMaximum > 0 {
			c.recvMax = int(pk.Properties.ReceiveMaximum)
		}
		if pk.Properties.RequestProblemInfoFlag && pk.Properties.RequestProblemInfo == 0 {
			c.problemInfo = false
		}
	}
	if c.watcher {
		if c.version == 5 && pk.Properties.SessionExpiryInterval > 0 {
			props.SessionExpiryInterval, props.SessionExpiryIntervalFlag = 0, true // a watcher keeps no session
		}
		return c.openWatch(props)
	}

	expiry := c.b.opts.MaxSessionExpiry
	if c.version == 5 {
		asked := time.Duration(pk.Properties.SessionExpiryInterval) * time.Second
		if pk.Properties.SessionExpiryInterval == 0xFFFFFFFF || asked > expiry {
			props.SessionExpiryInterval, props.SessionExpiryIntervalFlag = uint32(expiry/time.Second), true
		} else {
			expiry = asked
		}
	} else if cf.Clean {
		expiry = 0
	}
	// Two CONNECTs of one device must not interleave between taking the
	// session and becoming the bridge's current session, or the session
	// table and the bridge would name different connections.
	unlock := c.b.lockDevice(c.device)
	present := c.b.attach(c, cf.Clean, expiry)
	c.connack(rcSuccess, present, props)
	if present {
		c.sess.resend(c)
	}
	c.bs = c.b.opts.Bridge.Connect(c.device, c.transport, c.remote, hash, c)
	unlock()
	c.sess.mu.Lock()
	desired := present && c.sess.desired && c.sess.conn == c
	c.sess.mu.Unlock()
	if desired { // a resumed subscription: changes missed while away follow
		c.watchState(false)
	}
	return true
}

// badCredentials refuses a CONNECT whose username and password are not a
// device's id and token (3.1.1 0x04, 5.0 0x86). Failures of this address
// with this username only keep refusals out of the log once past their
// budget; the answer is the same either way.
func (c *conn) badCredentials(user string) bool {
	if c.b.opts.OnAuthFailure != nil {
		c.b.opts.OnAuthFailure(devices.TransportMQTT)
	}
	c.b.opts.Failures.Refuse(c.b.log, "device authentication failed", c.remote, user, "transport", devices.TransportMQTT)
	code := v3NotAuthorized // documented since the first release; 0x04 would do as well
	if c.version == 5 {
		code = rcBadCredentials
	}
	c.connack(code, false, nil)
	return false
}

// openWatch accepts a debug watcher: read-only, never a session of its
// own, at most maxWatchers per device (docs/protocol.md, "Watching a
// device's errors").
func (c *conn) openWatch(props *packets.Properties) bool {
	b := c.b
	b.mu.Lock()
	w := b.watchers[c.device]
	if len(w) >= maxWatchers {
		b.mu.Unlock()
		return c.refuseConnect(v3ServerUnavailable, rcQuotaExceeded, "too many watchers for this device", c.device, c.device+watchSuffix)
	}
	if w == nil {
		w = map[*conn]bool{}
		b.watchers[c.device] = w
	}
	w[c] = true
	b.mu.Unlock()
	c.connack(rcSuccess, false, props)
	// A rotation between AuthenticateDevice and here found no watcher to close.
	if !b.opts.Auth.StillValid(c.device, c.hash) {
		c.kick(bridge.ReasonRevoked)
	}
	return true
}

// --- PUBLISH in ---

// publish handles a device's PUBLISH; false ends the connection.
func (c *conn) publish(pk *packets.Packet) bool {
	qos := pk.FixedHeader.Qos
	if qos > 0 && pk.PacketID == 0 {
		c.fail(rcProtocolError, bridge.ReasonProtocolError) // [MQTT-2.2.1-3]
		return false
	}
	topic := pk.TopicName
	if c.version == 5 {
		if pk.FixedHeader.Retain {
			c.fail(rcRetainNotSupported, bridge.ReasonProtocolError) // §3.2.2.3.5, [MQTT-3.2.2-14]
			return false
		}
		if len(pk.Properties.SubscriptionIdentifier) > 0 {
			c.fail(rcProtocolError, bridge.ReasonProtocolError) // [MQTT-3.3.4-6]
			return false
		}
		if pk.Properties.TopicAliasFlag {
			a := pk.Properties.TopicAlias
			if a == 0 || a > topicAliasMaximum {
				c.fail(rcTopicAliasInvalid, bridge.ReasonProtocolError) // [MQTT-3.3.2-8], [MQTT-3.3.2-9]
				return false
			}
			if topic != "" {
				if c.aliases == nil {
					c.aliases = map[uint16]string{}
				}
				// A topic the device may publish to is short and its own; a
				// refused one (up to a packet long) is remembered as refused,
				// not kept: 16 aliases cannot hold megabytes.
				if topicAllowed(c.device, topic, true) && !c.watcher {
					c.aliases[a] = strings.Clone(topic) // topic aliases the read buffer
				} else {
					c.aliases[a] = refusedAlias
				}
			} else if topic = c.aliases[a]; topic == "" {
				c.fail(rcProtocolError, bridge.ReasonProtocolError) // §3.3.2.3.4: an alias never set
				return false
			}
		}
	}
	if topic == "" || strings.ContainsAny(topic, "+#") {
		c.fail(rcTopicNameInvalid, bridge.ReasonProtocolError) // [MQTT-3.3.2-1], [MQTT-3.3.2-2]
		return false
	}
	if c.watcher {
		if c.version == 4 {
			return false // a watcher is read-only; 3.1.1 can only close ([MQTT-3.3.5-2])
		}
		c.ackPublish(pk, rcNotAuthorized, "not_authorized: a watcher cannot publish")
		return true
	}
	if qos == 2 {
		q, n := c.sess.awaitingRelease(pk.PacketID)
		if q != nil {
			// Being stored by an older connection of the session (a
			// takeover while the store was slow): its outcome decides.
			select {
			case <-q.done:
			case <-time.After(qos2Wait):
			}
			if isDone(q.done) && q.stored {
				c.ackPublish(pk, rcSuccess, "") // stored already: PUBREC again ([MQTT-4.3.3-2])
				return true
			}
			if !isDone(q.done) { // still not stored: ask the device to resend later
				c.ackPublish(pk, c.v5Code(rcQuotaExceeded), "overloaded: the first copy of this publish is still being stored")
				return c.version == 5 || c.kickFor(bridge.ReasonBackpressure)
			}
		}
		if n >= receiveMaximum {
			c.fail(rcReceiveMaxExceeded, bridge.ReasonProtocolError) // [MQTT-3.3.4-9]
			return false
		}
	}
	id, kind, ok := telemetry.ParseTopic(topic)
	if !ok || id != c.device || (kind != telemetry.KindTelemetry && kind != telemetry.KindCommandResult && kind != telemetry.KindStateReported) {
		shown := telemetry.Truncate(topic, 128)
		if topic == refusedAlias {
			shown = fmt.Sprintf("(topic alias %d)", pk.Properties.TopicAlias)
		}
		c.b.aclDenied(c.device, shown, true)
		terr := &telemetry.Error{Code: telemetry.CodeInvalid, Message: "topic " + shown + " is not one this device may publish to"}
		c.sendError("", terr, c.version == 4 || qos == 0)
		// 3.1.1: acknowledged normally so the device does not resend it
		// ([MQTT-3.3.5-2] allows ack or close); 5.0: Not authorized.
		c.ackPublish(pk, c.v5Code(rcNotAuthorized), "not_authorized: "+terr.Message)
		return true
	}
	var q *qos2
	if qos == 2 {
		q = c.sess.receiving(pk.PacketID)
	}
	a := c.b.opts.Bridge.Accept(context.Background(), c.bs, bridge.Message{Kind: kind, Payload: pk.Payload})
	if q != nil {
		c.sess.received(pk.PacketID, q, a.Err == nil)
	}
	if a.Err == nil {
		c.ackPublish(pk, rcSuccess, "")
		return true
	}
	return c.refuse(pk, a.ID, a.Err)
}

// v5Code is code for an MQTT 5 client and success for a 3.1.1 one.
func (c *conn) v5Code(code byte) byte {
	if c.version == 5 {
		return code
	}
	return rcSuccess
}

// ackPublish answers a QoS 1 (PUBACK) or QoS 2 (PUBREC) publish with code;
// a QoS 0 publish gets nothing. why is the v5 reason string of a refusal.
func (c *conn) ackPublish(pk *packets.Packet, code byte, why string) {
	var t byte
	switch pk.FixedHeader.Qos {
	case 1:
		t = packets.Puback
	case 2:
		t = packets.Pubrec
	default:
		return
	}
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: t}, PacketID: pk.PacketID, ReasonCode: code}
	if code >= 0x80 && why != "" {
		ack.Properties.ReasonString = telemetry.Truncate(why, 256)
	}
	c.answer(&ack)
}

// refuse answers a publish the pipeline refused, the way the client's
// protocol allows (telemetry.AnswerFor); msgID is the refused message's
// "id", echoed in the error frame. false ends the connection.
func (c *conn) refuse(pk *packets.Packet, msgID string, terr *telemetry.Error) bool {
	ans := telemetry.AnswerFor(terr.Code)
	qos := pk.FixedHeader.Qos
	if c.version == 5 && qos > 0 {
		code := ans.PubAck
		if code == 0 {
			code = rcPayloadFormatInvalid // a code no publish earns: refuse it as malformed
		}
		c.sendError(msgID, terr, false)
		if n, ok := c.b.publishLog.Allow(); ok {
			c.b.log.Debug("mqtt publish refused", "device", c.device, "topic", telemetry.Truncate(pk.TopicName, 128), "code", terr.Code, "reason_code", fmt.Sprintf("%#02x", code), "suppressed", n)
		}
		c.ackPublish(pk, code, terr.Code+": "+terr.Message)
		return true
	}
	c.sendError(msgID, terr, true)
	if ans.MQTT311 == telemetry.MQTTWithhold && qos > 0 {
		// No PUBACK, and the connection closed: a 3.1.1 client resends an
		// unacknowledged publish only after reconnecting ([MQTT-4.4.0-1]).
		if n, ok := c.b.publishLog.Allow(); ok {
			c.b.log.Info("mqtt publish refused; disconnecting the device so it resends", "device", c.device,
				"code", terr.Code, "suppressed", n)
		}
		c.flush() // the error frame first
		c.fail(disconnectCode(bridge.ReasonBackpressure), bridge.ReasonBackpressure)
		return false
	}
	c.ackPublish(pk, rcSuccess, "")
	return true
}

// sendError publishes an error frame on the device's errors topic to its
// watchers, and to the device itself when toDevice and it subscribed.
func (c *conn) sendError(msgID string, terr *telemetry.Error, toDevice bool) {
	frame := telemetry.EncodeError(msgID, terr)
	topic := telemetry.Topic(c.device, telemetry.KindErrors)
	if toDevice && c.sess != nil {
		c.sess.mu.Lock()
		subscribed := c.sess.errors && c.sess.conn == c
		c.sess.mu.Unlock()
		if subscribed {
			c.sendPublish(topic, frame, 0, 0, false)
		}
	}
	for _, w := range c.b.watchersOf(c.device) {
		w.mu.Lock()
		on := w.watchErrs
		w.mu.Unlock()
		if on {
			w.sendPublish(topic, frame, 0, 0, false)
		}
	}
}

// pubrel completes a QoS 2 publish: PUBCOMP, and its packet id is free
// again ([MQTT-4.3.3-3]).
func (c *conn) pubrel(pk *packets.Packet) bool {
	code := rcSuccess
	if c.sess == nil || !c.sess.released(c, pk.PacketID) {
		code = rcPacketIDNotFound
	}
	c.answer(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: pk.PacketID, ReasonCode: c.v5Code(code)})
	return true
}

// --- SUBSCRIBE ---

func (c *conn) subscribe(pk *packets.Packet) bool {
	if pk.PacketID == 0 || len(pk.Filters) == 0 {
		c.fail(rcProtocolError, bridge.ReasonProtocolError) // [MQTT-2.2.1-3], [MQTT-3.8.3-3]
		return false
	}
	if c.version == 5 && len(pk.Properties.SubscriptionIdentifier) > 0 {
		c.fail(rcSubIDNotSupported, bridge.ReasonProtocolError) // §3.2.2.3.12, Subscription Identifiers Available 0
		return false
	}
	codes := make([]byte, len(pk.Filters))
	commands := telemetry.Topic(c.device, telemetry.KindCommands)
	errs := telemetry.Topic(c.device, telemetry.KindErrors)
	desired := telemetry.Topic(c.device, telemetry.KindStateDesired)
	newCommands, newDesired := false, false
	denied := ""
	defer func() {
		if denied != "" { // one denial per packet, however many filters
			c.b.aclDenied(c.device, denied, false)
		}
	}()
	for i, f := range pk.Filters {
		granted := min(f.Qos, 1)
		switch {
		case f.Filter == "":
			// [MQTT-4.7.3-1]: a filter is at least one character.
			codes[i] = c.v3Failure(rcTopicFilterInvalid)
		case strings.HasPrefix(f.Filter, "$share/"), strings.ContainsAny(f.Filter, "+#"):
			denied = f.Filter
			if c.version == 5 {
				// CONNACK said Shared / Wildcard Subscription Available 0:
				// such a filter is a protocol error (§3.2.2.3.13, §3.2.2.3.11).
				code := rcWildcardNotSupported
				if strings.HasPrefix(f.Filter, "$share/") {
					code = rcSharedNotSupported
				}
				c.fail(code, bridge.ReasonProtocolError)
				return false
			}
			codes[i] = rcUnspecified
		case f.Filter == errs && c.watcher:
			c.mu.Lock()
			c.watchErrs = true
			c.mu.Unlock()
			codes[i] = granted
		case f.Filter == errs:
			c.sess.mu.Lock()
			if c.sess.conn == c {
				c.sess.errors = true
			}
			c.sess.mu.Unlock()
			codes[i] = granted
		case f.Filter == commands && !c.watcher:
			c.sess.mu.Lock()
			if c.sess.conn == c {
				newCommands = newCommands || !c.sess.commands || c.sess.commandsQoS != granted
				c.sess.commands, c.sess.commandsQoS = true, granted
			}
			c.sess.mu.Unlock()
			codes[i] = granted
		case f.Filter == desired && !c.watcher && c.b.opts.State != nil:
			c.sess.mu.Lock()
			if c.sess.conn == c {
				c.sess.desired, c.sess.desiredQoS = true, granted
				newDesired = true
			}
			c.sess.mu.Unlock()
			codes[i] = granted
		default:
			denied = f.Filter
			codes[i] = c.v3Failure(rcNotAuthorized)
		}
	}
	c.answer(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: pk.PacketID, ReasonCodes: codes})
	if newCommands {
		c.b.opts.Commands.DeliverCommands(c.device)
	}
	if newDesired { // after the SUBACK ([MQTT-3.8.4-1] allows publishes to follow it)
		c.watchState(true)
	}
	return true
}

// v3Failure is code for MQTT 5 and 0x80 Failure, the one refusal 3.1.1 has
// (§3.9.3).
func (c *conn) v3Failure(code byte) byte {
	if c.version == 5 {
		return code
	}
	return rcUnspecified
}

func (c *conn) unsubscribe(pk *packets.Packet) bool {
	if pk.PacketID == 0 || len(pk.Filters) == 0 {
		c.fail(rcProtocolError, bridge.ReasonProtocolError) // [MQTT-3.10.3-2]
		return false
	}
	codes := make([]byte, len(pk.Filters))
	commands := telemetry.Topic(c.device, telemetry.KindCommands)
	errs := telemetry.Topic(c.device, telemetry.KindErrors)
	desired := telemetry.Topic(c.device, telemetry.KindStateDesired)
	for i, f := range pk.Filters {
		had := false
		switch {
		case c.watcher && f.Filter == errs:
			c.mu.Lock()
			had, c.watchErrs = c.watchErrs, false
			c.mu.Unlock()
		case c.watcher:
		case f.Filter == errs:
			c.sess.mu.Lock()
			if c.sess.conn == c {
				had, c.sess.errors = c.sess.errors, false
			}
			c.sess.mu.Unlock()
		case f.Filter == commands:
			c.sess.mu.Lock()
			if c.sess.conn == c {
				had, c.sess.commands = c.sess.commands, false
			}
			c.sess.mu.Unlock()
		case f.Filter == desired:
			c.sess.mu.Lock()
			if c.sess.conn == c {
				had, c.sess.desired = c.sess.desired, false
				c.sess.statePending = nil
			}
			c.sess.mu.Unlock()
			c.stopState()
		}
		codes[i] = rcSuccess
		switch {
		case f.Filter == "":
			codes[i] = rcTopicFilterInvalid // [MQTT-4.7.3-1]
		case !had:
			codes[i] = rcNoSubscription
		}
	}
	c.answer(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsuback}, PacketID: pk.PacketID, ReasonCodes: codes})
	return true
}

// window is how many commands may be unacknowledged on the connection.
func (c *conn) window() int { return min(c.recvMax, maxInflight) }
