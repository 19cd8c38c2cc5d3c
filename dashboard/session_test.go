package dashboard

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldhub/fieldhub/devices"
)

// TestSessionCookieSecure: the cookie is Secure when the browser reached
// the hub over TLS, and X-Forwarded-Proto counts only from a trusted
// proxy.
func TestSessionCookieSecure(t *testing.T) {
	st, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := devices.Open(context.Background(), st, devices.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close(); st.Close() })
	_, token, _ := reg.CreateOperatorToken(context.Background(), "ops", devices.RoleViewer)
	tests := []struct {
		name    string
		trusted bool
		proto   string
		tls     bool
		secure  bool
	}{
		{"plain http", false, "", false, false},
		{"hub terminates TLS", false, "", true, true},
		{"trusted proxy says https", true, "https", false, true},
		{"trusted proxy says http", true, "http", false, false},
		{"untrusted peer says https", false, "https", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api, err := New(Options{Registry: reg, FromTrustedProxy: func(*http.Request) bool { return tt.trusted }})
			if err != nil {
				t.Fatal(err)
			}
			mux := http.NewServeMux()
			api.Register(mux)
			var req *http.Request
			if tt.tls {
				req = httptest.NewRequest("POST", "https://hub.local/api/v1/session", strings.NewReader(`{"token":"`+token+`"}`))
			} else {
				req = httptest.NewRequest("POST", "http://hub.local/api/v1/session", strings.NewReader(`{"token":"`+token+`"}`))
			}
			if tt.proto != "" {
				req.Header.Set("X-Forwarded-Proto", tt.proto)
			}
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			cookies := rec.Result().Cookies()
			if rec.Code != 204 || len(cookies) != 1 {
				t.Fatalf("sign-in: %d %v", rec.Code, cookies)
			}
			c := cookies[0]
			if c.Secure != tt.secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Value == token {
				t.Fatalf("cookie %+v: want Secure=%v, HttpOnly, SameSite=Strict, no token", c, tt.secure)
			}
		})
	}
}
