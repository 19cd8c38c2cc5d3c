package spool

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the CPU time (user + system) the test process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAppendPaced offers single readings at a fixed rate, from many
// goroutines (devices whose messages arrive independently), with each
// commit interval, and reports the process CPU per message (spool and
// the paced load together), the readings per commit, and the latency of
// Append (what an acknowledgement waits for) at p50 and p99. b.N is the
// number of messages: -benchtime 5000x lasts 5 s at 1,000 msgs/s.
func BenchmarkAppendPaced(b *testing.B) {
	payload := []byte("telemetry,device=sim-1 temp=21.5,hum=40.25,batt=3.71 1795000000000\n")
	for _, rate := range []int{1000, 5000} {
		for _, tc := range []struct {
			name     string
			interval time.Duration
			noSync   bool // the floor: everything but the sync, pacing included
		}{
			{"0", 0, false}, {"1ms", time.Millisecond, false}, {"2ms", 2 * time.Millisecond, false},
			{"5ms", 5 * time.Millisecond, false}, {"nosync", 0, true},
		} {
			b.Run(fmt.Sprintf("rate=%d/interval=%s", rate, tc.name), func(b *testing.B) {
				s, err := Open(Options{Dir: b.TempDir(), MaxBytes: 8 << 30, CommitInterval: tc.interval, NoSync: tc.noSync})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				// Bounded: the pacer waits when every worker is busy,
				// which shows as latency, never as an unbounded queue.
				jobs := make(chan struct{}, 256)
				lat := make([]time.Duration, b.N)
				var next sync.Mutex
				n := 0
				var wg sync.WaitGroup
				for range 256 {
					wg.Go(func() {
						for range jobs {
							start := time.Now()
							if err := s.Append(context.Background(), 1, payload); err != nil {
								b.Error(err)
							}
							d := time.Since(start)
							next.Lock()
							lat[n] = d
							n++
							next.Unlock()
						}
					})
				}
				b.ReportAllocs()
				commits0 := s.Stats().Commits
				cpu0 := cpuTime()
				b.ResetTimer()
				period := time.Second / time.Duration(rate)
				start := time.Now()
				for i := range b.N {
					if d := time.Until(start.Add(time.Duration(i) * period)); d > 0 {
						time.Sleep(d)
					}
					jobs <- struct{}{}
				}
				close(jobs)
				wg.Wait()
				b.StopTimer()
				cpu := cpuTime() - cpu0
				commits := s.Stats().Commits - commits0
				slices.Sort(lat)
				b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N), "cpu-µs/msg")
				b.ReportMetric(float64(b.N)/float64(commits), "msgs/commit")
				b.ReportMetric(float64(lat[b.N/2].Microseconds())/1e3, "p50-ms")
				b.ReportMetric(float64(lat[b.N*99/100].Microseconds())/1e3, "p99-ms")
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}
