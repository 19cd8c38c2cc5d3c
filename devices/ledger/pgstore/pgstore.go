// Package pgstore is the PostgreSQL ledger.Store, for several hub
// instances sharing one database: the fieldhub_ledger table (one row per
// instance and device, so instances never overwrite each other's counts),
// created at New, through the pool devices/pg opened (handed in by
// cmd/fieldhub). It may import devices/ledger and pgx.
package pgstore

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
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
	CREATE INDEX IF NOT EXISTS fieldhub_ledger_device ON fieldhub_ledger (device)`)
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
		for dev, rec := range put {
			b.Queue(`INSERT INTO fieldhub_ledger (instance, device, record) VALUES ($1, $2, $3)
				ON CONFLICT (instance, device) DO UPDATE SET record = EXCLUDED.record`, instance, dev, string(rec))
		}
		for _, dev := range del {
			b.Queue(`DELETE FROM fieldhub_ledger WHERE instance = $1 AND device = $2`, instance, dev)
		}
		return tx.SendBatch(ctx, &b).Close()
	})
	if err != nil {
		return fmt.Errorf("save ledger of %d devices: %w", len(put), err)
	}
	return nil
}
