package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pahov5 "github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/commands"
)

// Second review of branch gw: attacks on the fixes of the first review and
// on what it did not try. Each test fails while the attack works.

// outLen is the size of what waits to be written to device id's attached
// connection (its answers, commands and error frames), or -1.
func (b *Broker) outLen(id string) int {
	b.mu.Lock()
	s := b.sessions[id]
	b.mu.Unlock()
	if s == nil {
		return -1
	}
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	if c == nil {
		return -1
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Len()
}

// TestAttackGateway2PingFloodUnboundedOutput: the reader's own answers
// (PINGRESP, PUBACK, PUBCOMP, SUBACK...) go through conn.answer, which
// appends to c.out with no bound, and serve flushes only when the read
// buffer is empty at a packet boundary (c.r.br.Buffered() == 0). A client
// that keeps every chunk it writes ending in the middle of a packet (one
// 5-byte v5 PUBACK, then PINGREQs written in even-sized chunks: every
// packet boundary is at an odd offset, every read ends at an even one)
// never lets that happen, and never reads: the hub holds 2 bytes of
// PINGRESP per 2 bytes received, without limit (outBufferBytes bounds
// only publishOut), and is never cut as a slow consumer.
func TestAttackGateway2PingFloodUnboundedOutput(t *testing.T) {
	r := newRig(t, Options{WriteTimeout: time.Second}) // a non-reader is cut after this
	c := r.raw5OK(t, "d1", nil)
	c.write([]byte{0x40, 0x03, 0x7f, 0x7f, 0x00, 0xc0}) // PUBACK of an id never sent, then the first byte of a PINGREQ
	chunk := make([]byte, 1000)
	for i := 0; i < len(chunk); i += 2 {
		chunk[i], chunk[i+1] = 0x00, 0xc0 // the end of one PINGREQ, the start of the next
	}
	// A small receive buffer on the client, and more than the hub's send
	// buffer can take (tcp_wmem's maximum is 4 MiB here): the hub's
	// writes must block, so a non-reader is seen as one.
	_ = c.conn.(*net.TCPConn).SetReadBuffer(4096)
	const total = 16 << 20
	done := make(chan struct{})
	go func() { // owner: this test; ends when the flood is written or the hub cuts it
		defer close(done)
		for sent := 0; sent < total; sent += len(chunk) {
			_ = c.conn.SetWriteDeadline(time.Now().Add(patience))
			if _, err := c.conn.Write(chunk); err != nil {
				return
			}
		}
	}()
	peak := 0
	limit := 2 * outBufferBytes // generous: a fixed hub flushes (and cuts the non-reader) long before
	// Until the hub holds more than limit, or the connection is gone (cut
	// as a slow consumer), or a while after the flood is written (the hub
	// may still be reading the socket buffers' backlog).
	var deadline <-chan time.Time
	for peak <= limit {
		select {
		case <-done:
			done, deadline = nil, time.After(patience)
		case <-deadline:
			t.Fatalf("a client that never reads its PINGRESPs was not cut (peak %d KiB held)", peak>>10)
		case <-time.After(5 * time.Millisecond):
		}
		n := r.broker.outLen("d1")
		if n < 0 {
			return // cut as a slow consumer
		}
		peak = max(peak, n)
	}
	if peak > limit {
		t.Fatalf("a client that never reads made the hub hold %d KiB of unsent PINGRESPs, and growing (outBufferBytes is %d KiB)", peak>>10, outBufferBytes>>10)
	}
}

// TestAttackGateway2IdleConnectionKeepsLastPacket: reader.read keeps the
// body of the last packet in r.last (for the CONNECT checks) for the
// whole connection; a body over smallBody gets its own buffer, which was
// meant to be "dropped once it is handled" (packet.go), but r.last still
// points at it. A device that sends one 250 KiB PUBLISH and then idles
// makes its connection hold 250 KiB until its next packet: 40 devices
// hold 10 MiB, a fleet of 60,000 up to 15 GiB.
func TestAttackGateway2IdleConnectionKeepsLastPacket(t *testing.T) {
	r := newRig(t, Options{})
	const n = 40
	payload := make([]byte, 250<<10)
	for i := range payload {
		payload[i] = 'x'
	}
	base := heapNow()
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("idle%d", i)
		tok := r.device(t, id)
		c, _ := r.raw3(t, connectPk(id, id, tok, true))
		c.send(subscribePk(1, packets.Subscription{Filter: "devices/" + id + "/errors"}))
		c.expect(packets.Suback)
		// A topic the device may not publish to: refused with an error
		// frame, which tells the test the PUBLISH was handled; then the
		// device sends nothing more.
		c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "devices/" + id + "/nope", Payload: payload})
		if p := c.expect(packets.Publish); p.TopicName != "devices/"+id+"/errors" {
			t.Fatalf("got %s, want an error frame", describe(p))
		}
	}
	if held := int64(heapNow()) - int64(base); held > n*64<<10 {
		t.Fatalf("%d idle connections, each after one 250 KiB PUBLISH, hold %d KiB of heap (%d KiB each)", n, held>>10, held/n>>10)
	}
}

// TestAttackGateway2DelayedWillSurvivesCleanStart: a v5 device with a
// session (expiry 600 s) and a will delayed 600 s drops; it reconnects with
// Clean Start 1, which ends the old session (5.0 §3.1.2.4), so the will is
// due now (§3.1.2.5: "until the Will Delay Interval has passed or the
// Session ends, whichever happens first"). attach cancels a pending will
// only when the session is resumed and otherwise leaves it scheduled: it
// is stored ten minutes later, while the device is online; and if the new
// connection leaves a delayed will of its own, scheduleWill stops the
// first one's timer and it is never stored at all.
func TestAttackGateway2DelayedWillSurvivesCleanStart(t *testing.T) {
	r := newRig(t, Options{})
	before := r.stored(t)
	withWill := func(clean bool) func(*packets.Packet) {
		return func(pk *packets.Packet) {
			pk.Connect.Clean = clean
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 600, true
			pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "devices/d1/telemetry", []byte(reading)
			pk.Connect.WillProperties.WillDelayInterval = 600
		}
	}
	first := r.raw5OK(t, "d1", withWill(false))
	first.conn.Close() // network error: its will is due in 600 s, or when its session ends
	waitFor(t, "the first will scheduled", func() bool { return r.broker.hasWill("d1") })
	second := r.raw5OK(t, "d1", withWill(true)) // clean start: the first session ends here
	deadline := time.Now().Add(patience)        // ends as soon as the will is stored
	for r.stored(t) == before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if r.stored(t) == before {
		second.conn.Close()
		waitFor(t, "the second will scheduled", func() bool { return r.broker.open.Load() == 0 && r.broker.hasWill("d1") })
		t.Fatalf("a clean start ended the session of a connection whose delayed will was pending; the will was not stored (and the second connection's will has now replaced it: it is never stored)")
	}
}

// TestAttackGateway2WebSocketMessageOfManyPackets: MQTT over WebSocket
// lets one binary message carry several MQTT packets (5.0 §6.0,
// [MQTT-6.0.0-2]: the receiver must not assume packets are aligned on
// frame boundaries), but ServeWebSocket sets gorilla's read limit, which
// is per message, to MaxPacketBytes+8: a client that batches two 150 KiB
// PUBLISHes (each within the 256 KiB limit) in one message is cut with a
// WebSocket close 1009 and neither is handled.
func TestAttackGateway2WebSocketMessageOfManyPackets(t *testing.T) {
	r := newRig(t, Options{})
	srv := httptest.NewServer(http.HandlerFunc(r.broker.ServeWebSocket))
	defer srv.Close()
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}}
	ws, _, err := d.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/mqtt", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	b, err := encodePacket(connectPacket(5, "d1", r.tokens["d1"]))
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(patience))
	read := func() (packets.Packet, error) {
		_, m, err := ws.ReadMessage()
		if err != nil {
			return packets.Packet{}, err
		}
		return readPacket(bufio.NewReader(bytes.NewReader(m)), 5, 1<<20)
	}
	if ack, err := read(); err != nil || ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK: %v %s", err, describe(ack))
	}
	var batch []byte
	for id := uint16(1); id <= 2; id++ {
		// Refused for its topic (0x87): handled without the store.
		pk := publishPacket("devices/d1/other", 1, id, strings.Repeat("x", 150<<10))
		pk.ProtocolVersion = 5
		p, err := encodePacket(pk)
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, p...)
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, batch); err != nil {
		t.Fatal(err)
	}
	for want := uint16(1); want <= 2; want++ {
		got, err := read()
		if err != nil || got.FixedHeader.Type != packets.Puback || got.PacketID != want {
			t.Fatalf("after one WebSocket message of two 150 KiB PUBLISHes: %s (%v), want the PUBACK of packet %d", describe(got), err, want)
		}
	}
}

// TestAttackGateway2FilterListAmplification: a device has two topics to
// subscribe to, but SUBSCRIBE and UNSUBSCRIBE take any number of filters
// up to MaxPacketBytes, are never rate-limited (only Bridge.Accept is),
// and are decoded whole by mochi before conn.subscribe looks at them. One
// 256 KiB UNSUBSCRIBE of 131,000 empty filters (an empty filter is itself
// malformed, [MQTT-4.7.3-1], yet answered with an UNSUBACK) allocates
// about 40 MiB and costs about 50 ms of CPU; a SUBSCRIBE of 65,000
// one-character filters about 24 MiB and 30 ms, and adds 65,000 to
// ACLDenials (and as many OnACLDenied calls and debug log calls) - against
// 0.5 MiB and 0.13 ms for a 256 KiB PUBLISH. One device keeps a core busy
// with 8 MB/s of such packets.
func TestAttackGateway2FilterListAmplification(t *testing.T) {
	r := newRig(t, Options{})
	c, _ := r.raw3(t, connectPk("d1", "d1", r.tokens["d1"], true))
	tests := []struct {
		name string
		typ  byte
		size int // bytes per filter on the wire
		f    string
	}{
		{"unsubscribe empty filters", packets.Unsubscribe, 2, ""},
		{"subscribe one-char filters", packets.Subscribe, 4, "a"},
	}
	for _, tt := range tests {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: tt.typ, Qos: 1}, PacketID: 1, ProtocolVersion: 4}
		for i := 0; i < (256<<10-16)/tt.size; i++ {
			pk.Filters = append(pk.Filters, packets.Subscription{Filter: tt.f})
		}
		b, err := encodePacket(pk)
		if err != nil {
			t.Fatal(err)
		}
		denied := r.broker.ACLDenials()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		c.write(b)
		// The answer (or the connection closed: a fixed hub may refuse it).
		p, err := c.next(patience)
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16*uint64(len(b)) {
			t.Errorf("%s: one %d KiB packet made the hub allocate %d MiB (%d ACL denials counted); answered with %s (%v)",
				tt.name, len(b)>>10, alloc>>20, r.broker.ACLDenials()-denied, packets.PacketNames[p.FixedHeader.Type], err)
		}
		if err != nil {
			return
		}
	}
}

// TestAttackGateway2ResumedOversizeCommandHoldsWindow: the first review's
// oversize-command fix covers session.deliver only. A command in flight on
// a persistent session is resent on resume by writeHeld through
// resendPublish, which ignores publishOut's outcome: when the resuming
// connection states a Maximum Packet Size the command no longer fits, the
// PUBLISH is dropped, but the command is marked written and stays in
// s.out, never to be acknowledged. With Receive Maximum 1 no other command
// is ever delivered on that session (deliver: len(s.out) >= window), and
// the command gets no result (commandTooLarge is not called): the session
// is stuck until the device connects with a clean start.
func TestAttackGateway2ResumedOversizeCommandHoldsWindow(t *testing.T) {
	r := newRig(t, Options{})
	persistent := func(maxSize uint32) func(*packets.Packet) {
		return func(pk *packets.Packet) {
			pk.Connect.Clean = false
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 600, true
			pk.Properties.MaximumPacketSize = maxSize
			pk.Properties.ReceiveMaximum = 1
		}
	}
	c := r.raw5OK(t, "d1", persistent(0))
	c.subscribeCommands("d1", 1)
	big, _, err := r.cmds.SendCommand(context.Background(), commands.Spec{Device: "d1", Name: "flash",
		Params: json.RawMessage(`{"blob":"` + strings.Repeat("x", 2000) + `"}`)})
	if err != nil {
		t.Fatal(err)
	}
	c.expectCommand("d1", big.ID) // not acknowledged: in flight on the session
	c.conn.Close()
	waitFor(t, "the first connection's end", func() bool { return r.broker.open.Load() == 0 })
	c2, ack := r.raw5(t, "d1", persistent(512))
	if ack.ReasonCode != 0 || !ack.SessionPresent {
		t.Fatalf("resuming CONNACK %#02x present %v", ack.ReasonCode, ack.SessionPresent)
	}
	small := r.sendCommand(t, "d1", "reboot")
	for {
		pk, err := c2.next(patience)
		if err != nil {
			t.Fatalf("command %s (fits the client's maximum packet size) never delivered: the oversize %s, dropped on resume, still holds the window: %v", small, big.ID, err)
		}
		if pk.FixedHeader.Type == packets.Publish && bytes.Contains(pk.Payload, []byte(small)) {
			return
		}
	}
}

// TestAttackGateway2ClientErrorDisconnectDiscardsWill: only a DISCONNECT
// with Reason Code 0x00 deletes the will (5.0 §3.1.2.5, [MQTT-3.1.2-8];
// §3.14.4: "the Server MUST discard any Will Message ... on receipt of a
// DISCONNECT with a Reason Code of 0x00"); a client that leaves with an
// error code (0x80 Unspecified error, 0x81 Malformed Packet, 0x82 Protocol
// Error, 0x93 Receive Maximum exceeded ...: the client found something
// wrong) still has its will published. conn.disconnected maps every code
// but 0x04 to reasonNormalDisconnect, so those wills are discarded.
func TestAttackGateway2ClientErrorDisconnectDiscardsWill(t *testing.T) {
	r := newRig(t, Options{})
	for _, code := range []byte{0x80, 0x81, 0x82, 0x93} {
		before := r.stored(t)
		c := r.raw5OK(t, "d1", func(pk *packets.Packet) {
			pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "devices/d1/telemetry", []byte(reading)
		})
		c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: code})
		c.expectClosed()
		waitFor(t, "the connection's end", func() bool { return r.broker.open.Load() == 0 })
		deadline := time.Now().Add(patience) // ends as soon as the will is stored
		for r.stored(t) == before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if r.stored(t) == before {
			t.Errorf("DISCONNECT %#02x from the client: the will was discarded (only 0x00 discards it)", code)
		}
	}
}

// gatedStore holds the first Append until release is closed (a spool that
// is slow for a moment), and reports it on entered.
type gatedStore struct {
	next     bridge.Store
	first    atomic.Bool
	entered  chan struct{}
	released chan struct{}
}

func (g *gatedStore) Append(ctx context.Context, points int, payload []byte) error {
	if g.first.CompareAndSwap(false, true) {
		close(g.entered)
		select {
		case <-g.released:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.next.Append(ctx, points, payload)
}

// TestAttackGateway2QoS2StoredTwiceAcrossTakeover: a QoS 2 PUBLISH is
// recorded as awaiting PUBREL (session.received) only after
// Bridge.Accept returns. While the spool is slow, the device's connection
// drops and it resumes its session on a new one, resending the PUBLISH
// with DUP and the same packet id ([MQTT-4.4.0-1]), as it must: the new
// connection finds the id not awaiting release (awaitingRelease) and
// stores the reading again, and the old reader's Accept then stores it
// too. One QoS 2 message ("exactly once", 5.0 §4.3.3), two readings (no
// "ts": the hub stamps each copy differently, so InfluxDB keeps both).
func TestAttackGateway2QoS2StoredTwiceAcrossTakeover(t *testing.T) {
	gate := &gatedStore{entered: make(chan struct{}), released: make(chan struct{})}
	r := newRig(t, Options{}, func(o *bridge.Options) {
		gate.next, o.Store = o.Store, gate
		o.StoreTimeout = time.Minute
	})
	persistent := func(pk *packets.Packet) {
		pk.Connect.Clean = false
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 600, true
	}
	before := r.stored(t)
	old := r.raw5OK(t, "d1", persistent)
	old.send(publishPacket("devices/d1/telemetry", 2, 7, reading))
	<-gate.entered // the old reader is in Bridge.Accept, waiting for the spool
	old.conn.Close()
	c, ack := r.raw5(t, "d1", persistent)
	if ack.ReasonCode != 0 || !ack.SessionPresent {
		t.Fatalf("resuming CONNACK %#02x present %v", ack.ReasonCode, ack.SessionPresent)
	}
	dup := publishPacket("devices/d1/telemetry", 2, 7, reading)
	dup.FixedHeader.Dup = true
	c.send(dup)
	recs := make(chan packets.Packet, 1)
	go func() { // owner: this test; ends with the PUBREC or the connection
		pk, _ := c.next(patience)
		recs <- pk
	}()
	var rec packets.Packet
	select {
	case rec = <-recs: // answered while the old reader still waits for the spool
	case <-time.After(5 * time.Second): // a hub that makes the resend wait for the first copy
	}
	close(gate.released) // the spool catches up: the old reader's Accept returns
	if rec.FixedHeader.Type == 0 {
		rec = <-recs
	}
	if rec.FixedHeader.Type != packets.Pubrec || rec.PacketID != 7 || rec.ReasonCode != 0 {
		t.Fatalf("got %s, want PUBREC 7 0x00", describe(rec))
	}
	c.send(ackPacket(packets.Pubrel, 7))
	c.expect(packets.Pubcomp)
	waitFor(t, "the old connection's end", func() bool { return r.broker.open.Load() == 1 })
	if n := r.stored(t) - before; n != 1 {
		t.Fatalf("one QoS 2 PUBLISH (resent with DUP on the resumed session) stored %d readings", n)
	}
}

// TestAttackGateway2InvalidDisconnectSessionExpiry: a client whose CONNECT
// had Session Expiry Interval 0 may not set one in its DISCONNECT (5.0
// §3.14.2.2.2): "the Server ... does not treat it as a valid DISCONNECT
// packet" and answers DISCONNECT 0x82 (§4.13), so the connection ends on a
// protocol error and its will is published. conn.disconnected hands the
// value to setExpiry, which ignores it (s.expiry == 0), and treats the
// packet as a normal DISCONNECT: no 0x82, and the will is discarded.
func TestAttackGateway2InvalidDisconnectSessionExpiry(t *testing.T) {
	r := newRig(t, Options{})
	before := r.stored(t)
	c := r.raw5OK(t, "d1", func(pk *packets.Packet) {
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "devices/d1/telemetry", []byte(reading)
	})
	d := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
	d.Properties.SessionExpiryInterval, d.Properties.SessionExpiryIntervalFlag = 600, true
	c.send(d)
	pk, err := c.next(patience)
	if err != nil || pk.FixedHeader.Type != packets.Disconnect || pk.ReasonCode != rcProtocolError {
		t.Errorf("DISCONNECT setting a Session Expiry Interval the CONNECT did not have: got %s (%v), want DISCONNECT 0x82", describe(pk), err)
	}
	waitFor(t, "the connection's end", func() bool { return r.broker.open.Load() == 0 })
	deadline := time.Now().Add(patience) // ends as soon as the will is stored
	for r.stored(t) == before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if r.stored(t) == before {
		t.Error("the will was discarded although the DISCONNECT was not a valid one")
	}
}

// TestAttackGateway2ZeroMaximumPacketSize: a CONNECT with Maximum Packet
// Size 0 is a protocol error (5.0 §3.1.2.11.4: "It is a Protocol Error
// ... for the value to be set to zero"), to be answered CONNACK 0x82 like
// Receive Maximum 0. mochi's decoder keeps the value, not its presence, so
// 0 reads as "absent": the hub accepts the client, with no limit on what
// it sends it. hasZeroReceiveMaximum re-decodes the properties with paho
// for exactly this; Maximum Packet Size is not checked there.
func TestAttackGateway2ZeroMaximumPacketSize(t *testing.T) {
	r := newRig(t, Options{})
	zero := uint32(0)
	cp := connect5("d1", r.tokens["d1"])
	cp.Properties = &pahov5.ConnectProperties{MaximumPacketSize: &zero, RequestProblemInfo: true}
	p, err := r.dial5(t, cp)
	if err == nil || p.ack == nil || p.ack.ReasonCode != rcProtocolError {
		code := -1
		if p.ack != nil {
			code = int(p.ack.ReasonCode)
		}
		t.Fatalf("CONNECT with Maximum Packet Size 0: CONNACK %#02x (%v), want 0x82", code, err)
	}
}
