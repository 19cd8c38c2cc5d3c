package ledger

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// TestAttackLedgerSeqNearMax: the largest seq is tracked exactly, its
// resend is a duplicate, and the window arithmetic does not wrap.
func TestAttackLedgerSeqNearMax(t *testing.T) {
	l := newTestLedger(t, Options{})
	l.Durable("d", "a", readings(telemetry.MaxSeq-2, telemetry.MaxSeq))
	l.Durable("d", "a", readings(telemetry.MaxSeq))
	v, _ := l.Device("d")
	if openRanges(v) != "a:9223372036854775806-9223372036854775806 " || v.Seq.Duplicates != 1 || v.Seq.Resets != 0 {
		t.Fatalf("%+v", v.Seq)
	}
	l.Durable("d", "a", readings(telemetry.MaxSeq-1))
	if v, _ := l.Device("d"); v.Seq.OpenGaps != 0 {
		t.Fatalf("late fill at the top not seen: %+v", v.Seq)
	}
}

// TestAttackLedgerHugeJump: a gap of about 2^63 is one record, not an
// allocation per missing number, and filling inside it splits it.
func TestAttackLedgerHugeJump(t *testing.T) {
	l := newTestLedger(t, Options{})
	l.Durable("d", "a", readings(0))
	rs := readings(telemetry.MaxSeq)
	allocs := testing.AllocsPerRun(1, func() { l.Durable("d", "a", rs) })
	if allocs > 4 {
		t.Fatalf("%v allocations for one huge jump", allocs)
	}
	l.Durable("d", "a", readings(1<<62))
	v, _ := l.Device("d")
	if v.Seq.OpenGaps != 2 || v.Seq.GapsTotal != 1 {
		t.Fatalf("%+v", v.Seq)
	}
}

// TestAttackLedgerBootControl: a boot with control characters, too long,
// or of the wrong kind never reaches the ledger: the codec refuses it at
// "boot".
func TestAttackLedgerBootControl(t *testing.T) {
	c := telemetry.NewCodec(telemetry.Limits{}, nil)
	for _, boot := range []string{`"a\u0007"`, `"\u001b[31mred"`, `"a\u007f"`, `"` + strings.Repeat("é", 33) + `"`, `[1]`, `true`, `{}`} {
		_, err := c.DecodeTelemetry([]byte(`{"boot":` + boot + `,"seq":1,"metrics":{"t":1}}`))
		e, ok := err.(*telemetry.Error)
		if !ok || len(e.Fields) == 0 || e.Fields[0].Field != "boot" {
			t.Errorf("boot %s: %v, want a refusal at boot", boot, err)
		}
	}
}

// TestAttackLedgerAlternatingBoots: two boots alternating keep two slots
// (a reset once, no gaps); three rotating reset each time and hold no more
// state than two.
func TestAttackLedgerAlternatingBoots(t *testing.T) {
	l := newTestLedger(t, Options{})
	for i := range uint64(1000) {
		l.Durable("d", "a", readings(i))
		l.Durable("d", "b", readings(i))
	}
	v, _ := l.Device("d")
	if v.Seq.Resets != 1 || v.Seq.OpenGaps != 0 || v.Seq.Duplicates != 0 {
		t.Fatalf("two boots: %+v", v.Seq)
	}
	l2 := newTestLedger(t, Options{})
	for i := range uint64(300) {
		l2.Durable("d", []string{"a", "b", "c"}[i%3], readings(i))
	}
	v, _ = l2.Device("d")
	if v.Seq.Resets != 299 || v.Seq.OpenGaps != 0 {
		t.Fatalf("three boots: %+v", v.Seq)
	}
}

// TestAttackLedgerOutOfOrderFlood: every other seq, then fills splitting
// one huge gap: open gaps never exceed the bound; the oldest expire.
func TestAttackLedgerOutOfOrderFlood(t *testing.T) {
	const maxOpen = 100
	now := t0
	l := newTestLedger(t, Options{MaxOpenGaps: maxOpen, Now: func() time.Time { now = now.Add(time.Millisecond); return now }})
	for i := range uint64(5000) {
		l.Durable("d", "a", readings(2*i))
	}
	l.Durable("d", "a", readings(1<<40))
	for i := range uint64(5000) {
		l.Durable("d", "a", readings(1<<20+7919*i)) // inside the huge gap: splits
	}
	v, _ := l.Device("d")
	d, _ := l.devs.Load("d")
	if n := len(d.(*device).Seq.Open); n > maxOpen || v.Seq.OpenGaps > maxOpen || l.OpenGaps("d") > maxOpen {
		t.Fatalf("%d open gaps kept, bound %d", n, maxOpen)
	}
	expired := 0
	for _, g := range v.Seq.Gaps {
		if g.Expired {
			expired++
		}
	}
	if expired == 0 || len(v.Seq.Gaps) > maxGapsShown {
		t.Fatalf("expired %d, shown %d", expired, len(v.Seq.Gaps))
	}
}

// BenchmarkLedgerReading is the hot path: one message of one in-order
// reading with a seq.
func BenchmarkLedgerReading(b *testing.B) {
	l := newTestLedger(b, Options{})
	rs := readings(0)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		rs[0].Seq = uint64(i)
		l.Received("d")
		l.Durable("d", "boot-1", rs)
	}
}

// BenchmarkLedgerReadingParallel: devices on different goroutines share
// no lock (the device table is a sync.Map, each device its own mutex).
func BenchmarkLedgerReadingParallel(b *testing.B) {
	l := newTestLedger(b, Options{})
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		id := fmt.Sprintf("d%d", next.Add(1))
		rs := readings(0)
		for i := uint64(0); pb.Next(); i++ {
			rs[0].Seq = i
			l.Received(id)
			l.Durable(id, "boot-1", rs)
		}
	})
}
