// Package pgstore is the PostgreSQL commands.Store, for several hub
// instances sharing one command queue: the fieldhub_commands table that
// devices/pg migrates, through the pool devices/pg opened (handed in by
// cmd/fieldhub). It may import bridge/commands, devices (errors) and pgx.
package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/devices"
)

// Store keeps commands in PostgreSQL. It does not own its pool: whoever
// opened it closes it.
type Store struct {
	db *pgxpool.Pool
}

// New returns the Store over pool.
func New(pool *pgxpool.Pool) *Store { return &Store{db: pool} }

// PutCommand stores a command, creating or replacing it; creating one
// prunes the device's oldest final commands beyond commands.MaxKept.
// A command already final in the store is never changed: the first final
// status wins (see boltstore.Store.PutCommand).
func (s *Store) PutCommand(ctx context.Context, c commands.Record) error {
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO fieldhub_commands (device, id, final, record) VALUES ($1, $2, $3, $4)
			ON CONFLICT (device, id) DO UPDATE SET final = EXCLUDED.final, record = EXCLUDED.record
			WHERE NOT fieldhub_commands.final`, c.Device, c.ID, c.Final(), c)
		if err != nil || c.Status != commands.Queued {
			return err // only a new command (status queued) can push the device over the bound
		}
		_, err = tx.Exec(ctx, `DELETE FROM fieldhub_commands WHERE device = $1 AND final AND id IN (
			SELECT id FROM fieldhub_commands WHERE device = $1 ORDER BY id DESC OFFSET $2)`, c.Device, commands.MaxKept)
		return err
	})
	if err != nil {
		return fmt.Errorf("store command: %w", err)
	}
	return nil
}

// GetCommand returns one command of a device.
func (s *Store) GetCommand(ctx context.Context, device, id string) (commands.Record, error) {
	var c commands.Record
	err := s.db.QueryRow(ctx, `SELECT record FROM fieldhub_commands WHERE device = $1 AND id = $2`, device, id).Scan(&c)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("command %q: %w", id, devices.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("get command: %w", err)
	}
	return c, nil
}

// ListCommands returns a device's commands newest first, after the cursor.
func (s *Store) ListCommands(ctx context.Context, device, before string, limit int) ([]commands.Record, error) {
	q := `SELECT record FROM fieldhub_commands WHERE device = $1 ORDER BY id DESC LIMIT $2`
	args := []any{device, limit}
	if before != "" {
		q = `SELECT record FROM fieldhub_commands WHERE device = $1 AND id < $3 ORDER BY id DESC LIMIT $2`
		args = append(args, before)
	}
	return s.commands(ctx, q, args...)
}

// ActiveCommands returns every command that is not final.
func (s *Store) ActiveCommands(ctx context.Context) ([]commands.Record, error) {
	return s.commands(ctx, `SELECT record FROM fieldhub_commands WHERE NOT final ORDER BY device, id`)
}

func (s *Store) commands(ctx context.Context, q string, args ...any) ([]commands.Record, error) {
	rows, err := s.db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list commands: %w", err)
	}
	defer rows.Close()
	out := []commands.Record{}
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			return nil, fmt.Errorf("list commands: %w", err)
		}
		var c commands.Record
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("decode command: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
