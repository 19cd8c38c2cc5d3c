package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
)

// BenchmarkInstances compares one hub instance with two on the same
// Mosquitto, PostgreSQL and influxd, all on this machine: 200 simulated
// devices offer 100 readings/s each (20,000/s) for 5 s, over WebSocket
// (spread over the instances, acknowledged when durable) or MQTT (through
// the broker's shared subscription; the hubs acknowledge to the broker
// when durable). It reports what the hubs made durable per second during
// the run and checks that everything acknowledged landed in InfluxDB.
// Run with -benchtime=1x.
func BenchmarkInstances(b *testing.B) {
	for _, transport := range []string{"ws", "mqtt"} {
		for _, n := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/instances=%d", transport, n), func(b *testing.B) { benchInstances(b, transport, n) })
		}
	}
}

func benchInstances(b *testing.B, transport string, instances int) {
	const devicesN, rate, runFor = 200, 100.0, 5 * time.Second
	influx := startInflux(b)
	env := clusterEnv(b, influx)
	env["FIELDHUB_LOG_LEVEL"] = "warn"
	var hubs []*hub
	for i := range instances {
		env["FIELDHUB_INSTANCE_ID"] = fmt.Sprintf("bench-%d", i+1)
		h := startHubTB(b, influx, env)
		h.waitBroker(b)
		hubs = append(hubs, h)
	}
	cfg := firmwaresim.Config{
		Hub: hubs[0].url, AdminToken: hubs[0].adminToken, Provision: true, Prefix: "inst",
		Devices: devicesN, Transport: transport, Rate: rate, Duration: runFor, MaxInflight: 20,
		MQTT: strings.TrimPrefix(env["FIELDHUB_MQTT_BROKER"], "tcp://"),
	}
	for _, h := range hubs[1:] {
		cfg.MoreHubs = append(cfg.MoreHubs, h.url)
	}
	fleet, err := firmwaresim.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	durable := func() float64 {
		sum := 0.0
		for _, h := range hubs {
			for _, l := range strings.Split(h.metricLines(b, "fieldhub_readings_accepted_total"), "; ") {
				if f := strings.Fields(l); len(f) == 2 {
					v, _ := strconv.ParseFloat(f[1], 64)
					sum += v
				}
			}
		}
		return sum
	}
	before := durable()
	b.ResetTimer()
	start := time.Now()
	if err := fleet.Run(context.Background()); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	during := durable() - before
	b.StopTimer()
	st := fleet.Stats()
	if st.Violations > 0 {
		b.Fatalf("contract violations: %v", st.ViolationSamples)
	}
	// Everything the devices had acknowledged (MQTT: by the broker) is
	// made durable by the hubs and lands in InfluxDB.
	deadline := time.Now().Add(60 * time.Second)
	var landed int64
	for time.Now().Before(deadline) {
		rows, err := influx.Query(`SELECT count("temp") FROM "telemetry" WHERE "device" =~ /^inst-/`)
		if err == nil && len(rows) > 0 {
			landed = int64(rows[0][1].(float64))
		}
		if landed >= st.ReadingsAcked {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if landed < st.ReadingsAcked {
		b.Fatalf("%d readings acknowledged, %d in InfluxDB", st.ReadingsAcked, landed)
	}
	drained := time.Since(start)
	b.ReportMetric(st.ReadingsPerSecSent, "offered/s")
	b.ReportMetric(during/elapsed.Seconds(), "durable/s")
	b.ReportMetric(float64(landed)/drained.Seconds(), "landed/s")
	b.ReportMetric(st.AckP99, "ack-p99-ms")
}
