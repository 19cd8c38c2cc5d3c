package bridge

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

// registryStub stands in for the registry (our own small interface).
type registryStub struct{}

func (registryStub) Tags(string) []telemetry.Tag               { return nil }
func (registryStub) Touch(string, time.Time)                   {}
func (registryStub) SetPresence(string, devices.Presence)      {}
func (registryStub) StillValid(string, devices.TokenHash) bool { return true }
func (registryStub) Exists(string) bool                        { return true }

// BenchmarkIngest is the whole accept path a transport calls per message:
// rate limit, strict decode, validation, line-protocol encoding, and the
// group-committed, fsynced spool append, from 64 concurrent devices.
func BenchmarkIngest(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("readings=%d", n), func(b *testing.B) {
			sp, err := spool.Open(spool.Options{Dir: filepath.Join(b.TempDir(), "spool"), MaxBytes: 16 << 30})
			if err != nil {
				b.Fatal(err)
			}
			defer sp.Close()
			br, err := New(Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: sp, Devices: registryStub{}, RatePerSec: 1e9, Burst: 1e9})
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now().UnixMilli()
			msg := fmt.Sprintf(`{"type":"telemetry","id":"1","ts":%d,"metrics":{"temp":21.5,"humidity":40.25,"battery":3.71}}`, now)
			if n > 1 {
				msg = `{"type":"telemetry","id":"1","readings":[`
				for i := range n {
					if i > 0 {
						msg += ","
					}
					msg += fmt.Sprintf(`{"ts":%d,"metrics":{"temp":21.5,"humidity":40.25,"battery":3.71}}`, now-int64(i))
				}
				msg += "]}"
			}
			payload := []byte(msg)
			b.ReportAllocs()
			b.SetParallelism(32)
			b.ResetTimer()
			var dev atomic.Int64
			b.RunParallel(func(pb *testing.PB) {

				s := br.Ephemeral(fmt.Sprintf("sim-%d", dev.Add(1)), devices.TransportWS, "bench")
				for pb.Next() {
					if _, err := br.Ingest(context.Background(), s, payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "readings/s")
		})
	}
}

// discardStore is a Store that takes every payload at once (the bridge's
// own interface): BenchmarkIngestPipeline measures the pipeline, not the
// disk.
type discardStore struct{}

func (discardStore) Append(ctx context.Context, points int, payload []byte) error { return ctx.Err() }

// discardFanout is a BatchFanout that drops every event, as a live hub
// with no dashboards does after its one non-blocking send.
type discardFanout struct{}

func (discardFanout) Publish(telemetry.Event)        {}
func (discardFanout) PublishBatch([]telemetry.Event) {}

// BenchmarkIngestPipeline is the CPU and allocations of the accept path a
// connected device's messages take, without the disk: rate limit, decode,
// validation, schema check, encoding, the store's deadline, last-seen and
// fan-out, from one connected session per goroutine.
func BenchmarkIngestPipeline(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("readings=%d", n), func(b *testing.B) {
			br, err := New(Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: discardStore{}, Devices: registryStub{}, Fanout: discardFanout{}, RatePerSec: 1e9, Burst: 1e9})
			if err != nil {
				b.Fatal(err)
			}
			var sb strings.Builder
			sb.WriteString(`{"type":"telemetry","id":"1","readings":[`)
			for i := range n {
				if i > 0 {
					sb.WriteString(",")
				}
				sb.WriteString(`{"metrics":{"temp":21.5,"humidity":40.25,"battery":3.71}}`)
			}
			sb.WriteString("]}")
			payload := []byte(sb.String())
			if n == 1 {
				payload = []byte(`{"metrics":{"temp":21.5,"humidity":40.25,"battery":3.71}}`)
			}
			var dev atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				s := br.Connect(fmt.Sprintf("sim-%d", dev.Add(1)), devices.TransportMQTT, "bench", devices.TokenHash{}, &nopConn{})
				defer br.Disconnect(s, ReasonClientClosed)
				for pb.Next() {
					if a := br.Accept(context.Background(), s, Message{Kind: telemetry.KindTelemetry, Payload: payload}); a.Err != nil {
						b.Error(a.Err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "readings/s")
		})
	}
}

// recordingStore is a spool stand-in (the bridge's own Store interface)
// that keeps a copy of every payload it accepts.
type recordingStore struct {
	mu    sync.Mutex
	lines []string
}

func (r *recordingStore) Append(ctx context.Context, points int, payload []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for l := range strings.SplitSeq(strings.TrimSpace(string(payload)), "\n") {
		r.lines = append(r.lines, l)
	}
	return nil
}

// TestHubTimesUniqueUnderConcurrency: many sessions of one device send
// readings without ts at once, single and batched, while the hub's clock
// stands still (the worst case of a coarse clock): every acknowledged
// reading gets its own timestamp, so none overwrites another in InfluxDB.
func TestHubTimesUniqueUnderConcurrency(t *testing.T) {
	frozen := time.Unix(1_700_000_000, 123_000_000)
	rs := &recordingStore{}
	br, err := New(Options{Codec: telemetry.NewCodec(telemetry.Limits{}, func() time.Time { return frozen }), Store: rs, Devices: registryStub{},
		RatePerSec: 1e9, Burst: 1e9})
	if err != nil {
		t.Fatal(err)
	}
	const sessions, messages = 8, 25
	transports := []string{devices.TransportWS, devices.TransportMQTT, devices.TransportHTTP}
	var wg sync.WaitGroup
	for i := range sessions {
		s := br.Ephemeral("d1", transports[i%len(transports)], "test")
		wg.Go(func() {
			for j := range messages {
				msg := fmt.Sprintf(`{"type":"telemetry","metrics":{"n":%d}}`, i*1000+j)
				if j%5 == 0 {
					msg = fmt.Sprintf(`{"type":"telemetry","readings":[{"metrics":{"n":%d}},{"metrics":{"n":%d}},{"metrics":{"n":%d}}]}`, i*1000+j, i*1000+j+500, i*1000+j+700)
				}
				if _, e := br.Ingest(context.Background(), s, []byte(msg)); e != nil {
					t.Errorf("session %d message %d: %v", i, j, e)
				}
			}
		})
	}
	wg.Wait()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	want := sessions * (messages + 2*(messages/5))
	if len(rs.lines) != want {
		t.Fatalf("%d lines spooled, want %d", len(rs.lines), want)
	}
	seen := map[string]string{}
	for _, l := range rs.lines {
		ts := l[strings.LastIndexByte(l, ' ')+1:]
		if prev, dup := seen[ts]; dup {
			t.Fatalf("two acknowledged readings share timestamp %s:\n%s\n%s", ts, prev, l)
		}
		seen[ts] = l
	}
}
