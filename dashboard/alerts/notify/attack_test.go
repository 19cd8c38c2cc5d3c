package notify

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestAttackNotifyHugeAnswer: receivers answering a 1 GiB body (with a
// success and with a failure status) cost at most 64 KiB of reading each:
// the notifier stops reading and closes the connection.
func TestAttackNotifyHugeAnswer(t *testing.T) {
	for _, status := range []int{http.StatusOK, http.StatusInternalServerError} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			pushed := make(chan int64, 1000) // bytes written per request, once the write failed
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.WriteHeader(status)
				chunk := []byte(strings.Repeat("x", 32<<10))
				var written int64
				for written < 1<<30 {
					n, err := w.Write(chunk)
					written += int64(n)
					if err != nil {
						break
					}
				}
				select {
				case pushed <- written:
				default: // the test has seen enough
				}
			}))
			t.Cleanup(srv.Close)
			box := newMemOutbox()
			box.add(TargetWebhook, notification(1, KindFiring))
			n := startNotifier(t, Options{Outbox: box, Webhook: &WebhookOptions{URL: srv.URL, Secret: testSecret}})
			if status == http.StatusOK {
				waitFor(t, "delivered", func() bool { return box.len() == 0 })
			} else {
				waitFor(t, "a failed attempt", func() bool { return n.Stats()[TargetWebhook].Failed >= 1 })
				if e := box.retryLog()[0].lastErr; len(e) > 300 {
					t.Errorf("LastError holds %d bytes of the answer", len(e))
				}
			}
			// What the server could push before the hub hung up is the
			// socket buffers plus 64 KiB, far from 1 GiB.
			select {
			case w := <-pushed:
				if w > 64<<20 {
					t.Errorf("the receiver pushed %d MiB into the hub", w>>20)
				}
			case <-time.After(waitTimeout):
				t.Fatal("the receiver could write on: the hub kept reading")
			}
		})
	}
}

// TestAttackNotifyNeverAnswers: a receiver that accepts and never
// answers costs one timeout per attempt, the delivery is retried, and
// the loop keeps going (Run stops at once when asked: startNotifier).
func TestAttackNotifyNeverAnswers(t *testing.T) {
	hung := hangingServer(t)
	box := newMemOutbox()
	for i := range 10 {
		box.add(TargetWebhook, notification(i, KindFiring))
	}
	n := startNotifier(t, Options{Outbox: box, Webhook: &WebhookOptions{URL: hung.URL, Secret: testSecret}, Timeout: 100 * time.Millisecond})
	waitFor(t, "three timed-out attempts", func() bool { return n.Stats()[TargetWebhook].Failed >= 3 })
	for _, r := range box.retryLog() {
		if r.attempts > 0 && !strings.Contains(r.lastErr, "no answer within 100ms") {
			t.Errorf("retry %+v", r)
		}
	}
}

// TestAttackNotifyRedirect: a receiver redirecting elsewhere is not
// followed (the alert and its signature would reach another host); the
// 3xx is a failure, retried.
func TestAttackNotifyRedirect(t *testing.T) {
	var stolen atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { stolen.Add(1) }))
	t.Cleanup(other.Close)
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, other.URL+"/steal", code)
			}))
			t.Cleanup(srv.Close)
			box := newMemOutbox()
			box.add(TargetWebhook, notification(1, KindFiring))
			box.add(TargetAlertmanager, notification(1, KindFiring))
			n := startNotifier(t, Options{Outbox: box, Webhook: &WebhookOptions{URL: srv.URL, Secret: testSecret}, Alertmanager: &AlertmanagerOptions{URL: srv.URL}})
			waitFor(t, "failed attempts on both targets (or the redirect followed)", func() bool {
				s := n.Stats()
				return s[TargetWebhook].Failed >= 2 && s[TargetAlertmanager].Failed >= 2 || stolen.Load() > 0
			})
			if stolen.Load() != 0 {
				t.Fatalf("the redirect target got %d requests", stolen.Load())
			}
			if s := n.Stats(); s[TargetWebhook].Sent+s[TargetAlertmanager].Sent != 0 {
				t.Errorf("a redirect counted as delivered: %+v", s)
			}
			if e := box.retryLog()[0].lastErr; !strings.Contains(e, fmt.Sprintf("redirect %d not followed", code)) {
				t.Errorf("last error %q", e)
			}
		})
	}
	if stolen.Load() != 0 {
		t.Errorf("the redirect target got %d requests", stolen.Load())
	}
}

// TestAttackNotifyHugeQueue: 100,000 queued deliveries are claimed a
// batch at a time (the notifier never holds more than one batch), and
// while the receiver fails each pass costs one request, not one per
// queued notification.
func TestAttackNotifyHugeQueue(t *testing.T) {
	const queued = 100_000
	recv := newHookReceiver()
	recv.status.Store(http.StatusBadGateway)
	srv := httptest.NewServer(recv)
	t.Cleanup(srv.Close)
	box := newMemOutbox()
	ns := make([]Notification, queued)
	base := notification(0, KindFiring)
	for i := range ns {
		ns[i] = base
		ns[i].AlertID = "alert-" + strconv.Itoa(i)
		ns[i].Key = ns[i].AlertID + "/2"
	}
	box.add(TargetWebhook, ns...)
	// Backoffs longer than the poll interval, as in production, so a
	// notifier that does not pause the target would walk the queue.
	slowRand := func(n int64) int64 { return min(n-1, int64(200*time.Millisecond)) }
	n := startNotifier(t, Options{Outbox: box, Webhook: &WebhookOptions{URL: srv.URL, Secret: testSecret}, Queue: box, Rand: slowRand})
	waitFor(t, "five failed passes", func() bool { return n.Stats()[TargetWebhook].Failed >= 5 })
	if r, f := recv.requests.Load(), n.Stats()[TargetWebhook].Failed; uint64(r) > f+1 {
		t.Errorf("%d requests for %d failed passes while the receiver is down", r, f)
	}
	for _, r := range box.retryLog() {
		if r.attempts > 0 && r.key != ns[0].Key {
			t.Fatalf("while the receiver is down, %s (not the head of the queue) was tried", r.key)
		}
	}
	recv.status.Store(0)
	waitFor(t, "1,000 delivered", func() bool { return n.Stats()[TargetWebhook].Sent >= 1000 })
	maxClaim, maxHeld := box.stats()
	if maxClaim > DefaultBatch || maxHeld > DefaultBatch {
		t.Errorf("claimed up to %d, held up to %d at once; want <= %d", maxClaim, maxHeld, DefaultBatch)
	}
	if q := n.Stats()[TargetWebhook].Queued; q <= 0 || q > queued-1000 {
		t.Errorf("queued = %d", q)
	}
}
