package ledger_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fieldhub/fieldhub/devices/ledger"
	"github.com/fieldhub/fieldhub/devices/ledger/pgstore"
	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
)

// TestAttackLedgerShared3* are the third review's attacks: rows of
// fieldhub_ledger_batches and fieldhub_ledger_seq that are valid JSON
// but not what an instance writes (a bad migration, a hand edit, a
// foreign writer). The brief's promise: nothing panics on hostile
// input, and no device is blocked for good.

// persistOrPanic is Persist, turning a panic into an error and giving
// up on a call that does not return within limit (the goroutine is left
// behind: a settle that never returns cannot be stopped).
func persistOrPanic(l *ledger.Ledger, limit time.Duration) error {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("Persist panicked: %v", p)
			}
		}()
		done <- l.Persist(context.Background())
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		return fmt.Errorf("Persist did not return within %s", limit)
	}
}

// TestAttackLedgerShared3ReversedSpan: a batch row holding the span
// [5, 3] (from above to). settle hands it to observeSpan, whose "a..b
// (a <= b)" loop observes 5, 6, 7, ... until a wraps round to 3: 2^64
// iterations inside Sync's transaction, with the device's sequence row
// locked FOR UPDATE. The instance's Run loop never saves again, and
// every other instance skips the locked row: the device is blocked for
// good, and each instance that picks it up after a restart hangs too.
// A seq of 2^64-1 (above MaxSeq, only a row can hold it) hangs the same
// way in slot.advance ("k <= n" never fails at n = 2^64-1).
func TestAttackLedgerShared3ReversedSpan(t *testing.T) {
	// A pool of its own, never closed: pool.Close would wait for the
	// hung Sync's connection (the test process's exit ends it).
	pool, err := pgxpool.New(context.Background(), pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	st, err := pgstore.New(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a := openShared(t, st, "a", clk, nil)
	old := clk.Now().Add(-10 * time.Second)
	if _, err := pool.Exec(context.Background(), `INSERT INTO fieldhub_ledger_batches (instance, device, received_from, batches)
		VALUES ('b', 'd', $1, $2)`, old, fmt.Sprintf(`[{"sec":%d,"boots":[{"boot":"x","spans":[[5,3]]}]}]`, old.Unix())); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		clk.add(time.Second)
		if err := persistOrPanic(a, 20*time.Second); err != nil {
			t.Fatalf("a batch row with the span [5,3]: %v (want it skipped as unreadable, like an undecodable row)", err)
		}
	}
}

// withGap24 is one instance whose device d skipped 2-4, settled and
// confirmed, and the pool under it, for a test to corrupt the record.
func withGap24(t *testing.T) (*ledger.Ledger, *pgxpool.Pool, *clock) {
	t.Helper()
	st, pool := sharedStorePool(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a := openShared(t, st, "a", clk, nil)
	a.Durable("d", "x", one(1))
	a.Durable("d", "x", one(5)) // skipped 2-4
	for range 8 {
		clk.add(time.Second)
		persist(t, a)
	}
	if v := view(t, a, "d"); v.Seq.OpenGaps != 1 {
		t.Fatalf("setup: open gaps %d, want 1 (2-4)", v.Seq.OpenGaps)
	}
	return a, pool, clk
}

// TestAttackLedgerShared3NegativeNextClosed: a sequence record whose
// next_closed is -1. seqState.close indexes Closed[NextC%keptClosed],
// -1 in Go, so the first gap the device's resends fill panics inside
// Sync: nothing in Run or pgx recovers, the hub process exits, and every
// instance that settles the device afterwards exits the same way (a
// crash loop of the whole cluster, from one row).
func TestAttackLedgerShared3NegativeNextClosed(t *testing.T) {
	a, pool, clk := withGap24(t)
	if _, err := pool.Exec(context.Background(),
		`UPDATE fieldhub_ledger_seq SET record = jsonb_set(record, '{seq,next_closed}', '-1') WHERE device = 'd'`); err != nil {
		t.Fatal(err)
	}
	for n := uint64(2); n <= 4; n++ { // the resends that fill 2-4
		a.Durable("d", "x", one(n))
	}
	for range 8 {
		clk.add(time.Second)
		if err := persistOrPanic(a, 20*time.Second); err != nil {
			t.Fatalf("a sequence record with next_closed -1: %v (want it read as 0, or the record started again)", err)
		}
	}
}

// TestAttackLedgerShared3UnreadableRecordView: a sequence record with a
// slot window of the wrong size (valid JSON, so jsonb holds it).
// settle treats it as unreadable and starts it again ("rather than
// blocking the device"), but only when the device has batches: a quiet
// device is never settled again, and its view answers 503 "the ledger's
// store is unavailable; try again" for good, with PostgreSQL up, while
// GET /api/v1/ledger still lists its open gap from the open_gaps column.
// The two views disagree and retrying never helps.
func TestAttackLedgerShared3UnreadableRecordView(t *testing.T) {
	a, pool, clk := withGap24(t)
	if _, err := pool.Exec(context.Background(),
		`UPDATE fieldhub_ledger_seq SET record = jsonb_set(record, '{seq,slots,0,bits}', '"AAAA"') WHERE device = 'd'`); err != nil {
		t.Fatal(err)
	}
	for range 8 { // the device is quiet; the instance keeps saving
		clk.add(time.Second)
		persist(t, a)
	}
	f := fleet(t, a)
	rec := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/api/v1/devices/d/ledger", nil)
	r.SetPathValue("id", "d")
	a.ServeDevice(rec, r)
	if rec.Code != http.StatusOK {
		t.Errorf("device view of an unreadable record, PostgreSQL up, 8 saves later: %d %s; the fleet view meanwhile: %d open gaps %v",
			rec.Code, rec.Body, f.OpenGaps, f.DevicesWithGaps)
	}
}
