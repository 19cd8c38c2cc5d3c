package cluster

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Cluster behaviour on the in-memory fakeBroker (our Client interface),
// without Mosquitto: the Mosquitto tests in cluster_test.go check the
// same paths against the real broker and paho.

// newFakeRig runs one instance named id on fb over the registry store st
// (nil: its own), with BrokerIdle idle, and waits until it subscribed.
// RefreshEvery is an hour, so only an announcement makes it reload.
func newFakeRig(t *testing.T, fb *fakeBroker, st *devices.BoltStore, id string, idle time.Duration) *rig {
	t.Helper()
	r := buildRig(t, st, Options{BrokerURL: "tcp://fake", ClientID: id, ClientFactory: fb.factory,
		BrokerIdle: idle, RefreshEvery: time.Hour, IngestConns: 1})
	select {
	case <-r.cl.Ready():
	case <-time.After(eventWait):
		t.Fatal("cluster did not subscribe on the fake broker")
	}
	return r
}

// fakeDevice is a device's connection to fb, subscribed to its commands
// and errors topics, keeping what it receives.
type fakeDevice struct {
	id  string
	fb  *fakeBroker
	mu  sync.Mutex
	got []Message
}

func newFakeDevice(t *testing.T, fb *fakeBroker, id string) *fakeDevice {
	t.Helper()
	d := &fakeDevice{id: id, fb: fb}
	c := fb.factory(ClientOptions{ClientID: id, OnMessage: func(m Message) {
		d.mu.Lock()
		d.got = append(d.got, m)
		d.mu.Unlock()
	}})
	c.Connect()
	t.Cleanup(func() { c.Disconnect(0) })
	if _, err := c.Subscribe(context.Background(), map[string]byte{
		telemetry.Topic(id, telemetry.KindCommands): 1, telemetry.Topic(id, telemetry.KindErrors): 1,
	}); err != nil {
		t.Fatal(err)
	}
	return d
}

// send publishes payload on the device's topic of kind k and returns the
// message as the one hub connection that took it has it.
func (d *fakeDevice) send(t *testing.T, k telemetry.Kind, payload string) *fakeMsg {
	t.Helper()
	ms := d.fb.publish(telemetry.Topic(d.id, k), []byte(payload))
	if len(ms) != 1 {
		t.Fatalf("message went to %d subscribers of the shared subscription, want 1", len(ms))
	}
	return ms[0]
}

// received returns the first message on the device's topic of kind k
// that contains s, or nil.
func (d *fakeDevice) received(k telemetry.Kind, s string) Message {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.got {
		if m.Topic() == telemetry.Topic(d.id, k) && strings.Contains(string(m.Payload()), s) {
			return m
		}
	}
	return nil
}

func waitAcked(t *testing.T, what string, m *fakeMsg) {
	t.Helper()
	select {
	case <-m.acked:
	case <-time.After(eventWait):
		t.Fatalf("%s not acknowledged after %s", what, eventWait)
	}
}

// TestFakeIngestAckedWhenDurable: a telemetry message from the shared
// subscription is acknowledged only after the bridge made it durable; a
// refused one is acknowledged with the refusal on the device's errors
// topic and nothing stored.
func TestFakeIngestAckedWhenDurable(t *testing.T) {
	fb := newFakeBroker()
	r := newFakeRig(t, fb, nil, "hub-a", time.Minute)
	if _, err := r.reg.Create(context.Background(), devices.Spec{ID: "pump-1"}); err != nil {
		t.Fatal(err)
	}
	dev := newFakeDevice(t, fb, "pump-1")

	gate := make(chan struct{})
	var release sync.Once
	open := func() { release.Do(func() { close(gate) }) }
	t.Cleanup(open) // before the rig stops: a failed check must not leave the worker at the gate
	r.store.gate.Store(&gate)
	m := dev.send(t, telemetry.KindTelemetry, `{"id":"m1","metrics":{"v":1}}`)
	waitFor(t, "the append held at the gate", eventWait, func() bool { return r.store.waiting.Load() == 1 })
	if m.isAcked() {
		t.Fatal("acknowledged to the broker before the store took it")
	}
	open()
	waitAcked(t, "the durable message", m)
	if p := r.sp.Stats().PendingPoints; p != 1 {
		t.Fatalf("spool has %d points when the message was acknowledged, want 1", p)
	}
	if n := r.cl.Stats().Ingested.Load(); n != 1 {
		t.Fatalf("Ingested = %d, want 1", n)
	}

	for _, tc := range []struct{ id, payload, code string }{
		{"", `{"id":"bad1","metrics":{"v":`, telemetry.CodeBadJSON},
		{"bad2", `{"id":"bad2","metrics":{"bad name":1}}`, telemetry.CodeInvalid},
		{"bad3", `{"id":"bad3","type":"command_result","metrics":{"v":1}}`, telemetry.CodeUnknownType},
	} {
		m := dev.send(t, telemetry.KindTelemetry, tc.payload)
		waitAcked(t, "the refused message", m)
		waitFor(t, "the "+tc.code+" error", eventWait, func() bool {
			e := dev.received(telemetry.KindErrors, tc.code)
			return e != nil && (tc.id == "" || strings.Contains(string(e.Payload()), `"`+tc.id+`"`))
		})
	}
	if p := r.sp.Stats().PendingPoints; p != 1 {
		t.Fatalf("spool has %d points after refused messages, want 1", p)
	}
	if n := r.cl.Stats().Refused.Load(); n != 3 {
		t.Fatalf("Refused = %d, want 3", n)
	}
}

// TestFakeCommandResultThroughAccept: a result on commands/result
// without a type is a command result (the pipeline defaults it for the
// topic) and completes the command; one of another type is refused on
// the errors topic.
func TestFakeCommandResultThroughAccept(t *testing.T) {
	fb := newFakeBroker()
	r := newFakeRig(t, fb, nil, "hub-a", time.Minute)
	ctx := context.Background()
	if _, err := r.reg.Create(ctx, devices.Spec{ID: "pump-1"}); err != nil {
		t.Fatal(err)
	}
	dev := newFakeDevice(t, fb, "pump-1")
	rec, _, err := r.cmds.SendCommand(ctx, commands.Spec{Device: "pump-1", Name: "reboot", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the command at the device", eventWait, func() bool { return dev.received(telemetry.KindCommands, rec.ID) != nil })

	bad := dev.send(t, telemetry.KindCommandResult, `{"id":"`+rec.ID+`","type":"telemetry","status":"ok"}`)
	waitAcked(t, "the refused result", bad)
	waitFor(t, "the unknown_type error", eventWait, func() bool {
		return dev.received(telemetry.KindErrors, telemetry.CodeUnknownType) != nil
	})

	ok := dev.send(t, telemetry.KindCommandResult, `{"id":"`+rec.ID+`","status":"ok","result":{"up":true}}`)
	waitAcked(t, "the result", ok)
	done, err := r.cmds.WaitCommand(ctx, "pump-1", rec.ID, eventWait)
	if err != nil || done.Status != commands.Succeeded {
		t.Fatalf("command %+v, %v", done, err)
	}
}

// TestFakeLiveRelayAndRegistrySync: two instances of one fleet on one
// broker. A reading either takes reaches both instances' dashboards; a
// device created on one is known to the other through the announcement
// (its periodic reload is an hour away).
func TestFakeLiveRelayAndRegistrySync(t *testing.T) {
	fb := newFakeBroker()
	a := newFakeRig(t, fb, nil, "hub-a", time.Minute)
	b := newFakeRig(t, fb, a.st, "hub-b", time.Minute)

	if _, err := a.reg.Create(context.Background(), devices.Spec{ID: "new-1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other instance to know the new device", eventWait, func() bool { return b.reg.Exists("new-1") })

	dev := newFakeDevice(t, fb, "new-1")
	const n = 5
	for i := range n {
		waitAcked(t, "a reading", dev.send(t, telemetry.KindTelemetry, fmt.Sprintf(`{"id":"m%d","metrics":{"v":%d}}`, i, i)))
	}
	for name, r := range map[string]*rig{"hub-a": a, "hub-b": b} {
		waitFor(t, "the readings on "+name+"'s dashboards", eventWait, func() bool {
			return r.live.count(telemetry.EventReading, "new-1") == n
		})
	}
	if got := a.cl.Stats().Ingested.Load() + b.cl.Stats().Ingested.Load(); got != n {
		t.Fatalf("instances ingested %d messages, want %d (once each)", got, n)
	}
	if got := a.cl.Stats().RemoteReadings.Load() + b.cl.Stats().RemoteReadings.Load(); got != n {
		t.Fatalf("instances relayed %d readings to each other, want %d", got, n)
	}
}

// TestFakePresenceInferred: an MQTT device on the broker is online from
// its first message (registry and dashboards) and offline with
// ReasonIdle once nothing was heard from it for BrokerIdle.
func TestFakePresenceInferred(t *testing.T) {
	fb := newFakeBroker()
	r := newFakeRig(t, fb, nil, "hub-a", 300*time.Millisecond)
	if _, err := r.reg.Create(context.Background(), devices.Spec{ID: "meter-7"}); err != nil {
		t.Fatal(err)
	}
	dev := newFakeDevice(t, fb, "meter-7")
	if d, _ := r.reg.Get("meter-7"); d.Online {
		t.Fatal("online before it sent anything")
	}
	waitAcked(t, "the reading", dev.send(t, telemetry.KindTelemetry, `{"id":"m1","metrics":{"v":1}}`))
	waitFor(t, "online and idle again", eventWait, func() bool { return len(r.live.presence("meter-7")) >= 2 })
	evs := r.live.presence("meter-7")
	if on := evs[0]; !*on.Online || on.Transport != devices.TransportMQTT {
		t.Fatalf("first presence event %+v, want online over mqtt", on)
	}
	if off := evs[1]; *off.Online || off.Reason != ReasonIdle {
		t.Fatalf("second presence event %+v, want offline %q", off, ReasonIdle)
	}
	waitFor(t, "the registry to show it offline", eventWait, func() bool {
		d, err := r.reg.Get("meter-7")
		return err == nil && !d.Online
	})
}
