package telemetry

import (
	"slices"
	"testing"
	"time"

	"github.com/influxdata/line-protocol/v2/lineprotocol"
)

// appendLinesV2 is AppendLines written with line-protocol/v2's Encoder,
// kept only to benchmark the choice recorded in docs/architecture.md.
func appendLinesV2(e *lineprotocol.Encoder, device string, tags []Tag, readings []Reading) {
	var keyBuf [16]string
	for _, r := range readings {
		e.StartLine(Measurement)
		e.AddTag(DeviceTag, device)
		for _, t := range tags {
			if t.Key == DeviceTag || !ValidName(t.Key) || !ValidTagValue(t.Value) {
				continue
			}
			e.AddTag(t.Key, t.Value)
		}
		keys := keyBuf[:0]
		for k := range r.Metrics {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			v := r.Metrics[k]
			var lv lineprotocol.Value
			var ok bool
			switch v.Kind {
			case KindNumber:
				lv, ok = lineprotocol.FloatValue(v.Num)
			case KindBool:
				lv, ok = lineprotocol.BoolValue(v.Bool), true
			case KindString:
				lv, ok = lineprotocol.StringValue(v.Str)
			}
			if ok {
				e.AddField(k, lv)
			}
		}
		e.EndLine(time.Unix(0, r.Nano()))
	}
}

func BenchmarkAppendLinesV2Encoder(b *testing.B) {
	r := []Reading{{TS: testNow.UnixMilli(), Metrics: Metrics{"temp": Number(21.5), "humidity": Number(40.25), "battery": Number(3.71)}}}
	tags := []Tag{{"site", "north"}}
	var e lineprotocol.Encoder
	e.SetPrecision(lineprotocol.Nanosecond)
	e.SetBuffer(make([]byte, 0, 256))
	b.ReportAllocs()
	for b.Loop() {
		e.Reset()
		appendLinesV2(&e, "sim-1234", tags, r)
	}
	if e.Err() != nil {
		b.Fatal(e.Err())
	}
}

// TestAppendLinesV2EncoderSameBytes shows the benchmark compares like with
// like: for a reading with sorted tags both encoders write the same line.
func TestAppendLinesV2EncoderSameBytes(t *testing.T) {
	r := []Reading{{TS: testNow.UnixMilli(), Metrics: Metrics{"temp": Number(21.5), "ok": Bool(true), "note": String(`a "b" c\`)}}}
	tags := []Tag{{"site", "nor th,x=y"}}
	var e lineprotocol.Encoder
	e.SetPrecision(lineprotocol.Nanosecond)
	appendLinesV2(&e, "sim-1", tags, r)
	if e.Err() != nil {
		t.Fatal(e.Err())
	}
	if got, want := string(e.Bytes()), string(AppendLines(nil, "sim-1", tags, r)); got != want {
		t.Fatalf("v2 encoder wrote\n%q\nAppendLines wrote\n%q", got, want)
	}
}
