package ledger

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func newTestLedger(t testing.TB, opts Options) *Ledger {
	t.Helper()
	if opts.Exists == nil {
		opts.Exists = func(string) bool { return true }
	}
	if opts.Now == nil {
		opts.Now = func() time.Time { return t0 }
	}
	l, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

type msg struct {
	boot string
	seqs []uint64
}

func readings(seqs ...uint64) []telemetry.Reading {
	rs := make([]telemetry.Reading, len(seqs))
	for i, s := range seqs {
		rs[i] = telemetry.Reading{TS: 1, Seq: s, HasSeq: true}
	}
	return rs
}

func span(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func openRanges(v DeviceView) string {
	s := ""
	for _, g := range v.Seq.Gaps {
		if g.ClosedAt == nil {
			s += fmt.Sprintf("%s:%d-%d ", g.Boot, g.From, g.To)
		}
	}
	return s
}

// TestSeqTracking: gaps, duplicates and resets for the sequences a
// device sends, resends and restarts with.
func TestSeqTracking(t *testing.T) {
	tests := []struct {
		name              string
		msgs              []msg
		open              string // open gaps, newest first
		gaps, dups, reset uint64
		closed            int
	}{
		{"in order", []msg{{"a", span(0, 9)}}, "", 0, 0, 0, 0},
		{"first seq is the base", []msg{{"a", span(5, 9)}}, "", 0, 0, 0, 0},
		{"one gap", []msg{{"a", []uint64{1, 2, 5, 6}}}, "a:3-4 ", 1, 0, 0, 0},
		{"resend of stored readings is a duplicate once", []msg{{"a", span(1, 5)}, {"a", span(4, 5)}, {"a", []uint64{6}}}, "", 0, 2, 0, 0},
		{"late resend closes the gap", []msg{{"a", []uint64{1, 4}}, {"a", []uint64{2, 3}}}, "", 1, 0, 0, 1},
		{"partial fill splits", []msg{{"a", []uint64{1, 10}}, {"a", []uint64{5}}}, "a:2-4 a:6-9 ", 1, 0, 0, 0},
		{"fill at the edges shrinks", []msg{{"a", []uint64{1, 10}}, {"a", []uint64{2, 9}}}, "a:3-8 ", 1, 0, 0, 0},
		{"new boot is a reset, no gap", []msg{{"a", span(1, 5)}, {"b", span(1, 3)}}, "", 0, 0, 1, 0},
		{"resend of the previous boot after a reboot", []msg{{"a", []uint64{1, 2, 4}}, {"b", span(1, 3)}, {"a", []uint64{3, 4}}}, "", 1, 1, 1, 1},
		{"no boot at all", []msg{{"", []uint64{1, 3}}}, ":2-2 ", 1, 0, 0, 0},
		{"backwards beyond the window without a new boot", []msg{{"a", []uint64{1, 10000}}, {"a", span(0, 2)}}, "a:2-9999 ", 1, 0, 1, 0},
		{"numbers after a counter reset never fill the old count's gaps", []msg{{"a", []uint64{1, 10000}}, {"a", []uint64{0, 5}}, {"a", []uint64{2}}}, "a:2-9999 a:1-1 a:3-4 ", 2, 0, 1, 0},
		{"backwards into an open gap fills it", []msg{{"a", []uint64{1, 10000}}, {"a", []uint64{2}}}, "a:3-9999 ", 1, 0, 0, 0},
		{"duplicate within the window after a jump", []msg{{"a", []uint64{100, 5000}}, {"a", []uint64{5000, 4999}}}, "a:101-4998 ", 1, 1, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newTestLedger(t, Options{})
			for _, m := range tt.msgs {
				l.Durable("d", m.boot, readings(m.seqs...))
			}
			v, ok := l.Device("d")
			if !ok {
				t.Fatal("no ledger")
			}
			closed := 0
			for _, g := range v.Seq.Gaps {
				if g.ClosedAt != nil {
					closed++
				}
			}
			if got := openRanges(v); got != tt.open || v.Seq.GapsTotal != tt.gaps || v.Seq.Duplicates != tt.dups || v.Seq.Resets != tt.reset || closed != tt.closed {
				t.Fatalf("open %q gaps %d dups %d resets %d closed %d; want %q %d %d %d %d",
					got, v.Seq.GapsTotal, v.Seq.Duplicates, v.Seq.Resets, closed, tt.open, tt.gaps, tt.dups, tt.reset, tt.closed)
			}
			if l.OpenGaps("d") != v.Seq.OpenGaps {
				t.Fatalf("OpenGaps %d, view %d", l.OpenGaps("d"), v.Seq.OpenGaps)
			}
		})
	}
}

// TestOnGapsChanged: the callback hears every change of a device's open
// gaps, and only changes.
func TestOnGapsChanged(t *testing.T) {
	var got []int
	l := newTestLedger(t, Options{OnGapsChanged: func(d string, n int) { got = append(got, n) }})
	l.Durable("d", "a", readings(1, 3, 5))
	l.Durable("d", "a", readings(6))
	l.Durable("d", "a", readings(2))
	l.Durable("d", "a", readings(4))
	if fmt.Sprint(got) != "[2 1 0]" {
		t.Fatalf("changes %v, want [2 1 0]", got)
	}
}

// TestUnknownDeviceKeepsNothing: the ledger is bounded by the registry.
func TestUnknownDeviceKeepsNothing(t *testing.T) {
	l := newTestLedger(t, Options{Exists: func(id string) bool { return id == "known" }})
	l.Received("ghost")
	l.Durable("ghost", "", readings(1, 5))
	l.Written([]byte("telemetry,device=ghost t=1 1\n"))
	if _, ok := l.Device("ghost"); ok {
		t.Fatal("ledger kept an unknown device")
	}
	l.Received("known")
	if v, ok := l.Device("known"); !ok || v.Received != 1 {
		t.Fatalf("known: %+v %v", v, ok)
	}
}

// TestWrittenLines: written and dead-lettered are counted per device from
// the line protocol.
func TestWrittenLines(t *testing.T) {
	l := newTestLedger(t, Options{})
	data := telemetry.AppendLines(nil, "a", []telemetry.Tag{{Key: "site", Value: "x y"}}, make([]telemetry.Reading, 3))
	data = telemetry.AppendLines(data, "b", nil, make([]telemetry.Reading, 2))
	data = telemetry.AppendLines(data, "a", nil, make([]telemetry.Reading, 1))
	l.Written(data)
	l.DeadLettered(telemetry.AppendLines(nil, "b", nil, make([]telemetry.Reading, 1)))
	a, _ := l.Device("a")
	b, _ := l.Device("b")
	if a.Written != 4 || b.Written != 2 || b.DeadLettered != 1 {
		t.Fatalf("a written %d, b written %d dead %d; want 4, 2, 1", a.Written, b.Written, b.DeadLettered)
	}
}

// TestLastHour: the recent window counts the last 60 minutes only.
func TestLastHour(t *testing.T) {
	now := t0
	l := newTestLedger(t, Options{Now: func() time.Time { return now }})
	l.Received("d")
	now = now.Add(30 * time.Minute)
	l.Received("d")
	l.Refused("d", "invalid")
	if v, _ := l.Device("d"); v.LastHour.Received != 2 || v.Received != 2 || v.Refused["invalid"] != 1 {
		t.Fatalf("%+v", v)
	}
	now = now.Add(45 * time.Minute)
	if v, _ := l.Device("d"); v.LastHour.Received != 1 || v.LastHour.RefusedTotal != 1 || v.Received != 2 {
		t.Fatalf("after 75 min: %+v", v.LastHour)
	}
	now = now.Add(2 * time.Hour)
	if v, _ := l.Device("d"); v.LastHour.Received != 0 || v.Received != 2 {
		t.Fatalf("after 3 h: %+v", v.LastHour)
	}
}

// memStore is a Store in memory for unit tests (the bbolt and PostgreSQL
// stores have their own tests against the real thing).
type memStore struct{ recs map[string]map[string][]byte }

func (m *memStore) LoadLedger(_ context.Context, inst string) (map[string][]byte, error) {
	return m.recs[inst], nil
}

func (m *memStore) SaveLedger(_ context.Context, inst string, put map[string][]byte, del []string) error {
	if m.recs[inst] == nil {
		m.recs[inst] = map[string][]byte{}
	}
	for k, v := range put {
		m.recs[inst][k] = v
	}
	for _, k := range del {
		delete(m.recs[inst], k)
	}
	return nil
}

// TestPersistRestart: a restarted ledger continues where it stopped: a
// resend after the restart is a duplicate, not a new reading, and the
// open gap is still open.
func TestPersistRestart(t *testing.T) {
	st := &memStore{recs: map[string]map[string][]byte{}}
	l := newTestLedger(t, Options{Store: st})
	l.Received("d")
	l.Durable("d", "a", readings(1, 2, 4))
	l.Refused("d", "invalid")
	if err := l.Persist(context.Background()); err != nil {
		t.Fatal(err)
	}
	l2 := newTestLedger(t, Options{Store: st})
	l2.Durable("d", "a", readings(4, 5))
	v, _ := l2.Device("d")
	if v.Received != 1 || v.Durable != 5 || v.Seq.Duplicates != 1 || openRanges(v) != "a:3-3 " || v.Refused["invalid"] != 1 || l2.OpenGaps("d") != 1 {
		t.Fatalf("after restart: %+v", v)
	}
	if tot := l2.Totals(); tot.Durable != 5 || tot.OpenGaps != 1 {
		t.Fatalf("totals %+v", tot)
	}
	l2.Forget("d")
	if err := l2.Persist(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(st.recs["local"]) != 0 {
		t.Fatal("forgotten device still stored")
	}
}

// TestRecreatedBeforePersist: a device deleted and created again before
// the next save keeps its new record.
func TestRecreatedBeforePersist(t *testing.T) {
	st := &memStore{recs: map[string]map[string][]byte{}}
	l := newTestLedger(t, Options{Store: st})
	l.Received("d")
	if err := l.Persist(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.Forget("d")
	l.Received("d")
	l.Received("d")
	if err := l.Persist(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v, ok := newTestLedger(t, Options{Store: st}).Device("d"); !ok || v.Received != 2 {
		t.Fatalf("after delete, create, save: %+v %v", v, ok)
	}
}

// TestRecordSize: what one device costs per save.
func TestRecordSize(t *testing.T) {
	st := &memStore{recs: map[string]map[string][]byte{}}
	l := newTestLedger(t, Options{Store: st})
	l.Received("d")
	l.Durable("d", "a", readings(span(0, 5000)...))
	l.Durable("d", "b", readings(1, 3))
	if err := l.Persist(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := len(st.recs["local"]["d"])
	t.Logf("one device's record: %d bytes", n)
	if n > 6000 {
		t.Errorf("record of %d bytes", n)
	}
	v, _ := newTestLedger(t, Options{Store: st}).Device("d")
	l2 := newTestLedger(t, Options{Store: st})
	l2.Durable("d", "a", readings(5000, 4999))
	w, _ := l2.Device("d")
	if v.Seq.OpenGaps != 1 || w.Seq.Duplicates != 2 {
		t.Fatalf("reloaded: %+v then %+v", v.Seq, w.Seq)
	}
}

// TestPendingBounds: one device's numbers between saves stay bounded
// whatever the delivery: every other number (a shared subscription's
// round robin) makes a span each until maxSpans, then the closest spans
// are joined (numbers between count as seen: a gap can be hidden, never
// invented) and an early save is asked for; seconds beyond maxBuckets
// fold into the next. Repeats are counted.
func TestPendingBounds(t *testing.T) {
	var p pending
	full := false
	for n := uint64(0); n < 4*maxSpans; n += 2 {
		full = p.add("b", n, t0) || full
	}
	if !full || p.spans > maxSpans || len(p.b) != 1 {
		t.Fatalf("interleaved: full %v, %d spans, %d buckets", full, p.spans, len(p.b))
	}
	sp := p.b[0].Boots[0].Spans
	if sp[0][0] != 0 || sp[len(sp)-1][1] != 4*maxSpans-2 {
		t.Fatalf("joined spans lost their ends: %v ... %v", sp[0], sp[len(sp)-1])
	}
	p = pending{}
	for i := range maxBuckets + 50 {
		p.add("b", uint64(i), t0.Add(time.Duration(i)*time.Second))
	}
	p.add("b", 3, t0.Add(time.Hour))
	if len(p.b) != maxBuckets || p.b[len(p.b)-1].Dups != 0 {
		t.Fatalf("%d buckets (want %d)", len(p.b), maxBuckets)
	}
	var all bucketSeq
	for _, b := range p.b {
		all.fold(b)
	}
	if all.Dups != 1 || len(all.Boots[0].Spans) != 1 || all.Boots[0].Spans[0] != (numSpan{0, maxBuckets + 49}) {
		t.Fatalf("folded: dups %d spans %v", all.Dups, all.Boots[0].Spans)
	}
}
