package bridge

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

func newSchemaBridge(t *testing.T, store SchemaStore, known map[string]string) *Bridge {
	t.Helper()
	sp, err := spool.Open(spool.Options{Dir: filepath.Join(t.TempDir(), "spool"), MaxBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	br, err := New(Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: sp, Devices: registryStub{},
		RatePerSec: 1e9, Burst: 1e9, Schema: store, KnownFields: known, MaxMetricsPerDevice: 4, MaxMetricNames: 6})
	if err != nil {
		t.Fatal(err)
	}
	return br
}

// TestSchemaRules: what the metric schema refuses before the ack, in the
// order a fleet would send it (each step sees the schema the earlier
// steps built).
func TestSchemaRules(t *testing.T) {
	store, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	br := newSchemaBridge(t, store, map[string]string{"legacy": FieldInteger})
	steps := []struct {
		name, device, msg string
		want              string // "" accepted, else the error message
	}{
		{"first use claims the type", "d1", `{"metrics":{"temp":20,"state":"idle"}}`, ""},
		{"same types", "d1", `{"metrics":{"temp":21,"state":"run"}}`, ""},
		{"string for a number", "d1", `{"metrics":{"temp":"hot","TEMP":1}}`, "metrics.temp: is a number on this hub, got a string"},
		{"conflict inside a batch", "d1", `{"readings":[{"metrics":{"on":true}},{"metrics":{"on":1}}]}`, "readings[1].metrics.on: is a boolean on this hub, got a number"},
		{"type is fleet-wide", "d2", `{"metrics":{"state":false}}`, "metrics.state: is a string on this hub, got a boolean"},
		{"integer field of another writer", "d2", `{"metrics":{"legacy":1}}`, "metrics.legacy: is an integer"},
		{"device bound: 4 names", "d1", `{"metrics":{"a":1,"b":2}}`, ""},
		{"device bound exceeded", "d1", `{"metrics":{"c":1}}`, "metrics.c: a device may send at most 4 distinct metric names"},
		{"known names past the bound still fine", "d1", `{"metrics":{"a":3,"temp":4}}`, ""},
		{"fleet bound: 6 names", "d2", `{"metrics":{"x":1}}`, ""},
		{"fleet bound exceeded", "d2", `{"metrics":{"y":1}}`, "metrics.y: the hub already stores 6 distinct metric names, at most 6"},
	}
	for _, st := range steps {
		s := br.Ephemeral(st.device, devices.TransportHTTP, "test")
		_, e := br.Ingest(context.Background(), s, []byte(st.msg))
		switch {
		case st.want == "" && e != nil:
			t.Errorf("%s: refused: %v", st.name, e)
		case st.want != "" && (e == nil || e.Code != telemetry.CodeInvalid || !strings.HasPrefix(e.Message, st.want)):
			t.Errorf("%s: got %v, want invalid %q", st.name, e, st.want)
		}
	}
	if got := br.Stats().SchemaRejected[SchemaTypeConflict].Load(); got != 4 {
		t.Errorf("type conflicts counted %d, want 4", got)
	}

	// A new bridge on the same store (a restart) knows the types and the
	// device's names.
	br2 := newSchemaBridge(t, store, nil)
	for _, st := range []struct{ msg, want string }{
		{`{"metrics":{"temp":"x"}}`, "metrics.temp: is a number on this hub, got a string"},
		{`{"metrics":{"c":1}}`, "metrics.c: a device may send at most 4"},
		{`{"metrics":{"b":1}}`, ""},
	} {
		_, e := br2.Ingest(context.Background(), br2.Ephemeral("d1", devices.TransportHTTP, "test"), []byte(st.msg))
		if (st.want == "") != (e == nil) || (e != nil && !strings.HasPrefix(e.Message, st.want)) {
			t.Errorf("after restart %s: %v, want %q", st.msg, e, st.want)
		}
	}
}

// TestSchemaConcurrentFirstUse: of concurrent first uses of one name with
// different types, only those of one type are accepted, with or without a
// store.
func TestSchemaConcurrentFirstUse(t *testing.T) {
	store, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for name, st := range map[string]SchemaStore{"memory": nil, "bolt": store} {
		t.Run(name, func(t *testing.T) {
			br := newSchemaBridge(t, st, nil)
			br.schema.maxNames, br.schema.maxPerDevice = 1000, 1000
			type answer struct {
				typ string
				err *telemetry.Error
			}
			for round := range 20 {
				start := make(chan struct{})
				answers := make(chan answer, 9)
				for i := range 9 {
					typ, v := []string{FieldNumber, FieldString, FieldBool}[i%3], []string{"1", `"s"`, "true"}[i%3]
					s := br.Ephemeral(fmt.Sprintf("d%d", i), devices.TransportHTTP, "t")
					go func() {
						<-start
						_, e := br.Ingest(context.Background(), s, fmt.Appendf(nil, `{"metrics":{"m%d":%s}}`, round, v))
						answers <- answer{typ, e}
					}()
				}
				close(start)
				accepted := map[string]int{}
				for range 9 {
					if a := <-answers; a.err == nil {
						accepted[a.typ]++
					}
				}
				if len(accepted) != 1 {
					t.Fatalf("round %d: accepted types %v, want exactly one", round, accepted)
				}
			}
		})
	}
}

// lineStore keeps what the bridge appends (our own Store interface).
type lineStore struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineStore) Append(_ context.Context, _ int, payload []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.Split(strings.TrimSuffix(string(payload), "\n"), "\n")...)
	return nil
}

// TestHubTimesPerDevice: readings without ts get distinct nanosecond
// times per device, across sessions and transports at once; a device ts is
// written as its whole millisecond.
func TestHubTimesPerDevice(t *testing.T) {
	ls := &lineStore{}
	br, err := New(Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: ls, Devices: registryStub{}, RatePerSec: 1e9, Burst: 1e9})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		transport := []string{devices.TransportHTTP, devices.TransportWS}[i%2]
		wg.Go(func() {
			s := br.Ephemeral("dev", transport, "t")
			for range 20 {
				if _, e := br.Ingest(context.Background(), s, []byte(`{"type":"telemetry","readings":[{"metrics":{"a":1}},{"metrics":{"a":2}},{"metrics":{"a":3}}]}`)); e != nil {
					t.Error(e)
				}
			}
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, l := range ls.lines {
		ts := l[strings.LastIndexByte(l, ' ')+1:]
		if seen[ts] || len(ts) != 19 || strings.HasSuffix(ts, "000000") {
			t.Fatalf("time %s: duplicate or a whole millisecond", ts)
		}
		seen[ts] = true
	}
	if len(seen) != 8*20*3 {
		t.Fatalf("%d distinct times, want %d", len(seen), 8*20*3)
	}
	ms := time.Now().UnixMilli()
	if _, e := br.Ingest(context.Background(), br.Ephemeral("dev", devices.TransportHTTP, "t"), fmt.Appendf(nil, `{"ts":%d,"metrics":{"a":1}}`, ms)); e != nil {
		t.Fatal(e)
	}
	if last := ls.lines[len(ls.lines)-1]; !strings.HasSuffix(last, fmt.Sprintf(" %d000000", ms)) {
		t.Errorf("device ts written as %q", last)
	}
}

// goneStub is a registry in which every device was deleted.
type goneStub struct{ registryStub }

func (goneStub) Exists(string) bool { return false }

// TestSchemaForgetsDeletedDevice: a device deleted and created again under
// its id may send new metric names again; the types stay.
func TestSchemaForgetsDeletedDevice(t *testing.T) {
	store, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	br := newSchemaBridge(t, store, nil)
	ingest := func(msg string) *telemetry.Error {
		_, e := br.Ingest(context.Background(), br.Ephemeral("d1", devices.TransportHTTP, "t"), []byte(msg))
		return e
	}
	if e := ingest(`{"metrics":{"a":1,"b":2,"c":3,"d":4}}`); e != nil {
		t.Fatal(e)
	}
	if e := ingest(`{"metrics":{"e":1}}`); e == nil {
		t.Fatal("fifth name accepted")
	}
	if err := store.Apply(context.Background(), devices.Change{DeleteDevices: []string{"d1"}}); err != nil {
		t.Fatal(err)
	}
	br.opts.Devices = goneStub{}
	br.CredentialsChanged("d1")
	br.opts.Devices = registryStub{}
	if e := ingest(`{"metrics":{"e":1}}`); e != nil {
		t.Errorf("after delete and re-create: %v", e)
	}
	if e := ingest(`{"metrics":{"a":"x"}}`); e == nil || !strings.Contains(e.Message, "is a number on this hub") {
		t.Errorf("type forgotten with the device: %v", e)
	}
}

// refusingStore is a spool stand-in (the bridge's own Store interface)
// that refuses every append with err while err is set.
type refusingStore struct {
	mu  sync.Mutex
	err error
}

func (r *refusingStore) Append(ctx context.Context, points int, payload []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *refusingStore) set(err error) {
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
}

// TestSchemaRefusedMessageClaimsNothing: a message the spool refuses
// (full, timed out, any error) leaves no field type and no device name
// behind, in memory or in the store: a later reading of another type is
// accepted and the device's name count is unchanged.
func TestSchemaRefusedMessageClaimsNothing(t *testing.T) {
	for _, serr := range []error{spool.ErrFull, context.DeadlineExceeded, fmt.Errorf("disk: %w", spool.ErrClosed), fmt.Errorf("anything else")} {
		for _, persisted := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/store=%v", serr, persisted), func(t *testing.T) {
				ctx := context.Background()
				var store SchemaStore
				var bolt *devices.BoltStore
				if persisted {
					var err error
					bolt, err = devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
					if err != nil {
						t.Fatal(err)
					}
					defer bolt.Close()
					store = bolt
				}
				rs := &refusingStore{}
				br, err := New(Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: rs, Devices: registryStub{},
					RatePerSec: 1e9, Burst: 1e9, Schema: store, MaxMetricsPerDevice: 3, MaxMetricNames: 3})
				if err != nil {
					t.Fatal(err)
				}
				// d1 already has one stored name: "keep" (number).
				if _, e := br.Ingest(ctx, br.Ephemeral("d1", devices.TransportHTTP, "test"), []byte(`{"metrics":{"keep":1}}`)); e != nil {
					t.Fatal(e)
				}
				rs.set(serr)
				if _, e := br.Ingest(ctx, br.Ephemeral("d1", devices.TransportHTTP, "test"), []byte(`{"metrics":{"temp":"hot","x":1,"keep":2}}`)); e == nil {
					t.Fatal("refused append acked")
				}
				rs.set(nil)
				if typ, ok := br.FieldType("temp"); ok {
					t.Errorf("temp kept type %q from a refused message", typ)
				}
				if _, e := br.Ingest(ctx, br.Ephemeral("d2", devices.TransportHTTP, "test"), []byte(`{"metrics":{"temp":21}}`)); e != nil {
					t.Errorf("temp:21 after a refused temp:\"hot\": %v", e)
				}
				// d1 may still add two names (3 per device); the fleet one more (3).
				if _, e := br.Ingest(ctx, br.Ephemeral("d1", devices.TransportHTTP, "test"), []byte(`{"metrics":{"a":true,"keep":3}}`)); e != nil {
					t.Errorf("name budget used up by a refused message: %v", e)
				}
				br.mu.Lock()
				n := len(*br.deviceLocked("d1").names.Load())
				br.mu.Unlock()
				if n != 2 {
					t.Errorf("d1 has %d names in memory, want 2 (keep, a)", n)
				}
				if got := br.Stats().SchemaReleaseFailed.Load(); got != 0 {
					t.Errorf("a release that succeeded counted %d release failures", got)
				}
				if typ, _ := br.FieldType("keep"); typ != FieldNumber {
					t.Errorf("keep, claimed before the refused message, is %q", typ)
				}
				if bolt != nil {
					sc, err := bolt.LoadSchema(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if _, ok := sc.Fields["x"]; ok || sc.Fields["temp"] != FieldNumber || sc.Fields["keep"] != FieldNumber {
						t.Errorf("stored fields %v, want keep and temp numbers, no x", sc.Fields)
					}
					if got := strings.Join(slices.Sorted(slices.Values(sc.DeviceMetrics["d1"])), ","); got != "a,keep" {
						t.Errorf("stored names of d1 %q, want a,keep", got)
					}
				}
			})
		}
	}
}

// TestSchemaMaybeStoredMessageKeepsClaims: an append that timed out after
// the spool copied the record (spool.ErrMaybeStored) may still be stored,
// so the types it claimed stay: a later reading of another type is
// refused rather than acknowledged and dead-lettered.
func TestSchemaMaybeStoredMessageKeepsClaims(t *testing.T) {
	ctx := context.Background()
	rs := &refusingStore{err: fmt.Errorf("%w: %w", spool.ErrMaybeStored, context.DeadlineExceeded)}
	br, err := New(Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: rs, Devices: registryStub{},
		RatePerSec: 1e9, Burst: 1e9})
	if err != nil {
		t.Fatal(err)
	}
	if _, e := br.Ingest(ctx, br.Ephemeral("d1", devices.TransportHTTP, "test"), []byte(`{"metrics":{"temp":"hot"}}`)); e == nil || e.Code != telemetry.CodeOverloaded {
		t.Fatalf("timed-out append answered %v, want overloaded", e)
	}
	rs.set(nil)
	if _, e := br.Ingest(ctx, br.Ephemeral("d2", devices.TransportHTTP, "test"), []byte(`{"metrics":{"temp":21}}`)); e == nil {
		t.Error("temp:21 acknowledged although temp:\"hot\" may be stored")
	}
}

// TestSchemaErrorMessage: a refusal's message names the first field in
// path order and says how many more there are, only when there are more.
func TestSchemaErrorMessage(t *testing.T) {
	br := newSchemaBridge(t, nil, map[string]string{"temp": FieldNumber, "on": FieldBool, "state": FieldString})
	for _, tc := range []struct{ name, msg, want string }{
		{"one conflict", `{"metrics":{"temp":"hot"}}`, "metrics.temp: is a number on this hub, got a string"},
		{"two conflicts", `{"metrics":{"temp":"hot","on":1}}`, "metrics.on: is a boolean on this hub, got a number (and 1 more)"},
		{"three conflicts", `{"metrics":{"temp":"hot","on":1,"state":true}}`, "metrics.on: is a boolean on this hub, got a number (and 2 more)"},
	} {
		_, e := br.Ingest(context.Background(), br.Ephemeral("d1", devices.TransportHTTP, "test"), []byte(tc.msg))
		if e == nil || e.Message != tc.want {
			t.Errorf("%s: got %v, want %q", tc.name, e, tc.want)
		}
	}
}

// TestSchemaKnownFieldsClaimedInStore: the types InfluxDB already holds
// are known in memory from the start and claimed in the store, so that
// another instance on the same store knows them without being told.
func TestSchemaKnownFieldsClaimedInStore(t *testing.T) {
	store, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	br := newSchemaBridge(t, store, map[string]string{"legacy": FieldInteger})
	if typ, ok := br.FieldType("legacy"); !ok || typ != FieldInteger {
		t.Errorf("known field legacy in memory: %q %v, want integer", typ, ok)
	}
	sc, err := store.LoadSchema(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if sc.Fields["legacy"] != FieldInteger {
		t.Errorf("stored fields %v, want legacy integer", sc.Fields)
	}
	if typ, ok := newSchemaBridge(t, store, nil).FieldType("legacy"); !ok || typ != FieldInteger {
		t.Errorf("another instance sees legacy as %q %v, want integer", typ, ok)
	}
}

// TestSchemaDeviceBoundCountsFleetNames: names the fleet already sends
// still count towards each device's bound when a device first uses them.
func TestSchemaDeviceBoundCountsFleetNames(t *testing.T) {
	for _, persisted := range []bool{false, true} {
		t.Run(fmt.Sprintf("store=%v", persisted), func(t *testing.T) {
			var store SchemaStore
			if persisted {
				bolt, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
				if err != nil {
					t.Fatal(err)
				}
				defer bolt.Close()
				store = bolt
			}
			br := newSchemaBridge(t, store, nil) // 4 per device, 6 in all
			for _, st := range []struct{ device, msg, want string }{
				{"d1", `{"metrics":{"a":1,"b":2,"c":3,"d":4}}`, ""},
				{"d2", `{"metrics":{"a":1,"b":2,"c":3,"d":4}}`, ""},
				{"d2", `{"metrics":{"e":5}}`, "metrics.e: a device may send at most 4 distinct metric names"},
			} {
				_, e := br.Ingest(context.Background(), br.Ephemeral(st.device, devices.TransportHTTP, "test"), []byte(st.msg))
				if (st.want == "") != (e == nil) || (e != nil && !strings.HasPrefix(e.Message, st.want)) {
					t.Errorf("%s %s: %v, want %q", st.device, st.msg, e, st.want)
				}
			}
		})
	}
}

// TestSchemaRefusedMessageReleasesDeviceNames: a refused message that
// claimed no type (its names are known to the fleet) still gives back the
// names it added to its device.
func TestSchemaRefusedMessageReleasesDeviceNames(t *testing.T) {
	for _, persisted := range []bool{false, true} {
		t.Run(fmt.Sprintf("store=%v", persisted), func(t *testing.T) {
			ctx := context.Background()
			var store SchemaStore
			var bolt *devices.BoltStore
			if persisted {
				var err error
				bolt, err = devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
				if err != nil {
					t.Fatal(err)
				}
				defer bolt.Close()
				store = bolt
			}
			rs := &refusingStore{}
			br, err := New(Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: rs, Devices: registryStub{},
				RatePerSec: 1e9, Burst: 1e9, Schema: store, MaxMetricsPerDevice: 3, MaxMetricNames: 3})
			if err != nil {
				t.Fatal(err)
			}
			if _, e := br.Ingest(ctx, br.Ephemeral("d1", devices.TransportHTTP, "test"), []byte(`{"metrics":{"a":1,"b":2}}`)); e != nil {
				t.Fatal(e)
			}
			rs.set(spool.ErrFull)
			if _, e := br.Ingest(ctx, br.Ephemeral("d2", devices.TransportHTTP, "test"), []byte(`{"metrics":{"a":1,"b":2}}`)); e == nil {
				t.Fatal("refused append acked")
			}
			br.mu.Lock()
			n := len(*br.deviceLocked("d2").names.Load())
			br.mu.Unlock()
			if n != 0 {
				t.Errorf("d2 kept %d names of a refused message in memory, want 0", n)
			}
			if bolt != nil {
				sc, err := bolt.LoadSchema(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if got := sc.DeviceMetrics["d2"]; len(got) != 0 {
					t.Errorf("stored names of d2 %v, want none", got)
				}
			}
		})
	}
}

// TestSchemaLoweredBoundsKeepKnownNames: bounds lowered at a restart
// refuse new names only: a device already past the per-device bound may
// still send the names it has, and another device may take up names the
// fleet already stores although the fleet is past its bound.
func TestSchemaLoweredBoundsKeepKnownNames(t *testing.T) {
	store, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	br := newSchemaBridge(t, store, nil) // 4 per device, 6 in all
	if _, e := br.Ingest(ctx, br.Ephemeral("d1", devices.TransportHTTP, "test"), []byte(`{"metrics":{"a":1,"b":2,"c":3,"d":4}}`)); e != nil {
		t.Fatal(e)
	}
	sp, err := spool.Open(spool.Options{Dir: filepath.Join(t.TempDir(), "spool"), MaxBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	br2, err := New(Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: sp, Devices: registryStub{},
		RatePerSec: 1e9, Burst: 1e9, Schema: store, MaxMetricsPerDevice: 2, MaxMetricNames: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []struct{ name, device, msg, want string }{
		{"device past its bound, known names", "d1", `{"metrics":{"a":5,"d":6}}`, ""},
		{"device past its bound, a new name", "d1", `{"metrics":{"e":1}}`, "metrics.e: a device may send at most 2"},
		{"fleet past its bound, names it has", "d2", `{"metrics":{"a":1,"b":2}}`, ""},
		{"fleet past its bound, a new name", "d3", `{"metrics":{"e":1}}`, "metrics.e: the hub already stores 4 distinct metric names, at most 2"},
	} {
		_, e := br2.Ingest(ctx, br2.Ephemeral(st.device, devices.TransportHTTP, "test"), []byte(st.msg))
		if (st.want == "") != (e == nil) || (e != nil && !strings.HasPrefix(e.Message, st.want)) {
			t.Errorf("%s: %v, want %q", st.name, e, st.want)
		}
	}
}

// removeFailingStore is the bolt schema store whose RemoveDeviceMetrics
// fails while fail is set.
type removeFailingStore struct {
	*devices.BoltStore
	mu   sync.Mutex
	fail bool
}

func (r *removeFailingStore) RemoveDeviceMetrics(ctx context.Context, device string, names []string) error {
	r.mu.Lock()
	fail := r.fail
	r.mu.Unlock()
	if fail {
		return fmt.Errorf("store down")
	}
	return r.BoltStore.RemoveDeviceMetrics(ctx, device, names)
}

// TestSchemaFailedNameReleaseThenTypeOnlyRelease: a failed release of a
// device's names is counted and leaves the names with the device; a later
// refused message that claimed only a type (the name is the device's
// already) still gives the type back.
func TestSchemaFailedNameReleaseThenTypeOnlyRelease(t *testing.T) {
	ctx := context.Background()
	bolt, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer bolt.Close()
	store := &removeFailingStore{BoltStore: bolt, fail: true}
	rs := &refusingStore{err: spool.ErrFull}
	br, err := New(Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: rs, Devices: registryStub{},
		RatePerSec: 1e9, Burst: 1e9, Schema: store, MaxMetricsPerDevice: 3, MaxMetricNames: 3})
	if err != nil {
		t.Fatal(err)
	}
	d1 := func() *Session { return br.Ephemeral("d1", devices.TransportHTTP, "test") }
	for _, st := range []struct {
		name       string
		step       func() *telemetry.Error
		wantFailed int64
	}{
		{"refused, names release fails", func() *telemetry.Error {
			_, e := br.Ingest(ctx, d1(), []byte(`{"metrics":{"temp":"hot"}}`))
			return e
		}, 1},
		{"refused again, only the type claimed", func() *telemetry.Error {
			store.mu.Lock()
			store.fail = false
			store.mu.Unlock()
			_, e := br.Ingest(ctx, d1(), []byte(`{"metrics":{"temp":"hot"}}`))
			return e
		}, 1},
	} {
		if e := st.step(); e == nil {
			t.Fatalf("%s: refused append acked", st.name)
		}
		if got := br.Stats().SchemaReleaseFailed.Load(); got != st.wantFailed {
			t.Errorf("%s: %d release failures counted, want %d", st.name, got, st.wantFailed)
		}
		if typ, ok := br.FieldType("temp"); ok {
			t.Errorf("%s: temp kept type %q from a refused message", st.name, typ)
		}
	}
	rs.set(nil)
	if _, e := br.Ingest(ctx, br.Ephemeral("d2", devices.TransportHTTP, "test"), []byte(`{"metrics":{"temp":21}}`)); e != nil {
		t.Errorf("temp:21 after two refused temp:\"hot\": %v", e)
	}
}

// TestAttackLedgerSeqFieldTakenInInflux: where InfluxDB already holds a
// field seq as a float (written before seq was reserved), a reading with a
// seq would be refused by InfluxDB after the ack; the hub refuses it
// before, at the reading's seq, and readings without seq still pass.
func TestAttackLedgerSeqFieldTakenInInflux(t *testing.T) {
	br := newSchemaBridge(t, nil, map[string]string{telemetry.SeqField: FieldNumber})
	s := br.Ephemeral("d1", devices.TransportHTTP, "test")
	for _, st := range []struct{ msg, want string }{
		{`{"seq":1,"metrics":{"t":1}}`, "seq: InfluxDB already holds the field seq as a number"},
		{`{"readings":[{"metrics":{"t":1}},{"seq":2,"metrics":{"t":1}}]}`, "readings[1].seq: InfluxDB already holds"},
		{`{"metrics":{"t":1}}`, ""},
	} {
		_, e := br.Ingest(context.Background(), s, []byte(st.msg))
		switch {
		case st.want == "" && e != nil:
			t.Errorf("%s: refused: %v", st.msg, e)
		case st.want != "" && (e == nil || e.Code != telemetry.CodeInvalid || !strings.HasPrefix(e.Message, st.want)):
			t.Errorf("%s: got %v, want invalid %q", st.msg, e, st.want)
		}
	}
	br2 := newSchemaBridge(t, nil, map[string]string{telemetry.SeqField: FieldInteger})
	if _, e := br2.Ingest(context.Background(), br2.Ephemeral("d1", devices.TransportHTTP, "test"), []byte(`{"seq":1,"metrics":{"t":1}}`)); e != nil {
		t.Errorf("seq already an integer field: %v", e)
	}
}
