package telemetry

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func benchMessage(readings int) []byte {
	ts := testNow.UnixMilli()
	if readings == 1 {
		return []byte(fmt.Sprintf(`{"type":"telemetry","id":"42","ts":%d,"metrics":{"temp":21.5,"humidity":40.25,"battery":3.71}}`, ts))
	}
	parts := make([]string, readings)
	for i := range parts {
		parts[i] = fmt.Sprintf(`{"ts":%d,"metrics":{"temp":21.5,"humidity":40.25,"battery":3.71}}`, ts-int64(i))
	}
	return []byte(`{"type":"telemetry","id":"43","readings":[` + strings.Join(parts, ",") + `]}`)
}

// BenchmarkDecodeValidate is the per-message cost every transport pays:
// strict decode plus validation.
func BenchmarkDecodeValidate(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("readings=%d", n), func(b *testing.B) {
			c := NewCodec(Limits{}, func() time.Time { return testNow })
			msg := benchMessage(n)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				f, err := c.Decode(msg)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Telemetry(f); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "readings/s")
		})
	}
}

// BenchmarkAppendLines is line-protocol encoding of one reading of three
// metrics with one label tag.
func BenchmarkAppendLines(b *testing.B) {
	r := []Reading{{TS: testNow.UnixMilli(), Metrics: Metrics{"temp": Number(21.5), "humidity": Number(40.25), "battery": Number(3.71)}}}
	tags := []Tag{{"site", "north"}}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendLines(buf[:0], "sim-1234", tags, r)
	}
}
