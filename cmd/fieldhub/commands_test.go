package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
)

func (h *hub) createDevice(t *testing.T, id string) string {
	t.Helper()
	st, m := h.api(t, "POST", "/api/v1/devices", h.adminToken, map[string]any{"id": id})
	if st != 201 {
		t.Fatalf("create %s: %d %v", id, st, m)
	}
	return m["token"].(string)
}

func (h *hub) token(t *testing.T, role string) string {
	t.Helper()
	st, m := h.api(t, "POST", "/api/v1/tokens", h.adminToken, map[string]any{"name": role + "-test", "role": role})
	if st != 201 {
		t.Fatalf("token: %d %v", st, m)
	}
	return m["secret"].(string)
}

// send posts a command and returns the status code and command object.
func (h *hub) send(t *testing.T, token, device, query string, body map[string]any, hdr http.Header) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", h.url+"/api/v1/devices/"+device+"/commands"+query, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	cmd, _ := m["command"].(map[string]any)
	if cmd == nil {
		cmd = m
	}
	return resp.StatusCode, cmd
}

func (h *hub) commandStatus(t *testing.T, device, id string) string {
	t.Helper()
	st, m := h.api(t, "GET", "/api/v1/devices/"+device+"/commands/"+id, h.adminToken, nil)
	if st != 200 {
		t.Fatalf("get command: %d %v", st, m)
	}
	return m["command"].(map[string]any)["status"].(string)
}

// wsDevice is a WebSocket device that answers commands: "fail" with an
// error result, "ignore" never, anything else ok.
func wsDevice(t *testing.T, h *hub, token string) (*websocket.Conn, chan string) {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 100)
	go func() {
		for {
			var f map[string]any
			if err := c.ReadJSON(&f); err != nil {
				close(got)
				return
			}
			if f["type"] != "command" {
				continue
			}
			id, name := f["id"].(string), f["name"].(string)
			got <- id
			switch name {
			case "ignore":
			case "fail":
				_ = c.WriteJSON(map[string]any{"type": "command_result", "id": id, "status": "error", "error": "valve stuck"})
			default:
				_ = c.WriteJSON(map[string]any{"type": "command_result", "id": id, "status": "ok", "result": map[string]any{"echo": f["params"]}})
			}
		}
	}()
	t.Cleanup(func() { c.Close() })
	return c, got
}

func TestCommandsOverWebSocket(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	token := h.createDevice(t, "valve-1")
	operator, viewer := h.token(t, "operator"), h.token(t, "viewer")
	dash, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/live", http.Header{"Authorization": {"Bearer " + viewer}})
	if err != nil {
		t.Fatal(err)
	}
	defer dash.Close()
	if err := dash.WriteJSON(map[string]any{"type": "subscribe", "devices": []string{"valve-1"}}); err != nil {
		t.Fatal(err)
	}

	// Offline: queued, then delivered in order when the device connects.
	st, first := h.send(t, operator, "valve-1", "", map[string]any{"name": "set_interval", "params": map[string]any{"seconds": 5}}, nil)
	if st != 202 || first["status"] != "queued" || first["created_by"] != "operator-test" {
		t.Fatalf("queued: %d %v", st, first)
	}
	_, second := h.send(t, operator, "valve-1", "", map[string]any{"name": "open_valve"}, nil)
	_, got := wsDevice(t, h, token)
	for _, want := range []any{first["id"], second["id"]} {
		select {
		case id := <-got:
			if id != want {
				t.Fatalf("delivered %s, want %s (order)", id, want)
			}
		case <-time.After(loadWait):
			t.Fatal("queued command not delivered on connect")
		}
	}
	waitUntil(t, "first command succeeded", loadWait, func() bool { return h.commandStatus(t, "valve-1", first["id"].(string)) == "succeeded" })
	// Every status change reached the dashboard as a command event.
	var seen []string
	for len(seen) < 3 {
		var e map[string]any
		_ = dash.SetReadDeadline(time.Now().Add(loadWait))
		if err := dash.ReadJSON(&e); err != nil {
			t.Fatalf("live command events: %v (saw %v)", err, seen)
		}
		if e["type"] == "command" && e["id"] == first["id"] {
			seen = append(seen, e["status"].(string))
		}
	}
	if strings.Join(seen, ",") != "queued,sent,succeeded" {
		t.Fatalf("command events %v, want queued,sent,succeeded", seen)
	}

	// Online with ?wait: the answer comes back in the same request.
	st, done := h.send(t, operator, "valve-1", "?wait=60s", map[string]any{"name": "reboot"}, nil)
	if st != 200 || done["status"] != "succeeded" {
		t.Fatalf("wait: %d %v", st, done)
	}
	st, failed := h.send(t, operator, "valve-1", "?wait=60s", map[string]any{"name": "fail"}, nil)
	if st != 200 || failed["status"] != "failed" || failed["error"] != "valve stuck" {
		t.Fatalf("failure result: %d %v", st, failed)
	}
	st, timedOut := h.send(t, operator, "valve-1", "?wait=60s", map[string]any{"name": "ignore", "timeout": "1s"}, nil)
	if st != 200 || timedOut["status"] != "timed_out" {
		t.Fatalf("timeout: %d %v", st, timedOut)
	}

	// Idempotency: a retried request returns the same command.
	key := http.Header{"Idempotency-Key": {"req-77"}}
	_, a := h.send(t, operator, "valve-1", "", map[string]any{"name": "open_valve"}, key)
	st, b := h.send(t, operator, "valve-1", "", map[string]any{"name": "open_valve"}, key)
	if a["id"] != b["id"] || st >= 300 {
		t.Fatalf("idempotency: %v then %v (%d)", a["id"], b["id"], st)
	}

	// Roles and errors.
	if st, m := h.send(t, viewer, "valve-1", "", map[string]any{"name": "x"}, nil); st != 403 {
		t.Fatalf("viewer: %d %v", st, m)
	}
	if st, _ := h.send(t, operator, "ghost", "", map[string]any{"name": "x"}, nil); st != 404 {
		t.Fatalf("unknown device: %d", st)
	}
	for _, bad := range []map[string]any{{"name": "bad name"}, {"name": "x", "params": []int{1}}, {"name": "x", "params": map[string]any{"blob": strings.Repeat("x", 9000)}}, {"name": "x", "ttl": "soon"}} {
		if st, m := h.send(t, operator, "valve-1", "", bad, nil); st != 400 {
			t.Errorf("%v: %d %v", bad, st, m)
		}
	}

	// The CLI.
	var out syncBuf
	env := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": operator}
	if err := run(t.Context(), []string{"fieldhub", "command", "send", "valve-1", "set_interval", "--params", `{"seconds":9}`, "--wait", "60s"}, func(k string) string { return env[k] }, &out, &out); err != nil || !strings.Contains(out.String(), "succeeded") || !strings.Contains(out.String(), `"seconds":9`) {
		t.Fatalf("cli send: %v\n%s", err, out.String())
	}
	out = syncBuf{}
	if err := run(t.Context(), []string{"fieldhub", "command", "list", "valve-1"}, func(k string) string { return env[k] }, &out, &out); err != nil || !strings.Contains(out.String(), "set_interval") {
		t.Fatalf("cli list: %v\n%s", err, out.String())
	}

	// History, newest first, with the audit trail.
	st, list := h.api(t, "GET", "/api/v1/devices/valve-1/commands?limit=3", viewer, nil)
	cmds := list["commands"].([]any)
	if st != 200 || len(cmds) != 3 || list["next"] == "" {
		t.Fatalf("list: %d %v", st, list)
	}
	newest := cmds[0].(map[string]any)
	if newest["name"] != "set_interval" || len(newest["history"].([]any)) < 3 {
		t.Fatalf("newest %v", newest)
	}
}

func TestCommandQueueLifecycleAndRestart(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	token := h.createDevice(t, "gate-1")

	// ttl expiry and cancel while offline.
	_, exp := h.send(t, h.adminToken, "gate-1", "", map[string]any{"name": "open", "ttl": "1s"}, nil)
	_, canc := h.send(t, h.adminToken, "gate-1", "", map[string]any{"name": "open"}, nil)
	st, m := h.api(t, "DELETE", "/api/v1/devices/gate-1/commands/"+canc["id"].(string), h.adminToken, nil)
	if st != 200 || m["command"].(map[string]any)["status"] != "cancelled" {
		t.Fatalf("cancel: %d %v", st, m)
	}
	if st, _ := h.api(t, "DELETE", "/api/v1/devices/gate-1/commands/"+canc["id"].(string), h.adminToken, nil); st != 409 {
		t.Fatalf("second cancel: %d, want 409", st)
	}
	waitUntil(t, "ttl expiry", loadWait, func() bool { return h.commandStatus(t, "gate-1", exp["id"].(string)) == "expired" })

	// Queue limit.
	var kept []string
	for i := range 100 {
		st, c := h.send(t, h.adminToken, "gate-1", "", map[string]any{"name": "step", "params": map[string]any{"n": i}}, nil)
		if st != 202 {
			t.Fatalf("queue %d: %d", i, st)
		}
		kept = append(kept, c["id"].(string))
	}
	if st, _ := h.send(t, h.adminToken, "gate-1", "", map[string]any{"name": "one_too_many"}, nil); st != 429 {
		t.Fatalf("101st queued command: %d, want 429", st)
	}

	// Restart: the queue survives and is delivered in order on connect.
	env := h.env
	h.stop(t)
	h2 := startHub(t, influx, map[string]string{"FIELDHUB_DATA_DIR": env["FIELDHUB_DATA_DIR"]})
	_, got := wsDevice(t, h2, token)
	for i, want := range kept {
		select {
		case id := <-got:
			if id != want {
				t.Fatalf("after restart delivery %d is %s, want %s", i, id, want)
			}
		case <-time.After(loadWait):
			t.Fatalf("after restart only %d of %d delivered", i, len(kept))
		}
	}
	waitUntil(t, "all succeeded", loadWait, func() bool { return h2.commandStatus(t, "gate-1", kept[99]) == "succeeded" })
}

func TestCommandRedeliveredAfterReconnect(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	token := h.createDevice(t, "pump-3")
	c1, got1 := wsDevice(t, h, token)
	// "ignore": delivered (sent) but never answered; the session then ends.
	_, cmd := h.send(t, h.adminToken, "pump-3", "", map[string]any{"name": "ignore", "timeout": "30s"}, nil)
	<-got1
	if s := h.commandStatus(t, "pump-3", cmd["id"].(string)); s != "sent" {
		t.Fatalf("status %s, want sent", s)
	}
	c1.Close()
	// The next session gets it again (at least once).
	_, got2 := wsDevice(t, h, token)
	select {
	case id := <-got2:
		if id != cmd["id"] {
			t.Fatalf("redelivered %s", id)
		}
	case <-time.After(loadWait):
		t.Fatal("sent command without a result not redelivered on reconnect")
	}
}

func TestCommandsOverMQTTAndHTTP(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	mqttTok := h.createDevice(t, "mq-1")
	httpTok := h.createDevice(t, "http-1")

	// MQTT: queued while offline, delivered once the device subscribes.
	_, queued := h.send(t, h.adminToken, "mq-1", "", map[string]any{"name": "set_interval", "params": map[string]any{"seconds": 2}}, nil)
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + h.env["FIELDHUB_MQTT_ADDR"]).
		SetClientID("mq-1").SetUsername("mq-1").SetPassword(mqttTok).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(loadWait) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	c.Subscribe("devices/mq-1/commands", 1, func(cl paho.Client, m paho.Message) {
		var cmd map[string]any
		_ = json.Unmarshal(m.Payload(), &cmd)
		res, _ := json.Marshal(map[string]any{"id": cmd["id"], "status": "ok", "result": map[string]any{"name": cmd["name"]}})
		cl.Publish("devices/mq-1/commands/result", 1, false, res)
	}).WaitTimeout(loadWait)
	waitUntil(t, "MQTT command succeeded", loadWait, func() bool { return h.commandStatus(t, "mq-1", queued["id"].(string)) == "succeeded" })
	st, live := h.send(t, h.adminToken, "mq-1", "?wait=60s", map[string]any{"name": "reboot"}, nil)
	if st != 200 || live["status"] != "succeeded" {
		t.Fatalf("MQTT round trip: %d %v", st, live)
	}

	// HTTP long poll: nothing yet -> 204; then the command; then its result.
	poll := func(wait string) (int, map[string]any) {
		req, _ := http.NewRequest("GET", h.url+"/api/v1/commands/next?wait="+wait, nil)
		req.Header.Set("Authorization", "Bearer "+httpTok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		body, _ := io.ReadAll(resp.Body)
		_ = json.Unmarshal(body, &m)
		return resp.StatusCode, m
	}
	if st, _ := poll("100ms"); st != 204 {
		t.Fatalf("empty poll: %d", st)
	}
	type result struct {
		st  int
		cmd map[string]any
	}
	polled := make(chan result, 1)
	go func() { st, m := poll("60s"); polled <- result{st, m} }()
	_, sent := h.send(t, h.adminToken, "http-1", "", map[string]any{"name": "open_valve"}, nil)
	r := <-polled
	if r.st != 200 || r.cmd["id"] != sent["id"] || r.cmd["type"] != "command" {
		t.Fatalf("long poll: %d %v", r.st, r.cmd)
	}
	req, _ := http.NewRequest("POST", h.url+"/api/v1/commands/"+sent["id"].(string)+"/result", strings.NewReader(`{"status":"ok","result":{"opened":true}}`))
	req.Header.Set("Authorization", "Bearer "+httpTok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 || h.commandStatus(t, "http-1", sent["id"].(string)) != "succeeded" {
		t.Fatalf("result: %d", resp.StatusCode)
	}
}
