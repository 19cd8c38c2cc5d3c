package ws

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
)

// BenchmarkIdleConnectionMemory opens idle device connections and reports
// the hub's heap and stack per connection. The clients are bare sockets
// that wrote a handshake (no goroutines, no buffers), so what grows is the
// hub's side: session, reader and writer goroutines, gorilla's buffers.
// Run with -benchtime=5000x for the figure in docs/benchmarks.md.
func BenchmarkIdleConnectionMemory(b *testing.B) {
	r := newBenchRig(b)
	n := b.N
	specs := make([]devices.Spec, n)
	for i := range specs {
		specs[i] = devices.Spec{ID: fmt.Sprintf("idle-%d", i)}
	}
	created, err := r.reg.CreateBatch(context.Background(), specs)
	if err != nil {
		b.Fatal(err)
	}
	u, _ := url.Parse(r.srv.URL)
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
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(conn, "GET /ws/device HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n", u.Host, c.Token)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			b.Fatalf("upgrade: %v %v", resp, err)
		}
		conns = append(conns, conn)
	}
	b.StopTimer()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, online := r.reg.Counts()
		if online == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	perConn := float64((after.HeapInuse+after.StackInuse)-(before.HeapInuse+before.StackInuse)) / float64(n)
	b.ReportMetric(perConn/1024, "KiB/conn")
	b.ReportMetric(float64(runtime.NumGoroutine()), "goroutines")
}

// newBenchRig is newRig for benchmarks, with the rate limit out of the way.
func newBenchRig(b *testing.B) *rig {
	return newRigTB(b, rigOpts{rate: 1e6, burst: 1e6})
}
