package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/fieldhub/fieldhub/dashboard/operator"
	"github.com/fieldhub/fieldhub/devices"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

type apiRig struct {
	srv                     *httptest.Server
	reg                     *devices.Registry
	path                    string
	admin, operator, viewer string
	logs                    *lockedBuf
}

func newAPIRig(t *testing.T, path string) *apiRig {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "registry.db")
	}
	st, err := devices.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := devices.Open(context.Background(), st, devices.Options{})
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuf{}
	api, err := New(Options{Registry: reg, Failures: devices.NewFailureLimiter(2, 5), MaxBodyBytes: 4096,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	r := &apiRig{srv: httptest.NewServer(mux), reg: reg, path: path, logs: logs}
	t.Cleanup(func() { r.srv.Close(); reg.Close(); st.Close() })
	ctx := context.Background()
	r.admin, _ = reg.EnsureAdmin(ctx)
	if r.admin == "" { // reopened store: make a fresh admin
		_, r.admin, _ = reg.CreateOperatorToken(ctx, "admin2", devices.RoleAdmin)
	}
	_, r.operator, _ = reg.CreateOperatorToken(ctx, "ops", devices.RoleOperator)
	_, r.viewer, _ = reg.CreateOperatorToken(ctx, "screen", devices.RoleViewer)
	return r
}

func (r *apiRig) call(t *testing.T, method, path, token, ctype string, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, r.srv.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(data, &m)
	return resp.StatusCode, m
}

func errCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

func TestDeviceLifecycle(t *testing.T) {
	r := newAPIRig(t, "")
	st, m := r.call(t, "POST", "/api/v1/devices", r.admin, "", `{"id":"pump-1","name":"Pump","labels":{"site":"north"}}`)
	if st != 201 || m["token"] == nil || m["device"].(map[string]any)["id"] != "pump-1" {
		t.Fatalf("create: %d %v", st, m)
	}
	devToken := m["token"].(string)
	if st, m := r.call(t, "GET", "/api/v1/devices/pump-1", r.viewer, "", ""); st != 200 || m["device"].(map[string]any)["name"] != "Pump" {
		t.Fatalf("get: %d %v", st, m)
	}
	if st, m := r.call(t, "GET", "/api/v1/devices?label=site=north", r.viewer, "", ""); st != 200 || m["total"].(float64) != 1 {
		t.Fatalf("list: %d %v", st, m)
	}
	st, m = r.call(t, "POST", "/api/v1/devices/pump-1/token", r.admin, "", `{"grace":"1h"}`)
	if st != 200 || m["token"] == devToken {
		t.Fatalf("rotate: %d %v", st, m)
	}
	if st, _ := r.call(t, "POST", "/api/v1/devices/pump-1/token", r.admin, "", ""); st != 200 {
		t.Fatalf("rotate without body: %d", st)
	}
	if st, _ := r.call(t, "DELETE", "/api/v1/devices/pump-1", r.admin, "", ""); st != 204 {
		t.Fatalf("delete: %d", st)
	}
	if st, m := r.call(t, "GET", "/api/v1/devices/pump-1", r.viewer, "", ""); st != 404 || errCode(m) != "not_found" {
		t.Fatalf("get deleted: %d %v", st, m)
	}
	if strings.Contains(r.logs.String(), devToken) || strings.Contains(r.logs.String(), r.admin) {
		t.Fatal("a token appears in the logs")
	}
}

func TestErrorsAndRoles(t *testing.T) {
	r := newAPIRig(t, "")
	r.call(t, "POST", "/api/v1/devices", r.admin, "", `{"id":"dup"}`)
	tests := []struct {
		name, method, path, token, body string
		status                          int
		code                            string
	}{
		{"duplicate id", "POST", "/api/v1/devices", r.admin, `{"id":"dup"}`, 409, "conflict"},
		{"invalid id", "POST", "/api/v1/devices", r.admin, `{"id":"bad/id"}`, 400, "bad_request"},
		{"unknown field", "POST", "/api/v1/devices", r.admin, `{"id":"x","colour":"red"}`, 400, "bad_request"},
		{"not json", "POST", "/api/v1/devices", r.admin, `{"id":`, 400, "bad_request"},
		{"too large", "POST", "/api/v1/devices", r.admin, `{"id":"x","name":"` + strings.Repeat("n", 5000) + `"}`, 413, "too_large"},
		{"viewer cannot create", "POST", "/api/v1/devices", r.viewer, `{"id":"v1"}`, 403, "forbidden"},
		{"operator cannot create", "POST", "/api/v1/devices", r.operator, `{"id":"o1"}`, 403, "forbidden"},
		{"operator cannot delete", "DELETE", "/api/v1/devices/dup", r.operator, ``, 403, "forbidden"},
		{"operator cannot list tokens", "GET", "/api/v1/tokens", r.operator, ``, 403, "forbidden"},
		{"missing token", "GET", "/api/v1/devices", "", ``, 401, "unauthorized"},
		{"wrong token", "GET", "/api/v1/devices", "fho_nope", ``, 401, "unauthorized"},
		{"unknown device", "DELETE", "/api/v1/devices/ghost", r.admin, ``, 404, "not_found"},
		{"bad grace", "POST", "/api/v1/devices/dup/token", r.admin, `{"grace":"soon"}`, 400, "bad_request"},
		{"bad role", "POST", "/api/v1/tokens", r.admin, `{"name":"x","role":"root"}`, 400, "bad_request"},
		{"bad limit", "GET", "/api/v1/devices?limit=0", r.viewer, ``, 400, "bad_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, m := r.call(t, tt.method, tt.path, tt.token, "", tt.body)
			if st != tt.status || errCode(m) != tt.code {
				t.Fatalf("%d %v, want %d %s", st, m, tt.status, tt.code)
			}
			if m["error"].(map[string]any)["message"] == "" {
				t.Fatal("empty message")
			}
		})
	}
	if st, _ := r.call(t, "GET", "/api/v1/devices", r.viewer, "", ""); st != 200 {
		t.Fatalf("viewer list: %d", st)
	}
}

func TestOperatorTokensAndRevocation(t *testing.T) {
	r := newAPIRig(t, "")
	st, m := r.call(t, "POST", "/api/v1/tokens", r.admin, "", `{"name":"night shift","role":"operator"}`)
	if st != 201 {
		t.Fatalf("create token: %d %v", st, m)
	}
	secret := m["secret"].(string)
	id := m["token"].(map[string]any)["id"].(string)
	if st, m := r.call(t, "GET", "/api/v1/me", secret, "", ""); st != 200 || m["role"] != "operator" {
		t.Fatalf("me: %d %v", st, m)
	}
	st, m = r.call(t, "GET", "/api/v1/tokens", r.admin, "", "")
	if st != 200 || len(m["tokens"].([]any)) != 4 {
		t.Fatalf("list tokens: %d %v", st, m)
	}
	if strings.Contains(fmt.Sprint(m), "hash") {
		t.Fatal("token hashes are listed")
	}
	if st, _ := r.call(t, "DELETE", "/api/v1/tokens/"+id, r.admin, "", ""); st != 204 {
		t.Fatalf("revoke: %d", st)
	}
	if st, _ := r.call(t, "GET", "/api/v1/me", secret, "", ""); st != 401 {
		t.Fatalf("revoked token: %d", st)
	}
}

func TestFailedAuthRateLimited(t *testing.T) {
	r := newAPIRig(t, "")
	var last int
	for range 20 {
		last, _ = r.call(t, "GET", "/api/v1/devices", "fho_guess", "", "")
	}
	if last != 429 {
		t.Fatalf("after 20 failures: %d, want 429", last)
	}
	if strings.Contains(r.logs.String(), "fho_guess") {
		t.Fatal("the guessed secret was logged")
	}
}

func TestBulkImport(t *testing.T) {
	r := newAPIRig(t, "")
	var lines strings.Builder
	for i := range 500 {
		fmt.Fprintf(&lines, `{"id":"sim-%d","labels":{"fleet":"a"}}`+"\n", i)
	}
	st, m := r.call(t, "POST", "/api/v1/devices:batch", r.admin, "application/x-ndjson", lines.String())
	if st != 201 || len(m["devices"].([]any)) != 500 {
		t.Fatalf("jsonl: %d %v", st, errCode(m))
	}
	csvBody := "id,name,labels\ncsv-1,First,site=n;zone=2\ncsv-2,Second,\n"
	req, _ := http.NewRequest("POST", r.srv.URL+"/api/v1/devices:batch", strings.NewReader(csvBody))
	req.Header.Set("Authorization", "Bearer "+r.admin)
	req.Header.Set("Content-Type", "text/csv")
	req.Header.Set("Accept", "text/csv")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 || !strings.HasPrefix(string(out), "id,token\ncsv-1,fhd_") {
		t.Fatalf("csv: %d %s", resp.StatusCode, out)
	}
	d, err := r.reg.Get("csv-1")
	if err != nil || d.Labels["zone"] != "2" {
		t.Fatalf("csv labels: %+v %v", d, err)
	}
	// All or nothing: one duplicate creates none.
	st, _ = r.call(t, "POST", "/api/v1/devices:batch", r.admin, "application/x-ndjson", `{"id":"new-1"}`+"\n"+`{"id":"sim-3"}`)
	if st != 409 || r.reg.Exists("new-1") {
		t.Fatalf("duplicate batch: %d, new-1 exists %v", st, r.reg.Exists("new-1"))
	}
}

func TestSessionCookieAndCSRF(t *testing.T) {
	r := newAPIRig(t, "")
	post := func(path, body string, hdr map[string]string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("POST", r.srv.URL+path, strings.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := post("/api/v1/session", `{"token":"fho_wrong"}`, nil); resp.StatusCode != 401 {
		t.Fatalf("wrong token sign-in: %d", resp.StatusCode)
	}
	resp := post("/api/v1/session", `{"token":"`+r.admin+`"}`, nil)
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == operator.SessionCookie {
			cookie = c
		}
	}
	if resp.StatusCode != 204 || cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		t.Fatalf("sign-in: %d cookie %+v", resp.StatusCode, cookie)
	}
	withCookie := operator.SessionCookie + "=" + cookie.Value
	// A cookie-authenticated change from another site is refused...
	if resp := post("/api/v1/devices", `{"id":"x1"}`, map[string]string{"Cookie": withCookie, "Origin": "https://evil.example"}); resp.StatusCode != 403 {
		t.Fatalf("cross-site POST with cookie: %d, want 403", resp.StatusCode)
	}
	// ...from the hub's own page it works.
	if resp := post("/api/v1/devices", `{"id":"x2"}`, map[string]string{"Cookie": withCookie, "Origin": r.srv.URL}); resp.StatusCode != 201 {
		t.Fatalf("same-origin POST with cookie: %d", resp.StatusCode)
	}
	if r.reg.Exists("x1") || !r.reg.Exists("x2") {
		t.Fatal("CSRF check let the wrong request through")
	}
	// The page learns it is signed in without a failing request.
	req, _ := http.NewRequest("GET", r.srv.URL+"/api/v1/session", nil)
	req.Header.Set("Cookie", withCookie)
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	_ = json.NewDecoder(resp2.Body).Decode(&s)
	resp2.Body.Close()
	if s["signed_in"] != true || s["role"] != "admin" {
		t.Fatalf("session: %v", s)
	}
}

// TestFailedAuthSparesValidTokens: a stream of bad tokens from an address
// never refuses a valid token from the same address.
func TestFailedAuthSparesValidTokens(t *testing.T) {
	r := newAPIRig(t, "")
	for i := range 40 {
		r.call(t, "GET", "/api/v1/devices", fmt.Sprintf("fho_guess%d", i%2), "", "")
		if st, _ := r.call(t, "GET", "/api/v1/devices", r.admin, "", ""); st != 200 {
			t.Fatalf("valid token after %d failures: %d", i+1, st)
		}
	}
}
