package alerts

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/fieldhub/fieldhub/dashboard/alerts/notify"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Devices is what the engine needs of the registry: a device's labels,
// and the fleet at start (devices seen before and offline get a pending
// offline alert). *devices.Registry implements it.
type Devices interface {
	Get(id string) (devices.Device, error)
	List(f devices.Filter) (devs []devices.Device, next string, total int)
}

// Publisher is the live fan-out alert events go to (live.Hub, or the
// cluster's fan-out).
type Publisher interface {
	Publish(ev telemetry.Event)
}

// Options configures the Engine. Zero values take the documented defaults.
type Options struct {
	Store   Store   // required
	Devices Devices // required
	// Live receives an EventAlert on every transition; nil: none.
	Live Publisher
	// Targets are the notification targets (notify.Target*) every
	// notified transition is queued for, one outbox entry each.
	Targets []string
	// Now is the clock; default time.Now. Tests pass a fake one.
	Now    func() time.Time
	Logger *slog.Logger
	// QueueSize bounds the input from the bridge; default 16384.
	QueueSize int
	// Tick is how often timers are checked (for, no_data, windows);
	// default 1s.
	Tick time.Duration
	// Resync is how often the open alerts, rules and silences are
	// reloaded from the store (other instances change them); default 5s.
	Resync time.Duration
	// StartupOffline raises a pending offline alert at start for every
	// device seen before and offline now. Only right with one instance:
	// with several, a device may be connected to another.
	StartupOffline bool
	// MaxOpen bounds open alerts; default MaxOpenAlerts.
	MaxOpen int
	// OnQueued is called, without blocking, after a transition queued
	// notifications (the notifier's Wake), so they leave at once rather
	// than at the notifier's next poll; nil: none.
	OnQueued func()
}

// Input kinds.
const (
	inEvent = iota
	inRejected
	inDeleted
	inGaps
	inChanged
)

type input struct {
	kind int
	ev   telemetry.Event
	n    int // inGaps: the device's open gaps
}

type pairKey struct{ rule, device string }

type devMetric struct{ device, metric string }

// Stats are the engine's counters, read by the metrics collector.
type Stats struct {
	Firing      map[string]int64 // by severity
	Transitions map[string]int64 // by state entered
	Dropped     int64            // inputs lost to a full queue
	Refused     int64            // new alerts refused past MaxOpen
}

// Engine evaluates the rules on the live stream on one goroutine (Run)
// that owns the evaluation state; the bridge's goroutines only enqueue
// (Publish, PublishBatch, Rejected) into a bounded queue, and REST calls
// hand it closures through a bounded control queue. Every transition is
// a compare-and-set on the alert's version in the store, written with its
// timeline events and outbox entries in one transaction.
type Engine struct {
	opts  Options
	log   *slog.Logger
	in    chan input
	ctl   chan func(ctx context.Context)
	rules atomic.Pointer[ruleSet]

	dropped, refused atomic.Int64
	lastDropLog      atomic.Int64 // unix ns of the last drop log line
	transitions      [3]atomic.Int64
	firing           [3]atomic.Int64 // by severity index

	// Owned by Run's goroutine.
	open       map[pairKey]*Record
	lastSeen   map[devMetric]time.Time
	rejs       map[pairKey][]time.Time
	started    time.Time           // since when rejs holds every rejection this engine saw
	online     map[string]struct{} // devices whose last presence event here was online; bounded by the fleet
	silences   []Silence
	lastRefuse time.Time
	conflicts  int // lost compare-and-sets in the current input
	storeErrs  int // other failed store writes in the current input
}

// New returns an Engine; Run starts it.
func New(opts Options) (*Engine, error) {
	if opts.Store == nil || opts.Devices == nil {
		return nil, errors.New("alerts: Store and Devices are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 16384
	}
	if opts.Tick <= 0 {
		opts.Tick = time.Second
	}
	if opts.Resync <= 0 {
		opts.Resync = 5 * time.Second
	}
	if opts.MaxOpen <= 0 {
		opts.MaxOpen = MaxOpenAlerts
	}
	e := &Engine{opts: opts, log: opts.Logger, in: make(chan input, opts.QueueSize), ctl: make(chan func(context.Context), 64),
		open: map[pairKey]*Record{}, lastSeen: map[devMetric]time.Time{}, rejs: map[pairKey][]time.Time{},
		online: map[string]struct{}{}}
	e.rules.Store(newRuleSet(nil))
	e.started = e.now()
	return e, nil
}

func (e *Engine) now() time.Time { return e.opts.Now().UTC().Truncate(time.Millisecond) }

// enqueue hands in to Run without blocking. Full: the input is dropped
// and counted, logged at most once per 10 s (the bridge never waits).
func (e *Engine) enqueue(in input) {
	select {
	case e.in <- in:
	default:
		e.dropped.Add(1)
		now := time.Now().UnixNano()
		last := e.lastDropLog.Load()
		if now-last >= int64(10*time.Second) && e.lastDropLog.CompareAndSwap(last, now) {
			e.log.Warn("alert evaluation queue full; inputs dropped", "dropped_total", e.dropped.Load())
		}
	}
}

// Publish takes one of the bridge's live events (bridge.Fanout). A
// reading no rule looks at costs a map lookup per metric.
func (e *Engine) Publish(ev telemetry.Event) {
	rs := e.rules.Load()
	switch ev.Type {
	case telemetry.EventReading:
		if !rs.wantsReading(ev.Metrics) {
			return
		}
	case telemetry.EventPresence:
		if !rs.wantsPresence() {
			return
		}
	default:
		return
	}
	e.enqueue(input{kind: inEvent, ev: ev})
}

// PublishBatch takes the readings of one message (bridge.BatchFanout).
func (e *Engine) PublishBatch(evs []telemetry.Event) {
	for _, ev := range evs {
		e.Publish(ev)
	}
}

// Rejected takes one refused message (bridge.Rejections), for
// rejections rules.
func (e *Engine) Rejected(device, transport, id string, te *telemetry.Error) {
	if device == "" || len(e.rules.Load().rejections) == 0 {
		return
	}
	e.enqueue(input{kind: inRejected, ev: telemetry.Event{Device: device}})
}

// GapsChanged takes a device's new number of open seq gaps
// (devices/ledger's OnGapsChanged), for gaps rules. It never blocks.
func (e *Engine) GapsChanged(device string, open int) {
	if device == "" || len(e.rules.Load().gaps) == 0 {
		return
	}
	e.enqueue(input{kind: inGaps, ev: telemetry.Event{Device: device}, n: open})
}

// DeviceDeleted resolves a deleted device's open alerts.
func (e *Engine) DeviceDeleted(id string) {
	e.enqueue(input{kind: inDeleted, ev: telemetry.Event{Device: id}})
}

// DeviceChanged re-evaluates a device whose labels changed (registry
// Update, PATCH /api/v1/devices/{id}): its alerts of rules that no
// longer select it resolve.
func (e *Engine) DeviceChanged(id string) {
	e.enqueue(input{kind: inChanged, ev: telemetry.Event{Device: id}})
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	s := Stats{Firing: map[string]int64{}, Transitions: map[string]int64{}, Dropped: e.dropped.Load(), Refused: e.refused.Load()}
	for i, sv := range severities {
		s.Firing[sv] = e.firing[i].Load()
	}
	for i, st := range []string{StatePending, StateFiring, StateResolved} {
		s.Transitions[st] = e.transitions[i].Load()
	}
	return s
}

// Run loads the rules, silences and open alerts, then evaluates until ctx
// ends.
func (e *Engine) Run(ctx context.Context) error {
	if err := e.load(ctx); err != nil {
		return err
	}
	if e.opts.StartupOffline {
		e.startupOffline(ctx)
	}
	tick := time.NewTicker(e.opts.Tick)
	defer tick.Stop()
	resync := time.NewTicker(e.opts.Resync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case in := <-e.in:
			e.handle(ctx, in)
		case f := <-e.ctl:
			f(ctx)
		case <-tick.C:
			e.sweep(ctx)
		case <-resync.C:
			if err := e.load(ctx); err != nil {
				e.log.Warn("alerts resync failed", "err", err)
			}
		}
	}
}

// do runs f on the engine's goroutine and waits for it, or for ctx.
func (e *Engine) do(ctx context.Context, f func(ctx context.Context) error) error {
	done := make(chan error, 1)
	select {
	case e.ctl <- func(ctx context.Context) { done <- f(ctx) }:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// load replaces the engine's view with the store's: the store is the truth.
func (e *Engine) load(ctx context.Context) error {
	// Open alerts first, then rules: an alert opened meanwhile is missed
	// until the next resync (or its device's next event), while the other
	// order would see it without its new rule and resolve it "rule
	// deleted".
	open, err := e.opts.Store.Open(ctx, "")
	if err != nil {
		return fmt.Errorf("load open alerts: %w", err)
	}
	rules, err := e.opts.Store.Rules(ctx)
	if err != nil {
		return fmt.Errorf("load alert rules: %w", err)
	}
	sil, err := e.opts.Store.Silences(ctx)
	if err != nil {
		return fmt.Errorf("load silences: %w", err)
	}
	prev := e.rules.Load()
	rs := newRuleSet(rules)
	e.rules.Store(rs)
	e.seedNoData(prev, rs)
	e.silences = sil
	e.open = make(map[pairKey]*Record, len(open))
	var firing [3]int64
	for i := range open {
		r := open[i]
		e.open[pairKey{r.RuleID, r.Device}] = &r
		if r.State == StateFiring {
			firing[sevIndex(r.Severity)]++
		}
	}
	for i := range firing {
		e.firing[i].Store(firing[i])
	}
	return nil
}

// reloadDevice refreshes the open alerts of one device from the store
// (another instance may have opened or closed some).
func (e *Engine) reloadDevice(ctx context.Context, device string) {
	open, err := e.opts.Store.Open(ctx, device)
	if err != nil {
		e.log.Warn("reload open alerts", "device", device, "err", err)
		return
	}
	for k := range e.open {
		if k.device == device {
			delete(e.open, k)
		}
	}
	for i := range open {
		r := open[i]
		e.open[pairKey{r.RuleID, r.Device}] = &r
	}
}

// seedNoData starts, at now, the no_data clock of every online device
// a no_data rule new in rs (not in prev, or on another metric) selects:
// a device connected before the rule existed (or before this engine
// loaded it) is watched from then on.
func (e *Engine) seedNoData(prev, rs *ruleSet) {
	var fresh []*compiled
	for _, list := range rs.noData {
		for _, c := range list {
			if p := prev.byID[c.ID]; p == nil || p.Condition.Type != CondNoData || p.Condition.Metric != c.Condition.Metric {
				fresh = append(fresh, c)
			}
		}
	}
	if len(fresh) == 0 {
		return
	}
	now := e.now()
	after := ""
	for {
		devs, next, _ := e.opts.Devices.List(devices.Filter{After: after, Limit: devices.MaxListPageSize})
		for _, d := range devs {
			if _, here := e.online[d.ID]; !d.Online && !here {
				continue
			}
			for _, c := range fresh {
				dm := devMetric{d.ID, c.Condition.Metric}
				if _, seen := e.lastSeen[dm]; !seen && c.selects(d.ID, d.Labels) {
					e.lastSeen[dm] = now
				}
			}
		}
		if next == "" {
			return
		}
		after = next
	}
}

func (e *Engine) startupOffline(ctx context.Context) {
	rs := e.rules.Load()
	if len(rs.offline) == 0 {
		return
	}
	now := e.now()
	after := ""
	for {
		devs, next, _ := e.opts.Devices.List(devices.Filter{After: after, Limit: devices.MaxListPageSize})
		for _, d := range devs {
			if d.Online || d.LastSeen == nil {
				continue
			}
			for _, c := range rs.offline {
				if c.selects(d.ID, d.Labels) {
					e.openAlert(ctx, c, d.ID, d.Labels, now, nil, Event{Type: StatePending, Presence: &Presence{Online: false, At: now}, Reason: "offline at start"})
				}
			}
		}
		if next == "" {
			return
		}
		after = next
	}
}

// handle evaluates one input; when a transition lost its compare-and-set
// (another instance moved the alert), the device's view was reloaded
// from the store and the input is evaluated once more against it.
//
// A transition lost to another store error (a failover, a connection
// reset) is retried too, by evaluating the input again, at most
// storeRetries times with a doubling backoff from storeBackoff, on the
// engine's goroutine: the event that caused it (an online, a deletion)
// may never come again. Past that it is logged and lost; meanwhile the
// input queue fills and drops (counted) rather than block the bridge.
func (e *Engine) handle(ctx context.Context, in input) {
	conflictTries, errTries := 0, 0
	backoff := storeBackoff
	for retry := false; ; retry = true {
		e.conflicts, e.storeErrs = 0, 0
		e.handleOnce(ctx, in, retry)
		switch {
		case e.conflicts > 0 && conflictTries < 1:
			conflictTries++
		case e.storeErrs > 0 && errTries < storeRetries:
			errTries++
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff *= 2
		default:
			return
		}
	}
}

// Retries of a transition the store failed (not a lost compare-and-set).
const (
	storeRetries = 3
	storeBackoff = 50 * time.Millisecond
)

// handleOnce evaluates in; retry is set when it evaluates it again (a
// rejection is counted once).
func (e *Engine) handleOnce(ctx context.Context, in input, retry bool) {
	switch in.kind {
	case inDeleted:
		e.deviceGone(ctx, in.ev.Device)
	case inChanged:
		e.deviceChanged(ctx, in.ev.Device)
	case inRejected:
		e.rejected(ctx, in.ev.Device, !retry)
	case inGaps:
		e.gaps(ctx, in.ev.Device, in.n)
	case inEvent:
		switch in.ev.Type {
		case telemetry.EventReading:
			e.reading(ctx, in.ev)
		case telemetry.EventPresence:
			e.presence(ctx, in.ev)
		}
	}
}

func (e *Engine) labels(id string) (map[string]string, bool) {
	d, err := e.opts.Devices.Get(id)
	if err != nil {
		return nil, false
	}
	return d.Labels, true
}

func (e *Engine) reading(ctx context.Context, ev telemetry.Event) {
	rs := e.rules.Load()
	labels, ok := e.labels(ev.Device)
	if !ok {
		return
	}
	now := e.now()
	var ts *time.Time
	if ev.TS > 0 {
		t := time.UnixMilli(ev.TS).UTC()
		ts = &t
	}
	for name, v := range ev.Metrics {
		for _, c := range rs.noData[name] {
			if !c.selects(ev.Device, labels) {
				e.unselected(ctx, c, ev.Device, now)
				continue
			}
			e.lastSeen[devMetric{ev.Device, name}] = now
			if a := e.open[pairKey{c.ID, ev.Device}]; a != nil {
				e.resolve(ctx, a, now, Event{Type: StateResolved, ReadingTS: ts, Reason: "data again"})
			}
		}
		if v.Kind != telemetry.KindNumber {
			continue
		}
		for _, list := range [2][]*compiled{rs.thrAny[name], rs.thrDev[name][ev.Device]} {
			for _, c := range list {
				if c.selects(ev.Device, labels) {
					e.threshold(ctx, c, ev.Device, labels, v.Num, ts, now)
				} else {
					e.unselected(ctx, c, ev.Device, now)
				}
			}
		}
	}
}

func (e *Engine) threshold(ctx context.Context, c *compiled, device string, labels map[string]string, v float64, ts *time.Time, now time.Time) {
	cond := &c.Condition
	a := e.open[pairKey{c.ID, device}]
	val := v
	summary := fmt.Sprintf("%s %s %s %s", cond.Metric, strconv.FormatFloat(v, 'g', -1, 64), cond.Op, strconv.FormatFloat(*cond.Value, 'g', -1, 64))
	switch {
	case a == nil:
		if !cond.holds(v) {
			return
		}
		e.openAlert(ctx, c, device, labels, now, &val, Event{Type: StatePending, Value: &val, ReadingTS: ts}, withSummary(summary))
	case a.State == StatePending:
		if !cond.holds(v) {
			e.resolve(ctx, a, now, Event{Type: StateResolved, Value: &val, ReadingTS: ts, Reason: "condition cleared before firing"})
			return
		}
		a.Value, a.Summary = &val, summary // in memory only: the timeline keeps transitions
		if now.Sub(a.Since) >= cond.forDur() {
			e.fire(ctx, a, now, Event{Type: StateFiring, Value: &val, ReadingTS: ts})
		}
	case a.State == StateFiring:
		if cond.clears(v) {
			e.resolve(ctx, a, now, Event{Type: StateResolved, Value: &val, ReadingTS: ts, Reason: "condition cleared"})
			return
		}
		a.Value = &val
	}
}

type openOpt func(*Record)

func withSummary(s string) openOpt { return func(r *Record) { r.Summary = s } }

// withSince starts the episode at t (an offline alert: the offline time).
func withSince(t time.Time) openOpt { return func(r *Record) { r.Since, r.StartedAt = t, t } }

// openAlert starts a new episode of (c, device), pending, or firing at
// once when the rule's for is 0.
func (e *Engine) openAlert(ctx context.Context, c *compiled, device string, labels map[string]string, now time.Time, v *float64, ev Event, opts ...openOpt) {
	key := pairKey{c.ID, device}
	if e.open[key] != nil {
		return
	}
	if len(e.open) >= e.opts.MaxOpen {
		e.refused.Add(1)
		if now.Sub(e.lastRefuse) >= 10*time.Second {
			e.lastRefuse = now
			e.log.Warn("open alert bound reached; new alerts refused", "max", e.opts.MaxOpen, "refused_total", e.refused.Load())
		}
		return
	}
	r := &Record{Alert: Alert{ID: newID("alert-"), RuleID: c.ID, Rule: c.Name, Device: device, Severity: c.Severity,
		State: StatePending, Since: now, StartedAt: now, Value: v, Labels: labels}, Cond: condKey(&c.Condition)}
	if r.Labels == nil {
		r.Labels = map[string]string{}
	}
	for _, o := range opts {
		o(r)
	}
	if r.Summary == "" {
		r.Summary = defaultSummary(&c.Condition)
	}
	ev.At = now
	evs := []Event{ev}
	if c.Condition.Type == CondThreshold || c.Condition.Type == CondOffline {
		if now.Sub(r.Since) < c.Condition.forDur() {
			e.commit(ctx, r, 0, evs, nil)
			return
		}
	}
	// No for (or a condition that is already its own window): firing now.
	e.fireWith(ctx, r, 0, now, evs, Event{Type: StateFiring, Value: v, ReadingTS: ev.ReadingTS, Presence: ev.Presence})
}

func defaultSummary(c *Condition) string {
	switch c.Type {
	case CondOffline:
		return fmt.Sprintf("offline for %s", c.forDur())
	case CondNoData:
		return fmt.Sprintf("no %s for %s", c.Metric, c.forDur())
	case CondRejections:
		return fmt.Sprintf("more than %d rejected messages in %s", *c.Count, time.Duration(*c.Window))
	case CondGaps:
		return fmt.Sprintf("more than %d open seq gaps", *c.Count)
	}
	return c.Type
}

func (e *Engine) fire(ctx context.Context, a *Record, now time.Time, ev Event) {
	n := *a
	e.fireWith(ctx, &n, a.Version, now, nil, ev)
}

// fireWith moves r to firing (after the events before), queueing its
// firing notification unless a silence covers it.
func (e *Engine) fireWith(ctx context.Context, r *Record, prev int64, now time.Time, before []Event, ev Event) {
	r.State, r.Since, r.Fired = StateFiring, now, true
	t := now
	r.FiredAt = &t
	ev.At = now
	evs := append(before, ev)
	var notes []notify.Notification
	if until := e.silencedUntil(r.RuleID, r.Device, now); until != nil {
		r.SilencedUntil = until
	} else {
		r.SilencedUntil = nil
		r.Notified = true
		r.NotifiedRule, r.NotifiedSeverity = r.Rule, r.Severity
		notes = []notify.Notification{notification(r, notify.KindFiring, r.Seq+int64(len(evs)), now)}
	}
	e.commit(ctx, r, prev, evs, notes)
}

func (e *Engine) resolve(ctx context.Context, a *Record, now time.Time, ev Event) {
	n := *a
	n.State, n.Since = StateResolved, now
	t := now
	n.ResolvedAt = &t
	if ev.Value != nil {
		n.Value = ev.Value
	}
	ev.At, ev.Type = now, StateResolved
	var notes []notify.Notification
	if n.Notified {
		notes = []notify.Notification{notification(&n, notify.KindResolved, n.Seq+1, now)}
	}
	e.commit(ctx, &n, a.Version, []Event{ev}, notes)
}

// notification is the outbox entry for r entering kind; seq is the
// timeline event it reports, which makes its key unique per transition.
func notification(r *Record, kind string, seq int64, now time.Time) notify.Notification {
	// The identity the alert fired with, whatever the rule is called now.
	rule, sev := r.Rule, r.Severity
	if r.NotifiedRule != "" {
		rule, sev = r.NotifiedRule, r.NotifiedSeverity
	}
	n := notify.Notification{Key: r.ID + "/" + strconv.FormatInt(seq, 10), Kind: kind, AlertID: r.ID, RuleID: r.RuleID, Rule: rule,
		Device: r.Device, Severity: sev, Labels: r.Labels, Value: r.Value, Summary: r.Summary, At: now}
	if r.FiredAt != nil {
		n.StartsAt = *r.FiredAt
	}
	if kind == notify.KindResolved {
		n.EndsAt = now
	}
	return n
}

func (e *Engine) silencedUntil(rule, device string, now time.Time) *time.Time {
	var until *time.Time
	for i := range e.silences {
		s := &e.silences[i]
		if s.matches(rule, device, now) && (until == nil || s.Until.After(*until)) {
			u := s.Until
			until = &u
		}
	}
	return until
}

// commit writes r (its version prev+1) with evs and notes in one store
// transaction, then updates the engine's view, the counters and the live
// fan-out. A lost compare-and-set reloads the device's open alerts: the
// next input evaluates against the store's truth.
func (e *Engine) commit(ctx context.Context, r *Record, prev int64, evs []Event, notes []notify.Notification) bool {
	r.Version = prev + 1
	for i := range evs {
		r.Seq++
		evs[i].Seq = r.Seq
		evs[i].Note = telemetry.Printable(evs[i].Note)
	}
	if len(e.opts.Targets) == 0 {
		notes = nil
	}
	var old string
	if o := e.open[pairKey{r.RuleID, r.Device}]; o != nil && o.ID == r.ID {
		old = o.State
	}
	err := e.opts.Store.Apply(ctx, Transition{Alert: *r, Prev: prev, Events: evs, Notify: notes, Targets: e.opts.Targets})
	if err != nil {
		if errors.Is(err, ErrConflict) {
			e.conflicts++
			e.log.Debug("alert changed elsewhere; reloading", "alert", r.ID, "device", r.Device)
		} else {
			e.storeErrs++
			e.log.Warn("alert transition not stored", "alert", r.ID, "device", r.Device, "err", err)
		}
		e.reloadDevice(ctx, r.Device)
		return false
	}
	if len(notes) > 0 && e.opts.OnQueued != nil {
		e.opts.OnQueued()
	}
	key := pairKey{r.RuleID, r.Device}
	if r.Open() {
		e.open[key] = r
	} else {
		delete(e.open, key)
	}
	si := sevIndex(r.Severity)
	if old == StateFiring && r.State != StateFiring {
		e.firing[si].Add(-1)
	}
	if old != StateFiring && r.State == StateFiring {
		e.firing[si].Add(1)
	}
	if old != r.State {
		for _, ev := range evs {
			switch ev.Type {
			case StatePending:
				e.transitions[0].Add(1)
			case StateFiring:
				e.transitions[1].Add(1)
			case StateResolved:
				e.transitions[2].Add(1)
			}
		}
		e.log.Info("alert "+r.State, "alert", r.ID, "rule", r.RuleID, "device", r.Device, "severity", r.Severity)
	}
	e.publish(r)
	return true
}

func (e *Engine) publish(r *Record) {
	if e.opts.Live == nil {
		return
	}
	b, err := json.Marshal(r.Alert)
	if err != nil {
		return
	}
	e.opts.Live.Publish(telemetry.Event{Type: telemetry.EventAlert, Device: r.Device, ID: r.ID, Status: r.State, Alert: b})
}

func sevIndex(s string) int {
	for i, v := range severities {
		if v == s {
			return i
		}
	}
	return 0
}

func (e *Engine) presence(ctx context.Context, ev telemetry.Event) {
	if ev.Online == nil {
		return
	}
	rs := e.rules.Load()
	labels, ok := e.labels(ev.Device)
	if !ok {
		return
	}
	now := e.now()
	at := now
	if ev.At > 0 {
		at = time.UnixMilli(ev.At).UTC()
	}
	// Another instance may hold this device's alerts (it went offline
	// there): the store is the truth.
	e.reloadDevice(ctx, ev.Device)
	p := &Presence{Online: *ev.Online, At: at}
	if *ev.Online {
		e.online[ev.Device] = struct{}{}
	} else {
		delete(e.online, ev.Device)
	}
	if *ev.Online {
		for _, c := range rs.offline {
			if a := e.open[pairKey{c.ID, ev.Device}]; a != nil {
				e.resolve(ctx, a, now, Event{Presence: p, Reason: "device online"})
			}
		}
		for m, list := range rs.noData {
			for _, c := range list {
				if c.selects(ev.Device, labels) {
					if _, seen := e.lastSeen[devMetric{ev.Device, m}]; !seen {
						e.lastSeen[devMetric{ev.Device, m}] = now
					}
				}
			}
		}
		return
	}
	for m := range rs.noData {
		delete(e.lastSeen, devMetric{ev.Device, m})
		for _, c := range rs.noData[m] {
			if a := e.open[pairKey{c.ID, ev.Device}]; a != nil {
				e.resolve(ctx, a, now, Event{Presence: p, Reason: "device offline"})
			}
		}
	}
	for _, c := range rs.offline {
		if c.selects(ev.Device, labels) {
			// Since the offline time, not the moment the hub evaluated it.
			e.openAlert(ctx, c, ev.Device, labels, now, nil, Event{Type: StatePending, Presence: p}, withSince(at))
		}
	}
}

// rejected counts one rejection of device (when record) and opens the
// alerts of the rejections rules whose window is over their count.
func (e *Engine) rejected(ctx context.Context, device string, record bool) {
	rs := e.rules.Load()
	labels, ok := e.labels(device)
	if !ok {
		return
	}
	now := e.now()
	for _, c := range rs.rejections {
		if !c.selects(device, labels) {
			continue
		}
		key := pairKey{c.ID, device}
		w := trimWindow(e.rejs[key], now.Add(-time.Duration(*c.Condition.Window)))
		// Bounded: count+1 entries are all the rule needs to know.
		if record {
			if len(w) > *c.Condition.Count {
				w = w[len(w)-*c.Condition.Count:]
			}
			w = append(w, now)
		}
		e.rejs[key] = w
		if len(w) > *c.Condition.Count && e.open[key] == nil {
			e.openAlert(ctx, c, device, labels, now, nil, Event{Type: StatePending, Reason: fmt.Sprintf("%d rejected messages", len(w))},
				func(r *Record) { t := now; r.LastRejection = &t })
		}
	}
}

// gaps evaluates the gaps rules selecting device against its open gaps:
// more than the rule's count fires at once, the count or fewer resolves.
func (e *Engine) gaps(ctx context.Context, device string, open int) {
	rs := e.rules.Load()
	labels, ok := e.labels(device)
	if !ok {
		return
	}
	now := e.now()
	v := float64(open)
	for _, c := range rs.gaps {
		if !c.selects(device, labels) {
			continue
		}
		a := e.open[pairKey{c.ID, device}]
		switch {
		case open > *c.Condition.Count && a == nil:
			e.openAlert(ctx, c, device, labels, now, &v, Event{Type: StatePending, Value: &v},
				withSummary(fmt.Sprintf("%d open seq gaps (more than %d)", open, *c.Condition.Count)))
		case open <= *c.Condition.Count && a != nil:
			e.resolve(ctx, a, now, Event{Value: &v, Reason: "open gaps at or below the count"})
		}
	}
}

func trimWindow(w []time.Time, from time.Time) []time.Time {
	i := 0
	for i < len(w) && w[i].Before(from) {
		i++
	}
	return w[i:]
}

// unselected resolves the open alert of (c, device) when c no longer
// selects the device (its labels changed after the alert opened).
func (e *Engine) unselected(ctx context.Context, c *compiled, device string, now time.Time) {
	if a := e.open[pairKey{c.ID, device}]; a != nil {
		e.resolve(ctx, a, now, Event{Reason: "rule no longer selects the device"})
	}
}

// deviceChanged resolves the device's open alerts of rules that no longer
// select it under its current labels.
func (e *Engine) deviceChanged(ctx context.Context, device string) {
	labels, ok := e.labels(device)
	if !ok {
		e.deviceGone(ctx, device)
		return
	}
	rs := e.rules.Load()
	now := e.now()
	e.reloadDevice(ctx, device)
	for k, a := range e.open {
		if k.device != device {
			continue
		}
		if c := rs.byID[k.rule]; c != nil && !c.selects(device, labels) {
			e.resolve(ctx, a, now, Event{Reason: "rule no longer selects the device"})
		}
	}
}

func (e *Engine) deviceGone(ctx context.Context, device string) {
	now := e.now()
	e.reloadDevice(ctx, device)
	for k, a := range e.open {
		if k.device == device {
			e.resolve(ctx, a, now, Event{Reason: "device deleted"})
		}
	}
	delete(e.online, device)
	for k := range e.lastSeen {
		if k.device == device {
			delete(e.lastSeen, k)
		}
	}
	for k := range e.rejs {
		if k.device == device {
			delete(e.rejs, k)
		}
	}
}

// sweep runs the timers: pending alerts whose for has passed fire, rules
// gone resolve their alerts, silences that ended send the firing
// notification they held back, no_data and rejections windows move.
func (e *Engine) sweep(ctx context.Context) {
	rs := e.rules.Load()
	now := e.now()
	var orphans []*Record
	for k, a := range e.open {
		c := rs.byID[k.rule]
		if c == nil {
			orphans = append(orphans, a)
			continue
		}
		if a.Cond != "" && a.Cond != condKey(&c.Condition) {
			e.resolve(ctx, a, now, Event{Reason: "rule condition changed"})
			continue
		}
		switch {
		case a.State == StatePending && c.Condition.Type == CondOffline && now.Sub(a.Since) >= c.Condition.forDur() && e.onlineHere(a.Device):
			// Its online event was lost (a store error past the retries):
			// the registry knows it is connected here.
			e.resolve(ctx, a, now, Event{Presence: &Presence{Online: true, At: now}, Reason: "device online"})
		case a.State == StatePending && now.Sub(a.Since) >= c.Condition.forDur():
			e.fire(ctx, a, now, Event{Type: StateFiring, Value: a.Value})
		case a.State == StateFiring && !a.Notified && !silenceAhead(a, now) && e.silencedUntil(a.RuleID, a.Device, now) == nil:
			n := *a
			n.Notified, n.SilencedUntil = true, nil
			n.NotifiedRule, n.NotifiedSeverity = n.Rule, n.Severity
			e.commit(ctx, &n, a.Version, []Event{{At: now, Type: EventNotified, Reason: "silence ended"}},
				[]notify.Notification{notification(&n, notify.KindFiring, n.Seq+1, now)})
		case a.SilencedUntil != nil && !silenceAhead(a, now) && e.silencedUntil(a.RuleID, a.Device, now) == nil:
			// The silence ended: silenced_until goes.
			n := *a
			n.SilencedUntil = nil
			e.commit(ctx, &n, a.Version, nil, nil)
		case c.Condition.Type == CondRejections:
			e.sweepRejections(ctx, c, a, now)
		}
	}
	e.resolveOrphans(ctx, orphans, now)
	for k, w := range e.rejs {
		if c := rs.byID[k.rule]; c == nil || len(trimWindow(w, now.Add(-time.Duration(*c.Condition.Window)))) == 0 {
			delete(e.rejs, k)
		}
	}
	for dm, last := range e.lastSeen {
		list := rs.noData[dm.metric]
		if len(list) == 0 {
			delete(e.lastSeen, dm)
			continue
		}
		var labels map[string]string
		for _, c := range list {
			if now.Sub(last) < c.Condition.forDur() || e.open[pairKey{c.ID, dm.device}] != nil {
				continue
			}
			if labels == nil {
				l, ok := e.labels(dm.device)
				if !ok {
					delete(e.lastSeen, dm)
					break
				}
				labels = l
			}
			if c.selects(dm.device, labels) {
				e.openAlert(ctx, c, dm.device, labels, now, nil, Event{Type: StatePending, Reason: "no data since " + last.Format(time.RFC3339)})
			}
		}
	}
}

// onlineHere reports whether the registry has device connected to this
// instance.
func (e *Engine) onlineHere(device string) bool {
	d, err := e.opts.Devices.Get(device)
	return err == nil && d.Online
}

// silenceAhead reports whether a's silenced_until is still ahead: the
// silence may be one this engine has not loaded yet (made on another
// instance); deleting a silence clears the field of the alerts it
// covered.
func silenceAhead(a *Record, now time.Time) bool {
	return a.SilencedUntil != nil && a.SilencedUntil.After(now)
}

// resolveOrphans resolves, "rule deleted", the open alerts whose rule
// this engine does not know, once a fresh read of the rules confirms the
// rule is gone: another instance may have just created it. A rule found
// makes the fresh read the engine's rules.
func (e *Engine) resolveOrphans(ctx context.Context, orphans []*Record, now time.Time) {
	if len(orphans) == 0 {
		return
	}
	rules, err := e.opts.Store.Rules(ctx)
	if err != nil {
		e.log.Warn("alert rules not read; alerts of unknown rules kept", "err", err)
		return
	}
	ids := make(map[string]struct{}, len(rules))
	for _, r := range rules {
		ids[r.ID] = struct{}{}
	}
	stale := false
	for _, a := range orphans {
		if _, ok := ids[a.RuleID]; ok {
			stale = true
			continue
		}
		e.resolve(ctx, a, now, Event{Reason: "rule deleted"})
	}
	if stale {
		prev := e.rules.Load()
		rs := newRuleSet(rules)
		e.rules.Store(rs)
		e.seedNoData(prev, rs)
	}
}

// sweepRejections resolves a rejections alert once its window is below
// the count. Only a window this engine held for a whole window length
// tells that; without one (a restart, or another instance's device) the
// alert resolves only when a whole window has passed since its last
// rejection as the store records it. An engine holding the window keeps
// that record fresh (a write per quarter window at most).
func (e *Engine) sweepRejections(ctx context.Context, c *compiled, a *Record, now time.Time) {
	k := pairKey{a.RuleID, a.Device}
	win := time.Duration(*c.Condition.Window)
	w := trimWindow(e.rejs[k], now.Add(-win))
	e.rejs[k] = w
	last := a.StartedAt
	if a.LastRejection != nil {
		last = *a.LastRejection
	}
	if n := len(w); n > 0 && w[n-1].After(last) {
		last = w[n-1]
	}
	full := len(w) > 0 && now.Sub(e.started) >= win
	switch {
	case full && len(w) <= *c.Condition.Count:
		e.resolve(ctx, a, now, Event{Reason: "rejections below the count"})
	case !full && now.Sub(last) >= win:
		e.resolve(ctx, a, now, Event{Reason: "no rejections in the window"})
	case len(w) > 0 && (a.LastRejection == nil || last.Sub(*a.LastRejection) >= win/4):
		n := *a
		t := last
		n.LastRejection = &t
		e.commit(ctx, &n, a.Version, nil, nil)
	}
}

func newID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}
