package mqtt

import (
	"crypto/subtle"
	"encoding/json"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/fieldhub/fieldhub/devices"
)

// AuthHook answers an external MQTT broker's authentication and
// authorisation callbacks from the registry, with the same per-device ACL
// as the embedded broker: EMQX's HTTP authenticator/authorizer contract and
// mosquitto-go-auth's HTTP backend (http_response_type json). The broker
// authenticates itself with a shared secret (Authorization: Bearer).
//
// Every answer is 200 with {"result":"allow"|"deny","ok":bool}: EMQX reads
// "result" (a non-200 would mean "ignore", which must never let a device
// through), mosquitto-go-auth reads "ok".
type AuthHook struct {
	Auth     Authenticator
	Exists   func(id string) bool
	Secret   string
	Failures *devices.FailureLimiter
	// OnAuthFailure and OnACLDenied observe refusals (metrics).
	OnAuthFailure func(transport string)
	OnACLDenied   func()
}

// authRequest is the union of both brokers' fields.
type authRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
	ClientID string `json:"clientid"`
	Topic    string `json:"topic"`
	Action   string `json:"action"` // EMQX: publish | subscribe | all
	Acc      int    `json:"acc"`    // mosquitto-go-auth: 1 read, 2 write, 3 readwrite, 4 subscribe
}

func (h *AuthHook) authorised(w http.ResponseWriter, r *http.Request) (authRequest, bool) {
	var req authRequest
	got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if h.Secret == "" || subtle.ConstantTimeCompare([]byte(got), []byte(h.Secret)) != 1 {
		http.Error(w, `{"error":{"code":"unauthorized","message":"missing or wrong broker secret"}}`, http.StatusUnauthorized)
		return req, false
	}
	body := http.MaxBytesReader(w, r.Body, 16<<10)
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "application/x-www-form-urlencoded" {
		if err := r.ParseForm(); err != nil {
			http.Error(w, `{"error":{"code":"bad_request","message":"bad form"}}`, http.StatusBadRequest)
			return req, false
		}
		req.Username, req.Password, req.ClientID = r.PostForm.Get("username"), r.PostForm.Get("password"), r.PostForm.Get("clientid")
		req.Topic, req.Action = r.PostForm.Get("topic"), r.PostForm.Get("action")
		req.Acc, _ = strconv.Atoi(r.PostForm.Get("acc"))
		return req, true
	}
	if err := json.NewDecoder(body).Decode(&req); err != nil {
		http.Error(w, `{"error":{"code":"bad_request","message":"bad JSON"}}`, http.StatusBadRequest)
		return req, false
	}
	return req, true
}

func answer(w http.ResponseWriter, allow bool, why string) {
	w.Header().Set("Content-Type", "application/json")
	res := map[string]any{"result": "deny", "ok": false}
	if allow {
		res = map[string]any{"result": "allow", "ok": true, "is_superuser": false}
	} else if why != "" {
		res["error"] = why
	}
	_ = json.NewEncoder(w).Encode(res)
}

// Refusal reasons for a client id that is not the device id. The broker
// must send the client id (EMQX: "clientid":"${clientid}" in the request
// body, which its default body leaves out; mosquitto-go-auth sends it), so
// a missing one is a broker misconfiguration that would let any device
// take over another's session: refused, never assumed.
const (
	whyNoClientID    = "the broker sent no client id: add \"clientid\":\"${clientid}\" to its request body (see docs/deploy.md)"
	whyOtherClientID = "client id must be the device id"
)

// clientIDRefusal says why req's client id is refused, or "" if it is the
// device id (the username).
func clientIDRefusal(req authRequest) string {
	switch {
	case req.ClientID == "":
		return whyNoClientID
	case req.ClientID != req.Username:
		return whyOtherClientID
	}
	return ""
}

// ServeAuth is POST /api/v1/mqtt/auth: username = device id, password =
// device token, client id = device id. As on the embedded broker, no
// device may take over or resume another's session by its client id; a
// request without a client id is refused (see whyNoClientID).
func (h *AuthHook) ServeAuth(w http.ResponseWriter, r *http.Request) {
	req, ok := h.authorised(w, r)
	if !ok {
		return
	}
	if why := clientIDRefusal(req); why != "" {
		answer(w, false, why)
		return
	}
	// The broker calls on behalf of the device, whose own address is not
	// known here: failures are counted per username. As on every way in,
	// the credentials are checked first and valid ones always pass.
	if _, ok := h.Auth.AuthenticateDevice(req.Username, req.Password); !ok {
		if h.OnAuthFailure != nil {
			h.OnAuthFailure(devices.TransportMQTT)
		}
		if h.Failures.Refuse(nil, "", "mqtt-user", req.Username) { // counted per username; the broker logs
			answer(w, false, "too many failed authentications")
			return
		}
		answer(w, false, "not authorized")
		return
	}
	answer(w, true, "")
}

// ServeACL is POST /api/v1/mqtt/acl: the embedded broker's ACL, for an
// external one. The client id must be the device id here too, so a
// session opened under another client id (before the broker was
// configured to send it, say) reaches nothing.
func (h *AuthHook) ServeACL(w http.ResponseWriter, r *http.Request) {
	req, ok := h.authorised(w, r)
	if !ok {
		return
	}
	if why := clientIDRefusal(req); why != "" {
		if h.OnACLDenied != nil {
			h.OnACLDenied()
		}
		answer(w, false, why)
		return
	}
	var write bool
	switch {
	case req.Action == "publish" || req.Acc == 2:
		write = true
	case req.Action == "subscribe" || req.Acc == 1 || req.Acc == 4:
		write = false
	default: // "all", readwrite, or unknown: allowed only if both would be, which never holds
		answer(w, false, "action must be publish or subscribe")
		return
	}
	allowed := (h.Exists == nil || h.Exists(req.Username)) && topicAllowed(req.Username, req.Topic, write)
	if !allowed && h.OnACLDenied != nil {
		h.OnACLDenied()
	}
	answer(w, allowed, "")
}
