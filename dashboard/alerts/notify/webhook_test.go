package notify

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testSecret = "whsec-test-8c1f0e"

// hookReceiver is a webhook receiver as docs/deploy.md tells users to
// write one: verify, then dedupe on Idempotency-Key.
type hookReceiver struct {
	status   atomic.Int32 // answer; 0 means 200
	requests atomic.Int32
	mu       sync.Mutex
	got      map[string]int // accepted deliveries per idempotency key
	bodies   map[string]WebhookBody
	bad      []string // verification failures
}

func newHookReceiver() *hookReceiver {
	return &hookReceiver{got: map[string]int{}, bodies: map[string]WebhookBody{}}
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.requests.Add(1)
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		http.Error(w, "too big", http.StatusRequestEntityTooLarge)
		return
	}
	if s := h.status.Load(); s != 0 {
		w.WriteHeader(int(s))
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	key := r.Header.Get(HeaderIdempotency)
	if err := Verify([]byte(testSecret), r.Header.Get(HeaderTimestamp), r.Header.Get(HeaderSignature), body, time.Now(), 0); err != nil {
		h.bad = append(h.bad, fmt.Sprintf("%s: %v", key, err))
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var b WebhookBody
	if err := json.Unmarshal(body, &b); err != nil || b.ID != key || r.Header.Get("Content-Type") != "application/json" {
		h.bad = append(h.bad, fmt.Sprintf("%s: body %s (%v)", key, body, err))
	}
	h.got[key]++
	h.bodies[key] = b
}

func (h *hookReceiver) counts() (map[string]int, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int, len(h.got))
	for k, v := range h.got {
		out[k] = v
	}
	return out, append([]string(nil), h.bad...)
}

// TestWebhookDownThenUp: the receiver is down (nothing listens), then
// answers 503, then works; it gets every notification exactly once per
// idempotency key, every signature verifies, and the backoff grew.
func TestWebhookDownThenUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // down: connection refused
	box := newMemOutbox()
	const total = 150 // more than two batches
	for i := range total {
		kind := KindFiring
		if i%3 == 2 {
			kind = KindResolved
		}
		box.add(TargetWebhook, notification(i, kind))
	}
	var logs syncBuffer
	n := startNotifier(t, Options{Outbox: box, Webhook: &WebhookOptions{URL: "http://" + addr + "/hook", Secret: testSecret}, Logger: testLogger(&logs), Queue: box})
	waitFor(t, "three failed attempts while down", func() bool { return n.Stats()[TargetWebhook].Failed >= 3 })

	recv := newHookReceiver()
	recv.status.Store(http.StatusServiceUnavailable)
	srv := &http.Server{Handler: recv, ReadHeaderTimeout: 5 * time.Second}
	var ln2 net.Listener
	waitFor(t, "the receiver's address again", func() bool { ln2, err = net.Listen("tcp", addr); return err == nil })
	go func() { _ = srv.Serve(ln2) }()
	t.Cleanup(func() { _ = srv.Close() })
	failedBefore := n.Stats()[TargetWebhook].Failed
	waitFor(t, "three 503s", func() bool { return n.Stats()[TargetWebhook].Failed >= failedBefore+3 })
	if r := recv.requests.Load(); r > int32(n.Stats()[TargetWebhook].Failed-failedBefore)+1 {
		t.Errorf("a receiver answering 503 got %d requests for %d failures: the rest of a batch must wait", r, n.Stats()[TargetWebhook].Failed-failedBefore)
	}

	recv.status.Store(0)
	waitFor(t, "every notification delivered", func() bool { return box.len() == 0 })
	got, bad := recv.counts()
	if len(bad) > 0 {
		t.Errorf("verification failures: %v", bad)
	}
	if len(got) != total {
		t.Errorf("receiver got %d distinct keys, want %d", len(got), total)
	}
	for k, c := range got {
		if c != 1 {
			t.Errorf("key %s delivered %d times", k, c)
		}
	}
	recv.mu.Lock()
	if b := recv.bodies[notification(2, KindResolved).Key]; b.Type != TypeResolved || b.Alert.Kind != KindResolved || b.Alert.Device != "pump-2" || b.Alert.Value == nil {
		t.Errorf("resolved body = %+v", b)
	}
	if b := recv.bodies[notification(0, KindFiring).Key]; b.Type != TypeFiring || b.Alert.Rule != "hot pumps" || b.SentAt.IsZero() {
		t.Errorf("firing body = %+v", b)
	}
	recv.mu.Unlock()
	// The head of the queue carried the failures, with growing attempts.
	maxAttempts := 0
	for _, r := range box.retryLog() {
		maxAttempts = max(maxAttempts, r.attempts)
	}
	if maxAttempts < 6 {
		t.Errorf("attempts reached %d, want >= 6", maxAttempts)
	}
	s := n.Stats()[TargetWebhook]
	if s.Sent != total || s.Queued != 0 {
		t.Errorf("stats = %+v", s)
	}
	if strings.Contains(logs.String(), testSecret) || strings.Contains(logs.String(), addr+"/hook") {
		t.Errorf("the log names the secret or the URL:\n%s", logs.String())
	}
}

// TestWebhookSlowReceiverTimesOut: a receiver slower than the request
// timeout fails that attempt, and the retry delivers.
func TestWebhookSlowReceiverTimesOut(t *testing.T) {
	recv := newHookReceiver()
	var slow atomic.Bool
	slow.Store(true)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slow.Load() {
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		recv.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	box := newMemOutbox()
	box.add(TargetWebhook, notification(1, KindFiring))
	n := startNotifier(t, Options{Outbox: box, Webhook: &WebhookOptions{URL: srv.URL, Secret: testSecret}, Timeout: 200 * time.Millisecond})
	waitFor(t, "a timed-out attempt", func() bool { return n.Stats()[TargetWebhook].Failed >= 1 })
	slow.Store(false)
	waitFor(t, "the retry delivered", func() bool { return box.len() == 0 })
	if log := box.retryLog(); !strings.Contains(log[0].lastErr, "no answer within 200ms") {
		t.Errorf("last error = %q", log[0].lastErr)
	}
	if got, _ := recv.counts(); got[notification(1, KindFiring).Key] != 1 {
		t.Errorf("got %v", got)
	}
}

// TestWebhookSecretNeverLogged runs failures of every kind with a URL
// that carries credentials, and checks the log has neither the secret,
// the credentials nor the URL.
func TestWebhookSecretNeverLogged(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch calls.Add(1) {
		case 1:
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		case 2:
			http.Redirect(w, r, "http://127.0.0.1:1/elsewhere", http.StatusTemporaryRedirect)
		case 3:
			http.Error(w, "nope", http.StatusBadRequest)
		}
	}))
	t.Cleanup(srv.Close)
	u := strings.Replace(srv.URL, "http://", "http://hookuser:urlpass-9d2@", 1) + "/path-secret-7?token=qs-secret-3"
	var logs syncBuffer
	box := newMemOutbox()
	box.add(TargetWebhook, notification(1, KindFiring))
	n := startNotifier(t, Options{Outbox: box, Webhook: &WebhookOptions{URL: u, Secret: testSecret}, Logger: testLogger(&logs)})
	waitFor(t, "delivered after three failures", func() bool { return box.len() == 0 })
	if s := n.Stats()[TargetWebhook]; s.Failed != 3 || s.Sent != 1 {
		t.Errorf("stats = %+v", s)
	}
	// And a receiver that is not there: the transport's errors repeat
	// the URL unless the notifier strips it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://hookuser:urlpass-9d2@" + ln.Addr().String() + "/path-secret-7?token=qs-secret-3"
	ln.Close()
	box2 := newMemOutbox()
	box2.add(TargetWebhook, notification(2, KindFiring))
	n2 := startNotifier(t, Options{Outbox: box2, Webhook: &WebhookOptions{URL: dead, Secret: testSecret}, Logger: testLogger(&logs)})
	waitFor(t, "a refused connection", func() bool { return n2.Stats()[TargetWebhook].Failed >= 1 })
	out := logs.String()
	for _, secret := range []string{testSecret, "urlpass-9d2", "hookuser", "path-secret-7", "qs-secret-3", "http://"} {
		if strings.Contains(out, secret) {
			t.Errorf("log contains %q:\n%s", secret, out)
		}
	}
	for _, r := range append(box.retryLog(), box2.retryLog()...) {
		if strings.Contains(r.lastErr, "urlpass") || strings.Contains(r.lastErr, "http://") {
			t.Errorf("LastError %q names the URL", r.lastErr)
		}
	}
	for _, want := range []string{`"status":503`, `"status":307`, `"status":400`, `"target":"webhook"`, `"attempt":3`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
}
