package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/devices"
)

// config is every setting of `fieldhub serve`. Each comes from a flag whose
// default is the FIELDHUB_* environment variable, so flags win.
type config struct {
	HTTPAddr        string
	MQTTAddr        string
	MQTTTLSAddr     string
	MQTTWSPath      string
	DataDir         string
	DatabaseURL     string
	InfluxURL       string
	InfluxOrg       string
	InfluxBucket    string
	InfluxToken     string
	InfluxGzip      bool
	InfluxBatch     int
	InfluxFlush     time.Duration
	InfluxBackoff   time.Duration
	AdminToken      string
	SessionIdle     time.Duration
	SessionMax      time.Duration
	AllowedOrigins  []string
	TLSCert         string
	TLSKey          string
	LogFormat       string
	LogLevel        slog.Level
	ShutdownTimeout time.Duration
	MaxMessageBytes int64
	SpoolMaxBytes   int64
	RateLimit       float64
	RateBurst       int
	WSPingInterval  time.Duration
	WSSendQueue     int64
	MaxFuture       time.Duration
	MaxAge          time.Duration
	TagLabels       []string

	MaxMetricsPerDevice int // distinct metric names of one device
	MaxMetricNames      int // distinct metric names of the fleet
	// StateMaxBytes, StateMaxDepth and StateMaxKeys bound one device
	// state document (devices/state.Limits).
	StateMaxBytes, StateMaxDepth, StateMaxKeys int
	// SpoolCommitInterval is spool.Options.CommitInterval.
	SpoolCommitInterval time.Duration

	MQTTMaxConns    int
	LiveMaxPerToken int
	MQTTConnectRate float64
	TrustedProxies  *devices.Proxies
	MQTTAuthSecret  string
	Pprof           bool
	// External-broker mode (several instances).
	MQTTBroker         string
	MQTTBrokerUsername string
	MQTTBrokerPassword string
	MQTTBrokerCA       string
	MQTTBrokerCert     string
	MQTTBrokerKey      string
	MQTTBrokerDynsec   bool
	MQTTBrokerIdle     time.Duration
	InstanceID         string
	LedgerSaveInterval time.Duration
	// Alert notifications (dashboard/alerts/notify). The URLs may carry
	// credentials: like the secret, they are never logged.
	AlertmanagerURL    string
	AlertWebhookURL    string
	AlertWebhookSecret string
}

// LogValue keeps secrets out of logs whatever logs the config.
func (c config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("http_addr", c.HTTPAddr), slog.String("mqtt_addr", c.MQTTAddr),
		slog.String("data_dir", c.DataDir), slog.String("influx_bucket", c.InfluxBucket),
		slog.Bool("influx_token_set", c.InfluxToken != ""), slog.Bool("database_url_set", c.DatabaseURL != ""), slog.Bool("admin_token_set", c.AdminToken != ""),
		slog.Bool("tls", c.TLSCert != ""), slog.Bool("external_broker", c.MQTTBroker != ""),
		slog.String("instance_id", c.InstanceID), slog.String("trusted_proxies", c.TrustedProxies.String()),
		slog.Bool("alertmanager_url_set", c.AlertmanagerURL != ""), slog.Bool("alert_webhook_url_set", c.AlertWebhookURL != ""),
		slog.Bool("alert_webhook_secret_set", c.AlertWebhookSecret != ""),
	)
}

// setting describes one flag/environment pair, for parsing and for the
// README's configuration table.
type setting struct {
	flag, env, def, usage string
	secret                bool
}

var settings = []setting{
	{"http-addr", "FIELDHUB_HTTP_ADDR", ":8080", "address for the REST API, dashboard and WebSockets", false},
	{"mqtt-addr", "FIELDHUB_MQTT_ADDR", ":1883", "address of the device MQTT gateway (off disables it)", false},
	{"mqtt-tls-addr", "FIELDHUB_MQTT_TLS_ADDR", "", "address of the MQTT TLS listener (default :8883 when a TLS cert is set)", false},
	{"mqtt-ws-path", "FIELDHUB_MQTT_WS_PATH", "/mqtt", "HTTP path of MQTT over WebSocket for browser-based devices (empty disables it)", false},
	{"data-dir", "FIELDHUB_DATA_DIR", "./data", "directory for the registry, spool, command queue and dead letters", false},
	{"database-url", "FIELDHUB_DATABASE_URL", "", "PostgreSQL URL for the registry, tokens and command queue shared by several instances (default: embedded store in the data dir)", true},
	{"influx-url", "FIELDHUB_INFLUX_URL", "http://127.0.0.1:8086", "InfluxDB base URL", false},
	{"influx-org", "FIELDHUB_INFLUX_ORG", "", "InfluxDB organisation (ignored by InfluxDB 1.8)", false},
	{"influx-bucket", "FIELDHUB_INFLUX_BUCKET", "telemetry", "InfluxDB bucket (1.8: database or database/retention-policy)", false},
	{"influx-token", "FIELDHUB_INFLUX_TOKEN", "", "InfluxDB token (1.8: user:password or empty)", true},
	{"influx-gzip", "FIELDHUB_INFLUX_GZIP", "false", "gzip write bodies to InfluxDB", false},
	{"influx-batch", "FIELDHUB_INFLUX_BATCH", "5000", "maximum points per InfluxDB write", false},
	{"influx-flush", "FIELDHUB_INFLUX_FLUSH", "100ms", "longest wait to fill an InfluxDB write batch", false},
	{"influx-max-backoff", "FIELDHUB_INFLUX_MAX_BACKOFF", "10s", "longest wait between retries while InfluxDB is down", false},
	{"admin-token", "FIELDHUB_ADMIN_TOKEN", "", "bootstrap admin API token (generated and printed once if unset and no admin exists)", true},
	{"session-idle", "FIELDHUB_SESSION_IDLE", "12h", "a dashboard sign-in unused for this long ends (its live sockets close)", false},
	{"session-max", "FIELDHUB_SESSION_MAX", "168h", "a dashboard sign-in ends this long after it began, however used", false},
	{"allowed-origins", "FIELDHUB_ALLOWED_ORIGINS", "", "comma-separated extra origins allowed on operator sockets (e.g. https://ops.example.com)", false},
	{"tls-cert", "FIELDHUB_TLS_CERT", "", "TLS certificate file (PEM); with --tls-key serves HTTPS/WSS and MQTT over TLS", false},
	{"tls-key", "FIELDHUB_TLS_KEY", "", "TLS private key file (PEM)", false},
	{"log-format", "FIELDHUB_LOG_FORMAT", "text", "log format: text or json", false},
	{"log-level", "FIELDHUB_LOG_LEVEL", "info", "log level: debug, info, warn or error", false},
	{"shutdown-timeout", "FIELDHUB_SHUTDOWN_TIMEOUT", "10s", "how long a graceful shutdown may take", false},
	{"max-message-bytes", "FIELDHUB_MAX_MESSAGE_BYTES", "262144", "largest device message (WebSocket frame, MQTT packet, HTTP body)", false},
	{"spool-max-bytes", "FIELDHUB_SPOOL_MAX_BYTES", "1073741824", "disk bound of the durable spool; when full, devices get 'overloaded'", false},
	{"spool-commit-interval", "FIELDHUB_SPOOL_COMMIT_INTERVAL", "2ms", "how long the spool holds a commit open for more readings before one fsync covers them all: each acknowledgement waits up to this much longer, readings arriving less than an fsync apart share one fsync (0: sync at once)", false},
	{"rate-limit", "FIELDHUB_RATE_LIMIT", "50", "messages per second per device", false},
	{"rate-burst", "FIELDHUB_RATE_BURST", "100", "burst of messages per device", false},
	{"ws-ping-interval", "FIELDHUB_WS_PING_INTERVAL", "30s", "WebSocket ping interval; no pong within two intervals disconnects", false},
	{"ws-send-queue-bytes", "FIELDHUB_WS_SEND_QUEUE_BYTES", "262144", "bytes of answers and commands waiting for one WebSocket device; a device that lets more pile up is disconnected (slow_consumer)", false},
	{"max-future", "FIELDHUB_MAX_FUTURE", "5m", "how far ahead of the hub's clock a reading's ts may be", false},
	{"max-age", "FIELDHUB_MAX_AGE", "168h", "how far behind the hub's clock a reading's ts may be", false},
	{"tag-labels", "FIELDHUB_TAG_LABELS", "", "comma-separated device labels written to InfluxDB as tags", false},
	{"max-metrics-per-device", "FIELDHUB_MAX_METRICS_PER_DEVICE", "256", "distinct metric names one device may send; past it readings with a new name are refused 'invalid'", false},
	{"max-metric-names", "FIELDHUB_MAX_METRIC_NAMES", "10000", "distinct metric names of the whole fleet; past it readings with a new name are refused 'invalid'", false},
	{"state-max-bytes", "FIELDHUB_STATE_MAX_BYTES", "8192", "bytes of one device state document (reported or desired); a patch that would pass it is refused 'invalid'", false},
	{"state-max-depth", "FIELDHUB_STATE_MAX_DEPTH", "5", "nesting of objects and arrays in a device state document, the document being 1", false},
	{"state-max-keys", "FIELDHUB_STATE_MAX_KEYS", "100", "keys of one object in a device state document", false},
	{"mqtt-max-conns", "FIELDHUB_MQTT_MAX_CONNS", "60000", "maximum MQTT connections", false},
	{"live-max-per-token", "FIELDHUB_LIVE_MAX_PER_TOKEN", "20", "live dashboard connections (/ws/live and SSE) per operator token; past it 429 (the hub's cap is 1000)", false},
	{"mqtt-connect-rate", "FIELDHUB_MQTT_CONNECT_RATE", "20", "new device connections per second per client address (burst 2.5x), on every way in that opens a connection: MQTT, MQTT TLS, MQTT over WebSocket and the device WebSocket (device HTTP requests are bounded by the device rate); raise it for fleets behind one NAT", false},
	{"trusted-proxies", "FIELDHUB_TRUSTED_PROXIES", "", "comma-separated CIDRs of reverse proxies whose X-Forwarded-For / X-Real-IP give the client address (default none: the socket peer is the client)", false},
	{"mqtt-auth-secret", "FIELDHUB_MQTT_AUTH_SECRET", "", "shared secret of an external broker's HTTP auth hook; enables POST /api/v1/mqtt/auth and /acl", true},
	{"pprof", "FIELDHUB_PPROF", "false", "serve /debug/pprof (admin token required)", false},
	{"mqtt-broker", "FIELDHUB_MQTT_BROKER", "", "external MQTT broker URL (tcp://host:1883, ssl://host:8883, ws://, wss://): switches the device MQTT gateway off and runs this hub as one of several instances on that broker", true},
	{"mqtt-broker-username", "FIELDHUB_MQTT_BROKER_USERNAME", "", "the hub's username at the external broker", false},
	{"mqtt-broker-password", "FIELDHUB_MQTT_BROKER_PASSWORD", "", "the hub's password at the external broker", true},
	{"mqtt-broker-ca", "FIELDHUB_MQTT_BROKER_CA", "", "CA certificate file (PEM) for the external broker's TLS certificate (default: system roots)", false},
	{"mqtt-broker-cert", "FIELDHUB_MQTT_BROKER_CERT", "", "client certificate file (PEM) for brokers that require one (mutual TLS); with FIELDHUB_MQTT_BROKER_KEY", false},
	{"mqtt-broker-key", "FIELDHUB_MQTT_BROKER_KEY", "", "private key file (PEM) of FIELDHUB_MQTT_BROKER_CERT", false},
	{"mqtt-broker-dynsec", "FIELDHUB_MQTT_BROKER_DYNSEC", "false", "keep Mosquitto's dynamic-security plugin in sync with the registry (a client and a role per device)", false},
	{"mqtt-broker-idle", "FIELDHUB_MQTT_BROKER_IDLE", "2m", "an MQTT device on the external broker shows online while heard from within this time (the broker does not say who is connected)", false},
	{"ledger-save-interval", "FIELDHUB_LEDGER_SAVE_INTERVAL", "10s", "how often the per-device ledger is saved; with several instances on PostgreSQL also how often their seq numbers are merged (a gap shows within about two intervals)", false},
	{"instance-id", "FIELDHUB_INSTANCE_ID", "", "this instance's name at the external broker, stable across restarts and unique per instance (default: generated once and kept in the data dir)", false},
	{"alertmanager-url", "FIELDHUB_ALERTMANAGER_URL", "", "Prometheus Alertmanager base URL (http or https, e.g. http://alertmanager:9093): firing and resolved alerts are posted to its /api/v2/alerts", true},
	{"alert-webhook-url", "FIELDHUB_ALERT_WEBHOOK_URL", "", "http(s) URL that gets every firing and resolved alert as a signed JSON POST; needs FIELDHUB_ALERT_WEBHOOK_SECRET", true},
	{"alert-webhook-secret", "FIELDHUB_ALERT_WEBHOOK_SECRET", "", "HMAC-SHA256 key of the alert webhook's X-Fieldhub-Signature", true},
}

// errHelp is returned after --help printed the usage.
var errHelp = errors.New("help requested")

// parseConfig reads flags over environment defaults and validates them,
// naming the setting in every error.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (config, error) {
	fs := flag.NewFlagSet("fieldhub serve", flag.ContinueOnError)
	fs.SetOutput(out)
	vals := make(map[string]*string, len(settings))
	for _, s := range settings {
		def := s.def
		if v := getenv(s.env); v != "" {
			def = v
		}
		shown := def
		if s.secret && shown != "" {
			shown = "<set>"
		}
		v := new(string)
		*v = def
		fs.Func(s.flag, fmt.Sprintf("%s (env %s, default %q)", s.usage, s.env, shown), func(x string) error { *v = x; return nil })
		vals[s.flag] = v
	}
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: fieldhub serve [flags]\n\nRuns the hub. Every flag defaults to its FIELDHUB_* environment variable.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return config{}, errHelp
		}
		return config{}, &exitError{exitUsage, fmt.Errorf("serve: %w", err)}
	}
	if fs.NArg() > 0 {
		return config{}, usageErr("serve: unexpected argument %q", fs.Arg(0))
	}
	p := &parser{vals: vals}
	c := config{
		HTTPAddr:        p.addr("http-addr", false),
		MQTTAddr:        p.addr("mqtt-addr", true),
		MQTTTLSAddr:     p.addr("mqtt-tls-addr", true),
		MQTTWSPath:      p.str("mqtt-ws-path"),
		DataDir:         p.nonEmpty("data-dir"),
		DatabaseURL:     p.str("database-url"),
		InfluxURL:       p.url("influx-url"),
		InfluxOrg:       p.str("influx-org"),
		InfluxBucket:    p.nonEmpty("influx-bucket"),
		InfluxToken:     p.str("influx-token"),
		InfluxGzip:      p.boolean("influx-gzip"),
		InfluxBatch:     p.intRange("influx-batch", 1, 100000),
		InfluxFlush:     p.duration("influx-flush"),
		InfluxBackoff:   p.duration("influx-max-backoff"),
		AdminToken:      p.str("admin-token"),
		SessionIdle:     p.duration("session-idle"),
		SessionMax:      p.duration("session-max"),
		AllowedOrigins:  p.list("allowed-origins"),
		TLSCert:         p.str("tls-cert"),
		TLSKey:          p.str("tls-key"),
		LogFormat:       p.oneOf("log-format", "text", "json"),
		LogLevel:        p.level("log-level"),
		ShutdownTimeout: p.duration("shutdown-timeout"),
		MaxMessageBytes: int64(p.intRange("max-message-bytes", 1024, 16<<20)),
		SpoolMaxBytes:   int64(p.intRange("spool-max-bytes", 1<<20, 1<<50)),
		RateLimit:       p.float("rate-limit"),
		RateBurst:       p.intRange("rate-burst", 1, 1<<20),
		WSPingInterval:  p.duration("ws-ping-interval"),
		WSSendQueue:     int64(p.intRange("ws-send-queue-bytes", 4096, 1<<30)),
		MaxFuture:       p.duration("max-future"),
		MaxAge:          p.duration("max-age"),
		TagLabels:       p.list("tag-labels"),

		MaxMetricsPerDevice: p.intRange("max-metrics-per-device", 1, 1<<16),
		MaxMetricNames:      p.intRange("max-metric-names", 1, 1<<22),
		StateMaxBytes:       p.intRange("state-max-bytes", 256, 1<<20),
		StateMaxDepth:       p.intRange("state-max-depth", 1, 32),
		StateMaxKeys:        p.intRange("state-max-keys", 1, 10000),
		// At most 100 ms: every acknowledgement pays it, and the bridge
		// gives up on the spool after 5 s.
		SpoolCommitInterval: p.durationRange("spool-commit-interval", 0, 100*time.Millisecond),
		LedgerSaveInterval:  p.durationRange("ledger-save-interval", time.Second, 5*time.Minute),

		MQTTMaxConns:    p.intRange("mqtt-max-conns", 1, 1<<22),
		LiveMaxPerToken: p.intRange("live-max-per-token", 1, 1000),
		MQTTConnectRate: p.float("mqtt-connect-rate"),
		TrustedProxies:  p.proxies("trusted-proxies"),
		MQTTAuthSecret:  p.str("mqtt-auth-secret"),
		Pprof:           p.boolean("pprof"),

		MQTTBroker:         p.brokerURL("mqtt-broker"),
		MQTTBrokerUsername: p.str("mqtt-broker-username"),
		MQTTBrokerPassword: p.str("mqtt-broker-password"),
		MQTTBrokerCA:       p.str("mqtt-broker-ca"),
		MQTTBrokerCert:     p.str("mqtt-broker-cert"),
		MQTTBrokerKey:      p.str("mqtt-broker-key"),
		MQTTBrokerDynsec:   p.boolean("mqtt-broker-dynsec"),
		MQTTBrokerIdle:     p.duration("mqtt-broker-idle"),
		InstanceID:         p.str("instance-id"),

		AlertmanagerURL:    p.optURL("alertmanager-url"),
		AlertWebhookURL:    p.optURL("alert-webhook-url"),
		AlertWebhookSecret: p.str("alert-webhook-secret"),
	}
	if c.AlertWebhookURL != "" && c.AlertWebhookSecret == "" {
		p.fail("alert-webhook-url", "needs FIELDHUB_ALERT_WEBHOOK_SECRET (--alert-webhook-secret): receivers verify the signature with it")
	}
	if c.AlertWebhookSecret != "" && c.AlertWebhookURL == "" {
		p.fail("alert-webhook-secret", "is set but FIELDHUB_ALERT_WEBHOOK_URL (--alert-webhook-url) is not")
	}
	if c.InstanceID != "" && !validInstanceID(c.InstanceID) {
		p.fail("instance-id", "must be 1 to 64 letters, digits, '-', '_' or '.'")
	}
	if c.MQTTBrokerDynsec && c.MQTTBroker == "" {
		p.fail("mqtt-broker-dynsec", "needs FIELDHUB_MQTT_BROKER")
	}
	if (c.MQTTBrokerCert == "") != (c.MQTTBrokerKey == "") {
		p.fail("mqtt-broker-cert", "FIELDHUB_MQTT_BROKER_CERT and FIELDHUB_MQTT_BROKER_KEY must be set together")
	}
	for _, name := range []string{"mqtt-broker-ca", "mqtt-broker-cert"} {
		// A certificate setting on a plain connection would be ignored
		// without a word, and the operator would believe the link secure.
		if p.str(name) != "" && !brokerTLS(c.MQTTBroker) {
			p.fail(name, "needs a TLS broker URL (ssl://, tls://, mqtts:// or wss://)")
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		p.fail("tls-cert", "FIELDHUB_TLS_CERT and FIELDHUB_TLS_KEY must be set together")
	}
	if c.TLSCert != "" && c.MQTTTLSAddr == "" && c.MQTTAddr != "" {
		c.MQTTTLSAddr = ":8883"
	}
	if c.MQTTWSPath != "" && !strings.HasPrefix(c.MQTTWSPath, "/") {
		p.fail("mqtt-ws-path", "must start with /")
	}
	if p.err != nil {
		return config{}, p.err
	}
	return c, nil
}

// parser converts setting strings, keeping the first error, which names
// both the environment variable and the flag.
type parser struct {
	vals map[string]*string
	err  error
}

func envOf(flagName string) string {
	for _, s := range settings {
		if s.flag == flagName {
			return s.env
		}
	}
	return ""
}

func (p *parser) fail(name, msg string) {
	if p.err == nil {
		p.err = fmt.Errorf("invalid setting %s (--%s): %s", envOf(name), name, msg)
	}
}

func (p *parser) str(name string) string { return strings.TrimSpace(*p.vals[name]) }

func (p *parser) nonEmpty(name string) string {
	v := p.str(name)
	if v == "" {
		p.fail(name, "must not be empty")
	}
	return v
}

func (p *parser) addr(name string, emptyOK bool) string {
	v := p.str(name)
	if emptyOK && v == "off" {
		return ""
	}
	if v == "" {
		if !emptyOK {
			p.fail(name, "must not be empty")
		}
		return v
	}
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		p.fail(name, fmt.Sprintf("%q is not host:port (e.g. :8080 or 127.0.0.1:8080)", v))
		return v
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.fail(name, fmt.Sprintf("%q has an invalid port", v))
	}
	return v
}

func (p *parser) url(name string) string {
	v := p.str(name)
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		p.fail(name, fmt.Sprintf("%q is not an http(s) URL", v))
	}
	return v
}

// optURL is an optional http(s) URL. The error never repeats the value:
// it may carry credentials.
func (p *parser) optURL(name string) string {
	v := p.str(name)
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		p.fail(name, "is not an http(s) URL such as https://host:9093")
	}
	return v
}

// brokerURL accepts the schemes paho dials; empty is the device gateway.
func (p *parser) brokerURL(name string) string {
	v := p.str(name)
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil || u.Host == "" {
		p.fail(name, "is not a URL such as tcp://broker:1883")
		return v
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
	default:
		p.fail(name, "scheme must be tcp, mqtt, ssl, tls, mqtts, ws or wss")
	}
	return v
}

// brokerTLS reports whether a broker URL (already checked) uses TLS.
func brokerTLS(broker string) bool {
	u, err := url.Parse(broker)
	if err != nil {
		return false
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts", "wss":
		return true
	}
	return false
}

func validInstanceID(s string) bool {
	if len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return s != ""
}

func (p *parser) boolean(name string) bool {
	v, err := strconv.ParseBool(p.str(name))
	if err != nil {
		p.fail(name, "must be true or false")
	}
	return v
}

func (p *parser) intRange(name string, lo, hi int) int {
	v, err := strconv.Atoi(p.str(name))
	if err != nil || v < lo || v > hi {
		p.fail(name, fmt.Sprintf("must be a whole number from %d to %d", lo, hi))
	}
	return v
}

func (p *parser) float(name string) float64 {
	v, err := strconv.ParseFloat(p.str(name), 64)
	if err != nil || v <= 0 || v > 1e6 {
		p.fail(name, "must be a number above 0")
	}
	return v
}

func (p *parser) duration(name string) time.Duration {
	v, err := time.ParseDuration(p.str(name))
	if err != nil || v <= 0 {
		p.fail(name, "must be a positive duration such as 500ms, 10s or 5m")
	}
	return v
}

// durationRange is duration for settings where 0 means off.
func (p *parser) durationRange(name string, lo, hi time.Duration) time.Duration {
	v, err := time.ParseDuration(p.str(name))
	if err != nil || v < lo || v > hi {
		p.fail(name, fmt.Sprintf("must be a duration from %v to %v, such as 2ms", lo, hi))
	}
	return v
}

func (p *parser) oneOf(name string, opts ...string) string {
	v := p.str(name)
	for _, o := range opts {
		if v == o {
			return v
		}
	}
	p.fail(name, "must be one of "+strings.Join(opts, ", "))
	return v
}

func (p *parser) level(name string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(p.str(name))); err != nil {
		p.fail(name, "must be debug, info, warn or error")
	}
	return l
}

func (p *parser) proxies(name string) *devices.Proxies {
	v, err := devices.ParseProxies(p.str(name))
	if err != nil {
		p.fail(name, err.Error())
	}
	return v
}

func (p *parser) list(name string) []string {
	var out []string
	for _, s := range strings.Split(p.str(name), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
