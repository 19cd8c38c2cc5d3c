package devices

import (
	"net/http/httptest"
	"testing"
)

func TestOriginAllowed(t *testing.T) {
	allowed := []string{"https://ops.example.com/"}
	tests := []struct {
		name, origin string
		want         bool
	}{
		{"no origin (a tool)", "", true},
		{"the hub itself", "http://hub.local:8080", true},
		{"the hub, other case", "http://HUB.local:8080", true},
		{"allowed origin", "https://ops.example.com", true},
		{"allowed origin, other case", "https://OPS.example.com", true},
		{"foreign site", "https://evil.example", false},
		{"hub host on another port", "http://hub.local:9090", false},
		{"null origin", "null", false},
		{"unparsable", "http://[::1", false},
		{"allowed host, other scheme", "http://ops.example.com", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "http://hub.local:8080/ws/live", nil)
			if tt.origin != "" {
				r.Header.Set("Origin", tt.origin)
			}
			if got := OriginAllowed(r, allowed); got != tt.want {
				t.Fatalf("OriginAllowed(%q) = %v, want %v", tt.origin, got, tt.want)
			}
		})
	}
}
