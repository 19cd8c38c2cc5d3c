// Package notify delivers alert notifications to the receivers operators
// already run: Prometheus Alertmanager through its v2 API, and signed
// webhooks. It drains a durable outbox (Outbox, kept by the alert store
// in the same transaction as the transition it reports), so a
// notification survives a restart or a receiver outage, and is delivered
// at least once, with an idempotency key receivers deduplicate on.
//
// It imports only the standard library: the alert engine
// (dashboard/alerts) and its stores import it for Notification and
// Outbox, never the other way round.
package notify

import (
	"context"
	"time"
)

// Notification kinds: an alert started firing, or one that fired resolved.
// Pending alerts and alerts that clear before firing are never notified.
const (
	KindFiring   = "firing"
	KindResolved = "resolved"
)

// Targets: the receivers a notification is queued for, one outbox entry
// per configured target.
const (
	TargetAlertmanager = "alertmanager"
	TargetWebhook      = "webhook"
)

// Notification is one alert transition to tell receivers about: the
// outbox's unit, written by the alert store in the transaction that
// records the transition, so each transition is queued exactly once.
type Notification struct {
	// Key is the idempotency key, unique per transition
	// ("<alert id>/<transition seq>"): a receiver that sees it twice
	// has seen the same transition twice.
	Key      string            `json:"key"`
	Kind     string            `json:"kind"` // KindFiring or KindResolved
	AlertID  string            `json:"alert_id"`
	RuleID   string            `json:"rule_id"`
	Rule     string            `json:"rule"` // the rule's name: Alertmanager's alertname
	Device   string            `json:"device"`
	Severity string            `json:"severity"`         // info, warning, critical
	Labels   map[string]string `json:"labels,omitempty"` // the device's labels when it fired
	Value    *float64          `json:"value,omitempty"`  // the reading that made it fire, if any
	Summary  string            `json:"summary"`          // one human sentence, e.g. "temp 85.2 > 80 for 30s"
	StartsAt time.Time         `json:"starts_at"`        // when it started firing
	EndsAt   time.Time         `json:"ends_at,omitzero"` // resolved only: when it resolved
	At       time.Time         `json:"at"`               // when this transition happened
}

// Delivery is a queued notification for one target with its retry state.
type Delivery struct {
	Notification
	Target    string
	Attempts  int       // failed attempts so far
	NextAt    time.Time // not before
	LastError string    // the last failure, for operators (never a secret or a URL)
}

// Outbox is the durable queue the notifier drains (the alert stores
// implement it). Claim leases up to max deliveries of target that are due
// at now, oldest first, for lease: another claimer (another instance)
// does not get them until the lease ends, so with several instances each
// delivery is attempted by one at a time. Delivered removes one for good;
// Retry records a failure and when to try again, ending the lease.
type Outbox interface {
	Claim(ctx context.Context, target string, now time.Time, lease time.Duration, max int) ([]Delivery, error)
	Delivered(ctx context.Context, target, key string) error
	Retry(ctx context.Context, target, key string, attempts int, next time.Time, lastErr string) error
}
