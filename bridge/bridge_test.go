package bridge

import (
	"context"
	"fmt"
	"path/filepath"
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
