package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
)

// stateReq sends one state request with a raw body and returns the
// status, the ETag and the decoded JSON body.
func (h *hub) stateReq(t *testing.T, method, path, token, body string, hdr map[string]string) (int, string, map[string]any) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, h.url+path, r)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/merge-patch+json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, resp.Header.Get("ETag"), m
}

// patchDesired PATCHes the desired state as an operator and returns the
// new desired version.
func (h *hub) patchDesired(t *testing.T, token, device string, ifMatch, patch string) float64 {
	t.Helper()
	st, _, m := h.stateReq(t, "PATCH", "/api/v1/devices/"+device+"/state/desired", token, patch, map[string]string{"If-Match": ifMatch})
	if st != 200 {
		t.Fatalf("PATCH desired %s: %d %v", patch, st, m)
	}
	return doc(m, "desired")["version"].(float64)
}

func doc(m map[string]any, side string) map[string]any {
	d, _ := m[side].(map[string]any)
	return d
}

func compact(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestStateOperatorAPI: GET and PATCH of the operator side with every
// answer the contract names, and the audit line.
func TestStateOperatorAPI(t *testing.T) {
	h := startHub(t, startInflux(t), nil)
	h.createDevice(t, "th-1")
	operator, viewer := h.token(t, "operator"), h.token(t, "viewer")
	const path = "/api/v1/devices/th-1/state/desired"

	st, etag, m := h.stateReq(t, "GET", "/api/v1/devices/th-1/state", viewer, "", nil)
	if st != 200 || etag != `"0"` || compact(m) != `{"delta":{},"desired":{"state":{},"updated_at":{},"version":0},"reported":{"state":{},"updated_at":{},"version":0}}` {
		t.Fatalf("never written: %d %s %v", st, etag, m)
	}
	for _, tc := range []struct {
		name, token, ifMatch, body string
		path                       string
		status                     int
		code                       string
	}{
		{"viewer may not", viewer, `"0"`, `{"interval":5}`, path, 403, "forbidden"},
		{"no If-Match", operator, "", `{"interval":5}`, path, 428, "precondition_required"},
		{"bad If-Match", operator, `abc`, `{"interval":5}`, path, 400, "bad_request"},
		{"unknown device", operator, `"0"`, `{"interval":5}`, "/api/v1/devices/nope/state/desired", 404, "not_found"},
		{"not an object", operator, `"0"`, `[1]`, path, 400, "invalid"},
		{"bad key", operator, `"0"`, `{"a":{"b c":1}}`, path, 400, "invalid"},
		{"too deep", operator, `"0"`, `{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}`, path, 400, "invalid"},
		{"stale version", operator, `"7"`, `{"interval":5}`, path, 412, "conflict"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.ifMatch != "" {
				hdr["If-Match"] = tc.ifMatch
			}
			st, _, m := h.stateReq(t, "PATCH", tc.path, tc.token, tc.body, hdr)
			e, _ := m["error"].(map[string]any)
			if st != tc.status || e["code"] != tc.code {
				t.Fatalf("%d %v, want %d %s", st, m, tc.status, tc.code)
			}
		})
	}
	_, _, m = h.stateReq(t, "PATCH", path, operator, `{"a":{"b c":1}}`, map[string]string{"If-Match": "0"})
	if errs := m["error"].(map[string]any)["errors"].([]any); len(errs) != 1 || errs[0].(map[string]any)["field"] != "desired.a.b c" {
		t.Fatalf("field path: %v", m)
	}
	dash, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/live", http.Header{"Authorization": {"Bearer " + viewer}})
	if err != nil {
		t.Fatal(err)
	}
	defer dash.Close()
	if err := dash.WriteJSON(map[string]any{"type": "subscribe", "devices": []string{"th-1"}}); err != nil {
		t.Fatal(err)
	}
	live := make(chan map[string]any, 100)
	go func() {
		defer close(live)
		for {
			var ev map[string]any
			if dash.ReadJSON(&ev) != nil {
				return
			}
			live <- ev
		}
	}()
	st, etag, m = h.stateReq(t, "PATCH", path, operator, `{"interval":5,"mode":"eco"}`, map[string]string{"If-Match": `"0"`})
	if st != 200 || etag != `"1"` || doc(m, "desired")["version"] != 1.0 || compact(m["delta"]) != `{"interval":5,"mode":"eco"}` {
		t.Fatalf("first PATCH: %d %s %v", st, etag, m)
	}
	// The live event carries the GET shape.
	for deadline := time.After(loadWait); ; {
		var ev map[string]any
		select {
		case ev = <-live:
		case <-deadline:
			t.Fatal("no live state event")
		}
		if ev == nil {
			t.Fatal("live socket closed before a state event")
		}
		if ev["type"] != "state" {
			continue
		}
		if ev["device"] != "th-1" || doc(ev["state"].(map[string]any), "desired")["version"] != 1.0 {
			t.Fatalf("live state event: %v", ev)
		}
		break
	}
	// Plain integers work as If-Match too; the old version is refused.
	if st, _, _ := h.stateReq(t, "PATCH", path, operator, `{"interval":6}`, map[string]string{"If-Match": "0"}); st != 412 {
		t.Fatalf("reused version: %d", st)
	}
	if v := h.patchDesired(t, operator, "th-1", "1", `{"interval":6,"mode":null}`); v != 2 {
		t.Fatalf("second PATCH: version %v", v)
	}
	// Nothing half-applied: the refusals above left version 2 as it was.
	st, etag, m = h.stateReq(t, "GET", "/api/v1/devices/th-1/state", viewer, "", nil)
	if st != 200 || etag != `"2"` || compact(doc(m, "desired")["state"]) != `{"interval":6}` {
		t.Fatalf("after: %d %s %v", st, etag, m)
	}
	waitUntil(t, "audit line", loadWait, func() bool {
		return strings.Contains(h.stderr.String(), `msg="device state desired changed" device=th-1 version=2 by=operator-test`)
	})
}

type wsState struct {
	c      *websocket.Conn
	frames chan map[string]any
}

func dialState(t *testing.T, h *hub, token string) *wsState {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	d := &wsState{c: c, frames: make(chan map[string]any, 100)}
	go func() {
		defer close(d.frames)
		for {
			var f map[string]any
			if err := c.ReadJSON(&f); err != nil {
				return
			}
			d.frames <- f
		}
	}()
	t.Cleanup(func() { c.Close() })
	return d
}

// next returns the next frame of type typ, skipping others.
func (d *wsState) next(t *testing.T, typ string) map[string]any {
	t.Helper()
	deadline := time.After(loadWait)
	for {
		select {
		case f, ok := <-d.frames:
			if !ok {
				t.Fatalf("socket closed waiting for a %s frame", typ)
			}
			if f["type"] == typ {
				return f
			}
		case <-deadline:
			t.Fatalf("no %s frame", typ)
		}
	}
}

// TestStateConvergesOverWebSocket: a device with no desired state gets
// no state frame on connect; one offline while desired changes twice
// gets version 2 on connect, later changes while
// connected, reports its state with an ack carrying the version, and a
// refused patch changes nothing.
func TestStateConvergesOverWebSocket(t *testing.T) {
	h := startHub(t, startInflux(t), nil)
	token := h.createDevice(t, "ws-1")
	operator := h.token(t, "operator")
	// Never desired: the first frame is the ack of a reading, as for
	// firmware that knows nothing of state.
	d0 := dialState(t, h, token)
	if err := d0.c.WriteJSON(map[string]any{"type": "telemetry", "id": "r1", "metrics": map[string]any{"t": 1}}); err != nil {
		t.Fatal(err)
	}
	if f := <-d0.frames; f["type"] != "ack" || f["id"] != "r1" {
		t.Fatalf("first frame without desired state: %v", f)
	}
	d0.c.Close()
	h.patchDesired(t, operator, "ws-1", "0", `{"interval":10}`)
	h.patchDesired(t, operator, "ws-1", "1", `{"interval":20,"fault_rate":0.1}`)

	d := dialState(t, h, token)
	f := d.next(t, "state")
	if f["version"] != 2.0 || compact(f["desired"]) != `{"fault_rate":0.1,"interval":20}` || compact(f["delta"]) != `{"fault_rate":0.1,"interval":20}` {
		t.Fatalf("on connect: %v", f)
	}
	if err := d.c.WriteJSON(map[string]any{"type": "state", "id": "m1", "reported": map[string]any{"interval": 20, "firmware": "1.4.2"}}); err != nil {
		t.Fatal(err)
	}
	if ack := d.next(t, "ack"); ack["id"] != "m1" || ack["version"] != 1.0 {
		t.Fatalf("ack: %v", ack)
	}
	st, _, m := h.stateReq(t, "GET", "/api/v1/devices/ws-1/state", operator, "", nil)
	if st != 200 || doc(m, "reported")["version"] != 1.0 || compact(doc(m, "reported")["state"]) != `{"firmware":"1.4.2","interval":20}` || compact(m["delta"]) != `{"fault_rate":0.1}` {
		t.Fatalf("operator GET: %d %v", st, m)
	}
	// Refusals: an error frame with the field path, nothing applied.
	for _, tc := range []struct {
		reported any
		field    string
	}{
		{map[string]any{"a": map[string]any{"b": map[string]any{"c": map[string]any{"d": map[string]any{"e": map[string]any{"f": 1}}}}}}, "reported.a.b.c.d.e"},
		{map[string]any{"bad key": 1}, "reported.bad key"},
		{[]int{1}, "reported"},
		{map[string]any{"big": strings.Repeat("x", 9000)}, "reported"},
	} {
		if err := d.c.WriteJSON(map[string]any{"type": "state", "id": "bad", "reported": tc.reported}); err != nil {
			t.Fatal(err)
		}
		e := d.next(t, "error")
		errs, _ := e["errors"].([]any)
		if e["id"] != "bad" || e["code"] != "invalid" || len(errs) != 1 || errs[0].(map[string]any)["field"] != tc.field {
			t.Fatalf("refusal of %v: %v", tc.reported, e)
		}
	}
	_, _, m = h.stateReq(t, "GET", "/api/v1/devices/ws-1/state", operator, "", nil)
	if doc(m, "reported")["version"] != 1.0 {
		t.Fatalf("a refusal changed the state: %v", m)
	}
	// While connected: every change arrives.
	h.patchDesired(t, operator, "ws-1", `"2"`, `{"fault_rate":null}`)
	if f := d.next(t, "state"); f["version"] != 3.0 || compact(f["desired"]) != `{"interval":20}` || compact(f["delta"]) != `{}` {
		t.Fatalf("while connected: %v", f)
	}
}

// TestStateConvergesOverHTTP: the long poll answers at once with the
// latest version for a device that missed two changes, waits for the
// next otherwise; PATCH /api/v1/state/reported updates the version.
func TestStateConvergesOverHTTP(t *testing.T) {
	h := startHub(t, startInflux(t), nil)
	token := h.createDevice(t, "http-1")
	operator := h.token(t, "operator")
	h.patchDesired(t, operator, "http-1", "0", `{"interval":10}`)
	h.patchDesired(t, operator, "http-1", "1", `{"interval":30}`)

	st, _, m := h.stateReq(t, "GET", "/api/v1/state/desired?version=0&wait=30s", token, "", nil)
	if st != 200 || m["version"] != 2.0 || compact(m["desired"]) != `{"interval":30}` {
		t.Fatalf("long poll after two changes: %d %v", st, m)
	}
	if st, _, _ := h.stateReq(t, "GET", "/api/v1/state/desired?version=2&wait=0s", token, "", nil); st != 204 {
		t.Fatalf("no change: %d", st)
	}
	got := make(chan map[string]any, 1)
	go func() {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", h.url+"/api/v1/state/desired?version=2&wait=60s", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- map[string]any{"err": err.Error()}
			return
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		m["status"] = float64(resp.StatusCode)
		got <- m
	}()
	// Whether the change comes before the poll waits or while it does,
	// the poll answers version 3.
	h.patchDesired(t, operator, "http-1", "2", `{"interval":60}`)
	select {
	case m := <-got:
		if m["status"] != 200.0 || m["version"] != 3.0 {
			t.Fatalf("long poll: %v", m)
		}
	case <-time.After(loadWait):
		t.Fatal("the long poll did not end with the change")
	}
	st, _, m = h.stateReq(t, "PATCH", "/api/v1/state/reported", token, `{"interval":60}`, nil)
	if st != 200 || doc(m, "reported")["version"] != 1.0 || compact(m["delta"]) != `{}` {
		t.Fatalf("PATCH reported: %d %v", st, m)
	}
	st, _, m = h.stateReq(t, "PATCH", "/api/v1/state/reported", token, `{"a":{"b":{"c":{"d":{"e":{}}}}}}`, nil)
	if errs, _ := m["errors"].([]any); st != 400 || m["code"] != "invalid" || len(errs) != 1 || errs[0].(map[string]any)["field"] != "reported.a.b.c.d.e" {
		t.Fatalf("refused PATCH reported: %d %v", st, m)
	}
	st, _, m = h.stateReq(t, "GET", "/api/v1/state", token, "", nil)
	if st != 200 || doc(m, "reported")["version"] != 1.0 || doc(m, "desired")["version"] != 3.0 {
		t.Fatalf("device GET: %d %v", st, m)
	}
}

// mqttState is a paho (MQTT 3.1.1) device whose every message, on any
// topic, lands in msgs.
type mqttState struct {
	c    paho.Client
	msgs chan paho.Message
}

func dialMQTTState(t *testing.T, h *hub, id, token string, clean bool) *mqttState {
	t.Helper()
	d := &mqttState{msgs: make(chan paho.Message, 100)}
	opts := paho.NewClientOptions().AddBroker("tcp://" + h.env["FIELDHUB_MQTT_ADDR"]).
		SetClientID(id).SetUsername(id).SetPassword(token).SetAutoReconnect(false).SetCleanSession(clean).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { d.msgs <- m })
	d.c = paho.NewClient(opts)
	if tok := d.c.Connect(); !tok.WaitTimeout(loadWait) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { d.c.Disconnect(50) })
	return d
}

// next returns the payload of the next message on topic.
func (d *mqttState) next(t *testing.T, topic string) map[string]any {
	t.Helper()
	deadline := time.After(loadWait)
	for {
		select {
		case m := <-d.msgs:
			if m.Topic() != topic {
				continue
			}
			var v map[string]any
			if err := json.Unmarshal(m.Payload(), &v); err != nil {
				t.Fatalf("%s: %v", m.Payload(), err)
			}
			return v
		case <-deadline:
			t.Fatalf("no message on %s", topic)
		}
	}
}

func (d *mqttState) subscribe(t *testing.T, topic string) byte {
	t.Helper()
	tok := d.c.Subscribe(topic, 1, nil)
	if !tok.WaitTimeout(loadWait) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", topic, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[topic]
}

func (d *mqttState) publish(t *testing.T, topic, payload string) {
	t.Helper()
	if tok := d.c.Publish(topic, 1, false, payload); !tok.WaitTimeout(loadWait) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// TestStateConvergesOverMQTT: paho 3.1.1 with a persistent session:
// on subscribe the latest of two offline changes (QoS 1), reported
// patches, refusals on the errors topic with the field path; after a
// disconnect two more changes reach the resumed session without a new
// SUBSCRIBE.
func TestStateConvergesOverMQTT(t *testing.T) {
	h := startHub(t, startInflux(t), nil)
	token := h.createDevice(t, "mq-s")
	operator := h.token(t, "operator")
	h.patchDesired(t, operator, "mq-s", "0", `{"interval":10}`)
	h.patchDesired(t, operator, "mq-s", "1", `{"interval":20}`)

	d := dialMQTTState(t, h, "mq-s", token, false)
	if q := d.subscribe(t, "devices/mq-s/errors"); q != 1 {
		t.Fatalf("errors granted %d", q)
	}
	if q := d.subscribe(t, "devices/mq-s/state/desired"); q != 1 {
		t.Fatalf("desired granted %d", q)
	}
	if m := d.next(t, "devices/mq-s/state/desired"); m["version"] != 2.0 || compact(m["desired"]) != `{"interval":20}` || compact(m["delta"]) != `{"interval":20}` {
		t.Fatalf("on subscribe: %v", m)
	}
	d.publish(t, "devices/mq-s/state/reported", `{"interval":20,"firmware":"2.0"}`)
	waitUntil(t, "reported in operator GET", loadWait, func() bool {
		_, _, m := h.stateReq(t, "GET", "/api/v1/devices/mq-s/state", operator, "", nil)
		return doc(m, "reported")["version"] == 1.0 && compact(m["delta"]) == `{}`
	})
	d.publish(t, "devices/mq-s/state/reported", `{"a":{"b":{"c":{"d":{"e":[1]}}}}}`)
	e := d.next(t, "devices/mq-s/errors")
	if errs, _ := e["errors"].([]any); e["code"] != "invalid" || len(errs) != 1 || errs[0].(map[string]any)["field"] != "reported.a.b.c.d.e" {
		t.Fatalf("refusal: %v", e)
	}
	d.c.Disconnect(100)

	h.patchDesired(t, operator, "mq-s", "2", `{"interval":30}`)
	h.patchDesired(t, operator, "mq-s", "3", `{"interval":40}`)
	d2 := dialMQTTState(t, h, "mq-s", token, false)
	if m := d2.next(t, "devices/mq-s/state/desired"); m["version"] != 4.0 || compact(m["desired"]) != `{"interval":40}` {
		t.Fatalf("resumed session: %v", m)
	}
	_, _, m := h.stateReq(t, "GET", "/api/v1/devices/mq-s/state", operator, "", nil)
	if doc(m, "reported")["version"] != 1.0 {
		t.Fatalf("the refused patch changed the state: %v", m)
	}
}

// TestStateTwoInstances: two instances on PostgreSQL and Mosquitto. An
// operator PATCHes desired on A; a WebSocket device on B receives it; an
// MQTT device on the broker gets the retained document when it
// subscribes, and its reported patch (through the shared subscription)
// shows on both; both see one state; the same If-Match on A and B: one
// 412.
func TestStateTwoInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Mosquitto, PostgreSQL, influxd and two hubs; run without -short")
	}
	influx := startInflux(t)
	env := clusterEnv(t, influx)
	envA, envB := map[string]string{"FIELDHUB_INSTANCE_ID": "state-a"}, map[string]string{"FIELDHUB_INSTANCE_ID": "state-b"}
	for k, v := range env {
		envA[k], envB[k] = v, v
	}
	a := startHub(t, influx, envA)
	b := startHub(t, influx, envB)
	a.waitBroker(t)
	b.waitBroker(t)
	wsTok := a.createDevice(t, "st-ws")
	mqTok := a.createDevice(t, "st-mq")
	waitUntil(t, "instance B knows the devices", loadWait, func() bool {
		st1, _ := b.api(t, "GET", "/api/v1/devices/st-ws", b.adminToken, nil)
		st2, _ := b.api(t, "GET", "/api/v1/devices/st-mq", b.adminToken, nil)
		return st1 == 200 && st2 == 200
	})

	d := dialState(t, b, wsTok)
	// Connected to B (no state frame yet: nothing was ever desired).
	waitUntil(t, "the device online on B", loadWait, func() bool {
		return b.mqttAttackPresence(t, "st-ws")["online"] == true
	})
	patched := time.Now()
	a.patchDesired(t, a.adminToken, "st-ws", "0", `{"interval":15}`)
	if f := d.next(t, "state"); f["version"] != 1.0 || compact(f["desired"]) != `{"interval":15}` {
		t.Fatalf("a change made on A, on B's socket: %v", f)
	}
	t.Logf("a desired change on A reached the device on B after %s (B polls the store every second)", time.Since(patched).Round(time.Millisecond))

	// MQTT on the broker: the retained document at subscribe.
	a.patchDesired(t, a.adminToken, "st-mq", "0", `{"interval":5}`)
	a.patchDesired(t, a.adminToken, "st-mq", "1", `{"interval":7}`)
	var m *mqttState
	waitUntil(t, "MQTT device connects to the broker", loadWait, func() bool {
		msgs := make(chan paho.Message, 100)
		c := paho.NewClient(paho.NewClientOptions().AddBroker(env["FIELDHUB_MQTT_BROKER"]).SetClientID("st-mq").SetUsername("st-mq").
			SetPassword(mqTok).SetAutoReconnect(false).SetDefaultPublishHandler(func(_ paho.Client, msg paho.Message) { msgs <- msg }))
		tok := c.Connect()
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			return false
		}
		m = &mqttState{c: c, msgs: msgs}
		return true
	})
	t.Cleanup(func() { m.c.Disconnect(50) })
	m.subscribe(t, "devices/st-mq/state/desired")
	if got := m.next(t, "devices/st-mq/state/desired"); got["version"] != 2.0 || compact(got["desired"]) != `{"interval":7}` {
		t.Fatalf("retained on subscribe: %v", got)
	}
	m.publish(t, "devices/st-mq/state/reported", `{"interval":7}`)
	for _, h := range []*hub{a, b} {
		waitUntil(t, "reported on both instances", loadWait, func() bool {
			_, _, v := h.stateReq(t, "GET", "/api/v1/devices/st-mq/state", h.adminToken, "", nil)
			return doc(v, "reported")["version"] == 1.0 && compact(v["delta"]) == `{}`
		})
	}
	_, _, va := a.stateReq(t, "GET", "/api/v1/devices/st-mq/state", a.adminToken, "", nil)
	_, _, vb := b.stateReq(t, "GET", "/api/v1/devices/st-mq/state", b.adminToken, "", nil)
	if compact(va) != compact(vb) {
		t.Fatalf("two states:\nA %v\nB %v", va, vb)
	}

	// The same If-Match on both instances: exactly one wins.
	type res struct{ st int }
	out := make(chan res, 2)
	for i, h := range []*hub{a, b} {
		go func() {
			req, _ := http.NewRequest("PATCH", h.url+"/api/v1/devices/st-mq/state/desired", strings.NewReader(`{"who":"`+string(rune('a'+i))+`"}`))
			req.Header.Set("Authorization", "Bearer "+h.adminToken)
			req.Header.Set("If-Match", `"2"`)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				out <- res{0}
				return
			}
			resp.Body.Close()
			out <- res{resp.StatusCode}
		}()
	}
	r1, r2 := <-out, <-out
	if !(r1.st == 200 && r2.st == 412 || r1.st == 412 && r2.st == 200) {
		t.Fatalf("concurrent PATCH on two instances: %d and %d", r1.st, r2.st)
	}
	// The reported change republished version 2 with its new delta
	// first; then the winner's version 3.
	for {
		got := m.next(t, "devices/st-mq/state/desired")
		if got["version"] == 3.0 {
			break
		}
		if got["version"] != 2.0 {
			t.Fatalf("on the broker: %v", got)
		}
	}
}
