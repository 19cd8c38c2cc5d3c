package alerts

import (
	"context"

	"github.com/fieldhub/fieldhub/dashboard/alerts/notify"
)

// Transition is one change of an alert written atomically: the alert's
// new record (its Version one more than Prev; Prev 0 creates it), the
// timeline events it adds and the notifications it queues, one outbox
// entry per target. A store that cannot apply it whole applies none of it.
type Transition struct {
	Alert  Record
	Prev   int64
	Events []Event
	// Notify is queued for every one of Targets in the same transaction.
	Notify  []notify.Notification
	Targets []string
}

// RuleStore keeps the rules. PutRule is a compare-and-set on the rule's
// version: prev 0 creates (ErrConflict if the id exists), otherwise the
// stored version must be prev (ErrConflict; ErrNotFound if gone).
type RuleStore interface {
	PutRule(ctx context.Context, r Rule, prev int64) error
	DeleteRule(ctx context.Context, id string) error
	Rules(ctx context.Context) ([]Rule, error)
}

// AlertStore keeps alerts and their timelines. Apply writes one
// Transition or returns ErrConflict (the stored version is not t.Prev, or
// a new alert's (rule, device) already has an open one). Open lists the
// open alerts (device "" for all of them).
type AlertStore interface {
	Apply(ctx context.Context, t Transition) error
	Open(ctx context.Context, device string) ([]Record, error)
}

// HistoryStore answers the REST reads of alerts.
type HistoryStore interface {
	Alert(ctx context.Context, id string) (Record, []Event, error)
	Alerts(ctx context.Context, q Query) ([]Record, error)
}

// SilenceStore keeps silences; Silences lists every stored one (the
// engine filters the active ones).
type SilenceStore interface {
	PutSilence(ctx context.Context, s Silence) error
	DeleteSilence(ctx context.Context, id string) error
	Silences(ctx context.Context) ([]Silence, error)
}

// Store is everything the engine persists; boltstore and pgstore
// implement it, and notify.Outbox over the same data.
type Store interface {
	RuleStore
	AlertStore
	HistoryStore
	SilenceStore
	notify.Outbox
	// OutboxDropped counts deliveries dropped because a target's
	// outbox was full (its bound, MaxOutboxPerTgt), for metrics.
	OutboxDropped() int64
}
