package alerts_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fieldhub/fieldhub/dashboard/alerts"
	"github.com/fieldhub/fieldhub/dashboard/alerts/boltstore"
	"github.com/fieldhub/fieldhub/dashboard/alerts/notify"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// fleet is a fake of the engine's own Devices interface.
type fleet struct {
	mu   sync.Mutex
	devs map[string]devices.Device
}

func newFleet(ids ...string) *fleet {
	f := &fleet{devs: map[string]devices.Device{}}
	for _, id := range ids {
		f.devs[id] = devices.Device{ID: id, Labels: map[string]string{"site": "north"}}
	}
	return f
}

func (f *fleet) Get(id string) (devices.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devs[id]
	if !ok {
		return d, devices.ErrNotFound
	}
	return d, nil
}

func (f *fleet) List(devices.Filter) ([]devices.Device, string, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []devices.Device
	for _, d := range f.devs {
		out = append(out, d)
	}
	return out, "", len(out)
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type liveSink struct {
	mu  sync.Mutex
	evs []telemetry.Event
}

func (l *liveSink) Publish(ev telemetry.Event) { l.mu.Lock(); l.evs = append(l.evs, ev); l.mu.Unlock() }

type harness struct {
	t     *testing.T
	ctx   context.Context
	store *boltstore.Store
	db    *bolt.DB
	clock *clock
	fleet *fleet
	live  *liveSink
	e     *alerts.Engine
}

var targets = []string{notify.TargetAlertmanager, notify.TargetWebhook}

func newHarness(t *testing.T) *harness {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "registry.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	h := &harness{t: t, ctx: context.Background(), store: boltstore.New(db), db: db,
		clock: &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}, fleet: newFleet("pump-1", "pump-2"), live: &liveSink{}}
	h.restart()
	return h
}

// restart is a new engine over the same store: a hub restart.
func (h *harness) restart() {
	e, err := alerts.New(alerts.Options{Store: h.store, Devices: h.fleet, Live: h.live, Targets: targets, Now: h.clock.Now})
	if err != nil {
		h.t.Fatal(err)
	}
	if err := e.Load(h.ctx); err != nil {
		h.t.Fatal(err)
	}
	h.e = e
}

func (h *harness) rule(body string) alerts.Rule {
	h.t.Helper()
	var spec alerts.RuleSpec
	if err := json.Unmarshal([]byte(body), &spec); err != nil {
		h.t.Fatal(err)
	}
	if err := spec.Validate(); err != nil {
		h.t.Fatal(err)
	}
	r := alerts.Rule{ID: fmt.Sprintf("rule-%d", h.clock.Now().UnixNano()), RuleSpec: spec, Version: 1}
	if err := h.store.PutRule(h.ctx, r, 0); err != nil {
		h.t.Fatal(err)
	}
	if err := h.e.ReloadRules(h.ctx); err != nil {
		h.t.Fatal(err)
	}
	return r
}

func (h *harness) reading(dev string, v float64) {
	h.e.Step(h.ctx, telemetry.Event{Type: telemetry.EventReading, Device: dev, TS: h.clock.Now().UnixMilli(),
		Metrics: telemetry.Metrics{"temp": telemetry.Number(v)}})
}

func (h *harness) presence(dev string, online bool) {
	h.e.Step(h.ctx, telemetry.Event{Type: telemetry.EventPresence, Device: dev, Online: &online, At: h.clock.Now().UnixMilli()})
}

// state returns the newest alert of dev (zero if none).
func (h *harness) state(dev string) alerts.Record {
	h.t.Helper()
	list, err := h.store.Alerts(h.ctx, alerts.Query{Device: dev, Limit: 1})
	if err != nil {
		h.t.Fatal(err)
	}
	if len(list) == 0 {
		return alerts.Record{}
	}
	return list[0]
}

// outbox claims everything due for the webhook target (far in the
// future, a fresh lease) and returns the keys with their kinds.
func (h *harness) outbox() []string {
	h.t.Helper()
	ds, err := h.store.Claim(h.ctx, notify.TargetWebhook, h.clock.Now().Add(24*time.Hour), time.Millisecond, 1000)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, d := range ds {
		out = append(out, d.Kind+" "+d.Device)
		if err := h.store.Delivered(h.ctx, notify.TargetWebhook, d.Key); err != nil {
			h.t.Fatal(err)
		}
	}
	return out
}

func (h *harness) want(dev, state string, fired bool) alerts.Record {
	h.t.Helper()
	a := h.state(dev)
	if a.State != state || a.Fired != fired {
		h.t.Fatalf("%s: alert %s state %q fired %v; want %q fired %v", dev, a.ID, a.State, a.Fired, state, fired)
	}
	return a
}

func (h *harness) wantOutbox(want ...string) {
	h.t.Helper()
	got := h.outbox()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		h.t.Fatalf("outbox %q, want %q", got, want)
	}
}

const hot = `{"name":"hot pumps","selector":{"devices":["pump-1"],"labels":{"site":"north"}},"severity":"warning",
	"condition":{"type":"threshold","metric":"temp","op":">","value":80,"for":"30s","clear":75}}`

func TestThresholdForAndHysteresis(t *testing.T) {
	h := newHarness(t)
	h.rule(hot)
	h.reading("pump-1", 85)
	first := h.want("pump-1", alerts.StatePending, false)
	h.clock.Add(10 * time.Second)
	h.reading("pump-1", 79) // breaks the condition while pending: cancelled, never notified
	h.want("pump-1", alerts.StateResolved, false)
	h.wantOutbox()

	h.reading("pump-1", 85)
	a := h.want("pump-1", alerts.StatePending, false)
	if a.ID == first.ID {
		t.Fatal("a new episode reused the old alert id")
	}
	h.clock.Add(29 * time.Second)
	h.e.Sweep(h.ctx)
	h.want("pump-1", alerts.StatePending, false)
	h.clock.Add(time.Second)
	h.e.Sweep(h.ctx)
	h.want("pump-1", alerts.StateFiring, true)
	h.wantOutbox("firing pump-1")

	h.reading("pump-1", 78) // below 80 but above clear 75: still firing
	h.want("pump-1", alerts.StateFiring, true)
	h.reading("pump-1", 74)
	r := h.want("pump-1", alerts.StateResolved, true)
	h.wantOutbox("resolved pump-1")
	if r.Summary == "" || r.Value == nil || *r.Value != 74 {
		t.Fatalf("resolved alert %+v", r)
	}
	_, evs, err := h.store.Alert(h.ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, ev := range evs {
		types = append(types, ev.Type)
	}
	if strings.Join(types, ",") != "pending,firing,resolved" {
		t.Fatalf("timeline %v", types)
	}
	// Not selected: pump-2 is not in the rule's device list.
	h.reading("pump-2", 100)
	if a := h.state("pump-2"); a.ID != "" {
		t.Fatalf("unselected device got alert %+v", a)
	}
}

func TestThresholdOperators(t *testing.T) {
	for _, tc := range []struct {
		cond           string
		fire, hold, ok float64 // fires at fire, still firing at hold, resolves at ok
	}{
		{`"op":"<","value":10,"clear":15`, 5, 12, 16},
		{`"op":"<=","value":10`, 10, 10, 10.5},
		{`"op":">=","value":10`, 10, 10, 9},
		{`"op":"==","value":1`, 1, 1, 0},
		{`"op":"!=","value":1`, 0, 2, 1},
	} {
		t.Run(tc.cond, func(t *testing.T) {
			h := newHarness(t)
			h.rule(`{"name":"r","severity":"critical","condition":{"type":"threshold","metric":"temp",` + tc.cond + `}}`)
			h.reading("pump-2", tc.fire)
			h.want("pump-2", alerts.StateFiring, true) // for 0: fires at once
			h.reading("pump-2", tc.hold)
			h.want("pump-2", alerts.StateFiring, true)
			h.reading("pump-2", tc.ok)
			h.want("pump-2", alerts.StateResolved, true)
			h.wantOutbox("firing pump-2", "resolved pump-2")
		})
	}
}

func TestOfflineAlert(t *testing.T) {
	h := newHarness(t)
	h.rule(`{"name":"gone","severity":"critical","condition":{"type":"offline","for":"5m"}}`)
	h.presence("pump-1", true)
	h.presence("pump-1", false)
	h.want("pump-1", alerts.StatePending, false)
	h.clock.Add(5 * time.Minute)
	h.e.Sweep(h.ctx)
	h.want("pump-1", alerts.StateFiring, true)
	h.wantOutbox("firing pump-1")
	if st := h.e.Stats(); st.Firing["critical"] != 1 || st.Transitions[alerts.StateFiring] != 1 {
		t.Fatalf("stats %+v", st)
	}
	h.presence("pump-1", true)
	h.want("pump-1", alerts.StateResolved, true)
	h.wantOutbox("resolved pump-1")
	if st := h.e.Stats(); st.Firing["critical"] != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestStartupOffline(t *testing.T) {
	h := newHarness(t)
	seen := h.clock.Now().Add(-time.Hour)
	h.fleet.devs["pump-1"] = devices.Device{ID: "pump-1", Presence: devices.Presence{LastSeen: &seen}}
	h.rule(`{"name":"gone","severity":"critical","condition":{"type":"offline","for":"1m"}}`)
	h.e.StartupOffline(h.ctx)
	h.want("pump-1", alerts.StatePending, false)
	if a := h.state("pump-2"); a.ID != "" { // never seen: no alert
		t.Fatalf("never-seen device got %+v", a)
	}
}

func TestNoDataAlert(t *testing.T) {
	h := newHarness(t)
	h.rule(`{"name":"quiet","severity":"info","condition":{"type":"no_data","metric":"temp","for":"10m"}}`)
	h.presence("pump-1", true)
	h.clock.Add(9 * time.Minute)
	h.reading("pump-1", 1)
	h.clock.Add(9 * time.Minute)
	h.e.Sweep(h.ctx)
	if a := h.state("pump-1"); a.ID != "" {
		t.Fatalf("alert before the window: %+v", a)
	}
	h.clock.Add(time.Minute)
	h.e.Sweep(h.ctx)
	h.want("pump-1", alerts.StateFiring, true)
	h.reading("pump-1", 2)
	h.want("pump-1", alerts.StateResolved, true)
	h.wantOutbox("firing pump-1", "resolved pump-1")
	// Offline devices are the offline rule's business.
	h.presence("pump-1", false)
	h.clock.Add(time.Hour)
	h.e.Sweep(h.ctx)
	h.want("pump-1", alerts.StateResolved, true)
}

func TestRejectionsAlert(t *testing.T) {
	h := newHarness(t)
	h.rule(`{"name":"bad","severity":"warning","condition":{"type":"rejections","count":3,"window":"1m"}}`)
	for range 3 {
		h.e.StepRejected(h.ctx, "pump-1")
	}
	if a := h.state("pump-1"); a.ID != "" {
		t.Fatalf("alert at the count (needs more than): %+v", a)
	}
	h.e.StepRejected(h.ctx, "pump-1")
	h.want("pump-1", alerts.StateFiring, true)
	h.clock.Add(61 * time.Second)
	h.e.Sweep(h.ctx)
	h.want("pump-1", alerts.StateResolved, true)
	h.wantOutbox("firing pump-1", "resolved pump-1")
}

func TestGapsAlert(t *testing.T) {
	h := newHarness(t)
	h.rule(`{"name":"lossy","severity":"warning","condition":{"type":"gaps","count":2}}`)
	h.e.StepGaps(h.ctx, "pump-1", 2)
	if a := h.state("pump-1"); a.ID != "" {
		t.Fatalf("alert at the count (needs more than): %+v", a)
	}
	h.e.StepGaps(h.ctx, "pump-1", 3)
	a := h.want("pump-1", alerts.StateFiring, true)
	if a.Value == nil || *a.Value != 3 {
		t.Fatalf("value %v, want the open gaps (3)", a.Value)
	}
	h.e.StepGaps(h.ctx, "pump-1", 4) // still above: the same alert
	if b := h.want("pump-1", alerts.StateFiring, true); b.ID != a.ID {
		t.Fatalf("a second alert %s while %s fires", b.ID, a.ID)
	}
	h.e.StepGaps(h.ctx, "pump-1", 2) // a late resend closed gaps
	h.want("pump-1", alerts.StateResolved, true)
	h.wantOutbox("firing pump-1", "resolved pump-1")
}

func TestRestartKeepsFiringAndDoesNotNotifyTwice(t *testing.T) {
	h := newHarness(t)
	h.rule(hot)
	h.reading("pump-1", 90)
	h.clock.Add(30 * time.Second)
	h.e.Sweep(h.ctx)
	h.wantOutbox("firing pump-1")
	firing := h.want("pump-1", alerts.StateFiring, true)

	h.restart()
	h.e.Sweep(h.ctx)
	h.reading("pump-1", 95)
	h.clock.Add(time.Minute)
	h.e.Sweep(h.ctx)
	if a := h.want("pump-1", alerts.StateFiring, true); a.ID != firing.ID {
		t.Fatalf("restart opened %s, want %s still firing", a.ID, firing.ID)
	}
	h.wantOutbox()
	if st := h.e.Stats(); st.Firing["warning"] != 1 {
		t.Fatalf("firing gauge after restart: %+v", st)
	}
	// A pending alert is re-armed: it fires after its for.
	h.reading("pump-1", 70)
	h.reading("pump-1", 90)
	h.restart()
	h.clock.Add(30 * time.Second)
	h.e.Sweep(h.ctx)
	h.want("pump-1", alerts.StateFiring, true)
	h.wantOutbox("resolved pump-1", "firing pump-1")
}

func TestStaleInstanceMakesNoSecondTransition(t *testing.T) {
	h := newHarness(t)
	h.rule(hot)
	h.reading("pump-1", 90)
	other := h.e
	h.restart() // a second engine over the same store: another instance
	h.clock.Add(30 * time.Second)
	h.e.Sweep(h.ctx)
	other.Sweep(h.ctx) // stale view: its compare-and-set loses
	h.want("pump-1", alerts.StateFiring, true)
	h.wantOutbox("firing pump-1")
	// The loser reloaded: it resolves the alert the winner fired, once.
	other.Step(h.ctx, telemetry.Event{Type: telemetry.EventReading, Device: "pump-1", Metrics: telemetry.Metrics{"temp": telemetry.Number(10)}})
	h.reading("pump-1", 10)
	h.want("pump-1", alerts.StateResolved, true)
	h.wantOutbox("resolved pump-1")
}

func TestSilenceHoldsNotificationUntilItEnds(t *testing.T) {
	h := newHarness(t)
	r := h.rule(hot)
	now := h.clock.Now()
	if err := h.store.PutSilence(h.ctx, alerts.Silence{ID: "sil-1", RuleID: r.ID, Until: now.Add(time.Hour), CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := h.e.Load(h.ctx); err != nil {
		t.Fatal(err)
	}
	h.reading("pump-1", 90)
	h.clock.Add(30 * time.Second)
	h.e.Sweep(h.ctx)
	a := h.want("pump-1", alerts.StateFiring, true)
	if a.SilencedUntil == nil {
		t.Fatal("silenced alert without silenced_until")
	}
	h.wantOutbox()
	h.clock.Add(time.Hour)
	h.e.Sweep(h.ctx)
	h.wantOutbox("firing pump-1")
	h.e.Sweep(h.ctx)
	h.wantOutbox()
}

func TestSilencedThroughoutResolvesQuietly(t *testing.T) {
	h := newHarness(t)
	h.rule(hot)
	now := h.clock.Now()
	_ = h.store.PutSilence(h.ctx, alerts.Silence{ID: "sil-1", Device: "pump-1", Until: now.Add(time.Hour), CreatedAt: now})
	_ = h.e.Load(h.ctx)
	h.reading("pump-1", 90)
	h.clock.Add(30 * time.Second)
	h.e.Sweep(h.ctx)
	h.reading("pump-1", 10)
	h.want("pump-1", alerts.StateResolved, true)
	h.wantOutbox() // never told of the firing: not told of the resolution
}

func TestRuleDeletedResolvesOpenAlerts(t *testing.T) {
	h := newHarness(t)
	r := h.rule(hot)
	h.reading("pump-1", 90)
	h.clock.Add(30 * time.Second)
	h.e.Sweep(h.ctx)
	h.wantOutbox("firing pump-1")
	if err := h.store.DeleteRule(h.ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if err := h.e.ReloadRules(h.ctx); err != nil {
		t.Fatal(err)
	}
	a := h.want("pump-1", alerts.StateResolved, true)
	h.wantOutbox("resolved pump-1")
	_, evs, _ := h.store.Alert(h.ctx, a.ID)
	if last := evs[len(evs)-1]; last.Reason != "rule deleted" {
		t.Fatalf("last event %+v", last)
	}
}

func TestRuleDeletedWhilePendingNotifiesNothing(t *testing.T) {
	h := newHarness(t)
	r := h.rule(hot)
	h.reading("pump-1", 90)
	_ = h.store.DeleteRule(h.ctx, r.ID)
	_ = h.e.ReloadRules(h.ctx)
	h.want("pump-1", alerts.StateResolved, false)
	h.wantOutbox()
}

func TestLiveEventOnTransition(t *testing.T) {
	h := newHarness(t)
	h.rule(hot)
	h.reading("pump-1", 90)
	h.live.mu.Lock()
	defer h.live.mu.Unlock()
	if len(h.live.evs) != 1 {
		t.Fatalf("live events %+v", h.live.evs)
	}
	ev := h.live.evs[0]
	var a alerts.Alert
	if err := json.Unmarshal(ev.Alert, &a); err != nil {
		t.Fatal(err)
	}
	if ev.Type != telemetry.EventAlert || ev.Device != "pump-1" || ev.Status != alerts.StatePending || ev.ID != a.ID || a.Rule != "hot pumps" {
		t.Fatalf("live event %+v alert %+v", ev, a)
	}
}

func TestAttackAlertsDeviceDeletedWhileFiring(t *testing.T) {
	h := newHarness(t)
	h.rule(hot)
	h.reading("pump-1", 90)
	h.clock.Add(30 * time.Second)
	h.e.Sweep(h.ctx)
	h.wantOutbox("firing pump-1")
	h.fleet.mu.Lock()
	delete(h.fleet.devs, "pump-1")
	h.fleet.mu.Unlock()
	h.e.StepDeleted(h.ctx, "pump-1")
	h.want("pump-1", alerts.StateResolved, true)
	h.wantOutbox("resolved pump-1")
}

func TestAttackAlertsOpenBound(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "r.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ids := make([]string, 50)
	for i := range ids {
		ids[i] = fmt.Sprintf("d-%d", i)
	}
	f := newFleet(ids...)
	e, _ := alerts.New(alerts.Options{Store: boltstore.New(db), Devices: f, MaxOpen: 10})
	ctx := context.Background()
	st := boltstore.New(db)
	v := 1.0
	_ = st.PutRule(ctx, alerts.Rule{ID: "rule-a", Version: 1, RuleSpec: alerts.RuleSpec{Name: "a", Severity: "info",
		Condition: alerts.Condition{Type: alerts.CondThreshold, Metric: "temp", Op: ">", Value: &v}}}, 0)
	_ = e.ReloadRules(ctx)
	for _, id := range ids {
		e.Step(ctx, telemetry.Event{Type: telemetry.EventReading, Device: id, Metrics: telemetry.Metrics{"temp": telemetry.Number(5)}})
	}
	if e.OpenCount() != 10 || e.Stats().Refused != 40 {
		t.Fatalf("open %d refused %d; want 10 and 40", e.OpenCount(), e.Stats().Refused)
	}
}

func TestAttackAlertsFloodNeverBlocks(t *testing.T) {
	h := newHarness(t)
	e, _ := alerts.New(alerts.Options{Store: h.store, Devices: h.fleet, QueueSize: 8})
	v := 1.0
	_ = h.store.PutRule(h.ctx, alerts.Rule{ID: "rule-f", Version: 1, RuleSpec: alerts.RuleSpec{Name: "f", Severity: "info",
		Condition: alerts.Condition{Type: alerts.CondThreshold, Metric: "temp", Op: ">", Value: &v}}}, 0)
	_ = e.Load(h.ctx)
	// Nobody runs the engine (a store stuck): the bridge's Publish must
	// return at once, every time, and count what it drops.
	for range 1000 {
		e.Publish(telemetry.Event{Type: telemetry.EventReading, Device: "pump-1", Metrics: telemetry.Metrics{"temp": telemetry.Number(5)}})
	}
	if e.QueueLen() != 8 || e.Stats().Dropped != 992 {
		t.Fatalf("queue %d dropped %d", e.QueueLen(), e.Stats().Dropped)
	}
	// A reading no rule looks at is not even queued.
	e2, _ := alerts.New(alerts.Options{Store: h.store, Devices: h.fleet, QueueSize: 8})
	_ = e2.Load(h.ctx)
	e2.Publish(telemetry.Event{Type: telemetry.EventReading, Device: "pump-1", Metrics: telemetry.Metrics{"rpm": telemetry.Number(5)}})
	if e2.QueueLen() != 0 {
		t.Fatal("unwatched metric queued")
	}
}

var _ = errors.Is
