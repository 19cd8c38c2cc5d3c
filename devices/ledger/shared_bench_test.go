package ledger_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices/ledger"
)

// BenchmarkLedgerReadingShared is BenchmarkLedgerReading in shared mode
// (PostgreSQL): the ingest path records the number into the device's
// bucket instead of tracking it; no I/O.
func BenchmarkLedgerReadingShared(b *testing.B) {
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	l, err := ledger.New(context.Background(), ledger.Options{Exists: func(string) bool { return true }, Store: sharedStore(b), Instance: "a", Now: clk.Now})
	if err != nil {
		b.Fatal(err)
	}
	rs := one(0)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		rs[0].Seq = uint64(i)
		if i%1000 == 0 {
			clk.add(time.Second) // a new bucket each second, as at 1,000 readings a second
		}
		l.Received("d")
		l.Durable("d", "boot-1", rs)
	}
}

// BenchmarkSharedSync1000Devices: one instance's save and settle of
// 1,000 devices that each sent 10 readings since the last save (the
// default interval at one reading a second per device), against a real
// PostgreSQL: what every instance pays each interval.
func BenchmarkSharedSync1000Devices(b *testing.B) {
	clk := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	l, err := ledger.New(context.Background(), ledger.Options{Exists: func(string) bool { return true }, Store: sharedStore(b), Instance: "a",
		Now: clk.Now, PersistInterval: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%04d", i)
	}
	var seq uint64
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for range 10 {
			seq++
			for _, id := range ids {
				l.Received(id)
				l.Durable(id, "boot-1", one(seq))
			}
			clk.add(time.Second)
		}
		b.StartTimer()
		if err := l.Persist(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
