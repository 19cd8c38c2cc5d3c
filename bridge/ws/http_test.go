package ws

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func gzipped(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecodeBody(t *testing.T) {
	const limit = 1024
	msg := []byte(`{"type":"telemetry","metrics":{"a":1}}`)
	tests := []struct {
		name      string
		body      []byte
		encodings []string
		want      []byte
		wantErr   error
	}{
		{"plain", msg, nil, msg, nil},
		{"identity", msg, []string{"identity"}, msg, nil},
		{"gzip", gzipped(t, msg), []string{"gzip"}, msg, nil},
		{"gzip in capitals and x-gzip", gzipped(t, msg), []string{"X-GZIP"}, msg, nil},
		{"gzip then identity", gzipped(t, msg), []string{"gzip, identity"}, msg, nil},
		{"plain at the limit", bytes.Repeat([]byte(" "), limit), nil, bytes.Repeat([]byte(" "), limit), nil},
		{"plain over the limit", bytes.Repeat([]byte(" "), limit+1), nil, nil, errBodyTooLarge},
		{"gzip at the limit", gzipped(t, bytes.Repeat([]byte(" "), limit)), []string{"gzip"}, bytes.Repeat([]byte(" "), limit), nil},
		{"gzip expanding past the limit", gzipped(t, bytes.Repeat([]byte(" "), 1<<20)), []string{"gzip"}, nil, errBodyTooLarge},
		{"gzip twice", gzipped(t, gzipped(t, msg)), []string{"gzip", "gzip"}, nil, errUnsupportedEncoding},
		{"br", msg, []string{"br"}, nil, errUnsupportedEncoding},
		{"deflate", msg, []string{"deflate"}, nil, errUnsupportedEncoding},
		{"not gzip", msg, []string{"gzip"}, nil, errBadEncoding},
		{"empty gzip", nil, []string{"gzip"}, nil, errBadEncoding},
		{"truncated gzip", gzipped(t, msg)[:20], []string{"gzip"}, nil, errBadEncoding},
		{"bad checksum", func() []byte { b := gzipped(t, msg); b[len(b)-8] ^= 1; return b }(), []string{"gzip"}, nil, errBadEncoding},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeBody(bytes.NewReader(tt.body), tt.encodings, limit)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("body %q, want %q", got, tt.want)
			}
		})
	}
}

// FuzzDecodeBody: whatever the bytes, decodeBody never returns more than
// the limit and fails only with its documented errors.
func FuzzDecodeBody(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/bodies/*")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, strings.HasSuffix(s, ".gz"))
	}
	const limit = 4096
	f.Fuzz(func(t *testing.T, body []byte, gz bool) {
		var enc []string
		if gz {
			enc = []string{"gzip"}
		}
		got, err := decodeBody(bytes.NewReader(body), enc, limit)
		switch {
		case err == nil:
			if len(got) > limit {
				t.Fatalf("%d bytes past the limit of %d", len(got), limit)
			}
			if !gz && !bytes.Equal(got, body) {
				t.Fatal("plain body changed")
			}
		case errors.Is(err, errBodyTooLarge), errors.Is(err, errBadEncoding):
		default:
			t.Fatalf("undocumented error %v", err)
		}
	})
}
