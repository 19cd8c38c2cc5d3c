package telemetry

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/influxdata/line-protocol/v2/lineprotocol"
)

// checkRoundTrip encodes readings and parses them back with InfluxDB's
// line-protocol parser: every line must parse to exactly the point we meant.
func checkRoundTrip(t *testing.T, device string, tags []Tag, readings []Reading) {
	t.Helper()
	b := AppendLines(nil, device, tags, readings)
	dec := lineprotocol.NewDecoderWithBytes(b)
	for i, r := range readings {
		if !dec.Next() {
			t.Fatalf("line %d missing from %q", i, b)
		}
		m, err := dec.Measurement()
		if err != nil || string(m) != Measurement {
			t.Fatalf("line %d measurement %q, %v in %q", i, m, err, b)
		}
		gotTags := map[string]string{}
		for {
			k, v, err := dec.NextTag()
			if err != nil {
				t.Fatalf("line %d tag: %v in %q", i, err, b)
			}
			if k == nil {
				break
			}
			gotTags[string(k)] = string(v)
		}
		if gotTags[DeviceTag] != device {
			t.Fatalf("device tag %q, want %q in %q", gotTags[DeviceTag], device, b)
		}
		for _, tg := range tags {
			if ValidName(tg.Key) && ValidTagValue(tg.Value) && tg.Key != DeviceTag && gotTags[tg.Key] != tg.Value {
				t.Fatalf("tag %s = %q, want %q in %q", tg.Key, gotTags[tg.Key], tg.Value, b)
			}
		}
		n := 0
		for {
			k, v, err := dec.NextField()
			if err != nil {
				t.Fatalf("line %d field: %v in %q", i, err, b)
			}
			if k == nil {
				break
			}
			if string(k) == SeqField && r.HasSeq {
				if v.Kind() != lineprotocol.Int || uint64(v.IntV()) != r.Seq {
					t.Fatalf("seq = %v, want %d in %q", v, r.Seq, b)
				}
				continue
			}
			n++
			want, ok := r.Metrics[string(k)]
			if !ok {
				t.Fatalf("unexpected field %q in %q", k, b)
			}
			switch want.Kind {
			case KindNumber:
				if v.Kind() != lineprotocol.Float || v.FloatV() != want.Num {
					t.Fatalf("field %s = %v, want %v in %q", k, v, want.Num, b)
				}
			case KindBool:
				if v.Kind() != lineprotocol.Bool || v.BoolV() != want.Bool {
					t.Fatalf("field %s = %v, want %v", k, v, want.Bool)
				}
			case KindString:
				if v.Kind() != lineprotocol.String || v.StringV() != want.Str {
					t.Fatalf("field %s = %q, want %q in %q", k, v.StringV(), want.Str, b)
				}
			}
		}
		if n != len(r.Metrics) {
			t.Fatalf("line %d has %d fields, want %d", i, n, len(r.Metrics))
		}
		ts, err := dec.Time(lineprotocol.Nanosecond, time.Time{})
		if err != nil || ts.UnixNano() != r.Nano() || ts.UnixMilli() != r.TS {
			t.Fatalf("line %d time %v (%v), want %d ns (ts %d)", i, ts, err, r.Nano(), r.TS)
		}
	}
	if dec.Next() {
		t.Fatalf("extra line in %q", b)
	}
}

func TestAppendLines(t *testing.T) {
	r := []Reading{{TS: 1795000000000, Metrics: Metrics{"temp": Number(21.5), "door_open": Bool(false), "state": String("idle")}}}
	got := string(AppendLines(nil, "dev-1", []Tag{{"site", "north yard"}}, r))
	want := "telemetry,device=dev-1,site=north\\ yard door_open=false,state=\"idle\",temp=21.5 1795000000000000000\n"
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	// A hub-assigned time keeps its nanoseconds.
	r[0].TS, r[0].Nanos = 1795000000000, 1795000000000123457
	got = string(AppendLines(nil, "dev-1", nil, r))
	if want := " 1795000000000123457\n"; !strings.HasSuffix(got, want) {
		t.Errorf("hub time: got %q, want suffix %q", got, want)
	}
}

func TestAppendLinesRoundTrip(t *testing.T) {
	tests := []struct {
		name     string
		tags     []Tag
		readings []Reading
	}{
		{"escapes in strings", nil, []Reading{{TS: 1, Metrics: Metrics{"s": String(`quote " and back\slash \`), "t": String(`\`)}}}},
		{"numbers", nil, []Reading{{TS: 2, Metrics: Metrics{"big": Number(1e300), "tiny": Number(-5e-324), "int": Number(42), "max": Number(math.MaxFloat64)}}}},
		{"tags with separators", []Tag{{"site", "a,b=c d"}, {"zone", "ünïcode"}}, []Reading{{TS: 3, Metrics: Metrics{"a": Bool(true)}}}},
		{"unsafe tags dropped", []Tag{{"bad", "ends with\\"}, {"nl", "a\nb"}, {"device", "spoof"}, {"bad key", "x"}}, []Reading{{TS: 4, Metrics: Metrics{"a": Number(1)}}}},
		{"batch", nil, []Reading{{TS: 5, Metrics: Metrics{"a": Number(1)}}, {TS: 6, Metrics: Metrics{"b": Number(2)}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkRoundTrip(t, "dev.1_x-y", tt.tags, tt.readings) })
	}
}

// FuzzAppendLines checks that any tag value and string metric we would
// accept encodes to a line that parses back unchanged.
func FuzzAppendLines(f *testing.F) {
	f.Add("north yard", "idle", 21.5, time.Now().UnixMilli())
	f.Add(`a,b=c`, `"\`, math.Copysign(0, -1), int64(0))
	f.Add("x\\", "a\x00b", math.Inf(1), int64(-1))
	c := testCodec()
	f.Fuzz(func(t *testing.T, tag, s string, num float64, ts int64) {
		m := Metrics{"s": String(s), "n": Number(num)}
		for k, v := range m {
			if c.valueReason(v) != "" {
				delete(m, k)
			}
		}
		if len(m) == 0 || !c.tsOK(ts) {
			return
		}
		// The spool refuses a payload holding a zero byte (every record
		// header holds one): line protocol must never contain one.
		if b := AppendLines(nil, "dev-1", []Tag{{"site", tag}, {tag, "x"}}, []Reading{{TS: ts, Metrics: m}}); bytes.IndexByte(b, 0) >= 0 {
			t.Fatalf("zero byte in line protocol %q", b)
		}
		checkRoundTrip(t, "dev-1", []Tag{{"site", tag}}, []Reading{{TS: ts, Metrics: m}})
	})
}
