package ledger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// TestAttackLedgerSharedClockSkew: two instances whose clocks differ by
// 900 ms (well inside the 2 s slack that "absorbs clock differences
// between instances") share a device sending one reading every 300 ms,
// alternately to each. The device skips nothing, so no gap may ever be
// opened. Buckets are stamped with each instance's own clock, so a
// later number taken by the slow instance lands in an earlier second
// than an earlier number taken by the fast one, and a settle cutting
// between those seconds sees the later number without the earlier one:
// a false gap, counted in gaps_total and told to the alert engine.
func TestAttackLedgerSharedClockSkew(t *testing.T) {
	for _, skew := range []time.Duration{0, 900 * time.Millisecond} { // 0: the control, which passes
		t.Run(skew.String(), func(t *testing.T) {
			st := sharedStore(t)
			start := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
			ca, cb := &clock{t: start}, &clock{t: start.Add(-skew)}
			var opened int
			gaps := func(_ string, n int) {
				if n > 0 {
					opened++
				}
			}
			a, b := openShared(t, st, "a", ca, gaps), openShared(t, st, "b", cb, gaps)
			step := func(d time.Duration) { ca.add(d); cb.add(d) }
			for n := uint64(1); n <= 200; n++ {
				l := a
				if n%2 == 0 {
					l = b
				}
				l.Durable("d", "boot-1", one(n))
				step(300 * time.Millisecond)
				if n%4 == 0 { // each instance saves every 1.2 s
					persist(t, a, b)
				}
			}
			for range 6 {
				step(time.Second)
				persist(t, a, b)
			}
			v := view(t, a, "d")
			if v.Seq.GapsTotal != 0 || v.Seq.OpenGaps != 0 || opened != 0 {
				t.Errorf("no number was skipped, yet gaps_total %d, open %d, alert told of open gaps %d times; %d gaps listed",
					v.Seq.GapsTotal, v.Seq.OpenGaps, opened, len(v.Seq.Gaps))
			}
		})
	}
}

// TestAttackLedgerSharedInterleavedFlood: a device sends 5000 readings
// in one second, alternately to two instances (a shared subscription's
// round robin), and skips 2001. Each instance holds 2500 one-number
// spans, over maxSpans, so joinClosest joins spans and counts the
// numbers between as seen: those are the other instance's numbers, so
// the merge counts them as duplicates (none was sent twice), and the
// joined ranges can swallow the real gap.
func TestAttackLedgerSharedInterleavedFlood(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a, b := openShared(t, st, "a", clk, nil), openShared(t, st, "b", clk, nil)
	for n := uint64(0); n < 5000; n++ {
		if n == 2001 {
			continue
		}
		l := a
		if n%2 == 1 {
			l = b
		}
		l.Durable("d", "boot-1", one(n))
	}
	for range 8 {
		clk.add(time.Second)
		persist(t, a, b)
	}
	v := view(t, a, "d")
	if got := openOf(v); got != "boot-1:2001-2001 " || v.Seq.GapsTotal != 1 || v.Seq.Duplicates != 0 {
		t.Errorf("want exactly the gap 2001 and no duplicates; open %q, gaps_total %d, duplicates %d",
			got, v.Seq.GapsTotal, v.Seq.Duplicates)
	}
}

// TestAttackLedgerSharedSettleStarvation: 1050 devices, each skipped
// seq 2. Sync picks the ready devices in device order, at most
// MaxSettle (1000) of them, so while the first 1000 keep sending (a
// fresh batch ready at every sync) the last 50 are never settled: their
// gap is never reported and their batches pile up, however many syncs
// run.
func TestAttackLedgerSharedSettleStarvation(t *testing.T) {
	st, pool := sharedStorePool(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a := openShared(t, st, "a", clk, nil)
	id := func(i int) string { return fmt.Sprintf("d%04d", i) }
	for i := range 1050 {
		a.Durable(id(i), "boot-1", one(1))
		a.Durable(id(i), "boot-1", one(3))
	}
	for round := range 12 {
		for i := range 1000 { // the busy part of the fleet keeps sending
			a.Durable(id(i), "boot-1", one(uint64(4+round)))
		}
		clk.add(time.Second)
		persist(t, a)
	}
	if v := view(t, a, id(0)); openOf(v) != "boot-1:2-2 " {
		t.Fatalf("a busy device: open %q", openOf(v))
	}
	var starved int
	for i := 1000; i < 1050; i++ {
		if openOf(view(t, a, id(i))) != "boot-1:2-2 " {
			starved++
		}
	}
	var pending int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM fieldhub_ledger_batches WHERE device >= 'd1000'`).Scan(&pending); err != nil {
		t.Fatal(err)
	}
	if starved > 0 {
		t.Errorf("after 12 syncs (settle ready from the 3rd, gaps confirmed 3 s later), %d of the 50 quiet devices never settled (their gap unreported); %d of their batches still waiting",
			starved, pending)
	}
}

// TestAttackLedgerSharedRecreatedDevice: a device with an open gap is
// deleted and a new device is registered under the same id, and sends,
// before the instance's next save. The save then skips the deletion
// ("the new record stands"), which in shared mode also skips deleting
// the store's sequence record and batches: the new device inherits the
// deleted one's open gap, in its view and in the fleet's.
func TestAttackLedgerSharedRecreatedDevice(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a := openShared(t, st, "a", clk, nil)
	a.Durable("d", "old", one(1))
	a.Durable("d", "old", one(3))
	for range 8 {
		clk.add(time.Second)
		persist(t, a)
	}
	if v := view(t, a, "d"); openOf(v) != "old:2-2 " {
		t.Fatalf("setup: open %q", openOf(v))
	}
	a.Forget("d")                 // deleted
	a.Durable("d", "new", one(1)) // re-created under the same id, sends
	a.Durable("d", "new", one(2)) // in order: nothing missing
	for range 4 {
		clk.add(time.Second)
		persist(t, a)
	}
	v := view(t, a, "d")
	if v.Seq.OpenGaps != 0 || v.Seq.GapsTotal != 0 || v.Seq.Resets != 0 {
		t.Errorf("the new device inherits the deleted one's sequence record: open %q, gaps_total %d, resets %d",
			openOf(v), v.Seq.GapsTotal, v.Seq.Resets)
	}
	if f := fleet(t, a); f.OpenGaps != 0 {
		t.Errorf("fleet: %d open gaps of a deleted device", f.OpenGaps)
	}
}

// TestAttackLedgerSharedDistinctBoots: a device (bad firmware, or an
// attacker with its token) sends every reading under a new boot id. The
// span bound (maxSpans) joins spans only within one boot, so it never
// applies here: one save of a device carries as many boots and spans as
// it sent readings, in memory until the save (and for good while saves
// fail), then in one batch row.
func TestAttackLedgerSharedDistinctBoots(t *testing.T) {
	st, pool := sharedStorePool(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a := openShared(t, st, "a", clk, nil)
	for n := range 5000 {
		a.Durable("d", fmt.Sprintf("boot-%d", n), one(uint64(n)))
	}
	persist(t, a)
	var raw []byte
	if err := pool.QueryRow(context.Background(), `SELECT batches FROM fieldhub_ledger_batches WHERE device = 'd'`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	var bs []struct {
		Boots []struct {
			Spans [][2]uint64 `json:"spans"`
		} `json:"boots"`
	}
	if err := json.Unmarshal(raw, &bs); err != nil {
		t.Fatal(err)
	}
	spans := 0
	for _, b := range bs {
		for _, x := range b.Boots {
			spans += len(x.Spans)
		}
	}
	if spans > 1024 {
		t.Errorf("one device's save holds %d spans (%d bytes), over the 1024 bound", spans, len(raw))
	}
}
