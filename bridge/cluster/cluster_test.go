package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/cluster/dynsec"
	"github.com/fieldhub/fieldhub/bridge/cluster/mosquittotest"
	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/bridge/commands/boltstore"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

// flakyStore refuses the first n appends, standing in for a spool that is
// full for a moment, and can hold appends at a gate, standing in for a
// slow fsync.
type flakyStore struct {
	sp      *spool.Spool
	refuse  atomic.Int64
	gate    atomic.Pointer[chan struct{}] // appends wait until it is closed
	waiting atomic.Int64                  // points held at the gate
}

func (f *flakyStore) Append(ctx context.Context, points int, payload []byte) error {
	if f.refuse.Add(-1) >= 0 {
		return spool.ErrFull
	}
	if g := f.gate.Load(); g != nil {
		f.waiting.Add(int64(points))
		<-*g
		f.waiting.Add(-int64(points))
	}
	return f.sp.Append(ctx, points, payload)
}

// recorder is a live fan-out that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	events []telemetry.Event
}

func (r *recorder) Publish(ev telemetry.Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

// presence returns the presence events of device, in order.
func (r *recorder) presence(device string) []telemetry.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []telemetry.Event
	for _, ev := range r.events {
		if ev.Type == telemetry.EventPresence && ev.Device == device && ev.Online != nil {
			out = append(out, ev)
		}
	}
	return out
}

func (r *recorder) count(typ, device string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ev := range r.events {
		if ev.Type == typ && ev.Device == device {
			n++
		}
	}
	return n
}

type rig struct {
	mq    *mosquittotest.Broker // nil on a fakeBroker
	st    *devices.BoltStore
	reg   *devices.Registry
	sp    *spool.Spool
	store *flakyStore
	br    *bridge.Bridge
	cmds  *commands.Service
	cl    *Cluster
	live  *recorder
}

func newRig(t *testing.T) *rig {
	t.Helper()
	mq := mosquittotest.Start(t)
	r := buildRig(t, nil, Options{
		BrokerURL: mq.URL, Username: mosquittotest.HubUser, Password: mosquittotest.HubPass,
		ClientID: "hub-test", Dynsec: true, BrokerIdle: time.Second,
	})
	r.mq = mq
	select {
	case <-r.cl.Ready():
	case <-time.After(eventWait):
		t.Fatalf("hub did not connect to mosquitto; log:\n%s", r.mq.Log())
	}
	return r
}

// buildRig builds one instance, its cluster configured by o, over the
// registry store st (nil: a new one; instances of one fleet share one)
// and runs it until the test ends.
func buildRig(t *testing.T, st *devices.BoltStore, o Options) *rig {
	t.Helper()
	dir := t.TempDir()
	r := &rig{live: &recorder{}}
	if st == nil {
		var err error
		st, err = devices.OpenBolt(filepath.Join(dir, "registry.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
	}
	r.st = st
	var err error
	r.reg, err = devices.Open(context.Background(), st, devices.Options{
		OnCredentialsChanged: func(id string) {
			if r.br != nil {
				r.br.CredentialsChanged(id)
			}
		},
		OnChange: func(c devices.Changed) {
			if r.cl != nil {
				r.cl.RegistryChanged(c)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.sp, err = spool.Open(spool.Options{Dir: filepath.Join(dir, "spool")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.sp.Close() })
	r.store = &flakyStore{sp: r.sp}
	o.Registry, o.Local = r.reg, r.live
	o.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.cl, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	r.cmds, err = commands.New(context.Background(), commands.Options{Store: boltstore.New(st.DB()), Devices: r.reg,
		Router: commands.ClusterRouter(r.cl), Fanout: r.cl})
	if err != nil {
		t.Fatal(err)
	}
	r.br, err = bridge.New(bridge.Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: r.store,
		Devices: r.reg, Fanout: r.cl, Commands: r.cmds, RatePerSec: 10000, Burst: 10000})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done, cmdsDone := make(chan struct{}), make(chan struct{})
	go func() { _ = r.cmds.Run(ctx); close(cmdsDone) }()
	go func() { _ = r.cl.Run(ctx, Peers{Bridge: r.br, Commands: r.cmds}); close(done) }()
	t.Cleanup(func() { cancel(); <-done; <-cmdsDone })
	return r
}

// device connects an MQTT 3.1.1 device to the broker, retrying while its
// broker client is being created, and subscribes to its commands and
// errors. The version is fixed: paho falls back to MQTT 3.1 after a
// refused CONNECT, and 3.1 has no SUBACK failure code to check.
func (r *rig) device(t *testing.T, id, token string, onMsg paho.MessageHandler, lost chan<- error) paho.Client {
	t.Helper()
	deadline := time.Now().Add(eventWait)
	for {
		o := paho.NewClientOptions().SetProtocolVersion(4).AddBroker(r.mq.URL).SetClientID(id).SetUsername(id).SetPassword(token).
			SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetCleanSession(true)
		if lost != nil {
			o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
		}
		c := paho.NewClient(o)
		tok := c.Connect()
		tok.Wait()
		if tok.Error() == nil {
			t.Cleanup(func() { c.Disconnect(50) })
			if onMsg != nil {
				st := c.SubscribeMultiple(map[string]byte{"devices/" + id + "/commands": 1, "devices/" + id + "/errors": 1}, onMsg)
				st.Wait()
				for topic, code := range st.(*paho.SubscribeToken).Result() {
					if code == 0x80 {
						t.Fatalf("device may not subscribe to %s", topic)
					}
				}
			}
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("device %s cannot connect to mosquitto: %v\n%s", id, tok.Error(), r.mq.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventWait is how long a test waits for an event it expects: generous,
// because the tests run beside others on a loaded machine, and every wait
// ends as soon as the event happens.
const eventWait = 60 * time.Second

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func publish(t *testing.T, c paho.Client, topic, payload string) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(eventWait) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// TestBrokerDevice: an MQTT device on Mosquitto, authenticated by the
// dynamic-security client the hub created for it, streams telemetry that
// the hub acknowledges to the broker only once durable (also while the
// spool refuses for a moment); bad input gets an error and stores
// nothing; the device may not touch another device's topics; commands go
// down through the broker and their results come back; deleting the
// device disconnects it.
func TestBrokerDevice(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	dev, err := r.reg.Create(ctx, devices.Spec{ID: "pump-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.reg.Create(ctx, devices.Spec{ID: "pump-2"}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []paho.Message
	lost := make(chan error, 1)
	c := r.device(t, "pump-1", dev.Token, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		got = append(got, m)
		mu.Unlock()
	}, lost)
	received := func(topicSuffix, contains string) paho.Message {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range got {
			if strings.HasSuffix(m.Topic(), topicSuffix) && strings.Contains(string(m.Payload()), contains) {
				return m
			}
		}
		return nil
	}

	r.store.refuse.Store(5)
	const n = 200
	ts := time.Now().UnixMilli()
	for i := range n {
		publish(t, c, "devices/pump-1/telemetry", fmt.Sprintf(`{"id":"m%d","ts":%d,"metrics":{"v":%d}}`, i, ts+int64(i), i))
	}
	waitFor(t, "every reading in the spool", eventWait, func() bool {
		return r.sp.Stats().PendingPoints == n
	})
	waitFor(t, "the live events", eventWait, func() bool { return r.live.count(telemetry.EventReading, "pump-1") == n })

	// Malformed: an error on the device's errors topic, nothing stored.
	publish(t, c, "devices/pump-1/telemetry", `{"id":"bad1","ts":1,"metrics":{"v":`)
	waitFor(t, "the bad_json error", eventWait, func() bool { return received("/errors", telemetry.CodeBadJSON) != nil })
	// Invalid: the error names the message.
	publish(t, c, "devices/pump-1/telemetry", fmt.Sprintf(`{"id":"bad2","ts":%d,"metrics":{"bad name":1}}`, ts))
	waitFor(t, "the invalid error", eventWait, func() bool { return received("/errors", `"bad2"`) != nil })
	if m := received("/errors", `"bad2"`); !strings.Contains(string(m.Payload()), telemetry.CodeInvalid) {
		t.Fatalf("error frame %s", m.Payload())
	}
	// Oversized: too_large, nothing stored.
	big := fmt.Sprintf(`{"id":"big1","ts":%d,"metrics":{"s":"%s"}}`, ts, strings.Repeat("x", 300<<10))
	publish(t, c, "devices/pump-1/telemetry", big)
	waitFor(t, "the too_large error", eventWait, func() bool { return received("/errors", telemetry.CodeTooLarge) != nil })
	// Spoofed topic: the broker refuses it; the hub never sees it.
	publish(t, c, "devices/pump-2/telemetry", fmt.Sprintf(`{"id":"spoof","ts":%d,"metrics":{"v":1}}`, ts))
	st := c.Subscribe("devices/pump-2/commands", 1, nil)
	st.Wait()
	if code := st.(*paho.SubscribeToken).Result()["devices/pump-2/commands"]; code != 0x80 {
		t.Fatalf("subscribing to another device's commands: code %#x, want 0x80\n%s", code, r.mq.Log())
	}
	// A valid message after them: once it is durable, anything the hub
	// took of the ones before would be too.
	publish(t, c, "devices/pump-1/telemetry", fmt.Sprintf(`{"id":"after","ts":%d,"metrics":{"v":1}}`, ts-1))
	waitFor(t, "the message after the refused ones", eventWait, func() bool { return r.sp.Stats().PendingPoints >= n+1 })
	if p := r.sp.Stats().PendingPoints; p != n+1 {
		t.Fatalf("spool has %d points after the spoofed, oversized and malformed messages, want %d", p, n+1)
	}

	// A command through the broker, answered on commands/result.
	rec, _, err := r.cmds.SendCommand(ctx, commands.Spec{Device: "pump-1", Name: "reboot", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the command at the device", eventWait, func() bool { return received("/commands", rec.ID) != nil })
	publish(t, c, "devices/pump-1/commands/result", `{"id":"`+rec.ID+`","status":"ok","result":{"up":true}}`)
	done, err := r.cmds.WaitCommand(ctx, "pump-1", rec.ID, eventWait)
	if err != nil || done.Status != commands.Succeeded {
		t.Fatalf("command %+v, %v", done, err)
	}

	// Deleting the device deletes its broker client, which cuts it (the
	// time it took is logged; the deadline is for a loaded machine).
	start := time.Now()
	if err := r.reg.Delete(ctx, "pump-1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
		t.Logf("device cut %s after delete", time.Since(start).Round(time.Millisecond))
	case <-time.After(eventWait):
		t.Fatalf("deleted device still connected to the broker after %s", eventWait)
	}
}

// TestBrokerDevicePresence: the broker does not say who is connected, so
// an MQTT device on it is online from its first message and offline
// ("idle") once nothing was heard from it for BrokerIdle.
func TestBrokerDevicePresence(t *testing.T) {
	r := newRig(t)
	dev, err := r.reg.Create(context.Background(), devices.Spec{ID: "meter-7"})
	if err != nil {
		t.Fatal(err)
	}
	c := r.device(t, "meter-7", dev.Token, nil, nil)
	if d, _ := r.reg.Get("meter-7"); d.Online {
		t.Fatal("online before it sent anything")
	}
	// Online lasts BrokerIdle (a second): too short a window to poll for
	// on a loaded machine, so the test waits for the end state and checks
	// the way there in the events the dashboards were given.
	sent := time.Now()
	publish(t, c, "devices/meter-7/telemetry", fmt.Sprintf(`{"id":"1","ts":%d,"metrics":{"v":1}}`, time.Now().UnixMilli()))
	waitFor(t, "the online and offline events on the dashboards", eventWait, func() bool {
		return r.live.count(telemetry.EventPresence, "meter-7") == 2
	})
	// The hub heard the reading after sent, so it went idle no earlier
	// than BrokerIdle after sent.
	if idle := time.Since(sent); idle < time.Second {
		t.Fatalf("offline after %s, before BrokerIdle", idle)
	}
	var seen []string
	for _, ev := range r.live.presence("meter-7") {
		seen = append(seen, fmt.Sprintf("online=%v transport=%s reason=%s", *ev.Online, ev.Transport, ev.Reason))
	}
	if want := []string{"online=true transport=mqtt reason=", "online=false transport=mqtt reason=" + ReasonIdle}; !slices.Equal(seen, want) {
		t.Fatalf("presence events %q, want %q", seen, want)
	}
	if d, _ := r.reg.Get("meter-7"); d.Online || d.Reason != ReasonIdle {
		t.Fatalf("registry says online=%v reason=%q, want offline, %s", d.Online, d.Reason, ReasonIdle)
	}
}

// TestBrokerCredentialSync: a bulk import gives every device its broker
// client; rotating a token without grace cuts the device at the broker,
// the old token stops working there and the new one works; a broker
// client whose device was deleted behind the hub's back (while it was not
// listening) is removed by the reconcile.
func TestBrokerCredentialSync(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	began := time.Now()
	specs := make([]devices.Spec, 120)
	for i := range specs {
		specs[i] = devices.Spec{ID: fmt.Sprintf("bulk-%03d", i)}
	}
	created, err := r.reg.CreateBatch(ctx, specs)
	if err != nil {
		t.Fatal(err)
	}
	last := created[len(created)-1]
	lost := make(chan error, 1)
	r.device(t, last.Device.ID, last.Token, nil, lost) // waits until its client exists

	t.Logf("%d devices mirrored into the broker after %s", len(created), time.Since(began).Round(time.Millisecond))
	newToken, err := r.reg.Rotate(ctx, last.Device.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-time.After(eventWait):
		t.Fatal("device still connected to the broker after its token was rotated without grace")
	}
	connect := func(token string) error {
		o := paho.NewClientOptions().SetProtocolVersion(4).AddBroker(r.mq.URL).SetClientID(last.Device.ID).SetUsername(last.Device.ID).SetPassword(token).
			SetAutoReconnect(false).SetConnectTimeout(2 * time.Second)
		c := paho.NewClient(o)
		tok := c.Connect()
		tok.Wait()
		if tok.Error() == nil {
			c.Disconnect(0)
		}
		return tok.Error()
	}
	t.Log("rotated", time.Since(began))
	if connect(last.Token) == nil {
		t.Fatal("the old token still works at the broker")
	}
	waitFor(t, "the new token to work at the broker", eventWait, func() bool { return connect(newToken) == nil })

	// Reconcile: the broker knows a fieldhub device the registry does not.
	if _, err := r.cl.dynsec.Send(ctx, []map[string]any{
		{"command": "createRole", "rolename": dynsec.DeviceRolePrefix + "ghost"},
		{"command": "createClient", "username": "ghost", "password": "x", "roles": []map[string]any{{"rolename": dynsec.DeviceRolePrefix + "ghost"}}},
	}); err != nil {
		t.Fatal(err)
	}
	t.Log("ghost created", time.Since(began))
	r.cl.dynsec.ReconcileSoon()
	waitFor(t, "the ghost's broker client deleted", eventWait, func() bool {
		res, err := r.cl.dynsec.Send(ctx, []map[string]any{{"command": "getClient", "username": "ghost"}})
		return err == nil && res[0].Error != ""
	})
	res, err := r.cl.dynsec.Send(ctx, []map[string]any{{"command": "getClient", "username": "bulk-000"}})
	if err != nil || res[0].Error != "" {
		t.Fatalf("a registered device's client was touched by the reconcile: %v %v", res, err)
	}
}

// TestBrokerRestart: the broker goes away and comes back with what it
// persisted. The hub reports it, reconnects to its persistent sessions,
// and what a device sends afterwards is made durable. Readings that
// became durable while the broker was away were never acknowledged to it:
// the broker redelivers them, and the hub acknowledges them again without
// taking them twice.
func TestBrokerRestart(t *testing.T) {
	r := newRig(t)
	dev, err := r.reg.Create(context.Background(), devices.Spec{ID: "pump-9"})
	if err != nil {
		t.Fatal(err)
	}
	c := r.device(t, "pump-9", dev.Token, nil, nil)
	ts := time.Now().UnixMilli()
	gate := make(chan struct{})
	r.store.gate.Store(&gate)
	for i := range 50 {
		publish(t, c, "devices/pump-9/telemetry", fmt.Sprintf(`{"id":"a%d","ts":%d,"metrics":{"v":%d}}`, i, ts+int64(i), i))
	}
	waitFor(t, "the first readings held on their way to the spool", eventWait, func() bool { return r.store.waiting.Load() == 50 })

	r.mq.Stop()
	waitFor(t, "the hub to notice", eventWait, func() bool { return !r.cl.Connected() })
	r.store.gate.Store(nil)
	close(gate) // durable now; their acknowledgements go nowhere
	waitFor(t, "the first readings in the spool", eventWait, func() bool { return r.cl.Stats().Ingested.Load() == 50 })
	if p := r.sp.Stats().PendingPoints; p != 50 {
		t.Fatalf("spool has %d points, want 50", p)
	}

	r.mq.Restart()
	waitFor(t, "the hub back on the broker", eventWait, func() bool { return r.cl.Connected() })
	handled := func() int64 { return r.cl.Stats().Ingested.Load() + r.cl.Stats().Redelivered.Load() }
	waitFor(t, "the broker's redeliveries", eventWait, func() bool { return handled() >= 100 })
	c = r.device(t, "pump-9", dev.Token, nil, nil)
	for i := range 50 {
		publish(t, c, "devices/pump-9/telemetry", fmt.Sprintf(`{"id":"b%d","ts":%d,"metrics":{"v":%d}}`, i, ts+100+int64(i), i))
	}
	waitFor(t, "the later readings in the spool", eventWait, func() bool { return handled() >= 150 })
	if p, n := r.sp.Stats().PendingPoints, r.cl.Stats().Redelivered.Load(); p != 100 || n != 50 {
		t.Fatalf("spool has %d points and %d redeliveries were recognised, want 100 and 50: something was taken twice", p, n)
	}
}

// TestDeliveredForgetsOldest: the memory of durable messages is bounded
// and forgets the oldest first.
func TestDeliveredForgetsOldest(t *testing.T) {
	d := newDelivered(3)
	k := func(payload string) uint64 { return d.key("devices/a/telemetry", []byte(payload)) }
	for _, p := range []string{"1", "2", "2", "3", "4"} {
		d.remember(k(p))
	}
	for _, tc := range []struct {
		payload string
		want    bool
	}{
		{"1", false}, // the oldest, forgotten for 4
		{"2", true},  // remembered once, though seen twice
		{"3", true},
		{"4", true},
		{"5", false},
	} {
		if got := d.seen(k(tc.payload)); got != tc.want {
			t.Errorf("seen(%q) = %v, want %v", tc.payload, got, tc.want)
		}
	}
	if d.key("devices/a/telemetry", []byte("1")) == d.key("devices/b/telemetry", []byte("1")) {
		t.Error("the same payload on two devices' topics has one key")
	}
}

// lockedBuffer is a log destination tests read while the hub writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestConnectFailureSaid: a hub the broker refuses says why, once for its
// four connections and their retries, and without the password.
func TestConnectFailureSaid(t *testing.T) {
	mq := mosquittotest.Start(t)
	for _, tc := range []struct {
		name, url, password, want string
	}{
		{"wrong password", mq.URL, "not-the-password", "not Authorized"},
		{"nothing listening", "tcp://127.0.0.1:1", mosquittotest.HubPass, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs lockedBuffer
			cl, err := New(Options{
				BrokerURL: tc.url, Username: mosquittotest.HubUser, Password: tc.password,
				ClientID: "hub-refused", Registry: registryStub{}, Local: &recorder{},
				Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			peers := stubPeers(t, &recorder{})
			go func() { _ = cl.Run(ctx, peers); close(done) }()
			defer func() { cancel(); <-done }()
			waitFor(t, "two rounds of failed attempts", eventWait, func() bool { return cl.Stats().ConnectFailures.Load() >= 8 })
			said := grep(logs.String(), "cannot connect to the broker")
			if len(said) != 1 || !strings.Contains(said[0], tc.want) {
				t.Fatalf("want one line saying %q, got:\n%s", tc.want, logs.String())
			}
			if strings.Contains(logs.String(), tc.password) || cl.Connected() {
				t.Fatalf("password logged or connected:\n%s", logs.String())
			}
		})
	}
}

// grep returns the lines of s that contain sub.
func grep(s, sub string) []string {
	var out []string
	for l := range strings.Lines(s) {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return out
}
