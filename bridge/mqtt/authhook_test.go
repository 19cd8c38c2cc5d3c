package mqtt

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/fieldhub/fieldhub/devices"
)

func TestAuthHook(t *testing.T) {
	r := newRig(t, Options{})
	hook := &AuthHook{Auth: r.reg, Exists: r.reg.Exists, Secret: "broker-secret", Failures: devices.NewFailureLimiter(100, 100)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/mqtt/auth", hook.ServeAuth)
	mux.HandleFunc("POST /api/v1/mqtt/acl", hook.ServeACL)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	call := func(path, secret, ctype, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest("POST", srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+secret)
		req.Header.Set("Content-Type", ctype)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	js := func(v map[string]any) string { b, _ := json.Marshal(v); return string(b) }
	tests := []struct {
		name, path, secret, ctype, body string
		status                          int
		allow                           bool
	}{
		{"emqx auth ok", "/api/v1/mqtt/auth", "broker-secret", "application/json", js(map[string]any{"username": "d1", "password": r.tokens["d1"], "clientid": "d1"}), 200, true},
		{"another device's client id", "/api/v1/mqtt/auth", "broker-secret", "application/json", js(map[string]any{"username": "d1", "password": r.tokens["d1"], "clientid": "d2"}), 200, false},
		{"a made-up client id", "/api/v1/mqtt/auth", "broker-secret", "application/x-www-form-urlencoded", url.Values{"username": {"d2"}, "password": {r.tokens["d2"]}, "clientid": {"auto-1234"}}.Encode(), 200, false},
		{"wrong token", "/api/v1/mqtt/auth", "broker-secret", "application/json", js(map[string]any{"username": "d1", "password": "fhd_x", "clientid": "d1"}), 200, false},
		{"other device's token", "/api/v1/mqtt/auth", "broker-secret", "application/json", js(map[string]any{"username": "d1", "password": r.tokens["d2"], "clientid": "d1"}), 200, false},
		// EMQX's default body: username and password only.
		{"no client id (EMQX default body)", "/api/v1/mqtt/auth", "broker-secret", "application/json", js(map[string]any{"username": "d1", "password": r.tokens["d1"]}), 200, false},
		{"empty client id", "/api/v1/mqtt/auth", "broker-secret", "application/json", js(map[string]any{"username": "d1", "password": r.tokens["d1"], "clientid": ""}), 200, false},
		{"form without client id", "/api/v1/mqtt/auth", "broker-secret", "application/x-www-form-urlencoded", url.Values{"username": {"d2"}, "password": {r.tokens["d2"]}}.Encode(), 200, false},
		{"form auth (mosquitto-go-auth)", "/api/v1/mqtt/auth", "broker-secret", "application/x-www-form-urlencoded", url.Values{"username": {"d2"}, "password": {r.tokens["d2"]}, "clientid": {"d2"}}.Encode(), 200, true},
		{"wrong broker secret", "/api/v1/mqtt/auth", "guess", "application/json", js(map[string]any{"username": "d1", "password": r.tokens["d1"], "clientid": "d1"}), 401, false},
		{"publish own telemetry", "/api/v1/mqtt/acl", "broker-secret", "application/json", js(map[string]any{"username": "d1", "clientid": "d1", "topic": "devices/d1/telemetry", "action": "publish"}), 200, true},
		{"subscribe own commands (acc 4)", "/api/v1/mqtt/acl", "broker-secret", "application/json", js(map[string]any{"username": "d1", "clientid": "d1", "topic": "devices/d1/commands", "acc": 4}), 200, true},
		{"publish to another device", "/api/v1/mqtt/acl", "broker-secret", "application/json", js(map[string]any{"username": "d1", "clientid": "d1", "topic": "devices/d2/telemetry", "action": "publish"}), 200, false},
		{"prefix trick", "/api/v1/mqtt/acl", "broker-secret", "application/json", js(map[string]any{"username": "d1", "clientid": "d1", "topic": "devices/d10/telemetry", "action": "publish"}), 200, false},
		{"wildcard subscribe", "/api/v1/mqtt/acl", "broker-secret", "application/json", js(map[string]any{"username": "d1", "clientid": "d1", "topic": "devices/#", "action": "subscribe"}), 200, false},
		{"publish to own commands", "/api/v1/mqtt/acl", "broker-secret", "application/json", js(map[string]any{"username": "d1", "clientid": "d1", "topic": "devices/d1/commands", "action": "publish"}), 200, false},
		{"acl without client id", "/api/v1/mqtt/acl", "broker-secret", "application/json", js(map[string]any{"username": "d1", "topic": "devices/d1/telemetry", "action": "publish"}), 200, false},
		{"acl with another device's client id", "/api/v1/mqtt/acl", "broker-secret", "application/json", js(map[string]any{"username": "d1", "clientid": "d2", "topic": "devices/d1/telemetry", "action": "publish"}), 200, false},
		{"acl form (mosquitto-go-auth)", "/api/v1/mqtt/acl", "broker-secret", "application/x-www-form-urlencoded", url.Values{"username": {"d2"}, "clientid": {"d2"}, "topic": {"devices/d2/telemetry"}, "acc": {"2"}}.Encode(), 200, true},
		{"unknown device", "/api/v1/mqtt/acl", "broker-secret", "application/json", js(map[string]any{"username": "ghost", "clientid": "ghost", "topic": "devices/ghost/telemetry", "action": "publish"}), 200, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, m := call(tt.path, tt.secret, tt.ctype, tt.body)
			if st != tt.status {
				t.Fatalf("status %d, want %d (%v)", st, tt.status, m)
			}
			if st == 200 && (m["result"] == "allow") != tt.allow || st == 200 && m["ok"] != tt.allow {
				t.Fatalf("answer %v, want allow=%v", m, tt.allow)
			}
		})
	}
	// A broker configured without the client id is told how to fix it.
	_, m := call("/api/v1/mqtt/auth", "broker-secret", "application/json", js(map[string]any{"username": "d1", "password": r.tokens["d1"]}))
	if why, _ := m["error"].(string); !strings.Contains(why, "${clientid}") {
		t.Fatalf("refusal without a client id says %q, want it to name ${clientid}", why)
	}
}
