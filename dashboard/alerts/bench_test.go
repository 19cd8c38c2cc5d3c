package alerts_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/fieldhub/fieldhub/dashboard/alerts"
	"github.com/fieldhub/fieldhub/dashboard/alerts/boltstore"
	"github.com/fieldhub/fieldhub/telemetry"
)

// BenchmarkEvaluateReading is the engine's cost per reading with 1000
// threshold rules on other devices and one on this one, condition not
// holding (the common case: no transition, no store I/O); and the
// bridge-side cost of a reading no rule looks at.
func BenchmarkEvaluateReading(b *testing.B) {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "r.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	st := boltstore.New(db)
	ctx := context.Background()
	v := 80.0
	for i := range 1000 {
		_ = st.PutRule(ctx, alerts.Rule{ID: fmt.Sprintf("rule-%d", i), Version: 1, RuleSpec: alerts.RuleSpec{Name: "r", Severity: "info",
			Selector:  alerts.Selector{Devices: []string{fmt.Sprintf("dev-%d", i)}},
			Condition: alerts.Condition{Type: alerts.CondThreshold, Metric: "temp", Op: ">", Value: &v}}}, 0)
	}
	e, _ := alerts.New(alerts.Options{Store: st, Devices: newFleet("dev-1")})
	_ = e.Load(ctx)
	ev := telemetry.Event{Type: telemetry.EventReading, Device: "dev-1", Metrics: telemetry.Metrics{"temp": telemetry.Number(20)}}
	b.Run("engine", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			e.Step(ctx, ev)
		}
	})
	b.Run("publish-unwatched", func(b *testing.B) {
		other := telemetry.Event{Type: telemetry.EventReading, Device: "dev-1", Metrics: telemetry.Metrics{"rpm": telemetry.Number(20)}}
		b.ReportAllocs()
		for b.Loop() {
			e.Publish(other)
		}
	})
}
