package dashboard

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/fieldhub/fieldhub/telemetry/influx"
)

// Catalogue says what InfluxDB holds of a device's metrics.
// *influx.Client implements it.
type Catalogue interface {
	MetricSpans(ctx context.Context, device string, now time.Time) (map[string]influx.MetricSpan, error)
}

// catalogueWait bounds the InfluxDB side of the metric catalogue; past it
// the answer has the schema store's names only.
const catalogueWait = 20 * time.Second

// metricEntry is one metric of a device's catalogue. FirstSeen and
// LastSeen are null when InfluxDB has no point of it (still spooled) or
// did not answer.
type metricEntry struct {
	Name      string `json:"name"`
	Type      string `json:"type"`
	FirstSeen *int64 `json:"first_seen"`
	LastSeen  *int64 `json:"last_seen"`
}

// metrics is GET /api/v1/devices/{id}/metrics: the device's metric
// catalogue, from the schema store (names and types, whatever InfluxDB
// says) and InfluxDB (first and last point; names written before the hub
// kept a schema), sorted by name. Nothing of it comes from the hub's
// memory, so it is the same after a restart.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !s.opts.Registry.Exists(id) {
		writeErr(w, http.StatusNotFound, "not_found", fmt.Sprintf("device %q not found", id))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), catalogueWait)
	defer cancel()
	var (
		types          map[string]string
		spans          map[string]influx.MetricSpan
		schemaErr, err error
	)
	if s.opts.Schema != nil {
		if types, schemaErr = s.opts.Schema.DeviceMetricTypes(ctx, id); schemaErr != nil {
			s.log.Warn("read metric schema", "device", id, "err", schemaErr)
		}
	}
	source := "influxdb"
	if s.opts.Catalogue == nil {
		source = "schema"
	} else if spans, err = s.opts.Catalogue.MetricSpans(ctx, id, s.opts.Now()); err != nil {
		s.log.Warn("metric catalogue query failed", "device", id, "err", err)
		source = "schema"
		if schemaErr != nil || s.opts.Schema == nil {
			writeErr(w, http.StatusBadGateway, "unavailable", "neither InfluxDB nor the registry store answered; retry later")
			return
		}
	}
	out := make([]metricEntry, 0, max(len(types), len(spans)))
	for name, typ := range types {
		e := metricEntry{Name: name, Type: apiType(typ)}
		if sp, ok := spans[name]; ok {
			e.FirstSeen, e.LastSeen = msPtr(sp.First), msPtr(sp.Last)
			if e.Type == "" {
				e.Type = apiType(sp.Type)
			}
		}
		out = append(out, e)
	}
	for name, sp := range spans {
		if _, ok := types[name]; !ok {
			out = append(out, metricEntry{Name: name, Type: apiType(sp.Type), FirstSeen: msPtr(sp.First), LastSeen: msPtr(sp.Last)})
		}
	}
	slices.SortFunc(out, func(a, b metricEntry) int { return cmp.Compare(a.Name, b.Name) })
	writeJSON(w, http.StatusOK, map[string]any{"device": id, "metrics": out, "source": source})
}

func msPtr(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	ms := t.UnixMilli()
	return &ms
}
