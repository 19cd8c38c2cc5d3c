package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"reflect"
	"sync"
	"testing"
	"time"
)

// waitTimeout is the package's generous deadline for events.
const waitTimeout = 30 * time.Second

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fastRand keeps retries quick in tests: at most 20 ms of jitter.
func fastRand(n int64) int64 { return min(n-1, int64(20*time.Millisecond)) }

// startNotifier runs a Notifier until the test ends, and checks Run
// returns once its context is cancelled.
func startNotifier(t *testing.T, o Options) *Notifier {
	t.Helper()
	if o.Rand == nil {
		o.Rand = fastRand
	}
	if o.PollInterval == 0 {
		o.PollInterval = 20 * time.Millisecond
	}
	n, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Error("Run did not return after cancel")
		}
	})
	return n
}

// syncBuffer is a log sink for several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger(buf *syncBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func notification(i int, kind string) Notification {
	v := 80.5 + float64(i)
	start := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	n := Notification{
		Key: fmt.Sprintf("alert-%04x/%d", i, 2), Kind: kind, AlertID: fmt.Sprintf("alert-%04x", i),
		RuleID: "rule-ab12", Rule: "hot pumps", Device: fmt.Sprintf("pump-%d", i), Severity: "warning",
		Labels: map[string]string{"site": "north"}, Value: &v, Summary: fmt.Sprintf("temp %.1f > 80", v),
		StartsAt: start, At: start,
	}
	if kind == KindResolved {
		n.Key = fmt.Sprintf("alert-%04x/%d", i, 3)
		n.EndsAt, n.At = start.Add(time.Minute), start.Add(time.Minute)
	}
	return n
}

func TestBackoffCeiling(t *testing.T) {
	for _, c := range []struct {
		attempts int
		want     time.Duration
	}{
		{0, 0}, {1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {5, 16 * time.Second},
		{9, 256 * time.Second}, {10, 5 * time.Minute}, {11, 5 * time.Minute}, {64, 5 * time.Minute}, {1 << 30, 5 * time.Minute},
	} {
		if got := backoffCeiling(c.attempts); got != c.want {
			t.Errorf("backoffCeiling(%d) = %v, want %v", c.attempts, got, c.want)
		}
	}
}

// TestBackoffFullJitter checks the delay is drawn from [0, ceiling]: the
// random source is asked for exactly ceiling+1 possibilities.
func TestBackoffFullJitter(t *testing.T) {
	for _, c := range []struct {
		name     string
		attempts int
		pick     func(n int64) int64
		want     time.Duration
	}{
		{"lowest", 3, func(int64) int64 { return 0 }, 0},
		{"highest", 3, func(n int64) int64 { return n - 1 }, 4 * time.Second},
		{"highest capped", 40, func(n int64) int64 { return n - 1 }, 5 * time.Minute},
		{"middle", 2, func(n int64) int64 { return n / 2 }, time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, err := New(Options{Outbox: newMemOutbox(), Rand: c.pick})
			if err != nil {
				t.Fatal(err)
			}
			if got := n.backoff(c.attempts); got != c.want {
				t.Errorf("backoff(%d) = %v, want %v", c.attempts, got, c.want)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	secret := []byte("s3cret")
	body := []byte(`{"id":"alert-1/2"}`)
	now := time.Unix(1_800_000_000, 0)
	ts := "1800000000"
	good := Sign(secret, ts, body)
	for _, c := range []struct {
		name      string
		secret    []byte
		ts, sig   string
		body      []byte
		now       time.Time
		tolerance time.Duration
		want      error
	}{
		{"good", secret, ts, good, body, now, 0, nil},
		{"good at the edge", secret, ts, good, body, now.Add(5 * time.Minute), 0, nil},
		{"stale", secret, ts, good, body, now.Add(5*time.Minute + time.Second), 0, ErrStaleTimestamp},
		{"from the future", secret, ts, good, body, now.Add(-6 * time.Minute), 0, ErrStaleTimestamp},
		{"custom tolerance", secret, ts, good, body, now.Add(2 * time.Second), time.Second, ErrStaleTimestamp},
		{"wrong secret", []byte("other"), ts, good, body, now, 0, ErrBadSignature},
		{"body changed", secret, ts, good, []byte(`{"id":"alert-1/3"}`), now, 0, ErrBadSignature},
		{"timestamp changed", secret, "1800000001", good, body, now, 0, ErrBadSignature},
		{"no prefix", secret, ts, good[len("sha256="):], body, now, 0, ErrBadSignature},
		{"not hex", secret, ts, "sha256=zz", body, now, 0, ErrBadSignature},
		{"empty", secret, ts, "", body, now, 0, ErrBadSignature},
		{"timestamp not a number", secret, "soon", good, body, now, 0, ErrBadTimestampHdr},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := Verify(c.secret, c.ts, c.sig, c.body, c.now, c.tolerance); !errors.Is(err, c.want) {
				t.Errorf("Verify = %v, want %v", err, c.want)
			}
		})
	}
}

func TestAlertmanagerLabels(t *testing.T) {
	base := Notification{Rule: "hot pumps", RuleID: "rule-1", Device: "pump-1", Severity: "critical"}
	with := func(labels map[string]string) Notification { n := base; n.Labels = labels; return n }
	own := map[string]string{"alertname": "hot pumps", "device": "pump-1", "severity": "critical", "rule_id": "rule-1"}
	plus := func(extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range own {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	for _, c := range []struct {
		name string
		n    Notification
		want map[string]string
	}{
		{"none", base, own},
		{"plain", with(map[string]string{"site": "north"}), plus(map[string]string{"site": "north"})},
		{"sanitised", with(map[string]string{"fw.version": "1.2", "rack-id": "7", "9lives": "x", "zoné": "a"}),
			plus(map[string]string{"fw_version": "1.2", "rack_id": "7", "_9lives": "x", "zon_": "a"})},
		{"never overrides ours", with(map[string]string{"alertname": "evil", "device": "other", "severity": "info", "rule_id": "r", "Device": "kept"}),
			plus(map[string]string{"Device": "kept"})},
		{"sanitised into ours still never overrides", with(map[string]string{"rule-id": "evil", "alert.name": "fine"}),
			plus(map[string]string{"alert_name": "fine"})},
		{"collision: first in sorted order", with(map[string]string{"a.b": "dot", "a-b": "dash"}), plus(map[string]string{"a_b": "dash"})},
		{"empty value dropped", with(map[string]string{"site": ""}), own},
		{"invalid utf-8 value", with(map[string]string{"site": "n\xffrth"}), plus(map[string]string{"site": "n\uFFFDrth"})},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := AlertmanagerLabels(c.n); !reflect.DeepEqual(got, c.want) {
				t.Errorf("labels = %v\nwant     %v", got, c.want)
			}
		})
	}
}

func TestToPostable(t *testing.T) {
	f := toPostable(notification(1, KindFiring))
	if f.EndsAt != "" || f.StartsAt != "2026-12-01T10:00:00.000Z" || f.Annotations["summary"] != "temp 81.5 > 80" || f.Annotations["value"] != "81.5" {
		t.Errorf("firing = %+v", f)
	}
	r := toPostable(notification(1, KindResolved))
	if r.EndsAt != "2026-12-01T10:01:00.000Z" {
		t.Errorf("resolved endsAt = %q", r.EndsAt)
	}
	odd := notification(1, KindResolved)
	odd.EndsAt = odd.StartsAt.Add(-time.Hour)
	if r := toPostable(odd); r.EndsAt != r.StartsAt {
		t.Errorf("an end before the start must be clamped: %+v", r)
	}
}

func TestNewRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		o    Options
	}{
		{"no outbox", Options{}},
		{"bad alertmanager URL", Options{Outbox: newMemOutbox(), Alertmanager: &AlertmanagerOptions{URL: "ftp://x"}}},
		{"relative webhook URL", Options{Outbox: newMemOutbox(), Webhook: &WebhookOptions{URL: "/hook", Secret: "s"}}},
		{"webhook without secret", Options{Outbox: newMemOutbox(), Webhook: &WebhookOptions{URL: "http://127.0.0.1:1/"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := New(c.o); err == nil {
				t.Error("New accepted it")
			}
		})
	}
}

// TestSignIsTheContract checks Sign against the formula receivers
// implement: hex HMAC-SHA256(secret, timestamp + "." + body).
func TestSignIsTheContract(t *testing.T) {
	secret, ts, body := []byte("k"), "1800000000", []byte(`{"a":1}`)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts + "." + string(body)))
	if want, got := "sha256="+hex.EncodeToString(m.Sum(nil)), Sign(secret, ts, body); got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}

// TestWakeDeliversAtOnce: with a poll interval far beyond the test, a
// Wake after queueing is what delivers; and Wake never blocks, running
// or not.
func TestWakeDeliversAtOnce(t *testing.T) {
	idle, err := New(Options{Outbox: newMemOutbox(), Webhook: &WebhookOptions{URL: "http://127.0.0.1:1/", Secret: "s"}})
	if err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		idle.Wake() // no Run: must not block
	}
	recv := newHookReceiver()
	srv := httptest.NewServer(recv)
	t.Cleanup(srv.Close)
	box := newMemOutbox()
	n := startNotifier(t, Options{Outbox: box, Webhook: &WebhookOptions{URL: srv.URL, Secret: testSecret}, PollInterval: time.Hour})
	waitFor(t, "the first (empty) pass", func() bool { _, held := box.stats(); return held == 0 && box.claims() > 0 })
	box.add(TargetWebhook, notification(1, KindFiring))
	n.Wake()
	waitFor(t, "delivery after Wake", func() bool { return box.len() == 0 })
}
