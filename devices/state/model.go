// Package state owns device state (issue #24): per device a reported
// document (written by the device) and a desired document (written by
// operators), each with a version and per-key updated_at, the delta
// between them, RFC 7386 merge patches and the bounds every document
// keeps. The Service (service.go) is the one writer: it applies patches
// with compare-and-set on the version through a Store (boltstore for one
// instance, pgstore for several), publishes live events and tells the
// transports of desired changes. It may import telemetry only (and the
// JSON library); its stores import it.
package state

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"reflect"
	"slices"
	"strconv"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Default bounds of one document (FIELDHUB_STATE_MAX_*).
const (
	DefaultMaxBytes = 8192
	DefaultMaxDepth = 5
	DefaultMaxKeys  = 100
)

// Limits bound one document, checked on the document a patch would
// produce; a patch is refused whole when the result breaks one. Zero
// fields take the defaults.
type Limits struct {
	MaxBytes int // encoded bytes of a document's state object; default 8192
	MaxDepth int // nesting of objects and arrays, the state object being 1; default 5
	MaxKeys  int // members of one object; default 100
}

func (l *Limits) ensureDefaults() {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	if l.MaxKeys <= 0 {
		l.MaxKeys = DefaultMaxKeys
	}
}

// Object is a decoded JSON object of a state document. Its values are
// nil, bool, float64, string, []any or Object.
type Object = map[string]any

// TimeLayout is the form of updated_at times: RFC 3339 in milliseconds, UTC.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// Doc is one state document, reported or desired: the wire shape
// {"state":{..},"version":N,"updated_at":{"<top-level key>":"<time>"}}.
// A device never written has the zero Doc, which encodes with empty
// objects at version 0.
type Doc struct {
	State     Object            `json:"state"`
	Version   int64             `json:"version"`
	UpdatedAt map[string]string `json:"updated_at"`
}

// norm returns d with nil maps made empty, so that it encodes as the
// contract's {"state":{},"version":0,"updated_at":{}}.
func (d Doc) norm() Doc {
	if d.State == nil {
		d.State = Object{}
	}
	if d.UpdatedAt == nil {
		d.UpdatedAt = map[string]string{}
	}
	return d
}

// Side names one of a device's two documents.
type Side string

// Sides. A device writes Reported, operators write Desired.
const (
	Reported Side = "reported"
	Desired  Side = "desired"
)

// MergePatch applies patch to target as RFC 7386 section 2 defines it
// (null deletes a member; a non-object patch replaces the target). target
// is not modified: the result shares no map with it, though it may share
// untouched values.
func MergePatch(target, patch any) any {
	p, ok := patch.(Object)
	if !ok {
		return patch
	}
	t, ok := target.(Object)
	out := Object{}
	if ok {
		maps.Copy(out, t)
	}
	for k, v := range p {
		if v == nil {
			delete(out, k)
			continue
		}
		out[k] = MergePatch(out[k], v)
	}
	return out
}

// Delta returns the keys of desired whose value differs from reported:
// a key absent from reported is in it; where both are objects, the
// nested delta holds only the differing keys (and the key is left out
// when none differ); arrays and scalars are compared whole.
func Delta(desired, reported Object) Object {
	out := Object{}
	for k, dv := range desired {
		rv, ok := reported[k]
		if !ok {
			out[k] = dv
			continue
		}
		dobj, dok := dv.(Object)
		robj, rok := rv.(Object)
		if dok && rok {
			if sub := Delta(dobj, robj); len(sub) > 0 {
				out[k] = sub
			}
			continue
		}
		if !reflect.DeepEqual(dv, rv) {
			out[k] = dv
		}
	}
	return out
}

// DecodePatch decodes a merge patch for side: it must be one JSON object
// no larger than MaxBytes and no deeper than MaxDepth, every member name
// following the metric-name rule (telemetry.ValidName), numbers finite.
// Depth and size are checked while reading, before the cost of building
// the value. A refusal is a *telemetry.Error with code invalid (bad_json
// for broken syntax) naming the field path, e.g. "reported.a.b".
func DecodePatch(data []byte, side Side, l Limits) (Object, error) {
	l.ensureDefaults()
	root := string(side)
	if len(data) > l.MaxBytes {
		return nil, invalid(root, fmt.Sprintf("patch is larger than %d bytes", l.MaxBytes))
	}
	dec := jsontext.NewDecoder(bytes.NewReader(data))
	if k := dec.PeekKind(); k != '{' {
		if _, err := dec.ReadValue(); err != nil {
			return nil, badJSON(err)
		}
		return nil, invalid(root, "must be a JSON object (a merge patch)")
	}
	v, err := decodeValue(dec, root, 1, l)
	if err != nil {
		return nil, err
	}
	switch _, err := dec.ReadToken(); {
	case err == nil:
		return nil, badJSON(errors.New("data after the top-level object"))
	case !errors.Is(err, io.EOF):
		return nil, badJSON(err)
	}
	return v.(Object), nil
}

func decodeValue(dec *jsontext.Decoder, path string, depth int, l Limits) (any, error) {
	switch dec.PeekKind() {
	case '{', '[':
		if depth > l.MaxDepth {
			return nil, invalid(path, fmt.Sprintf("nested deeper than %d levels", l.MaxDepth))
		}
	}
	tok, err := dec.ReadToken()
	if err != nil {
		return nil, badJSON(err)
	}
	switch tok.Kind() {
	case 'n':
		return nil, nil
	case 't', 'f':
		return tok.Bool(), nil
	case '"':
		return tok.String(), nil
	case '0':
		f, err := strconv.ParseFloat(tok.String(), 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, invalid(path, "number out of range")
		}
		return f, nil
	case '[':
		arr := []any{}
		for i := 0; dec.PeekKind() != ']'; i++ {
			if dec.PeekKind() == 0 {
				_, err := dec.ReadToken()
				return nil, badJSON(err)
			}
			v, err := decodeValue(dec, path+"["+strconv.Itoa(i)+"]", depth+1, l)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		if _, err := dec.ReadToken(); err != nil {
			return nil, badJSON(err)
		}
		return arr, nil
	case '{':
		obj := Object{}
		for dec.PeekKind() != '}' {
			kt, err := dec.ReadToken()
			if err != nil {
				return nil, badJSON(err)
			}
			k := kt.String()
			kp := path + "." + k
			if !telemetry.ValidName(k) {
				return nil, invalid(path+"."+telemetry.Printable(telemetry.Truncate(k, 32)), "key must match "+telemetry.NamePattern)
			}
			v, err := decodeValue(dec, kp, depth+1, l)
			if err != nil {
				return nil, err
			}
			obj[k] = v
		}
		if _, err := dec.ReadToken(); err != nil {
			return nil, badJSON(err)
		}
		return obj, nil
	}
	return nil, badJSON(fmt.Errorf("unexpected %v", tok.Kind()))
}

// Check reports the first bound the state object of side breaks, as an
// invalid *telemetry.Error with the field path, or nil.
func Check(state Object, side Side, l Limits) error {
	l.ensureDefaults()
	root := string(side)
	if err := check(state, root, 1, l); err != nil {
		return err
	}
	b, err := encode(state)
	if err != nil {
		return invalid(root, "cannot be encoded")
	}
	if len(b) > l.MaxBytes {
		return invalid(root, fmt.Sprintf("document would be %d bytes; at most %d", len(b), l.MaxBytes))
	}
	return nil
}

func check(v any, path string, depth int, l Limits) error {
	switch x := v.(type) {
	case Object:
		if depth > l.MaxDepth {
			return invalid(path, fmt.Sprintf("nested deeper than %d levels", l.MaxDepth))
		}
		if len(x) > l.MaxKeys {
			return invalid(path, fmt.Sprintf("has %d keys; at most %d", len(x), l.MaxKeys))
		}
		for _, k := range slices.Sorted(maps.Keys(x)) {
			if !telemetry.ValidName(k) {
				return invalid(path+"."+telemetry.Printable(telemetry.Truncate(k, 32)), "key must match "+telemetry.NamePattern)
			}
			if err := check(x[k], path+"."+k, depth+1, l); err != nil {
				return err
			}
		}
	case []any:
		if depth > l.MaxDepth {
			return invalid(path, fmt.Sprintf("nested deeper than %d levels", l.MaxDepth))
		}
		for i, e := range x {
			if err := check(e, path+"["+strconv.Itoa(i)+"]", depth+1, l); err != nil {
				return err
			}
		}
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			return invalid(path, "number out of range")
		}
	case nil, bool, string:
	default:
		return invalid(path, fmt.Sprintf("unsupported value %T", v))
	}
	return nil
}

// Apply returns doc with patch merged in at now, checked against l: the
// version goes up by one and the updated_at of every top-level key the
// patch changed is now, unless nothing changed (changed false, doc
// returned as it was). A refusal changes nothing.
func Apply(doc Doc, patch Object, side Side, l Limits, now time.Time) (out Doc, changed bool, err error) {
	doc = doc.norm()
	next, _ := MergePatch(doc.State, patch).(Object)
	if err := Check(next, side, l); err != nil {
		return doc, false, err
	}
	if reflect.DeepEqual(next, doc.State) {
		return doc, false, nil
	}
	at := now.UTC().Format(TimeLayout)
	ua := make(map[string]string, len(next))
	for k := range next {
		if old, ok := doc.State[k]; ok && reflect.DeepEqual(old, next[k]) {
			if t, ok := doc.UpdatedAt[k]; ok {
				ua[k] = t
				continue
			}
		}
		ua[k] = at
	}
	return Doc{State: next, Version: doc.Version + 1, UpdatedAt: ua}, true, nil
}

func encode(v any) ([]byte, error) { return json.Marshal(v, json.Deterministic(true)) }

// EncodeDoc returns the JSON of d (for stores).
func EncodeDoc(d Doc) ([]byte, error) { return encode(d.norm()) }

// DecodeDoc parses a stored document.
func DecodeDoc(b []byte) (Doc, error) {
	var d Doc
	if err := json.Unmarshal(b, &d); err != nil {
		return Doc{}, fmt.Errorf("decode state document: %w", err)
	}
	return d.norm(), nil
}

// invalid is the refusal of a patch for the field at path.
func invalid(path, reason string) *telemetry.Error {
	return &telemetry.Error{Code: telemetry.CodeInvalid, Message: path + ": " + reason, Fields: []telemetry.FieldError{{Field: path, Reason: reason}}}
}

func badJSON(err error) *telemetry.Error {
	return &telemetry.Error{Code: telemetry.CodeBadJSON, Message: "merge patch is not valid JSON: " + telemetry.Truncate(err.Error(), 120)}
}
