package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/devices"
)

// Attacks on the gateway (review of branch gw): each test names what a
// hostile device, a careless client or a bad interleaving breaks, and
// fails while it is broken.

// waitInStack waits until some goroutine's stack shows fn: a reader parked
// where the test holds it (a lock it took, a hook it blocks).
func waitInStack(t *testing.T, fn string) {
	t.Helper()
	buf := make([]byte, 8<<20)
	waitFor(t, "a goroutine in "+fn, func() bool {
		n := runtime.Stack(buf, true)
		return bytes.Contains(buf[:n], []byte(fn))
	})
}

// heapNow is the live heap after a collection.
func heapNow() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// hasWill reports whether a delayed will of id is waiting to be published.
func (b *Broker) hasWill(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.wills[id]
	return ok
}

// TestAttackGatewayConcurrentConnectSplitsSession: two connections of one
// device whose CONNECTs interleave (attach of A, attach of B, bridge
// Connect of B, bridge Connect of A) left A as the bridge's current
// session while the MQTT session table pointed at B, which A's bridge
// Connect then kicked; B's end detached the session A used, and commands
// stalled until the device reconnected. Now a device's CONNECTs are one
// step each (attach and bridge Connect under the device's stripe): while
// A's bridge Connect is held at its first clock read, B waits; once A is
// through, B takes over, and the survivor gets commands.
func TestAttackGatewayConcurrentConnectSplitsSession(t *testing.T) {
	var armed atomic.Bool
	entered, release := make(chan struct{}), make(chan struct{})
	r := newRig(t, Options{}, func(o *bridge.Options) {
		o.Now = func() time.Time {
			if armed.CompareAndSwap(true, false) {
				close(entered)
				<-release
			}
			return time.Now()
		}
	})
	tok := r.tokens["d1"]
	armed.Store(true)
	a := dialRaw(t, r.addr, 4)
	a.send(connectPk("d1", "d1", tok, false))
	select {
	case <-entered: // A attached; its bridge Connect waits
	case <-time.After(patience):
		t.Fatal("A's bridge Connect never ran")
	}
	b := dialRaw(t, r.addr, 4)
	b.send(connectPk("d1", "d1", tok, false)) // waits for A's CONNECT to finish
	close(release)
	if ack := wire(a.expect(packets.Connack)); !bytes.Equal(ack, connack(0, 0)) {
		t.Fatalf("A's CONNACK % x", ack)
	}
	if ack := wire(b.expect(packets.Connack)); !bytes.Equal(ack, connack(1, 0)) {
		t.Fatalf("B's CONNACK % x, want session present (A's session)", ack)
	}
	// B's CONNECT came last: it supersedes A.
	if _, err := a.untilClosed(); !closedByServer(err) {
		t.Fatalf("A: %v, want closed by the server (superseded)", err)
	}
	waitFor(t, "A's end", func() bool { return r.broker.open.Load() == 1 })
	if cur := r.br.Current("d1"); cur == nil {
		t.Fatal("no current bridge session for d1")
	}
	b.send(subscribePk(1, packets.Subscription{Filter: "devices/d1/commands", Qos: 1}))
	b.expect(packets.Suback)
	id := r.sendCommand(t, "d1", "reboot")
	pk, err := b.next(patience)
	if err != nil {
		t.Fatalf("the surviving connection (the bridge's current session, subscribed) got no command %s: %v", id, err)
	}
	if pk.FixedHeader.Type != packets.Publish || !bytes.Contains(pk.Payload, []byte(id)) {
		t.Fatalf("got %s, want command %s", describe(pk), id)
	}
}

// TestAttackGatewayPersistentSessionOutlivesCredential: a persistent
// session (with a command in flight) is kept when the credential that
// opened it ends, and the next CONNECT with the new credential resumes it:
// the command is resent. When the device was deleted and an id re-used for
// a new device, that new device gets the old one's session and commands
// (STYLE rule 26: a persistent session and an in-flight command end when
// the credential that opened them does).
func TestAttackGatewayPersistentSessionOutlivesCredential(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		change func(r *rig, id string) (string, error)
	}{
		{"deleted and re-created", func(r *rig, id string) (string, error) {
			if err := r.reg.Delete(ctx, id); err != nil {
				return "", err
			}
			c, err := r.reg.Create(ctx, devices.Spec{ID: id})
			return c.Token, err
		}},
		{"rotated", func(r *rig, id string) (string, error) { return r.reg.Rotate(ctx, id, 0) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, Options{})
			tok := r.device(t, "d3")
			c, ack := r.raw3(t, connectPk("d3", "d3", tok, false))
			if !bytes.Equal(ack, connack(0, 0)) {
				t.Fatalf("CONNACK % x", ack)
			}
			c.send(subscribePk(1, packets.Subscription{Filter: "devices/d3/commands", Qos: 1}))
			c.expect(packets.Suback)
			id := r.sendCommand(t, "d3", "reboot")
			c.expectCommand("d3", id) // not acknowledged: in flight
			_ = c.conn.(*net.TCPConn).SetLinger(0)
			c.conn.Close()
			waitFor(t, "d3 offline", func() bool { return r.broker.open.Load() == 0 })

			tok2, err := tc.change(r, "d3")
			if err != nil {
				t.Fatal(err)
			}
			c2, ack := r.raw3(t, connectPk("d3", "d3", tok2, false))
			if !bytes.Equal(ack, connack(0, 0)) {
				t.Errorf("CONNACK with the new credential % x, want 20 02 00 00 (no session: it ended with the old credential)", ack)
			}
			if pk, err := c2.next(2 * time.Second); err == nil && pk.FixedHeader.Type == packets.Publish {
				t.Errorf("the old credential's in-flight command resent to the new one: %s %s", describe(pk), pk.Payload)
			}
		})
	}
}

// TestAttackGatewayDelayedWillOutlivesRevocation: a v5 will with a Will
// Delay Interval is scheduled when the connection drops; revoking the
// token during the delay does not cancel it, so the revoked credential's
// will is stored (contract: no will after a revocation).
func TestAttackGatewayDelayedWillOutlivesRevocation(t *testing.T) {
	r := newRig(t, Options{})
	before := r.stored(t)
	c, ack := r.raw5(t, "d1", func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 600, true
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "devices/d1/telemetry", []byte(reading)
		pk.Connect.WillProperties.WillDelayInterval = 5
	})
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#02x", ack.ReasonCode)
	}
	_ = c.conn.(*net.TCPConn).SetLinger(0)
	c.conn.Close() // network error: the will is due in 5 s
	waitFor(t, "the will scheduled", func() bool { return r.broker.hasWill("d1") })
	if _, err := r.reg.Rotate(context.Background(), "d1", 0); err != nil {
		t.Fatal(err)
	}
	// The revocation stops the will's timer at once (it was due 5 s
	// later), under the table's lock: no publish can follow once it is
	// out of the table, so no window of time needs watching.
	if r.broker.hasWill("d1") {
		t.Fatal("the will of the revoked credential is still scheduled after the revocation")
	}
	if n := r.stored(t); n != before {
		t.Fatalf("the will of a revoked credential was stored: %d -> %d points", before, n)
	}
}

// TestAttackGatewayDelayedWillAfterResumingSupersede: a v5 device with a
// delayed will reconnects (clean start 0) while its old connection is
// still open. The old connection is superseded and its will scheduled,
// although a new connection to the session already exists: the will is
// stored while the device is online ([MQTT-3.1.3-9]: a new network
// connection to the session before the delay passes cancels the will;
// contract: "cancelled if the device reconnects first").
func TestAttackGatewayDelayedWillAfterResumingSupersede(t *testing.T) {
	r := newRig(t, Options{})
	persistent := func(will bool) func(*packets.Packet) {
		return func(pk *packets.Packet) {
			pk.Connect.Clean = false
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 600, true
			if will {
				pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "devices/d1/telemetry", []byte(reading)
				pk.Connect.WillProperties.WillDelayInterval = 30
			}
		}
	}
	old := r.raw5OK(t, "d1", persistent(true))
	_, ack := r.raw5(t, "d1", persistent(false))
	if ack.ReasonCode != 0 || !ack.SessionPresent {
		t.Fatalf("resuming CONNACK %#02x present %v", ack.ReasonCode, ack.SessionPresent)
	}
	old.expectDisconnect(rcSessionTakenOver)
	waitFor(t, "the old connection's end", func() bool { return r.broker.open.Load() == 1 })
	if r.broker.hasWill("d1") {
		t.Fatal("the superseded connection's delayed will is scheduled although the device is connected to its session again; it will be stored in 30 s")
	}
}

// TestAttackGatewayOversizeCommandHoldsWindow: a command larger than the
// client's Maximum Packet Size is dropped (not sent) but still recorded as
// in flight (session.deliver appends it after publishOut "succeeded"), so
// it holds a window slot forever and is "resent" (dropped again) on every
// resume. With Receive Maximum 1 the next command, which fits, is never
// delivered; with the default window 16 oversize commands do the same.
func TestAttackGatewayOversizeCommandHoldsWindow(t *testing.T) {
	r := newRig(t, Options{})
	c := r.raw5OK(t, "d1", func(pk *packets.Packet) {
		pk.Properties.MaximumPacketSize = 512
		pk.Properties.ReceiveMaximum = 1
	})
	c.subscribeCommands("d1", 1)
	big, _, err := r.cmds.SendCommand(context.Background(), commands.Spec{Device: "d1", Name: "flash",
		Params: json.RawMessage(`{"blob":"` + strings.Repeat("x", 2000) + `"}`)})
	if err != nil {
		t.Fatal(err)
	}
	small := r.sendCommand(t, "d1", "reboot")
	for {
		pk, err := c.next(patience)
		if err != nil {
			t.Fatalf("command %s (fits the client's maximum packet size) never delivered after the oversize %s was dropped: %v", small, big.ID, err)
		}
		if pk.FixedHeader.Type == packets.Publish && bytes.Contains(pk.Payload, []byte(small)) {
			return
		}
	}
}

// TestAttackGatewayTopicAliasHoldsRefusedTopics: a v5 client may set its 16
// topic aliases to topics it may not publish to, each as long as a packet
// allows (64 KiB, the topic length field's limit): the alias is kept
// before the topic is checked (publish stores c.aliases[a] first), so one
// connection makes the hub hold 16 x 64 KiB = 1 MiB, about a hundred
// times an idle connection (watchers too: 5 connections per device
// credential). Rule 27: limits apply to what the hub holds.
func TestAttackGatewayTopicAliasHoldsRefusedTopics(t *testing.T) {
	r := newRig(t, Options{})
	c := r.raw5OK(t, "d1", nil)
	base := heapNow()
	long := "devices/d1/" + strings.Repeat("x", 65_000)
	for a := uint16(1); a <= topicAliasMaximum; a++ {
		pk := publishPacket(long, 0, 0, reading)
		pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = a, true
		c.send(pk)
	}
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	c.expect(packets.Pingresp) // every PUBLISH handled
	held := int64(heapNow()) - int64(base)
	if held > 512<<10 {
		t.Fatalf("one connection's refused topic aliases hold %d KiB of heap", held>>10)
	}
	runtime.KeepAlive(c)
}

// TestAttackGatewayPreAuthConnectAllocation: a CONNECT's remaining length
// is checked against MaxPacketBytes and then a buffer of that size is
// allocated before a byte of the body arrives (reader.read, make([]byte,
// n)). Five bytes per TCP connection, never authenticated, make the hub
// hold 256 KiB for ConnectTimeout: 200 connections hold 50 MiB, MaxConns
// (60,000) 15 GiB.
func TestAttackGatewayPreAuthConnectAllocation(t *testing.T) {
	r := newRig(t, Options{ConnectRate: 10000, ConnectBurst: 10000, ConnectTimeout: time.Minute})
	const n = 200
	base := heapNow()
	hdr := varint([]byte{0x10}, 256<<10-4) // the whole packet is exactly MaxPacketBytes
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(hdr); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the connections accepted", func() bool { return r.broker.open.Load() == n })
	const limit = n * 64 << 10
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if held := int64(heapNow()) - int64(base); held > limit {
			t.Fatalf("%d unauthenticated connections that sent 5 bytes each hold %d MiB of heap", n, held>>20)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAttackGatewayDisconnectBeforeConnack: a shutdown (or any kick) that
// reaches a v5 connection while its CONNECT is being processed (here held
// in attach by the test taking Broker.mu) sends DISCONNECT 0x8B as the
// first packet, and the CONNACK is then dropped: 5.0 [MQTT-3.14.0-1] says
// the server must not send DISCONNECT before a CONNACK below 0x80. kick
// reads c.version, which the reader writes in connect without c.mu: a
// data race (-race reports it).
func TestAttackGatewayDisconnectBeforeConnack(t *testing.T) {
	r := newRig(t, Options{})
	r.broker.mu.Lock()
	locked := true
	defer func() {
		if locked {
			r.broker.mu.Unlock()
		}
	}()
	c := dialRaw(t, r.addr, 5)
	c.send(connectPacket(5, "d1", r.tokens["d1"]))
	waitInStack(t, "mqtt.(*Broker).attach")
	done := make(chan struct{})
	go func() { r.shutdown(); close(done) }() // owner: this test; ends once the reader is let go
	pk, err := c.next(patience)
	r.broker.mu.Unlock()
	locked = false
	<-done
	if err == nil && pk.FixedHeader.Type == packets.Disconnect {
		t.Fatalf("DISCONNECT %#02x sent before any CONNACK [MQTT-3.14.0-1]", pk.ReasonCode)
	}
}

// TestAttackGatewaySupersededReaderChangesNewSession: the reader of a
// superseded connection goes on handling the packets it already read, on
// the session the new connection resumed: here an UNSUBSCRIBE that came
// right behind a PUBLISH removes the commands subscription the resuming
// connection relies on (contract: on resume "the subscriptions still
// hold"), so commands stop. The old reader is held in its PUBLISH (the
// bridge's clock read after the store) while the device reconnects. A
// DISCONNECT with a Session Expiry Interval, a PUBACK or a PUBREL do the
// same to the new connection's expiry, window and QoS 2 state.
func TestAttackGatewaySupersededReaderChangesNewSession(t *testing.T) {
	var armed atomic.Bool
	entered, release := make(chan struct{}), make(chan struct{})
	r := newRig(t, Options{}, func(o *bridge.Options) {
		o.Now = func() time.Time {
			if armed.CompareAndSwap(true, false) {
				close(entered)
				<-release
			}
			return time.Now()
		}
	})
	tok := r.tokens["d1"]
	old, ack := r.raw3(t, connectPk("d1", "d1", tok, false))
	if !bytes.Equal(ack, connack(0, 0)) {
		t.Fatalf("CONNACK % x", ack)
	}
	old.send(subscribePk(1, packets.Subscription{Filter: "devices/d1/commands", Qos: 1}))
	old.expect(packets.Suback)
	armed.Store(true)
	pub := publishPacket("devices/d1/telemetry", 1, 7, reading)
	pub.ProtocolVersion = 4
	unsub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 8, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "devices/d1/commands"}}}
	old.write(append(encode(t, pub), encode(t, unsub)...)) // one write: read together
	select {
	case <-entered: // the old reader is inside its PUBLISH, the UNSUBSCRIBE buffered
	case <-time.After(patience):
		close(release)
		t.Fatal("the old connection's PUBLISH never reached the bridge")
	}
	c2, ack := r.raw3(t, connectPk("d1", "d1", tok, false))
	if !bytes.Equal(ack, connack(1, 0)) {
		close(release)
		t.Fatalf("resuming CONNACK % x, want session present", ack)
	}
	if _, err := old.untilClosed(); !closedByServer(err) {
		close(release)
		t.Fatalf("old connection: %v, want closed (superseded)", err)
	}
	close(release)
	waitFor(t, "the old connection's end", func() bool { return r.broker.open.Load() == 1 })
	id := r.sendCommand(t, "d1", "reboot")
	pk, err := c2.next(patience)
	if err != nil {
		t.Fatalf("the resumed session lost its commands subscription to the superseded connection's UNSUBSCRIBE: command %s not delivered: %v", id, err)
	}
	if pk.FixedHeader.Type != packets.Publish || !bytes.Contains(pk.Payload, []byte(id)) {
		t.Fatalf("got %s, want command %s", describe(pk), id)
	}
}

// TestAttackGatewayShutdownWebSocket: Run's shutdown closes MQTT-over-
// WebSocket sockets (closeWS) before it kicks the connections, so a v5
// client over WebSocket is not told 0x8B Server shutting down (Run's doc
// and the contract), and the reader ends with a network error instead of
// the shutdown reason: the device's will is stored at every restart
// (contract: no will on shutdown).
func TestAttackGatewayShutdownWebSocket(t *testing.T) {
	r := newRig(t, Options{})
	srv := httptest.NewServer(http.HandlerFunc(r.broker.ServeWebSocket))
	defer srv.Close()
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}}
	ws, _, err := d.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/mqtt", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	before := r.stored(t)
	pk := connectPacket(5, "d1", r.tokens["d1"])
	pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "devices/d1/telemetry", []byte(reading)
	b, err := encodePacket(pk)
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() { // owner: this test; ends when the socket does
		for {
			_, m, err := ws.ReadMessage()
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			_, _ = pw.Write(m)
		}
	}()
	br := bufio.NewReader(pr)
	if ack, err := readPacket(br, 5, 1<<20); err != nil || ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK: %v %s", err, describe(ack))
	}
	waitFor(t, "d1 online", func() bool { d, _ := r.reg.Get("d1"); return d.Online })
	_ = ws.SetReadDeadline(time.Now().Add(patience))
	r.shutdown()
	got, err := readPacket(br, 5, 1<<20)
	if err != nil || got.FixedHeader.Type != packets.Disconnect || got.ReasonCode != rcServerShuttingDown {
		t.Errorf("at shutdown the v5 WebSocket client got %s (%v), want DISCONNECT 0x8B", describe(got), err)
	}
	if n := r.stored(t); n != before {
		t.Errorf("the will was stored at shutdown: %d -> %d points", before, n)
	}
}

// TestAttackGatewayResumeIgnoresReceiveMaximum: on resume every command in
// flight is resent at once (session.resend), whatever the Receive Maximum
// of the new connection: a device that had 3 commands in flight and
// reconnects with Receive Maximum 1 gets 3 unacknowledged QoS 1 PUBLISHes
// (5.0 §3.3.4, [MQTT-3.3.4-7]: the server must not send more than Receive
// Maximum of them; the rest wait for a PUBACK).
func TestAttackGatewayResumeIgnoresReceiveMaximum(t *testing.T) {
	r := newRig(t, Options{})
	persistent := func(recvMax uint16) func(*packets.Packet) {
		return func(pk *packets.Packet) {
			pk.Connect.Clean = false
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 600, true
			pk.Properties.ReceiveMaximum = recvMax
		}
	}
	c := r.raw5OK(t, "d1", persistent(16))
	c.subscribeCommands("d1", 1)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, r.sendCommand(t, "d1", "reboot"))
	}
	for range ids {
		c.expect(packets.Publish) // not acknowledged
	}
	_ = c.conn.(*net.TCPConn).SetLinger(0)
	c.conn.Close()
	waitFor(t, "the first connection's end", func() bool { return r.broker.open.Load() == 0 })
	c2, ack := r.raw5(t, "d1", persistent(1))
	if ack.ReasonCode != 0 || !ack.SessionPresent {
		t.Fatalf("resuming CONNACK %#02x present %v", ack.ReasonCode, ack.SessionPresent)
	}
	c2.expect(packets.Publish) // the one the window allows
	if pk, err := c2.next(2 * time.Second); err == nil && pk.FixedHeader.Type == packets.Publish {
		t.Fatalf("a second unacknowledged PUBLISH (%s) to a client with Receive Maximum 1", describe(pk))
	}
}

// emfileListener fails its first Accept the way accept(2) does when the
// process is out of file descriptors, then accepts normally.
type emfileListener struct {
	net.Listener
	failed atomic.Bool
}

func (l *emfileListener) Accept() (net.Conn, error) {
	if l.failed.CompareAndSwap(false, true) {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestAttackGatewayAcceptStopsOnEMFILE: accept retries only errors whose
// Timeout() is true; any other, such as EMFILE when a flood of connections
// exhausts the descriptor limit, ends the accept loop for good, and the
// gateway takes no MQTT connection until it restarts (net/http's Serve
// backs off and retries such errors).
func TestAttackGatewayAcceptStopsOnEMFILE(t *testing.T) {
	r := newRig(t, Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Options{Bridge: r.br, Commands: r.cmds, Auth: r.reg, Listener: &emfileListener{Listener: ln}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }() // owner: this test; ends at cleanup
	t.Cleanup(func() { cancel(); <-done })
	c := dialRaw(t, ln.Addr().String(), 5)
	c.send(connectPacket(5, "d1", r.tokens["d1"]))
	if pk, err := c.next(patience); err != nil || pk.FixedHeader.Type != packets.Connack {
		t.Fatalf("no CONNACK after one EMFILE from accept: %v %s", err, describe(pk))
	}
}
