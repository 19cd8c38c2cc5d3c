package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// Delivery defaults (Options zero values).
const (
	DefaultResendInterval = time.Minute
	DefaultLease          = 30 * time.Second
	DefaultBatch          = 64
	DefaultTimeout        = 10 * time.Second
	DefaultPollInterval   = time.Second
	// BackoffBase and BackoffCap bound the retry delay: attempt n waits a
	// random time in [0, min(BackoffCap, BackoffBase*2^(n-1))] (full
	// jitter), so receivers coming back are not hit by every hub at once.
	BackoffBase = time.Second
	BackoffCap  = 5 * time.Minute
	// maxResponseBytes is how much of a receiver's answer is read (for
	// the error message and connection reuse); the rest is not.
	maxResponseBytes = 64 << 10
)

// FiringSource lists the alerts that are firing now and should be in
// Alertmanager (fired, not resolved, not silenced), as KindFiring
// notifications, for the periodic re-send: Alertmanager resolves an alert
// that is not posted again within its resolve_timeout. It pages by alert
// id so the notifier never holds every firing alert at once: Firing
// returns at most max alerts with AlertID > after, sorted by AlertID.
// The alert engine implements it.
type FiringSource interface {
	Firing(ctx context.Context, after string, max int) ([]Notification, error)
}

// QueueCounter reports how many deliveries of target are queued, for the
// fieldhub_alert_notifications_queued metric. Optional: the alert stores
// may implement it.
type QueueCounter interface {
	Queued(ctx context.Context, target string) (int, error)
}

// AlertmanagerOptions configure delivery to Prometheus Alertmanager.
type AlertmanagerOptions struct {
	// URL is Alertmanager's base URL (FIELDHUB_ALERTMANAGER_URL); alerts
	// are posted to URL/api/v2/alerts. It may carry basic-auth userinfo:
	// it is never logged.
	URL string
}

// WebhookOptions configure delivery to a signed webhook.
type WebhookOptions struct {
	URL    string // FIELDHUB_ALERT_WEBHOOK_URL; never logged
	Secret string // FIELDHUB_ALERT_WEBHOOK_SECRET, the HMAC key; never logged
}

// Options configure a Notifier. Zero values are the documented defaults.
type Options struct {
	Outbox       Outbox               // required
	Alertmanager *AlertmanagerOptions // nil: no Alertmanager target
	Webhook      *WebhookOptions      // nil: no webhook target
	// Firing feeds the Alertmanager re-send; nil disables it (then
	// Alertmanager resolves firing alerts after its resolve_timeout).
	Firing FiringSource
	// Queue, when set, is sampled after every delivery pass for Stats.
	Queue QueueCounter
	// ResendInterval is how often every firing alert is posted to
	// Alertmanager again (default 1m; keep it well below Alertmanager's
	// resolve_timeout, 5m by default).
	ResendInterval time.Duration
	Lease          time.Duration // Claim lease (default 30s)
	Batch          int           // deliveries claimed per pass (default 64)
	Timeout        time.Duration // per request, body included (default 10s)
	PollInterval   time.Duration // how often the outbox is checked without a Wake (default 1s)
	Logger         *slog.Logger
	// Now and Rand are for tests: the clock, and a random int64 in
	// [0, n) for the jitter (defaults time.Now and math/rand/v2).
	Now  func() time.Time
	Rand func(n int64) int64
}

// Notifier drains the outbox to the configured receivers: one delivery
// loop per target, so a receiver that is down never delays another.
type Notifier struct {
	opts    Options
	log     *slog.Logger
	targets []*target
}

// TargetStats are one target's counters, for metrics.
type TargetStats struct {
	Sent   uint64 // deliveries a receiver accepted (2xx)
	Failed uint64 // failed delivery attempts
	Resent uint64 // firing alerts re-posted to Alertmanager
	Queued int    // deliveries waiting, last sampled; -1 without Options.Queue
}

// sender posts a batch of deliveries to one receiver and says what
// became of each, in batch order. started is when the batch was claimed:
// a sender stops before the lease could end mid-request.
type sender interface {
	send(ctx context.Context, started time.Time, batch []Delivery) []result
}

// result is the outcome of one delivery: ok, failed (err set), or
// untried (neither: a receiver-wide failure or the lease ended the batch).
type result struct {
	ok  bool
	err *sendError
}

type target struct {
	name   string
	send   sender
	wake   chan struct{} // cap 1: a pending wake-up is enough
	sent   atomic.Uint64
	failed atomic.Uint64
	resent atomic.Uint64
	queued atomic.Int64
	resend func(ctx context.Context) // Alertmanager only
}

// New checks o and builds a Notifier; Run starts delivering.
func New(o Options) (*Notifier, error) {
	if o.Outbox == nil {
		return nil, errors.New("notify: Options.Outbox is required")
	}
	if o.ResendInterval <= 0 {
		o.ResendInterval = DefaultResendInterval
	}
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	if o.Batch <= 0 {
		o.Batch = DefaultBatch
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Int64N
	}
	n := &Notifier{opts: o, log: o.Logger.With("component", "notify")}
	client := newClient(o.Timeout)
	if a := o.Alertmanager; a != nil {
		u, err := checkURL(a.URL)
		if err != nil {
			return nil, fmt.Errorf("notify: alertmanager URL: %w", err)
		}
		am := &alertmanager{client: client, url: u.JoinPath("api", "v2", "alerts").String(), timeout: o.Timeout, now: o.Now}
		t := &target{name: TargetAlertmanager, send: am, wake: make(chan struct{}, 1)}
		if o.Firing != nil {
			t.resend = func(ctx context.Context) { n.resend(ctx, t, am) }
		}
		n.targets = append(n.targets, t)
	}
	if w := o.Webhook; w != nil {
		u, err := checkURL(w.URL)
		if err != nil {
			return nil, fmt.Errorf("notify: webhook URL: %w", err)
		}
		if w.Secret == "" {
			return nil, errors.New("notify: a webhook needs a secret")
		}
		wh := &webhook{client: client, url: u.String(), secret: []byte(w.Secret), timeout: o.Timeout, lease: o.Lease, now: o.Now}
		n.targets = append(n.targets, &target{name: TargetWebhook, send: wh, wake: make(chan struct{}, 1)})
	}
	for _, t := range n.targets {
		t.queued.Store(-1)
	}
	return n, nil
}

// checkURL accepts absolute http and https URLs.
func checkURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("not an http(s) URL")
	}
	return u, nil
}

// Targets are the names of the configured targets: the outbox entries the
// alert engine queues per transition.
func (n *Notifier) Targets() []string {
	out := make([]string, len(n.targets))
	for i, t := range n.targets {
		out[i] = t.name
	}
	return out
}

// Run delivers until ctx ends, one loop per target, and returns when all
// of them have stopped.
func (n *Notifier) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, t := range n.targets {
		wg.Go(func() { n.loop(ctx, t) })
	}
	wg.Wait()
	return nil
}

// Wake tells every delivery loop that something was queued, so it is
// sent now instead of at the next poll. It never blocks: a wake-up
// already pending covers this one.
func (n *Notifier) Wake() {
	for _, t := range n.targets {
		select {
		case t.wake <- struct{}{}:
		default: // one is pending: the loop will claim everything due
		}
	}
}

// Stats returns each configured target's counters.
func (n *Notifier) Stats() map[string]TargetStats {
	out := make(map[string]TargetStats, len(n.targets))
	for _, t := range n.targets {
		out[t.name] = TargetStats{Sent: t.sent.Load(), Failed: t.failed.Load(), Resent: t.resent.Load(), Queued: int(t.queued.Load())}
	}
	return out
}

// loop is one target's delivery loop: claim what is due, send, record;
// again at once after a full batch, else after a wake-up or a poll.
// After a receiver-wide failure (down, timeout, 5xx) the whole target
// waits for the failed delivery's retry time, wake-ups included: a
// receiver that is down costs one request per backoff, however many
// notifications are queued.
func (n *Notifier) loop(ctx context.Context, t *target) {
	poll := time.NewTimer(0)
	defer poll.Stop()
	var nextResend time.Time // zero: re-send at start (Alertmanager may have restarted too)
	for {
		if t.resend != nil && !n.opts.Now().Before(nextResend) {
			t.resend(ctx)
			nextResend = n.opts.Now().Add(n.opts.ResendInterval)
		}
		full, pause := n.pass(ctx, t)
		if ctx.Err() != nil {
			return
		}
		wake := t.wake
		wait := n.opts.PollInterval
		switch {
		case !pause.IsZero():
			wait, wake = max(pause.Sub(n.opts.Now()), 0), nil
		case full:
			continue
		}
		if t.resend != nil {
			wait = min(wait, max(nextResend.Sub(n.opts.Now()), 0))
		}
		poll.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-wake: // nil while paused
		case <-poll.C:
		}
	}
}

// pass claims one batch and delivers it; it reports whether the batch
// was full (more may be due), and after a receiver-wide failure until
// when the target should pause.
func (n *Notifier) pass(ctx context.Context, t *target) (full bool, pause time.Time) {
	o := n.opts
	batch, err := o.Outbox.Claim(ctx, t.name, o.Now(), o.Lease, o.Batch)
	if err != nil {
		if ctx.Err() == nil {
			n.log.Error("claim alert notifications", "target", t.name, "err", err)
		}
		return false, time.Time{}
	}
	if o.Queue != nil {
		defer func() {
			if q, err := o.Queue.Queued(ctx, t.name); err == nil {
				t.queued.Store(int64(q))
			}
		}()
	}
	if len(batch) == 0 {
		return false, time.Time{}
	}
	results := t.send.send(ctx, o.Now(), batch)
	if ctx.Err() != nil {
		// Shutting down: what was not recorded stays leased and is sent
		// again when the lease ends (at least once).
		return false, time.Time{}
	}
	// Untried deliveries are released, due when the first failed one is
	// retried (a receiver that is down costs one request per backoff, not
	// one per queued notification), or at once if none failed.
	var release time.Time
	for i, d := range batch {
		if r := results[i]; r.err != nil {
			next := o.Now().Add(n.backoff(d.Attempts + 1))
			if release.IsZero() {
				release = next
			}
			if r.err.receiver && pause.IsZero() {
				pause = next
			}
			t.failed.Add(1)
			n.log.Warn("alert notification failed", "target", t.name, "key", d.Key, "status", r.err.status,
				"attempt", d.Attempts+1, "retry_in", next.Sub(o.Now()).Round(time.Millisecond), "err", r.err.msg)
			if err := o.Outbox.Retry(ctx, t.name, d.Key, d.Attempts+1, next, r.err.msg); err != nil {
				n.log.Error("record alert notification retry", "target", t.name, "key", d.Key, "err", err)
			}
		}
	}
	if release.IsZero() {
		release = o.Now()
	}
	full = len(batch) == o.Batch
	for i, d := range batch {
		switch r := results[i]; {
		case r.ok:
			if err := o.Outbox.Delivered(ctx, t.name, d.Key); err != nil {
				// It stays leased and is sent again when the lease ends:
				// at least once, the receiver dedupes on the key.
				n.log.Error("record alert notification delivered", "target", t.name, "key", d.Key, "err", err)
				continue
			}
			t.sent.Add(1)
			n.log.Debug("alert notification delivered", "target", t.name, "key", d.Key, "attempt", d.Attempts+1)
		case r.err == nil:
			full = false
			if err := o.Outbox.Retry(ctx, t.name, d.Key, d.Attempts, release, d.LastError); err != nil {
				n.log.Error("release alert notification", "target", t.name, "key", d.Key, "err", err)
			}
		default:
			full = false
		}
	}
	return full, pause
}

// backoff is the full-jitter delay before attempt number attempts+1.
func (n *Notifier) backoff(attempts int) time.Duration {
	return time.Duration(n.opts.Rand(int64(backoffCeiling(attempts)) + 1))
}

// backoffCeiling is the longest wait after the given number of failed
// attempts: BackoffBase doubling per attempt, capped at BackoffCap.
func backoffCeiling(attempts int) time.Duration {
	if attempts < 1 {
		return 0
	}
	d := BackoffBase
	for i := 1; i < attempts; i++ {
		d *= 2
		if d >= BackoffCap {
			return BackoffCap
		}
	}
	return min(d, BackoffCap)
}

// resend posts every firing alert to Alertmanager again, a page at a
// time, so none reaches its resolve_timeout while it still fires.
func (n *Notifier) resend(ctx context.Context, t *target, am *alertmanager) {
	after := ""
	for ctx.Err() == nil {
		page, err := n.opts.Firing.Firing(ctx, after, n.opts.Batch)
		if err != nil {
			if ctx.Err() == nil {
				n.log.Error("list firing alerts for the alertmanager re-send", "err", err)
			}
			return
		}
		if len(page) == 0 {
			return
		}
		batch := make([]Delivery, len(page))
		for i, nt := range page {
			batch[i] = Delivery{Notification: nt, Target: t.name}
		}
		if r := am.send(ctx, n.opts.Now(), batch)[0]; !r.ok {
			if r.err != nil && ctx.Err() == nil {
				n.log.Warn("alertmanager re-send failed", "target", t.name, "alerts", len(page), "status", r.err.status, "err", r.err.msg)
			}
			return
		}
		t.resent.Add(uint64(len(page)))
		if len(page) < n.opts.Batch {
			return
		}
		after = page[len(page)-1].AlertID
	}
}
