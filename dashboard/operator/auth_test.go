package operator

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/fieldhub/fieldhub/devices"
)

// rig is a real registry (bbolt in a temp dir) with an admin token.
type rig struct {
	reg   *devices.Registry
	admin devices.OperatorToken
	token string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	st, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := devices.Open(context.Background(), st, devices.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close(); st.Close() })
	tok, secret, err := reg.CreateOperatorToken(context.Background(), "ops", devices.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	return &rig{reg: reg, admin: tok, token: secret}
}

func (r *rig) auth(t *testing.T, o Options) *Auth {
	t.Helper()
	o.Registry = r.reg
	a, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// signIn returns a session id for the rig's admin token.
func (r *rig) signIn(t *testing.T, a *Auth) string {
	t.Helper()
	c, _, err := a.SignIn(httptest.NewRequest("POST", "http://hub.local/api/v1/session", nil), r.token)
	if err != nil {
		t.Fatal(err)
	}
	return c.Value
}

func TestNewNeedsRegistry(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without a registry succeeded")
	}
}

// TestCSRF: a state change authenticated by the session cookie must come
// from the hub's own pages; a bearer token, a safe method or a
// non-browser client (no Origin) is not a cross-site cookie ride.
func TestCSRF(t *testing.T) {
	r := newRig(t)
	a := r.auth(t, Options{})
	sid := r.signIn(t, a)
	tests := []struct {
		name   string
		method string
		origin string
		cookie bool
		bearer bool
		status int // 0: accepted
	}{
		{"cookie POST from another site", "POST", "https://evil.example", true, false, 403},
		{"cookie DELETE from another site", "DELETE", "https://evil.example", true, false, 403},
		{"cookie PUT with a malformed Origin", "PUT", "null", true, false, 403},
		{"cookie POST from the hub's page", "POST", "http://hub.local", true, false, 0},
		{"cookie POST, Origin in another case", "POST", "HTTP://HUB.LOCAL", true, false, 0},
		{"cookie POST without Origin (not a browser)", "POST", "", true, false, 0},
		{"cookie GET from another site", "GET", "https://evil.example", true, false, 0},
		{"cookie HEAD from another site", "HEAD", "https://evil.example", true, false, 0},
		{"bearer POST from another site", "POST", "https://evil.example", false, true, 0},
		{"no credential", "POST", "http://hub.local", false, false, 401},
		{"no credential, from another site", "POST", "https://evil.example", false, false, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, "http://hub.local/api/v1/devices", nil)
			if tt.origin != "" {
				req.Header.Set("Origin", tt.origin)
			}
			if tt.cookie {
				req.AddCookie(&http.Cookie{Name: SessionCookie, Value: sid})
			}
			if tt.bearer {
				req.Header.Set("Authorization", "Bearer "+r.token)
			}
			op, ref := a.Authenticate(req, false)
			switch {
			case tt.status == 0 && ref != nil:
				t.Fatalf("refused %d %s, want accepted", ref.Status, ref.Code)
			case tt.status == 0 && op.TokenID != r.admin.ID:
				t.Fatalf("operator %+v, want token %s", op, r.admin.ID)
			case tt.status != 0 && (ref == nil || ref.Status != tt.status):
				t.Fatalf("answer %+v, want %d", ref, tt.status)
			}
			if got := CrossSiteCookie(req, SessionToken(req)); got != (tt.status == 403) {
				t.Fatalf("CrossSiteCookie = %v", got)
			}
		})
	}
}

// TestStreamOrigin: operator streams take the hub's own origin, the
// configured extra ones and non-browser clients; nothing else.
func TestStreamOrigin(t *testing.T) {
	a := newRig(t).auth(t, Options{AllowedOrigins: []string{"https://ops.example.com/"}})
	tests := []struct {
		origin string
		ok     bool
	}{
		{"", true},
		{"http://hub.local", true},
		{"http://HUB.local", true},
		{"https://ops.example.com", true},
		{"https://OPS.example.com/", true},
		{"https://evil.example", false},
		{"https://ops.example.com.evil.example", false},
		{"http://hub.local.evil.example", false},
		{"null", false},
		{"http://", false},
	}
	for _, tt := range tests {
		t.Run(tt.origin, func(t *testing.T) {
			req := httptest.NewRequest("GET", "http://hub.local/ws/live", nil)
			if tt.origin != "" {
				req.Header.Set("Origin", tt.origin)
			}
			if got := a.StreamOriginAllowed(req); got != tt.ok {
				t.Fatalf("StreamOriginAllowed(%q) = %v, want %v", tt.origin, got, tt.ok)
			}
		})
	}
	// Sign-in and cookie changes take only the hub's own origin.
	req := httptest.NewRequest("POST", "http://hub.local/api/v1/session", nil)
	req.Header.Set("Origin", "https://ops.example.com")
	if SameOrigin(req) {
		t.Fatal("SameOrigin took an extra allowed origin")
	}
}

// TestSessionCookie: the cookie's attributes at sign-in and sign-out.
// Secure follows TLS, and X-Forwarded-Proto counts only from a trusted
// proxy; HttpOnly, SameSite=Strict and Path=/ always; it never holds the
// token; it lives as long as the session's absolute maximum.
func TestSessionCookie(t *testing.T) {
	r := newRig(t)
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
		{"trusted proxy says HTTPS with spaces", true, " HTTPS ", false, true},
		{"trusted proxy says http", true, "http", false, false},
		{"untrusted peer says https", false, "https", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := r.auth(t, Options{FromTrustedProxy: func(*http.Request) bool { return tt.trusted }})
			req := httptest.NewRequest("POST", "http://hub.local/api/v1/session", nil)
			if tt.tls {
				req.TLS = &tls.ConnectionState{}
			}
			if tt.proto != "" {
				req.Header.Set("X-Forwarded-Proto", tt.proto)
			}
			c, op, err := a.SignIn(req, r.token)
			if err != nil {
				t.Fatal(err)
			}
			want := int(r.reg.SessionMax().Seconds())
			if c.Name != SessionCookie || c.Secure != tt.secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode ||
				c.Path != "/" || c.Value == "" || c.Value == r.token || c.MaxAge != want || op.TokenID != r.admin.ID {
				t.Fatalf("sign-in cookie %+v: want Secure=%v, HttpOnly, SameSite=Strict, Path=/, MaxAge=%d, a session id", c, tt.secure, want)
			}
			req.AddCookie(c)
			out, err := a.SignOut(req)
			if err != nil {
				t.Fatal(err)
			}
			if out.Name != SessionCookie || out.Value != "" || out.MaxAge >= 0 || out.Secure != tt.secure || !out.HttpOnly ||
				out.SameSite != http.SameSiteStrictMode || out.Path != "/" {
				t.Fatalf("sign-out cookie %+v: want it cleared with the same attributes", out)
			}
		})
	}
}

// TestSignInRefusals: sign-in and sign-out from another site are refused
// 403; a wrong token is 401 with a challenge, and 429 once that address
// has spent its budget with it, while the right token still signs in.
func TestSignInRefusals(t *testing.T) {
	r := newRig(t)
	failures := 0
	a := r.auth(t, Options{Failures: devices.NewFailureLimiter(0.001, 2), OnAuthFailure: func() { failures++ }})
	cross := httptest.NewRequest("POST", "http://hub.local/api/v1/session", nil)
	cross.Header.Set("Origin", "https://evil.example")
	if _, _, err := a.SignIn(cross, r.token); refusal(err) == nil || refusal(err).Status != 403 {
		t.Fatalf("cross-site sign-in: %v, want 403", err)
	}
	if _, err := a.SignOut(cross); refusal(err) == nil || refusal(err).Status != 403 {
		t.Fatalf("cross-site sign-out: %v, want 403", err)
	}
	req := func() *http.Request { return httptest.NewRequest("POST", "http://hub.local/api/v1/session", nil) }
	for i, want := range []int{401, 401, 429, 429} {
		_, _, err := a.SignIn(req(), "fho_wrong")
		ref := refusal(err)
		if ref == nil || ref.Status != want {
			t.Fatalf("wrong token, attempt %d: %v, want %d", i+1, err, want)
		}
		if want == 401 && (ref.Challenge == "" || ref.Code != "unauthorized") {
			t.Fatalf("401 without its challenge: %+v", ref)
		}
		if want == 429 && (ref.RetryAfter == "" || ref.Code != "rate_limited") {
			t.Fatalf("429 without Retry-After: %+v", ref)
		}
		if _, _, err := a.SignIn(req(), r.token); err != nil {
			t.Fatalf("right token after %d failures: %v", i+1, err)
		}
	}
	if failures != 4 {
		t.Fatalf("OnAuthFailure told of %d failures, want 4", failures)
	}
}

func refusal(err error) *Refusal {
	ref, _ := err.(*Refusal)
	return ref
}

// TestRevokedSessionRefused: a session stops authenticating once it is
// signed out or once its operator token is revoked, on every way a
// credential arrives.
func TestRevokedSessionRefused(t *testing.T) {
	r := newRig(t)
	a := r.auth(t, Options{})
	withCookie := func(sid string) *http.Request {
		req := httptest.NewRequest("GET", "http://hub.local/api/v1/me", nil)
		req.AddCookie(&http.Cookie{Name: SessionCookie, Value: sid})
		return req
	}
	signedOut := r.signIn(t, a)
	if _, ref := a.Authenticate(withCookie(signedOut), false); ref != nil {
		t.Fatalf("fresh session refused: %+v", ref)
	}
	if _, ok := a.Session(withCookie(signedOut)); !ok {
		t.Fatal("fresh session not signed in")
	}
	if _, err := a.SignOut(withCookie(signedOut)); err != nil {
		t.Fatal(err)
	}
	if _, ref := a.Authenticate(withCookie(signedOut), false); ref == nil || ref.Status != 401 {
		t.Fatalf("signed-out session: %+v, want 401", ref)
	}
	revoked := r.signIn(t, a)
	if err := r.reg.RevokeOperatorToken(context.Background(), r.admin.ID); err != nil {
		t.Fatal(err)
	}
	for name, sid := range map[string]string{"signed out": signedOut, "token revoked": revoked} {
		if _, ref := a.Authenticate(withCookie(sid), false); ref == nil || ref.Status != 401 {
			t.Fatalf("%s session: %+v, want 401", name, ref)
		}
		if _, ok := a.Session(withCookie(sid)); ok {
			t.Fatalf("%s session still signed in", name)
		}
	}
	bearer := httptest.NewRequest("GET", "http://hub.local/ws/live?token="+r.token, nil)
	if _, ref := a.Authenticate(bearer, true); ref == nil || ref.Status != 401 {
		t.Fatalf("revoked token in the query: %+v, want 401", ref)
	}
}

// TestCredentialSources: where Authenticate looks for a credential.
func TestCredentialSources(t *testing.T) {
	r := newRig(t)
	a := r.auth(t, Options{})
	sid := r.signIn(t, a)
	tests := []struct {
		name       string
		header     string
		query      string
		cookie     string
		allowQuery bool
		ok         bool
	}{
		{"bearer", "Bearer " + r.token, "", "", false, true},
		{"bearer with spaces", "Bearer  " + r.token + " ", "", "", false, true},
		{"not bearer", "Basic " + r.token, "", "", false, false},
		{"query where allowed", "", r.token, "", true, true},
		{"query where not allowed", "", r.token, "", false, false},
		{"cookie", "", "", sid, false, true},
		{"token as cookie", "", "", r.token, false, false},
		{"bad bearer beats a good cookie", "Bearer fho_wrong", "", sid, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "http://hub.local/api/v1/me", nil)
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			if tt.query != "" {
				req.URL.RawQuery = "token=" + tt.query
			}
			if tt.cookie != "" {
				req.AddCookie(&http.Cookie{Name: SessionCookie, Value: tt.cookie})
			}
			_, ref := a.Authenticate(req, tt.allowQuery)
			if (ref == nil) != tt.ok {
				t.Fatalf("refusal %+v, want ok=%v", ref, tt.ok)
			}
		})
	}
}

func TestOperatorInContext(t *testing.T) {
	if op := From(context.Background()); op != (devices.Operator{}) {
		t.Fatalf("From of an empty context: %+v", op)
	}
	want := devices.Operator{Name: "ops", Role: devices.RoleViewer, TokenID: "t1"}
	if got := From(WithOperator(context.Background(), want)); got != want {
		t.Fatalf("From = %+v, want %+v", got, want)
	}
}
