package main

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/fieldhub/fieldhub/bridge/cluster"
	"github.com/fieldhub/fieldhub/bridge/mqtt"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry/influx"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

// healthCheck is one component's part of GET /readyz: the key it reports
// under, its status and detail, and whether the hub can take readings as
// far as it is concerned (a degraded dependency answers ok=true).
type healthCheck struct {
	Key   string
	Check func(ctx context.Context) (c check, ok bool)
}

type check struct {
	Status string `json:"status"`
	Detail any    `json:"detail,omitempty"`
}

// health is GET /readyz: it aggregates the components' checks, 200 when
// every one says the hub can accept readings and 503 when one says it
// cannot. The policy of each check is the component's own (below); the
// aggregator only combines them.
type health []healthCheck

func (h health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	checks := make(map[string]check, len(h))
	ready := true
	for _, hc := range h {
		c, ok := hc.Check(ctx)
		checks[hc.Key] = c
		ready = ready && ok
	}
	status, code := "ready", http.StatusOK
	if !ready {
		status, code = "not_ready", http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"status": status, "checks": checks})
}

// registryCheck: the registry store answers; detail is the device counts.
func registryCheck(reg *devices.Registry) healthCheck {
	return healthCheck{Key: "registry", Check: func(ctx context.Context) (check, bool) {
		if err := reg.Ping(ctx); err != nil {
			return check{Status: "unavailable", Detail: err.Error()}, false
		}
		total, online := reg.Counts()
		return check{Status: "ok", Detail: map[string]int{"devices": total, "online": online}}, true
	}}
}

// spoolCheck: unready while the spool is full (spool.Stats.Full, the
// spool's own policy). Load balancers then send devices elsewhere rather
// than to "overloaded" answers.
func spoolCheck(sp *spool.Spool, maxMessage int64) healthCheck {
	return healthCheck{Key: "spool", Check: func(context.Context) (check, bool) {
		st := sp.Stats()
		detail := map[string]any{"bytes": st.Bytes, "max_bytes": st.MaxBytes, "pending_points": st.PendingPoints}
		if !st.OldestPending.IsZero() {
			detail["oldest_pending_seconds"] = time.Since(st.OldestPending).Seconds()
		}
		if st.Full(maxMessage, time.Now()) {
			return check{Status: "full", Detail: detail}, false
		}
		return check{Status: "ok", Detail: detail}, true
	}}
}

// influxCheck: InfluxDB down only degrades the hub (ingest goes on into
// the spool): "spooling", never unready (the writer's Ready).
func influxCheck(writer *influx.Writer, sp *spool.Spool) healthCheck {
	return healthCheck{Key: "influxdb", Check: func(ctx context.Context) (check, bool) {
		st := sp.Stats()
		detail := map[string]any{"backlog_points": st.PendingPoints}
		if !st.OldestPending.IsZero() {
			detail["backlog_age_seconds"] = time.Since(st.OldestPending).Seconds()
		}
		if err := writer.Ready(ctx); err != nil {
			detail["error"] = err.Error()
			return check{Status: "spooling", Detail: detail}, true
		}
		return check{Status: "ok", Detail: detail}, true
	}}
}

// disabledMQTTCheck is the mqtt check with no MQTT at all (no embedded
// broker, no external one).
func disabledMQTTCheck() healthCheck {
	return healthCheck{Key: "mqtt", Check: func(context.Context) (check, bool) { return check{Status: "disabled"}, true }}
}

// brokerCheck is the device gateway's check: listening.
func brokerCheck(broker *mqtt.Broker) healthCheck {
	return healthCheck{Key: "mqtt", Check: func(context.Context) (check, bool) {
		return check{Status: "listening", Detail: map[string]string{"addr": broker.Addr().String()}}, true
	}}
}

// clusterCheck is external-broker mode's check: without the broker this
// instance still takes WebSocket and HTTP readings into its spool:
// degraded, not unready (every instance would go unready at once).
func clusterCheck(cl *cluster.Cluster) healthCheck {
	return healthCheck{Key: "mqtt", Check: func(context.Context) (check, bool) {
		status := "connected"
		if !cl.Connected() {
			status = "disconnected"
		}
		return check{Status: status, Detail: map[string]string{"mode": "external broker"}}, true
	}}
}
