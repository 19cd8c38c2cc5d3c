package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// scrape returns every sample of /metrics by its full name with labels,
// e.g. `fieldhub_messages_rejected_total{code="invalid"}`.
func scrape(t *testing.T, h *hub) map[string]float64 {
	t.Helper()
	resp, err := http.Get(h.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

var lowCardinality = regexp.MustCompile(`device=|id=`)

// TestMetricsMove checks that each metric moves when its event happens, and
// that no metric has a label per device.
func TestMetricsMove(t *testing.T) {
	influx := influxtest.Start(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_WS_PING_INTERVAL": "200ms", "FIELDHUB_PPROF": "true", "FIELDHUB_INFLUX_MAX_BACKOFF": "200ms"})
	before := scrape(t, h)
	token := h.createDevice(t, "m-1")
	mqttTok := h.createDevice(t, "m-2")
	wsBase := strings.Replace(h.url, "http", "ws", 1)

	// A rejected payload bumps its code; an accepted one the readings.
	c, _, err := websocket.DefaultDialer.Dial(wsBase+"/ws/device", http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close() // kept open (and unread) until the end
	_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"telemetry","metrics":{"bad name":1}}`))
	_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"telemetry","metrics":{"temp":1}}`))
	for range 2 {
		var f map[string]any
		if err := c.ReadJSON(&f); err != nil {
			t.Fatal(err)
		}
	}
	// A device that stops answering pings is cut: heartbeat_timeout.
	// (It stops reading now, so it cannot answer.)
	// An auth failure, an MQTT ACL denial, a finished command.
	_, resp, _ := websocket.DefaultDialer.Dial(wsBase+"/ws/device", http.Header{"Authorization": {"Bearer fhd_wrong"}})
	if resp == nil || resp.StatusCode != 401 {
		t.Fatalf("wrong token: %v", resp)
	}
	mq := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + h.env["FIELDHUB_MQTT_ADDR"]).SetClientID("m-2").SetUsername("m-2").SetPassword(mqttTok).SetAutoReconnect(false))
	if tok := mq.Connect(); !tok.WaitTimeout(loadWait) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer mq.Disconnect(50)
	mq.Subscribe("devices/m-1/commands", 1, nil).WaitTimeout(loadWait)
	if st, cmd := h.send(t, h.adminToken, "m-2", "", map[string]any{"name": "x", "ttl": "1s"}, nil); st != 202 {
		t.Fatalf("command: %d %v", st, cmd)
	}
	dash, _, err := websocket.DefaultDialer.Dial(wsBase+"/ws/live", http.Header{"Authorization": {"Bearer " + h.adminToken}})
	if err != nil {
		t.Fatal(err)
	}
	defer dash.Close()

	var after map[string]float64
	want := map[string]float64{
		`fieldhub_messages_rejected_total{code="invalid"}`:                             1,
		`fieldhub_readings_accepted_total{transport="ws"}`:                             1,
		`fieldhub_spool_commits_total`:                                                 1,
		`fieldhub_messages_received_total{transport="ws"}`:                             2,
		`fieldhub_device_connects_total{transport="ws"}`:                               1,
		`fieldhub_device_connects_total{transport="mqtt"}`:                             1,
		`fieldhub_device_disconnects_total{reason="heartbeat_timeout",transport="ws"}`: 1,
		`fieldhub_auth_failures_total{transport="ws"}`:                                 1,
		`fieldhub_mqtt_acl_denied_total`:                                               1,
		`fieldhub_commands_finished_total{status="expired"}`:                           1,
		`fieldhub_influx_points_written_total`:                                         1,
		`fieldhub_devices_registered`:                                                  2,
		`fieldhub_live_subscribers`:                                                    1,
	}
	deadline := time.Now().Add(loadWait)
	for {
		after = scrape(t, h)
		var missing []string
		for k, d := range want {
			if after[k]-before[k] < d {
				missing = append(missing, fmt.Sprintf("%s moved %v, want %v", k, after[k]-before[k], d))
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics did not move:\n%s", strings.Join(missing, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for k := range after {
		if strings.HasPrefix(k, "fieldhub_") && lowCardinality.MatchString(k) {
			t.Errorf("metric with a per-device label: %s", k)
		}
	}

	// An InfluxDB outage shows in the spool metrics and in readiness.
	influx.Kill()
	for i := range 5 {
		resp, err := http.Post(h.url+"/api/v1/telemetry", "application/json", nil)
		if err == nil {
			resp.Body.Close()
		}
		req, _ := http.NewRequest("POST", h.url+"/api/v1/telemetry", strings.NewReader(fmt.Sprintf(`{"metrics":{"temp":%d}}`, i)))
		req.Header.Set("Authorization", "Bearer "+token)
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
			t.Fatalf("post during outage: %v %v", resp, err)
		} else {
			resp.Body.Close()
		}
	}
	waitUntil(t, "outage in metrics", loadWait, func() bool {
		m := scrape(t, h)
		return m["fieldhub_spool_pending_readings"] >= 5 && m["fieldhub_influx_up"] == 0 &&
			m["fieldhub_spool_oldest_pending_seconds"] > 0 && m[`fieldhub_influx_write_errors_total{class="network"}`] > 0
	})
	_, ready := h.api(t, "GET", "/readyz", "", nil)
	if c := ready["checks"].(map[string]any)["influxdb"].(map[string]any); c["status"] != "spooling" {
		t.Fatalf("readiness during outage: %v", c)
	}
	influx.Restart()
	waitUntil(t, "backlog written", loadWait, func() bool {
		m := scrape(t, h)
		return m["fieldhub_spool_pending_readings"] == 0 && m["fieldhub_influx_up"] == 1
	})

	// pprof: enabled by the setting, and for admins only.
	for _, tc := range []struct {
		token  string
		status int
	}{{"", 401}, {h.token(t, "viewer"), 403}, {h.adminToken, 200}} {
		req, _ := http.NewRequest("GET", h.url+"/debug/pprof/", nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("pprof with token %q: %d, want %d", tc.token, resp.StatusCode, tc.status)
		}
	}
}

// TestReadinessSpoolFull: with InfluxDB down and the spool at its bound,
// devices hear "overloaded" and /readyz turns 503.
func TestReadinessSpoolFull(t *testing.T) {
	influx := influxtest.Start(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_SPOOL_MAX_BYTES": "1048576", "FIELDHUB_RATE_LIMIT": "100000", "FIELDHUB_RATE_BURST": "100000"})
	token := h.createDevice(t, "filler")
	influx.Kill()
	var body strings.Builder
	body.WriteString(`{"readings":[`)
	for i := range 1000 {
		if i > 0 {
			body.WriteString(",")
		}
		fmt.Fprintf(&body, `{"metrics":{"padding_metric_name":%d,"another_padding_metric":%d}}`, i, i)
	}
	body.WriteString(`]}`)
	status := 0
	for range 100 {
		req, _ := http.NewRequest("POST", h.url+"/api/v1/telemetry", strings.NewReader(body.String()))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e map[string]any
		_ = jsonDecode(resp, &e)
		status = resp.StatusCode
		if status != 200 {
			if status != 503 || e["code"] != "overloaded" {
				t.Fatalf("full spool answered %d %v, want 503 overloaded", status, e)
			}
			break
		}
	}
	if status != 503 {
		t.Fatal("the spool never filled")
	}
	st, ready := h.api(t, "GET", "/readyz", "", nil)
	if st != 503 || ready["status"] != "not_ready" || ready["checks"].(map[string]any)["spool"].(map[string]any)["status"] != "full" {
		t.Fatalf("readyz %d %v", st, ready)
	}
}

// TestGrafanaDashboardUsesRealMetrics keeps docs/grafana-dashboard.json in
// step with the metrics the hub exports.
func TestGrafanaDashboardUsesRealMetrics(t *testing.T) {
	data, err := os.ReadFile("../../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	m := newMetrics()
	m.authFailure("ws")
	m.aclDenied.Inc()
	m.writeErrors.WithLabelValues("network").Inc()
	m.writeLatency.Observe(0.01)
	m.batchSize.Observe(10)
	names := map[string]bool{}
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	ch := make(chan *prometheus.Desc, 64)
	(&hubCollector{}).Describe(ch)
	clusterCollector{}.Describe(ch) // external-broker mode's, registered only then
	close(ch)
	descName := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range ch {
		names[descName.FindStringSubmatch(d.String())[1]] = true
	}
	for _, used := range regexp.MustCompile(`fieldhub_[a-z_]+`).FindAllString(string(data), -1) {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(used, "_bucket"), "_sum"), "_count")
		if !names[base] {
			t.Errorf("dashboard uses %s, which the hub does not export", used)
		}
	}
}
