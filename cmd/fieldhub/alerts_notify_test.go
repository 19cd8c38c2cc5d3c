package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/dashboard/alerts/notify"
	"github.com/fieldhub/fieldhub/dashboard/alerts/notify/alertmanagertest"
)

// amReceiver records what a real Alertmanager forwards to its webhook
// receiver: the status ("firing"/"resolved") of each alert, by device.
type amReceiver struct {
	mu   sync.Mutex
	seen []amAlert
}

type amAlert struct {
	Status string            `json:"status"`
	Labels map[string]string `json:"labels"`
}

func (r *amReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var msg struct {
		Alerts []amAlert `json:"alerts"`
	}
	if err := json.NewDecoder(io.LimitReader(req.Body, 1<<20)).Decode(&msg); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	r.mu.Lock()
	r.seen = append(r.seen, msg.Alerts...)
	r.mu.Unlock()
}

func (r *amReceiver) saw(status, device string) (amAlert, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.seen {
		if a.Status == status && a.Labels["device"] == device {
			return a, true
		}
	}
	return amAlert{}, false
}

// hookReceiver is a webhook receiver that answers 503 while down and
// otherwise checks each signature and counts deliveries per key.
type hookReceiver struct {
	t      *testing.T
	secret []byte
	mu     sync.Mutex
	down   bool
	failed int
	got    map[string]int // idempotency key -> deliveries accepted
	types  map[string]string
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down {
		h.failed++
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	if err := notify.Verify(h.secret, r.Header.Get("X-Fieldhub-Timestamp"), r.Header.Get("X-Fieldhub-Signature"), body, time.Now(), 0); err != nil {
		h.t.Errorf("webhook signature: %v", err)
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var msg struct {
		ID   string `json:"id"`
		Type string `json:"type"`
	}
	if err := json.Unmarshal(body, &msg); err != nil || msg.ID == "" || msg.ID != r.Header.Get("Idempotency-Key") {
		h.t.Errorf("webhook body %s (Idempotency-Key %q): %v", body, r.Header.Get("Idempotency-Key"), err)
	}
	h.got[msg.ID]++
	h.types[msg.ID] = msg.Type
}

func (h *hookReceiver) snapshot() (failed int, got map[string]int, types map[string]string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	got, types = map[string]int{}, map[string]string{}
	for k, v := range h.got {
		got[k] = v
	}
	for k, v := range h.types {
		types[k] = v
	}
	return h.failed, got, types
}

// TestAlertNotificationsEndToEnd runs the hub with both receivers: a
// real Prometheus Alertmanager (forwarding to a receiver of the test's)
// and a signed webhook that is down for the first part of the test. A
// threshold alert fires, the hub restarts while it is firing, then it
// resolves: Alertmanager forwards firing (with the device's labels) and
// resolved; once the webhook is back it gets the firing and the resolved
// notification exactly once each, signed, and never a second firing for
// the restart.
func TestAlertNotificationsEndToEnd(t *testing.T) {
	rec := &amReceiver{}
	recSrv := httptest.NewServer(rec)
	defer recSrv.Close()
	am := alertmanagertest.Start(t, alertmanagertest.Options{ReceiverURL: recSrv.URL})
	hook := &hookReceiver{t: t, secret: []byte("test-webhook-secret-1234"), down: true, got: map[string]int{}, types: map[string]string{}}
	hookSrv := httptest.NewServer(hook)
	defer hookSrv.Close()

	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{
		"FIELDHUB_ALERTMANAGER_URL":     am.URL,
		"FIELDHUB_ALERT_WEBHOOK_URL":    hookSrv.URL + "/hook",
		"FIELDHUB_ALERT_WEBHOOK_SECRET": string(hook.secret),
	})
	st, m := h.api(t, "POST", "/api/v1/devices", h.adminToken, map[string]any{"id": "pump-7", "labels": map[string]string{"site": "north"}})
	if st != 201 {
		t.Fatalf("create device: %d %v", st, m)
	}
	devToken := m["token"].(string)
	rule := h.createRule(t, `{"name":"hot pumps","selector":{"devices":["pump-7"]},"severity":"critical",
		"condition":{"type":"threshold","metric":"temp","op":">","value":80,"for":"0s","clear":75}}`)

	d := dialDevice(t, h, devToken)
	d.send(91)
	a := h.waitAlert(t, rule, "pump-7", "firing")
	var fired amAlert
	waitUntil(t, "Alertmanager forwards the firing alert", loadWait, func() bool {
		var ok bool
		fired, ok = rec.saw("firing", "pump-7")
		return ok
	})
	for k, want := range map[string]string{"alertname": "hot pumps", "device": "pump-7", "severity": "critical", "rule_id": rule, "site": "north"} {
		if fired.Labels[k] != want {
			t.Errorf("Alertmanager label %s = %q, want %q (all: %v)", k, fired.Labels[k], want, fired.Labels)
		}
	}
	waitUntil(t, "the webhook, down, was tried", loadWait, func() bool {
		failed, _, _ := hook.snapshot()
		return failed > 0
	})

	// A restart while firing: the alert stays firing, and nothing new is
	// queued for it (the webhook later sees one firing, not two).
	h.stop(t)
	h = startHub(t, influx, h.env)
	if got := h.waitAlert(t, rule, "pump-7", "firing"); got["id"] != a["id"] {
		t.Fatalf("after the restart the firing alert is %v, want %v", got["id"], a["id"])
	}
	d = dialDevice(t, h, devToken)
	d.send(70)
	h.waitAlert(t, rule, "pump-7", "resolved")
	waitUntil(t, "Alertmanager forwards the resolved alert", loadWait, func() bool {
		_, ok := rec.saw("resolved", "pump-7")
		return ok
	})

	hook.mu.Lock()
	hook.down = false
	hook.mu.Unlock()
	var got map[string]int
	var types map[string]string
	waitUntil(t, "the webhook, back, gets the firing and the resolved notification", 2*loadWait, func() bool {
		_, got, types = hook.snapshot()
		return len(got) >= 2
	})
	// Nothing more is queued for it: every delivery was recorded.
	waitUntil(t, "the webhook outbox is empty", loadWait, func() bool {
		v, ok := scrape(t, h)[`fieldhub_alert_notifications_queued{target="webhook"}`]
		return ok && v == 0
	})
	_, got, types = hook.snapshot()
	kinds := map[string]int{}
	for key, n := range got {
		if n != 1 {
			t.Errorf("webhook got %s %d times, want once", key, n)
		}
		kinds[types[key]]++
	}
	if kinds["alert.firing"] != 1 || kinds["alert.resolved"] != 1 || len(got) != 2 {
		t.Fatalf("webhook deliveries %v (%v), want one alert.firing and one alert.resolved", got, types)
	}
}
