package ledger_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices/ledger"
)

// TestAttackLedgerSharedStalledInstance: instance b is alive and
// acknowledging readings but its saves fail (or lag) for a little over
// LiveFor (3 intervals + 2 s), say a 6 s database blip seen from b
// only. a stops waiting for b, settles past b's numbers and opens (and
// counts) gaps for them; when b's save finally goes through they are
// filled. Nothing crashed and nothing was lost, yet gaps_total counts a
// false gap, which the contract allows only for a crash.
func TestAttackLedgerSharedStalledInstance(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a, b := openShared(t, st, "a", clk, nil), openShared(t, st, "b", clk, nil)
	for n := uint64(1); n <= 20; n++ {
		l := a
		if n%2 == 0 {
			l = b
		}
		l.Durable("d", "x", one(n))
	}
	for range 7 { // b's saves fail for 7 s
		clk.add(time.Second)
		persist(t, a)
	}
	persist(t, b) // and then succeed
	for range 5 {
		clk.add(time.Second)
		persist(t, a, b)
	}
	v := view(t, a, "d")
	if v.Seq.GapsTotal != 0 || v.Seq.OpenGaps != 0 {
		t.Errorf("no reading lost, no instance crashed; gaps_total %d open %d", v.Seq.GapsTotal, v.Seq.OpenGaps)
	}
}

// TestAttackLedgerSharedCrashInterleaved: with a shared subscription's
// round robin a crashed instance held every other number of its last
// interval, so the crash costs one false gap per reading it lost (the
// review found the documentation said one gap; it now says this), and
// never more: exactly the numbers only b had, below a's newest.
func TestAttackLedgerSharedCrashInterleaved(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a, b := openShared(t, st, "a", clk, nil), openShared(t, st, "b", clk, nil)
	for n := uint64(1); n <= 100; n++ {
		l := a
		if n%2 == 0 {
			l = b
		}
		l.Durable("d", "x", one(n))
	}
	// b crashes: it never saves again.
	for range 10 {
		clk.add(time.Second)
		persist(t, a)
	}
	v := view(t, a, "d")
	want := ""
	for n := 2; n < 100; n += 2 {
		want += fmt.Sprintf("x:%d-%d ", n, n)
	}
	if got := openSorted(v); v.Seq.GapsTotal != 49 || v.Seq.OpenGaps != 49 || got != want {
		t.Errorf("a crash of b: gaps_total %d, open %d (%s); want the 49 numbers only b held", v.Seq.GapsTotal, v.Seq.OpenGaps, got)
	}
}

// TestAttackLedgerSharedIntervalMismatch: FIELDHUB_LEDGER_SAVE_INTERVAL
// is per instance (a rolling change of it, or one instance configured
// apart), but the watermark's LiveFor is the syncing instance's own: a,
// saving every second, waits 5 s for b, which saves every 10 s and is
// healthy. Between b's saves a settles past b's numbers and counts a
// false gap for each of them.
func TestAttackLedgerSharedIntervalMismatch(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a := openShared(t, st, "a", clk, nil)
	b, err := ledger.New(context.Background(), ledger.Options{Exists: func(string) bool { return true }, Store: st, Instance: "b",
		Now: clk.Now, PersistInterval: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		for s := range 10 { // one reading a second to each
			n := uint64(round*20 + s*2)
			a.Durable("d", "x", one(n))
			b.Durable("d", "x", one(n+1))
			clk.add(time.Second)
			persist(t, a)
		}
		persist(t, b)
	}
	for range 9 { // b's next save is due at 10 s
		clk.add(time.Second)
		persist(t, a)
	}
	clk.add(time.Second)
	persist(t, b)
	for range 5 {
		clk.add(time.Second)
		persist(t, a, b)
	}
	if v := view(t, a, "d"); v.Seq.GapsTotal != 0 || v.Seq.OpenGaps != 0 {
		t.Errorf("both instances healthy, nothing skipped; gaps_total %d open %d", v.Seq.GapsTotal, v.Seq.OpenGaps)
	}
}
