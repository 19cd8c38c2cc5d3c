// Package pgstore is the PostgreSQL alerts.Store and notify.Outbox, for
// several hub instances sharing their alerts: tables of its own
// (fieldhub_alert_*, created idempotently by New) in the database
// devices/pg opened, through its pool (handed in by cmd/fieldhub). Every
// transition is a compare-and-set on the alert's version, written with
// its timeline events and outbox entries in one transaction; a partial
// unique index keeps one open alert per (rule, device) across instances.
// The outbox is claimed with FOR UPDATE SKIP LOCKED and a lease. It may
// import dashboard/alerts, its notify package and pgx.
package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fieldhub/fieldhub/dashboard/alerts"
	"github.com/fieldhub/fieldhub/dashboard/alerts/notify"
)

// Store keeps alerts in PostgreSQL. It does not own its pool.
type Store struct {
	db *pgxpool.Pool
	// MaxOutbox bounds the deliveries queued per target (default
	// alerts.MaxOutboxPerTgt); past it the oldest are dropped and counted.
	MaxOutbox int
	dropped   atomic.Int64
}

const schema = `
CREATE TABLE IF NOT EXISTS fieldhub_alert_rules (
	id text PRIMARY KEY, version bigint NOT NULL, rule jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS fieldhub_alerts (
	id text PRIMARY KEY, rule_id text NOT NULL, device text NOT NULL, state text NOT NULL, severity text NOT NULL,
	version bigint NOT NULL, started_at timestamptz NOT NULL, resolved_at timestamptz, record jsonb NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS fieldhub_alerts_open ON fieldhub_alerts (rule_id, device) WHERE state <> 'resolved';
CREATE INDEX IF NOT EXISTS fieldhub_alerts_resolved ON fieldhub_alerts (resolved_at) WHERE state = 'resolved';
CREATE INDEX IF NOT EXISTS fieldhub_alerts_device ON fieldhub_alerts (device) WHERE state <> 'resolved';
CREATE TABLE IF NOT EXISTS fieldhub_alert_events (
	alert_id text NOT NULL REFERENCES fieldhub_alerts (id) ON DELETE CASCADE, seq bigint NOT NULL, event jsonb NOT NULL,
	PRIMARY KEY (alert_id, seq));
CREATE TABLE IF NOT EXISTS fieldhub_alert_silences (
	id text PRIMARY KEY, until timestamptz NOT NULL, silence jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS fieldhub_alert_outbox (
	target text NOT NULL, key text NOT NULL, seq bigserial, next_at timestamptz NOT NULL, lease_until timestamptz,
	attempts int NOT NULL DEFAULT 0, last_error text NOT NULL DEFAULT '', notification jsonb NOT NULL,
	PRIMARY KEY (target, key));
CREATE INDEX IF NOT EXISTS fieldhub_alert_outbox_due ON fieldhub_alert_outbox (target, seq);
`

// schemaLock serialises the CREATEs of instances starting together
// (CREATE ... IF NOT EXISTS races on the catalog).
const schemaLock = 0x6669656c64616c

// New creates the tables if they are missing and returns the Store.
func New(ctx context.Context, pool *pgxpool.Pool) (*Store, error) {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(schemaLock)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, schema)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create alert tables: %w", err)
	}
	return &Store{db: pool, MaxOutbox: alerts.MaxOutboxPerTgt}, nil
}

// OutboxDropped counts deliveries dropped because a target's outbox was full.
func (s *Store) OutboxDropped() int64 { return s.dropped.Load() }

func uniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// PutRule stores r, a compare-and-set on its version (alerts.RuleStore).
func (s *Store) PutRule(ctx context.Context, r alerts.Rule, prev int64) error {
	if prev == 0 {
		_, err := s.db.Exec(ctx, `INSERT INTO fieldhub_alert_rules (id, version, rule) VALUES ($1, $2, $3)`, r.ID, r.Version, r)
		if uniqueViolation(err) {
			return alerts.ErrConflict
		}
		if err != nil {
			return fmt.Errorf("store alert rule: %w", err)
		}
		return nil
	}
	tag, err := s.db.Exec(ctx, `UPDATE fieldhub_alert_rules SET version = $2, rule = $3 WHERE id = $1 AND version = $4`, r.ID, r.Version, r, prev)
	if err != nil {
		return fmt.Errorf("store alert rule: %w", err)
	}
	if tag.RowsAffected() == 0 {
		var n int
		if err := s.db.QueryRow(ctx, `SELECT count(*) FROM fieldhub_alert_rules WHERE id = $1`, r.ID).Scan(&n); err != nil {
			return fmt.Errorf("store alert rule: %w", err)
		}
		if n == 0 {
			return alerts.ErrNotFound
		}
		return alerts.ErrConflict
	}
	return nil
}

// DeleteRule removes a rule.
func (s *Store) DeleteRule(ctx context.Context, id string) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM fieldhub_alert_rules WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete alert rule: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return alerts.ErrNotFound
	}
	return nil
}

// Rules lists every rule.
func (s *Store) Rules(ctx context.Context) ([]alerts.Rule, error) {
	return list[alerts.Rule](ctx, s.db, `SELECT rule FROM fieldhub_alert_rules`)
}

func list[T any](ctx context.Context, db *pgxpool.Pool, q string, args ...any) ([]T, error) {
	rows, err := db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query alerts store: %w", err)
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			return nil, fmt.Errorf("query alerts store: %w", err)
		}
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, fmt.Errorf("decode alerts store row: %w", err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// Apply writes one transition atomically (alerts.AlertStore).
func (s *Store) Apply(ctx context.Context, t alerts.Transition) error {
	a := t.Alert
	if a.Version != t.Prev+1 {
		return fmt.Errorf("store alert transition: version %d after %d", a.Version, t.Prev)
	}
	var resolvedAt *time.Time
	if !a.Open() {
		resolvedAt = a.ResolvedAt
		if resolvedAt == nil {
			resolvedAt = &a.Since
		}
	}
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if t.Prev == 0 {
			_, err := tx.Exec(ctx, `INSERT INTO fieldhub_alerts (id, rule_id, device, state, severity, version, started_at, resolved_at, record)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, a.ID, a.RuleID, a.Device, a.State, a.Severity, a.Version, a.StartedAt, resolvedAt, a)
			if uniqueViolation(err) {
				return alerts.ErrConflict
			}
			if err != nil {
				return err
			}
		} else {
			tag, err := tx.Exec(ctx, `UPDATE fieldhub_alerts SET state = $2, severity = $3, version = $4, resolved_at = $5, record = $6
				WHERE id = $1 AND version = $7 AND state <> 'resolved'`, a.ID, a.State, a.Severity, a.Version, resolvedAt, a, t.Prev)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return alerts.ErrConflict
			}
		}
		for _, ev := range t.Events {
			if _, err := tx.Exec(ctx, `INSERT INTO fieldhub_alert_events (alert_id, seq, event) VALUES ($1, $2, $3)`, a.ID, ev.Seq, ev); err != nil {
				return err
			}
		}
		if cut := a.Seq - alerts.MaxEventsPerAlert; cut > 0 {
			if _, err := tx.Exec(ctx, `DELETE FROM fieldhub_alert_events WHERE alert_id = $1 AND seq <= $2`, a.ID, cut); err != nil {
				return err
			}
		}
		if !a.Open() {
			if _, err := tx.Exec(ctx, `DELETE FROM fieldhub_alerts WHERE id IN (SELECT id FROM fieldhub_alerts WHERE state = 'resolved'
				ORDER BY resolved_at DESC OFFSET $1)`, alerts.MaxResolvedKept); err != nil {
				return err
			}
		}
		for _, target := range t.Targets {
			for _, n := range t.Notify {
				tag, err := tx.Exec(ctx, `INSERT INTO fieldhub_alert_outbox (target, key, next_at, notification) VALUES ($1, $2, $3, $4)
					ON CONFLICT DO NOTHING`, target, n.Key, n.At, n)
				if err != nil {
					return err
				}
				if tag.RowsAffected() == 0 {
					continue
				}
				// Full: the oldest deliveries of the target are dropped and counted.
				tag, err = tx.Exec(ctx, `DELETE FROM fieldhub_alert_outbox WHERE target = $1 AND seq IN (
					SELECT seq FROM fieldhub_alert_outbox WHERE target = $1 ORDER BY seq DESC OFFSET $2)`, target, s.MaxOutbox)
				if err != nil {
					return err
				}
				s.dropped.Add(tag.RowsAffected())
			}
		}
		return nil
	})
	if errors.Is(err, alerts.ErrConflict) {
		return err
	}
	if err != nil {
		return fmt.Errorf("store alert transition: %w", err)
	}
	return nil
}

// Open lists open alerts, of one device or ("") all.
func (s *Store) Open(ctx context.Context, device string) ([]alerts.Record, error) {
	if device == "" {
		return list[alerts.Record](ctx, s.db, `SELECT record FROM fieldhub_alerts WHERE state <> 'resolved'`)
	}
	return list[alerts.Record](ctx, s.db, `SELECT record FROM fieldhub_alerts WHERE state <> 'resolved' AND device = $1`, device)
}

// Alert returns one alert with its timeline, oldest first.
func (s *Store) Alert(ctx context.Context, id string) (alerts.Record, []alerts.Event, error) {
	var r alerts.Record
	err := s.db.QueryRow(ctx, `SELECT record FROM fieldhub_alerts WHERE id = $1`, id).Scan(&r)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, nil, fmt.Errorf("alert %q: %w", id, alerts.ErrNotFound)
	}
	if err != nil {
		return r, nil, fmt.Errorf("get alert: %w", err)
	}
	evs, err := list[alerts.Event](ctx, s.db, `SELECT event FROM fieldhub_alert_events WHERE alert_id = $1 ORDER BY seq`, id)
	return r, evs, err
}

// Alerts lists alerts matching q: open ones first, newest first.
func (s *Store) Alerts(ctx context.Context, q alerts.Query) ([]alerts.Record, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = 1000
	}
	recs, err := list[alerts.Record](ctx, s.db, `SELECT record FROM fieldhub_alerts
		WHERE ($1 = '' OR state = $1) AND ($2 = '' OR device = $2) AND ($3 = '' OR severity = $3) AND ($4 = '' OR rule_id = $4)
		ORDER BY (state = 'resolved'), started_at DESC, id DESC LIMIT $5`, q.State, q.Device, q.Severity, q.RuleID, limit)
	if err != nil {
		return nil, err
	}
	return recs, nil
}

// PutSilence stores a silence, dropping the ones that ended.
func (s *Store) PutSilence(ctx context.Context, sil alerts.Silence) error {
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM fieldhub_alert_silences WHERE until < $1`, sil.CreatedAt); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO fieldhub_alert_silences (id, until, silence) VALUES ($1, $2, $3)`, sil.ID, sil.Until, sil)
		return err
	})
	if err != nil {
		return fmt.Errorf("store silence: %w", err)
	}
	return nil
}

// DeleteSilence removes a silence.
func (s *Store) DeleteSilence(ctx context.Context, id string) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM fieldhub_alert_silences WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete silence: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return alerts.ErrNotFound
	}
	return nil
}

// Silences lists every stored silence.
func (s *Store) Silences(ctx context.Context) ([]alerts.Silence, error) {
	return list[alerts.Silence](ctx, s.db, `SELECT silence FROM fieldhub_alert_silences`)
}

// Claim leases up to max due deliveries of target, oldest first; rows
// another instance is claiming are skipped (FOR UPDATE SKIP LOCKED), rows
// it leased are not due until the lease ends (notify.Outbox).
func (s *Store) Claim(ctx context.Context, target string, now time.Time, lease time.Duration, max int) ([]notify.Delivery, error) {
	rows, err := s.db.Query(ctx, `UPDATE fieldhub_alert_outbox o SET lease_until = $3
		FROM (SELECT target, key FROM fieldhub_alert_outbox WHERE target = $1 AND next_at <= $2 AND (lease_until IS NULL OR lease_until <= $2)
			ORDER BY seq LIMIT $4 FOR UPDATE SKIP LOCKED) due
		WHERE o.target = due.target AND o.key = due.key
		RETURNING o.seq, o.attempts, o.next_at, o.last_error, o.notification`, target, now, now.Add(lease), max)
	if err != nil {
		return nil, fmt.Errorf("claim notifications: %w", err)
	}
	defer rows.Close()
	type row struct {
		seq int64
		d   notify.Delivery
	}
	var got []row
	for rows.Next() {
		var r row
		var raw []byte
		if err := rows.Scan(&r.seq, &r.d.Attempts, &r.d.NextAt, &r.d.LastError, &raw); err != nil {
			return nil, fmt.Errorf("claim notifications: %w", err)
		}
		if err := json.Unmarshal(raw, &r.d.Notification); err != nil {
			return nil, fmt.Errorf("decode notification: %w", err)
		}
		r.d.Target = target
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim notifications: %w", err)
	}
	slices.SortFunc(got, func(a, b row) int { return int(a.seq - b.seq) })
	out := make([]notify.Delivery, len(got))
	for i := range got {
		out[i] = got[i].d
	}
	return out, nil
}

// Delivered removes a delivery for good (notify.Outbox).
func (s *Store) Delivered(ctx context.Context, target, key string) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM fieldhub_alert_outbox WHERE target = $1 AND key = $2`, target, key)
	if err != nil {
		return fmt.Errorf("mark notification delivered: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return alerts.ErrNotFound
	}
	return nil
}

// Retry records a failed attempt and ends the lease (notify.Outbox).
func (s *Store) Retry(ctx context.Context, target, key string, attempts int, next time.Time, lastErr string) error {
	tag, err := s.db.Exec(ctx, `UPDATE fieldhub_alert_outbox SET attempts = $3, next_at = $4, last_error = $5, lease_until = NULL
		WHERE target = $1 AND key = $2`, target, key, attempts, next, lastErr)
	if err != nil {
		return fmt.Errorf("reschedule notification: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return alerts.ErrNotFound
	}
	return nil
}

var _ alerts.Store = (*Store)(nil)

// Queued says how many deliveries of target wait in the outbox
// (notify.QueueCounter).
func (s *Store) Queued(ctx context.Context, target string) (int, error) {
	var n int
	err := s.db.QueryRow(ctx, `SELECT count(*) FROM fieldhub_alert_outbox WHERE target = $1`, target).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count queued notifications: %w", err)
	}
	return n, nil
}
