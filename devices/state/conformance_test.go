package state_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/go-json-experiment/json"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/pg"
	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
	"github.com/fieldhub/fieldhub/devices/state"
	"github.com/fieldhub/fieldhub/devices/state/boltstore"
	"github.com/fieldhub/fieldhub/devices/state/pgstore"
)

// backend opens a store; calling open again is a restart (or, while the
// first is open, a second instance on the same database where the
// backend allows it).
type backend struct {
	name      string
	open      func(t *testing.T) state.Store
	instances bool // two stores may be open on one database at once
}

func backends(t *testing.T) []backend {
	dir := t.TempDir()
	url := pgtest.Database(t)
	return []backend{
		{name: "bolt", open: func(t *testing.T) state.Store {
			st, err := devices.OpenBolt(filepath.Join(dir, "registry.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return boltstore.New(st.DB())
		}},
		{name: "postgres", instances: true, open: func(t *testing.T) state.Store {
			ctx := context.Background()
			st, err := pg.Open(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			s, err := pgstore.New(ctx, st.Pool())
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
	}
}

type allDevices struct{}

func (allDevices) Exists(id string) bool { return id != "ghost" }

func service(t *testing.T, st state.Store) *state.Service {
	s, err := state.New(state.Options{Store: st, Devices: allDevices{}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStoreConformance runs the same checks on every Store: versions,
// compare-and-set conflicts, a restart keeping documents and versions,
// and concurrent writers with the same If-Match: exactly one wins.
func TestStoreConformance(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			st := b.open(t)
			s := service(t, st)
			v, err := s.Get(ctx, "d1")
			if err != nil || v.Desired.Version != 0 || v.Reported.Version != 0 || len(v.Delta) != 0 {
				t.Fatalf("never written: %+v %v", v, err)
			}
			if _, err := s.Get(ctx, "ghost"); !errors.Is(err, state.ErrUnknownDevice) {
				t.Fatalf("unknown device: %v", err)
			}
			if v, err = s.PatchDesired(ctx, "d1", 0, []byte(`{"interval":10,"mode":"eco"}`), "op"); err != nil || v.Desired.Version != 1 {
				t.Fatalf("desired 1: %+v %v", v, err)
			}
			if _, err = s.PatchDesired(ctx, "d1", 0, []byte(`{"interval":20}`), "op"); !errors.Is(err, state.ErrConflict) {
				t.Fatalf("stale If-Match: %v", err)
			}
			if err := st.SaveDoc(ctx, "d1", state.Desired, state.Doc{Version: 1}, 0); !errors.Is(err, state.ErrConflict) {
				t.Fatalf("store CAS on an existing first version: %v", err)
			}
			if err := st.SaveDoc(ctx, "d1", state.Desired, state.Doc{Version: 9}, 7); !errors.Is(err, state.ErrConflict) {
				t.Fatalf("store CAS on a wrong version: %v", err)
			}
			if v, err = s.PatchDesired(ctx, "d1", 1, []byte(`{"interval":20}`), "op"); err != nil || v.Desired.Version != 2 {
				t.Fatalf("desired 2: %+v %v", v, err)
			}
			if v, err = s.PatchDesired(ctx, "d1", 2, []byte(`{"interval":20}`), "op"); err != nil || v.Desired.Version != 2 {
				t.Fatalf("a patch changing nothing bumped the version: %+v %v", v, err)
			}
			if v, err = s.PatchReported(ctx, "d1", []byte(`{"interval":20,"firmware":"1.2"}`)); err != nil || v.Reported.Version != 1 {
				t.Fatalf("reported: %+v %v", v, err)
			}
			if got := string(mustJSON(v.Delta)); got != `{"mode":"eco"}` {
				t.Fatalf("delta = %s", got)
			}
			// Restart: a new store over the same data.
			st2 := st
			if b.instances {
				st2 = b.open(t)
			}
			v2, err := service(t, st2).Get(ctx, "d1")
			if err != nil || v2.Desired.Version != 2 || v2.Reported.Version != 1 || string(v2.Encode()) != string(v.Encode()) {
				t.Fatalf("after reopen: %s, want %s (%v)", v2.Encode(), v.Encode(), err)
			}
			// Concurrent writers with the same If-Match: two goroutines,
			// and on PostgreSQL two instances (stores) on one database.
			writers := []*state.Service{s, s}
			if b.instances {
				writers[1] = service(t, b.open(t))
			}
			for round := range 20 {
				var wg sync.WaitGroup
				errs := make([]error, len(writers))
				cur, _ := s.Get(ctx, "d1")
				for i, w := range writers {
					wg.Go(func() {
						_, errs[i] = w.PatchDesired(ctx, "d1", cur.Desired.Version, fmt.Appendf(nil, `{"w":"%d-%d"}`, i, round), "op")
					})
				}
				wg.Wait()
				wins, conflicts := 0, 0
				for _, err := range errs {
					switch {
					case err == nil:
						wins++
					case errors.Is(err, state.ErrConflict):
						conflicts++
					default:
						t.Fatal(err)
					}
				}
				after, _ := s.Get(ctx, "d1")
				if wins != 1 || conflicts != 1 || after.Desired.Version != cur.Desired.Version+1 {
					t.Fatalf("round %d: %d wins, %d conflicts, version %d -> %d", round, wins, conflicts, cur.Desired.Version, after.Desired.Version)
				}
			}
		})
	}
}

func mustJSON(o state.Object) []byte {
	b, err := json.Marshal(o, json.Deterministic(true))
	if err != nil {
		panic(err)
	}
	return b
}
