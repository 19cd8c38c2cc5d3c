package devices

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// TestBoltSchema: the first claim of a metric type wins, even among
// concurrent claims; a device's names are bounded; both survive reopening
// and a deleted device's names go with it.
func TestBoltSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	st, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := st.ClaimFields(ctx, map[string]string{"temp": "number", "state": "string"})
	if err != nil || got["temp"] != "number" || got["state"] != "string" {
		t.Fatalf("first claim: %v %v", got, err)
	}
	got, claimed, err := st.ClaimFields(ctx, map[string]string{"temp": "string", "ok": "bool"})
	if err != nil || got["temp"] != "number" || got["ok"] != "bool" || !slices.Equal(claimed, []string{"ok"}) {
		t.Fatalf("second claim: %v %v %v, want temp to stay a number and ok claimed", got, claimed, err)
	}
	// A release deletes only a claim still of the type released.
	if err := st.ReleaseFields(ctx, map[string]string{"temp": "string", "ok": "bool"}); err != nil {
		t.Fatal(err)
	}
	got, claimed, err = st.ClaimFields(ctx, map[string]string{"temp": "string", "ok": "string"})
	if err != nil || got["temp"] != "number" || got["ok"] != "string" || !slices.Equal(claimed, []string{"ok"}) {
		t.Fatalf("after release: %v %v %v", got, claimed, err)
	}
	var wg sync.WaitGroup
	answers := make([]string, 8)
	for i := range answers {
		typ := []string{"number", "string"}[i%2]
		wg.Go(func() {
			g, _, err := st.ClaimFields(ctx, map[string]string{"race": typ})
			if err != nil {
				t.Error(err)
			}
			answers[i] = g["race"]
		})
	}
	wg.Wait()
	for _, a := range answers {
		if a != answers[0] {
			t.Fatalf("concurrent claims saw different types: %v", answers)
		}
	}

	tests := []struct {
		name    string
		device  string
		add     []string
		want    []string
		tooMany bool
	}{
		{"first names", "d1", []string{"a", "b"}, []string{"a", "b"}, false},
		{"known names add nothing", "d1", []string{"b", "a"}, []string{"a", "b"}, false},
		{"up to the bound", "d1", []string{"c", "c"}, []string{"a", "b", "c"}, false},
		{"past the bound", "d1", []string{"d"}, []string{"a", "b", "c"}, true},
		{"other device", "d2", []string{"d"}, []string{"d"}, false},
	}
	for _, tt := range tests {
		have, err := st.AddDeviceMetrics(ctx, tt.device, tt.add, 3)
		slices.Sort(have)
		if !slices.Equal(have, tt.want) || errors.Is(err, ErrTooManyMetrics) != tt.tooMany {
			t.Errorf("%s: %v %v, want %v (too many %v)", tt.name, have, err, tt.want, tt.tooMany)
		}
	}
	// Removing names of a refused message frees the device's budget.
	if err := st.RemoveDeviceMetrics(ctx, "d1", []string{"c"}); err != nil {
		t.Fatal(err)
	}
	if have, err := st.AddDeviceMetrics(ctx, "d1", []string{"c"}, 3); err != nil || len(have) != 3 {
		t.Fatalf("after a removal: %v %v", have, err)
	}
	if err := st.Apply(ctx, Change{DeleteDevices: []string{"d2"}}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	st, err = OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sc, err := st.LoadSchema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sc.Fields["temp"] != "number" || sc.Fields["state"] != "string" || sc.Fields["ok"] != "string" || len(sc.Fields) != 4 {
		t.Errorf("fields after reopen: %v", sc.Fields)
	}
	slices.Sort(sc.DeviceMetrics["d1"])
	if !slices.Equal(sc.DeviceMetrics["d1"], []string{"a", "b", "c"}) || sc.DeviceMetrics["d2"] != nil {
		t.Errorf("device metrics after reopen: %v", sc.DeviceMetrics)
	}
	// One device's names with their types; a name without a type says "".
	if _, _, err := st.ClaimFields(ctx, map[string]string{"a": "number", "b": "bool"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddDeviceMetrics(ctx, "d3", []string{"temp", "state"}, 3); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		device string
		want   map[string]string
	}{
		{"d1", map[string]string{"a": "number", "b": "bool", "c": ""}},
		{"d3", map[string]string{"temp": "number", "state": "string"}},
		{"d2", map[string]string{}},
		{"d", map[string]string{}}, // a prefix of other ids is not their device
	} {
		got, err := st.DeviceMetricTypes(ctx, tt.device)
		if err != nil || !maps.Equal(got, tt.want) {
			t.Errorf("DeviceMetricTypes(%s) = %v, %v; want %v", tt.device, got, err, tt.want)
		}
	}
}
