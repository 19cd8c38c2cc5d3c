// Package pg is the PostgreSQL registry store, for several hub instances
// sharing one registry, operator tokens and command queue
// (FIELDHUB_DATABASE_URL). It implements devices.Store (bridge/commands/pgstore
// keeps the command queue in the same database through Pool), keeps each record as JSONB next to the columns it is looked up
// by, and migrates its schema at start. It is the only package that
// imports pgx.
package pg

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fieldhub/fieldhub/devices"
)

// migrations are applied in order, each once, in its own transaction.
var migrations = []string{
	`CREATE TABLE fieldhub_devices (
		id     text PRIMARY KEY,
		record jsonb NOT NULL
	);
	CREATE TABLE fieldhub_operator_tokens (
		id     text PRIMARY KEY,
		record jsonb NOT NULL
	);
	CREATE TABLE fieldhub_commands (
		device text NOT NULL,
		id     text NOT NULL,
		final  boolean NOT NULL,
		record jsonb NOT NULL,
		PRIMARY KEY (device, id)
	);
	CREATE INDEX fieldhub_commands_active ON fieldhub_commands (device, id) WHERE NOT final;`,
	`CREATE TABLE fieldhub_operator_sessions (
		id     text PRIMARY KEY,
		record jsonb NOT NULL
	);`,
	`CREATE TABLE fieldhub_metric_fields (
		name text PRIMARY KEY,
		type text NOT NULL
	);
	CREATE TABLE fieldhub_device_metrics (
		device text NOT NULL,
		name   text NOT NULL,
		PRIMARY KEY (device, name)
	);`,
	// Incremental refresh: every device write takes the next registry
	// version under the one row of fieldhub_registry_version (so versions
	// commit in order, and a reader that saw version v has seen every
	// write up to v); a deletion leaves a tombstone with its version.
	// Tombstones older than a day are pruned; pruned records the newest
	// version pruned, and a cursor older than that reloads whole.
	`ALTER TABLE fieldhub_devices ADD COLUMN version bigint NOT NULL DEFAULT 0;
	CREATE INDEX fieldhub_devices_version ON fieldhub_devices (version);
	CREATE TABLE fieldhub_device_tombstones (
		id         text PRIMARY KEY,
		version    bigint NOT NULL,
		deleted_at timestamptz NOT NULL DEFAULT now()
	);
	CREATE INDEX fieldhub_device_tombstones_version ON fieldhub_device_tombstones (version);
	CREATE TABLE fieldhub_registry_version (
		one     boolean PRIMARY KEY DEFAULT true CHECK (one),
		version bigint NOT NULL,
		pruned  bigint NOT NULL
	);
	INSERT INTO fieldhub_registry_version (version, pruned) VALUES (0, 0);`,
}

// TombstoneKeep is how long a deletion is remembered for ChangesSince. An
// instance whose cursor is older (it missed a day of refreshes) reloads
// the registry whole instead.
const TombstoneKeep = 24 * time.Hour

// Store is the PostgreSQL store.
type Store struct {
	db *pgxpool.Pool
}

// Pool returns the connection pool, which the Store owns and closes, for
// the command store (bridge/commands/pgstore) to share. The schema
// migrations, the commands table's among them, stay here.
func (s *Store) Pool() *pgxpool.Pool { return s.db }

// Open connects to url and migrates the schema.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("FIELDHUB_DATABASE_URL: %w", err)
	}
	if cfg.MaxConns < 4 {
		cfg.MaxConns = 4
	}
	db, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to postgresql: %w", err)
	}
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.Exec(ctx, `CREATE TABLE IF NOT EXISTS fieldhub_schema (version int NOT NULL)`); err != nil {
		return fmt.Errorf("create schema table: %w", err)
	}
	for i, m := range migrations {
		err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
			// One migrator at a time across instances.
			if _, err := tx.Exec(ctx, `LOCK TABLE fieldhub_schema IN EXCLUSIVE MODE`); err != nil {
				return err
			}
			var done bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM fieldhub_schema WHERE version = $1)`, i+1).Scan(&done); err != nil {
				return err
			}
			if done {
				return nil
			}
			if _, err := tx.Exec(ctx, m); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO fieldhub_schema (version) VALUES ($1)`, i+1)
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	return nil
}

// Close closes the connection pool.
func (s *Store) Close() error {
	s.db.Close()
	return nil
}

// storedOperator carries the token hash, which devices.OperatorToken
// leaves out of its JSON on purpose.
type storedOperator struct {
	devices.OperatorToken
	Hash devices.TokenHash `json:"hash"`
}

// Load reads every device, operator token and session, and the change
// cursor, from one consistent view (a repeatable-read transaction).
func (s *Store) Load(ctx context.Context) (devices.Snapshot, error) {
	var snap devices.Snapshot
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		var err error
		if snap.Cursor, _, err = version(ctx, tx); err != nil {
			return err
		}
		if snap.Devices, err = loadDevices(ctx, tx, `SELECT record FROM fieldhub_devices`); err != nil {
			return err
		}
		snap.Operators, snap.Sessions, err = loadOperators(ctx, tx)
		return err
	})
	if err != nil {
		return devices.Snapshot{}, err
	}
	return snap, nil
}

// ChangesSince returns the devices written and deleted after cursor (or
// every device, Full, when cursor predates pruned tombstones), every
// operator token and session, and the next cursor, from one consistent
// view. It implements devices.ChangeFeed.
func (s *Store) ChangesSince(ctx context.Context, cursor uint64) (devices.Changes, error) {
	var ch devices.Changes
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		v, pruned, err := version(ctx, tx)
		if err != nil {
			return err
		}
		ch.Cursor = v
		if cursor < pruned {
			ch.Full = true
			ch.Devices, err = loadDevices(ctx, tx, `SELECT record FROM fieldhub_devices`)
		} else {
			ch.Devices, err = loadDevices(ctx, tx, `SELECT record FROM fieldhub_devices WHERE version > $1`, int64(cursor))
		}
		if err != nil {
			return err
		}
		if !ch.Full {
			rows, err := tx.Query(ctx, `SELECT id FROM fieldhub_device_tombstones WHERE version > $1`, int64(cursor))
			if err != nil {
				return fmt.Errorf("load deleted devices: %w", err)
			}
			if ch.Deleted, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
				return fmt.Errorf("load deleted devices: %w", err)
			}
		}
		ch.Operators, ch.Sessions, err = loadOperators(ctx, tx)
		return err
	})
	if err != nil {
		return devices.Changes{}, err
	}
	return ch, nil
}

// readTx runs f in a read-only repeatable-read transaction: every query
// sees the same snapshot of the database.
func (s *Store) readTx(ctx context.Context, f func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, s.db, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, f)
}

// version reads the registry version and the newest pruned tombstone's.
func version(ctx context.Context, tx pgx.Tx) (v, pruned uint64, err error) {
	var vv, pp int64
	if err := tx.QueryRow(ctx, `SELECT version, pruned FROM fieldhub_registry_version`).Scan(&vv, &pp); err != nil {
		return 0, 0, fmt.Errorf("read registry version: %w", err)
	}
	return uint64(vv), uint64(pp), nil
}

func loadDevices(ctx context.Context, tx pgx.Tx, q string, args ...any) ([]devices.Record, error) {
	rows, err := tx.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("load devices: %w", err)
	}
	recs, err := pgx.CollectRows(rows, pgx.RowTo[devices.Record])
	if err != nil {
		return nil, fmt.Errorf("load devices: %w", err)
	}
	return recs, nil
}

func loadOperators(ctx context.Context, tx pgx.Tx) ([]devices.OperatorToken, []devices.OperatorSession, error) {
	rows, err := tx.Query(ctx, `SELECT record FROM fieldhub_operator_tokens`)
	if err != nil {
		return nil, nil, fmt.Errorf("load operator tokens: %w", err)
	}
	stored, err := pgx.CollectRows(rows, pgx.RowTo[storedOperator])
	if err != nil {
		return nil, nil, fmt.Errorf("load operator tokens: %w", err)
	}
	ops := make([]devices.OperatorToken, len(stored))
	for i, o := range stored {
		o.OperatorToken.Hash = o.Hash
		ops[i] = o.OperatorToken
	}
	rows, err = tx.Query(ctx, `SELECT record FROM fieldhub_operator_sessions`)
	if err != nil {
		return nil, nil, fmt.Errorf("load operator sessions: %w", err)
	}
	sessions, err := pgx.CollectRows(rows, pgx.RowTo[devices.OperatorSession])
	if err != nil {
		return nil, nil, fmt.Errorf("load operator sessions: %w", err)
	}
	return ops, sessions, nil
}

// Apply writes a change in one transaction. A change to devices (not a
// last_seen touch) takes the next registry version first, which also
// orders it after every other instance's device write. A create of an id
// the table holds fails with devices.ErrExists, an update of an id it no
// longer holds with devices.ErrNotFound; either rolls the whole change
// back.
func (s *Store) Apply(ctx context.Context, c devices.Change) error {
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		// checks[i] judges the i-th queued statement's result; nil: none.
		var checks []func(pgconn.CommandTag) error
		queue := func(check func(pgconn.CommandTag) error, q string, args ...any) {
			b.Queue(q, args...)
			checks = append(checks, check)
		}
		if len(c.CreateDevices)+len(c.UpdateDevices)+len(c.DeleteDevices) > 0 {
			var v int64
			if err := tx.QueryRow(ctx, `UPDATE fieldhub_registry_version SET version = version + 1 RETURNING version`).Scan(&v); err != nil {
				return fmt.Errorf("next registry version: %w", err)
			}
			for _, r := range c.CreateDevices {
				queue(oneRow(r.ID, devices.ErrExists), `INSERT INTO fieldhub_devices (id, record, version) VALUES ($1, $2, $3)
					ON CONFLICT (id) DO NOTHING`, r.ID, r, v)
				queue(nil, `DELETE FROM fieldhub_device_tombstones WHERE id = $1`, r.ID)
			}
			for _, r := range c.UpdateDevices {
				// Conditional: a device another instance deleted stays
				// deleted (and keeps its tombstone).
				queue(oneRow(r.ID, devices.ErrNotFound), `UPDATE fieldhub_devices SET record = $2, version = $3 WHERE id = $1`, r.ID, r, v)
			}
			for _, id := range c.DeleteDevices {
				queue(nil, `DELETE FROM fieldhub_devices WHERE id = $1`, id)
				queue(nil, `DELETE FROM fieldhub_device_metrics WHERE device = $1`, id)
				queue(nil, `INSERT INTO fieldhub_device_tombstones (id, version) VALUES ($1, $2)
					ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, deleted_at = now()`, id, v)
			}
			if len(c.DeleteDevices) > 0 {
				queue(nil, `WITH gone AS (
					DELETE FROM fieldhub_device_tombstones WHERE deleted_at < now() - $1::interval RETURNING version)
					UPDATE fieldhub_registry_version SET pruned = GREATEST(pruned, COALESCE((SELECT max(version) FROM gone), 0))`,
					fmt.Sprintf("%d seconds", int64(TombstoneKeep/time.Second)))
			}
		}
		if len(c.TouchDevices) > 0 {
			ids := make([]string, len(c.TouchDevices))
			created := make([]string, len(c.TouchDevices))
			ats := make([]string, len(c.TouchDevices))
			for i, ls := range c.TouchDevices {
				ids[i], ats[i] = ls.ID, ls.At.UTC().Format(time.RFC3339Nano)
				created[i] = ls.CreatedAt.UTC().Format(time.RFC3339Nano)
			}
			// Raises last_seen only, keeps the version: not news to peers;
			// a device deleted meanwhile has no row to update, and one
			// deleted and created again has another created_at (the
			// record's JSON, compared as timestamps).
			queue(nil, `UPDATE fieldhub_devices d SET record = jsonb_set(d.record, '{last_seen}', to_jsonb(u.at))
				FROM unnest($1::text[], $2::text[], $3::text[]) AS u(id, created, at)
				WHERE d.id = u.id AND (d.record->>'created_at')::timestamptz = u.created::timestamptz
				AND (d.record->>'last_seen' IS NULL OR (d.record->>'last_seen')::timestamptz < u.at::timestamptz)`, ids, created, ats)
		}
		for _, o := range c.PutOperators {
			queue(nil, `INSERT INTO fieldhub_operator_tokens (id, record) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record`, o.ID, storedOperator{OperatorToken: o, Hash: o.Hash})
		}
		for _, id := range c.DeleteOperators {
			queue(nil, `DELETE FROM fieldhub_operator_tokens WHERE id = $1`, id)
		}
		for _, o := range c.PutSessions {
			queue(nil, `INSERT INTO fieldhub_operator_sessions (id, record) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record`, o.Key(), o)
		}
		for _, o := range c.TouchSessions {
			// Never recreates a session another instance deleted.
			queue(nil, `UPDATE fieldhub_operator_sessions SET record = $2 WHERE id = $1`, o.Key(), o)
		}
		for _, h := range c.DeleteSessions {
			queue(nil, `DELETE FROM fieldhub_operator_sessions WHERE id = $1`, devices.OperatorSession{Hash: h}.Key())
		}
		if b.Len() == 0 {
			return tx.QueryRow(ctx, `SELECT 1`).Scan(new(int)) // a ping
		}
		br := tx.SendBatch(ctx, b)
		for _, check := range checks {
			tag, err := br.Exec()
			if err == nil && check != nil {
				err = check(tag)
			}
			if err != nil {
				br.Close()
				return err // BeginFunc rolls back
			}
		}
		return br.Close()
	})
	if err != nil {
		return fmt.Errorf("write registry: %w", err)
	}
	return nil
}

// oneRow is a check that the statement for device id wrote its row, and
// otherwise fails with refusal (devices.ErrExists or devices.ErrNotFound).
func oneRow(id string, refusal error) func(pgconn.CommandTag) error {
	return func(tag pgconn.CommandTag) error {
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("device %q: %w", id, refusal)
		}
		return nil
	}
}

// LoadSchema reads every claimed metric type and each device's metric
// names (see devices.Schema).
func (s *Store) LoadSchema(ctx context.Context) (devices.Schema, error) {
	sc := devices.Schema{Fields: map[string]string{}, DeviceMetrics: map[string][]string{}}
	rows, err := s.db.Query(ctx, `SELECT name, type FROM fieldhub_metric_fields`)
	if err != nil {
		return sc, fmt.Errorf("load metric schema: %w", err)
	}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			rows.Close()
			return sc, fmt.Errorf("load metric schema: %w", err)
		}
		sc.Fields[name] = typ
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return sc, fmt.Errorf("load metric schema: %w", err)
	}
	rows, err = s.db.Query(ctx, `SELECT device, name FROM fieldhub_device_metrics`)
	if err != nil {
		return sc, fmt.Errorf("load device metrics: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var dev, name string
		if err := rows.Scan(&dev, &name); err != nil {
			return sc, fmt.Errorf("load device metrics: %w", err)
		}
		sc.DeviceMetrics[dev] = append(sc.DeviceMetrics[dev], name)
	}
	return sc, rows.Err()
}

// DeviceMetricTypes returns the metric names device has sent, each with
// its stored type ("" when none is stored); see
// devices.BoltStore.DeviceMetricTypes.
func (s *Store) DeviceMetricTypes(ctx context.Context, device string) (map[string]string, error) {
	rows, err := s.db.Query(ctx, `SELECT m.name, COALESCE(f.type, '') FROM fieldhub_device_metrics m
		LEFT JOIN fieldhub_metric_fields f ON f.name = m.name WHERE m.device = $1`, device)
	if err != nil {
		return nil, fmt.Errorf("read metric names of %s: %w", device, err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, fmt.Errorf("read metric names of %s: %w", device, err)
		}
		out[name] = typ
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read metric names of %s: %w", device, err)
	}
	return out, nil
}

// ClaimFields records the type of each name that has none yet and returns
// the stored type of every name given and the names this call was first
// to claim: the first claim wins across every instance sharing the
// database (INSERT ... ON CONFLICT DO NOTHING RETURNING).
func (s *Store) ClaimFields(ctx context.Context, fields map[string]string) (map[string]string, []string, error) {
	names := make([]string, 0, len(fields))
	types := make([]string, 0, len(fields))
	for n, t := range fields {
		names, types = append(names, n), append(types, t)
	}
	got := make(map[string]string, len(fields))
	var claimed []string
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `INSERT INTO fieldhub_metric_fields (name, type)
			SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (name) DO NOTHING RETURNING name`, names, types)
		if err != nil {
			return err
		}
		if claimed, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT name, type FROM fieldhub_metric_fields WHERE name = ANY($1)`, names)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n, t string
			if err := rows.Scan(&n, &t); err != nil {
				return err
			}
			got[n] = t
		}
		return rows.Err()
	})
	if err != nil {
		return nil, nil, fmt.Errorf("claim metric types: %w", err)
	}
	return got, claimed, nil
}

// ReleaseFields undoes claims of a message that was not stored after all:
// it deletes each name whose stored type is still the one given (a
// conditional delete, so a claim made again since is kept).
func (s *Store) ReleaseFields(ctx context.Context, fields map[string]string) error {
	names := make([]string, 0, len(fields))
	types := make([]string, 0, len(fields))
	for n, t := range fields {
		names, types = append(names, n), append(types, t)
	}
	if _, err := s.db.Exec(ctx, `DELETE FROM fieldhub_metric_fields f
		USING unnest($1::text[], $2::text[]) AS r(name, type)
		WHERE f.name = r.name AND f.type = r.type`, names, types); err != nil {
		return fmt.Errorf("release metric types: %w", err)
	}
	return nil
}

// RemoveDeviceMetrics forgets names of device that a message added but
// that were not stored after all.
func (s *Store) RemoveDeviceMetrics(ctx context.Context, device string, names []string) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM fieldhub_device_metrics WHERE device = $1 AND name = ANY($2)`, device, names); err != nil {
		return fmt.Errorf("remove metric names of %s: %w", device, err)
	}
	return nil
}

// AddDeviceMetrics records names as metrics of device unless the device
// would then have more than max; it returns the device's names as stored,
// and devices.ErrTooManyMetrics when it refused. A transaction-scoped
// advisory lock per device makes count-and-insert atomic across instances.
func (s *Store) AddDeviceMetrics(ctx context.Context, device string, names []string, max int) ([]string, error) {
	var have []string
	tooMany := false
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		tooMany = false
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('fieldhub_device_metrics:' || $1))`, device); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT name FROM fieldhub_device_metrics WHERE device = $1`, device)
		if err != nil {
			return err
		}
		if have, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return err
		}
		var add []string
		for _, n := range names {
			if !slices.Contains(have, n) && !slices.Contains(add, n) {
				add = append(add, n)
			}
		}
		if len(have)+len(add) > max {
			tooMany = true
			return nil
		}
		if len(add) > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO fieldhub_device_metrics (device, name)
				SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING`, device, add); err != nil {
				return err
			}
		}
		have = append(have, add...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("record metric names of %s: %w", device, err)
	}
	if tooMany {
		return have, devices.ErrTooManyMetrics
	}
	return have, nil
}
