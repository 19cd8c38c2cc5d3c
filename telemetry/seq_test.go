package telemetry

import (
	"strings"
	"testing"
)

// TestSeqAndBoot: seq and boot decode exactly, and every value outside
// the contract is refused with its field path.
func TestSeqAndBoot(t *testing.T) {
	c := testCodec()
	tests := []struct {
		name, in  string
		wantField string // "" when accepted
		boot      string
		seqs      []uint64
	}{
		{"single", `{"boot":"a","seq":5,"metrics":{"t":1}}`, "", "a", []uint64{5}},
		{"batch", `{"boot":7,"readings":[{"seq":0,"metrics":{"t":1}},{"seq":9223372036854775807,"metrics":{"t":2}}]}`, "", "7", []uint64{0, 1<<63 - 1}},
		{"no seq", `{"metrics":{"t":1}}`, "", "", nil},
		{"seq 2^63", `{"seq":9223372036854775808,"metrics":{"t":1}}`, "seq", "", nil},
		{"seq 2^64", `{"readings":[{"seq":18446744073709551616,"metrics":{"t":1}}]}`, "readings[0].seq", "", nil},
		{"seq negative", `{"readings":[{"metrics":{"t":1}},{"seq":-1,"metrics":{"t":1}}]}`, "readings[1].seq", "", nil},
		{"seq fraction", `{"seq":1.5,"metrics":{"t":1}}`, "seq", "", nil},
		{"seq exponent", `{"seq":1e3,"metrics":{"t":1}}`, "seq", "", nil},
		{"seq string", `{"seq":"1","metrics":{"t":1}}`, "seq", "", nil},
		{"seq beside readings", `{"seq":1,"readings":[{"metrics":{"t":1}}]}`, "seq", "", nil},
		{"boot control", `{"boot":"a\u0000b","metrics":{"t":1}}`, "boot", "", nil},
		{"boot newline", `{"boot":"a\nb","metrics":{"t":1}}`, "boot", "", nil},
		{"boot long", `{"boot":"` + strings.Repeat("x", 65) + `","metrics":{"t":1}}`, "boot", "", nil},
		{"boot 64", `{"boot":"` + strings.Repeat("x", 64) + `","metrics":{"t":1}}`, "", strings.Repeat("x", 64), nil},
		{"boot empty", `{"boot":"","metrics":{"t":1}}`, "boot", "", nil},
		{"boot object", `{"boot":{},"metrics":{"t":1}}`, "boot", "", nil},
		{"seq metric", `{"metrics":{"seq":1}}`, "metrics.seq", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel, err := c.DecodeTelemetry([]byte(tt.in))
			if tt.wantField != "" {
				e, ok := err.(*Error)
				if !ok || len(e.Fields) == 0 || e.Fields[0].Field != tt.wantField {
					t.Fatalf("err = %v, want a refusal at %q", err, tt.wantField)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tel.Boot != tt.boot {
				t.Fatalf("boot = %q, want %q", tel.Boot, tt.boot)
			}
			var got []uint64
			for _, r := range tel.Readings {
				if r.HasSeq {
					got = append(got, r.Seq)
				}
			}
			if len(got) != len(tt.seqs) {
				t.Fatalf("seqs = %v, want %v", got, tt.seqs)
			}
			for i := range got {
				if got[i] != tt.seqs[i] {
					t.Fatalf("seqs = %v, want %v", got, tt.seqs)
				}
			}
		})
	}
}

// TestAppendLinesSeq: seq is written as an integer field.
func TestAppendLinesSeq(t *testing.T) {
	rs := []Reading{{TS: 1, Metrics: Metrics{"t": Number(1)}, Seq: 1<<63 - 1, HasSeq: true}, {TS: 2, Metrics: Metrics{"t": Number(2)}}}
	got := string(AppendLines(nil, "d1", nil, rs))
	want := "telemetry,device=d1 t=1,seq=9223372036854775807i 1000000\ntelemetry,device=d1 t=2 2000000\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
