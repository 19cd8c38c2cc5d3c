package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// uxSendHour makes device send one reading a minute for the hour from
// base, with nothing in minutes 20-39 (a hub restart, say): temp a
// number, on a boolean, mode a string. It waits until InfluxDB has them.
func uxSendHour(t *testing.T, h *hub, device string, base time.Time) {
	t.Helper()
	c := integrityDial(t, h, h.createDevice(t, device))
	var rs []string
	for i := range 60 {
		if i >= 20 && i < 40 {
			continue
		}
		rs = append(rs, fmt.Sprintf(`{"ts":%d,"metrics":{"temp":%d,"on":%t,"mode":"m%d"}}`, base.Add(time.Duration(i)*time.Minute).UnixMilli(), i, i%2 == 0, i%3))
	}
	if f := integritySend(t, c, `{"type":"telemetry","id":"h","readings":[`+strings.Join(rs, ",")+`]}`); f["type"] != "ack" {
		t.Fatalf("telemetry refused: %v", f)
	}
	c.Close()
}

// TestReadingsDownsampled: GET readings with points=N downsamples on the
// server for a chart N pixels wide: at most N points, empty windows as
// null (a gap), mean for numbers and last for booleans and strings, and
// the metric's type from the schema store.
func TestReadingsDownsampled(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	viewer := h.token(t, "viewer")
	base := time.Now().Add(-3 * time.Hour).Truncate(time.Hour)
	uxSendHour(t, h, "chart-1", base)
	waitUntil(t, "40 points in InfluxDB", loadWait, func() bool { n, _ := influx.Count("chart-1", "mode"); return n == 40 })
	rng := fmt.Sprintf("&start=%d&stop=%d", base.UnixMilli(), base.Add(time.Hour).UnixMilli())
	tests := []struct {
		name   string
		query  string
		status int
		typ    string
		values []any // the points' values, when status is 200
		errHas string
	}{
		{"numbers: mean per 10 min, the gap as nulls", "metric=temp&points=6", 200, "number", []any{4.5, 14.5, nil, nil, 44.5, 54.5}, ""},
		{"booleans: last", "metric=on&points=6", 200, "bool", []any{false, false, nil, nil, false, false}, ""},
		{"strings: last", "metric=mode&points=6", 200, "string", []any{"m0", "m1", nil, nil, "m1", "m2"}, ""},
		{"fn overrides for numbers", "metric=temp&points=2&fn=max", 200, "number", []any{19.0, 59.0}, ""},
		{"count works for any type", "metric=mode&points=2&fn=count", 200, "string", []any{20.0, 20.0}, ""},
		{"one point", "metric=temp&points=1&fn=min", 200, "number", []any{0.0}, ""},
		{"mean of a boolean is refused", "metric=on&points=6&fn=mean", 400, "", nil, "fn: on is a bool metric"},
		{"every of a string takes last too", "metric=mode&every=30m", 200, "string", []any{"m1", "m2"}, ""},
		{"points 0", "metric=temp&points=0", 400, "", nil, "points must be 1 to 2000"},
		{"points 2001", "metric=temp&points=2001", 400, "", nil, "points must be 1 to 2000"},
		{"points and every", "metric=temp&points=6&every=1m", 400, "", nil, "points or every"},
		{"points and limit", "metric=temp&points=6&limit=5", 400, "", nil, "points or limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, m := h.api(t, "GET", "/api/v1/devices/chart-1/readings?"+tc.query+rng, viewer, nil)
			if st != tc.status {
				t.Fatalf("status %d, want %d: %v", st, tc.status, m)
			}
			if st != 200 {
				if msg := fmt.Sprint(m["error"]); !strings.Contains(msg, tc.errHas) {
					t.Fatalf("error %s does not say %q", msg, tc.errHas)
				}
				return
			}
			if m["type"] != tc.typ || m["device"] != "chart-1" {
				t.Errorf("type %v device %v, want %s", m["type"], m["device"], tc.typ)
			}
			ps := m["points"].([]any)
			var got []any
			for _, p := range ps {
				got = append(got, p.(map[string]any)["value"])
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.values) {
				t.Fatalf("values %v, want %v", got, tc.values)
			}
		})
	}
	// Raw points say their type too; a metric the device never sent has none.
	q := url.Values{"metric": {"temp"}, "limit": {"3"}, "start": {fmt.Sprint(base.UnixMilli())}}
	if st, m := h.api(t, "GET", "/api/v1/devices/chart-1/readings?"+q.Encode(), viewer, nil); st != 200 || m["type"] != "number" || len(m["points"].([]any)) != 3 {
		t.Fatalf("raw: %d %v", st, m)
	}
	if st, m := h.api(t, "GET", "/api/v1/devices/chart-1/readings?metric=nope&points=10", viewer, nil); st != 200 || m["type"] != "" {
		t.Fatalf("unknown metric: %d %v", st, m)
	}
}

// TestRejectionsPerDevice: the hub keeps why each registered device's
// messages were refused, over every transport, newest first, readable by
// viewers, counted in the device's JSON, and forgotten with the device.
func TestRejectionsPerDevice(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	viewer := h.token(t, "viewer")
	tok := h.createDevice(t, "rej-1")
	other := h.createDevice(t, "rej-2")
	ws := integrityDial(t, h, tok)
	// What the device sends and the rejection it leaves, oldest first.
	want := []struct {
		transport, code, field, msgHas, id string
	}{
		{"ws", "bad_json", "", "", ""},
		{"ws", "invalid", "metrics.mode", "is a string on this hub, got a number", "w2"},
		{"http", "invalid", "ts", "ts", "h1"},
		{"mqtt", "invalid", "metrics.mode", "is a string on this hub", "m1"},
	}
	if f := integritySend(t, ws, `{"type":"telemetry","id":"w1","metrics":{"mode":"auto"}}`); f["type"] != "ack" {
		t.Fatalf("first reading: %v", f)
	}
	if f := integritySend(t, ws, `{"type":"telemetry",`); f["code"] != "bad_json" {
		t.Fatalf("bad json: %v", f)
	}
	if f := integritySend(t, ws, `{"type":"telemetry","id":"w2","metrics":{"mode":3}}`); f["code"] != "invalid" {
		t.Fatalf("type conflict: %v", f)
	}
	if st, m := integrityPost(t, h, tok, `{"id":"h1","ts":1,"metrics":{"t":1}}`); st != 400 {
		t.Fatalf("http: %d %v", st, m)
	}
	ws.Close()
	mq := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + h.env["FIELDHUB_MQTT_ADDR"]).
		SetClientID("rej-1").SetUsername("rej-1").SetPassword(tok).SetAutoReconnect(false))
	if ct := mq.Connect(); !ct.WaitTimeout(loadWait) || ct.Error() != nil {
		t.Fatalf("mqtt connect: %v", ct.Error())
	}
	defer mq.Disconnect(50)
	if pt := mq.Publish("devices/rej-1/telemetry", 1, false, `{"id":"m1","metrics":{"mode":true}}`); !pt.WaitTimeout(loadWait) || pt.Error() != nil {
		t.Fatalf("mqtt publish: %v", pt.Error())
	}
	var got map[string]any
	waitUntil(t, "four rejections", loadWait, func() bool {
		_, got = h.api(t, "GET", "/api/v1/devices/rej-1/rejections", viewer, nil)
		return got["total"] == float64(len(want))
	})
	rs := got["rejections"].([]any)
	if got["device"] != "rej-1" || len(rs) != len(want) {
		t.Fatalf("rejections %v", got)
	}
	var prevAt float64 = 1e18
	for i, w := range want {
		r := rs[len(want)-1-i].(map[string]any) // newest first
		if r["transport"] != w.transport || r["code"] != w.code || r["field"] != w.field || r["id"] != w.id || !strings.Contains(r["message"].(string), w.msgHas) {
			t.Errorf("rejection %d = %v, want %+v", i, r, w)
		}
	}
	for _, r := range rs {
		at := r.(map[string]any)["at"].(float64)
		if at > prevAt || at < float64(time.Now().Add(-time.Hour).UnixMilli()) {
			t.Errorf("at %v out of order or not unix ms", at)
		}
		prevAt = at
	}
	for _, path := range []string{"/api/v1/devices/rej-1", "/api/v1/devices?q=rej-"} {
		_, m := h.api(t, "GET", path, viewer, nil)
		d, _ := m["device"].(map[string]any)
		if d == nil {
			d = m["devices"].([]any)[0].(map[string]any)
		}
		if d["rejected"] != float64(len(want)) {
			t.Errorf("%s: rejected = %v, want %d", path, d["rejected"], len(want))
		}
	}
	if _, m := h.api(t, "GET", "/api/v1/devices/rej-2/rejections", viewer, nil); m["total"] != 0.0 || len(m["rejections"].([]any)) != 0 {
		t.Errorf("another device's rejections: %v", m)
	}
	_ = other
	if st, _ := h.api(t, "GET", "/api/v1/devices/nope/rejections", viewer, nil); st != 404 {
		t.Errorf("unknown device: %d", st)
	}
	if st, _ := h.api(t, "DELETE", "/api/v1/devices/rej-1", h.adminToken, nil); st != 204 {
		t.Fatal("delete")
	}
	h.createDevice(t, "rej-1")
	if _, m := h.api(t, "GET", "/api/v1/devices/rej-1/rejections", viewer, nil); m["total"] != 0.0 {
		t.Errorf("a deleted device's rejections came back: %v", m)
	}
}

// TestExportThroughHub: what a device sent comes back from the export
// endpoint of the running hub, as CSV and JSON lines, for a viewer.
func TestExportThroughHub(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	viewer := h.token(t, "viewer")
	base := time.Now().Add(-3 * time.Hour).Truncate(time.Hour)
	uxSendHour(t, h, "exp-1", base)
	waitUntil(t, "40 points in InfluxDB", loadWait, func() bool { n, _ := influx.Count("exp-1", "on"); return n == 40 })
	rng := fmt.Sprintf("&start=%d&stop=%d", base.UnixMilli(), base.Add(time.Hour).UnixMilli())
	for _, tc := range []struct {
		format, first, last string
	}{
		{"csv", "time,device,metric,value", base.Add(59*time.Minute).UTC().Format("2006-01-02T15:04:05.000Z") + ",exp-1,on,false"},
		{"jsonl", fmt.Sprintf(`{"ts":%d,"device":"exp-1","metric":"temp","value":0}`, base.UnixMilli()),
			fmt.Sprintf(`{"ts":%d,"device":"exp-1","metric":"on","value":false}`, base.Add(59*time.Minute).UnixMilli())},
	} {
		st, body := uxGet(t, h.url+"/api/v1/devices/exp-1/export?metric=temp&metric=on&format="+tc.format+rng, viewer)
		lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
		if st != 200 || lines[0] != tc.first || lines[len(lines)-1] != tc.last {
			t.Fatalf("%s: %d, first %q last %q", tc.format, st, lines[0], lines[len(lines)-1])
		}
		if n := len(lines); (tc.format == "csv" && n != 81) || (tc.format == "jsonl" && n != 80) {
			t.Errorf("%s: %d lines", tc.format, n)
		}
	}
}

// uxGet is a GET with a bearer token; it returns the status and the body.
func uxGet(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestMetricCatalogue: a device's metrics with their types and first and
// last points come from the schema store and InfluxDB, so they are the
// same after a restart; a metric InfluxDB has from before the schema is
// listed too; with InfluxDB unreachable the schema's names still are.
func TestMetricCatalogue(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	viewer := h.token(t, "viewer")
	base := time.Now().Add(-3 * time.Hour).Truncate(time.Hour)
	uxSendHour(t, h, "cat-1", base)
	waitUntil(t, "40 points in InfluxDB", loadWait, func() bool { n, _ := influx.Count("cat-1", "mode"); return n == 40 })
	integrityInfluxWrite(t, influx, fmt.Sprintf("telemetry,device=cat-1 legacy=7i %d\n", base.Add(-time.Hour).UnixNano()))
	first, last := float64(base.UnixMilli()), float64(base.Add(59*time.Minute).UnixMilli())
	want := fmt.Sprint([]map[string]any{
		{"name": "legacy", "type": "number", "first_seen": float64(base.Add(-time.Hour).UnixMilli()), "last_seen": float64(base.Add(-time.Hour).UnixMilli())},
		{"name": "mode", "type": "string", "first_seen": first, "last_seen": last},
		{"name": "on", "type": "bool", "first_seen": first, "last_seen": last},
		{"name": "temp", "type": "number", "first_seen": first, "last_seen": last},
	})
	check := func(h *hub, when string) {
		t.Helper()
		st, m := h.api(t, "GET", "/api/v1/devices/cat-1/metrics", viewer, nil)
		if st != 200 || m["device"] != "cat-1" || m["source"] != "influxdb" || fmt.Sprint(m["metrics"]) != want {
			t.Fatalf("%s: %d %v\nwant metrics %s", when, st, m, want)
		}
	}
	check(h, "first start")
	if st, _ := h.api(t, "GET", "/api/v1/devices/nope/metrics", viewer, nil); st != 404 {
		t.Fatalf("unknown device: %d", st)
	}
	h.stop(t)
	h2 := startHub(t, influx, map[string]string{"FIELDHUB_DATA_DIR": h.env["FIELDHUB_DATA_DIR"], "FIELDHUB_ADMIN_TOKEN": h.adminToken})
	check(h2, "after a restart")

	// InfluxDB unreachable: the names and types the schema store has, no
	// first or last point, and the answer says where it came from.
	down := startHub(t, &influxtest.Server{URL: "http://" + freePort(t), Bucket: "telemetry/autogen"}, nil)
	c := integrityDial(t, down, down.createDevice(t, "cat-2"))
	if f := integritySend(t, c, `{"type":"telemetry","id":"1","metrics":{"temp":1,"ok":true}}`); f["type"] != "ack" {
		t.Fatalf("telemetry: %v", f)
	}
	st, m := down.api(t, "GET", "/api/v1/devices/cat-2/metrics", down.adminToken, nil)
	wantDown := fmt.Sprint([]map[string]any{{"name": "ok", "type": "bool", "first_seen": nil, "last_seen": nil}, {"name": "temp", "type": "number", "first_seen": nil, "last_seen": nil}})
	if st != 200 || m["source"] != "schema" || fmt.Sprint(m["metrics"]) != wantDown {
		t.Fatalf("influxdb down: %d %v", st, m)
	}
}

// uxPresence is the device's presence history as the API answers it:
// the source and each change as "online/transport/reason".
func uxPresence(t *testing.T, h *hub, device string) (source string, changes []string) {
	t.Helper()
	st, m := h.api(t, "GET", "/api/v1/devices/"+device+"/presence", h.adminToken, nil)
	if st != 200 || m["device"] != device {
		t.Fatalf("presence: %d %v", st, m)
	}
	var prev float64
	for _, e := range m["events"].([]any) {
		ev := e.(map[string]any)
		if ev["type"] != "presence" || ev["at"].(float64) < prev {
			t.Fatalf("presence events out of order or not presence: %v", m["events"])
		}
		prev = ev["at"].(float64)
		changes = append(changes, fmt.Sprintf("%v/%v/%v", ev["online"], ev["transport"], ev["reason"]))
	}
	source, _ = m["source"].(string)
	return source, changes
}

// TestPresenceHistorySurvivesRestart: presence changes are written to
// InfluxDB and read back from there, so the timeline is whole after a
// restart, including the offline change of the shutdown itself; with
// InfluxDB unreachable the hub answers from memory and says so.
func TestPresenceHistorySurvivesRestart(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	tok := h.createDevice(t, "pres-1")
	for range 2 {
		c := integrityDial(t, h, tok)
		if f := integritySend(t, c, `{"type":"telemetry","id":"p","metrics":{"x":1}}`); f == nil {
			t.Fatal("no answer")
		}
		_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
		waitUntil(t, "offline", loadWait, func() bool {
			_, d := h.api(t, "GET", "/api/v1/devices/pres-1", h.adminToken, nil)
			return d["device"].(map[string]any)["online"] == false
		})
		c.Close()
	}
	want := []string{"true/ws/<nil>", "false/ws/client_closed", "true/ws/<nil>", "false/ws/client_closed"}
	// Memory fills in what is still on its way to InfluxDB.
	var src string
	var got []string
	waitUntil(t, "four presence changes", loadWait, func() bool {
		src, got = uxPresence(t, h, "pres-1")
		return fmt.Sprint(got) == fmt.Sprint(want)
	})
	if src != "influxdb" {
		t.Fatalf("presence source %q", src)
	}
	presenceStored := func() int {
		rows, _ := influx.Query(`SELECT count("online") FROM "fieldhub_presence" WHERE "device" = 'pres-1'`)
		if len(rows) == 0 {
			return 0
		}
		n, _ := rows[0][1].(float64)
		return int(n)
	}
	waitUntil(t, "4 presence points in InfluxDB", loadWait, func() bool { return presenceStored() == 4 })
	// Connected when the hub stops: the shutdown's offline change is kept too.
	c := integrityDial(t, h, tok)
	integritySend(t, c, `{"type":"telemetry","id":"p","metrics":{"x":1}}`)
	h.stop(t)
	h2 := startHub(t, influx, map[string]string{"FIELDHUB_DATA_DIR": h.env["FIELDHUB_DATA_DIR"], "FIELDHUB_ADMIN_TOKEN": h.adminToken})
	want = append(want, "true/ws/<nil>", "false/ws/server_shutdown")
	waitUntil(t, "6 presence points in InfluxDB", loadWait, func() bool { return presenceStored() == 6 })
	if src, got = uxPresence(t, h2, "pres-1"); src != "influxdb" || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after a restart: %s %v, want influxdb %v", src, got, want)
	}
	if st, _ := h2.api(t, "GET", "/api/v1/devices/nope/presence", h2.adminToken, nil); st != 404 {
		t.Fatalf("unknown device: %d", st)
	}

	down := startHub(t, &influxtest.Server{URL: "http://" + freePort(t), Bucket: "telemetry/autogen"}, nil)
	c = integrityDial(t, down, down.createDevice(t, "pres-2"))
	integritySend(t, c, `{"type":"telemetry","id":"p","metrics":{"x":1}}`)
	waitUntil(t, "the online change in memory", loadWait, func() bool {
		src, got = uxPresence(t, down, "pres-2")
		return len(got) == 1
	})
	if src != "memory" || fmt.Sprint(got) != "[true/ws/<nil>]" {
		t.Fatalf("influxdb down: %s %v", src, got)
	}
}

// TestCommandHistoryForViewers: a viewer reads a device's command
// history, with each command's params, its result, and why it failed:
// the device's error for failed, the status itself for timed_out,
// expired and cancelled.
func TestCommandHistoryForViewers(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	viewer := h.token(t, "viewer")
	tok := h.createDevice(t, "cmd-v")
	params := map[string]any{"seconds": 5.0}
	_, queued := h.send(t, h.adminToken, "cmd-v", "", map[string]any{"name": "later", "params": params}, nil)
	if st, c := h.api(t, "DELETE", "/api/v1/devices/cmd-v/commands/"+queued["id"].(string), h.adminToken, nil); st != 200 {
		t.Fatalf("cancel: %d %v", st, c)
	}
	wsDevice(t, h, tok)
	waitUntil(t, "the device online", loadWait, func() bool {
		_, d := h.api(t, "GET", "/api/v1/devices/cmd-v", h.adminToken, nil)
		return d["device"].(map[string]any)["online"] == true
	})
	if st, c := h.send(t, h.adminToken, "cmd-v", "?wait=30s", map[string]any{"name": "open", "params": params}, nil); st != 200 || c["status"] != "succeeded" {
		t.Fatalf("open: %d %v", st, c)
	}
	if st, c := h.send(t, h.adminToken, "cmd-v", "?wait=30s", map[string]any{"name": "fail", "params": params}, nil); st != 200 || c["status"] != "failed" {
		t.Fatalf("fail: %d %v", st, c)
	}
	if st, c := h.send(t, h.adminToken, "cmd-v", "?wait=30s", map[string]any{"name": "ignore", "timeout": "1s"}, nil); st != 200 || c["status"] != "timed_out" {
		t.Fatalf("ignore: %d %v", st, c)
	}
	st, m := h.api(t, "GET", "/api/v1/devices/cmd-v/commands", viewer, nil)
	if st != 200 {
		t.Fatalf("viewer list: %d %v", st, m)
	}
	var got []string
	for _, c := range m["commands"].([]any) { // newest first
		c := c.(map[string]any)
		got = append(got, fmt.Sprintf("%v %v params=%v result=%v error=%v", c["name"], c["status"], c["params"], c["result"], c["error"]))
	}
	want := []string{
		"ignore timed_out params=map[] result=<nil> error=<nil>",
		"fail failed params=map[seconds:5] result=<nil> error=valve stuck",
		"open succeeded params=map[seconds:5] result=map[echo:map[seconds:5]] error=<nil>",
		"later cancelled params=map[seconds:5] result=<nil> error=<nil>",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("history\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if st, c := h.api(t, "GET", "/api/v1/devices/cmd-v/commands/"+queued["id"].(string), viewer, nil); st != 200 || c["command"].(map[string]any)["status"] != "cancelled" {
		t.Fatalf("viewer get: %d %v", st, c)
	}
	if st, _ := h.send(t, viewer, "cmd-v", "", map[string]any{"name": "open"}, nil); st != 403 {
		t.Fatalf("a viewer sent a command: %d", st)
	}
}
