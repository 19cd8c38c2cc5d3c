package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// BenchmarkLiveLatency measures device -> dashboard latency through the
// whole hub (measureLiveLatency).
func BenchmarkLiveLatency(b *testing.B) {
	influx := startInflux(b)
	h := startHubTB(b, influx, map[string]string{"FIELDHUB_RATE_LIMIT": "1000", "FIELDHUB_RATE_BURST": "1000"})
	measureLiveLatency(b, h, h)
}

// BenchmarkLiveLatencyAcrossInstances is BenchmarkLiveLatency with the
// devices on one hub instance and the dashboards on another, both on a
// real Mosquitto and PostgreSQL: every reading crosses the broker on
// fieldhub/live/{device}.
func BenchmarkLiveLatencyAcrossInstances(b *testing.B) {
	influx := startInflux(b)
	env := clusterEnv(b, influx)
	env["FIELDHUB_INSTANCE_ID"] = "bench-1"
	h1 := startHubTB(b, influx, env)
	env["FIELDHUB_INSTANCE_ID"] = "bench-2"
	h2 := startHubTB(b, influx, env)
	h1.waitBroker(b)
	h2.waitBroker(b)
	measureLiveLatency(b, h1, h2)
	for i, h := range []*hub{h1, h2} {
		b.Logf("instance %d: %s", i+1, h.metricLines(b, "fieldhub_cluster_live_events_total"))
	}
}

// metricLines returns the /metrics lines of one metric family.
func (h *hub) metricLines(t testing.TB, name string) string {
	resp, err := http.Get(h.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out []string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, name) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}

// measureLiveLatency: 50 WebSocket devices on devHub send 5,000
// readings/s in total for 3 s; 10 dashboards on dashHub subscribed to
// everything receive them over /ws/live. The latency is from the device's
// write to the dashboard's read, matched by a sequence number in the
// reading. Run with -benchtime=1x.
func measureLiveLatency(b *testing.B, devHub, dashHub *hub) {
	const devicesN, perDevice, dashboards = 50, 100, 10 // 50 x 100/s = 5,000 readings/s
	const runFor = 3 * time.Second
	h := devHub
	wsBase := strings.Replace(h.url, "http", "ws", 1)
	dashBase := strings.Replace(dashHub.url, "http", "ws", 1)
	tokens := make([]string, devicesN)
	for i := range tokens {
		st, m := h.apiTB(b, "POST", "/api/v1/devices", h.adminToken, map[string]any{"id": fmt.Sprintf("lat-%d", i)})
		if st != 201 {
			b.Fatalf("create: %d", st)
		}
		tokens[i] = m["token"].(string)
	}
	var mu sync.Mutex
	sent := map[int64]time.Time{}
	var lat []time.Duration
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range dashboards {
		c, _, err := websocket.DefaultDialer.Dial(dashBase+"/ws/live", http.Header{"Authorization": {"Bearer " + dashHub.adminToken}})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		_ = c.WriteJSON(map[string]any{"type": "subscribe", "devices": []string{"*"}})
		wg.Go(func() {
			for {
				_, data, err := c.ReadMessage()
				if err != nil {
					return
				}
				now := time.Now()
				var e struct {
					Type    string
					Metrics map[string]float64
				}
				if json.Unmarshal(data, &e) != nil || e.Type != "reading" {
					continue
				}
				mu.Lock()
				if at, ok := sent[int64(e.Metrics["n"])]; ok {
					lat = append(lat, now.Sub(at))
				}
				mu.Unlock()
			}
		})
	}
	var seq int64
	b.ResetTimer()
	var devs sync.WaitGroup
	for _, tok := range tokens {
		c, _, err := websocket.DefaultDialer.Dial(wsBase+"/ws/device", http.Header{"Authorization": {"Bearer " + tok}})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		devs.Go(func() { // drain acks
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		})
		devs.Go(func() {
			tick := time.NewTicker(time.Second / perDevice)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					mu.Lock()
					seq++
					n := seq
					sent[n] = time.Now()
					mu.Unlock()
					msg := fmt.Sprintf(`{"type":"telemetry","metrics":{"n":%d,"temp":21.5}}`, n)
					if c.WriteMessage(websocket.TextMessage, []byte(msg)) != nil {
						return
					}
				}
			}
		})
	}
	time.Sleep(runFor) // the load runs for a fixed time; this is the measurement window, not synchronisation
	close(stop)
	b.StopTimer()
	time.Sleep(200 * time.Millisecond) // let in-flight readings arrive before counting
	mu.Lock()
	defer mu.Unlock()
	if len(lat) == 0 {
		b.Fatal("no readings reached the dashboards")
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(float64(seq)/runFor.Seconds(), "readings/s")
	b.ReportMetric(float64(len(lat))/float64(seq*dashboards), "delivered-fraction")
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
}
