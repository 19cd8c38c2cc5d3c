// Package pgstore is the PostgreSQL state.Store, for several hub
// instances sharing device state: the fieldhub_device_state table (one
// row per device and side, a version column, the document as jsonb),
// created by New if missing, through the pool devices/pg opened (handed
// in by cmd/fieldhub). Writes are compare-and-set on the version column:
// an UPDATE ... WHERE version = prev, or an INSERT ... ON CONFLICT DO
// NOTHING for the first version; no row written is a conflict. It may
// import devices/state and pgx.
package pgstore

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fieldhub/fieldhub/devices/state"
)

// Store keeps state documents in PostgreSQL. It does not own its pool.
type Store struct {
	db *pgxpool.Pool
}

// New returns the Store over pool, creating its table if missing.
func New(ctx context.Context, pool *pgxpool.Pool) (*Store, error) {
	_, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS fieldhub_device_state (
		device text NOT NULL, side text NOT NULL, version bigint NOT NULL, doc jsonb NOT NULL,
		PRIMARY KEY (device, side))`)
	if err != nil {
		return nil, fmt.Errorf("create device state table: %w", err)
	}
	return &Store{db: pool}, nil
}

// LoadState returns both documents of device; one never written is the
// zero document.
func (s *Store) LoadState(ctx context.Context, device string) (reported, desired state.Doc, err error) {
	rows, err := s.db.Query(ctx, `SELECT side, doc::text FROM fieldhub_device_state WHERE device = $1`, device)
	if err != nil {
		return reported, desired, fmt.Errorf("load state: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var side, raw string
		if err := rows.Scan(&side, &raw); err != nil {
			return reported, desired, fmt.Errorf("load state: %w", err)
		}
		d, err := state.DecodeDoc([]byte(raw))
		if err != nil {
			return reported, desired, err
		}
		switch state.Side(side) {
		case state.Reported:
			reported = d
		case state.Desired:
			desired = d
		}
	}
	if err := rows.Err(); err != nil {
		return reported, desired, fmt.Errorf("load state: %w", err)
	}
	return reported, desired, nil
}

// SaveDoc writes doc if the stored version of side is prev.
func (s *Store) SaveDoc(ctx context.Context, device string, side state.Side, doc state.Doc, prev int64) error {
	v, err := state.EncodeDoc(doc)
	if err != nil {
		return err
	}
	q := `UPDATE fieldhub_device_state SET version = $3, doc = $4::jsonb WHERE device = $1 AND side = $2 AND version = $5`
	if prev == 0 {
		q = `INSERT INTO fieldhub_device_state (device, side, version, doc) SELECT $1, $2, $3, $4::jsonb WHERE $5::bigint = 0
			ON CONFLICT (device, side) DO NOTHING`
	}
	tag, err := s.db.Exec(ctx, q, device, string(side), doc.Version, string(v), prev)
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("%s version is not %d: %w", side, prev, state.ErrConflict)
	}
	return nil
}

// DesiredVersions returns the desired version of each listed device that
// has one: one query for the batch.
func (s *Store) DesiredVersions(ctx context.Context, devices []string) (map[string]int64, error) {
	out := map[string]int64{}
	rows, err := s.db.Query(ctx, `SELECT device, version FROM fieldhub_device_state WHERE side = 'desired' AND device = ANY($1)`, devices)
	if err != nil {
		return out, fmt.Errorf("desired versions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var v int64
		if err := rows.Scan(&id, &v); err != nil {
			return out, fmt.Errorf("desired versions: %w", err)
		}
		out[id] = v
	}
	return out, rows.Err()
}

// Forget deletes both documents of a deleted device.
func (s *Store) Forget(ctx context.Context, device string) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM fieldhub_device_state WHERE device = $1`, device); err != nil {
		return fmt.Errorf("forget state: %w", err)
	}
	return nil
}
