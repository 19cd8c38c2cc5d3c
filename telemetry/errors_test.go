package telemetry

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// badBatch is a telemetry batch of readings with n invalid metric names in
// all (100 to a reading): the shape that once turned 239 KB into a 5.6 MB
// error frame.
func badBatch(n int) string {
	var b strings.Builder
	b.WriteString(`{"type":"telemetry","id":"m1","readings":[`)
	for r := 0; n > 0; r++ {
		if r > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"metrics":{`)
		for i := 0; i < 100 && n > 0; i, n = i+1, n-1 {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"%d":0`, i)
		}
		b.WriteString(`}}`)
	}
	b.WriteString(`]}`)
	return b.String()
}

func TestErrorFrameBounded(t *testing.T) {
	long := strings.Repeat("x", 100<<10)
	tests := []struct {
		name      string
		in        string
		wantLen   int    // entries in "errors", the final "..." included
		wantMore  string // reason of the final entry, "" if none
		wantFirst string // first field path
	}{
		{"thousands of bad fields", badBatch(5000), MaxFieldErrors + 1, "and 4980 more", "readings[0].metrics.0"},
		{"exactly the cap", badBatch(MaxFieldErrors), MaxFieldErrors, "", "readings[0].metrics.0"},
		{"one over the cap", badBatch(MaxFieldErrors + 1), MaxFieldErrors + 1, "and 1 more", "readings[0].metrics.0"},
		{"a very long bad name", `{"type":"telemetry","metrics":{"1` + long + `":0}}`, 1, "", "metrics.1" + long[:MaxFieldPathLen-len("metrics.1")-3] + "..."},
		{"many long bad names", `{"type":"telemetry","metrics":{` + manyNames(50, "1"+strings.Repeat("y", 500)) + `}}`, MaxFieldErrors + 1, "and 30 more", ""},
		{"control characters escape sixfold", `{"type":"telemetry","metrics":{` + manyNames(50, "\\u0001"+strings.Repeat("\\u0001", 100)) + `}}`, -1, "", ""},
		{"a very long unknown member", `{"type":"telemetry","` + long + `":1}`, 0, "", ""},
		{"a very long id", `{"type":"telemetry","id":"` + long + `","metrics":{"1":0}}`, 2, "", "id"},
	}
	c := testCodec()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := c.Decode([]byte(tt.in))
			if err == nil {
				_, err = c.Telemetry(f)
			}
			e, ok := err.(*Error)
			if !ok {
				t.Fatalf("err = %v, want *Error", err)
			}
			id := ""
			if f != nil {
				id = f.ID
			}
			b := EncodeError(id, e)
			if len(b) > MaxErrorFrameBytes {
				t.Fatalf("error frame of %d bytes from %d bytes of input; the bound is %d", len(b), len(tt.in), MaxErrorFrameBytes)
			}
			var fr ErrorFrame
			if err := json.Unmarshal(b, &fr); err != nil {
				t.Fatalf("frame %s: %v", b, err)
			}
			if len(fr.ID) > MaxIDLen || len(fr.Message) > MaxErrorMessageLen {
				t.Fatalf("id of %d bytes, message of %d bytes", len(fr.ID), len(fr.Message))
			}
			if tt.wantLen >= 0 && len(fr.Errors) != tt.wantLen {
				t.Fatalf("%d entries, want %d: %s", len(fr.Errors), tt.wantLen, b)
			}
			if tt.wantLen < 0 && (len(fr.Errors) == 0 || fr.Errors[len(fr.Errors)-1].Field != MoreField) {
				t.Fatalf("escaping past the bound should move entries into the count: %s", b)
			}
			for i, fe := range fr.Errors {
				if len(fe.Field) > MaxFieldPathLen || len(fe.Reason) > MaxReasonLen {
					t.Fatalf("entry %d: field of %d bytes, reason of %d bytes", i, len(fe.Field), len(fe.Reason))
				}
			}
			if tt.wantMore != "" {
				last := fr.Errors[len(fr.Errors)-1]
				if last.Field != MoreField || last.Reason != tt.wantMore {
					t.Fatalf("last entry %+v, want %q %q", last, MoreField, tt.wantMore)
				}
			}
			if tt.wantFirst != "" && fr.Errors[0].Field != tt.wantFirst {
				t.Fatalf("first entry %q, want %q", fr.Errors[0].Field, tt.wantFirst)
			}
		})
	}
}

func manyNames(n int, prefix string) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%s%d":0`, prefix, i)
	}
	return b.String()
}

// TestErrorFrameKeepsSmallErrorsWhole checks the bounds change nothing for
// an ordinary refusal.
func TestErrorFrameKeepsSmallErrorsWhole(t *testing.T) {
	e := &Error{Code: CodeInvalid, Message: "metrics.t: must be a finite number", Fields: []FieldError{{Field: "metrics.t", Reason: "must be a finite number"}}}
	got := string(EncodeError("7", e))
	want := `{"type":"error","id":"7","code":"invalid","message":"metrics.t: must be a finite number","errors":[{"field":"metrics.t","reason":"must be a finite number"}]}`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}
