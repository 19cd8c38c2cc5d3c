package telemetry

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// checkValidMatches fails if the hand-written check (Codec.valid) and
// the validator (Codec.validate) disagree on the readings of frame fr.
func checkValidMatches(t *testing.T, c *Codec, fr *Frame) {
	t.Helper()
	tel, recv, err := c.readings(fr)
	if err != nil {
		return // refused on its shape, before either check
	}
	hand := c.valid(tel.ID, tel.Readings, recv)
	verr := c.validate(tel.ID, tel.Readings)
	if hand != (verr == nil) {
		t.Fatalf("hand-written check says valid=%v, the validator says %v, for id %q and readings %+v", hand, verr, tel.ID, tel.Readings)
	}
}

// TestValidMatchesValidator: the hand-written check that lets a valid
// message skip the validator gives the validator's verdict on every rule
// at and across its bounds (the frames in testdata and a table), so
// skipping the validator never accepts what it would refuse, nor the
// reverse.
func TestValidMatchesValidator(t *testing.T) {
	c := testCodec()
	now := testNow.UnixMilli()
	future, past := now+DefaultMaxFuture.Milliseconds(), now-DefaultMaxAge.Milliseconds()
	metrics := func(n int) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = fmt.Sprintf(`"m%d":1`, i)
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	batch := func(n int, r string) string {
		return `{"readings":[` + strings.TrimSuffix(strings.Repeat(r+",", n), ",") + `]}`
	}
	frames := []string{
		`{"metrics":{"a":1}}`,
		`{"id":"` + strings.Repeat("i", 64) + `","metrics":{"a":1}}`,
		`{"id":"` + strings.Repeat("i", 65) + `","metrics":{"a":1}}`,
		`{"id":"` + strings.Repeat("é", 64) + `","metrics":{"a":1}}`, // 128 bytes, 64 characters
		`{"id":"` + strings.Repeat("é", 65) + `","metrics":{"a":1}}`,
		`{"id":"` + strings.Repeat("i", 63) + `é","metrics":{"a":1}}`,
		fmt.Sprintf(`{"ts":%d,"metrics":{"a":1}}`, future),
		fmt.Sprintf(`{"ts":%d,"metrics":{"a":1}}`, future+1),
		fmt.Sprintf(`{"ts":%d,"metrics":{"a":1}}`, past),
		fmt.Sprintf(`{"ts":%d,"metrics":{"a":1}}`, past-1),
		`{"ts":0,"metrics":{"a":1}}`,
		`{"ts":-1,"metrics":{"a":1}}`,
		`{"metrics":{}}`,
		`{"metrics":` + metrics(100) + `}`,
		`{"metrics":` + metrics(101) + `}`,
		`{"metrics":{"1a":1}}`, `{"metrics":{"a b":1}}`, `{"metrics":{"` + strings.Repeat("x", 64) + `":1}}`, `{"metrics":{"` + strings.Repeat("x", 65) + `":1}}`,
		`{"metrics":{"time":1}}`, `{"metrics":{"TIME":1}}`, `{"metrics":{"device":1}}`, `{"metrics":{"Device":1}}`, `{"metrics":{"site":1}}`, `{"metrics":{"SITE":1}}`,
		`{"metrics":{"_x":1}}`, `{"metrics":{"time_ms":1,"device2":1,"site.a":1}}`,
		`{"metrics":{"a":null}}`, `{"metrics":{"a":[1]}}`, `{"metrics":{"a":{"b":1}}}`, `{"metrics":{"a":1e999}}`, `{"metrics":{"a":-1e999}}`,
		`{"metrics":{"a":true,"b":false,"c":"x","d":-0.5}}`,
		`{"metrics":{"s":"` + strings.Repeat("x", 256) + `"}}`, `{"metrics":{"s":"` + strings.Repeat("x", 257) + `"}}`,
		`{"metrics":{"s":"` + strings.Repeat("é", 128) + `"}}`, `{"metrics":{"s":"` + strings.Repeat("é", 129) + `"}}`,
		`{"metrics":{"s":"a\nb"}}`, `{"metrics":{"s":"a\u007fb"}}`, `{"metrics":{"s":"a\u0000b"}}`, `{"metrics":{"s":"tab\there"}}`, `{"metrics":{"s":"a\u0080b"}}`,
		`{"readings":[]}`,
		batch(1, `{"metrics":{"a":1}}`),
		batch(1000, `{"metrics":{"a":1}}`),
		batch(1001, `{"metrics":{"a":1}}`),
		batch(3, `{"ts":1}`),
		batch(2, fmt.Sprintf(`{"ts":%d,"metrics":{"a":1}}`, future)),
		`{"readings":[{"metrics":{"a":1}},{"metrics":{"a":1}},{"metrics":{"time":1}}]}`,
		fmt.Sprintf(`{"readings":[{"metrics":{"a":1}},{"ts":%d,"metrics":{"a":1}}]}`, past-1),
		`{"id":"` + strings.Repeat("i", 65) + `","readings":[{"metrics":{"a":1}}]}`,
	}
	seeds, _ := filepath.Glob("testdata/frames/*.json")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, string(b))
	}
	accepted, refused := 0, 0
	for i, in := range frames {
		fr, err := c.DecodeKind([]byte(in), KindTelemetry)
		if err != nil {
			continue
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkValidMatches(t, c, fr) })
		if _, err := c.Telemetry(fr); err == nil {
			accepted++
		} else {
			refused++
		}
	}
	if accepted < 10 || refused < 30 {
		t.Fatalf("the table reached %d accepted and %d refused messages; it no longer tests both sides", accepted, refused)
	}

	// Values JSON cannot carry, built directly.
	for _, rs := range [][]Reading{
		{{TS: now, Metrics: Metrics{"a": Number(math.NaN())}}},
		{{TS: now, Metrics: Metrics{"a": Number(math.Inf(1))}}},
		{{TS: now, Metrics: Metrics{"a": {Kind: KindInvalid}}}},
		{{TS: now, Metrics: Metrics{"a": {Kind: 9}}}},
		{{TS: now, Metrics: Metrics{"a": String("\xff")}}},
		{{TS: now, Metrics: nil}},
		{{TS: now, Metrics: Metrics{"a": Number(1)}}, {TS: now, Metrics: Metrics{"": Number(1)}}},
		{{TS: now, Metrics: Metrics{"a": Bool(true)}}},
	} {
		hand := c.valid("x", rs, testNow)
		if verr := c.validate("x", rs); hand != (verr == nil) {
			t.Fatalf("readings %+v: hand-written check says valid=%v, the validator says %v", rs, hand, verr)
		}
	}
}

// TestTelemetryTwiceOnOneFrame: the Telemetry kept in a frame's own
// allocation goes to the first call only; a second call on the same frame
// gets a Telemetry of its own, so neither sees the other's changes (the
// bridge rewrites Nanos in place).
func TestTelemetryTwiceOnOneFrame(t *testing.T) {
	c := testCodec()
	for _, in := range []string{`{"metrics":{"a":1}}`, `{"readings":[{"metrics":{"a":1}},{"metrics":{"b":2}}]}`} {
		fr, err := c.DecodeKind([]byte(in), KindTelemetry)
		if err != nil {
			t.Fatal(err)
		}
		first, err := c.Telemetry(fr)
		if err != nil {
			t.Fatal(err)
		}
		second, err := c.Telemetry(fr)
		if err != nil {
			t.Fatal(err)
		}
		if first == second || &first.Readings[0] == &second.Readings[0] {
			t.Fatalf("%s: two calls share their Telemetry or readings", in)
		}
		first.Readings[0].Nanos = 1
		if second.Readings[0].Nanos == 1 {
			t.Fatalf("%s: a change to the first call's readings shows in the second's", in)
		}
	}
}
