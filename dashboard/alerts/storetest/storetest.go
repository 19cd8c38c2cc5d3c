// Package storetest is the conformance test every alerts.Store runs
// (boltstore against a temporary bbolt file, pgstore against a fresh
// PostgreSQL database): the same table of expectations, so the embedded
// store and PostgreSQL cannot drift apart. It may import
// dashboard/alerts and its notify package.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/dashboard/alerts"
	"github.com/fieldhub/fieldhub/dashboard/alerts/notify"
)

// Run runs the conformance tests; open returns an empty store whose
// outbox holds at most maxOutbox deliveries per target.
func Run(t *testing.T, open func(t *testing.T, maxOutbox int) alerts.Store) {
	t.Run("rules CAS", func(t *testing.T) { testRules(t, open(t, 10)) })
	t.Run("transitions CAS", func(t *testing.T) { testTransitions(t, open(t, 10)) })
	t.Run("racing creators make one open alert", func(t *testing.T) { testRace(t, open(t, 10)) })
	t.Run("outbox", func(t *testing.T) { testOutbox(t, open(t, 3)) })
	t.Run("timeline bounded", func(t *testing.T) { testTimeline(t, open(t, 10)) })
	t.Run("silences", func(t *testing.T) { testSilences(t, open(t, 10)) })
}

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func rule(id string) alerts.Rule {
	v := 80.0
	return alerts.Rule{ID: id, RuleSpec: alerts.RuleSpec{Name: "hot " + id, Severity: "warning",
		Condition: alerts.Condition{Type: alerts.CondThreshold, Metric: "temp", Op: ">", Value: &v}}, Version: 1, CreatedAt: t0, UpdatedAt: t0}
}

func testRules(t *testing.T, s alerts.Store) {
	ctx := context.Background()
	r := rule("rule-1")
	if err := s.PutRule(ctx, r, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.PutRule(ctx, r, 0); !errors.Is(err, alerts.ErrConflict) {
		t.Fatalf("create twice: %v, want ErrConflict", err)
	}
	r.Version = 2
	if err := s.PutRule(ctx, r, 1); err != nil {
		t.Fatal(err)
	}
	r.Version = 3
	if err := s.PutRule(ctx, r, 1); !errors.Is(err, alerts.ErrConflict) {
		t.Fatalf("stale update: %v, want ErrConflict", err)
	}
	if err := s.PutRule(ctx, rule("rule-x"), 5); !errors.Is(err, alerts.ErrNotFound) {
		t.Fatalf("update of unknown: %v, want ErrNotFound", err)
	}
	rules, err := s.Rules(ctx)
	if err != nil || len(rules) != 1 || rules[0].Version != 2 {
		t.Fatalf("rules %+v, %v", rules, err)
	}
	if err := s.DeleteRule(ctx, "rule-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRule(ctx, "rule-1"); !errors.Is(err, alerts.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

func record(id, rule, device, state string, version, seq int64) alerts.Record {
	return alerts.Record{Alert: alerts.Alert{ID: id, RuleID: rule, Device: device, Severity: "warning", State: state,
		Since: t0, StartedAt: t0, Labels: map[string]string{}}, Version: version, Seq: seq}
}

func note(key, kind string) notify.Notification {
	return notify.Notification{Key: key, Kind: kind, AlertID: "a", At: t0}
}

func testTransitions(t *testing.T, s alerts.Store) {
	ctx := context.Background()
	targets := []string{notify.TargetAlertmanager, notify.TargetWebhook}
	a := record("alert-1", "rule-1", "pump-1", alerts.StatePending, 1, 1)
	if err := s.Apply(ctx, alerts.Transition{Alert: a, Events: []alerts.Event{{Seq: 1, At: t0, Type: alerts.StatePending}}}); err != nil {
		t.Fatal(err)
	}
	// A second open alert of the same pair is refused.
	b := record("alert-2", "rule-1", "pump-1", alerts.StatePending, 1, 1)
	if err := s.Apply(ctx, alerts.Transition{Alert: b}); !errors.Is(err, alerts.ErrConflict) {
		t.Fatalf("second open alert of a pair: %v, want ErrConflict", err)
	}
	f := a
	f.State, f.Version, f.Seq, f.Fired = alerts.StateFiring, 2, 2, true
	fire := alerts.Transition{Alert: f, Prev: 1, Events: []alerts.Event{{Seq: 2, At: t0, Type: alerts.StateFiring}},
		Notify: []notify.Notification{note("alert-1/2", notify.KindFiring)}, Targets: targets}
	if err := s.Apply(ctx, fire); err != nil {
		t.Fatal(err)
	}
	// The same transition again (an instance with a stale view) changes nothing, queues nothing.
	if err := s.Apply(ctx, fire); !errors.Is(err, alerts.ErrConflict) {
		t.Fatalf("repeated transition: %v, want ErrConflict", err)
	}
	for _, tg := range targets {
		ds, err := s.Claim(ctx, tg, t0, time.Minute, 10)
		if err != nil || len(ds) != 1 || ds[0].Key != "alert-1/2" || ds[0].Target != tg {
			t.Fatalf("claim %s: %+v, %v; want the one firing delivery", tg, ds, err)
		}
	}
	open, err := s.Open(ctx, "pump-1")
	if err != nil || len(open) != 1 || open[0].State != alerts.StateFiring || open[0].Version != 2 {
		t.Fatalf("open %+v, %v", open, err)
	}
	if o, _ := s.Open(ctx, "pump-2"); len(o) != 0 {
		t.Fatalf("open of another device: %+v", o)
	}
	r := f
	r.State, r.Version, r.Seq = alerts.StateResolved, 3, 3
	at := t0.Add(time.Minute)
	r.ResolvedAt = &at
	if err := s.Apply(ctx, alerts.Transition{Alert: r, Prev: 2, Events: []alerts.Event{{Seq: 3, At: at, Type: alerts.StateResolved}}}); err != nil {
		t.Fatal(err)
	}
	if o, _ := s.Open(ctx, ""); len(o) != 0 {
		t.Fatalf("open after resolve: %+v", o)
	}
	// A resolved alert is final.
	r2 := r
	r2.State, r2.Version = alerts.StateFiring, 4
	if err := s.Apply(ctx, alerts.Transition{Alert: r2, Prev: 3}); !errors.Is(err, alerts.ErrConflict) {
		t.Fatalf("transition of a resolved alert: %v, want ErrConflict", err)
	}
	got, evs, err := s.Alert(ctx, "alert-1")
	if err != nil || got.State != alerts.StateResolved || len(evs) != 3 || evs[0].Seq != 1 || evs[2].Type != alerts.StateResolved {
		t.Fatalf("alert %+v events %+v, %v", got, evs, err)
	}
	if _, _, err := s.Alert(ctx, "alert-nope"); !errors.Is(err, alerts.ErrNotFound) {
		t.Fatalf("unknown alert: %v", err)
	}
	// A new episode of the pair may open now; lists put it first.
	c := record("alert-3", "rule-1", "pump-1", alerts.StatePending, 1, 1)
	c.StartedAt = t0.Add(2 * time.Minute)
	if err := s.Apply(ctx, alerts.Transition{Alert: c}); err != nil {
		t.Fatal(err)
	}
	list, err := s.Alerts(ctx, alerts.Query{Limit: 10})
	if err != nil || len(list) != 2 || list[0].ID != "alert-3" {
		t.Fatalf("list %+v, %v", list, err)
	}
	list, _ = s.Alerts(ctx, alerts.Query{State: alerts.StateResolved, Limit: 10})
	if len(list) != 1 || list[0].ID != "alert-1" {
		t.Fatalf("resolved list %+v", list)
	}
	list, _ = s.Alerts(ctx, alerts.Query{Device: "pump-9", Limit: 10})
	if len(list) != 0 {
		t.Fatalf("device filter %+v", list)
	}
}

func testRace(t *testing.T, s alerts.Store) {
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := record(fmt.Sprintf("alert-r%d", i), "rule-r", "pump-r", alerts.StatePending, 1, 1)
			errs[i] = s.Apply(ctx, alerts.Transition{Alert: a, Notify: []notify.Notification{note(a.ID+"/1", notify.KindFiring)},
				Targets: []string{notify.TargetWebhook}})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, alerts.ErrConflict):
			t.Fatal(err)
		}
	}
	ds, _ := s.Claim(ctx, notify.TargetWebhook, t0, time.Minute, 100)
	if ok != 1 || len(ds) != 1 {
		t.Fatalf("%d creators won, %d queued; want 1 and 1", ok, len(ds))
	}
}

func testOutbox(t *testing.T, s alerts.Store) {
	ctx := context.Background()
	tg := notify.TargetWebhook
	for i := 1; i <= 5; i++ { // bound 3: the two oldest are dropped
		a := record(fmt.Sprintf("alert-o%d", i), "rule-o", fmt.Sprintf("dev-%d", i), alerts.StateFiring, 1, 1)
		n := note(a.ID+"/1", notify.KindFiring)
		n.At = t0.Add(time.Duration(i) * time.Second)
		if err := s.Apply(ctx, alerts.Transition{Alert: a, Notify: []notify.Notification{n}, Targets: []string{tg}}); err != nil {
			t.Fatal(err)
		}
	}
	now := t0.Add(time.Hour)
	ds, err := s.Claim(ctx, tg, now, time.Minute, 2)
	if err != nil || len(ds) != 2 || ds[0].Key != "alert-o3/1" || ds[1].Key != "alert-o4/1" {
		t.Fatalf("claim: %+v, %v; want o3, o4 (oldest first, o1 and o2 dropped)", keys(ds), err)
	}
	// Leased: another claimer gets only the rest.
	ds2, _ := s.Claim(ctx, tg, now, time.Minute, 10)
	if len(ds2) != 1 || ds2[0].Key != "alert-o5/1" {
		t.Fatalf("second claim: %v, want o5", keys(ds2))
	}
	if err := s.Delivered(ctx, tg, "alert-o3/1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Retry(ctx, tg, "alert-o4/1", 1, now.Add(time.Minute), "503"); err != nil {
		t.Fatal(err)
	}
	// o4 is not due yet; o5's lease holds.
	if ds, _ := s.Claim(ctx, tg, now.Add(30*time.Second), time.Minute, 10); len(ds) != 0 {
		t.Fatalf("claim before due: %v", keys(ds))
	}
	ds, _ = s.Claim(ctx, tg, now.Add(2*time.Minute), time.Minute, 10)
	if len(ds) != 2 || ds[0].Key != "alert-o4/1" || ds[0].Attempts != 1 || ds[0].LastError != "503" || ds[1].Key != "alert-o5/1" {
		t.Fatalf("claim after due and lease end: %+v", ds)
	}
	if ds, _ := s.Claim(ctx, notify.TargetAlertmanager, now, time.Minute, 10); len(ds) != 0 {
		t.Fatalf("other target: %v", keys(ds))
	}
	if err := s.Delivered(ctx, tg, "nope"); !errors.Is(err, alerts.ErrNotFound) {
		t.Fatalf("delivered unknown: %v", err)
	}
}

func keys(ds []notify.Delivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Key)
	}
	return out
}

func testTimeline(t *testing.T, s alerts.Store) {
	ctx := context.Background()
	a := record("alert-t", "rule-t", "dev-t", alerts.StatePending, 1, 1)
	if err := s.Apply(ctx, alerts.Transition{Alert: a, Events: []alerts.Event{{Seq: 1, At: t0, Type: alerts.StatePending}}}); err != nil {
		t.Fatal(err)
	}
	for i := int64(2); i <= alerts.MaxEventsPerAlert+20; i++ {
		prev := a.Version
		a.Version, a.Seq = a.Version+1, i
		if err := s.Apply(ctx, alerts.Transition{Alert: a, Prev: prev, Events: []alerts.Event{{Seq: i, At: t0, Type: alerts.EventAcknowledged}}}); err != nil {
			t.Fatal(err)
		}
	}
	_, evs, err := s.Alert(ctx, "alert-t")
	if err != nil || len(evs) != alerts.MaxEventsPerAlert || evs[0].Seq != 21 {
		t.Fatalf("%d events from seq %d, %v; want %d from 21", len(evs), evs[0].Seq, err, alerts.MaxEventsPerAlert)
	}
}

func testSilences(t *testing.T, s alerts.Store) {
	ctx := context.Background()
	old := alerts.Silence{ID: "sil-old", Device: "d", Until: t0, CreatedAt: t0.Add(-time.Hour)}
	if err := s.PutSilence(ctx, old); err != nil {
		t.Fatal(err)
	}
	cur := alerts.Silence{ID: "sil-1", RuleID: "rule-1", Until: t0.Add(2 * time.Hour), CreatedAt: t0.Add(time.Hour)}
	if err := s.PutSilence(ctx, cur); err != nil {
		t.Fatal(err)
	}
	list, err := s.Silences(ctx)
	if err != nil || len(list) != 1 || list[0].ID != "sil-1" {
		t.Fatalf("silences %+v, %v; want the ended one pruned", list, err)
	}
	if err := s.DeleteSilence(ctx, "sil-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSilence(ctx, "sil-1"); !errors.Is(err, alerts.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}
