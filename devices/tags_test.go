package devices

import (
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/fieldhub/fieldhub/telemetry"
)

// TestTags: a device's InfluxDB tags are its allow-listed labels in
// TagLabels order, the same on every call (they are built once per
// record), and a device created again under its id gets its new labels.
func TestTags(t *testing.T) {
	r := openRegistry(t, filepath.Join(t.TempDir(), "r.db"), Options{TagLabels: []string{"site", "rack"}})
	ctx := context.Background()
	tests := []struct {
		id     string
		labels map[string]string
		want   []telemetry.Tag
	}{
		{"d-both", map[string]string{"rack": "3", "site": "north", "other": "x"}, []telemetry.Tag{{Key: "site", Value: "north"}, {Key: "rack", Value: "3"}}},
		{"d-rack", map[string]string{"rack": "7"}, []telemetry.Tag{{Key: "rack", Value: "7"}}},
		{"d-none", map[string]string{"other": "x"}, nil},
		{"d-empty", nil, nil},
	}
	for _, tt := range tests {
		if _, err := r.Create(ctx, Spec{ID: tt.id, Labels: tt.labels}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range tests {
		for call := range 2 {
			if got := r.Tags(tt.id); !slices.Equal(got, tt.want) {
				t.Errorf("%s call %d: Tags = %v, want %v", tt.id, call, got, tt.want)
			}
		}
	}
	if got := r.Tags("no-such-device"); got != nil {
		t.Errorf("unknown device: Tags = %v, want none", got)
	}
	if err := r.Delete(ctx, "d-both"); err != nil {
		t.Fatal(err)
	}
	if got := r.Tags("d-both"); got != nil {
		t.Errorf("deleted device: Tags = %v, want none", got)
	}
	if _, err := r.Create(ctx, Spec{ID: "d-both", Labels: map[string]string{"site": "south"}}); err != nil {
		t.Fatal(err)
	}
	if got, want := r.Tags("d-both"), []telemetry.Tag{{Key: "site", Value: "south"}}; !slices.Equal(got, want) {
		t.Errorf("device created again: Tags = %v, want %v", got, want)
	}
}
