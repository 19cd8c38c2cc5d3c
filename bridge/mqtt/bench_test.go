package mqtt

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

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

// BenchmarkIdleConnectionMemory: what one connected, subscribed, idle MQTT
// device costs the gateway (heap and stacks, after GC), b.N connections
// (issue #21's target: at most 20 KiB each at 10,000). The clients are raw
// sockets: only the kernel holds their side.
func BenchmarkIdleConnectionMemory(b *testing.B) {
	r := newRigTB(b, Options{ConnectRate: 1e6, ConnectBurst: 1e6})
	n := b.N
	specs := make([]devices.Spec, n)
	for i := range specs {
		specs[i] = devices.Spec{ID: fmt.Sprintf("idle-%d", i)}
	}
	created, err := r.reg.CreateBatch(context.Background(), specs)
	if err != nil {
		b.Fatal(err)
	}
	var connect, subscribe bytes.Buffer
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	b.ResetTimer()
	for _, c := range created {
		id := c.Device.ID
		connect.Reset()
		subscribe.Reset()
		pk := connectPk(id, id, c.Token, true)
		_ = pk.ConnectEncode(&connect)
		sub := subscribePk(1, packets.Subscription{Filter: "devices/" + id + "/commands", Qos: 1})
		_ = sub.SubscribeEncode(&subscribe)
		conn, err := net.Dial("tcp", r.addr)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, conn)
		if _, err := conn.Write(append(connect.Bytes(), subscribe.Bytes()...)); err != nil {
			b.Fatal(err)
		}
		ack := make([]byte, 4+5) // CONNACK (4) and SUBACK (5), 3.1.1
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(conn, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 || ack[4] != 0x90 {
			b.Fatalf("CONNACK/SUBACK % x: %v", ack, err)
		}
	}
	b.StopTimer()
	// Two cycles: the runtime halves a goroutine stack that uses less
	// than a quarter of it at each GC, and the CONNECT grew every reader's
	// stack (authentication, the bridge session) before it went idle.
	runtime.GC()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	perConn := float64((after.HeapInuse+after.StackInuse)-(before.HeapInuse+before.StackInuse)) / float64(n)
	b.ReportMetric(perConn/1024, "KiB/conn")
	b.ReportMetric(float64(after.StackInuse-before.StackInuse)/float64(n)/1024, "stack-KiB/conn")
	b.ReportMetric(float64(runtime.NumGoroutine())/float64(n), "goroutines/conn")
}
