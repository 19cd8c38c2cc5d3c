package ledger_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices/ledger"
)

// TestAttackLedgerShared2* attack the fixes of the first review
// (provisional gaps, the boots and spans bounds, the purge of a deleted
// device): each compares the shared ledger with what one instance in
// memory mode says of the same stream, which the documentation promises
// ("exactly as one instance seeing the whole stream would").

// memoryLedger is a ledger without a store: one instance tracking seq
// in memory, the reference the shared merge must agree with.
func memoryLedger(t *testing.T, clk *clock) *ledger.Ledger {
	t.Helper()
	l, err := ledger.New(context.Background(), ledger.Options{Exists: func(string) bool { return true }, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestAttackLedgerShared2DroppedBootResets: the bounds paragraph says a
// boot beyond the 8 an instance keeps between saves has its numbers
// dropped "and it counts as a reset". pending.add never records the
// dropped boot, so every one of its numbers increments Resets again: a
// device that rebooted 9 times within one save interval and then sent
// 100 readings counts 107 resets, where one instance in memory counts 8.
func TestAttackLedgerShared2DroppedBootResets(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a, mem := openShared(t, st, "a", clk, nil), memoryLedger(t, clk)
	for _, l := range []*ledger.Ledger{a, mem} {
		for i := range 8 {
			l.Durable("d", fmt.Sprintf("boot-%d", i), one(1))
		}
		for n := uint64(1); n <= 100; n++ { // the ninth boot, the one the device now runs
			l.Durable("d", "boot-8", one(n))
		}
	}
	for range 8 {
		clk.add(time.Second)
		persist(t, a)
	}
	want := view(t, mem, "d").Seq.Resets // 8: each boot after the first
	if v := view(t, a, "d"); v.Seq.Resets != want {
		t.Errorf("9 boots in one interval: resets %d, one instance counts %d (the dropped boot counts one reset per number)",
			v.Seq.Resets, want)
	}
}

// TestAttackLedgerShared2SplitProvisional: a provisional gap that a late
// resend splits before it is confirmed becomes two provisional gaps with
// the same Cut, and the confirmation counts each: a device that skipped
// 2-10 once and resent 5 counts gaps_total 2, where one instance counts
// the skip once (a split never adds to gaps_total in memory mode).
func TestAttackLedgerShared2SplitProvisional(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a, mem := openShared(t, st, "a", clk, nil), memoryLedger(t, clk)
	for _, l := range []*ledger.Ledger{a, mem} {
		l.Durable("d", "x", one(1))
		l.Durable("d", "x", one(11)) // skipped 2-10
	}
	for range 3 { // the merge of second 0 opens 2-10, provisional
		clk.add(time.Second)
		persist(t, a)
	}
	for _, l := range []*ledger.Ledger{a, mem} {
		l.Durable("d", "x", one(5)) // a late resend, merged before 2-10 is confirmed
	}
	for range 8 {
		clk.add(time.Second)
		persist(t, a)
	}
	m, v := view(t, mem, "d"), view(t, a, "d")
	if v.Seq.GapsTotal != m.Seq.GapsTotal || v.Seq.OpenGaps != m.Seq.OpenGaps || openSorted(v) != openSorted(m) {
		t.Errorf("one skip, split by a resend: shared gaps_total %d open %d (%s); one instance: gaps_total %d open %d (%s)",
			v.Seq.GapsTotal, v.Seq.OpenGaps, openSorted(v), m.Seq.GapsTotal, m.Seq.OpenGaps, openSorted(m))
	}
	if tot := a.Totals().Gaps; tot != m.Seq.GapsTotal {
		t.Errorf("fieldhub_ledger_gaps_total counted by the settles: %d, want %d", tot, m.Seq.GapsTotal)
	}
}

// TestAttackLedgerShared2TrimProvisional: a merge that opens more gaps
// than MaxOpenGaps (1000) trims the oldest while they are still
// provisional, and close forgets a provisional gap: those gaps are never
// counted. A device that skipped every other number of 3000 (1500 gaps)
// counts gaps_total 1000; one instance counts all 1500 (an expired gap
// is "still counted in Gaps").
func TestAttackLedgerShared2TrimProvisional(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a, mem := openShared(t, st, "a", clk, nil), memoryLedger(t, clk)
	for _, l := range []*ledger.Ledger{a, mem} {
		for n := uint64(0); n <= 3000; n += 2 {
			l.Durable("d", "x", one(n))
		}
	}
	for range 8 {
		clk.add(time.Second)
		persist(t, a)
	}
	m, v := view(t, mem, "d"), view(t, a, "d")
	if m.Seq.GapsTotal != 1500 {
		t.Fatalf("reference: gaps_total %d, want 1500", m.Seq.GapsTotal)
	}
	if v.Seq.GapsTotal != m.Seq.GapsTotal || v.Seq.OpenGaps != m.Seq.OpenGaps {
		t.Errorf("1500 skips: shared gaps_total %d open %d; one instance gaps_total %d open %d",
			v.Seq.GapsTotal, v.Seq.OpenGaps, m.Seq.GapsTotal, m.Seq.OpenGaps)
	}
}

// TestAttackLedgerShared2LatePurge: every instance Forgets a deleted
// device (the registry's OnCredentialsChanged), and each instance's
// next save purges the device's shared record and batches, whatever
// was saved since. b's saves fail for a while (a database blip seen
// from b, as in TestAttackLedgerSharedStalledInstance; restore keeps the
// purge); meanwhile the device is created again and a reports its real
// gap. When b's save finally goes through, its stale purge wipes the new
// device's sequence record: the confirmed gap and gaps_total vanish.
func TestAttackLedgerShared2LatePurge(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a, b := openShared(t, st, "a", clk, nil), openShared(t, st, "b", clk, nil)
	a.Durable("d", "old", one(1))
	b.Durable("d", "old", one(2))
	for range 5 {
		clk.add(time.Second)
		persist(t, a, b)
	}
	a.Forget("d") // deleted: every instance hears of it
	b.Forget("d")
	clk.add(time.Second)
	persist(t, a) // a purges; b's saves fail from here
	// Created again under the same id; it skips 3.
	for _, n := range []uint64{1, 2, 4, 5} {
		a.Durable("d", "new", one(n))
	}
	for range 12 { // b's heartbeat ages out, a settles and confirms 3
		clk.add(time.Second)
		persist(t, a)
	}
	if v := view(t, a, "d"); openOf(v) != "new:3-3 " || v.Seq.GapsTotal != 1 {
		t.Fatalf("before b's save: open %q gaps_total %d, want new:3-3 and 1", openOf(v), v.Seq.GapsTotal)
	}
	persist(t, b) // b's save goes through at last, with the purge it kept
	for range 3 {
		clk.add(time.Second)
		persist(t, a, b)
	}
	if v := view(t, a, "d"); openOf(v) != "new:3-3 " || v.Seq.GapsTotal != 1 {
		t.Errorf("after b's late purge of the old device: open %q gaps_total %d; the re-created device's gap 3 is gone",
			openOf(v), v.Seq.GapsTotal)
	}
}

// TestAttackLedgerShared2JoinedRunResend: 10000 readings in one second,
// alternately to two instances (5000 one-number runs each, over
// maxSpans), and the device skipped 101. Each instance joins its closest
// runs, so 101 is inside a joined run: hidden, which the bounds
// paragraph allows ("can hide a gap, never invent one"). But the joined
// run marks 101 seen in the tracker, so the device's later resend of 101
// (the fill one instance would see) is, far behind the window and in no
// open gap, a counter that went back: a reset, a new epoch from 101, and
// the next number opens a false gap 102-9999, confirmed and counted.
func TestAttackLedgerShared2JoinedRunResend(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a, b, mem := openShared(t, st, "a", clk, nil), openShared(t, st, "b", clk, nil), memoryLedger(t, clk)
	for n := uint64(0); n < 10000; n++ {
		if n == 101 {
			continue
		}
		l := a
		if n%2 == 1 {
			l = b
		}
		l.Durable("d", "x", one(n))
		mem.Durable("d", "x", one(n))
	}
	for range 6 {
		clk.add(time.Second)
		persist(t, a, b)
	}
	a.Durable("d", "x", one(101)) // the device resends what it lost
	mem.Durable("d", "x", one(101))
	clk.add(time.Second)
	a.Durable("d", "x", one(10000)) // and goes on
	mem.Durable("d", "x", one(10000))
	for range 8 {
		clk.add(time.Second)
		persist(t, a, b)
	}
	m, v := view(t, mem, "d"), view(t, a, "d")
	if v.Seq.OpenGaps != m.Seq.OpenGaps || v.Seq.Resets != m.Seq.Resets || openSorted(v) != openSorted(m) {
		t.Errorf("skipped 101, resent it: shared open %d (%s) resets %d gaps_total %d; one instance open %d (%s) resets %d gaps_total %d",
			v.Seq.OpenGaps, openSorted(v), v.Seq.Resets, v.Seq.GapsTotal, m.Seq.OpenGaps, openSorted(m), m.Seq.Resets, m.Seq.GapsTotal)
	}
}

// TestAttackLedgerShared2DroppedBootFalseGap: the boots bound drops the
// numbers of the boot an instance meets ninth between two saves, even
// when that is the device's current boot, which the store's tracker
// knows and another instance keeps receiving. A device that replays
// readings of its 8 previous boots to a (store-and-forward after being
// offline) while its live stream goes on to a and b: a drops live 11-20,
// b's 21-30 are merged first (b saved first), and the tracker opens a
// false gap 11-20, confirmed and counted. No reading was lost.
func TestAttackLedgerShared2DroppedBootFalseGap(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a, b := openShared(t, st, "a", clk, nil), openShared(t, st, "b", clk, nil)
	for n := uint64(1); n <= 10; n++ {
		a.Durable("d", "live", one(n))
	}
	for range 5 {
		clk.add(time.Second)
		persist(t, b, a)
	}
	for n := uint64(21); n <= 30; n++ {
		b.Durable("d", "live", one(n))
	}
	for i := range 8 { // replayed readings of earlier boots
		a.Durable("d", fmt.Sprintf("old-%d", i), one(1))
	}
	for n := uint64(11); n <= 20; n++ {
		a.Durable("d", "live", one(n))
	}
	for range 8 {
		clk.add(time.Second)
		persist(t, b, a)
	}
	if v := view(t, a, "d"); v.Seq.GapsTotal != 0 || v.Seq.OpenGaps != 0 {
		t.Errorf("no reading lost; gaps_total %d open %d (%s)", v.Seq.GapsTotal, v.Seq.OpenGaps, openSorted(v))
	}
}
