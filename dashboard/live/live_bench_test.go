package live

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// BenchmarkLivePublish is the fan-out cost per reading: one reading
// published to N subscribers (each drained by its own goroutine, as the
// connection writers do, encoding each event once and sharing it). The
// publisher's side is one channel send; the work of the hub goroutine and
// of the writers is measured too: the timer stops only when every
// subscriber has taken every reading (coalesced or not).
func BenchmarkLivePublish(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			h := New(Options{QueueLen: 4096, SlowAfter: time.Hour, InputLen: 1 << 16, MaxSubscribers: 1000, MaxPerCredential: 1000})
			ctx, cancel := context.WithCancel(context.Background())
			hubDone := make(chan struct{})
			go func() { defer close(hubDone); _ = h.Run(ctx) }()
			done := make(chan struct{})
			var drained []chan struct{}
			lastTS := make([]chan int64, n)
			for i := range n {
				s := h.NewSubscriber(devices.Operator{TokenID: fmt.Sprint(i)})
				h.Subscribe(s, func(f *Filter) { f.All = true })
				if err := h.Add(s); err != nil {
					b.Fatal(err)
				}
				fin := make(chan struct{})
				drained = append(drained, fin)
				lastTS[i] = make(chan int64, 1)
				go func() {
					defer close(fin)
					var buf []*Event
					for {
						select {
						case <-done:
							return
						case <-s.Notify():
							buf = s.Take(buf)
							for _, le := range buf {
								_ = le.Encoded()
								if le.Ev.TS < 0 { // the end marker
									lastTS[i] <- le.Ev.TS
								}
							}
							clear(buf)
							s.CaughtUp()
						}
					}
				}()
			}
			ev := telemetry.Event{Type: telemetry.EventReading, Device: "sim-1", TS: 1, Metrics: telemetry.Metrics{"temp": telemetry.Number(21.5), "humidity": telemetry.Number(40)}}
			b.ReportAllocs()
			for b.Loop() {
				// The benchmark measures delivery, so it does not outrun
				// the hub into its drop policy: it yields while the input
				// is more than half full.
				for len(h.in) > cap(h.in)/2 {
					runtime.Gosched()
				}
				h.Publish(ev)
			}
			// Every subscriber has taken everything published before the
			// marker, which goes to another device so it is never merged.
			for len(h.in) > cap(h.in)/2 {
				runtime.Gosched()
			}
			h.Publish(telemetry.Event{Type: telemetry.EventReading, Device: "end", TS: -1, Metrics: telemetry.Metrics{"x": telemetry.Number(1)}})
			for i := range n {
				<-lastTS[i]
			}
			b.StopTimer()
			if d := h.Stats().InputDropped; d > 0 {
				b.Fatalf("%d readings dropped at the hub's input", d)
			}
			close(done)
			for _, fin := range drained {
				<-fin
			}
			cancel()
			<-hubDone
		})
	}
}
