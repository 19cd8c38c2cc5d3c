package telemetry

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var testNow = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func testCodec() *Codec {
	return NewCodec(Limits{TagKeys: []string{"site"}}, func() time.Time { return testNow })
}

func TestDecodeTelemetryValid(t *testing.T) {
	now, nowNs := testNow.UnixMilli(), testNow.UnixNano()
	tests := []struct {
		name     string
		in       string
		wantID   string
		readings []Reading
	}{
		{"single with ts", fmt.Sprintf(`{"type":"telemetry","id":"42","ts":%d,"metrics":{"temp":21.5,"door_open":false,"state":"idle"}}`, now-1000), "42",
			[]Reading{{TS: now - 1000, Metrics: Metrics{"temp": Number(21.5), "door_open": Bool(false), "state": String("idle")}}}},
		{"single without ts takes receive time", `{"type":"telemetry","metrics":{"t":1}}`, "", []Reading{{TS: now, Nanos: nowNs, Metrics: Metrics{"t": Number(1)}}}},
		{"version 1 accepted", `{"v":1,"type":"telemetry","metrics":{"t":1}}`, "", []Reading{{TS: now, Nanos: nowNs, Metrics: Metrics{"t": Number(1)}}}},
		{"batch", fmt.Sprintf(`{"type":"telemetry","id":"43","readings":[{"ts":%d,"metrics":{"a":1}},{"metrics":{"b":true}}]}`, now-5), "43",
			[]Reading{{TS: now - 5, Metrics: Metrics{"a": Number(1)}}, {TS: now, Nanos: nowNs, Metrics: Metrics{"b": Bool(true)}}}},
		{"device ts equal to now is the device's", fmt.Sprintf(`{"type":"telemetry","ts":%d,"metrics":{"t":1}}`, now), "", []Reading{{TS: now, Metrics: Metrics{"t": Number(1)}}}},
		{"names with dots and dashes", `{"type":"telemetry","metrics":{"a_.b-c":-1e-3}}`, "", []Reading{{TS: now, Nanos: nowNs, Metrics: Metrics{"a_.b-c": Number(-1e-3)}}}},
		{"names containing reserved words", `{"type":"telemetry","metrics":{"time_ms":1,"device2":2,"site.a":3,"x_":4}}`, "",
			[]Reading{{TS: now, Nanos: nowNs, Metrics: Metrics{"time_ms": Number(1), "device2": Number(2), "site.a": Number(3), "x_": Number(4)}}}},
	}
	c := testCodec()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.DecodeTelemetry([]byte(tt.in))
			if err != nil {
				t.Fatalf("DecodeTelemetry: %v", err)
			}
			if got.ID != tt.wantID || len(got.Readings) != len(tt.readings) {
				t.Fatalf("got id %q, %d readings; want %q, %d", got.ID, len(got.Readings), tt.wantID, len(tt.readings))
			}
			for i, r := range got.Readings {
				want := tt.readings[i]
				if r.TS != want.TS || len(r.Metrics) != len(want.Metrics) || r.Nanos != want.Nanos {
					t.Fatalf("reading %d = %+v, want %+v", i, r, want)
				}
				for k, v := range want.Metrics {
					if r.Metrics[k] != v {
						t.Errorf("reading %d metric %s = %+v, want %+v", i, k, r.Metrics[k], v)
					}
				}
			}
		})
	}
}

func TestDecodeTelemetryErrors(t *testing.T) {
	now := testNow.UnixMilli()
	many := func(n int, f func(i int) string) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = f(i)
		}
		return strings.Join(parts, ",")
	}
	tests := []struct {
		name      string
		in        string
		code      string
		field     string // first field error, if any
		inMessage string
	}{
		{"not json", `{"type":`, CodeBadJSON, "", "malformed JSON"},
		{"not an object", `[1,2]`, CodeBadJSON, "", "expected an object"},
		{"case-folded key", `{"type":"telemetry","TS":1,"metrics":{"a":1}}`, CodeBadJSON, "", "TS: unknown field"},
		{"duplicate metrics key", `{"type":"telemetry","metrics":{"a":1},"metrics":{"b":2}}`, CodeBadJSON, "", "metrics: duplicate field"},
		{"duplicate metric", `{"type":"telemetry","metrics":{"a":1,"a":2}}`, CodeBadJSON, "", "duplicate field"},
		{"unknown top-level field", `{"type":"telemetry","metrics":{"a":1},"extra":1}`, CodeBadJSON, "", "extra: unknown field"},
		{"ts as string", `{"type":"telemetry","ts":"now","metrics":{"a":1}}`, CodeBadJSON, "", "ts: expected a number"},
		{"unknown type", `{"type":"reading","metrics":{"a":1}}`, CodeUnknownType, "", `"reading"`},
		{"bad version", `{"v":2,"type":"telemetry","metrics":{"a":1}}`, CodeInvalid, "v", "unsupported protocol version 2"},
		{"null value", `{"type":"telemetry","metrics":{"temp":null}}`, CodeInvalid, "metrics.temp", "must be a number, a boolean or a string"},
		{"object value", `{"type":"telemetry","metrics":{"temp":{"x":1}}}`, CodeInvalid, "metrics.temp", "not null, an object or an array"},
		{"overflowing number", `{"type":"telemetry","metrics":{"temp":1e999}}`, CodeInvalid, "metrics.temp", "must be a finite number"},
		{"long string", `{"type":"telemetry","metrics":{"s":"` + strings.Repeat("x", 257) + `"}}`, CodeInvalid, "metrics.s", "at most 256 bytes"},
		{"newline in string", `{"type":"telemetry","metrics":{"s":"a\nb"}}`, CodeInvalid, "metrics.s", "control characters"},
		{"bad metric name", `{"type":"telemetry","metrics":{"1bad":1}}`, CodeInvalid, "metrics.1bad", "metric name must start"},
		{"metric name with space", `{"type":"telemetry","metrics":{"a b":1}}`, CodeInvalid, "metrics.a b", "metric name"},
		{"no metrics", `{"type":"telemetry","metrics":{}}`, CodeInvalid, "metrics", "1 to 100 metrics"},
		{"missing metrics", `{"type":"telemetry"}`, CodeInvalid, "metrics", "required"},
		{"both forms", `{"type":"telemetry","metrics":{"a":1},"readings":[]}`, CodeInvalid, "readings", "not both"},
		{"too many metrics", `{"type":"telemetry","metrics":{` + many(101, func(i int) string { return fmt.Sprintf(`"m%d":1`, i) }) + `}}`, CodeInvalid, "metrics", "1 to 100 metrics"},
		{"ts in future", fmt.Sprintf(`{"type":"telemetry","ts":%d,"metrics":{"a":1}}`, now+6*60*1000), CodeInvalid, "ts", "at most 5m0s ahead"},
		{"ts too old", fmt.Sprintf(`{"type":"telemetry","ts":%d,"metrics":{"a":1}}`, now-8*24*3600*1000), CodeInvalid, "ts", "behind"},
		{"empty batch", `{"type":"telemetry","readings":[]}`, CodeInvalid, "readings", "1 to 1000 readings"},
		{"batch too big", `{"type":"telemetry","readings":[` + many(1001, func(int) string { return `{"metrics":{"a":1}}` }) + `]}`, CodeInvalid, "readings", "1 to 1000"},
		{"bad value in batch", `{"type":"telemetry","readings":[{"metrics":{"a":1}},{"metrics":{"a":1}},{"metrics":{"a":1}},{"metrics":{"temp":[1]}}]}`, CodeInvalid, "readings[3].metrics.temp", "not null"},
		{"ts beside readings", `{"type":"telemetry","ts":1,"readings":[{"metrics":{"a":1}}]}`, CodeInvalid, "ts", "each reading"},
		{"id too long", `{"type":"telemetry","id":"` + strings.Repeat("i", 65) + `","metrics":{"a":1}}`, CodeInvalid, "id", "at most 64"},
		{"reserved time", `{"type":"telemetry","metrics":{"time":1}}`, CodeInvalid, "metrics.time", `"time" is reserved`},
		{"reserved time any case", `{"type":"telemetry","metrics":{"Time":1}}`, CodeInvalid, "metrics.Time", `"time" is reserved`},
		{"reserved device tag", `{"type":"telemetry","metrics":{"device":"other"}}`, CodeInvalid, "metrics.device", "tag that carries the device id"},
		{"reserved underscore", `{"type":"telemetry","metrics":{"_x":1}}`, CodeInvalid, "metrics._x", "starting with '_'"},
		{"reserved underscore field", `{"type":"telemetry","metrics":{"_field":1}}`, CodeInvalid, "metrics._field", "starting with '_'"},
		{"reserved tag label", `{"type":"telemetry","metrics":{"site":"x"}}`, CodeInvalid, "metrics.site", "tag from the device's labels"},
		{"reserved in batch", `{"type":"telemetry","readings":[{"metrics":{"a":1}},{"metrics":{"a":1,"time":2}}]}`, CodeInvalid, "readings[1].metrics.time", "reserved"},
		{"result fields in telemetry", `{"type":"telemetry","status":"ok","metrics":{"a":1}}`, CodeInvalid, "status", "not allowed"},
	}
	c := testCodec()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.DecodeTelemetry([]byte(tt.in))
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v, want *Error", err)
			}
			if e.Code != tt.code {
				t.Errorf("code = %q, want %q (%s)", e.Code, tt.code, e.Message)
			}
			if !strings.Contains(e.Message, tt.inMessage) {
				t.Errorf("message %q does not contain %q", e.Message, tt.inMessage)
			}
			if strings.Contains(e.Message, "telemetryMsg") || strings.Contains(e.Message, "Reading") || strings.Contains(e.Message, "Go ") {
				t.Errorf("message %q leaks Go names", e.Message)
			}
			if tt.field != "" {
				if len(e.Fields) == 0 || e.Fields[0].Field != tt.field {
					t.Errorf("fields = %+v, want first %q", e.Fields, tt.field)
				}
			}
		})
	}
}

func TestDecodeTelemetryTypeOptional(t *testing.T) {
	c := testCodec()
	if _, err := c.DecodeTelemetry([]byte(`{"metrics":{"a":1}}`)); err != nil {
		t.Fatalf("type omitted: %v", err)
	}
	if _, err := c.DecodeTelemetry([]byte(`{"type":"ping"}`)); err == nil {
		t.Fatal("ping accepted as telemetry")
	}
}

func TestCommandResult(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{`{"type":"command_result","id":"c1","status":"ok","result":{"x":1}}`, ""},
		{`{"type":"command_result","id":"c1","status":"error","error":"valve stuck"}`, ""},
		{`{"type":"command_result","status":"ok"}`, "id: required"},
		{`{"type":"command_result","id":"c1","status":"done"}`, `status: must be "ok" or "error"`},
		{`{"type":"command_result","id":"c1","status":"ok","result":[1]}`, "result: must be a JSON object"},
		{`{"type":"command_result","id":"c1","status":"ok","metrics":{"a":1}}`, "not allowed"},
	}
	c := testCodec()
	for _, tt := range tests {
		f, err := c.Decode([]byte(tt.in))
		if err != nil {
			t.Fatalf("Decode(%s): %v", tt.in, err)
		}
		_, err = c.CommandResult(f)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("CommandResult(%s) = %v", tt.in, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("CommandResult(%s) = %v, want %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestErrorFrameShape(t *testing.T) {
	c := testCodec()
	_, err := c.DecodeTelemetry([]byte(`{"type":"telemetry","id":"42","metrics":{"temp":1e999}}`))
	var e *Error
	if !errors.As(err, &e) {
		t.Fatal(err)
	}
	got := string(EncodeError("42", e))
	want := `{"type":"error","id":"42","code":"invalid","message":"metrics.temp: must be a finite number","errors":[{"field":"metrics.temp","reason":"must be a finite number"}]}`
	if got != want {
		t.Errorf("frame\n got %s\nwant %s", got, want)
	}
	if got := string(EncodeAck("42")); got != `{"type":"ack","id":"42"}` {
		t.Errorf("ack = %s", got)
	}
}

// FuzzDecode feeds arbitrary bytes through the whole device-frame path: it
// must never panic, the hand-written validity check must agree with the
// validator, and whatever it accepts must encode to line protocol
// InfluxDB parses back to the same values.
func FuzzDecode(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/frames/*.json")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	c := testCodec()
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := c.Decode(data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code == "" || e.Message == "" {
				t.Fatalf("error without code/message: %v", err)
			}
			checkErrorBounded(t, fr, e)
			return
		}
		switch fr.Type {
		case TypeTelemetry:
			checkValidMatches(t, c, fr)
			tel, err := c.Telemetry(fr)
			if err != nil {
				var e *Error
				if errors.As(err, &e) {
					checkErrorBounded(t, fr, e)
				}
				return
			}
			checkRoundTrip(t, "dev-1", nil, tel.Readings)
		case TypeCommandResult:
			_, _ = c.CommandResult(fr)
		}
	})
}

// checkErrorBounded fails if the error frame answering a message is
// larger than MaxErrorFrameBytes.
func checkErrorBounded(t *testing.T, fr *Frame, e *Error) {
	t.Helper()
	id := ""
	if fr != nil {
		id = fr.ID
	}
	if b := EncodeError(id, e); len(b) > MaxErrorFrameBytes {
		t.Fatalf("error frame of %d bytes", len(b))
	}
}

// FuzzValidName checks the hand-written name check against NamePattern.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"temp", "_a.b-c", "1bad", "a b", "", strings.Repeat("x", 64), strings.Repeat("x", 65), "é", "a\x00"} {
		f.Add(s)
	}
	re := regexp.MustCompile(NamePattern)
	f.Fuzz(func(t *testing.T, s string) {
		if ValidName(s) != re.MatchString(s) {
			t.Fatalf("ValidName(%q) = %v, NamePattern says %v", s, ValidName(s), re.MatchString(s))
		}
	})
}

// TestHubTime: hub-assigned times are strictly increasing per device and
// never a whole millisecond, so they equal neither each other nor any ts a
// device sends.
func TestHubTime(t *testing.T) {
	ms := int64(time.Millisecond)
	tests := []struct {
		name      string
		last, now int64
		want      int64
	}{
		{"clock ahead of last", 0, 5*ms + 7, 5*ms + 7},
		{"same receive time", 5*ms + 7, 5*ms + 7, 5*ms + 8},
		{"clock behind last", 9*ms + 1, 5 * ms, 9*ms + 2},
		{"whole millisecond skipped", 0, 5 * ms, 5*ms + 1},
		{"increment lands on a millisecond", 6*ms - 1, 6*ms - 1, 6*ms + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var last atomic.Int64
			last.Store(tt.last)
			if got := HubTime(&last, tt.now); got != tt.want || last.Load() != got {
				t.Errorf("HubTime(%d, %d) = %d (last %d), want %d", tt.last, tt.now, got, last.Load(), tt.want)
			}
		})
	}
	var last atomic.Int64
	var wg sync.WaitGroup
	got := make([][]int64, 8)
	for g := range got {
		wg.Go(func() {
			for range 1000 {
				got[g] = append(got[g], HubTime(&last, testNow.UnixNano()))
			}
		})
	}
	wg.Wait()
	seen := map[int64]bool{}
	for _, ts := range got {
		for i, n := range ts {
			if seen[n] || n%ms == 0 || (i > 0 && n <= ts[i-1]) {
				t.Fatalf("concurrent HubTime gave %d: duplicate, whole millisecond or not increasing", n)
			}
			seen[n] = true
		}
	}
}
