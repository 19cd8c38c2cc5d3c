package cluster

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/bridge/cluster/mosquittotest"
	"github.com/fieldhub/fieldhub/telemetry"
)

// latencyRecorder is a Fanout that notes how long each reading took from
// its ts (set when published) to arrival.
type latencyRecorder struct {
	mu  sync.Mutex
	lat []time.Duration
}

func (l *latencyRecorder) Publish(ev telemetry.Event) {
	now := time.Now()
	l.mu.Lock()
	l.lat = append(l.lat, now.Sub(time.UnixMicro(ev.TS)))
	l.mu.Unlock()
}

// BenchmarkLiveAcrossBroker is the cross-instance live path alone: one
// Cluster publishes 5,000 reading events/s from 50 devices, another on
// the same Mosquitto hands them to its dashboards' fan-out. No hubs, no
// InfluxDB: what the broker hop and our encoding cost. Run with
// -benchtime=1x.
func BenchmarkLiveAcrossBroker(b *testing.B) {
	const devicesN, perSec, runFor = 50, 5000, 3 * time.Second
	mq := mosquittotest.Start(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := func(id string, local *latencyRecorder) *Cluster {
		c, err := New(Options{BrokerURL: mq.URL, Username: mosquittotest.HubUser, Password: mosquittotest.HubPass,
			ClientID: id, Registry: registryStub{}, Local: local, IngestConns: -1})
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		peers := stubPeers(b, local)
		go func() { _ = c.Run(ctx, peers); close(done) }()
		b.Cleanup(func() { cancel(); <-done })
		select {
		case <-c.Ready():
		case <-time.After(10 * time.Second):
			b.Fatal("not connected to mosquitto")
		}
		return c
	}
	pub := start("bench-pub", &latencyRecorder{})
	sub := &latencyRecorder{}
	start("bench-sub", sub)
	b.ReportAllocs()
	b.ResetTimer()
	tick := time.NewTicker(time.Millisecond) // 5 events a millisecond: finer tickers do not keep up
	defer tick.Stop()
	sent := 0
	for deadline := time.Now().Add(runFor); time.Now().Before(deadline); {
		<-tick.C
		for range perSec / 1000 {
			pub.Publish(telemetry.Event{Type: telemetry.EventReading, Device: fmt.Sprintf("d-%d", sent%devicesN),
				TS: time.Now().UnixMicro(), Metrics: telemetry.Metrics{"temp": telemetry.Number(21.5), "n": telemetry.Number(float64(sent))}})
			sent++
		}
	}
	b.StopTimer()
	time.Sleep(300 * time.Millisecond) // let the last ones arrive before counting
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if len(sub.lat) == 0 {
		b.Fatal("nothing arrived")
	}
	slices.Sort(sub.lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(float64(sent)/runFor.Seconds(), "events/s")
	b.ReportMetric(float64(len(sub.lat))/float64(sent), "delivered-fraction")
	b.ReportMetric(ms(sub.lat[len(sub.lat)/2]), "p50-ms")
	b.ReportMetric(ms(sub.lat[len(sub.lat)*99/100]), "p99-ms")
}

// BenchmarkDelivered is what every broker message pays to be recognised
// later as a redelivery: its key, and remembering it, from the ingest
// workers at once.
func BenchmarkDelivered(b *testing.B) {
	d := newDelivered(durableMemory)
	payload := []byte(`{"id":"m-000001","ts":1700000000000,"metrics":{"temperature":21.5,"humidity":40.25}}`)
	b.ReportAllocs()
	var worker atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		w := worker.Add(1) << 40
		buf := make([]byte, 0, 32+len(payload))
		for i := int64(0); pb.Next(); i++ {
			msg := append(strconv.AppendInt(buf[:0], w+i, 10), payload...) // a different message each time
			d.remember(d.key("devices/sensor-1/telemetry", msg))
		}
	})
}
