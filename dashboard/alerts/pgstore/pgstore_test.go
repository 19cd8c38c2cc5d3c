package pgstore_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fieldhub/fieldhub/dashboard/alerts"
	"github.com/fieldhub/fieldhub/dashboard/alerts/pgstore"
	"github.com/fieldhub/fieldhub/dashboard/alerts/storetest"
	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, maxOutbox int) alerts.Store {
		ctx := context.Background()
		pool, err := pgxpool.New(ctx, pgtest.Database(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		// Created twice: New is idempotent (every instance runs it at start).
		if _, err := pgstore.New(ctx, pool); err != nil {
			t.Fatal(err)
		}
		s, err := pgstore.New(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		s.MaxOutbox = maxOutbox
		return s
	})
}
