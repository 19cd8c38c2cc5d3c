package spool

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkSync measures what one commit of a single reading costs on
// this disk: a 120-byte write at the end of the records, then a sync, in
// a segment that grows with each write (as before preallocation) or was
// preallocated with fallocate, synced with fsync or fdatasync. It reports
// wall time and process CPU per commit.
func BenchmarkSync(b *testing.B) {
	const segBytes = 64 << 20
	rec := make([]byte, 120)
	for i := range rec {
		rec[i] = 'x'
	}
	for _, prealloc := range []bool{false, true} {
		for _, data := range []bool{false, true} {
			name := map[bool]string{false: "grow", true: "fallocate"}[prealloc] + "/" + map[bool]string{false: "fsync", true: "fdatasync"}[data]
			b.Run(name, func(b *testing.B) {
				f, err := os.OpenFile(filepath.Join(b.TempDir(), "seg"), os.O_CREATE|os.O_WRONLY, 0o640)
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				if prealloc {
					if err := unix.Fallocate(int(f.Fd()), 0, 0, segBytes); err != nil {
						b.Fatal(err)
					}
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
				fd := int(f.Fd())
				b.ReportAllocs()
				cpu0 := cpuTime()
				b.ResetTimer()
				var off int64
				for range b.N {
					if _, err := f.WriteAt(rec, off); err != nil {
						b.Fatal(err)
					}
					off += int64(len(rec))
					if data {
						err = unix.Fdatasync(fd)
					} else {
						err = unix.Fsync(fd)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
			})
		}
	}
}
