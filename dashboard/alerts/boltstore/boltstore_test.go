package boltstore_test

import (
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/fieldhub/fieldhub/dashboard/alerts"
	"github.com/fieldhub/fieldhub/dashboard/alerts/boltstore"
	"github.com/fieldhub/fieldhub/dashboard/alerts/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, maxOutbox int) alerts.Store {
		db, err := bolt.Open(filepath.Join(t.TempDir(), "registry.db"), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		s := boltstore.New(db)
		s.MaxOutbox = maxOutbox
		return s
	})
}
