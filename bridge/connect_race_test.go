package bridge

import (
	"context"
	"testing"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// TestConcurrentConnectsEndOffline connects one device twice at once,
// over and over: whichever session ends up current, once every session
// has ended the device must be offline. (Epochs taken before the session
// table's lock could disagree with which session became current, and
// leave a device online forever with no session.)
func TestConcurrentConnectsEndOffline(t *testing.T) {
	for i := range 3000 {
		p := &presenceLog{}
		b := newTestBridge(t, Options{Devices: p})
		got := make(chan *Session, 2)
		start := make(chan struct{})
		for _, r := range []string{"first", "second"} {
			go func() { <-start; got <- b.Connect("d", devices.TransportWS, r, devices.TokenHash{}, &nopConn{}) }()
		}
		close(start)
		s1, s2 := <-got, <-got
		cur := b.Current("d")
		for _, s := range []*Session{s1, s2} {
			if s != cur {
				b.Disconnect(s, ReasonSuperseded)
			}
		}
		if cur.ID < max(s1.ID, s2.ID) {
			t.Fatalf("iteration %d: the current session has epoch %d, an older-than-current one has %d", i, cur.ID, max(s1.ID, s2.ID))
		}
		b.Disconnect(cur, ReasonClientClosed)
		if last, _ := p.last(); last.Online {
			t.Fatalf("iteration %d: every session ended (current epoch %d of %d, %d), presence still online: %+v", i, cur.ID, s1.ID, s2.ID, last)
		}
	}
}

// TestCommandResultsNotRateLimited: a device that spent its burst on
// telemetry can still answer a command on the result topic or path
// (docs/protocol.md: the result endpoint answers 204 or 404), while a
// frame on its socket still counts against the limit.
func TestCommandResultsNotRateLimited(t *testing.T) {
	b := newTestBridge(t, Options{RatePerSec: 0.001, Burst: 1})
	ctx := context.Background()
	s := b.Connect("d1", devices.TransportMQTT, "test", devices.TokenHash{}, &nopConn{})
	if _, e := b.Ingest(ctx, s, []byte(okMsg)); e != nil {
		t.Fatal(e)
	}
	for _, tc := range []struct {
		name string
		s    *Session
		m    Message
	}{
		{"mqtt result topic", s, Message{Kind: telemetry.KindCommandResult, Payload: []byte(`{"id":"cmd-1","status":"ok"}`)}},
		{"http result path", b.Ephemeral("d1", devices.TransportHTTP, "test"), Message{Kind: telemetry.KindCommandResult, Payload: []byte(`{"status":"ok"}`), PathID: "cmd-1"}},
	} {
		if a := b.Accept(ctx, tc.s, tc.m); a.Err != nil {
			t.Errorf("%s: result refused with %s", tc.name, a.Err.Code)
		}
	}
	a := b.Accept(ctx, s, Message{Kind: telemetry.KindFrame, Payload: []byte(`{"type":"ping"}`)})
	if a.Err == nil || a.Err.Code != telemetry.CodeRateLimited {
		t.Fatalf("a socket frame past the limit: %+v, want rate_limited", a)
	}
}
