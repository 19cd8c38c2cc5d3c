package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// syncBuf is a goroutine-safe buffer for captured output.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// hub is a whole Fieldhub running in-process through run().
type hub struct {
	url            string
	adminToken     string
	stdout, stderr *syncBuf
	cancel         context.CancelFunc
	done           chan error
	env            map[string]string
}

func startHub(t *testing.T, influx *influxtest.Server, extraEnv map[string]string) *hub {
	return startHubTB(t, influx, extraEnv)
}

// startHubTB is startHub for benchmarks too.
func startHubTB(t testing.TB, influx *influxtest.Server, extraEnv map[string]string) *hub {
	t.Helper()
	addr := freePort(t)
	h := &hub{url: "http://" + addr, adminToken: "test-admin-secret-" + fmt.Sprint(time.Now().UnixNano()), stdout: &syncBuf{}, stderr: &syncBuf{}, done: make(chan error, 1)}
	h.env = map[string]string{
		"FIELDHUB_HTTP_ADDR":     addr,
		"FIELDHUB_MQTT_ADDR":     freePort(t),
		"FIELDHUB_DATA_DIR":      filepath.Join(t.TempDir(), "data"),
		"FIELDHUB_INFLUX_URL":    influx.URL,
		"FIELDHUB_INFLUX_BUCKET": influx.Bucket,
		"FIELDHUB_ADMIN_TOKEN":   h.adminToken,
		"FIELDHUB_LOG_LEVEL":     "debug",
	}
	for k, v := range extraEnv {
		h.env[k] = v
	}
	h.adminToken = h.env["FIELDHUB_ADMIN_TOKEN"]
	h.url = "http://" + h.env["FIELDHUB_HTTP_ADDR"] // a restart may keep its address
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		h.done <- run(ctx, []string{"fieldhub", "serve"}, func(k string) string { return h.env[k] }, h.stdout, h.stderr)
	}()
	t.Cleanup(func() { h.stop(t) })
	deadline := time.Now().Add(loadWait)
	for {
		resp, err := http.Get(h.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return h
			}
		}
		select {
		case err := <-h.done:
			h.cancel = nil
			t.Fatalf("hub exited during start: %v\n%s", err, h.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("hub not healthy after %s\n%s", loadWait, h.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *hub) stop(t testing.TB) {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			t.Errorf("hub run: %v", err)
		}
	case <-time.After(loadWait):
		t.Errorf("hub did not stop within %s", loadWait)
	}
}

func (h *hub) api(t *testing.T, method, path, token string, body any) (int, map[string]any) {
	return h.apiTB(t, method, path, token, body)
}

func (h *hub) apiTB(t testing.TB, method, path, token string, body any) (int, map[string]any) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, h.url+path, r)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// loadWait is how long a test waits for an event it expects: generous,
// because the tests run beside others on a loaded 2-core machine, and
// every wait ends as soon as the event happens. A test that checks how
// fast something happens logs the time it took instead.
const loadWait = 60 * time.Second

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestHubEndToEnd runs the real hub against a real influxd: health,
// readiness, metrics, a device streaming over WebSocket into InfluxDB, the
// history API, and a clean shutdown.
func TestHubEndToEnd(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)

	status, ready := h.api(t, "GET", "/readyz", "", nil)
	if status != 200 || ready["status"] != "ready" {
		t.Fatalf("readyz %d %v", status, ready)
	}
	checks := ready["checks"].(map[string]any)
	for _, dep := range []string{"registry", "spool", "influxdb", "mqtt"} {
		if _, ok := checks[dep]; !ok {
			t.Errorf("readyz lacks %s: %v", dep, checks)
		}
	}
	if checks["influxdb"].(map[string]any)["status"] != "ok" {
		t.Errorf("influxdb check %v", checks["influxdb"])
	}

	status, created := h.api(t, "POST", "/api/v1/devices", h.adminToken, map[string]any{"id": "boiler-7", "name": "Boiler 7"})
	if status != 201 {
		t.Fatalf("create device: %d %v", status, created)
	}
	devToken := created["token"].(string)

	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + devToken}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	base := time.Now().Add(-time.Minute).UnixMilli()
	for i := range 20 {
		msg := fmt.Sprintf(`{"type":"telemetry","id":"%d","ts":%d,"metrics":{"temp":%d,"ok":true}}`, i, base+int64(i)*1000, 20+i)
		if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		var ack map[string]any
		if err := c.ReadJSON(&ack); err != nil || ack["type"] != "ack" {
			t.Fatalf("ack %d: %v %v", i, ack, err)
		}
	}
	waitUntil(t, "20 points in InfluxDB", loadWait, func() bool {
		n, _ := influx.Count("boiler-7", "temp")
		return n == 20
	})

	status, hist := h.api(t, "GET", "/api/v1/devices/boiler-7/readings?metric=temp&start=-5m", h.adminToken, nil)
	if status != 200 || len(hist["points"].([]any)) != 20 {
		t.Fatalf("history %d %v", status, hist)
	}

	// The writer counts a batch once InfluxDB has answered, which can be
	// a while after the points became visible to a query: wait for it.
	wantMetrics := []string{
		`fieldhub_readings_accepted_total{transport="ws"} 20`,
		`fieldhub_devices_connected{transport="ws"} 1`,
		`fieldhub_influx_points_written_total 20`,
		`go_goroutines`,
		`process_resident_memory_bytes`,
	}
	var lacking []string
	deadline := time.Now().Add(loadWait)
	for {
		resp, err := http.Get(h.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		lacking = lacking[:0]
		for _, want := range wantMetrics {
			if !strings.Contains(string(body), want) {
				lacking = append(lacking, want)
			}
		}
		if len(lacking) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	for _, want := range lacking {
		t.Errorf("metrics lack %q", want)
	}

	// Shutdown closes the device socket with 1001 and returns cleanly.
	h.stop(t)
	_ = c.SetReadDeadline(time.Now().Add(loadWait))
	_, _, err = c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Errorf("device saw %v, want close 1001", err)
	}
	logs := h.stderr.String()
	for _, secret := range []string{devToken, h.adminToken} {
		if strings.Contains(logs+h.stdout.String(), secret) {
			t.Errorf("a secret appears in the output")
		}
	}
	if !strings.Contains(logs, "fieldhub stopped") {
		t.Errorf("no clean stop in logs:\n%s", logs)
	}
}

func TestBadSettings(t *testing.T) {
	tests := []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"FIELDHUB_HTTP_ADDR": "nonsense"}, nil, "FIELDHUB_HTTP_ADDR"},
		{map[string]string{"FIELDHUB_LOG_LEVEL": "loud"}, nil, "FIELDHUB_LOG_LEVEL"},
		{map[string]string{"FIELDHUB_INFLUX_URL": "ftp://x"}, nil, "FIELDHUB_INFLUX_URL"},
		{map[string]string{"FIELDHUB_SHUTDOWN_TIMEOUT": "-1s"}, nil, "FIELDHUB_SHUTDOWN_TIMEOUT"},
		{map[string]string{"FIELDHUB_TLS_CERT": "/x.pem"}, nil, "FIELDHUB_TLS_CERT"},
		{nil, []string{"--rate-limit", "zero"}, "FIELDHUB_RATE_LIMIT"},
		{map[string]string{"FIELDHUB_MQTT_BROKER": "http://broker:1883"}, nil, "FIELDHUB_MQTT_BROKER"},
		{map[string]string{"FIELDHUB_MQTT_BROKER": "tcp://"}, nil, "FIELDHUB_MQTT_BROKER"},
		{map[string]string{"FIELDHUB_MQTT_BROKER_DYNSEC": "true"}, nil, "FIELDHUB_MQTT_BROKER_DYNSEC"},
		{map[string]string{"FIELDHUB_MQTT_BROKER": "tcp://b:1883", "FIELDHUB_INSTANCE_ID": "a/b"}, nil, "FIELDHUB_INSTANCE_ID"},
		{map[string]string{"FIELDHUB_MQTT_BROKER": "ssl://b:8883", "FIELDHUB_MQTT_BROKER_CERT": "/c.pem"}, nil, "FIELDHUB_MQTT_BROKER_CERT"},
		{map[string]string{"FIELDHUB_MQTT_BROKER": "tcp://b:1883", "FIELDHUB_MQTT_BROKER_CA": "/ca.pem"}, nil, "FIELDHUB_MQTT_BROKER_CA"},
		{map[string]string{"FIELDHUB_MQTT_BROKER": "tcp://b:1883", "FIELDHUB_MQTT_BROKER_CERT": "/c.pem", "FIELDHUB_MQTT_BROKER_KEY": "/k.pem"}, nil, "FIELDHUB_MQTT_BROKER_CERT"},
		{map[string]string{"FIELDHUB_TRUSTED_PROXIES": "10.0.0.0/8,nginx"}, nil, "FIELDHUB_TRUSTED_PROXIES"},
		{nil, []string{"--trusted-proxies", "10.0.0.0/33"}, "FIELDHUB_TRUSTED_PROXIES"},
	}
	for _, tt := range tests {
		var out syncBuf
		err := run(context.Background(), append([]string{"fieldhub", "serve"}, tt.args...), func(k string) string { return tt.env[k] }, &out, &out)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("env %v args %v: err %v, want it to name %s", tt.env, tt.args, err, tt.want)
		}
	}
}

func TestPortInUseNamesSetting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	env := map[string]string{"FIELDHUB_HTTP_ADDR": ln.Addr().String(), "FIELDHUB_DATA_DIR": t.TempDir()}
	var out syncBuf
	err = run(context.Background(), []string{"fieldhub", "serve"}, func(k string) string { return env[k] }, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "FIELDHUB_HTTP_ADDR") || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("err = %v", err)
	}
}

func TestServeHelpListsEverySetting(t *testing.T) {
	var out syncBuf
	if err := run(context.Background(), []string{"fieldhub", "serve", "--help"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, s := range settings {
		if !strings.Contains(out.String(), "-"+s.flag) || !strings.Contains(out.String(), s.env) {
			t.Errorf("--help lacks %s / %s", s.flag, s.env)
		}
	}
}

// TestAdminCLI drives the device and token subcommands against a running
// hub, and checks the registry survives a restart of the hub.
func TestAdminCLI(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	cli := func(args ...string) (string, error) {
		var out, errOut syncBuf
		env := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.adminToken}
		err := run(context.Background(), append([]string{"fieldhub"}, args...), func(k string) string { return env[k] }, &out, &errOut)
		return out.String() + errOut.String(), err
	}
	out, err := cli("device", "create", "tank-1", "--name", "Tank", "--label", "site=north")
	if err != nil || !strings.Contains(out, "fhd_") {
		t.Fatalf("create: %v\n%s", err, out)
	}
	out, err = cli("device", "list", "--json")
	if err != nil || !strings.Contains(out, `"id": "tank-1"`) {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err = cli("device", "list"); err != nil || !strings.Contains(out, "tank-1") || !strings.Contains(out, "Tank") {
		t.Fatalf("table: %v\n%s", err, out)
	}
	if out, err = cli("device", "rotate", "tank-1", "--grace", "1h", "--json"); err != nil || !strings.Contains(out, "fhd_") {
		t.Fatalf("rotate: %v\n%s", err, out)
	}
	if out, err = cli("token", "create", "screen", "--role", "viewer"); err != nil || !strings.Contains(out, "fho_") {
		t.Fatalf("token create: %v\n%s", err, out)
	}
	if out, err = cli("token", "list"); err != nil || !strings.Contains(out, "screen") {
		t.Fatalf("token list: %v\n%s", err, out)
	}
	if _, err = cli("device", "create", "tank-1"); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("duplicate create: %v", err)
	}

	// Restart on the same data directory: the device is still there.
	env := h.env
	h.stop(t)
	h2 := startHub(t, influx, map[string]string{"FIELDHUB_DATA_DIR": env["FIELDHUB_DATA_DIR"]})
	if st, m := h2.api(t, "GET", "/api/v1/devices/tank-1", h2.adminToken, nil); st != 200 {
		t.Fatalf("after restart: %d %v", st, m)
	}
	h = h2
	if out, err = cli("device", "delete", "tank-1"); err != nil {
		t.Fatalf("delete: %v\n%s", err, out)
	}
}

// TestTransportsIndistinguishable sends the same readings and the same bad
// payloads from a WebSocket device and an MQTT device: the errors, the
// InfluxDB points and the live events must match.
func TestTransportsIndistinguishable(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	tokens := map[string]string{}
	for _, id := range []string{"ws-dev", "mqtt-dev"} {
		st, m := h.api(t, "POST", "/api/v1/devices", h.adminToken, map[string]any{"id": id})
		if st != 201 {
			t.Fatalf("create %s: %d", id, st)
		}
		tokens[id] = m["token"].(string)
	}
	wsBase := strings.Replace(h.url, "http", "ws", 1)
	dash, _, err := websocket.DefaultDialer.Dial(wsBase+"/ws/live", http.Header{"Authorization": {"Bearer " + h.adminToken}})
	if err != nil {
		t.Fatal(err)
	}
	defer dash.Close()
	if err := dash.WriteJSON(map[string]any{"type": "subscribe", "devices": []string{"ws-dev", "mqtt-dev"}}); err != nil {
		t.Fatal(err)
	}

	wsc, _, err := websocket.DefaultDialer.Dial(wsBase+"/ws/device", http.Header{"Authorization": {"Bearer " + tokens["ws-dev"]}})
	if err != nil {
		t.Fatal(err)
	}
	defer wsc.Close()
	mq := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + h.env["FIELDHUB_MQTT_ADDR"]).
		SetClientID("mqtt-dev").SetUsername("mqtt-dev").SetPassword(tokens["mqtt-dev"]).SetAutoReconnect(false))
	if tok := mq.Connect(); !tok.WaitTimeout(loadWait) || tok.Error() != nil {
		t.Fatalf("mqtt connect: %v", tok.Error())
	}
	defer mq.Disconnect(50)
	mqErrs := make(chan []byte, 8)
	mq.Subscribe("devices/mqtt-dev/errors", 1, func(_ paho.Client, m paho.Message) { mqErrs <- m.Payload() }).WaitTimeout(loadWait)

	sendWS := func(payload string) map[string]any {
		if err := wsc.WriteMessage(websocket.TextMessage, []byte(payload)); err != nil {
			t.Fatal(err)
		}
		var f map[string]any
		_ = wsc.SetReadDeadline(time.Now().Add(loadWait))
		if err := wsc.ReadJSON(&f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	sendMQTT := func(payload string) {
		if tok := mq.Publish("devices/mqtt-dev/telemetry", 1, false, payload); !tok.WaitTimeout(loadWait) || tok.Error() != nil {
			t.Fatalf("mqtt publish: %v", tok.Error())
		}
	}

	// The same bad payloads get the same answers.
	for _, bad := range []string{
		`{"type":"telemetry","metrics":{"temp":"` + strings.Repeat("x", 300) + `"}}`,
		`{"type":"telemetry","metrics":{"1bad":1}}`,
		`{"type":"telemetry","metrics":`,
	} {
		wsErr := sendWS(bad)
		delete(wsErr, "id")
		sendMQTT(bad)
		var mqErr map[string]any
		select {
		case b := <-mqErrs:
			_ = json.Unmarshal(b, &mqErr)
		case <-time.After(loadWait):
			t.Fatal("no MQTT error message")
		}
		if fmt.Sprint(wsErr) != fmt.Sprint(mqErr) {
			t.Errorf("different answers to %.40s:\n ws   %v\n mqtt %v", bad, wsErr, mqErr)
		}
	}

	// The same good readings land the same way.
	base := time.Now().Add(-time.Minute).UnixMilli()
	for i := range 5 {
		p := fmt.Sprintf(`{"type":"telemetry","ts":%d,"metrics":{"temp":%d.5,"door":true,"state":"s%d"}}`, base+int64(i), i, i)
		if f := sendWS(p); f["type"] != "ack" {
			t.Fatalf("ws: %v", f)
		}
		sendMQTT(p)
	}
	live := map[string][]string{}
	for len(live["ws-dev"]) < 5 || len(live["mqtt-dev"]) < 5 {
		var e map[string]any
		_ = dash.SetReadDeadline(time.Now().Add(loadWait))
		if err := dash.ReadJSON(&e); err != nil {
			t.Fatalf("live: %v (have %v)", err, live)
		}
		if e["type"] != "reading" {
			continue
		}
		dev := e["device"].(string)
		delete(e, "device")
		live[dev] = append(live[dev], fmt.Sprint(e))
	}
	if !slices.Equal(live["ws-dev"], live["mqtt-dev"]) {
		t.Errorf("live events differ:\n ws   %v\n mqtt %v", live["ws-dev"], live["mqtt-dev"])
	}
	points := func(dev string) string {
		var rows [][]any
		waitUntil(t, "points of "+dev, loadWait, func() bool {
			rows, _ = influx.Query(fmt.Sprintf(`SELECT "temp","door","state" FROM "telemetry" WHERE "device"='%s'`, dev))
			return len(rows) == 5
		})
		return fmt.Sprint(rows)
	}
	if a, b := points("ws-dev"), points("mqtt-dev"); a != b {
		t.Errorf("InfluxDB points differ:\n ws   %s\n mqtt %s", a, b)
	}
}

// TestREADMEListsEverySetting keeps the README's configuration table in
// step with the settings the binary accepts.
func TestREADMEListsEverySetting(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range settings {
		if !strings.Contains(string(readme), "`"+s.env+"`") || !strings.Contains(string(readme), "`--"+s.flag+"`") {
			t.Errorf("README.md lacks %s (--%s)", s.env, s.flag)
		}
	}
}

func newCancel(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithCancel(ctx)
}

func jsonDecode(resp *http.Response, v any) error {
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}
