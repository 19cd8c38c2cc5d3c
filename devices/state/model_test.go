package state

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/fieldhub/fieldhub/telemetry"
)

func parse(t testing.TB, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("parse %s: %v", s, err)
	}
	return v
}

// TestMergePatchRFC7386 is RFC 7386 appendix A, every example.
func TestMergePatchRFC7386(t *testing.T) {
	for _, tc := range []struct{ target, patch, want string }{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`["a","b"]`, `["c","d"]`, `["c","d"]`},
		{`{"a":"b"}`, `["c"]`, `["c"]`},
		{`{"a":"foo"}`, `null`, `null`},
		{`{"a":"foo"}`, `"bar"`, `"bar"`},
		{`{"e":null}`, `{"a":1}`, `{"e":null,"a":1}`},
		{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
	} {
		target := parse(t, tc.target)
		before := parse(t, tc.target)
		got := MergePatch(target, parse(t, tc.patch))
		if want := parse(t, tc.want); !reflect.DeepEqual(got, want) {
			t.Errorf("MergePatch(%s, %s) = %#v, want %s", tc.target, tc.patch, got, tc.want)
		}
		if !reflect.DeepEqual(target, before) {
			t.Errorf("MergePatch(%s, %s) modified its target", tc.target, tc.patch)
		}
	}
}

func TestDelta(t *testing.T) {
	for _, tc := range []struct{ desired, reported, want string }{
		{`{}`, `{}`, `{}`},
		{`{"a":1}`, `{}`, `{"a":1}`},
		{`{"a":1}`, `{"a":1}`, `{}`},
		{`{"a":1}`, `{"a":2,"b":3}`, `{"a":1}`},
		{`{"a":{"x":1,"y":2}}`, `{"a":{"x":1,"y":3}}`, `{"a":{"y":2}}`},
		{`{"a":{"x":1}}`, `{"a":{"x":1,"z":9}}`, `{}`},
		{`{"a":{"x":1}}`, `{"a":5}`, `{"a":{"x":1}}`},
		{`{"a":[1,2]}`, `{"a":[1,2]}`, `{}`},
		{`{"a":[1,2]}`, `{"a":[2,1]}`, `{"a":[1,2]}`},
		{`{"a":{"b":{"c":true}}}`, `{"a":{"b":{"c":false}}}`, `{"a":{"b":{"c":true}}}`},
	} {
		got := Delta(parse(t, tc.desired).(Object), parse(t, tc.reported).(Object))
		if want := parse(t, tc.want); !reflect.DeepEqual(got, want) {
			t.Errorf("Delta(%s, %s) = %#v, want %s", tc.desired, tc.reported, got, tc.want)
		}
	}
}

func deep(n int) string {
	return strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n)
}

func TestDecodePatchRefusals(t *testing.T) {
	l := Limits{}
	wide := func(n int) string {
		var b strings.Builder
		b.WriteString("{")
		for i := range n {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(`"k` + strings.Repeat("x", i%3) + string(rune('a'+i%26)) + string(rune('a'+i/26)) + `":1`)
		}
		b.WriteString("}")
		return b.String()
	}
	for _, tc := range []struct {
		name, patch, code, field string
	}{
		{"array", `[1]`, telemetry.CodeInvalid, "reported"},
		{"string", `"x"`, telemetry.CodeInvalid, "reported"},
		{"null", `null`, telemetry.CodeInvalid, "reported"},
		{"syntax", `{"a":`, telemetry.CodeBadJSON, ""},
		{"trailing", `{"a":1} {}`, telemetry.CodeBadJSON, ""},
		{"bad key", `{"a":{"b c":1}}`, telemetry.CodeInvalid, "reported.a.b c"},
		{"leading digit", `{"1a":1}`, telemetry.CodeInvalid, "reported.1a"},
		{"too deep object", `{"x":` + deep(5) + `}`, telemetry.CodeInvalid, "reported.x.a.a.a.a"},
		{"too deep array", `{"a":{"b":{"c":{"d":[[1]]}}}}`, telemetry.CodeInvalid, "reported.a.b.c.d[0]"},
		{"too large", `{"a":"` + strings.Repeat("x", 9000) + `"}`, telemetry.CodeInvalid, "reported"},
		{"huge number", `{"a":1e999}`, telemetry.CodeInvalid, "reported.a"},
		{"too many keys", wide(101), telemetry.CodeInvalid, "reported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := DecodePatch([]byte(tc.patch), Reported, l)
			if err == nil {
				_, _, err = Apply(Doc{}, p, Reported, l, time.Now())
			}
			var e *telemetry.Error
			if !errors.As(err, &e) || e.Code != tc.code {
				t.Fatalf("err = %v, want code %s", err, tc.code)
			}
			if tc.field != "" && (len(e.Fields) != 1 || e.Fields[0].Field != tc.field) {
				t.Fatalf("fields = %+v, want %s", e.Fields, tc.field)
			}
		})
	}
	// The deepest and widest allowed pass.
	for _, ok := range []string{deep(4), `{"a":{"b":{"c":{"d":[1]}}}}`, wide(100)} {
		p, err := DecodePatch([]byte(ok), Reported, l)
		if err != nil {
			t.Fatalf("%s: %v", ok, err)
		}
		if _, _, err := Apply(Doc{}, p, Reported, l, time.Now()); err != nil {
			t.Fatalf("apply %s: %v", ok, err)
		}
	}
}

// TestApplyVersions: one version per change, none for a patch that
// changes nothing, updated_at only for changed keys, a refusal leaves
// the document as it was.
func TestApplyVersions(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)
	t1 := t0.Add(time.Second)
	d, changed, err := Apply(Doc{}, parse(t, `{"a":1,"b":{"c":2}}`).(Object), Desired, Limits{}, t0)
	if err != nil || !changed || d.Version != 1 {
		t.Fatalf("first: %+v %v %v", d, changed, err)
	}
	if d.UpdatedAt["a"] != "2026-01-02T03:04:05.006Z" || d.UpdatedAt["b"] != d.UpdatedAt["a"] {
		t.Fatalf("updated_at = %v", d.UpdatedAt)
	}
	same, changed, err := Apply(d, parse(t, `{"a":1,"zz":null}`).(Object), Desired, Limits{}, t1)
	if err != nil || changed || same.Version != 1 {
		t.Fatalf("no-op patch: %+v %v %v", same, changed, err)
	}
	d2, changed, err := Apply(d, parse(t, `{"b":{"c":3},"a":null}`).(Object), Desired, Limits{}, t1)
	if err != nil || !changed || d2.Version != 2 {
		t.Fatalf("second: %+v %v %v", d2, changed, err)
	}
	if _, ok := d2.UpdatedAt["a"]; ok || d2.UpdatedAt["b"] != "2026-01-02T03:04:06.006Z" {
		t.Fatalf("updated_at = %v", d2.UpdatedAt)
	}
	if !reflect.DeepEqual(d.State, parse(t, `{"a":1,"b":{"c":2}}`)) {
		t.Fatalf("Apply changed its input: %v", d.State)
	}
	big := Object{"s": strings.Repeat("x", 8200)}
	kept, _, err := Apply(d2, big, Desired, Limits{}, t1)
	if err == nil || kept.Version != 2 {
		t.Fatalf("oversized: %+v %v", kept, err)
	}
}

// TestBoundsExplode is 100 keys at each of five levels: every patch is
// small, the document it would make is not, and the size bound refuses it.
func TestBoundsExplode(t *testing.T) {
	l := Limits{}
	doc := Doc{}
	var refused bool
	for i := range 100 {
		k := "k" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		p := parse(t, `{"`+k+`":{"a":{"b":{"c":{"d":"`+strings.Repeat("v", 64)+`"}}}}}`).(Object)
		next, _, err := Apply(doc, p, Reported, l, time.Now())
		if err != nil {
			refused = true
			break
		}
		doc = next
	}
	if !refused {
		t.Fatal("the document grew past MaxBytes")
	}
	if b, _ := encode(doc.State); len(b) > l.MaxBytes && l.MaxBytes != 0 || len(b) > DefaultMaxBytes {
		t.Fatalf("document is %d bytes", len(b))
	}
}

func TestEncodeEmpty(t *testing.T) {
	if got := string(View{}.Encode()); got != `{"reported":{"state":{},"version":0,"updated_at":{}},"desired":{"state":{},"version":0,"updated_at":{}},"delta":{}}` {
		t.Fatalf("empty view = %s", got)
	}
	if got := string((Update{}).Encode(true)); got != `{"type":"state","desired":{},"delta":{},"version":0}` {
		t.Fatalf("empty update = %s", got)
	}
}
