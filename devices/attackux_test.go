package devices

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/fieldhub/fieldhub/telemetry"
)

// controlIn returns the first control character of s, or -1.
func controlIn(s string) rune {
	for _, c := range s {
		if unicode.IsControl(c) {
			return c
		}
	}
	return -1
}

// TestAttackUXRejectionControlChars: a hostile device sends readings whose
// metric names (JSON keys) carry terminal escapes, tabs and line breaks.
// The codec refuses them, and the refusal is kept for operators. What the
// rejections API returns (and `fieldhub device rejections` prints into a
// terminal table) must hold no control characters the device chose.
func TestAttackUXRejectionControlChars(t *testing.T) {
	ctx := context.Background()
	r := openRegistry(t, filepath.Join(t.TempDir(), "r.db"), Options{})
	if _, err := r.Create(ctx, Spec{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	c := telemetry.NewCodec(telemetry.Limits{}, time.Now)
	tests := []struct{ name, payload string }{
		{"ESC clears the screen", `{"type":"telemetry","metrics":{"\u001b[2J\u001b[1;1Hok":1}}`},
		{"OSC sets the window title", `{"type":"telemetry","metrics":{"\u001b]0;pwned\u0007":1}}`},
		{"tab and newline forge table rows", `{"type":"telemetry","metrics":{"x\n2026-01-01T00:00:00.000Z\tmqtt\tok":1}}`},
	}
	for _, tc := range tests {
		_, err := c.DecodeTelemetry([]byte(tc.payload))
		var te *telemetry.Error
		if !errors.As(err, &te) {
			t.Fatalf("%s: decode gave %v, want a *telemetry.Error", tc.name, err)
		}
		r.Rejected("d1", "mqtt", "", te)
		_, recent, err := r.Rejections("d1")
		if err != nil || len(recent) == 0 {
			t.Fatalf("%s: %v, %d kept", tc.name, err, len(recent))
		}
		got := recent[0]
		if ch := controlIn(got.Field); ch >= 0 {
			t.Errorf("%s: field %q holds control character %U", tc.name, got.Field, ch)
		}
		if ch := controlIn(got.Message); ch >= 0 {
			t.Errorf("%s: message %q holds control character %U", tc.name, got.Message, ch)
		}
	}
}

// TestAttackUXNameControlChars: labels are refused with control
// characters (ValidTagValue) but a device name is checked for length
// only, so PATCH (and create) store NUL, ESC or line breaks, which
// `fieldhub device list` then writes raw into the operator's terminal.
func TestAttackUXNameControlChars(t *testing.T) {
	ctx := context.Background()
	r := openRegistry(t, filepath.Join(t.TempDir(), "r.db"), Options{})
	if _, err := r.Create(ctx, Spec{ID: "d1", Name: "pump"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a\x1b[2Jb", "a\x00b", "line\nbreak", "tab\there", strings.Repeat("\x7f", 3)} {
		d, err := r.Update(ctx, "d1", Update{Name: &name})
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("PATCH name %q: stored as %q (err %v), want ErrInvalid", name, d.Name, err)
		}
		if _, err := r.Create(ctx, Spec{ID: "d2", Name: name}); !errors.Is(err, ErrInvalid) {
			t.Errorf("create with name %q: err %v, want ErrInvalid", name, err)
			_ = r.Delete(ctx, "d2")
		}
	}
}
