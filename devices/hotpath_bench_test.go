package devices

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkHotPath measures what every accepted message costs the
// registry: Touch (last_seen), Tags (InfluxDB tags) and StillValid (the
// session check), serially and with every core busy, on 10,000 devices.
func BenchmarkHotPath(b *testing.B) {
	st, err := OpenBolt(filepath.Join(b.TempDir(), "r.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	r, err := Open(context.Background(), st, Options{TagLabels: []string{"site"}})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	specs := make([]Spec, 10000)
	for i := range specs {
		specs[i] = Spec{ID: fmt.Sprintf("sim-%d", i), Labels: map[string]string{"site": "north"}}
	}
	created, err := r.CreateBatch(context.Background(), specs)
	if err != nil {
		b.Fatal(err)
	}
	hashes := make([]TokenHash, len(created))
	for i, c := range created {
		hashes[i] = HashToken(c.Token)
	}
	now := time.Now()
	b.Run("touch", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			r.Touch(created[i%len(created)].Device.ID, now)
		}
	})
	b.Run("touch-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				r.Touch(created[i%len(created)].Device.ID, now)
				i++
			}
		})
	})
	b.Run("tags", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if len(r.Tags(created[i%len(created)].Device.ID)) != 1 {
				b.Fatal("no tag")
			}
		}
	})
	b.Run("stillvalid-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				k := i % len(created)
				if !r.StillValid(created[k].Device.ID, hashes[k]) {
					b.Error("refused")
					return
				}
				i++
			}
		})
	})
}
