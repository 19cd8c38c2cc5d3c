package mqtt

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/devices"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIngestQoS1 drives the broker with 1,000 connected paho devices
// publishing single readings at QoS 1, each waiting for its PUBACK (which
// the hub sends only once the reading is fsynced in the spool). It reports
// messages/s and CPU per message for the whole process (clients included).
func BenchmarkIngestQoS1(b *testing.B) {
	const devicesN = 1000
	r := newRigTB(b, Options{ConnectRate: 1e6, ConnectBurst: 1e6})
	specs := make([]devices.Spec, devicesN)
	for i := range specs {
		specs[i] = devices.Spec{ID: fmt.Sprintf("bench-%d", i)}
	}
	created, err := r.reg.CreateBatch(context.Background(), specs)
	if err != nil {
		b.Fatal(err)
	}
	clients := make([]paho.Client, devicesN)
	var wg sync.WaitGroup
	for i, c := range created {
		wg.Go(func() {
			cl := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + r.addr).SetClientID(c.Device.ID).
				SetUsername(c.Device.ID).SetPassword(c.Token).SetAutoReconnect(false).SetMaxResumePubInFlight(10))
			if tok := cl.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				b.Errorf("connect: %v", tok.Error())
				return
			}
			clients[i] = cl
		})
	}
	wg.Wait()
	if b.Failed() {
		return
	}
	defer func() {
		for _, c := range clients {
			c.Disconnect(0)
		}
	}()
	perDevice := max(1, b.N/devicesN)
	payload := []byte(`{"metrics":{"temp":21.5,"humidity":40.25,"battery":3.71}}`)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	for i, cl := range clients {
		wg.Go(func() {
			topic := "devices/" + created[i].Device.ID + "/telemetry"
			// A window of 8 in-flight publishes per device, like firmware
			// with a small buffer.
			window := make(chan paho.Token, 8)
			for range perDevice {
				if len(window) == cap(window) {
					if t := <-window; !t.WaitTimeout(30*time.Second) || t.Error() != nil {
						b.Errorf("publish: %v", t.Error())
						return
					}
				}
				window <- cl.Publish(topic, 1, false, payload)
			}
			for len(window) > 0 {
				if t := <-window; !t.WaitTimeout(30*time.Second) || t.Error() != nil {
					b.Errorf("publish: %v", t.Error())
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	total := perDevice * devicesN
	if n := r.stored(b); n != total {
		b.Fatalf("%d readings durable, want %d", n, total)
	}
	b.ReportMetric(float64(total)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(cpu.Seconds()*1e6/float64(total), "cpu-s/M-msgs")
}
