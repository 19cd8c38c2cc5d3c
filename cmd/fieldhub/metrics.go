package main

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/cluster"
	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/dashboard/alerts"
	"github.com/fieldhub/fieldhub/dashboard/alerts/notify"
	"github.com/fieldhub/fieldhub/dashboard/live"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry/influx"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

// metrics is the hub's Prometheus registry. Components keep their own
// atomic counters; a collector reads them at scrape time, so the hot paths
// never touch Prometheus and no component imports it. Histograms, which
// need per-event observation, hang off components' callbacks. Every name
// is fieldhub_*, and no label has a value per device.
type metrics struct {
	reg          *prometheus.Registry
	authFailures *prometheus.CounterVec
	writeLatency prometheus.Histogram
	batchSize    prometheus.Histogram
	writeErrors  *prometheus.CounterVec
	aclDenied    prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.authFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fieldhub_auth_failures_total", Help: "Refused credentials, by transport (ws, mqtt, http, api).",
	}, []string{"transport"})
	m.writeLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "fieldhub_influx_write_duration_seconds", Help: "Duration of successful InfluxDB writes.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	m.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "fieldhub_influx_batch_points", Help: "Points per successful InfluxDB write.",
		Buckets: prometheus.ExponentialBuckets(1, 4, 8),
	})
	m.writeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fieldhub_influx_write_errors_total", Help: "Failed InfluxDB writes, by class (network, server, throttled, auth, rejected).",
	}, []string{"class"})
	m.aclDenied = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fieldhub_mqtt_acl_denied_total", Help: "MQTT publishes and subscriptions the per-device ACL refused.",
	})
	m.reg.MustRegister(m.authFailures, m.writeLatency, m.batchSize, m.writeErrors, m.aclDenied,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) authFailure(transport string) { m.authFailures.WithLabelValues(transport).Inc() }

// writerObservers are the writer's batch and error metrics, handed to
// influx.NewWriter at construction.
func (m *metrics) writerObservers() influx.WriterObservers {
	return influx.WriterObservers{
		OnBatch: func(points int, d time.Duration) {
			m.batchSize.Observe(float64(points))
			m.writeLatency.Observe(d.Seconds())
		},
		OnError: func(class string) { m.writeErrors.WithLabelValues(class).Inc() },
	}
}

// register adds the collector of the components every hub has.
func (m *metrics) register(br *bridge.Bridge, cmds *commands.Service, sp *spool.Spool, w *influx.Writer, reg *devices.Registry, live *live.Hub) {
	m.reg.MustRegister(&hubCollector{br: br, cmds: cmds, sp: sp, w: w, reg: reg, live: live})
}

// registerPresence adds the presence recorder's drop counter.
func (m *metrics) registerPresence(p *presenceRecorder) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "fieldhub_presence_dropped_total",
		Help: "Presence changes not recorded in InfluxDB: the recorder's queue was full or the presence spool refused them.",
	}, func() float64 { return float64(p.dropped.Load()) }))
}

// registerCluster adds external-broker mode's collector; serve calls it
// only when it built a cluster, so no collector nil-checks one.
func (m *metrics) registerCluster(cl *cluster.Cluster) {
	m.reg.MustRegister(clusterCollector{cl: cl})
}

// registerAlerts adds the alert engine's and the notifier's collector.
func (m *metrics) registerAlerts(e *alerts.Engine, n *notify.Notifier, st alerts.Store) {
	m.reg.MustRegister(alertCollector{e: e, n: n, st: st})
}

var (
	descAlertsFiring  = prometheus.NewDesc("fieldhub_alerts_firing", "Alerts firing now, by severity.", []string{"severity"}, nil)
	descAlertTrans    = prometheus.NewDesc("fieldhub_alert_transitions_total", "Alert transitions this instance made, by state entered.", []string{"to"}, nil)
	descAlertDropped  = prometheus.NewDesc("fieldhub_alert_evaluations_dropped_total", "Readings, presence changes and rejections the alert engine's full input queue dropped.", nil, nil)
	descAlertsRefused = prometheus.NewDesc("fieldhub_alerts_refused_total", "New alerts refused because the open-alert bound was reached.", nil, nil)
	descNotifySent    = prometheus.NewDesc("fieldhub_alert_notifications_sent_total", "Alert notifications a receiver accepted, by target.", []string{"target"}, nil)
	descNotifyFailed  = prometheus.NewDesc("fieldhub_alert_notifications_failed_total", "Failed alert notification attempts (each is retried), by target.", []string{"target"}, nil)
	descNotifyQueued  = prometheus.NewDesc("fieldhub_alert_notifications_queued", "Alert notifications waiting in the outbox, by target.", []string{"target"}, nil)
	descNotifyResent  = prometheus.NewDesc("fieldhub_alert_notifications_resent_total", "Firing alerts posted to Alertmanager again so it keeps them firing.", []string{"target"}, nil)
	descNotifyDropped = prometheus.NewDesc("fieldhub_alert_notifications_dropped_total", "Alert notifications dropped because a target's outbox was full.", nil, nil)
)

// alertCollector reads the alert engine's counters at scrape time.
type alertCollector struct {
	e  *alerts.Engine
	n  *notify.Notifier
	st alerts.Store
}

func (c alertCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descAlertsFiring
	ch <- descAlertTrans
	ch <- descAlertDropped
	ch <- descAlertsRefused
	ch <- descNotifySent
	ch <- descNotifyFailed
	ch <- descNotifyQueued
	ch <- descNotifyResent
	ch <- descNotifyDropped
}

func (c alertCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.e.Stats()
	for sev, n := range st.Firing {
		ch <- prometheus.MustNewConstMetric(descAlertsFiring, prometheus.GaugeValue, float64(n), sev)
	}
	for to, n := range st.Transitions {
		ch <- prometheus.MustNewConstMetric(descAlertTrans, prometheus.CounterValue, float64(n), to)
	}
	ch <- prometheus.MustNewConstMetric(descAlertDropped, prometheus.CounterValue, float64(st.Dropped))
	ch <- prometheus.MustNewConstMetric(descAlertsRefused, prometheus.CounterValue, float64(st.Refused))
	for target, ts := range c.n.Stats() {
		ch <- prometheus.MustNewConstMetric(descNotifySent, prometheus.CounterValue, float64(ts.Sent), target)
		ch <- prometheus.MustNewConstMetric(descNotifyFailed, prometheus.CounterValue, float64(ts.Failed), target)
		if ts.Queued >= 0 {
			ch <- prometheus.MustNewConstMetric(descNotifyQueued, prometheus.GaugeValue, float64(ts.Queued), target)
		}
		if target == notify.TargetAlertmanager {
			ch <- prometheus.MustNewConstMetric(descNotifyResent, prometheus.CounterValue, float64(ts.Resent), target)
		}
	}
	ch <- prometheus.MustNewConstMetric(descNotifyDropped, prometheus.CounterValue, float64(c.st.OutboxDropped()))
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

var (
	descConnected     = prometheus.NewDesc("fieldhub_devices_connected", "Devices connected now, by transport.", []string{"transport"}, nil)
	descConnects      = prometheus.NewDesc("fieldhub_device_connects_total", "Device sessions opened, by transport.", []string{"transport"}, nil)
	descDisconnects   = prometheus.NewDesc("fieldhub_device_disconnects_total", "Device sessions closed, by transport and reason.", []string{"transport", "reason"}, nil)
	descMessages      = prometheus.NewDesc("fieldhub_messages_received_total", "Device messages received, by transport.", []string{"transport"}, nil)
	descReadings      = prometheus.NewDesc("fieldhub_readings_accepted_total", "Readings made durable, by transport.", []string{"transport"}, nil)
	descRejected      = prometheus.NewDesc("fieldhub_messages_rejected_total", "Device messages refused, by error code.", []string{"code"}, nil)
	descSchema        = prometheus.NewDesc("fieldhub_metric_schema_rejections_total", "Device messages refused by the metric schema, by reason (type_conflict, device_metrics, metric_names).", []string{"reason"}, nil)
	descSchemaRelease = prometheus.NewDesc("fieldhub_metric_schema_release_failures_total", "Schema claims of a message the spool refused that could not be undone (the claim stays).", nil, nil)
	descSpoolBytes    = prometheus.NewDesc("fieldhub_spool_bytes", "Bytes of spool segments on disk.", nil, nil)
	descSpoolMax      = prometheus.NewDesc("fieldhub_spool_max_bytes", "Bound on spool bytes.", nil, nil)
	descSpoolPending  = prometheus.NewDesc("fieldhub_spool_pending_readings", "Readings durable in the spool and not yet in InfluxDB.", nil, nil)
	descSpoolAge      = prometheus.NewDesc("fieldhub_spool_oldest_pending_seconds", "Age of the oldest reading not yet in InfluxDB.", nil, nil)
	descSpoolTorn     = prometheus.NewDesc("fieldhub_spool_recovered_torn_segments", "Segments whose torn tail (an interrupted write) was truncated at start.", nil, nil)
	descSpoolCorruptB = prometheus.NewDesc("fieldhub_spool_corrupt_bytes_total", "Damaged spool bytes skipped and quarantined at start, or skipped by the reader to resynchronise.", nil, nil)
	descSpoolCorruptR = prometheus.NewDesc("fieldhub_spool_corrupt_records_total", "Damaged spool records skipped at start (estimated from their length fields, at least one per damaged run).", nil, nil)
	descSpoolCorruptC = prometheus.NewDesc("fieldhub_spool_corrupt_checkpoints_total", "Spool checkpoint files found unusable at start (every segment was replayed from its beginning).", nil, nil)
	descSpoolCommits  = prometheus.NewDesc("fieldhub_spool_commits_total", "Spool group commits since start, one write and one fsync each; readings accepted divided by this is readings per fsync (FIELDHUB_SPOOL_COMMIT_INTERVAL).", nil, nil)
	descWritten       = prometheus.NewDesc("fieldhub_influx_points_written_total", "Points InfluxDB accepted.", nil, nil)
	descDeadLettered  = prometheus.NewDesc("fieldhub_influx_points_dead_lettered_total", "Points InfluxDB permanently rejected, kept in the dead-letter file.", nil, nil)
	descInfluxHealthy = prometheus.NewDesc("fieldhub_influx_up", "1 when the last InfluxDB write succeeded.", nil, nil)
	descDevices       = prometheus.NewDesc("fieldhub_devices_registered", "Devices in the registry.", nil, nil)
	descCommands      = prometheus.NewDesc("fieldhub_commands_finished_total", "Commands that reached a final status, by status.", []string{"status"}, nil)
	descLiveSubs      = prometheus.NewDesc("fieldhub_live_subscribers", "Dashboard live connections (WebSocket and SSE).", nil, nil)
	descLiveSent      = prometheus.NewDesc("fieldhub_live_events_sent_total", "Live events written to dashboards.", nil, nil)
	descLiveCoalesced = prometheus.NewDesc("fieldhub_live_events_coalesced_total", "Readings merged into a newer value for a dashboard that fell behind.", nil, nil)
	descLiveSlow      = prometheus.NewDesc("fieldhub_live_slow_consumer_disconnects_total", "Dashboards disconnected for staying behind.", nil, nil)
	descLiveDropped   = prometheus.NewDesc("fieldhub_live_input_dropped_total", "Live events dropped because the live hub's input was full (its goroutine starved); ingest is never held up.", nil, nil)
	descLiveFilter    = prometheus.NewDesc("fieldhub_live_filter_devices", "Devices followed by live connections, summed (each bounded by the registry and 10,000).", nil, nil)
	descLiveRefused   = prometheus.NewDesc("fieldhub_live_refused_total", "Live connections refused, by cap (per_token: FIELDHUB_LIVE_MAX_PER_TOKEN; full: the hub's 1,000).", []string{"reason"}, nil)

	// External-broker mode only.
	descClusterUp        = prometheus.NewDesc("fieldhub_cluster_broker_up", "1 when this instance is connected to the external broker.", nil, nil)
	descClusterIngested  = prometheus.NewDesc("fieldhub_cluster_messages_acked_total", "Broker messages made durable and acknowledged to the broker.", nil, nil)
	descClusterConnFail  = prometheus.NewDesc("fieldhub_cluster_connect_failures_total", "Failed attempts to connect to the external broker (the log says why).", nil, nil)
	descClusterRedeliv   = prometheus.NewDesc("fieldhub_cluster_redeliveries_total", "Broker redeliveries of messages already durable here, acknowledged again without storing them twice.", nil, nil)
	descClusterLive      = prometheus.NewDesc("fieldhub_cluster_live_events_total", "Live events exchanged with other instances, by direction (out, in, dropped).", []string{"direction"}, nil)
	descClusterForwarded = prometheus.NewDesc("fieldhub_cluster_commands_forwarded_total", "Commands from the broker forwarded to a device session on this instance.", nil, nil)
	descClusterRefreshes = prometheus.NewDesc("fieldhub_cluster_registry_refreshes_total", "Registry reloads after another instance's change.", nil, nil)
	descClusterDynsec    = prometheus.NewDesc("fieldhub_cluster_dynsec_errors_total", "Mosquitto dynamic-security changes that failed after retries.", nil, nil)
)

// hubCollector reads the components' counters at scrape time.
type hubCollector struct {
	br   *bridge.Bridge
	cmds *commands.Service
	sp   *spool.Spool
	w    *influx.Writer
	reg  *devices.Registry
	live *live.Hub
}

func (c *hubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnected, descConnects, descDisconnects, descMessages, descReadings, descRejected, descSchema, descSchemaRelease,
		descSpoolBytes, descSpoolMax, descSpoolPending, descSpoolAge, descSpoolTorn, descSpoolCorruptB, descSpoolCorruptR, descSpoolCorruptC, descSpoolCommits, descWritten, descDeadLettered, descInfluxHealthy, descDevices,
		descLiveSubs, descLiveSent, descLiveCoalesced, descLiveSlow, descLiveDropped, descLiveRefused, descLiveFilter, descCommands} {
		ch <- d
	}
}

// clusterCollector reads the cluster's counters at scrape time.
type clusterCollector struct{ cl *cluster.Cluster }

func (c clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descClusterUp, descClusterConnFail, descClusterIngested, descClusterRedeliv, descClusterLive, descClusterForwarded, descClusterRefreshes, descClusterDynsec} {
		ch <- d
	}
}

func (c *hubCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.br.Stats()
	for t, v := range st.Connected {
		ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, float64(v.Load()), t)
	}
	for t, v := range st.Connects {
		ch <- prometheus.MustNewConstMetric(descConnects, prometheus.CounterValue, float64(v.Load()), t)
	}
	for t, byReason := range st.Disconnects {
		for r, v := range byReason {
			ch <- prometheus.MustNewConstMetric(descDisconnects, prometheus.CounterValue, float64(v.Load()), t, r)
		}
	}
	for t, v := range st.Messages {
		ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(v.Load()), t)
	}
	for t, v := range st.Readings {
		ch <- prometheus.MustNewConstMetric(descReadings, prometheus.CounterValue, float64(v.Load()), t)
	}
	for status, v := range c.cmds.Stats().Finished {
		ch <- prometheus.MustNewConstMetric(descCommands, prometheus.CounterValue, float64(v.Load()), status)
	}
	for code, v := range st.Rejected {
		ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(v.Load()), code)
	}
	for reason, v := range st.SchemaRejected {
		ch <- prometheus.MustNewConstMetric(descSchema, prometheus.CounterValue, float64(v.Load()), reason)
	}
	ch <- prometheus.MustNewConstMetric(descSchemaRelease, prometheus.CounterValue, float64(st.SchemaReleaseFailed.Load()))
	ss := c.sp.Stats()
	ch <- prometheus.MustNewConstMetric(descSpoolBytes, prometheus.GaugeValue, float64(ss.Bytes))
	ch <- prometheus.MustNewConstMetric(descSpoolMax, prometheus.GaugeValue, float64(ss.MaxBytes))
	ch <- prometheus.MustNewConstMetric(descSpoolPending, prometheus.GaugeValue, float64(ss.PendingPoints))
	age := 0.0
	if !ss.OldestPending.IsZero() {
		age = time.Since(ss.OldestPending).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(descSpoolAge, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(descSpoolTorn, prometheus.GaugeValue, float64(ss.RecoveredTorn))
	ch <- prometheus.MustNewConstMetric(descSpoolCorruptB, prometheus.CounterValue, float64(ss.CorruptBytes))
	ch <- prometheus.MustNewConstMetric(descSpoolCorruptR, prometheus.CounterValue, float64(ss.CorruptRecords))
	ch <- prometheus.MustNewConstMetric(descSpoolCorruptC, prometheus.CounterValue, float64(ss.CorruptCheckpoints))
	ch <- prometheus.MustNewConstMetric(descSpoolCommits, prometheus.CounterValue, float64(ss.Commits))
	ws := c.w.Stats()
	ch <- prometheus.MustNewConstMetric(descWritten, prometheus.CounterValue, float64(ws.WrittenPoints))
	ch <- prometheus.MustNewConstMetric(descDeadLettered, prometheus.CounterValue, float64(ws.DeadLettered))
	up := 0.0
	if ws.Healthy {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descInfluxHealthy, prometheus.GaugeValue, up)
	total, _ := c.reg.Counts()
	ch <- prometheus.MustNewConstMetric(descDevices, prometheus.GaugeValue, float64(total))
	ls := c.live.Stats()
	ch <- prometheus.MustNewConstMetric(descLiveSubs, prometheus.GaugeValue, float64(ls.Subscribers))
	ch <- prometheus.MustNewConstMetric(descLiveSent, prometheus.CounterValue, float64(ls.Sent))
	ch <- prometheus.MustNewConstMetric(descLiveCoalesced, prometheus.CounterValue, float64(ls.Coalesced))
	ch <- prometheus.MustNewConstMetric(descLiveSlow, prometheus.CounterValue, float64(ls.SlowDisconnects))
	ch <- prometheus.MustNewConstMetric(descLiveDropped, prometheus.CounterValue, float64(ls.InputDropped))
	ch <- prometheus.MustNewConstMetric(descLiveRefused, prometheus.CounterValue, float64(ls.RefusedPerCredential), "per_token")
	ch <- prometheus.MustNewConstMetric(descLiveRefused, prometheus.CounterValue, float64(ls.RefusedFull), "full")
	ch <- prometheus.MustNewConstMetric(descLiveFilter, prometheus.GaugeValue, float64(ls.FilterDevices))
}

func (c clusterCollector) Collect(ch chan<- prometheus.Metric) {
	cs := c.cl.Stats()
	brokerUp := 0.0
	if c.cl.Connected() {
		brokerUp = 1
	}
	ch <- prometheus.MustNewConstMetric(descClusterUp, prometheus.GaugeValue, brokerUp)
	ch <- prometheus.MustNewConstMetric(descClusterIngested, prometheus.CounterValue, float64(cs.Ingested.Load()))
	ch <- prometheus.MustNewConstMetric(descClusterConnFail, prometheus.CounterValue, float64(cs.ConnectFailures.Load()))
	ch <- prometheus.MustNewConstMetric(descClusterRedeliv, prometheus.CounterValue, float64(cs.Redelivered.Load()))
	ch <- prometheus.MustNewConstMetric(descClusterLive, prometheus.CounterValue, float64(cs.LiveOut.Load()), "out")
	ch <- prometheus.MustNewConstMetric(descClusterLive, prometheus.CounterValue, float64(cs.LiveIn.Load()), "in")
	ch <- prometheus.MustNewConstMetric(descClusterLive, prometheus.CounterValue, float64(cs.LiveDropped.Load()), "dropped")
	ch <- prometheus.MustNewConstMetric(descClusterForwarded, prometheus.CounterValue, float64(cs.Forwarded.Load()))
	ch <- prometheus.MustNewConstMetric(descClusterRefreshes, prometheus.CounterValue, float64(cs.Refreshes.Load()))
	ch <- prometheus.MustNewConstMetric(descClusterDynsec, prometheus.CounterValue, float64(cs.DynsecErrors.Load()))
}
