package dashboard

import (
	"fmt"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// BenchmarkLivePublish is the fan-out cost on the ingest path: one reading
// offered to N subscribers (each drained by its own goroutine, as the
// connection writers do), encoded once and shared.
func BenchmarkLivePublish(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			l := NewLive(LiveOptions{QueueLen: 4096, SlowAfter: time.Hour})
			done := make(chan struct{})
			var drained []chan struct{}
			for range n {
				s := newSubscriber(l)
				s.f.all = true
				_ = l.add(s, fmt.Sprint(len(drained))) // one credential each: the per-credential cap is not measured here
				fin := make(chan struct{})
				drained = append(drained, fin)
				go func() {
					defer close(fin)
					var buf []*liveEvent
					for {
						select {
						case <-done:
							return
						case <-s.notify:
							buf = s.take(buf)
							for _, le := range buf {
								_ = le.encoded()
							}
							clear(buf)
						}
					}
				}()
			}
			ev := telemetry.Event{Type: telemetry.EventReading, Device: "sim-1", TS: 1, Metrics: telemetry.Metrics{"temp": telemetry.Number(21.5), "humidity": telemetry.Number(40)}}
			b.ReportAllocs()
			for b.Loop() {
				l.Publish(ev)
			}
			close(done)
			for _, fin := range drained {
				<-fin
			}
		})
	}
}
