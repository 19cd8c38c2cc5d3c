package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/dashboard/alerts"
	"github.com/fieldhub/fieldhub/dashboard/alerts/boltstore"
	"github.com/fieldhub/fieldhub/dashboard/alerts/notify"
	"github.com/fieldhub/fieldhub/dashboard/alerts/pgstore"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/pg"
	"github.com/fieldhub/fieldhub/telemetry"
)

// alertStore is the alert engine's store in the registry's database:
// its own tables in PostgreSQL, its own buckets in the bbolt file.
func alertStore(ctx context.Context, store registryStore) (alerts.Store, error) {
	switch st := store.(type) {
	case *pg.Store:
		s, err := pgstore.New(ctx, st.Pool())
		if err != nil {
			return nil, fmt.Errorf("FIELDHUB_DATABASE_URL: %w", err)
		}
		return s, nil
	case *devices.BoltStore:
		return boltstore.New(st.DB()), nil
	}
	return nil, fmt.Errorf("alerts: no alert store for a %T registry", store)
}

// alertTee is the bridge's fan-out with the alert engine beside it:
// every event goes on to next, readings and presence changes also to the
// engine's bounded input (which never blocks: full is dropped and
// counted). It keeps next's batch path for readings.
type alertTee struct {
	next  bridge.Fanout
	batch bridge.BatchFanout // next's, or nil
	eng   *alerts.Engine
}

func newAlertTee(next bridge.Fanout, eng *alerts.Engine) *alertTee {
	t := &alertTee{next: next, eng: eng}
	t.batch, _ = next.(bridge.BatchFanout)
	return t
}

func (t *alertTee) Publish(ev telemetry.Event) {
	t.eng.Publish(ev)
	t.next.Publish(ev)
}

// PublishBatch carries readings only (bridge.BatchFanout).
func (t *alertTee) PublishBatch(evs []telemetry.Event) {
	t.eng.PublishBatch(evs)
	if t.batch != nil {
		t.batch.PublishBatch(evs)
		return
	}
	for _, ev := range evs {
		t.next.Publish(ev)
	}
}

// rejectionsTee tells the rejection log before it (the registry's, with
// the ledger's count) and the alert engine (rejections rules) of every
// refused message; none of them blocks.
type rejectionsTee struct {
	next bridge.Rejections
	eng  *alerts.Engine
}

func (t rejectionsTee) Rejected(device, transport, id string, e *telemetry.Error) {
	t.next.Rejected(device, transport, id, e)
	t.eng.Rejected(device, transport, id, e)
}

// newNotifier is the alert notifier for the configured receivers
// (FIELDHUB_ALERTMANAGER_URL, FIELDHUB_ALERT_WEBHOOK_URL), draining the
// alert store's outbox. With neither set it has no target: the engine
// then queues nothing and its Run returns at once.
func newNotifier(cfg config, st alerts.Store, log *slog.Logger) (*notify.Notifier, error) {
	o := notify.Options{Outbox: st, Firing: alerts.Firing{Store: st}, Logger: log}
	if q, ok := st.(notify.QueueCounter); ok {
		o.Queue = q
	}
	if cfg.AlertmanagerURL != "" {
		o.Alertmanager = &notify.AlertmanagerOptions{URL: cfg.AlertmanagerURL}
	}
	if cfg.AlertWebhookURL != "" {
		o.Webhook = &notify.WebhookOptions{URL: cfg.AlertWebhookURL, Secret: cfg.AlertWebhookSecret}
	}
	n, err := notify.New(o)
	if err != nil {
		return nil, fmt.Errorf("alert notifications: %w", err)
	}
	return n, nil
}
