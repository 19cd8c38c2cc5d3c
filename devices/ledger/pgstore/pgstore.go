// Package pgstore is the PostgreSQL ledger.SharedStore, for several hub
// instances sharing one database, through the pool devices/pg opened
// (handed in by cmd/fieldhub). Its tables, created at New:
//
//   - fieldhub_ledger: one row per instance and device, the counts that
//     instance keeps (instances never overwrite each other's counts);
//   - fieldhub_ledger_batches: seq numbers an instance made durable and
//     saved, waiting to be settled;
//   - fieldhub_ledger_seq: one row per device, its merged sequence
//     tracker, locked by the instance settling it;
//   - fieldhub_ledger_instances: each instance's last save (heartbeat),
//     whose oldest among the live ones is the watermark.
//
// It may import devices/ledger and pgx.
package pgstore

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fieldhub/fieldhub/devices/ledger"
)

// Store keeps ledger records in PostgreSQL. It does not own its pool.
type Store struct {
	db *pgxpool.Pool
}

// New returns the Store over pool, creating its table if needed.
func New(ctx context.Context, pool *pgxpool.Pool) (*Store, error) {
	_, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS fieldhub_ledger (
		instance text NOT NULL,
		device   text NOT NULL,
		record   jsonb NOT NULL,
		PRIMARY KEY (instance, device)
	);
	CREATE INDEX IF NOT EXISTS fieldhub_ledger_device ON fieldhub_ledger (device);
	CREATE TABLE IF NOT EXISTS fieldhub_ledger_batches (
		id          bigserial PRIMARY KEY,
		instance    text NOT NULL,
		device      text NOT NULL,
		received_from timestamptz NOT NULL,
		batches     jsonb NOT NULL
	);
	CREATE INDEX IF NOT EXISTS fieldhub_ledger_batches_ready ON fieldhub_ledger_batches (received_from, device);
	CREATE INDEX IF NOT EXISTS fieldhub_ledger_batches_device ON fieldhub_ledger_batches (device, id);
	CREATE TABLE IF NOT EXISTS fieldhub_ledger_seq (
		device    text PRIMARY KEY,
		record    jsonb NOT NULL,
		open_gaps integer NOT NULL DEFAULT 0,
		confirm_at bigint NOT NULL DEFAULT 0,
		settled_at timestamptz NOT NULL DEFAULT now()
	);
	CREATE INDEX IF NOT EXISTS fieldhub_ledger_seq_confirm ON fieldhub_ledger_seq (confirm_at) WHERE confirm_at > 0;
	CREATE INDEX IF NOT EXISTS fieldhub_ledger_seq_open ON fieldhub_ledger_seq (open_gaps DESC, device) WHERE open_gaps > 0;
	CREATE TABLE IF NOT EXISTS fieldhub_ledger_instances (
		instance text PRIMARY KEY,
		saved_at timestamptz NOT NULL,
		live_for double precision NOT NULL
	)`)
	if err != nil {
		return nil, fmt.Errorf("create ledger table: %w", err)
	}
	return &Store{db: pool}, nil
}

// LoadLedger returns instance's records by device.
func (s *Store) LoadLedger(ctx context.Context, instance string) (map[string][]byte, error) {
	rows, err := s.db.Query(ctx, `SELECT device, record FROM fieldhub_ledger WHERE instance = $1`, instance)
	if err != nil {
		return nil, fmt.Errorf("load ledger: %w", err)
	}
	out := map[string][]byte{}
	for rows.Next() {
		var dev string
		var rec []byte
		if err := rows.Scan(&dev, &rec); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load ledger: %w", err)
		}
		out[dev] = rec
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load ledger: %w", err)
	}
	return out, nil
}

// LedgerRows returns every instance's record of device, by instance.
func (s *Store) LedgerRows(ctx context.Context, device string) (map[string][]byte, error) {
	rows, err := s.db.Query(ctx, `SELECT instance, record FROM fieldhub_ledger WHERE device = $1`, device)
	if err != nil {
		return nil, fmt.Errorf("read ledger rows: %w", err)
	}
	out := map[string][]byte{}
	for rows.Next() {
		var inst string
		var rec []byte
		if err := rows.Scan(&inst, &rec); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read ledger rows: %w", err)
		}
		out[inst] = rec
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read ledger rows: %w", err)
	}
	return out, nil
}

// SaveLedger upserts put and deletes del, in one transaction.
func (s *Store) SaveLedger(ctx context.Context, instance string, put map[string][]byte, del []string) error {
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var b pgx.Batch
		queueSave(&b, instance, put, del)
		return tx.SendBatch(ctx, &b).Close()
	})
	if err != nil {
		return fmt.Errorf("save ledger of %d devices: %w", len(put), err)
	}
	return nil
}

// queueSave queues the upserts of put and deletions of del; a deleted
// device's batches and sequence record go with it.
func queueSave(b *pgx.Batch, instance string, put map[string][]byte, del []string) {
	for dev, rec := range put {
		b.Queue(`INSERT INTO fieldhub_ledger (instance, device, record) VALUES ($1, $2, $3)
			ON CONFLICT (instance, device) DO UPDATE SET record = EXCLUDED.record`, instance, dev, string(rec))
	}
	for _, dev := range del {
		b.Queue(`DELETE FROM fieldhub_ledger WHERE instance = $1 AND device = $2`, instance, dev)
	}
}

// heartbeat is the upsert of an instance's last save and how long the
// others wait for the next one.
const heartbeat = `INSERT INTO fieldhub_ledger_instances (instance, saved_at, live_for) VALUES ($1, $2, $3)
	ON CONFLICT (instance) DO UPDATE SET saved_at = EXCLUDED.saved_at, live_for = EXCLUDED.live_for`

// Join records instance's heartbeat at start.
func (s *Store) Join(ctx context.Context, instance string, at time.Time, liveFor time.Duration) error {
	if _, err := s.db.Exec(ctx, heartbeat, instance, at, liveFor.Seconds()); err != nil {
		return fmt.Errorf("ledger heartbeat: %w", err)
	}
	return nil
}

// Leave removes instance's heartbeat.
func (s *Store) Leave(ctx context.Context, instance string) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM fieldhub_ledger_instances WHERE instance = $1`, instance); err != nil {
		return fmt.Errorf("ledger leave: %w", err)
	}
	return nil
}

// SeqRecord returns device's sequence record, nil if it has none.
func (s *Store) SeqRecord(ctx context.Context, device string) ([]byte, error) {
	var rec []byte
	err := s.db.QueryRow(ctx, `SELECT record FROM fieldhub_ledger_seq WHERE device = $1`, device).Scan(&rec)
	if err == pgx.ErrNoRows {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read sequence record: %w", err)
	}
	return rec, nil
}

// FleetGaps returns the devices with the most open gaps.
func (s *Store) FleetGaps(ctx context.Context, limit int) ([]ledger.DeviceGaps, int, int, error) {
	var devices, open int
	if err := s.db.QueryRow(ctx, `SELECT count(*), coalesce(sum(open_gaps), 0) FROM fieldhub_ledger_seq WHERE open_gaps > 0`).Scan(&devices, &open); err != nil {
		return nil, 0, 0, fmt.Errorf("fleet gaps: %w", err)
	}
	rows, err := s.db.Query(ctx, `SELECT device, open_gaps FROM fieldhub_ledger_seq WHERE open_gaps > 0
		ORDER BY open_gaps DESC, device LIMIT $1`, limit)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("fleet gaps: %w", err)
	}
	top, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ledger.DeviceGaps, error) {
		var g ledger.DeviceGaps
		return g, r.Scan(&g.Device, &g.OpenGaps)
	})
	if err != nil {
		return nil, 0, 0, fmt.Errorf("fleet gaps: %w", err)
	}
	return top, devices, open, nil
}

// Sync is one instance's save and settle, in one transaction (see
// ledger.SharedStore). Two instances settling at once take different
// devices: a device's sequence row is locked with SKIP LOCKED, in device
// order, and only then are its batches read.
func (s *Store) Sync(ctx context.Context, req ledger.SyncRequest) (ledger.SyncResult, error) {
	var res ledger.SyncResult
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		res = ledger.SyncResult{}
		var b pgx.Batch
		queueSave(&b, req.Instance, req.Put, req.Del)
		// Before this save's batches, which may be a re-created device's;
		// the sequence row first, as a settle locks it first
		// (docs/locks.md).
		for _, p := range req.Purge {
			b.Queue(`DELETE FROM fieldhub_ledger_seq WHERE device = $1 AND settled_at < $2`, p.Device, p.At)
			b.Queue(`DELETE FROM fieldhub_ledger_batches WHERE device = $1 AND received_from < $2`, p.Device, p.At)
		}
		for dev, bt := range req.Batches {
			b.Queue(`INSERT INTO fieldhub_ledger_batches (instance, device, received_from, batches) VALUES ($1, $2, $3, $4)`,
				req.Instance, dev, bt.From, string(bt.Data))
		}
		b.Queue(heartbeat, req.Instance, req.SavedAt, req.LiveFor.Seconds())
		if err := tx.SendBatch(ctx, &b).Close(); err != nil {
			return fmt.Errorf("save: %w", err)
		}
		// The watermark: the oldest last save among live instances (this
		// one included; each is live for the time its own heartbeat
		// says), less the slack.
		var mark time.Time
		if err := tx.QueryRow(ctx, `SELECT min(saved_at) FROM fieldhub_ledger_instances
			WHERE saved_at + live_for * interval '1 second' > $1`, req.SavedAt).Scan(&mark); err != nil {
			return fmt.Errorf("watermark: %w", err)
		}
		// Buckets of whole seconds before the mark are complete on every
		// live instance.
		mark = mark.Add(-req.Slack).Truncate(time.Second)
		// Ready: devices with buckets before the mark and devices with a
		// provisional gap due for confirmation, the longest waiting first
		// (none starves behind busier ones).
		rows, err := tx.Query(ctx, `SELECT device FROM (
				SELECT device, min(received_from) AS oldest FROM fieldhub_ledger_batches WHERE received_from < $1 GROUP BY device
				UNION ALL
				SELECT device, to_timestamp(confirm_at) FROM fieldhub_ledger_seq WHERE confirm_at > 0 AND confirm_at <= $3
			) r GROUP BY device ORDER BY min(oldest), device LIMIT $2`,
			mark, req.MaxSettle, mark.Unix())
		if err != nil {
			return fmt.Errorf("ready devices: %w", err)
		}
		ready, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("ready devices: %w", err)
		}
		if len(ready) > 0 {
			if err := s.settle(ctx, tx, req, ready, mark, &res); err != nil {
				return err
			}
		}
		if err := tx.QueryRow(ctx, `SELECT count(*), coalesce(sum(open_gaps), 0) FROM fieldhub_ledger_seq WHERE open_gaps > 0`).
			Scan(&res.FleetWithIt, &res.FleetOpen); err != nil {
			return fmt.Errorf("fleet gaps: %w", err)
		}
		return nil
	})
	if err != nil {
		return ledger.SyncResult{}, fmt.Errorf("sync ledger of %d devices: %w", len(req.Put), err)
	}
	return res, nil
}

// settle locks the ready devices' sequence rows another instance is not
// settling, applies their buckets received before mark, and deletes the
// batches done (or keeps their younger buckets).
func (s *Store) settle(ctx context.Context, tx pgx.Tx, req ledger.SyncRequest, ready []string, mark time.Time, res *ledger.SyncResult) error {
	// In device order, as every instance locks them (a new row is locked
	// by its insert).
	if _, err := tx.Exec(ctx, `INSERT INTO fieldhub_ledger_seq (device, record, settled_at)
		SELECT d, '{}', $2 FROM unnest($1::text[]) AS d ORDER BY d
		ON CONFLICT (device) DO NOTHING`, ready, req.SavedAt); err != nil {
		return fmt.Errorf("sequence rows: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT device, record FROM fieldhub_ledger_seq WHERE device = ANY($1)
		ORDER BY device FOR UPDATE SKIP LOCKED`, ready)
	if err != nil {
		return fmt.Errorf("lock sequence rows: %w", err)
	}
	recs := map[string][]byte{}
	var locked []string
	for rows.Next() {
		var dev string
		var rec []byte
		if err := rows.Scan(&dev, &rec); err != nil {
			rows.Close()
			return fmt.Errorf("lock sequence rows: %w", err)
		}
		if string(rec) == "{}" {
			rec = nil
		}
		recs[dev] = rec
		locked = append(locked, dev)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("lock sequence rows: %w", err)
	}
	if len(locked) == 0 {
		return nil
	}
	rows, err = tx.Query(ctx, `SELECT id, device, received_from, batches FROM fieldhub_ledger_batches WHERE device = ANY($1) AND received_from < $2
		ORDER BY device, received_from, id`, locked, mark)
	if err != nil {
		return fmt.Errorf("read batches: %w", err)
	}
	batches := map[string][]ledger.BatchRow{}
	var ids []int64
	for rows.Next() {
		var r ledger.BatchRow
		var dev string
		if err := rows.Scan(&r.ID, &dev, &r.From, &r.Data); err != nil {
			rows.Close()
			return fmt.Errorf("read batches: %w", err)
		}
		batches[dev] = append(batches[dev], r)
		ids = append(ids, r.ID)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read batches: %w", err)
	}
	var b pgx.Batch
	for _, dev := range locked {
		rec, st, left, err := req.Settle(dev, recs[dev], batches[dev], mark)
		if err != nil {
			return err
		}
		res.Settled = append(res.Settled, st)
		b.Queue(`UPDATE fieldhub_ledger_seq SET record = $2, open_gaps = $3, confirm_at = $4, settled_at = $5 WHERE device = $1`,
			dev, string(rec), st.OpenGaps, st.ConfirmAt, req.SavedAt)
		for _, r := range left {
			b.Queue(`UPDATE fieldhub_ledger_batches SET batches = $2, received_from = $3 WHERE id = $1`, r.ID, string(r.Data), r.From)
			ids = slices.DeleteFunc(ids, func(id int64) bool { return id == r.ID })
		}
	}
	b.Queue(`DELETE FROM fieldhub_ledger_batches WHERE id = ANY($1)`, ids)
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return fmt.Errorf("store sequence records: %w", err)
	}
	return nil
}
