package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pahov5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/bridge/commands/boltstore"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

// flakyStore refuses the first n appends, then hands them to the spool,
// standing in for a spool that is full for a moment. A refusal is
// spool.ErrFull, or refuseWith's error when set.
type flakyStore struct {
	sp         *spool.Spool
	refuse     atomic.Int64
	refuseWith atomic.Pointer[error]
}

func (f *flakyStore) Append(ctx context.Context, points int, payload []byte) error {
	if f.refuse.Add(-1) >= 0 {
		if err := f.refuseWith.Load(); err != nil {
			return *err
		}
		return spool.ErrFull
	}
	return f.sp.Append(ctx, points, payload)
}

type rig struct {
	reg    *devices.Registry
	sp     *spool.Spool
	store  *flakyStore
	br     *bridge.Bridge
	broker *Broker
	addr   string
	tokens map[string]string
	cmds   *commands.Service
	// shutdown ends the broker's Run (its context is cancelled) and waits
	// for it; the cleanup calls it too.
	shutdown func()
}

func newRig(t *testing.T, o Options, bridgeOpts ...func(*bridge.Options)) *rig {
	return newRigTB(t, o, bridgeOpts...)
}

// newRigTB starts a registry with devices d1 and d2, a spool, the command
// service, a bridge (bridgeOpts adjust its options) and the broker on
// 127.0.0.1:0.
func newRigTB(t testing.TB, o Options, bridgeOpts ...func(*bridge.Options)) *rig {
	t.Helper()
	dir := t.TempDir()
	st, err := devices.OpenBolt(filepath.Join(dir, "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{tokens: map[string]string{}}
	r.reg, err = devices.Open(context.Background(), st, devices.Options{OnCredentialsChanged: func(id string) {
		r.br.CredentialsChanged(id)
		r.broker.CredentialsChanged(id) // its debug watchers
	}})
	if err != nil {
		t.Fatal(err)
	}
	r.sp, err = spool.Open(spool.Options{Dir: filepath.Join(dir, "spool")})
	if err != nil {
		t.Fatal(err)
	}
	r.store = &flakyStore{sp: r.sp}
	cmds, err := commands.New(context.Background(), commands.Options{Store: boltstore.New(st.DB()), Devices: r.reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	cmdsCtx, stopCmds := context.WithCancel(context.Background())
	cmdsDone := make(chan struct{})
	go func() { _ = cmds.Run(cmdsCtx); close(cmdsDone) }() // owner: this rig; ends at cleanup
	t.Cleanup(func() { stopCmds(); <-cmdsDone })
	r.cmds = cmds
	bo := bridge.Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: r.store, Devices: r.reg, Commands: cmds}
	for _, f := range bridgeOpts {
		f(&bo)
	}
	r.br, err = bridge.New(bo)
	if err != nil {
		t.Fatal(err)
	}
	o.Commands = cmds
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	o.Bridge, o.Auth, o.Listener = r.br, r.reg, ln
	if o.Failures == nil {
		o.Failures = devices.NewFailureLimiter(100, 100)
	}
	r.broker, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.broker.Run(ctx) }() // owner: this rig; ends at shutdown
	var once sync.Once
	r.shutdown = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("broker Run: %v", err)
			}
		})
	}
	t.Cleanup(func() {
		r.br.CloseAll(bridge.ReasonServerShutdown)
		r.shutdown()
		r.sp.Close()
		r.reg.Close()
		st.Close()
	})
	for _, id := range []string{"d1", "d2"} {
		c, err := r.reg.Create(context.Background(), devices.Spec{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		r.tokens[id] = c.Token
	}
	return r
}

func (r *rig) v3(t *testing.T, id, token string, tweak func(*paho.ClientOptions)) (paho.Client, paho.Token) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + r.addr).SetClientID(id).
		SetUsername(id).SetPassword(token).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second)
	if tweak != nil {
		tweak(o)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	tok.WaitTimeout(5 * time.Second)
	t.Cleanup(func() { c.Disconnect(50) })
	return c, tok
}

func (r *rig) v5(t *testing.T, id, token string) (*pahov5.Client, *pahov5.Connack, error) {
	t.Helper()
	conn, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	c := pahov5.NewClient(pahov5.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, &pahov5.Connect{ClientID: id, Username: id, UsernameFlag: true, Password: []byte(token), PasswordFlag: true, KeepAlive: 30, CleanStart: true})
	t.Cleanup(func() { _ = c.Disconnect(&pahov5.Disconnect{}) })
	return c, ca, err
}

func (r *rig) stored(t testing.TB) int {
	t.Helper()
	b, err := r.sp.Read(r.sp.Confirmed(), 1<<20, 64<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b.Points
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAuth(t *testing.T) {
	r := newRig(t, Options{})
	tests := []struct {
		name, user, pass string
		ok               bool
	}{
		{"valid", "d1", r.tokens["d1"], true},
		{"wrong token", "d1", "fhd_wrong", false},
		{"another device's token", "d1", r.tokens["d2"], false},
		{"empty", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/v3", func(t *testing.T) {
			_, tok := r.v3(t, tt.user, tt.pass, nil)
			ct := tok.(*paho.ConnectToken)
			if tt.ok != (tok.Error() == nil) {
				t.Fatalf("connect err = %v", tok.Error())
			}
			if !tt.ok && ct.ReturnCode() != 5 {
				t.Fatalf("return code %d, want 5 (not authorized)", ct.ReturnCode())
			}
		})
		t.Run(tt.name+"/v5", func(t *testing.T) {
			_, ca, err := r.v5(t, tt.user, tt.pass)
			if tt.ok != (err == nil) {
				t.Fatalf("connect err = %v", err)
			}
			if !tt.ok && (ca == nil || ca.ReasonCode != 0x86 && tt.user != "" || ca.ReasonCode < 0x80) {
				t.Fatalf("connack %+v, want reason 0x86", ca)
			}
		})
	}
}

func TestACL(t *testing.T) {
	r := newRig(t, Options{})
	c, tok := r.v3(t, "d1", r.tokens["d1"], nil)
	if tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for _, topic := range []string{"devices/d2/commands", "devices/d2/errors", "#", "devices/+/commands", "devices/#", "$SYS/#", "devices/d1/telemetry", "devices/d1/#"} {
		st := c.Subscribe(topic, 1, nil)
		st.WaitTimeout(5 * time.Second)
		if got := st.(*paho.SubscribeToken).Result()[topic]; got != 0x80 {
			t.Errorf("subscribe %s granted %#x, want 0x80", topic, got)
		}
	}
	for _, topic := range []string{"devices/d1/commands", "devices/d1/errors"} {
		st := c.Subscribe(topic, 1, nil)
		st.WaitTimeout(5 * time.Second)
		if got := st.(*paho.SubscribeToken).Result()[topic]; got != 1 {
			t.Errorf("subscribe own %s granted %#x, want 1", topic, got)
		}
	}
	// QoS 0 to another device's topic: dropped.
	c.Publish("devices/d2/telemetry", 0, false, `{"metrics":{"a":1}}`).WaitTimeout(time.Second)

	v5, _, err := r.v5(t, "d2", r.tokens["d2"])
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, topic := range []string{"devices/d1/telemetry", "devices/d2/commands", "devices/d2/telemetry/x", "devices/d1/commands/result"} {
		pr, _ := v5.Publish(ctx, &pahov5.Publish{Topic: topic, QoS: 1, Payload: []byte(`{"metrics":{"a":1}}`)})
		if pr == nil || pr.ReasonCode != 0x87 {
			t.Errorf("publish to %s: %+v, want reason 0x87", topic, pr)
		}
	}
	if n := r.stored(t); n != 0 {
		t.Fatalf("denied publishes stored %d readings", n)
	}
	if r.broker.ACLDenials() < 12 {
		t.Errorf("ACL denials counted %d", r.broker.ACLDenials())
	}
}

func TestQoS1AckAfterDurable(t *testing.T) {
	r := newRig(t, Options{})
	c, tok := r.v3(t, "d1", r.tokens["d1"], nil)
	if tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for i := range 10 {
		pt := c.Publish("devices/d1/telemetry", 1, false, fmt.Sprintf(`{"id":"%d","metrics":{"temp":%d}}`, i, i))
		if !pt.WaitTimeout(5*time.Second) || pt.Error() != nil {
			t.Fatalf("publish %d: %v", i, pt.Error())
		}
		// PUBACK came: the reading must already be durable.
		if n := r.stored(t); n != i+1 {
			t.Fatalf("after PUBACK %d, %d readings durable", i, n)
		}
	}
}

// TestSpoolRefusalWithholdsPubackOnV3: a 3.1.1 publish the spool cannot
// take gets no PUBACK, and the connection is closed so the device resends
// it after reconnecting (3.1.1 clients resend only then, [MQTT-4.4.0-1]);
// acknowledged means stored.
func TestSpoolRefusalWithholdsPubackOnV3(t *testing.T) {
	r := newRig(t, Options{})
	r.store.refuse.Store(1)
	c, tok := r.v3(t, "d1", r.tokens["d1"], func(o *paho.ClientOptions) {
		o.SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(100 * time.Millisecond)
	})
	if tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	// paho completes the token when the connection drops (the message
	// stays in its store and is resent), so the test watches the hub.
	c.Publish("devices/d1/telemetry", 1, false, `{"id":"7","metrics":{"temp":7}}`)
	waitFor(t, "the resent reading to be stored", func() bool { return r.stored(t) == 1 })
	if n := r.br.Stats().Messages["mqtt"].Load(); n != 2 {
		t.Fatalf("hub saw %d publishes, want the refused one and the resend", n)
	}
	// The old connection's end may be counted after the resend is stored.
	backpressure := r.br.Stats().Disconnects[devices.TransportMQTT][bridge.ReasonBackpressure]
	deadline := time.Now().Add(20 * time.Second)
	for backpressure.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := backpressure.Load(); n != 1 {
		reasons := map[string]int64{}
		for k, v := range r.br.Stats().Disconnects[devices.TransportMQTT] {
			if v.Load() > 0 {
				reasons[k] = v.Load()
			}
		}
		t.Fatalf("%d disconnects for store backpressure, want 1 (disconnects: %v)", n, reasons)
	}
}

func TestInvalidPayload(t *testing.T) {
	r := newRig(t, Options{})
	c, tok := r.v3(t, "d1", r.tokens["d1"], nil)
	if tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	errs := make(chan string, 4)
	st := c.Subscribe("devices/d1/errors", 1, func(_ paho.Client, m paho.Message) { errs <- string(m.Payload()) })
	st.WaitTimeout(5 * time.Second)
	pt := c.Publish("devices/d1/telemetry", 1, false, `{"metrics":{"temp":null}}`)
	pt.WaitTimeout(5 * time.Second)
	select {
	case e := <-errs:
		if !strings.Contains(e, `"code":"invalid"`) || !strings.Contains(e, "metrics.temp") {
			t.Fatalf("error message %s", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no message on devices/d1/errors")
	}

	v5, _, err := r.v5(t, "d2", r.tokens["d2"])
	if err != nil {
		t.Fatal(err)
	}
	pr, _ := v5.Publish(context.Background(), &pahov5.Publish{Topic: "devices/d2/telemetry", QoS: 1, Payload: []byte(`{"metrics":{"temp":`)})
	if pr == nil || pr.ReasonCode != 0x99 || pr.Properties == nil || !strings.Contains(pr.Properties.ReasonString, "bad_json") {
		t.Fatalf("v5 invalid: %+v", pr)
	}
	r.store.refuse.Store(1)
	pr, _ = v5.Publish(context.Background(), &pahov5.Publish{Topic: "devices/d2/telemetry", QoS: 1, Payload: []byte(`{"metrics":{"temp":1}}`)})
	if pr == nil || pr.ReasonCode != 0x97 {
		t.Fatalf("v5 overloaded: %+v, want 0x97", pr)
	}
	if n := r.stored(t); n != 0 {
		t.Fatalf("stored %d", n)
	}
	if n := r.br.Stats().Rejected[telemetry.CodeInvalid].Load() + r.br.Stats().Rejected[telemetry.CodeBadJSON].Load(); n != 2 {
		t.Fatalf("rejections counted %d, want 2", n)
	}
}

func TestRevokeAndPresence(t *testing.T) {
	r := newRig(t, Options{})
	lost := make(chan error, 1)
	_, tok := r.v3(t, "d1", r.tokens["d1"], func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	})
	if tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	waitFor(t, "online", func() bool { d, _ := r.reg.Get("d1"); return d.Online && d.Transport == "mqtt" })
	start := time.Now()
	if err := r.reg.Delete(context.Background(), "d1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
		if d := time.Since(start); d > time.Second {
			t.Fatalf("disconnected after %s, want within 1s", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("revoked device still connected")
	}

	_, tok = r.v3(t, "d2", r.tokens["d2"], nil)
	if tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if _, err := r.reg.Rotate(context.Background(), "d2", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "revoked presence", func() bool { d, _ := r.reg.Get("d2"); return !d.Online && d.Reason == bridge.ReasonRevoked })
}

func TestUnauthenticatedAbuseIsCut(t *testing.T) {
	r := newRig(t, Options{ConnectTimeout: 300 * time.Millisecond, MaxPacketBytes: 64 << 10})
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			conn, err := net.Dial("tcp", r.addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			if i%2 == 0 {
				// CONNECT announcing a 256 MB packet.
				_, _ = conn.Write([]byte{0x10, 0xff, 0xff, 0xff, 0x7f})
			} // odd: say nothing at all
			_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 16)
			for {
				if _, err := conn.Read(buf); err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						t.Errorf("connection %d not cut within 3s", i)
					}
					return
				}
			}
		})
	}
	wg.Wait()
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 32<<20 {
		t.Fatalf("heap grew %d MiB for 20 abusive connections", grew>>20)
	}
}

func TestKeepaliveEnforced(t *testing.T) {
	r := newRig(t, Options{MaxKeepalive: time.Second})
	lost := make(chan struct{}, 1)
	// Keep-alive 0 asks for no heartbeat; paho then never pings.
	_, tok := r.v3(t, "d1", r.tokens["d1"], func(o *paho.ClientOptions) {
		o.SetKeepAlive(0).SetConnectionLostHandler(func(paho.Client, error) { lost <- struct{}{} })
	})
	if tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("silent client not cut by keep-alive enforcement")
	}
	waitFor(t, "heartbeat_timeout presence", func() bool { d, _ := r.reg.Get("d1"); return !d.Online && d.Reason == bridge.ReasonHeartbeatTimeout })
}

// hasSession reports whether a connection of device id is attached to
// its session.
func (b *Broker) hasSession(id string) bool {
	b.mu.Lock()
	s := b.sessions[id]
	b.mu.Unlock()
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn != nil
}
