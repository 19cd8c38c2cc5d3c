package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
)

// alertDevice is a device on the hub's WebSocket.
type alertDevice struct {
	t   *testing.T
	c   *websocket.Conn
	seq int
}

func dialDevice(t *testing.T, h *hub, token string) *alertDevice {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d := &alertDevice{t: t, c: c}
	go func() { // the hub's acks; the reader ends when the socket closes
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	return d
}

func (d *alertDevice) send(v float64) {
	d.t.Helper()
	d.seq++
	msg := fmt.Sprintf(`{"type":"telemetry","id":"%d","metrics":{"temp":%g}}`, d.seq, v)
	if err := d.c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		d.t.Fatal(err)
	}
}

// alertsOf lists the device's alerts (newest first within open, then resolved).
func (h *hub) alertsOf(t *testing.T, query string) []map[string]any {
	t.Helper()
	st, m := h.api(t, "GET", "/api/v1/alerts?"+query, h.adminToken, nil)
	if st != 200 {
		t.Fatalf("list alerts: %d %v", st, m)
	}
	var out []map[string]any
	for _, a := range m["alerts"].([]any) {
		out = append(out, a.(map[string]any))
	}
	return out
}

// waitAlert waits until the newest alert of rule on device is in state.
func (h *hub) waitAlert(t *testing.T, rule, device, state string) map[string]any {
	t.Helper()
	var got map[string]any
	waitUntil(t, fmt.Sprintf("alert of %s on %s %s", rule, device, state), loadWait, func() bool {
		list := h.alertsOf(t, "device="+device+"&rule="+rule)
		if len(list) == 0 {
			return false
		}
		got = list[0]
		return got["state"] == state
	})
	return got
}

func (h *hub) timeline(t *testing.T, id string) []string {
	t.Helper()
	st, m := h.api(t, "GET", "/api/v1/alerts/"+id, h.adminToken, nil)
	if st != 200 {
		t.Fatalf("get alert: %d %v", st, m)
	}
	var types []string
	for _, e := range m["events"].([]any) {
		types = append(types, e.(map[string]any)["type"].(string))
	}
	return types
}

func (h *hub) createRule(t *testing.T, body string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatal(err)
	}
	st, m := h.api(t, "POST", "/api/v1/alert-rules", h.adminToken, v)
	if st != 201 {
		t.Fatalf("create rule: %d %v", st, m)
	}
	return m["rule"].(map[string]any)["id"].(string)
}

// TestAlertsEndToEnd drives alerts with a real device over WebSocket on a
// hub with a real influxd: threshold with for and hysteresis, offline
// after 1 s, roles, ack, silences, rule update and delete, the live
// alert event on /ws/live, and a restart while firing.
func TestAlertsEndToEnd(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	viewer, oper := h.token(t, "viewer"), h.token(t, "operator")
	st, m := h.api(t, "POST", "/api/v1/devices", h.adminToken, map[string]any{"id": "pump-1", "labels": map[string]string{"site": "north"}})
	if st != 201 {
		t.Fatalf("create device: %d %v", st, m)
	}
	devToken := m["token"].(string)

	rule := `{"name":"hot pumps","selector":{"devices":["pump-1"],"labels":{"site":"north"}},"severity":"warning",
		"condition":{"type":"threshold","metric":"temp","op":">","value":80,"for":"1s","clear":75}}`
	var body any
	_ = json.Unmarshal([]byte(rule), &body)
	if st, m := h.api(t, "POST", "/api/v1/alert-rules", oper, body); st != 403 {
		t.Fatalf("operator created a rule: %d %v", st, m)
	}
	if st, m := h.api(t, "POST", "/api/v1/alert-rules", h.adminToken, map[string]any{"name": "x", "severity": "info",
		"condition": map[string]any{"type": "threshold", "metric": "temp", "op": "=>", "value": 1}}); st != 400 ||
		m["error"].(map[string]any)["message"] != "condition.op: must be one of >, >=, <, <=, ==, !=" {
		t.Fatalf("bad op: %d %v", st, m)
	}
	hot := h.createRule(t, rule)
	if st, m := h.api(t, "GET", "/api/v1/alert-rules", viewer, nil); st != 200 || len(m["rules"].([]any)) != 1 {
		t.Fatalf("list rules: %d %v", st, m)
	}

	live, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/live", http.Header{"Authorization": {"Bearer " + viewer}})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := live.WriteJSON(map[string]any{"type": "subscribe", "devices": []string{"pump-1"}}); err != nil {
		t.Fatal(err)
	}
	liveAlerts := make(chan map[string]any, 100)
	go func() {
		defer close(liveAlerts)
		for {
			_, b, err := live.ReadMessage()
			if err != nil {
				return
			}
			var ev map[string]any
			if json.Unmarshal(b, &ev) == nil && ev["type"] == "alert" {
				select {
				case liveAlerts <- ev:
				default:
				}
			}
		}
	}()

	dev := dialDevice(t, h, devToken)
	waitUntil(t, "pump-1 online", loadWait, func() bool {
		return h.mqttAttackPresence(t, "pump-1")["online"] == true
	})
	dev.send(85)
	firing := h.waitAlert(t, hot, "pump-1", "firing")
	if firing["rule"] != "hot pumps" || firing["value"] != 85.0 || firing["labels"].(map[string]any)["site"] != "north" {
		t.Fatalf("firing alert %v", firing)
	}
	select {
	case ev := <-liveAlerts:
		if ev["device"] != "pump-1" || ev["alert"].(map[string]any)["rule_id"] != hot {
			t.Fatalf("live alert event %v", ev)
		}
	case <-time.After(loadWait):
		t.Fatal("no alert event on /ws/live")
	}
	id := firing["id"].(string)

	// Hysteresis: 78 is below 80 but not below clear 75.
	dev.send(78)
	dev.send(85) // a marker: once the hub has it, it has 78 too
	waitUntil(t, "the readings evaluated", loadWait, func() bool {
		return h.alertsOf(t, "device=pump-1&rule="+hot)[0]["state"] == "firing"
	})

	// Ack: viewers cannot, operators can; the note is kept printable.
	if st, _ := h.api(t, "POST", "/api/v1/alerts/"+id+"/ack", viewer, map[string]any{"note": "x"}); st != 403 {
		t.Fatalf("viewer ack: %d", st)
	}
	st, m = h.api(t, "POST", "/api/v1/alerts/"+id+"/ack", oper, map[string]any{"note": "on it\x1b[31m"})
	if st != 200 {
		t.Fatalf("ack: %d %v", st, m)
	}
	if a := m["alert"].(map[string]any); a["acknowledged_by"] != "operator-test" || a["ack_note"] != `on it\x1b[31m` {
		t.Fatalf("acked alert %v", a)
	}

	// A restart while firing keeps it firing, with one firing transition.
	h.stop(t)
	h = startHub(t, influx, h.env)
	if a := h.waitAlert(t, hot, "pump-1", "firing"); a["id"] != id {
		t.Fatalf("after restart %v, want %s firing", a, id)
	}
	dev = dialDevice(t, h, devToken)
	dev.send(90)
	dev.send(74)
	resolved := h.waitAlert(t, hot, "pump-1", "resolved")
	if resolved["id"] != id || resolved["fired"] != true {
		t.Fatalf("resolved %v", resolved)
	}
	if tl := strings.Join(h.timeline(t, id), ","); tl != "pending,firing,acknowledged,resolved" {
		t.Fatalf("timeline %s", tl)
	}
	if st, _ := h.api(t, "POST", "/api/v1/alerts/"+id+"/ack", oper, map[string]any{}); st != 409 {
		t.Fatalf("ack of a resolved alert: %d", st)
	}

	// A rule update applies at once.
	upd := strings.Replace(rule, `"value":80`, `"value":200`, 1)
	upd = strings.Replace(upd, `"clear":75`, `"clear":190`, 1)
	_ = json.Unmarshal([]byte(upd), &body)
	st, m = h.api(t, "PUT", "/api/v1/alert-rules/"+hot, h.adminToken, body)
	if st != 200 || m["rule"].(map[string]any)["version"] != 2.0 {
		t.Fatalf("update: %d %v", st, m)
	}
	dev.send(150)
	dev.send(250)
	pending := h.waitAlert(t, hot, "pump-1", "pending")
	if pending["value"] != 250.0 {
		t.Fatalf("the updated rule opened %v", pending)
	}
	// Deleting the rule resolves its open alert.
	if st, _ := h.api(t, "DELETE", "/api/v1/alert-rules/"+hot, h.adminToken, nil); st != 204 {
		t.Fatalf("delete rule: %d", st)
	}
	if a := h.waitAlert(t, hot, "pump-1", "resolved"); a["fired"] != false {
		t.Fatalf("deleted rule's alert %v", a)
	}
	if st, _ := h.api(t, "GET", "/api/v1/alert-rules/"+hot, viewer, nil); st != 404 {
		t.Fatalf("deleted rule: %d", st)
	}

	// Offline after 1 s, silenced; online resolves it.
	off := h.createRule(t, `{"name":"gone","severity":"critical","condition":{"type":"offline","for":"1s"}}`)
	st, m = h.api(t, "POST", "/api/v1/silences", oper, map[string]any{"device": "pump-1", "for": "1h", "note": "maintenance"})
	if st != 201 {
		t.Fatalf("silence: %d %v", st, m)
	}
	if st, _ := h.api(t, "POST", "/api/v1/silences", viewer, map[string]any{"device": "pump-1", "for": "1h"}); st != 403 {
		t.Fatalf("viewer silence: %d", st)
	}
	if st, m := h.api(t, "GET", "/api/v1/silences", viewer, nil); st != 200 || len(m["silences"].([]any)) != 1 {
		t.Fatalf("silences: %d %v", st, m)
	}
	dev.c.Close()
	a := h.waitAlert(t, off, "pump-1", "firing")
	if a["silenced_until"] == nil {
		t.Fatalf("silenced alert %v", a)
	}
	dialDevice(t, h, devToken)
	h.waitAlert(t, off, "pump-1", "resolved")

	// A device deleted while firing: its alert resolves.
	tok2 := h.createDevice(t, "doomed-1")
	doom := h.createRule(t, `{"name":"any","selector":{"devices":["doomed-1"]},"severity":"info","condition":{"type":"threshold","metric":"temp","op":">","value":1}}`)
	d2 := dialDevice(t, h, tok2)
	d2.send(5)
	doomed := h.waitAlert(t, doom, "doomed-1", "firing")
	// Refused messages feed rejections rules.
	rej := h.createRule(t, `{"name":"noisy","selector":{"devices":["doomed-1"]},"severity":"warning","condition":{"type":"rejections","count":2,"window":"1m"}}`)
	for i := range 3 {
		if err := d2.c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":"telemetry","id":"bad-%d","metrics":{"1bad":1}}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	h.waitAlert(t, rej, "doomed-1", "firing")
	if st, _ := h.api(t, "DELETE", "/api/v1/devices/doomed-1", h.adminToken, nil); st != 204 {
		t.Fatalf("delete device: %d", st)
	}
	if a := h.waitAlert(t, doom, "doomed-1", "resolved"); a["id"] != doomed["id"] {
		t.Fatalf("resolved %v", a)
	}

	if st, m := h.api(t, "GET", "/api/v1/alerts?state=bogus", viewer, nil); st != 400 {
		t.Fatalf("bad state: %d %v", st, m)
	}
	metrics := h.metricLines(t, "fieldhub_alert_transitions_total")
	if !strings.Contains(metrics, `to="firing"`) {
		t.Fatalf("metrics: %s", metrics)
	}
}

// TestAlertsTwoInstancesOnPostgreSQL: two hubs share PostgreSQL; a device
// that goes offline on the first and reconnects on the second has its
// offline alert raised by the first and resolved by the second, once; a
// threshold alert both instances try to fire (the first by its timer,
// the second from a reading it took) fires once.
func TestAlertsTwoInstancesOnPostgreSQL(t *testing.T) {
	influx := startInflux(t)
	db := pgtest.Database(t)
	h1 := startHub(t, influx, map[string]string{"FIELDHUB_DATABASE_URL": db})
	tok := h1.createDevice(t, "roam-1")
	off := h1.createRule(t, `{"name":"gone","severity":"critical","condition":{"type":"offline","for":"1s"}}`)
	hot := h1.createRule(t, `{"name":"hot","severity":"warning","condition":{"type":"threshold","metric":"temp","op":">","value":80,"for":"2s"}}`)
	// Without a broker the second hub's registry does not refresh: it
	// starts after the device exists (the rules it would also resync).
	h2 := startHub(t, influx, map[string]string{"FIELDHUB_DATABASE_URL": db, "FIELDHUB_ADMIN_TOKEN": h1.adminToken})

	d := dialDevice(t, h1, tok)
	waitUntil(t, "roam-1 online on the first hub", loadWait, func() bool { return h1.mqttAttackPresence(t, "roam-1")["online"] == true })
	d.send(90)
	h1.waitAlert(t, hot, "roam-1", "pending")
	d.c.Close()
	offA := h1.waitAlert(t, off, "roam-1", "firing")
	d = dialDevice(t, h2, tok)
	d.send(95) // the second hub sees the pending threshold alert and fires it, racing the first's timer
	offB := h2.waitAlert(t, off, "roam-1", "resolved")
	if offB["id"] != offA["id"] {
		t.Fatalf("second hub resolved %v, want %v", offB["id"], offA["id"])
	}
	fired := h2.waitAlert(t, hot, "roam-1", "firing")
	// Both instances resync; nothing more happens to either alert.
	for _, h := range []*hub{h1, h2} {
		if tl := strings.Join(h.timeline(t, offA["id"].(string)), ","); tl != "pending,firing,resolved" {
			t.Fatalf("offline timeline on %s: %s", h.url, tl)
		}
		if tl := strings.Join(h.timeline(t, fired["id"].(string)), ","); tl != "pending,firing" {
			t.Fatalf("threshold timeline on %s: %s", h.url, tl)
		}
	}
	if n := len(h1.alertsOf(t, "device=roam-1")); n != 2 {
		t.Fatalf("%d alerts, want 2", n)
	}
}

// TestAlertsGapsEndToEnd: a gaps rule fires when a real device's seq
// numbers skip (the ledger's open gaps) and resolves when late resends
// fill the gap.
func TestAlertsGapsEndToEnd(t *testing.T) {
	h := startHub(t, startInflux(t), nil)
	st, m := h.api(t, "POST", "/api/v1/devices", h.adminToken, map[string]any{"id": "radio-1"})
	if st != 201 {
		t.Fatalf("create device: %d %v", st, m)
	}
	rule := h.createRule(t, `{"name":"lossy radios","selector":{},"severity":"info","condition":{"type":"gaps","count":0}}`)
	d := dialDevice(t, h, m["token"].(string))
	send := func(seqs ...int) {
		t.Helper()
		for _, s := range seqs {
			d.seq++
			msg := fmt.Sprintf(`{"type":"telemetry","id":"%d","boot":"b1","readings":[{"seq":%d,"metrics":{"temp":20}}]}`, d.seq, s)
			if err := d.c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(0, 1, 5) // 2-4 never arrived
	a := h.waitAlert(t, rule, "radio-1", "firing")
	if a["value"] != 1.0 {
		t.Fatalf("gaps alert value %v, want 1 open gap", a["value"])
	}
	send(2, 3, 4) // the late resend
	h.waitAlert(t, rule, "radio-1", "resolved")
}
