package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/cluster"
	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/bridge/commands/boltstore"
	"github.com/fieldhub/fieldhub/bridge/commands/pgstore"
	"github.com/fieldhub/fieldhub/bridge/mqtt"
	"github.com/fieldhub/fieldhub/bridge/ws"
	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/dashboard/alerts"
	"github.com/fieldhub/fieldhub/dashboard/live"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/pg"
	"github.com/fieldhub/fieldhub/devices/state"
	statebolt "github.com/fieldhub/fieldhub/devices/state/boltstore"
	statepg "github.com/fieldhub/fieldhub/devices/state/pgstore"
	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/influx"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

func newLogger(c config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// listen binds addr, naming the setting to change when it cannot.
func listen(addr, env string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%s: address %s is already in use; set %s to a free address", env, addr, env)
		}
		return nil, fmt.Errorf("%s: listen on %s: %w", env, addr, err)
	}
	return ln, nil
}

// serve runs the hub until ctx ends, then shuts down in order: stop
// accepting, close device and dashboard sockets, drain the spool to
// InfluxDB for what is left of the shutdown deadline, close stores.
func serve(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	started := time.Now()

	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("FIELDHUB_DATA_DIR: create %s: %w", cfg.DataDir, err)
	}
	if cfg.MQTTBroker != "" && cfg.InstanceID == "" {
		if cfg.InstanceID, err = instanceID(cfg.DataDir); err != nil {
			return err
		}
	}
	var tlsCfg *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("FIELDHUB_TLS_CERT/FIELDHUB_TLS_KEY: %w", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	// Bind first, so a taken port fails before anything starts.
	httpLn, err := listen(cfg.HTTPAddr, "FIELDHUB_HTTP_ADDR")
	if err != nil {
		return err
	}
	defer httpLn.Close()
	var mqttLn, mqttTLSLn net.Listener
	if cfg.MQTTAddr != "" && cfg.MQTTBroker == "" { // an external broker replaces the embedded one
		if mqttLn, err = listen(cfg.MQTTAddr, "FIELDHUB_MQTT_ADDR"); err != nil {
			return err
		}
		defer mqttLn.Close()
		if tlsCfg != nil && cfg.MQTTTLSAddr != "" {
			ln, err := listen(cfg.MQTTTLSAddr, "FIELDHUB_MQTT_TLS_ADDR")
			if err != nil {
				return err
			}
			defer ln.Close()
			mqttTLSLn = tls.NewListener(ln, tlsCfg)
		}
	}

	store, cmdStore, stateStore, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer store.Close()
	// Construction is in dependency order and nothing built here is
	// nil-checked later: the live hub first (the registry tells it of ended
	// operator credentials), then the registry; the bridge and the cluster
	// need the registry to be built, so they subscribe to its changes once
	// they exist (reg.Subscribe below), before anything runs.
	liveHub := live.New(live.Options{Logger: log, MaxPerCredential: cfg.LiveMaxPerToken})
	reg, err := devices.Open(ctx, store, devices.Options{
		Logger:    log,
		TagLabels: cfg.TagLabels,
		// An operator token revoked or a session ended closes the live
		// connections it opened, at once.
		OnOperatorEnded: liveHub.CloseCredential,
		SessionIdle:     cfg.SessionIdle, SessionMax: cfg.SessionMax,
	})
	if err != nil {
		return err
	}
	defer reg.Close()
	if cfg.AdminToken != "" {
		reg.SetBootstrapAdmin(cfg.AdminToken)
	} else {
		secret, err := reg.EnsureAdmin(ctx)
		if err != nil {
			return fmt.Errorf("create bootstrap admin token: %w", err)
		}
		if secret != "" {
			// Shown once, on stdout, never in the log.
			fmt.Fprintf(stdout, "\nGenerated admin API token (shown once; store it now):\n\n    %s\n\n", secret)
		}
	}

	sp, err := spool.Open(spool.Options{Dir: filepath.Join(cfg.DataDir, "spool"), MaxBytes: cfg.SpoolMaxBytes, CommitInterval: cfg.SpoolCommitInterval, Logger: log})
	if err != nil {
		return fmt.Errorf("FIELDHUB_DATA_DIR: open spool: %w", err)
	}
	defer sp.Close()

	ic := influx.NewClient(influx.Options{
		URL: cfg.InfluxURL, Org: cfg.InfluxOrg, Bucket: cfg.InfluxBucket, Token: cfg.InfluxToken,
		Gzip: cfg.InfluxGzip, BatchPoints: cfg.InfluxBatch, FlushInterval: cfg.InfluxFlush, MaxBackoff: cfg.InfluxBackoff,
		DeadLetterPath: filepath.Join(cfg.DataDir, "deadletter.lp"), Logger: log,
	})
	defer ic.Close()
	m := newMetrics()
	// Presence changes go to InfluxDB through a spool and a writer of
	// their own, so the readings' spool, its bound and its metrics stay
	// the readings' (presence.go).
	presSpool, err := spool.Open(spool.Options{Dir: filepath.Join(cfg.DataDir, "presence-spool"), MaxBytes: presenceSpoolBytes, Logger: log})
	if err != nil {
		return fmt.Errorf("FIELDHUB_DATA_DIR: open presence spool: %w", err)
	}
	defer presSpool.Close()
	presClient := influx.NewClient(influx.Options{
		URL: cfg.InfluxURL, Org: cfg.InfluxOrg, Bucket: cfg.InfluxBucket, Token: cfg.InfluxToken,
		Gzip: cfg.InfluxGzip, FlushInterval: cfg.InfluxFlush, MaxBackoff: cfg.InfluxBackoff,
		DeadLetterPath: filepath.Join(cfg.DataDir, "deadletter-presence.lp"), Logger: log,
	})
	defer presClient.Close()
	presWriter, err := influx.NewWriter(presClient, presSpool, influx.WriterObservers{})
	if err != nil {
		return err
	}
	presRec := newPresenceRecorder(presSpool, log)
	m.registerPresence(presRec)

	var fanout bridge.Fanout = liveHub
	router := commands.LocalRouter()
	var cl *cluster.Cluster // nil with one instance; only branched on here, at construction
	if cfg.MQTTBroker != "" {
		if cl, err = newCluster(cfg, reg, liveHub, log); err != nil {
			return err
		}
		fanout, router = cl, commands.ClusterRouter(cl)
		// Tell the other instances to refresh, and mirror device
		// credentials into the broker.
		reg.Subscribe(devices.Subscriber{OnChange: cl.RegistryChanged})
		m.registerCluster(cl)
	}
	// The alert engine sits beside the live fan-out and the rejection log
	// (alerts.go); its live events go out through the same fan-out.
	alertSt, err := alertStore(ctx, store)
	if err != nil {
		return err
	}
	// The notifier drains the alert store's outbox to the configured
	// receivers; the engine queues for exactly those targets and wakes it.
	notifier, err := newNotifier(cfg, alertSt, log)
	if err != nil {
		return err
	}
	alertEng, err := alerts.New(alerts.Options{Store: alertSt, Devices: reg, Live: fanout, Logger: log,
		Targets: notifier.Targets(), OnQueued: notifier.Wake,
		// With several instances (a shared PostgreSQL) a device offline
		// here may be online on another: only a lone instance raises
		// offline alerts at start.
		StartupOffline: cl == nil && cfg.DatabaseURL == "",
	})
	if err != nil {
		return err
	}
	m.registerAlerts(alertEng, notifier, alertSt)
	// The ledger tells the alert engine when a device's open seq gaps
	// change (gaps rules); the writer tells the ledger what InfluxDB took.
	led, err := newLedger(ctx, cfg, store, reg, alertEng.GapsChanged, log)
	if err != nil {
		return err
	}
	wobs := m.writerObservers()
	wobs.OnWritten, wobs.OnDeadLettered = led.Written, led.DeadLettered
	writer, err := influx.NewWriter(ic, sp, wobs)
	if err != nil {
		return err
	}
	reg.Subscribe(devices.Subscriber{OnCredentialsChanged: func(id string) {
		if !reg.Exists(id) {
			alertEng.DeviceDeleted(id)
		}
	}, OnChange: func(c devices.Changed) {
		// Labels changed (PATCH): alerts of rules that no longer select
		// the device resolve.
		for _, id := range c.Updated {
			alertEng.DeviceChanged(id)
		}
	}})
	cmds, err := commands.New(ctx, commands.Options{Store: cmdStore, Devices: reg, Router: router, Fanout: fanout, Logger: log})
	if err != nil {
		return err
	}
	// Device state (issue #24). With PostgreSQL, other instances may
	// change a desired document: the service asks the store about the
	// devices connected here every second (docs/architecture.md, "Device
	// state").
	var statePoll time.Duration
	if cfg.DatabaseURL != "" {
		statePoll = time.Second
	}
	var onDesired func(string, state.Update) // one instance: nothing beyond the hub's own sessions
	clearDesired := func(string) {}
	if cl != nil {
		// The broker keeps each device's desired document retained, for
		// MQTT devices on it; a deleted device's is cleared (an empty
		// retained message), so a device re-created under its id never
		// gets it.
		onDesired = func(device string, u state.Update) { cl.PublishDesired(device, u.Encode(false)) }
		clearDesired = func(device string) { cl.PublishDesired(device, []byte{}) }
	}
	states, err := state.New(state.Options{Store: stateStore, Devices: reg, Fanout: fanout, PollInterval: statePoll, OnDesired: onDesired, Logger: log,
		Limits: state.Limits{MaxBytes: cfg.StateMaxBytes, MaxDepth: cfg.StateMaxDepth, MaxKeys: cfg.StateMaxKeys}})
	if err != nil {
		return err
	}
	// A device's tokens changed: its state long polls re-check theirs.
	reg.Subscribe(devices.Subscriber{OnCredentialsChanged: states.CredentialsChanged})
	codec := telemetry.NewCodec(telemetry.Limits{MaxFuture: cfg.MaxFuture, MaxAge: cfg.MaxAge, TagKeys: cfg.TagLabels}, nil)
	br, err := bridge.New(bridge.Options{
		Codec: codec, Store: sp, Devices: reg, Fanout: newAlertTee(newPresenceTee(fanout, presRec), alertEng), Commands: cmds,
		Rejections: rejectionsTee{ledgerRejections{reg, led}, alertEng}, Ledger: led, State: states,
		RatePerSec: cfg.RateLimit, Burst: cfg.RateBurst, Logger: log,
		Schema: store, KnownFields: knownFields(ctx, ic, log),
		MaxMetricsPerDevice: cfg.MaxMetricsPerDevice, MaxMetricNames: cfg.MaxMetricNames,
	})
	if err != nil {
		return err
	}
	// A device's tokens changed or it is gone: its sessions re-check their
	// credentials, and a deleted device's live state and state documents
	// are dropped.
	reg.Subscribe(devices.Subscriber{OnCredentialsChanged: func(id string) {
		br.CredentialsChanged(id)
		if !reg.Exists(id) {
			liveHub.Forget(id)
			led.Forget(id)
			// Its state documents too: a device created later under the
			// same id starts empty.
			if err := states.Forget(context.Background(), id); err != nil {
				log.Warn("device state not deleted with its device", "device", id, "err", err)
			}
			clearDesired(id)
		}
	}})
	// One failure limiter and one connect limiter for every way in, so no
	// door is unguarded and a client's budget is the same on all of them.
	failures := devices.NewFailureLimiter(10, 20)
	connects := devices.NewConnectLimiter(cfg.MQTTConnectRate, int(cfg.MQTTConnectRate*2.5))
	deviceWS, err := ws.New(ws.Options{
		Bridge: br, Commands: cmds, Auth: reg, Failures: failures, Connects: connects, Proxies: cfg.TrustedProxies, ReadLimit: cfg.MaxMessageBytes,
		PingInterval: cfg.WSPingInterval, Logger: log, OnAuthFailure: m.authFailure,
		SendQueueBytes: cfg.WSSendQueue, State: states, Tokens: reg,
	})
	if err != nil {
		return err
	}
	var totals dashboard.Totals = br // one instance
	if cl != nil {
		totals = clusterTotals{br, cl}
	}
	rates := dashboard.NewRates(totals)
	api, err := dashboard.New(dashboard.Options{
		Registry: reg, History: ic, Export: ic, Catalogue: ic, Presence: ic, Schema: store, Failures: failures, Proxies: cfg.TrustedProxies, Logger: log,
		Live: liveHub, AllowedOrigins: cfg.AllowedOrigins, FromTrustedProxy: cfg.TrustedProxies.Trusted, Commands: cmds, Rates: rates, State: states,
		OnAuthFailure: func() { m.authFailure("api") },
	})
	if err != nil {
		return err
	}
	var broker *mqtt.Broker
	if mqttLn != nil {
		broker, err = mqtt.New(mqtt.Options{
			Bridge: br, Commands: cmds, State: states, Auth: reg, Failures: failures, Connects: connects, Proxies: cfg.TrustedProxies,
			Listener: mqttLn, TLSListener: mqttTLSLn,
			MaxPacketBytes: int(cfg.MaxMessageBytes), MaxConns: cfg.MQTTMaxConns, Logger: log,
			AllowedOrigins: cfg.AllowedOrigins,
			OnAuthFailure:  m.authFailure, OnACLDenied: m.aclDenied.Inc,
		})
		if err != nil {
			return err
		}
		// Its debug watchers are not bridge sessions: they re-check too.
		reg.Subscribe(devices.Subscriber{OnCredentialsChanged: broker.CredentialsChanged})
	}
	m.register(br, cmds, sp, writer, reg, liveHub)
	m.registerLedger(led)

	// The route table: every endpoint of docs/protocol.md this process
	// serves, in one place. The dashboard registers its own REST API and UI
	// first (api.Register); an entry with a nil handler is switched off by
	// configuration.
	mqttCheck := disabledMQTTCheck()
	switch {
	case broker != nil:
		mqttCheck = brokerCheck(broker)
	case cl != nil:
		mqttCheck = clusterCheck(cl)
	}
	ready := health{registryCheck(reg), spoolCheck(sp, cfg.MaxMessageBytes), influxCheck(writer, sp), mqttCheck}
	var mqttAuth, mqttACL, mqttWS http.Handler
	if cfg.MQTTAuthSecret != "" {
		ah := &mqtt.AuthHook{Auth: reg, Exists: reg.Exists, Secret: cfg.MQTTAuthSecret, Failures: failures,
			OnAuthFailure: m.authFailure, OnACLDenied: m.aclDenied.Inc}
		mqttAuth, mqttACL = http.HandlerFunc(ah.ServeAuth), http.HandlerFunc(ah.ServeACL)
	}
	if broker != nil && cfg.MQTTWSPath != "" {
		mqttWS = http.HandlerFunc(broker.ServeWebSocket)
	}
	// Closed as the HTTP server's Shutdown begins (RegisterOnShutdown
	// below): the long polls waiting then answer 204 at once.
	pollsEnd, endPolls := context.WithCancel(context.Background())
	defer endPolls()
	routes := []route{
		{"GET /ws/device", deviceWS},
		{"POST /api/v1/telemetry", http.HandlerFunc(deviceWS.ServeTelemetry)},
		{"GET /api/v1/commands/next", deviceWS.NextCommandUntil(pollsEnd.Done())},
		{"POST /api/v1/commands/{id}/result", http.HandlerFunc(deviceWS.ServeCommandResult)},
		{"GET /api/v1/state", http.HandlerFunc(deviceWS.ServeState)},
		{"PATCH /api/v1/state/reported", http.HandlerFunc(deviceWS.ServeReportState)},
		{"GET /api/v1/state/desired", deviceWS.DesiredUntil(pollsEnd.Done())},
		{"POST /api/v1/mqtt/auth", mqttAuth},
		{"POST /api/v1/mqtt/acl", mqttACL},
		{"GET " + cfg.MQTTWSPath, mqttWS},
		{"GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = io.WriteString(w, "ok\n")
		})},
		{"GET /readyz", ready},
		{"GET /metrics", m.handler()},
	}
	if cfg.Pprof {
		admin := func(h http.HandlerFunc) http.Handler { return api.RequireRole(devices.RoleAdmin, h) }
		for _, p := range []struct {
			pattern string
			h       http.HandlerFunc
		}{{"GET /debug/pprof/", pprof.Index}, {"GET /debug/pprof/cmdline", pprof.Cmdline}, {"GET /debug/pprof/profile", pprof.Profile},
			{"GET /debug/pprof/symbol", pprof.Symbol}, {"GET /debug/pprof/trace", pprof.Trace}} {
			routes = append(routes, route{p.pattern, admin(p.h)})
		}
	}
	mux := http.NewServeMux()
	api.Register(mux)
	for _, r := range alertEng.Routes() {
		mux.Handle(r.Pattern, api.RequireRole(r.Role, r.Handler))
	}
	mux.Handle("GET /api/v1/devices/{id}/ledger", api.RequireRole(devices.RoleViewer, led.ServeDevice))
	mux.Handle("GET /api/v1/ledger", api.RequireRole(devices.RoleViewer, led.ServeFleet))
	for _, r := range routes {
		if r.handler != nil {
			mux.Handle(r.pattern, r.handler)
		}
	}

	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
		TLSConfig:         tlsCfg,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}

	// srv.Shutdown waits for every running request, and two kinds never
	// end by themselves: a device's command long poll (up to 60 s) and an
	// operator's SSE stream. As Shutdown begins (after it closed the
	// listeners), both are ended, so they cannot hold the "http server"
	// stop, and with it the shutdown deadline, from the components after
	// it: the polls answer 204 ("no command"), the SSE streams end
	// (EventSource reconnects). In-flight telemetry and other requests
	// are not cut: they finish within the deadline as before. The
	// /ws/live and device sockets, hijacked, close at their own turn.
	srv.RegisterOnShutdown(endPolls)
	srv.RegisterOnShutdown(api.EndSSE)

	httpServe := srv.Serve // TLS or not is decided here, once
	if tlsCfg != nil {
		httpServe = func(ln net.Listener) error { return srv.ServeTLS(ln, "", "") }
	}

	// The hub's components in start order; shutdown runs the list
	// backwards, one component at a time, which is the order of
	// docs/architecture.md ("Lifecycle and shutdown"): stop accepting
	// (HTTP) -> close device sockets -> stop the broker or the cluster ->
	// close dashboard sockets -> alert engine -> alert notifier -> live hub -> rates -> commands -> registry
	// (flushes last_seen) -> drain the spool to InfluxDB -> stop the writer
	// -> save the ledger.
	// Stores close after it (the defers above). TestShutdownOrder checks it.
	comps := []component{
		// The ledger saves once more after the writer stopped, so the
		// last written counts are in.
		{Name: "ledger", Run: led.Run},
		{Name: "influx writer", Run: writer.Run},
		// Drain what is spooled while the shutdown deadline allows, with
		// the writer still running; what is left is replayed at the next
		// start.
		// It reserves half the shutdown timeout: the components stopped
		// before it must be done by then, so one that overruns cannot
		// leave the drain an expired deadline.
		{Name: "spool drain", Stop: func(ctx context.Context) { drainSpool(ctx, sp) }, Reserve: cfg.ShutdownTimeout / 2},
		// Presence changes: the recorder stops after everything that
		// publishes them (the shutdown's own offline changes are appended),
		// then its writer; what it did not write is replayed at the next
		// start.
		{Name: "presence writer", Run: presWriter.Run},
		{Name: "presence recorder", Run: presRec.Run},
		// last_seen flushes on an interval and once more when Run ends.
		{Name: "registry", Run: reg.Run},
		{Name: "commands", Run: cmds.Run},
		{Name: "state", Run: states.Run},
		{Name: "rates", Run: rates.Run},
		// The live hub outlives the dashboards' sockets: it stops after
		// api.Shutdown has closed them.
		{Name: "live hub", Run: liveHub.Run},
		// The alert engine publishes to the live hub: it stops first.
		// Notifications outlive the engine that queues them, so the
		// transitions of the shutdown itself still leave (what does not
		// is sent at the next start: the outbox is durable).
		{Name: "alert notifier", Run: notifier.Run},
		{Name: "alerts", Run: alertEng.Run},
		{Name: "dashboard sockets", Stop: func(context.Context) { api.Shutdown() }},
	}
	if cl != nil {
		// Stopping takes no more broker messages; what is not durable yet
		// stays unacknowledged at the broker, for this instance's next start.
		comps = append(comps, component{Name: "cluster", Run: func(ctx context.Context) error {
			return cl.Run(ctx, cluster.Peers{Bridge: br, Commands: cmds})
		}})
	}
	if broker != nil {
		comps = append(comps, component{Name: "mqtt broker", Run: broker.Run})
	}
	comps = append(comps,
		// Close device sockets with a proper close code; net/http does not
		// close hijacked connections.
		component{Name: "device sockets", Stop: func(context.Context) {
			deviceWS.Close()
			br.CloseAll(bridge.ReasonServerShutdown)
			deviceWS.Wait()
		}},
		component{Name: "http server",
			Run: func(context.Context) error {
				if err := httpServe(httpLn); !errors.Is(err, http.ErrServerClosed) {
					return err
				}
				return nil
			},
			Stop: func(ctx context.Context) {
				if err := srv.Shutdown(ctx); err != nil {
					log.Warn("http shutdown", "err", err)
				}
			}},
	)
	url := "http://"
	if tlsCfg != nil {
		url = "https://"
	}
	mqttAddr := "disabled"
	switch {
	case broker != nil:
		mqttAddr = broker.Addr().String()
	case cl != nil:
		mqttAddr = "external broker, instance " + cfg.InstanceID
	}
	onReady := func() {
		log.Info("fieldhub ready", "config", cfg, "http", httpLn.Addr().String(), "mqtt", mqttAddr, "startup", time.Since(started).Round(time.Millisecond))
		fmt.Fprintf(stdout, "Fieldhub is serving on %s%s (dashboard at /, API at /api/v1)\n", url, displayAddr(httpLn.Addr()))
	}
	lc := &lifecycle{log: log, shutdownTimeout: cfg.ShutdownTimeout,
		onShutdown: func() { log.Info("shutting down", "timeout", cfg.ShutdownTimeout) }}
	if err := lc.run(ctx, comps, onReady); err != nil {
		return err
	}
	if p := sp.Stats().PendingPoints; p > 0 {
		log.Info("stopped with readings still spooled; they are written at the next start", "points", p)
	}
	log.Info("fieldhub stopped")
	return nil
}

// presenceSpoolBytes bounds the presence spool: about a million changes
// waiting for InfluxDB.
const presenceSpoolBytes = 128 << 20

// route is one entry of serve's route table; a nil handler is an
// endpoint switched off by configuration.
type route struct {
	pattern string
	handler http.Handler
}

// registryStore is what the hub keeps in its registry database: devices,
// operator tokens and the metric schema. The command queue lives in the
// same database, through its own commands.Store.
type registryStore interface {
	devices.Store
	bridge.SchemaStore
	dashboard.MetricSchema
}

// knownFields asks InfluxDB which type each metric already has, so the
// bridge refuses a conflicting reading before the ack even for fields
// written before the hub kept a schema, or by another writer. InfluxDB
// being down must not stop the hub: then the store's schema is all it
// knows, and anything InfluxDB still refuses goes to the dead-letter file.
func knownFields(ctx context.Context, ic *influx.Client, log *slog.Logger) map[string]string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	types, err := ic.FieldTypes(ctx)
	if err != nil {
		log.Warn("could not learn metric types from influxdb; using the stored schema", "err", err)
		return nil
	}
	known := make(map[string]string, len(types))
	for name, t := range types {
		switch t {
		case "float":
			known[name] = bridge.FieldNumber
		case "boolean":
			known[name] = bridge.FieldBool
		case "string":
			known[name] = bridge.FieldString
		case "integer", "unsigned":
			known[name] = bridge.FieldInteger
		}
	}
	log.Info("learned metric types from influxdb", "fields", len(known))
	return known
}

// openStore opens PostgreSQL when FIELDHUB_DATABASE_URL is set, otherwise
// the embedded bbolt file in the data directory.
// The command and state stores share the registry store's connection;
// closing the registry store closes all three.
func openStore(ctx context.Context, cfg config) (registryStore, commands.Store, state.Store, error) {
	if cfg.DatabaseURL != "" {
		st, err := pg.Open(ctx, cfg.DatabaseURL)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("FIELDHUB_DATABASE_URL: %w", err)
		}
		ss, err := statepg.New(ctx, st.Pool())
		if err != nil {
			st.Close()
			return nil, nil, nil, fmt.Errorf("FIELDHUB_DATABASE_URL: %w", err)
		}
		return st, pgstore.New(st.Pool()), ss, nil
	}
	st, err := devices.OpenBolt(filepath.Join(cfg.DataDir, "registry.db"))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("FIELDHUB_DATA_DIR: %w", err)
	}
	return st, boltstore.New(st.DB()), statebolt.New(st.DB()), nil
}

func drainSpool(ctx context.Context, sp *spool.Spool) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for sp.Stats().PendingPoints > 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func displayAddr(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// newCluster sets up external-broker mode: the instance id (generated
// once into the data dir unless set), the broker's TLS roots, and the
// cluster client.
func newCluster(cfg config, reg *devices.Registry, liveHub *live.Hub, log *slog.Logger) (*cluster.Cluster, error) {
	tlsCfg, err := brokerTLSConfig(cfg)
	if err != nil {
		return nil, err
	}
	return cluster.New(cluster.Options{
		BrokerURL: cfg.MQTTBroker, Username: cfg.MQTTBrokerUsername, Password: cfg.MQTTBrokerPassword, TLS: tlsCfg,
		ClientID: cfg.InstanceID, Registry: reg, Local: liveHub, Dynsec: cfg.MQTTBrokerDynsec, BrokerIdle: cfg.MQTTBrokerIdle,
		MaxMessageBytes: int(cfg.MaxMessageBytes), Logger: log,
	})
}

// brokerTLSConfig is the TLS configuration for the external broker: the
// CA to trust (default: the system's roots) and the client certificate
// for brokers that require one. Nil when neither is set.
func brokerTLSConfig(cfg config) (*tls.Config, error) {
	if cfg.MQTTBrokerCA == "" && cfg.MQTTBrokerCert == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.MQTTBrokerCA != "" {
		pem, err := os.ReadFile(cfg.MQTTBrokerCA)
		if err != nil {
			return nil, fmt.Errorf("FIELDHUB_MQTT_BROKER_CA: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("FIELDHUB_MQTT_BROKER_CA: no PEM certificate in %s", cfg.MQTTBrokerCA)
		}
	}
	if cfg.MQTTBrokerCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.MQTTBrokerCert, cfg.MQTTBrokerKey)
		if err != nil {
			return nil, fmt.Errorf("FIELDHUB_MQTT_BROKER_CERT/_KEY: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// instanceID returns the id kept in the data dir, creating it once: an
// instance's broker session must survive restarts, and two instances
// must never share one.
func instanceID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, "instance-id")
	if b, err := os.ReadFile(path); err == nil {
		if id := strings.TrimSpace(string(b)); validInstanceID(id) {
			return id, nil
		}
	}
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	id := "fieldhub-" + hex.EncodeToString(r[:])
	if err := os.WriteFile(path, []byte(id+"\n"), 0o640); err != nil {
		return "", fmt.Errorf("FIELDHUB_DATA_DIR: write %s: %w", path, err)
	}
	return id, nil
}

// clusterTotals is the overview's readings/s with several instances:
// this instance's, plus the readings the others accepted (their live
// events reach every instance). Rejections are this instance's own. With
// one instance the bridge is the Totals itself; serve picks one of the two
// at construction, so nothing is nil-checked later.
type clusterTotals struct {
	br *bridge.Bridge
	cl *cluster.Cluster
}

func (t clusterTotals) Totals() (readings, rejected int64) {
	readings, rejected = t.br.Totals()
	return readings + t.cl.Stats().RemoteReadings.Load(), rejected
}
