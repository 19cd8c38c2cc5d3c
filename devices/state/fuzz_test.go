package state

import (
	"errors"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// FuzzMergePatch applies two fuzzed patches in turn: nothing panics, a
// refusal is a *telemetry.Error and changes nothing, and every document
// that results keeps the bounds.
func FuzzMergePatch(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":{"b":{"c":{"d":1}}}}`, `{"a":null}`, `[1]`, `{"a":[1,{"b":2}]}`, `{"a":"` + "x" + `"}`, `{"a":{"b":null}}`} {
		f.Add([]byte(s), []byte(`{"a":{"x":true}}`))
	}
	l := Limits{MaxBytes: 512, MaxDepth: 3, MaxKeys: 8}
	f.Fuzz(func(t *testing.T, p1, p2 []byte) {
		doc := Doc{}
		for _, p := range [][]byte{p1, p2} {
			patch, err := DecodePatch(p, Desired, l)
			if err != nil {
				var e *telemetry.Error
				if !errors.As(err, &e) {
					t.Fatalf("refusal is %T %v", err, err)
				}
				continue
			}
			next, changed, err := Apply(doc, patch, Desired, l, time.Unix(0, 0))
			if err != nil {
				var e *telemetry.Error
				if !errors.As(err, &e) || len(e.Fields) == 0 {
					t.Fatalf("refusal %v has no field path", err)
				}
				if next.Version != doc.Version {
					t.Fatal("a refusal changed the version")
				}
				continue
			}
			// Bounds measured here, not by Check: the oracle is independent.
			if d, k := measure(next.State); d > l.MaxDepth || k > l.MaxKeys {
				t.Fatalf("result has depth %d, %d keys in one object: %v", d, k, next.State)
			}
			if b, _ := encode(next.State); len(b) > l.MaxBytes {
				t.Fatalf("result is %d bytes", len(b))
			}
			if changed != (next.Version == doc.Version+1) || (!changed && next.Version != doc.Version) {
				t.Fatalf("changed=%v but version %d -> %d", changed, doc.Version, next.Version)
			}
			doc = next
		}
	})
}

// measure returns the nesting depth of v (an object or array is one
// level more than its deepest member) and the most keys in one object.
func measure(v any) (depth, keys int) {
	switch x := v.(type) {
	case Object:
		keys = len(x)
		for _, e := range x {
			d, k := measure(e)
			depth, keys = max(depth, d), max(keys, k)
		}
		return depth + 1, keys
	case []any:
		for _, e := range x {
			d, k := measure(e)
			depth, keys = max(depth, d), max(keys, k)
		}
		return depth + 1, keys
	}
	return 0, 0
}
