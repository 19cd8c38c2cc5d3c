package alerts_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/dashboard/alerts"
	"github.com/fieldhub/fieldhub/dashboard/alerts/boltstore"
	"github.com/fieldhub/fieldhub/dashboard/alerts/notify"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Adversarial review of issue #23 (review-alerts). Each test names a
// defect found by attacking the engine; they fail until it is fixed.

// A device whose labels change (PATCH /api/v1/devices/{id}) so that a
// label-selected rule no longer selects it keeps its firing alert
// forever: reading() skips rules that do not select the device, so even
// a clearing reading never resolves it, and no sweep or hook looks at
// it. applyRules resolves such alerts when the RULE changes ("rule no
// longer selects the device"); a device change must end the same way.
func TestAttackAlertsReviewDeviceLabelsChangedLeavesFiringStuck(t *testing.T) {
	h := newHarness(t)
	h.rule(`{"name":"north hot","selector":{"labels":{"site":"north"}},"severity":"warning",
		"condition":{"type":"threshold","metric":"temp","op":">","value":80}}`)
	h.reading("pump-1", 85)
	h.want("pump-1", alerts.StateFiring, true)

	// The operator moves pump-1 to another site: the rule no longer selects it.
	h.fleet.mu.Lock()
	d := h.fleet.devs["pump-1"]
	d.Labels = map[string]string{"site": "south"}
	h.fleet.devs["pump-1"] = d
	h.fleet.mu.Unlock()

	h.clock.Add(time.Second)
	h.reading("pump-1", 20) // would clear it anyway
	h.clock.Add(time.Minute)
	h.e.Sweep(h.ctx)
	if a := h.state("pump-1"); a.State != alerts.StateResolved {
		t.Fatalf("pump-1 no longer matches the rule's selector and reads 20, yet its alert %s is %s: stuck open forever", a.ID, a.State)
	}
}

// A firing rejections alert is resolved by the first sweep after a
// restart although the window is still full: the per-(rule, device)
// rejection window (Engine.rejs) lives only in memory, and sweep resolves
// any open rejections alert whose in-memory window is empty. The contract:
// "A restart keeps firing alerts firing".
func TestAttackAlertsReviewRejectionsRestartResolvesFiring(t *testing.T) {
	h := newHarness(t)
	h.rule(`{"name":"bad","severity":"warning","condition":{"type":"rejections","count":2,"window":"5m"}}`)
	for range 3 {
		h.e.StepRejected(h.ctx, "pump-1")
	}
	h.want("pump-1", alerts.StateFiring, true)
	h.outbox() // the firing notification

	h.restart()
	h.clock.Add(time.Second) // well inside the 5m window
	h.e.Sweep(h.ctx)
	if a := h.state("pump-1"); a.State != alerts.StateFiring {
		t.Fatalf("1s after 3 rejections in a 5m window (count 2), a restart made the alert %s (resolved notification %v)", a.State, h.outbox())
	}
}

// With several instances (PostgreSQL) every instance's resync loads all
// open alerts, and its sweep resolves any rejections alert it has no
// in-memory window for: instance B resolves, within one resync, the
// rejections alert instance A just fired for a device whose session A
// holds (and A re-opens it at the next rejection: flapping, with a
// firing+resolved notification pair each time). Two engines over one
// store are two instances.
func TestAttackAlertsReviewRejectionsOtherInstanceResolves(t *testing.T) {
	h := newHarness(t)
	h.rule(`{"name":"bad","severity":"warning","condition":{"type":"rejections","count":2,"window":"5m"}}`)
	for range 3 {
		h.e.StepRejected(h.ctx, "pump-1") // instance A holds pump-1's session
	}
	h.want("pump-1", alerts.StateFiring, true)

	b, err := alerts.New(alerts.Options{Store: h.store, Devices: h.fleet, Targets: targets, Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Load(h.ctx); err != nil { // B's periodic resync
		t.Fatal(err)
	}
	h.clock.Add(time.Second)
	b.Sweep(h.ctx) // B saw none of pump-1's rejections
	if a := h.state("pump-1"); a.State != alerts.StateFiring {
		t.Fatalf("instance B, which never saw pump-1's rejections, moved A's firing alert to %s", a.State)
	}
}

// PUT of a threshold rule into an offline rule (same id, same selector)
// keeps the threshold episode: it stays firing under a rule whose
// condition (offline) is false for the online, reporting device, and no
// reading or sweep ever resolves it (threshold evaluation no longer looks
// at the rule; offline only resolves on an online event). "A rule change
// applies to new evaluations at once."
func TestAttackAlertsReviewRuleTypeChangeLeavesFiringStuck(t *testing.T) {
	h := newHarness(t)
	r := h.rule(`{"name":"hot","severity":"warning","condition":{"type":"threshold","metric":"temp","op":">","value":80}}`)
	h.presence("pump-1", true)
	h.reading("pump-1", 85)
	h.want("pump-1", alerts.StateFiring, true)

	var spec alerts.RuleSpec
	if err := json.Unmarshal([]byte(`{"name":"hot","severity":"warning","condition":{"type":"offline","for":"1m"}}`), &spec); err != nil {
		t.Fatal(err)
	}
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	upd := r
	upd.RuleSpec, upd.Version = spec, r.Version+1
	if err := h.store.PutRule(h.ctx, upd, r.Version); err != nil {
		t.Fatal(err)
	}
	if err := h.e.ReloadRules(h.ctx); err != nil { // what PUT's applyRules does
		t.Fatal(err)
	}
	h.clock.Add(time.Second)
	h.reading("pump-1", 20)
	h.clock.Add(2 * time.Minute)
	h.e.Sweep(h.ctx)
	if a := h.state("pump-1"); a.State == alerts.StateFiring {
		t.Fatalf("rule %s is now 'offline for 1m' and pump-1 is online and reporting, yet alert %s still fires (summary %q)", r.ID, a.ID, a.Summary)
	}
}

// An alert that was notified, then silenced, keeps silenced_until after
// the silence ended (only alerts whose firing was held back are cleared
// by the sweep): the REST alert says "silenced until <past time>" forever,
// against "silenced_until (omitted if not silenced)".
func TestAttackAlertsReviewSilencedUntilOutlivesSilence(t *testing.T) {
	h := newHarness(t)
	h.rule(`{"name":"hot","severity":"warning","condition":{"type":"threshold","metric":"temp","op":">","value":80}}`)
	h.reading("pump-1", 85) // firing and notified, before the engine runs
	a := h.want("pump-1", alerts.StateFiring, true)
	srv := serveEngine(t, h)

	st, body := post(t, srv.URL+"/api/v1/silences", []byte(`{"device":"pump-1","for":"1m"}`))
	if st != http.StatusCreated {
		t.Fatalf("silence: %d %s", st, body)
	}
	h.clock.Add(2 * time.Minute) // the silence ended
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(srv.URL + "/api/v1/alerts/" + a.ID)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), `"silenced_until"`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("2m after a 1m silence ended, the alert still shows it: %.400s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A no_data rule created while a device is online (and sends no temp)
// never alerts: the engine starts a device's no_data clock only on an
// online event or a reading of the metric (Engine.lastSeen), so a device
// that connected before the rule existed, or before a restart of the
// engine's view, is never watched. Contract: "no reading of metric for
// `for` while the device is online".
func TestAttackAlertsReviewNoDataRuleCreatedWhileOnlineNeverFires(t *testing.T) {
	h := newHarness(t)
	h.presence("pump-1", true) // connected first, sends other metrics only
	h.rule(`{"name":"quiet","severity":"info","condition":{"type":"no_data","metric":"temp","for":"10m"}}`)
	h.clock.Add(11 * time.Minute)
	h.e.Sweep(h.ctx)
	h.clock.Add(11 * time.Minute)
	h.e.Sweep(h.ctx)
	if a := h.state("pump-1"); a.State != alerts.StateFiring {
		t.Fatalf("pump-1 online for 22m without a temp reading under a 10m no_data rule: alert %q state %q", a.ID, a.State)
	}
}

// The contract fixes alert times as "RFC 3339 with ms"; the Alert's
// time.Time fields marshal as RFC3339Nano, which drops a zero fraction
// ("12:00:00Z"), so an alert on a whole second has no milliseconds.
func TestAttackAlertsReviewAlertTimesHaveMilliseconds(t *testing.T) {
	h := newHarness(t) // its clock is on a whole second
	h.rule(`{"name":"hot","severity":"warning","condition":{"type":"threshold","metric":"temp","op":">","value":80}}`)
	h.reading("pump-1", 85)
	a := h.want("pump-1", alerts.StateFiring, true)
	b, err := json.Marshal(a.Alert)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"since":"2026-12-01T12:00:00.000Z"`) {
		t.Fatalf("since not RFC 3339 with ms: %s", b)
	}
}

// racyStore runs between's work once, between the engine's reads of the
// rules and of the open alerts: another instance acting meanwhile.
type racyStore struct {
	*boltstore.Store
	between func()
}

func (s *racyStore) Open(ctx context.Context, device string) ([]alerts.Record, error) {
	if f := s.between; f != nil && device == "" {
		s.between = nil
		f()
	}
	return s.Store.Open(ctx, device)
}

// load() (the periodic resync of every instance) reads the rules, then
// the open alerts, in separate reads: a rule created on instance A with
// an alert opened between them is, for B, an alert of a deleted rule,
// and B's next sweep (1s, before the next resync) resolves it "rule
// deleted", sending a resolved notification for a rule that exists and a
// condition that still holds; A reopens it on the next reading: a
// firing/resolved/firing flap from nothing.
func TestAttackAlertsReviewResyncRaceResolvesNewRulesAlert(t *testing.T) {
	h := newHarness(t)
	rs := &racyStore{Store: h.store}
	b, err := alerts.New(alerts.Options{Store: rs, Devices: h.fleet, Targets: targets, Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Load(h.ctx); err != nil {
		t.Fatal(err)
	}
	rs.between = func() { // instance A: a new rule, and at once its alert
		h.rule(`{"name":"hot","severity":"warning","condition":{"type":"threshold","metric":"temp","op":">","value":80}}`)
		h.reading("pump-1", 85)
	}
	if err := b.Load(h.ctx); err != nil { // B's resync
		t.Fatal(err)
	}
	h.want("pump-1", alerts.StateFiring, true)
	h.clock.Add(time.Second)
	b.Sweep(h.ctx)
	if a := h.state("pump-1"); a.State != alerts.StateFiring {
		_, evs, _ := h.store.Alert(h.ctx, a.ID)
		t.Fatalf("instance B resolved A's alert of an existing rule: %s, timeline %+v", a.State, evs)
	}
}

// flakyStore fails the next Apply (a PostgreSQL blip: a failover, a
// connection reset) when fail is set.
type flakyStore struct {
	*boltstore.Store
	fail bool
}

func (s *flakyStore) Apply(ctx context.Context, t alerts.Transition) error {
	if s.fail {
		s.fail = false
		return errors.New("connection reset by peer")
	}
	return s.Store.Apply(ctx, t)
}

// A transition lost to one transient store error is never made again
// when the event that caused it is a one-off: the device's "online" is
// consumed, the resolve of its pending offline alert fails, and the
// sweep then FIRES the offline alert (and notifies) for a device that
// has been online all along. Nothing re-derives the resolve (presence is
// not re-checked on sweep, and the input is not retried).
func TestAttackAlertsReviewStoreBlipFiresOfflineForOnlineDevice(t *testing.T) {
	h := newHarness(t)
	h.rule(`{"name":"gone","severity":"critical","condition":{"type":"offline","for":"1m"}}`)
	fs := &flakyStore{Store: h.store}
	e, err := alerts.New(alerts.Options{Store: fs, Devices: h.fleet, Targets: targets, Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Load(h.ctx); err != nil {
		t.Fatal(err)
	}
	step := func(online bool) {
		e.Step(h.ctx, telemetry.Event{Type: telemetry.EventPresence, Device: "pump-1", Online: &online, At: h.clock.Now().UnixMilli()})
	}
	step(false)
	h.want("pump-1", alerts.StatePending, false)
	h.clock.Add(5 * time.Second)
	fs.fail = true
	step(true) // back online 5s later; its resolve hits the blip
	// The registry keeps it online from here on.
	h.fleet.mu.Lock()
	d := h.fleet.devs["pump-1"]
	d.Online = true
	h.fleet.devs["pump-1"] = d
	h.fleet.mu.Unlock()
	for range 3 {
		h.clock.Add(time.Minute)
		e.Sweep(h.ctx)
	}
	if a := h.state("pump-1"); a.State == alerts.StateFiring {
		t.Fatalf("pump-1 online since 5s after going offline, yet its offline alert fired after one store error (outbox %v)", h.outbox())
	}
}

// Renaming a rule (or changing its severity) while one of its alerts
// fires changes the alert's Alertmanager label set between its firing
// and its resolved notification (alertname, severity are identity
// labels there): Alertmanager gets the resolve for an alert it never
// had, keeps the original firing until its resolve_timeout, and the
// periodic re-send under the new name pages a second, duplicate alert.
func TestAttackAlertsReviewRuleRenameSplitsAlertmanagerIdentity(t *testing.T) {
	h := newHarness(t)
	r := h.rule(`{"name":"hot","severity":"warning","condition":{"type":"threshold","metric":"temp","op":">","value":80}}`)
	h.reading("pump-1", 85)
	h.want("pump-1", alerts.StateFiring, true)
	claim := func() []notify.Delivery {
		ds, err := h.store.Claim(h.ctx, notify.TargetAlertmanager, h.clock.Now().Add(time.Hour), time.Millisecond, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if err := h.store.Delivered(h.ctx, notify.TargetAlertmanager, d.Key); err != nil {
				t.Fatal(err)
			}
		}
		return ds
	}
	fired := claim()
	upd := r
	upd.Name, upd.Severity, upd.Version = "very hot", "critical", r.Version+1
	if err := h.store.PutRule(h.ctx, upd, r.Version); err != nil {
		t.Fatal(err)
	}
	if err := h.e.ReloadRules(h.ctx); err != nil { // PUT's applyRules
		t.Fatal(err)
	}
	h.clock.Add(time.Second)
	h.reading("pump-1", 20)
	h.want("pump-1", alerts.StateResolved, true)
	resolved := claim()
	if len(fired) != 1 || len(resolved) != 1 {
		t.Fatalf("deliveries: %d firing, %d resolved", len(fired), len(resolved))
	}
	fl, rl := notify.AlertmanagerLabels(fired[0].Notification), notify.AlertmanagerLabels(resolved[0].Notification)
	if !maps.Equal(fl, rl) {
		t.Fatalf("one alert, two Alertmanager identities: firing %v, resolved %v", fl, rl)
	}
}

// The same one-off loss on a device deletion: the resolve of the deleted
// device's firing alert hits a transient store error, and the alert
// fires forever (no event of that device will ever come; the sweep does
// not check that the device still exists), re-sent to Alertmanager at
// every re-send interval.
func TestAttackAlertsReviewStoreBlipKeepsDeletedDeviceFiring(t *testing.T) {
	h := newHarness(t)
	h.rule(`{"name":"hot","severity":"warning","condition":{"type":"threshold","metric":"temp","op":">","value":80}}`)
	fs := &flakyStore{Store: h.store}
	e, err := alerts.New(alerts.Options{Store: fs, Devices: h.fleet, Targets: targets, Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Load(h.ctx); err != nil {
		t.Fatal(err)
	}
	e.Step(h.ctx, telemetry.Event{Type: telemetry.EventReading, Device: "pump-1", TS: h.clock.Now().UnixMilli(),
		Metrics: telemetry.Metrics{"temp": telemetry.Number(85)}})
	h.want("pump-1", alerts.StateFiring, true)
	h.fleet.mu.Lock()
	delete(h.fleet.devs, "pump-1")
	h.fleet.mu.Unlock()
	fs.fail = true
	e.StepDeleted(h.ctx, "pump-1")
	for range 3 {
		h.clock.Add(time.Minute)
		e.Sweep(h.ctx)
	}
	if a := h.state("pump-1"); a.State == alerts.StateFiring {
		t.Fatalf("pump-1 was deleted 3m ago; its alert %s still fires after one store error", a.ID)
	}
}
