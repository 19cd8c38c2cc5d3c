package ledger_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fieldhub/fieldhub/devices/ledger"
	"github.com/fieldhub/fieldhub/devices/ledger/pgstore"
	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
	"github.com/fieldhub/fieldhub/telemetry"
)

// clock is a settable time shared by the instances of a test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func sharedStore(t testing.TB) *pgstore.Store {
	st, _ := sharedStorePool(t)
	return st
}

// sharedStorePool is a pgstore on a fresh database, and its pool, so a
// test can look at (or corrupt) what instances saved.
func sharedStorePool(t testing.TB) (*pgstore.Store, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	st, err := pgstore.New(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	return st, pool
}

func openShared(t *testing.T, st ledger.Store, inst string, clk *clock, gaps func(string, int)) *ledger.Ledger {
	t.Helper()
	l, err := ledger.New(context.Background(), ledger.Options{Exists: func(string) bool { return true }, Store: st, Instance: inst,
		Now: clk.Now, PersistInterval: time.Second, OnGapsChanged: gaps})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// view is GET /api/v1/devices/{id}/ledger as l answers it.
func view(t *testing.T, l *ledger.Ledger, id string) ledger.DeviceView {
	t.Helper()
	rec := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/api/v1/devices/"+id+"/ledger", nil)
	r.SetPathValue("id", id)
	l.ServeDevice(rec, r)
	if rec.Code != http.StatusOK {
		t.Fatalf("ledger of %s: %d %s", id, rec.Code, rec.Body)
	}
	var v ledger.DeviceView
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func fleet(t *testing.T, l *ledger.Ledger) ledger.FleetView {
	t.Helper()
	rec := httptest.NewRecorder()
	l.ServeFleet(rec, httptest.NewRequest("GET", "/api/v1/ledger", nil))
	var f ledger.FleetView
	if err := json.Unmarshal(rec.Body.Bytes(), &f); err != nil || rec.Code != 200 {
		t.Fatalf("fleet %d %s %v", rec.Code, rec.Body, err)
	}
	return f
}

func openOf(v ledger.DeviceView) string {
	s := ""
	for _, g := range v.Seq.Gaps {
		if g.ClosedAt == nil {
			s += fmt.Sprintf("%s:%d-%d ", g.Boot, g.From, g.To)
		}
	}
	return s
}

// openSorted is openOf in ascending order of boot and first number.
func openSorted(v ledger.DeviceView) string {
	gs := slices.Clone(v.Seq.Gaps)
	slices.SortFunc(gs, func(a, b ledger.Gap) int { return cmp.Or(cmp.Compare(a.Boot, b.Boot), cmp.Compare(a.From, b.From)) })
	s := ""
	for _, g := range gs {
		if g.ClosedAt == nil {
			s += fmt.Sprintf("%s:%d-%d ", g.Boot, g.From, g.To)
		}
	}
	return s
}

func persist(t *testing.T, ls ...*ledger.Ledger) {
	t.Helper()
	for _, l := range ls {
		if err := l.Persist(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

func one(seq uint64) []telemetry.Reading {
	return []telemetry.Reading{{TS: 1, Seq: seq, HasSeq: true}}
}

// TestSharedSeqInterleaved: two instances each get every other reading
// of a device (a shared subscription's round robin), and the device
// skipped 500 and 700-710. Each instance alone would see a gap at every
// other number; merged in the store, both report exactly the device's
// two gaps, never a false one on the way, and a resend that reached both
// instances is a duplicate.
func TestSharedSeqInterleaved(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	var mu sync.Mutex
	changes := map[string][]int{}
	gaps := func(dev string, n int) { mu.Lock(); changes[dev] = append(changes[dev], n); mu.Unlock() }
	a, b := openShared(t, st, "a", clk, gaps), openShared(t, st, "b", clk, gaps)
	skipped := func(n uint64) bool { return n == 500 || n >= 700 && n <= 710 }
	for n := uint64(1); n <= 1000; n++ {
		if skipped(n) {
			continue
		}
		l := a
		if n%2 == 0 {
			l = b
		}
		l.Durable("d", "boot-1", one(n))
		if n%100 == 0 { // saves while the stream runs, a second apart
			clk.add(time.Second)
			persist(t, a, b)
			for _, l := range []*ledger.Ledger{a, b} {
				if v := view(t, l, "d"); v.Seq.OpenGaps > 2 || v.Seq.GapsTotal > 2 {
					t.Fatalf("after %d: a false gap: %s (%+v)", n, openOf(v), v.Seq)
				}
			}
		}
	}
	a.Durable("d", "boot-1", one(3)) // a resend that reached both
	b.Durable("d", "boot-1", one(3))
	// Settled once both saved past the last numbers, plus the slack.
	for range 5 {
		clk.add(time.Second)
		persist(t, a, b)
	}
	for name, l := range map[string]*ledger.Ledger{"a": a, "b": b} {
		v := view(t, l, "d")
		if got := openOf(v); got != "boot-1:500-500 boot-1:700-710 " && got != "boot-1:700-710 boot-1:500-500 " {
			t.Errorf("%s: open gaps %q", name, got)
		}
		if v.Seq.OpenGaps != 2 || v.Seq.GapsTotal != 2 || v.Seq.Duplicates != 2 || v.Seq.Resets != 0 {
			t.Errorf("%s: seq %+v", name, v.Seq)
		}
		if v.Instances != 2 || v.Durable != 990 {
			t.Errorf("%s: instances %d durable %d, want 2, 990 (988 and two resends)", name, v.Instances, v.Durable)
		}
		if f := fleet(t, l); f.OpenGaps != 2 || len(f.DevicesWithGaps) != 1 || f.DevicesWithGaps[0].Device != "d" {
			t.Errorf("%s: fleet %+v", name, f)
		}
	}
	if tot := a.Totals().Gaps + b.Totals().Gaps; tot != 2 {
		t.Errorf("gaps counted by the instances' settles: %d, want 2", tot)
	}
	mu.Lock()
	if c := changes["d"]; len(c) == 0 || c[len(c)-1] != 2 || slicesMax(c) > 2 {
		t.Errorf("gaps changes told to the alert engine: %v", c)
	}
	mu.Unlock()
	// A late resend of 500, to either instance, fills its gap.
	b.Durable("d", "boot-1", one(500))
	for range 5 {
		clk.add(time.Second)
		persist(t, a, b)
	}
	if v := view(t, a, "d"); openOf(v) != "boot-1:700-710 " || v.Seq.OpenGaps != 1 {
		t.Errorf("after the late resend: %q %+v", openOf(v), v.Seq)
	}
}

func slicesMax(s []int) int {
	m := 0
	for _, v := range s {
		m = max(m, v)
	}
	return m
}

// TestSharedWatermark: a gap is not reported while a live instance has
// not saved past it (its numbers may be there); an instance that
// stopped saving (crashed) is waited for only LiveFor; one that left
// cleanly not at all.
func TestSharedWatermark(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a, b := openShared(t, st, "a", clk, nil), openShared(t, st, "b", clk, nil)
	for n := uint64(1); n <= 10; n++ {
		if n != 5 {
			a.Durable("d", "x", one(n))
		}
	}
	b.Durable("d", "x", one(5)) // b has 5, and has not saved
	for range 4 {
		clk.add(time.Second)
		persist(t, a)
		if v := view(t, a, "d"); v.Seq.OpenGaps != 0 || v.Seq.GapsTotal != 0 {
			t.Fatalf("a gap reported while b, live, had not saved: %+v", v.Seq)
		}
	}
	clk.add(time.Second)
	persist(t, b)
	for range 4 {
		clk.add(time.Second)
		persist(t, a)
	}
	if v := view(t, a, "d"); v.Seq.OpenGaps != 0 || v.Seq.GapsTotal != 0 || v.Durable != 10 {
		t.Fatalf("after b saved: %+v durable %d", v.Seq, v.Durable)
	}

	// b crashes: it never saves again. a's gap (12) waits for it at
	// most LiveFor (3 intervals + slack), then is reported.
	a.Durable("d", "x", one(11))
	a.Durable("d", "x", one(13))
	clk.add(time.Second)
	persist(t, a)
	clk.add(time.Second)
	persist(t, a)
	if v := view(t, a, "d"); v.Seq.OpenGaps != 0 {
		t.Fatalf("reported before the crashed instance's heartbeat aged out: %+v", v.Seq)
	}
	for range 8 {
		clk.add(time.Second)
		persist(t, a)
	}
	if v := view(t, a, "d"); openOf(v) != "x:12-12 " {
		t.Fatalf("after b's heartbeat aged out: %q %+v", openOf(v), v.Seq)
	}

	// c joins and leaves cleanly (Run's last save, then Leave): nobody
	// waits for it.
	c := openShared(t, st, "c", clk, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	a.Durable("d", "x", one(15))
	for range 8 {
		clk.add(time.Second)
		persist(t, a)
	}
	if v := view(t, a, "d"); openOf(v) != "x:12-12 x:14-14 " && openOf(v) != "x:14-14 x:12-12 " {
		t.Fatalf("with c gone: %q", openOf(v))
	}
}

// TestSharedRestartAndDelete: batches and the sequence record survive
// an instance's restart; a deleted device's sequence record goes.
func TestSharedRestartAndDelete(t *testing.T) {
	st := sharedStore(t)
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a := openShared(t, st, "a", clk, nil)
	a.Durable("d", "x", one(1))
	a.Durable("d", "x", one(3))
	persist(t, a) // saved, not settled yet
	a = openShared(t, st, "a", clk, nil)
	a.Durable("d", "x", one(4))
	for range 8 {
		clk.add(time.Second)
		persist(t, a)
	}
	if v := view(t, a, "d"); openOf(v) != "x:2-2 " || v.Durable != 3 {
		t.Fatalf("across a restart: %q durable %d", openOf(v), v.Durable)
	}
	a.Forget("d")
	persist(t, a)
	if v := view(t, a, "d"); v.Seq.OpenGaps != 0 || len(v.Seq.Gaps) != 0 || v.Durable != 0 {
		t.Fatalf("deleted device: %+v", v)
	}
	if f := fleet(t, a); f.OpenGaps != 0 {
		t.Fatalf("fleet after delete: %+v", f)
	}
}

// TestSharedViewsUnavailable: with the database gone, the views say so
// (503) rather than answer without the merged part (a device with no
// gaps, a fleet with none).
func TestSharedViewsUnavailable(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	st, err := pgstore.New(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	a := openShared(t, st, "a", clk, nil)
	a.Durable("d", "x", one(1))
	pool.Close()
	for path, serve := range map[string]http.HandlerFunc{"/api/v1/devices/d/ledger": a.ServeDevice, "/api/v1/ledger": a.ServeFleet} {
		rec := httptest.NewRecorder()
		r := httptest.NewRequest("GET", path, nil)
		r.SetPathValue("id", "d")
		serve(rec, r)
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"unavailable"`) {
			t.Errorf("%s with the database gone: %d %s", path, rec.Code, rec.Body)
		}
	}
}
