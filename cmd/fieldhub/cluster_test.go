package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/cluster"
	"github.com/fieldhub/fieldhub/bridge/cluster/mosquittotest"
	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/dashboard/live"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// ackLog is the set of readings a device has had acknowledged, kept
// across its connections.
type ackLog struct {
	mu    sync.Mutex
	acked map[int]bool
}

func (l *ackLog) add(n int) {
	l.mu.Lock()
	l.acked[n] = true
	l.mu.Unlock()
}

// missing returns the readings below n that were never acknowledged.
func (l *ackLog) missing(n int) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int
	for k := range n {
		if !l.acked[k] {
			out = append(out, k)
		}
	}
	return out
}

func (l *ackLog) sorted() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]int, 0, len(l.acked))
	for k := range l.acked {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// clusterDevice is one connection of a WebSocket device that streams
// numbered readings without waiting for each ack, answers every command
// with "ok", and notes the acks and how its connection ended.
type clusterDevice struct {
	c       *websocket.Conn
	writeMu sync.Mutex
	base    int64
	acks    *ackLog

	mu        sync.Mutex // guards closeCode
	closeCode int
	closed    chan struct{}
}

func dialClusterDevice(hubURL, token string, base int64, acks *ackLog) (*clusterDevice, error) {
	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(hubURL, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		return nil, err
	}
	d := &clusterDevice{c: c, base: base, acks: acks, closed: make(chan struct{})}
	go d.read()
	return d, nil
}

func (d *clusterDevice) read() {
	defer close(d.closed)
	for {
		_, b, err := d.c.ReadMessage()
		if err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				d.mu.Lock()
				d.closeCode = ce.Code
				d.mu.Unlock()
			}
			return
		}
		var f map[string]any
		if json.Unmarshal(b, &f) != nil {
			continue
		}
		switch f["type"] {
		case "ack":
			n, _ := strconv.Atoi(fmt.Sprint(f["id"]))
			d.acks.add(n)
		case "command":
			d.writeMu.Lock()
			_ = d.c.WriteJSON(map[string]any{"type": "command_result", "id": f["id"], "status": "ok"})
			d.writeMu.Unlock()
		}
	}
}

func (d *clusterDevice) send(n int) error {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	_ = d.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return d.c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"type":"telemetry","id":"%d","ts":%d,"metrics":{"n":%d}}`, n, d.base+int64(n), n))
}

func (d *clusterDevice) code() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closeCode
}

func (d *clusterDevice) isClosed() bool {
	select {
	case <-d.closed:
		return true
	default:
		return false
	}
}

// hubProcess is a hub run as its own process, so a test can SIGKILL it.
type hubProcess struct {
	t    *testing.T
	bin  string
	env  []string
	url  string
	cmd  *exec.Cmd
	logs *syncBuf
}

func (p *hubProcess) start() {
	p.t.Helper()
	cmd := exec.Command(p.bin, "serve")
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.cmd = cmd
	p.t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitUntil(p.t, "hub process ready", loadWait, func() bool {
		resp, err := http.Get(p.url + "/readyz")
		if err != nil {
			return false
		}
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		c, _ := m["checks"].(map[string]any)
		mq, _ := c["mqtt"].(map[string]any)
		return resp.StatusCode == 200 && mq["status"] == "connected"
	})
}

func (p *hubProcess) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Wait()
}

// TestTwoInstancesOnMosquitto is the multi-instance deployment end to end:
// a real Mosquitto with the dynamic-security plugin, the machine's
// PostgreSQL (a database for this test), a real influxd, and two hub
// instances in external-broker mode, the first as its own process.
//
//   - A WebSocket device on instance 1 and an MQTT device on the broker are
//     both seen live on a dashboard of instance 2.
//   - A command sent through instance 2 reaches both devices and succeeds.
//   - A token revoked through instance 2 cuts the device on instance 1.
//   - Instance 1 SIGKILLed mid-stream: the WebSocket device fails over to
//     instance 2; instance 1 restarts as a supervisor would restart it and
//     replays its spool and its broker backlog; every acknowledged reading
//     of both devices is in InfluxDB.
func TestTwoInstancesOnMosquitto(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Mosquitto, PostgreSQL, influxd and two hubs; run without -short")
	}
	influx := startInflux(t)
	db := pgtest.Database(t)
	mq := mosquittotest.Start(t)
	bin := filepath.Join(t.TempDir(), "fieldhub")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	admin := "cluster-test-admin-token"
	shared := map[string]string{
		"FIELDHUB_DATABASE_URL":         db,
		"FIELDHUB_MQTT_BROKER":          mq.URL,
		"FIELDHUB_MQTT_BROKER_USERNAME": mosquittotest.HubUser,
		"FIELDHUB_MQTT_BROKER_PASSWORD": mosquittotest.HubPass,
		"FIELDHUB_MQTT_BROKER_DYNSEC":   "true",
		"FIELDHUB_ADMIN_TOKEN":          admin,
		"FIELDHUB_INFLUX_URL":           influx.URL,
		"FIELDHUB_INFLUX_BUCKET":        influx.Bucket,
		"FIELDHUB_RATE_LIMIT":           "10000",
		"FIELDHUB_RATE_BURST":           "10000",
	}
	addr1 := freePort(t)
	h1 := &hubProcess{t: t, bin: bin, url: "http://" + addr1, logs: &syncBuf{},
		env: []string{"FIELDHUB_HTTP_ADDR=" + addr1, "FIELDHUB_DATA_DIR=" + t.TempDir(), "FIELDHUB_INSTANCE_ID=hub-1", "FIELDHUB_LOG_LEVEL=debug"}}
	for k, v := range shared {
		h1.env = append(h1.env, k+"="+v)
	}
	h1.start()
	env2 := map[string]string{"FIELDHUB_INSTANCE_ID": "hub-2"}
	for k, v := range shared {
		env2[k] = v
	}
	h2 := startHub(t, influx, env2)
	h2.adminToken = admin
	waitUntil(t, "instance 2 connected to the broker", loadWait, func() bool {
		_, m := h2.api(t, "GET", "/readyz", "", nil)
		return m["checks"].(map[string]any)["mqtt"].(map[string]any)["status"] == "connected"
	})

	// Devices are created through instance 2.
	wsToken := h2.createDevice(t, "ws-1")
	mqToken := h2.createDevice(t, "mq-1")
	bystanderToken := h2.createDevice(t, "ws-2") // stays on instance 1 until it dies

	// A dashboard on instance 2 watches both.
	dash, _, err := websocket.DefaultDialer.Dial(strings.Replace(h2.url, "http", "ws", 1)+"/ws/live", http.Header{"Authorization": {"Bearer " + admin}})
	if err != nil {
		t.Fatal(err)
	}
	defer dash.Close()
	if err := dash.WriteJSON(map[string]any{"type": "subscribe", "devices": []string{"ws-1", "mq-1"}}); err != nil {
		t.Fatal(err)
	}
	// The dashboard may coalesce a device's readings to the latest value
	// when it falls behind (it does on a loaded machine), so the test
	// follows the latest seq seen per device, not a count.
	var liveWS, liveMQ atomic.Int64
	latest := func(v *atomic.Int64, e map[string]any) {
		m, _ := e["metrics"].(map[string]any)
		if seq, ok := m["n"].(float64); ok && int64(seq) > v.Load() {
			v.Store(int64(seq)) // only this goroutine stores
		}
	}
	commandEvents := make(chan string, 100)
	go func() {
		for {
			var e map[string]any
			if err := dash.ReadJSON(&e); err != nil {
				return
			}
			switch {
			case e["type"] == "reading" && e["device"] == "ws-1":
				latest(&liveWS, e)
			case e["type"] == "reading" && e["device"] == "mq-1":
				latest(&liveMQ, e)
			case e["type"] == "command":
				select {
				case commandEvents <- fmt.Sprint(e["device"], " ", e["status"]):
				default:
				}
			}
		}
	}()

	// The WebSocket device on instance 1, which learns of it through the
	// registry announcement on the broker.
	base := time.Now().Add(-time.Minute).UnixMilli()
	wsAcks := &ackLog{acked: map[int]bool{}}
	var wsDev *clusterDevice
	var wsOn string // the URL of the instance wsDev is connected to
	// wsResend resends on the current connection every reading below n
	// that was never acknowledged, and says whether it could.
	wsResend := func(n int) bool {
		for _, k := range wsAcks.missing(n) {
			if wsDev.isClosed() || wsDev.send(k) != nil {
				return false
			}
		}
		return true
	}
	connectWS := func(hubURL, token string) {
		t.Helper()
		waitUntil(t, "the WebSocket device connected to "+hubURL, loadWait, func() bool {
			d, err := dialClusterDevice(hubURL, token, base, wsAcks)
			if err != nil {
				return false
			}
			wsDev, wsOn = d, hubURL
			return true
		})
	}
	connectWS(h1.url, wsToken)
	var bystander *websocket.Conn
	waitUntil(t, "the second WebSocket device on instance 1", loadWait, func() bool {
		c, _, err := websocket.DefaultDialer.Dial(strings.Replace(h1.url, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + bystanderToken}})
		bystander = c
		return err == nil
	})
	defer bystander.Close()
	presenceOn2 := func(id string) map[string]any {
		_, m := h2.api(t, "GET", "/api/v1/devices/"+id, admin, nil)
		d, _ := m["device"].(map[string]any)
		return d
	}
	waitUntil(t, "instance 2 showing the devices of instance 1 online", loadWait, func() bool {
		return presenceOn2("ws-1")["online"] == true && presenceOn2("ws-2")["online"] == true
	})

	// The MQTT device on the broker, with the client instance 2 created
	// for it in the dynamic-security plugin.
	mqAcks := &ackLog{acked: map[int]bool{}}
	var mqDev paho.Client
	waitUntil(t, "the MQTT device connected to mosquitto", loadWait, func() bool {
		o := paho.NewClientOptions().SetProtocolVersion(4).AddBroker(mq.URL).SetClientID("mq-1").SetUsername("mq-1").SetPassword(mqToken).
			SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
		c := paho.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			return false
		}
		mqDev = c
		return true
	})
	defer mqDev.Disconnect(50)
	sub := mqDev.Subscribe("devices/mq-1/commands", 1, func(c paho.Client, m paho.Message) {
		var cmd map[string]any
		if json.Unmarshal(m.Payload(), &cmd) == nil {
			c.Publish("devices/mq-1/commands/result", 1, false, fmt.Sprintf(`{"id":%q,"status":"ok"}`, cmd["id"]))
		}
	})
	if !sub.WaitTimeout(loadWait) || sub.(*paho.SubscribeToken).Result()["devices/mq-1/commands"] == 0x80 {
		t.Fatal("the MQTT device could not subscribe to its commands")
	}
	// The broker stays up throughout, so every publish is acknowledged
	// (PUBACK from the broker) however long the machine takes.
	mqSend := func(n int) {
		t.Helper()
		tok := mqDev.Publish("devices/mq-1/telemetry", 1, false, fmt.Sprintf(`{"id":"%d","ts":%d,"metrics":{"n":%d}}`, n, base+int64(n), n))
		if !tok.WaitTimeout(loadWait) || tok.Error() != nil {
			t.Fatalf("MQTT reading %d not acknowledged by the broker within %s: %v", n, loadWait, tok.Error())
		}
		mqAcks.add(n)
	}
	// wsSend sends reading n. When the connection is gone the device does
	// what a real one does: it reconnects and first resends every earlier
	// reading that was never acknowledged (a reading in flight when an
	// instance died may or may not have been stored; the resend has the
	// same ts, so it overwrites the same point).
	wsSend := func(n int, reconnect func()) {
		t.Helper()
		for attempt := 0; attempt < 5; attempt++ {
			if attempt > 0 {
				reconnect()
				if !wsResend(n) {
					continue
				}
			}
			if !wsDev.isClosed() && wsDev.send(n) == nil {
				return
			}
		}
		t.Fatalf("reading %d could not be sent in 5 connections", n)
	}
	noFailover := func() {
		t.Fatalf("the WebSocket device lost its connection (close code %d); instance 1 log:\n%s", wsDev.code(), grepLines(h1.logs.String(), "ws-1"))
	}

	seq := 0
	for ; seq < 200; seq++ {
		wsSend(seq, noFailover)
		mqSend(seq)
	}
	waitUntil(t, "both devices' latest readings live on instance 2", loadWait, func() bool { return liveWS.Load() == 199 && liveMQ.Load() == 199 })
	// Every reading sent so far is acknowledged before the revoke below,
	// so none is in flight when the connection is cut.
	waitUntil(t, "instance 1 to acknowledge the first 200 WebSocket readings", loadWait, func() bool { return len(wsAcks.missing(seq)) == 0 })

	// A command through instance 2 to each device. ?wait ends as soon as
	// the result is in; its maximum only matters on a slow machine.
	for _, dev := range []string{"ws-1", "mq-1"} {
		st, cmd := h2.send(t, admin, dev, "?wait=60s", map[string]any{"name": "reboot"}, nil)
		if st != 200 || cmd["status"] != "succeeded" {
			t.Fatalf("command to %s through instance 2: %d %v\ninstance 1 log:\n%s", dev, st, cmd, h1.logs)
		}
	}

	// A revoke through instance 2 cuts the device on instance 1, through
	// the registry announcement on the broker (the time it took is logged;
	// the deadline is for a loaded machine and stays below the 30 s full
	// registry reload).
	revoked := time.Now()
	st, m := h2.api(t, "POST", "/api/v1/devices/ws-1/token", admin, map[string]any{"grace": "0s"})
	if st != 200 {
		t.Fatalf("rotate: %d %v", st, m)
	}
	wsToken = m["token"].(string)
	select {
	case <-wsDev.closed:
		wsDev.mu.Lock()
		code := wsDev.closeCode
		wsDev.mu.Unlock()
		if code != 4003 {
			t.Fatalf("revoked device closed with %d, want 4003", code)
		}
		t.Logf("revoke on instance 2 cut the device on instance 1 after %s", time.Since(revoked).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatal("device on instance 1 still connected 20 s after its token was revoked on instance 2")
	}
	connectWS(h1.url, wsToken)

	// Instance 1 dies mid-stream; the WebSocket device fails over to
	// instance 2 and resends there what instance 1 never acknowledged.
	failover := func() { connectWS(h2.url, wsToken) }
	for ; seq < 500; seq++ {
		if seq == 350 {
			h1.kill()
		}
		wsSend(seq, failover)
		mqSend(seq)
	}
	if wsOn != h2.url {
		// Every reading after the kill went into the dead connection's
		// socket buffer before the device noticed: it notices now.
		select {
		case <-wsDev.closed:
		case <-time.After(loadWait):
			t.Fatalf("the WebSocket device still connected to the killed instance 1 after %s", loadWait)
		}
		failover()
		if !wsResend(seq) {
			t.Fatalf("instance 2 closed the WebSocket device while it resent (close code %d)", wsDev.code())
		}
	}
	// The device that stayed on instance 1 shows offline on instance 2:
	// instance 1's broker will said it was gone.
	waitUntil(t, "the device left on the dead instance offline on instance 2", loadWait, func() bool {
		d := presenceOn2("ws-2")
		return d["online"] == false && d["disconnect_reason"] == "instance_lost"
	})
	if d := presenceOn2("ws-1"); d["online"] != true {
		t.Fatalf("the device that failed over shows %v on instance 2", d)
	}
	if wsDev.isClosed() {
		t.Fatal("the WebSocket device is not connected after failing over")
	}
	// Every reading not acknowledged by instance 1 was resent to instance
	// 2 when the device failed over, so every reading is acknowledged in
	// the end.
	waitUntil(t, "every WebSocket reading acknowledged", loadWait, func() bool {
		if wsDev.isClosed() {
			t.Fatalf("instance 2 closed the WebSocket device (close code %d)", wsDev.code())
		}
		return len(wsAcks.missing(seq)) == 0
	})
	// A supervisor restarts instance 1: it replays its spool and takes
	// what the broker kept for its session.
	h1.start()

	wsList := wsAcks.sorted()
	mqList := mqAcks.sorted()
	if len(wsList) != seq || len(mqList) != seq {
		t.Fatalf("%d WebSocket and %d MQTT readings acknowledged of %d each\ninstance 2 log:\n%s\n%s\n%s", len(wsList), len(mqList), seq, grepLines(h2.stderr.String(), "ws-1"),
			h2.metricLines(t, "fieldhub_messages_received_total"), h2.metricLines(t, "fieldhub_messages_rejected_total"))
	}
	assertAllAckedPresent(t, influx, "ws-1", wsList)
	assertAllAckedPresent(t, influx, "mq-1", mqList)

	// The cluster's metrics moved on instance 2.
	for _, want := range []string{
		"fieldhub_cluster_broker_up 1",
		`fieldhub_cluster_live_events_total{direction="in"}`,
		`fieldhub_cluster_live_events_total{direction="out"}`,
		"fieldhub_cluster_messages_acked_total",
		"fieldhub_cluster_registry_refreshes_total",
	} {
		line := h2.metricLines(t, strings.Fields(want)[0])
		if !strings.Contains(line, want) || strings.Contains(line, want+" 0;") || strings.HasSuffix(line, want+" 0") {
			t.Errorf("instance 2 metrics: want %s moving, got %q", want, line)
		}
	}

	for _, secret := range []string{mosquittotest.HubPass, wsToken, mqToken, db} {
		if strings.Contains(h1.logs.String(), secret) || strings.Contains(h2.stderr.String()+h2.stdout.String(), secret) {
			t.Fatal("a secret appears in a hub's output")
		}
	}
}

// clusterEnv is the environment of a hub instance in external-broker mode
// on a fresh Mosquitto and PostgreSQL database, sharing one admin token.
func clusterEnv(t testing.TB, influx *influxtest.Server) map[string]string {
	mq := mosquittotest.Start(t)
	return map[string]string{
		"FIELDHUB_DATABASE_URL":         pgtest.Database(t),
		"FIELDHUB_MQTT_BROKER":          mq.URL,
		"FIELDHUB_MQTT_BROKER_USERNAME": mosquittotest.HubUser,
		"FIELDHUB_MQTT_BROKER_PASSWORD": mosquittotest.HubPass,
		"FIELDHUB_MQTT_BROKER_DYNSEC":   "true",
		"FIELDHUB_ADMIN_TOKEN":          "cluster-admin-" + strconv.FormatInt(time.Now().UnixNano(), 36),
		"FIELDHUB_INFLUX_URL":           influx.URL,
		"FIELDHUB_INFLUX_BUCKET":        influx.Bucket,
		"FIELDHUB_RATE_LIMIT":           "10000",
		"FIELDHUB_RATE_BURST":           "10000",
	}
}

// waitBroker waits until the hub reports its external broker connected.
func (h *hub) waitBroker(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(loadWait)
	for {
		_, m := h.apiTB(t, "GET", "/readyz", "", nil)
		if c, _ := m["checks"].(map[string]any); c != nil {
			if mq, _ := c["mqtt"].(map[string]any); mq["status"] == "connected" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("hub not connected to the broker after %s", loadWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestFleetTotals: with several instances the overview's readings count
// the other instances' readings too (they arrive as live events).
func TestFleetTotals(t *testing.T) {
	br, err := bridge.New(bridge.Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: discardStore{}, Devices: acceptAll{}})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := cluster.New(cluster.Options{BrokerURL: "tcp://127.0.0.1:1", ClientID: "t", Registry: clusterRegistryStub{}, Local: live.New(live.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	s := br.Ephemeral("d1", "ws", "test")
	if _, terr := br.Ingest(context.Background(), s, []byte(`{"type":"telemetry","metrics":{"v":1}}`)); terr != nil {
		t.Fatal(terr)
	}
	cl.Stats().RemoteReadings.Add(41)
	var one dashboard.Totals = br
	if r, _ := one.Totals(); r != 1 {
		t.Fatalf("one instance: %d readings, want 1", r)
	}
	if r, _ := (clusterTotals{br: br, cl: cl}).Totals(); r != 42 {
		t.Fatalf("with the other instances: %d readings, want 42", r)
	}
}

type discardStore struct{}

func (discardStore) Append(context.Context, int, []byte) error { return nil }

type acceptAll struct{}

func (acceptAll) Tags(string) []telemetry.Tag               { return nil }
func (acceptAll) Touch(string, time.Time)                   {}
func (acceptAll) SetPresence(string, devices.Presence)      {}
func (acceptAll) StillValid(string, devices.TokenHash) bool { return true }
func (acceptAll) Exists(string) bool                        { return true }

type clusterRegistryStub struct{ acceptAll }

func (clusterRegistryStub) Refresh(context.Context) error { return nil }
func (clusterRegistryStub) Get(id string) (devices.Device, error) {
	return devices.Device{ID: id}, nil
}
