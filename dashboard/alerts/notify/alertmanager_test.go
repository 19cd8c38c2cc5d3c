package notify

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/dashboard/alerts/notify/alertmanagertest"
)

// amWebhook is what Alertmanager's webhook_configs receiver gets.
type amWebhook struct {
	Status string    `json:"status"`
	Alerts []amAlert `json:"alerts"`
}

type amAlert struct {
	Status      string            `json:"status"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
}

// amReceiver is the test's end of Alertmanager: what it would send on to
// email or Slack.
type amReceiver struct {
	mu     sync.Mutex
	alerts []amAlert
	srv    *httptest.Server
}

func startAMReceiver(t *testing.T) *amReceiver {
	r := &amReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var msg amWebhook
		if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, 1<<20)).Decode(&msg); err != nil {
			t.Errorf("alertmanager webhook body: %v", err)
			return
		}
		r.mu.Lock()
		r.alerts = append(r.alerts, msg.Alerts...)
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// find returns the alerts received for device with status.
func (r *amReceiver) find(device, status string) []amAlert {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []amAlert
	for _, a := range r.alerts {
		if a.Labels["device"] == device && a.Status == status {
			out = append(out, a)
		}
	}
	return out
}

// firingSource is a FiringSource over a fixed set.
type firingSource struct {
	mu    sync.Mutex
	items []Notification // sorted by AlertID
	calls int
}

func (f *firingSource) Firing(_ context.Context, after string, max int) ([]Notification, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	var out []Notification
	for _, n := range f.items {
		if n.AlertID > after && len(out) < max {
			out = append(out, n)
		}
	}
	return out, nil
}

// hangingServer never answers until the client gives up. It reads the
// body first: net/http only notices a client hanging up after that.
func hangingServer(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestAlertmanagerFiringThenResolved sends a firing then a resolved
// notification through a real Alertmanager to its webhook receiver, while
// the webhook target hangs: a receiver that never answers does not delay
// Alertmanager's delivery.
func TestAlertmanagerFiringThenResolved(t *testing.T) {
	recv := startAMReceiver(t)
	am := alertmanagertest.Start(t, alertmanagertest.Options{ReceiverURL: recv.srv.URL})
	box := newMemOutbox()
	hung := hangingServer(t)
	n := startNotifier(t, Options{
		Outbox: box, Alertmanager: &AlertmanagerOptions{URL: am.URL},
		Webhook: &WebhookOptions{URL: hung.URL, Secret: "s"}, Timeout: time.Hour,
	})
	f := notification(1, KindFiring)
	f.Labels = map[string]string{"site": "north", "fw.version": "1.2", "device": "spoofed"}
	box.add(TargetAlertmanager, f)
	box.add(TargetWebhook, f)
	n.Wake()
	waitFor(t, "the firing alert at the receiver", func() bool { return len(recv.find("pump-1", "firing")) > 0 })
	got := recv.find("pump-1", "firing")[0]
	want := map[string]string{"alertname": "hot pumps", "device": "pump-1", "severity": "warning", "rule_id": "rule-ab12", "site": "north", "fw_version": "1.2"}
	if len(got.Labels) != len(want) {
		t.Errorf("labels = %v, want %v", got.Labels, want)
	}
	for k, v := range want {
		if got.Labels[k] != v {
			t.Errorf("label %s = %q, want %q (all: %v)", k, got.Labels[k], v, got.Labels)
		}
	}
	if got.Annotations["summary"] != f.Summary || got.Annotations["value"] != "81.5" || !got.StartsAt.Equal(f.StartsAt) {
		t.Errorf("alert = %+v", got)
	}
	r := notification(1, KindResolved)
	r.Labels = f.Labels
	box.add(TargetAlertmanager, r)
	n.Wake()
	waitFor(t, "the resolved alert at the receiver", func() bool { return len(recv.find("pump-1", "resolved")) > 0 })
	if res := recv.find("pump-1", "resolved")[0]; !res.EndsAt.Equal(r.EndsAt) {
		t.Errorf("resolved endsAt = %v, want %v", res.EndsAt, r.EndsAt)
	}
	if s := n.Stats()[TargetAlertmanager]; s.Sent != 2 {
		t.Errorf("alertmanager stats = %+v", s)
	}
	if s := n.Stats()[TargetWebhook]; s.Sent != 0 {
		t.Errorf("the hanging webhook delivered: %+v", s)
	}
}

// TestAlertmanagerResendKeepsFiring checks the periodic re-send keeps a
// firing alert firing past Alertmanager's resolve_timeout, and (the
// control) that without it Alertmanager does resolve it.
func TestAlertmanagerResendKeepsFiring(t *testing.T) {
	const resolveTimeout = 2 * time.Second
	for _, c := range []struct {
		name   string
		resend bool
	}{{"without re-send Alertmanager resolves it", false}, {"re-send keeps it firing", true}} {
		t.Run(c.name, func(t *testing.T) {
			recv := startAMReceiver(t)
			am := alertmanagertest.Start(t, alertmanagertest.Options{ReceiverURL: recv.srv.URL, ResolveTimeout: resolveTimeout})
			box := newMemOutbox()
			f := notification(7, KindFiring)
			f.StartsAt = time.Now().Add(-time.Minute)
			box.add(TargetAlertmanager, f)
			o := Options{Outbox: box, Alertmanager: &AlertmanagerOptions{URL: am.URL}, ResendInterval: resolveTimeout / 10}
			src := &firingSource{items: []Notification{f}}
			if c.resend {
				o.Firing = src
			}
			startNotifier(t, o)
			waitFor(t, "the firing alert", func() bool { return len(recv.find("pump-7", "firing")) > 0 })
			firstSeen := time.Now()
			if !c.resend {
				waitFor(t, "Alertmanager resolving the alert nobody re-sent", func() bool { return len(recv.find("pump-7", "resolved")) > 0 })
				return
			}
			// Past three resolve timeouts after it was first posted, and
			// after a re-send that came after that, it is still firing.
			src.mu.Lock()
			callsBefore := src.calls
			src.mu.Unlock()
			waitFor(t, "three resolve timeouts and more re-sends", func() bool {
				src.mu.Lock()
				defer src.mu.Unlock()
				return time.Since(firstSeen) > 3*resolveTimeout && src.calls > callsBefore+3
			})
			if res := recv.find("pump-7", "resolved"); len(res) > 0 {
				t.Fatalf("alertmanager resolved a firing alert despite the re-send: %+v", res)
			}
			if s := amState(t, am.URL, "pump-7"); s != "active" {
				t.Errorf("alertmanager state = %q, want active", s)
			}
		})
	}
}

// amState is Alertmanager's status of device's alert ("" if unknown).
func amState(t *testing.T, base, device string) string {
	t.Helper()
	resp, err := http.Get(base + "/api/v2/alerts")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var alerts []struct {
		Labels map[string]string `json:"labels"`
		Status struct {
			State string `json:"state"`
		} `json:"status"`
		EndsAt time.Time `json:"endsAt"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&alerts); err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		if a.Labels["device"] == device && a.EndsAt.After(time.Now()) {
			return a.Status.State
		}
	}
	return ""
}

// TestAlertmanagerOneInvalidAlertDoesNotHoldTheBatch: Alertmanager refuses
// a whole post (400) for one alert without labels; the others in that
// batch are delivered anyway and only the bad one is retried.
func TestAlertmanagerOneInvalidAlertDoesNotHoldTheBatch(t *testing.T) {
	recv := startAMReceiver(t)
	am := alertmanagertest.Start(t, alertmanagertest.Options{ReceiverURL: recv.srv.URL})
	box := newMemOutbox()
	box.add(TargetAlertmanager, notification(1, KindFiring), Notification{Key: "empty/1", Kind: KindFiring, StartsAt: time.Now()}, notification(2, KindFiring))
	n := startNotifier(t, Options{Outbox: box, Alertmanager: &AlertmanagerOptions{URL: am.URL}})
	waitFor(t, "the two valid alerts delivered", func() bool { return n.Stats()[TargetAlertmanager].Sent == 2 })
	waitFor(t, "both at the receiver", func() bool { return len(recv.find("pump-1", "firing")) > 0 && len(recv.find("pump-2", "firing")) > 0 })
	if box.len() != 1 {
		t.Errorf("outbox holds %d, want the invalid one only", box.len())
	}
	for _, r := range box.retryLog() {
		if r.key != "empty/1" && r.attempts > 0 {
			t.Errorf("a valid alert was retried: %+v", r)
		}
		if r.key == "empty/1" && !strings.Contains(r.lastErr, "status 400") {
			t.Errorf("last error %q", r.lastErr)
		}
	}
}
