package influx

import (
	"context"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// TestOptionsDefaults: zero and negative settings take the documented
// defaults; set ones are kept.
func TestOptionsDefaults(t *testing.T) {
	defaults := Options{URL: "http://127.0.0.1:8086", Bucket: "telemetry", BatchPoints: 5000,
		FlushInterval: 100 * time.Millisecond, Timeout: 10 * time.Second, MaxBackoff: 30 * time.Second}
	set := Options{URL: "http://127.0.0.1:1", Bucket: "db/rp", BatchPoints: 7,
		FlushInterval: time.Second, Timeout: 3 * time.Second, MaxBackoff: time.Minute}
	tests := []struct {
		name     string
		in, want Options
	}{
		{"zero", Options{}, defaults},
		{"negative", Options{BatchPoints: -1, FlushInterval: -1, Timeout: -1, MaxBackoff: -1}, defaults},
		{"set", set, set},
		{"smallest", Options{BatchPoints: 1, FlushInterval: 1, Timeout: 1, MaxBackoff: 1},
			Options{URL: defaults.URL, Bucket: defaults.Bucket, BatchPoints: 1, FlushInterval: 1, Timeout: 1, MaxBackoff: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.in
			got.ensureDefaults()
			if got.Logger == nil {
				t.Error("no default logger")
			}
			got.Logger = nil
			if got != tt.want {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestPing: Ping succeeds while InfluxDB answers and fails once it is gone
// (readiness depends on it).
func TestPing(t *testing.T) {
	srv := influxtest.Start(t)
	c := NewClient(Options{URL: srv.URL, Bucket: srv.Bucket, Timeout: 5 * time.Second})
	defer c.Close()
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping a running influxd: %v", err)
	}
	srv.Stop()
	if err := c.Ping(context.Background()); err == nil {
		t.Fatal("Ping a stopped influxd: no error")
	}
}
