package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/ledger"
	"github.com/fieldhub/fieldhub/devices/ledger/boltstore"
	"github.com/fieldhub/fieldhub/devices/ledger/pgstore"
	"github.com/fieldhub/fieldhub/devices/pg"
	"github.com/fieldhub/fieldhub/telemetry"
)

// newLedger opens the per-device ledger in the registry's database
// (its own bucket or table), keyed by this instance.
func newLedger(ctx context.Context, cfg config, st registryStore, reg *devices.Registry, gapsChanged func(device string, open int), log *slog.Logger) (*ledger.Ledger, error) {
	var ls ledger.Store
	switch s := st.(type) {
	case *devices.BoltStore:
		ls = boltstore.New(s.DB())
	case *pg.Store:
		p, err := pgstore.New(ctx, s.Pool())
		if err != nil {
			return nil, err
		}
		ls = p
	}
	// Records are per instance: instances sharing PostgreSQL need names
	// of their own even without an external broker (kept in the data dir).
	inst := cfg.InstanceID
	if inst == "" && cfg.DatabaseURL != "" {
		var err error
		if inst, err = instanceID(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	l, err := ledger.New(ctx, ledger.Options{Exists: reg.Exists, Store: ls, Instance: inst,
		PersistInterval: cfg.LedgerSaveInterval, OnGapsChanged: gapsChanged, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	return l, nil
}

// ledgerRejections tells both the registry (the operator's list of
// refusals) and the ledger (counts by code) of every refusal.
type ledgerRejections struct {
	bridge.Rejections
	led *ledger.Ledger
}

func (r ledgerRejections) Rejected(device, transport, id string, e *telemetry.Error) {
	r.Rejections.Rejected(device, transport, id, e)
	r.led.Refused(device, string(e.Code))
}

// registerLedger adds the ledger's fleet totals (no per-device labels:
// the per-device view is GET /api/v1/devices/{id}/ledger).
func (m *metrics) registerLedger(l *ledger.Ledger) {
	counter := func(name, help string, f func(ledger.Totals) uint64) {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f(l.Totals())) }))
	}
	counter("fieldhub_ledger_received_total", "Device messages received, as the ledger counts them (this instance).", func(t ledger.Totals) uint64 { return t.Received })
	counter("fieldhub_ledger_refused_total", "Device messages refused, as the ledger counts them.", func(t ledger.Totals) uint64 { return t.Refused })
	counter("fieldhub_ledger_durable_total", "Readings made durable in the spool, as the ledger counts them.", func(t ledger.Totals) uint64 { return t.Durable })
	counter("fieldhub_ledger_written_total", "Readings InfluxDB confirmed, as the ledger counts them.", func(t ledger.Totals) uint64 { return t.Written })
	counter("fieldhub_ledger_dead_lettered_total", "Readings InfluxDB refused for good, as the ledger counts them.", func(t ledger.Totals) uint64 { return t.DeadLettered })
	counter("fieldhub_ledger_seq_gaps_total", "Gaps in devices' sequence numbers noticed.", func(t ledger.Totals) uint64 { return t.Gaps })
	counter("fieldhub_ledger_seq_duplicates_total", "Readings whose sequence number was already seen (resends).", func(t ledger.Totals) uint64 { return t.Duplicates })
	counter("fieldhub_ledger_seq_resets_total", "Sequence resets: a new boot, or seq going back beyond the window.", func(t ledger.Totals) uint64 { return t.Resets })
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "fieldhub_ledger_open_gaps", Help: "Open sequence gaps over all devices (not yet filled by a resend).",
	}, func() float64 { return float64(l.Totals().OpenGaps) }))
}
