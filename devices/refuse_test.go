package devices

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestRefuse: the shared failed-authentication flow limits per (address,
// identity) after the burst, logs Info within the budget and Debug once
// limited, and a nil limiter never limits.
func TestRefuse(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	l := NewFailureLimiter(0.001, 2)
	steps := []struct {
		addr, id string
		limited  bool
		level    string
	}{
		{"1.2.3.4", "tok", false, "INFO"},
		{"1.2.3.4", "tok", false, "INFO"},
		{"1.2.3.4", "tok", true, "DEBUG"},
		{"1.2.3.4", "other", false, "INFO"},
		{"5.6.7.8", "tok", false, "INFO"},
	}
	for i, st := range steps {
		buf.Reset()
		if got := l.Refuse(log, "auth failed", st.addr, st.id, "transport", "ws"); got != st.limited {
			t.Fatalf("step %d: limited = %v, want %v", i, got, st.limited)
		}
		line := buf.String()
		if !strings.Contains(line, "level="+st.level) || !strings.Contains(line, "remote="+st.addr) || !strings.Contains(line, "transport=ws") || strings.Contains(line, st.id+" ") {
			t.Fatalf("step %d: log line %q", i, line)
		}
	}
	var none *FailureLimiter
	for range 5 {
		if none.Refuse(nil, "x", "a", "b") {
			t.Fatal("a nil limiter limited")
		}
	}
}
