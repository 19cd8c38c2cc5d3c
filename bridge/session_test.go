package bridge

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

// storeFunc is a Store (our own small interface) answering with a func.
type storeFunc func(ctx context.Context, points int, payload []byte) error

func (f storeFunc) Append(ctx context.Context, points int, payload []byte) error {
	return f(ctx, points, payload)
}

// presenceLog records SetPresence and Touch calls (the registry side).
type presenceLog struct {
	registryStub
	mu      sync.Mutex
	writes  []devices.Presence
	touched int
}

func (p *presenceLog) SetPresence(_ string, pr devices.Presence) {
	p.mu.Lock()
	p.writes = append(p.writes, pr)
	p.mu.Unlock()
}

func (p *presenceLog) Touch(string, time.Time) { p.mu.Lock(); p.touched++; p.mu.Unlock() }

func (p *presenceLog) last() (devices.Presence, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.writes) == 0 {
		return devices.Presence{}, 0
	}
	return p.writes[len(p.writes)-1], len(p.writes)
}

// liveLog is a Fanout recording what it is given.
type liveLog struct {
	mu  sync.Mutex
	evs []telemetry.Event
}

func (e *liveLog) Publish(ev telemetry.Event) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }

// nopConn is a Conn that records its close.
type nopConn struct {
	mu     sync.Mutex
	closed string
}

func (c *nopConn) Close(reason string) { c.mu.Lock(); c.closed = reason; c.mu.Unlock() }

func (c *nopConn) Deliver(telemetry.Command) bool { return false }

func newTestBridge(t *testing.T, o Options) *Bridge {
	t.Helper()
	if o.Codec == nil {
		o.Codec = telemetry.NewCodec(telemetry.Limits{}, nil)
	}
	if o.Store == nil {
		o.Store = storeFunc(func(context.Context, int, []byte) error { return nil })
	}
	if o.Devices == nil {
		o.Devices = registryStub{}
	}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const okMsg = `{"metrics":{"a":1}}`

// TestRateLimitSurvivesReconnect: the bucket is the device's, not the
// session's: reconnecting (or posting over HTTP) never refills it.
func TestRateLimitSurvivesReconnect(t *testing.T) {
	b := newTestBridge(t, Options{RatePerSec: 0.001, Burst: 3})
	ctx := context.Background()
	s := b.Connect("d1", devices.TransportWS, "test", devices.TokenHash{}, &nopConn{})
	for i := range 3 {
		if _, e := b.Ingest(ctx, s, []byte(okMsg)); e != nil {
			t.Fatalf("message %d within the burst refused: %v", i, e)
		}
	}
	if _, e := b.Ingest(ctx, s, []byte(okMsg)); e == nil || e.Code != telemetry.CodeRateLimited {
		t.Fatalf("message past the burst: %v, want rate_limited", e)
	}
	b.Disconnect(s, ReasonClientClosed)
	for _, next := range []*Session{
		b.Connect("d1", devices.TransportMQTT, "test", devices.TokenHash{}, &nopConn{}),
		b.Ephemeral("d1", devices.TransportHTTP, "test"),
	} {
		if _, e := b.Ingest(ctx, next, []byte(okMsg)); e == nil || e.Code != telemetry.CodeRateLimited {
			t.Fatalf("after reconnecting over %s: %v, want rate_limited (the bucket was refilled)", next.Transport, e)
		}
	}
	if _, e := b.Ingest(ctx, b.Ephemeral("d2", devices.TransportHTTP, "test"), []byte(okMsg)); e != nil {
		t.Fatalf("another device is held to d1's limit: %v", e)
	}
}

// TestPresenceEpochs is the epoch rule as a table: online only for a
// later epoch than the last online, offline only for that same epoch.
func TestPresenceEpochs(t *testing.T) {
	type step struct {
		epoch   uint64
		online  bool
		applied bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"connect then disconnect", []step{{1, true, true}, {1, false, true}}},
		{"superseded late disconnect", []step{{1, true, true}, {2, true, true}, {1, false, false}, {2, false, true}}},
		{"late connect of an older session", []step{{2, true, true}, {1, true, false}, {1, false, false}, {2, false, true}}},
		{"offline twice", []step{{1, true, true}, {1, false, true}, {1, false, true}}},
		{"offline before any online", []step{{3, false, false}}},
		{"same epoch online twice", []step{{1, true, true}, {1, true, false}}},
	}
	for _, tt := range tests {
		var p presence
		for i, st := range tt.steps {
			ran := false
			got := p.write(st.epoch, st.online, func() { ran = true })
			if got != st.applied || ran != st.applied {
				t.Errorf("%s: step %d (%+v): applied %v, ran %v", tt.name, i, st, got, ran)
			}
		}
	}
}

// TestSupersededSessionKeepsNewOnline: the old session is kicked, and its
// disconnect leaves the device online with the new session.
func TestSupersededSessionKeepsNewOnline(t *testing.T) {
	reg := &presenceLog{}
	live := &liveLog{}
	b := newTestBridge(t, Options{Devices: reg, Fanout: live})
	c1 := &nopConn{}
	s1 := b.Connect("d1", devices.TransportWS, "a", devices.TokenHash{}, c1)
	s2 := b.Connect("d1", devices.TransportMQTT, "b", devices.TokenHash{}, &nopConn{})
	if c1.closed != ReasonSuperseded {
		t.Fatalf("old session closed with %q, want superseded", c1.closed)
	}
	b.Disconnect(s1, ReasonClientClosed)
	if p, n := reg.last(); n != 2 || !p.Online || p.Transport != devices.TransportMQTT {
		t.Fatalf("after the old session's disconnect: %d writes, last %+v; want the new session online", n, p)
	}
	if b.Current("d1") != s2 {
		t.Fatal("the new session is not current")
	}
	b.Disconnect(s2, ReasonClientClosed)
	b.Disconnect(s2, ReasonClientClosed) // twice: no second write
	if p, n := reg.last(); n != 3 || p.Online || p.Reason != ReasonClientClosed {
		t.Fatalf("after the new session's disconnect: %d writes, last %+v; want offline client_closed", n, p)
	}
	live.mu.Lock()
	defer live.mu.Unlock()
	var online []bool
	for _, ev := range live.evs {
		if ev.Type == telemetry.EventPresence {
			online = append(online, *ev.Online)
		}
	}
	if fmt.Sprint(online) != "[true true false]" {
		t.Fatalf("presence events %v, want [true true false]", online)
	}
}

// resultsFunc is a Commands whose CommandResult answers with a func.
type resultsFunc func(device string, r *telemetry.CommandResult) error

func (f resultsFunc) CommandResult(device string, r *telemetry.CommandResult) error {
	return f(device, r)
}
func (resultsFunc) SessionOpened(string, uint64, func(telemetry.Command) bool) {}
func (resultsFunc) SessionClosed(string, uint64)                               {}
func (resultsFunc) WakePollers(string)                                         {}

// TestAccept covers the entry point's answers for every kind of message.
func TestAccept(t *testing.T) {
	b := newTestBridge(t, Options{Commands: resultsFunc(func(device string, r *telemetry.CommandResult) error {
		if device != "d1" || r.ID == "c1" || r.ID == "c2" {
			return errors.New("no such command")
		}
		return nil
	})})
	ctx := context.Background()
	s := b.Ephemeral("d1", devices.TransportWS, "t")
	tests := []struct {
		name    string
		m       Message
		reply   Reply
		id      string
		code    string
		unknown bool
	}{
		{"ping", Message{Kind: telemetry.KindFrame, Payload: []byte(`{"type":"ping"}`)}, ReplyPong, "", "", false},
		{"telemetry frame", Message{Kind: telemetry.KindFrame, Payload: []byte(`{"type":"telemetry","id":"m1","metrics":{"a":1}}`)}, ReplyAck, "m1", "", false},
		{"telemetry topic", Message{Kind: telemetry.KindTelemetry, Payload: []byte(`{"id":"m2","metrics":{"a":1}}`)}, ReplyAck, "m2", "", false},
		{"invalid telemetry", Message{Kind: telemetry.KindTelemetry, Payload: []byte(`{"id":"m3","metrics":{}}`)}, 0, "m3", telemetry.CodeInvalid, false},
		{"binary", Message{Kind: telemetry.KindFrame, Payload: []byte(`{"type":"ping"}`), Binary: true}, 0, "", telemetry.CodeBadJSON, false},
		{"bad json", Message{Kind: telemetry.KindFrame, Payload: []byte(`{`)}, 0, "", telemetry.CodeBadJSON, false},
		{"frame without type", Message{Kind: telemetry.KindFrame, Payload: []byte(`{"id":"m4","metrics":{"a":1}}`)}, 0, "m4", telemetry.CodeUnknownType, false},
		{"result unknown", Message{Kind: telemetry.KindCommandResult, Payload: []byte(`{"id":"c1","status":"ok"}`)}, ReplyNone, "c1", "", true},
		{"result id from path", Message{Kind: telemetry.KindCommandResult, Payload: []byte(`{"status":"ok"}`), PathID: "c2"}, ReplyNone, "c2", "", true},
		{"result id not the path's", Message{Kind: telemetry.KindCommandResult, Payload: []byte(`{"id":"c3","status":"ok"}`), PathID: "c2"}, 0, "c3", telemetry.CodeInvalid, false},
		{"result recorded", Message{Kind: telemetry.KindCommandResult, Payload: []byte(`{"id":"c5","status":"ok"}`)}, ReplyNone, "c5", "", false},
		{"result invalid", Message{Kind: telemetry.KindCommandResult, Payload: []byte(`{"id":"c4","status":"maybe"}`)}, 0, "c4", telemetry.CodeInvalid, false},
	}
	for _, tt := range tests {
		a := b.Accept(ctx, s, tt.m)
		code := ""
		if a.Err != nil {
			code = a.Err.Code
		}
		if code != tt.code || a.ID != tt.id || a.Unknown != tt.unknown || (tt.code == "" && a.Reply != tt.reply) {
			t.Errorf("%s: %+v (err %v); want reply %d id %q code %q unknown %v", tt.name, a, a.Err, tt.reply, tt.id, tt.code, tt.unknown)
		}
	}
}

// TestStoreErrors: each way the store refuses maps onto the bridge's
// sentinels and from them onto the device's answer.
func TestStoreErrors(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		sentinel error
		code     string
	}{
		{"spool full", spool.ErrFull, ErrStoreFull, telemetry.CodeOverloaded},
		{"spool closed", spool.ErrClosed, ErrStoreFull, telemetry.CodeOverloaded},
		{"timeout", context.DeadlineExceeded, ErrStoreFull, telemetry.CodeOverloaded},
		{"timeout after copy", fmt.Errorf("%w: %w", spool.ErrMaybeStored, context.DeadlineExceeded), ErrMaybeStored, telemetry.CodeOverloaded},
		{"canceled after copy", fmt.Errorf("%w: %w", spool.ErrMaybeStored, context.Canceled), ErrMaybeStored, telemetry.CodeInternal},
		{"too large", spool.ErrTooLarge, ErrStoreTooLarge, telemetry.CodeTooLarge},
		{"wrapped sentinel", fmt.Errorf("pg: %w", ErrStoreFull), ErrStoreFull, telemetry.CodeOverloaded},
		{"other", errors.New("disk on fire"), nil, telemetry.CodeInternal},
	}
	for _, tt := range tests {
		mapped := storeError(tt.err)
		if tt.sentinel != nil && !errors.Is(mapped, tt.sentinel) {
			t.Errorf("%s: storeError = %v, does not wrap %v", tt.name, mapped, tt.sentinel)
		}
		if !errors.Is(mapped, tt.err) {
			t.Errorf("%s: storeError = %v lost the store's error", tt.name, mapped)
		}
		b := newTestBridge(t, Options{Store: storeFunc(func(context.Context, int, []byte) error { return tt.err })})
		_, e := b.Ingest(context.Background(), b.Ephemeral("d1", devices.TransportHTTP, "t"), []byte(okMsg))
		if e == nil || e.Code != tt.code {
			t.Errorf("%s: answer %v, want %s", tt.name, e, tt.code)
		}
	}
	if storeError(nil) != nil {
		t.Error("storeError(nil) is not nil")
	}
}

// TestAcceptedReadingTouchesAndFansOut: an accepted message updates
// last-seen once and sends every reading to the live fan-out; a refused
// one does neither.
func TestAcceptedReadingTouchesAndFansOut(t *testing.T) {
	reg := &presenceLog{}
	live := &liveLog{}
	b := newTestBridge(t, Options{Devices: reg, Fanout: live})
	s := b.Ephemeral("d1", devices.TransportHTTP, "t")
	if _, e := b.Ingest(context.Background(), s, []byte(`{"readings":[{"metrics":{"a":1}},{"metrics":{"a":2}}]}`)); e != nil {
		t.Fatal(e)
	}
	if _, e := b.Ingest(context.Background(), s, []byte(`{"metrics":{}}`)); e == nil {
		t.Fatal("empty metrics accepted")
	}
	reg.mu.Lock()
	touched := reg.touched
	reg.mu.Unlock()
	live.mu.Lock()
	n := len(live.evs)
	live.mu.Unlock()
	if touched != 1 || n != 2 {
		t.Fatalf("touched %d, live events %d; want 1 and 2", touched, n)
	}
}

// batchLog is a BatchFanout recording each call.
type batchLog struct {
	liveLog
	batches [][]telemetry.Event
}

func (b *batchLog) PublishBatch(evs []telemetry.Event) {
	b.mu.Lock()
	b.batches = append(b.batches, evs)
	b.mu.Unlock()
}

// TestReadingsFanOutAsOneBatch: with a batching fan-out, every reading of
// a message goes in one call; presence still goes through Publish.
func TestReadingsFanOutAsOneBatch(t *testing.T) {
	live := &batchLog{}
	b := newTestBridge(t, Options{Fanout: live})
	s := b.Connect("d1", devices.TransportWS, "t", devices.TokenHash{}, &nopConn{})
	if _, e := b.Ingest(context.Background(), s, []byte(`{"readings":[{"metrics":{"a":1}},{"metrics":{"a":2}},{"metrics":{"a":3}}]}`)); e != nil {
		t.Fatal(e)
	}
	live.mu.Lock()
	defer live.mu.Unlock()
	if len(live.batches) != 1 || len(live.batches[0]) != 3 || live.batches[0][2].Metrics["a"].Num != 3 || live.batches[0][0].Device != "d1" {
		t.Fatalf("batches %+v, want one of 3 readings", live.batches)
	}
	if len(live.evs) != 1 || live.evs[0].Type != telemetry.EventPresence {
		t.Fatalf("Publish got %+v, want only the presence event", live.evs)
	}
}

// TestConnectedGauge: the connected gauge of a transport counts the open
// sessions: up on connect, back down on disconnect.
func TestConnectedGauge(t *testing.T) {
	b := newTestBridge(t, Options{})
	gauge := func() int64 { return b.Stats().Connected[devices.TransportWS].Load() }
	s1 := b.Connect("d1", devices.TransportWS, "test", devices.TokenHash{}, &nopConn{})
	s2 := b.Connect("d2", devices.TransportWS, "test", devices.TokenHash{}, &nopConn{})
	for _, st := range []struct {
		name string
		step func()
		want int64
	}{
		{"two connected", func() {}, 2},
		{"one disconnected", func() { b.Disconnect(s1, ReasonClientClosed) }, 1},
		{"both disconnected", func() { b.Disconnect(s2, ReasonNetworkError) }, 0},
	} {
		st.step()
		if got := gauge(); got != st.want {
			t.Errorf("%s: connected gauge %d, want %d", st.name, got, st.want)
		}
	}
}

// TestDefaultRate: a RatePerSec of zero means the default rate (50/s), not
// a bucket that never refills: once the burst is spent, a message is
// accepted again within a second.
func TestDefaultRate(t *testing.T) {
	b := newTestBridge(t, Options{RatePerSec: 0, Burst: 1})
	ctx := context.Background()
	s := b.Ephemeral("d1", devices.TransportHTTP, "test")
	if _, e := b.Ingest(ctx, s, []byte(okMsg)); e != nil {
		t.Fatalf("first message refused: %v", e)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, e := b.Ingest(ctx, s, []byte(okMsg))
		if e == nil {
			return
		}
		if e.Code != telemetry.CodeRateLimited {
			t.Fatalf("refused with %v, want rate_limited while waiting", e)
		}
		if time.Now().After(deadline) {
			t.Fatal("no message accepted within 2s after the burst: the bucket does not refill")
		}
		runtime.Gosched()
	}
}

// TestReadingTimestamps: a reading sent with ts keeps it; one sent
// without gets the hub's receive time, in milliseconds, in what fans out.
func TestReadingTimestamps(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fixed int64 // the ts sent, 0: none
	}{
		{"no ts: hub time", 0},
		{"ts sent: kept", time.Now().Add(-time.Hour).UnixMilli()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			live := &liveLog{}
			b := newTestBridge(t, Options{Fanout: live})
			msg := []byte(`{"metrics":{"a":1}}`)
			if tc.fixed != 0 {
				msg = fmt.Appendf(nil, `{"ts":%d,"metrics":{"a":1}}`, tc.fixed)
			}
			before := time.Now().UnixMilli()
			if _, e := b.Ingest(context.Background(), b.Ephemeral("d1", devices.TransportHTTP, "t"), msg); e != nil {
				t.Fatal(e)
			}
			after := time.Now().UnixMilli()
			live.mu.Lock()
			defer live.mu.Unlock()
			if len(live.evs) != 1 {
				t.Fatalf("%d events, want 1", len(live.evs))
			}
			ts := live.evs[0].TS
			switch {
			case tc.fixed != 0 && ts != tc.fixed:
				t.Errorf("ts %d, want the sent %d", ts, tc.fixed)
			case tc.fixed == 0 && (ts < before || ts > after):
				t.Errorf("ts %d, want the hub's time in ms, in [%d, %d]", ts, before, after)
			}
		})
	}
}
