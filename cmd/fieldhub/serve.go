package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
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

	"golang.org/x/sync/errgroup"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/cluster"
	"github.com/fieldhub/fieldhub/bridge/mqtt"
	"github.com/fieldhub/fieldhub/bridge/ws"
	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/dashboard/live"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/pg"
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

	store, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer store.Close()
	var br *bridge.Bridge
	var reg *devices.Registry
	var cl *cluster.Cluster
	liveHub := live.New(live.Options{Logger: log, MaxPerCredential: cfg.LiveMaxPerToken})
	reg, err = devices.Open(ctx, store, devices.Options{
		Logger:    log,
		TagLabels: cfg.TagLabels,
		// An operator token revoked or a session ended closes the live
		// connections it opened, at once.
		OnOperatorEnded: liveHub.CloseCredential,
		SessionIdle:     cfg.SessionIdle, SessionMax: cfg.SessionMax,
		OnChange: func(c devices.Changed) {
			if cl != nil {
				cl.RegistryChanged(c)
			}
		},
		OnCredentialsChanged: func(id string) {
			if br != nil {
				br.CredentialsChanged(id)
			}
			if reg != nil && !reg.Exists(id) {
				liveHub.Forget(id)
			}
		},
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

	sp, err := spool.Open(spool.Options{Dir: filepath.Join(cfg.DataDir, "spool"), MaxBytes: cfg.SpoolMaxBytes, Logger: log})
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
	writer, err := influx.NewWriter(ic, sp)
	if err != nil {
		return err
	}

	m := newMetrics()
	var fanout bridge.Fanout = liveHub
	var remote bridge.RemoteCommands
	if cfg.MQTTBroker != "" {
		if cl, err = newCluster(cfg, reg, liveHub, log); err != nil {
			return err
		}
		fanout, remote = cl, cl
	}
	codec := telemetry.NewCodec(telemetry.Limits{MaxFuture: cfg.MaxFuture, MaxAge: cfg.MaxAge, TagKeys: cfg.TagLabels}, nil)
	br, err = bridge.New(bridge.Options{
		Codec: codec, Store: sp, Devices: reg, Fanout: fanout, Remote: remote, Commands: store,
		RatePerSec: cfg.RateLimit, Burst: cfg.RateBurst, Logger: log,
		Schema: store, KnownFields: knownFields(ctx, ic, log),
		MaxMetricsPerDevice: cfg.MaxMetricsPerDevice, MaxMetricNames: cfg.MaxMetricNames,
	})
	if err != nil {
		return err
	}
	// One failure limiter and one connect limiter for every way in, so no
	// door is unguarded and a client's budget is the same on all of them.
	failures := devices.NewFailureLimiter(10, 20)
	connects := devices.NewConnectLimiter(cfg.MQTTConnectRate, int(cfg.MQTTConnectRate*2.5))
	deviceWS, err := ws.New(ws.Options{
		Bridge: br, Auth: reg, Failures: failures, Connects: connects, Proxies: cfg.TrustedProxies, ReadLimit: cfg.MaxMessageBytes,
		PingInterval: cfg.WSPingInterval, Logger: log, OnAuthFailure: m.authFailure,
		SendQueueBytes: cfg.WSSendQueue,
	})
	if err != nil {
		return err
	}
	rates := dashboard.NewRates(fleetTotals{br, cl})
	api, err := dashboard.New(dashboard.Options{
		Registry: reg, History: ic, Failures: failures, Proxies: cfg.TrustedProxies, Logger: log,
		Live: liveHub, AllowedOrigins: cfg.AllowedOrigins, FromTrustedProxy: cfg.TrustedProxies.Trusted, Commands: br, Rates: rates,
		OnAuthFailure: func() { m.authFailure("api") },
	})
	if err != nil {
		return err
	}
	var broker *mqtt.Broker
	if mqttLn != nil {
		broker, err = mqtt.New(mqtt.Options{
			Bridge: br, Auth: reg, Failures: failures, Connects: connects, Proxies: cfg.TrustedProxies,
			Listener: mqttLn, TLSListener: mqttTLSLn,
			MaxPacketBytes: int(cfg.MaxMessageBytes), MaxConns: cfg.MQTTMaxConns, Logger: log,
			AllowedOrigins: cfg.AllowedOrigins,
			OnAuthFailure:  m.authFailure, OnACLDenied: m.aclDenied.Inc,
		})
		if err != nil {
			return err
		}
	}
	m.register(br, sp, writer, reg, liveHub, cl)

	mux := http.NewServeMux()
	api.Register(mux)
	mux.Handle("GET /ws/device", deviceWS)
	mux.HandleFunc("POST /api/v1/telemetry", deviceWS.ServeTelemetry)
	mux.HandleFunc("GET /api/v1/commands/next", deviceWS.ServeNextCommand)
	if cfg.MQTTAuthSecret != "" {
		ah := &mqtt.AuthHook{Auth: reg, Exists: reg.Exists, Secret: cfg.MQTTAuthSecret, Failures: failures,
			OnAuthFailure: m.authFailure, OnACLDenied: m.aclDenied.Inc}
		mux.HandleFunc("POST /api/v1/mqtt/auth", ah.ServeAuth)
		mux.HandleFunc("POST /api/v1/mqtt/acl", ah.ServeACL)
	}
	if broker != nil && cfg.MQTTWSPath != "" {
		mux.HandleFunc("GET "+cfg.MQTTWSPath, broker.ServeWebSocket)
	}
	mux.HandleFunc("POST /api/v1/commands/{id}/result", deviceWS.ServeCommandResult)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok\n")
	})
	rd := &readiness{reg: reg, sp: sp, writer: writer, influx: ic, mqtt: broker, cluster: cl, maxMessage: cfg.MaxMessageBytes}
	mux.Handle("GET /readyz", rd)
	mux.Handle("GET /metrics", m.handler())
	if cfg.Pprof {
		admin := func(h http.HandlerFunc) http.Handler { return api.RequireRole(devices.RoleAdmin, h) }
		mux.Handle("GET /debug/pprof/", admin(pprof.Index))
		mux.Handle("GET /debug/pprof/cmdline", admin(pprof.Cmdline))
		mux.Handle("GET /debug/pprof/profile", admin(pprof.Profile))
		mux.Handle("GET /debug/pprof/symbol", admin(pprof.Symbol))
		mux.Handle("GET /debug/pprof/trace", admin(pprof.Trace))
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

	g, gctx := errgroup.WithContext(ctx)
	writerCtx, stopWriter := context.WithCancel(context.Background())
	defer stopWriter()
	g.Go(func() error {
		if err := writer.Run(writerCtx); err != nil {
			return fmt.Errorf("influx writer: %w", err)
		}
		return nil
	})
	g.Go(func() error { return br.Run(gctx) })
	g.Go(func() error { return rates.Run(gctx) })
	// The live hub outlives the dashboards' sockets: it stops after
	// api.Shutdown has closed them.
	liveCtx, stopLiveHub := context.WithCancel(context.Background())
	defer stopLiveHub()
	g.Go(func() error { return liveHub.Run(liveCtx) })
	mqttCtx, stopMQTT := context.WithCancel(context.Background())
	defer stopMQTT()
	if broker != nil {
		g.Go(func() error { return broker.Run(mqttCtx) })
	}
	clusterCtx, stopCluster := context.WithCancel(context.Background())
	defer stopCluster()
	if cl != nil {
		g.Go(func() error { return cl.Run(clusterCtx, br) })
	}
	g.Go(func() error {
		var err error
		if tlsCfg != nil {
			err = srv.ServeTLS(httpLn, "", "")
		} else {
			err = srv.Serve(httpLn)
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("http server: %w", err)
	})
	g.Go(func() error {
		<-gctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
		// 1. Stop accepting connections and requests.
		if err := srv.Shutdown(shutdownCtx); err != nil {
			log.Warn("http shutdown", "err", err)
		}
		// 2. Close device sockets with a proper close code; net/http does
		// not close hijacked connections.
		deviceWS.Close()
		br.CloseAll(bridge.ReasonServerShutdown)
		deviceWS.Wait()
		stopMQTT()
		// Stop taking broker messages; what is not durable yet stays
		// unacknowledged at the broker, for this instance's next start.
		stopCluster()
		api.Shutdown()
		stopLiveHub()
		// 3. Drain what is spooled to InfluxDB while time remains; what is
		// left is replayed at the next start.
		drainSpool(shutdownCtx, sp)
		stopWriter()
		return nil
	})
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
	log.Info("fieldhub ready", "config", cfg, "http", httpLn.Addr().String(), "mqtt", mqttAddr, "startup", time.Since(started).Round(time.Millisecond))
	fmt.Fprintf(stdout, "Fieldhub is serving on %s%s (dashboard at /, API at /api/v1)\n", url, displayAddr(httpLn.Addr()))
	if err := g.Wait(); err != nil {
		return err
	}
	if p := sp.Stats().PendingPoints; p > 0 {
		log.Info("stopped with readings still spooled; they are written at the next start", "points", p)
	}
	log.Info("fieldhub stopped")
	return nil
}

// registryStore is what the hub keeps in its registry database: devices,
// operator tokens, the command queue and the metric schema.
type registryStore interface {
	devices.Store
	bridge.CommandStore
	bridge.SchemaStore
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
func openStore(ctx context.Context, cfg config) (registryStore, error) {
	if cfg.DatabaseURL != "" {
		st, err := pg.Open(ctx, cfg.DatabaseURL)
		if err != nil {
			return nil, fmt.Errorf("FIELDHUB_DATABASE_URL: %w", err)
		}
		return st, nil
	}
	st, err := devices.OpenBolt(filepath.Join(cfg.DataDir, "registry.db"))
	if err != nil {
		return nil, fmt.Errorf("FIELDHUB_DATA_DIR: %w", err)
	}
	return st, nil
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

// readiness is GET /readyz: the state of each dependency, 200 when the hub
// can accept readings and 503 when it cannot.
type readiness struct {
	reg     *devices.Registry
	sp      *spool.Spool
	writer  *influx.Writer
	influx  *influx.Client
	mqtt    *mqtt.Broker
	cluster *cluster.Cluster
	// maxMessage is the largest device message: less room than this is full.
	maxMessage int64
}

type check struct {
	Status string `json:"status"`
	Detail any    `json:"detail,omitempty"`
}

func (rd *readiness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	checks := map[string]check{}
	ready := true

	if err := rd.reg.Ping(ctx); err != nil {
		checks["registry"] = check{Status: "unavailable", Detail: err.Error()}
		ready = false
	} else {
		total, online := rd.reg.Counts()
		checks["registry"] = check{Status: "ok", Detail: map[string]int{"devices": total, "online": online}}
	}

	st := rd.sp.Stats()
	spoolDetail := map[string]any{"bytes": st.Bytes, "max_bytes": st.MaxBytes, "pending_points": st.PendingPoints}
	if !st.OldestPending.IsZero() {
		spoolDetail["oldest_pending_seconds"] = time.Since(st.OldestPending).Seconds()
	}
	// Full: a message of the maximum size may not fit, or an append was
	// refused for room in the last few seconds. Load balancers then send
	// devices elsewhere rather than to "overloaded" answers.
	if st.MaxBytes-st.Bytes < rd.maxMessage || time.Since(st.LastFull) < 5*time.Second {
		checks["spool"] = check{Status: "full", Detail: spoolDetail}
		ready = false
	} else {
		checks["spool"] = check{Status: "ok", Detail: spoolDetail}
	}

	ws := rd.writer.Stats()
	influxDetail := map[string]any{"backlog_points": st.PendingPoints}
	if !st.OldestPending.IsZero() {
		influxDetail["backlog_age_seconds"] = time.Since(st.OldestPending).Seconds()
	}
	pingErr := rd.influx.Ping(ctx)
	switch {
	case pingErr == nil && ws.Healthy:
		checks["influxdb"] = check{Status: "ok", Detail: influxDetail}
	default:
		// Ingest goes on into the spool: degraded, not unready.
		if pingErr != nil {
			influxDetail["error"] = pingErr.Error()
		} else {
			influxDetail["error"] = ws.LastError
		}
		checks["influxdb"] = check{Status: "spooling", Detail: influxDetail}
	}
	switch {
	case rd.cluster != nil:
		// Without the broker this instance still takes WebSocket and HTTP
		// readings into its spool: degraded, not unready (every instance
		// would go unready at once).
		status := "connected"
		if !rd.cluster.Connected() {
			status = "disconnected"
		}
		checks["mqtt"] = check{Status: status, Detail: map[string]string{"mode": "external broker"}}
	case rd.mqtt == nil:
		checks["mqtt"] = check{Status: "disabled"}
	default:
		checks["mqtt"] = check{Status: "listening", Detail: map[string]string{"addr": rd.mqtt.Addr().String()}}
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

// fleetTotals is the overview's readings/s: this instance's, plus, with
// several instances, the readings the others accepted (their live events
// reach every instance). Rejections are this instance's own.
type fleetTotals struct {
	br *bridge.Bridge
	cl *cluster.Cluster // nil: one instance
}

func (t fleetTotals) Totals() (readings, rejected int64) {
	readings, rejected = t.br.Totals()
	if t.cl != nil {
		readings += t.cl.Stats().RemoteReadings.Load()
	}
	return readings, rejected
}
