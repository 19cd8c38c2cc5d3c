package main

// Attacks on the integrity promise: every acknowledged reading is a
// distinct stored point, and whatever InfluxDB would refuse or silently
// change is refused before the ack, with a field path. Each test runs the
// real hub against a real influxd and checks what InfluxDB holds.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// integrityDial connects a device over the WebSocket; integritySend then
// writes one frame and returns the hub's answer to it.
func integrityDial(t *testing.T, h *hub, token string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func integritySend(t *testing.T, c *websocket.Conn, msg string) map[string]any {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	for {
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		var f map[string]any
		if err := c.ReadJSON(&f); err != nil {
			t.Fatalf("answer to %.80s: %v", msg, err)
		}
		if f["type"] == "ack" || f["type"] == "error" {
			return f
		}
	}
}

// integrityPost sends one telemetry message over the HTTP fallback.
func integrityPost(t *testing.T, h *hub, token, msg string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", h.url+"/api/v1/telemetry", strings.NewReader(msg))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return 0, nil
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// integrityRows returns the InfluxDB rows of an InfluxQL query, failing the
// test on a query error.
func integrityRows(t *testing.T, influx *influxtest.Server, q string) [][]any {
	t.Helper()
	rows, err := influx.Query(q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return rows
}

// integrityInfluxWrite writes line protocol straight into InfluxDB, as
// another client of the same database would.
func integrityInfluxWrite(t *testing.T, influx *influxtest.Server, lines string) {
	t.Helper()
	resp, err := http.Post(influx.URL+"/write?db="+influx.DB, "text/plain", strings.NewReader(lines))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("write to influxdb: %d", resp.StatusCode)
	}
}

// integrityFieldKeys returns the field keys InfluxDB has for telemetry.
func integrityFieldKeys(t *testing.T, influx *influxtest.Server) map[string]string {
	t.Helper()
	keys := map[string]string{}
	for _, r := range integrityRows(t, influx, `SHOW FIELD KEYS FROM "telemetry"`) {
		keys[r[0].(string)] = r[1].(string)
	}
	return keys
}

// integrityMetric returns the value of a Prometheus sample line of the
// hub's /metrics, or "" if it is not there.
func integrityMetric(t *testing.T, h *hub, sample string) string {
	t.Helper()
	resp, err := http.Get(h.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			return v
		}
	}
	return ""
}

func integrityNoDeadLetters(t *testing.T, h *hub) {
	t.Helper()
	if v := integrityMetric(t, h, "fieldhub_influx_points_dead_lettered_total"); v != "0" {
		t.Errorf("fieldhub_influx_points_dead_lettered_total = %q, want 0", v)
	}
}

func integrityWaitCount(t *testing.T, influx *influxtest.Server, device, field string, want int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d %s points of %s", want, field, device), 30*time.Second, func() bool {
		n, _ := influx.Count(device, field)
		return n >= want
	})
	// Then give InfluxDB nothing to hide: the count must be exact.
	if n, err := influx.Count(device, field); err != nil || n != want {
		t.Fatalf("%s points of %s: %d (%v), want %d", field, device, n, err, want)
	}
}

// TestAttackTimestamplessBatchCollapses: a batch of readings without ts
// used to be acked and stored as 1 point (all got the same millisecond).
// Each acked reading must be its own point, also beside readings with ts.
func TestAttackTimestamplessBatchCollapses(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	c := integrityDial(t, h, h.createDevice(t, "nots-batch"))

	ack := integritySend(t, c, `{"type":"telemetry","id":"b1","readings":[{"metrics":{"v":1}},{"metrics":{"v":2}},{"metrics":{"v":3}},{"metrics":{"v":4}},{"metrics":{"v":5}}]}`)
	if ack["type"] != "ack" {
		t.Fatalf("batch: %v", ack)
	}
	integrityWaitCount(t, influx, "nots-batch", "v", 5)
	rows := integrityRows(t, influx, `SELECT "v" FROM "telemetry" WHERE "device" = 'nots-batch'`)
	for i, r := range rows { // in time order: the batch order
		if r[1].(float64) != float64(i+1) {
			t.Errorf("point %d = %v, want %d (time order = batch order)", i, r[1], i+1)
		}
	}

	// Mixed: readings with ts keep it; those without stay distinct.
	ts := time.Now().Add(-time.Minute).UnixMilli()
	ack = integritySend(t, c, fmt.Sprintf(`{"type":"telemetry","id":"b2","readings":[{"metrics":{"w":1}},{"ts":%d,"metrics":{"w":2}},{"metrics":{"w":3}},{"metrics":{"w":4}}]}`, ts))
	if ack["type"] != "ack" {
		t.Fatalf("mixed batch: %v", ack)
	}
	integrityWaitCount(t, influx, "nots-batch", "w", 4)
	if rows := integrityRows(t, influx, fmt.Sprintf(`SELECT "w" FROM "telemetry" WHERE "device" = 'nots-batch' AND time = %dms`, ts)); len(rows) != 1 || rows[0][1].(float64) != 2 {
		t.Errorf("reading with ts: %v, want w=2 at its own ts", rows)
	}
	integrityNoDeadLetters(t, h)
}

// TestAttackTimestamplessConcurrent: 10 concurrent messages without ts from
// one device, over the WebSocket and the HTTP fallback at once, used to be
// 10 acks and 9 points. And a device ts equal to the millisecond of a
// hub-assigned time must not overwrite it.
func TestAttackTimestamplessConcurrent(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	token := h.createDevice(t, "nots-conc")
	conns := make([]*websocket.Conn, 0, 5)
	for range 5 { // each new socket supersedes the last; keep only the current one
		conns = append(conns, integrityDial(t, h, token))
	}
	// The hub registers a socket's session after its handshake, so two
	// registrations can land in either order. Once each of the first four
	// has been closed as superseded, the one never superseded, the last
	// registered, is the fifth.
	for i, c := range conns[:len(conns)-1] {
		_ = c.SetReadDeadline(time.Now().Add(loadWait))
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				if !websocket.IsCloseError(err, 4000) {
					t.Fatalf("socket %d: %v, want close 4000 (superseded)", i, err)
				}
				break
			}
		}
	}
	ws := conns[len(conns)-1]

	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := 0
	start := make(chan struct{})
	for i := range 5 {
		wg.Go(func() {
			<-start
			st, m := integrityPost(t, h, token, fmt.Sprintf(`{"id":"h%d","metrics":{"n":%d}}`, i, i))
			mu.Lock()
			defer mu.Unlock()
			if st == 200 {
				acked++
			} else {
				t.Errorf("http %d: %d %v", i, st, m)
			}
		})
	}
	close(start)
	for i := 5; i < 10; i++ { // one writer on the socket; the answers come in order
		if err := ws.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"type":"telemetry","id":"w%d","metrics":{"n":%d}}`, i, i)); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
		var f map[string]any
		if err := ws.ReadJSON(&f); err != nil || f["type"] != "ack" {
			t.Fatalf("ws answer %v %v", f, err)
		}
		mu.Lock()
		acked++
		mu.Unlock()
	}
	wg.Wait()
	if acked != 10 {
		t.Fatalf("%d of 10 acked", acked)
	}
	integrityWaitCount(t, influx, "nots-conc", "n", 10)

	// A device ts equal to a hub-assigned time's millisecond: two points.
	ack := integritySend(t, ws, `{"type":"telemetry","id":"x1","metrics":{"same":1}}`)
	if ack["type"] != "ack" {
		t.Fatal(ack)
	}
	integrityWaitCount(t, influx, "nots-conc", "same", 1)
	rows := integrityRows(t, influx, `SELECT "same" FROM "telemetry" WHERE "device" = 'nots-conc'`)
	ms := int64(rows[0][0].(float64)) // influxtest asks for epoch=ms
	ack = integritySend(t, ws, fmt.Sprintf(`{"type":"telemetry","id":"x2","ts":%d,"metrics":{"same":2}}`, ms))
	if ack["type"] != "ack" {
		t.Fatal(ack)
	}
	integrityWaitCount(t, influx, "nots-conc", "same", 2)
	// The same device ts twice is an idempotent resend: the later wins.
	ack = integritySend(t, ws, fmt.Sprintf(`{"type":"telemetry","id":"x3","ts":%d,"metrics":{"same":3}}`, ms))
	if ack["type"] != "ack" {
		t.Fatal(ack)
	}
	waitUntil(t, "resend stored", 30*time.Second, func() bool {
		rows, _ := influx.Query(`SELECT "same" FROM "telemetry" WHERE "device" = 'nots-conc' AND "same" = 3`)
		return len(rows) == 1
	})
	if n, _ := influx.Count("nots-conc", "same"); n != 2 {
		t.Errorf("after a resend with the same ts: %d points, want 2", n)
	}
	integrityNoDeadLetters(t, h)
}

// TestAttackReservedMetricNames: a metric named "time" was acked and
// silently dropped by InfluxDB; one named "device" made every WHERE
// device='x' miss. Reserved names are refused with the field path.
func TestAttackReservedMetricNames(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_TAG_LABELS": "site"})
	st, m := h.api(t, "POST", "/api/v1/devices", h.adminToken, map[string]any{"id": "names-1", "labels": map[string]string{"site": "north"}})
	if st != 201 {
		t.Fatalf("create: %d %v", st, m)
	}
	c := integrityDial(t, h, m["token"].(string))
	for _, name := range []string{"time", "TIME", "device", "_x", "_value", "site"} {
		t.Run(name, func(t *testing.T) {
			f := integritySend(t, c, fmt.Sprintf(`{"type":"telemetry","id":"r","metrics":{"ok":1,%q:2}}`, name))
			errs, _ := f["errors"].([]any)
			if f["type"] != "error" || f["code"] != "invalid" || len(errs) != 1 || errs[0].(map[string]any)["field"] != "metrics."+name {
				t.Fatalf("metric %q: %v, want invalid with field metrics.%s", name, f, name)
			}
			if !strings.Contains(f["message"].(string), "reserved") {
				t.Errorf("message %q does not say reserved", f["message"])
			}
		})
	}
	f := integritySend(t, c, `{"type":"telemetry","id":"b","readings":[{"metrics":{"ok":1}},{"metrics":{"time":1}}]}`)
	if f["code"] != "invalid" || !strings.Contains(f["message"].(string), "readings[1].metrics.time") {
		t.Errorf("batch with time: %v", f)
	}
	// Nothing of the refused messages is stored; the next good one is,
	// and WHERE device='names-1' finds it.
	if f := integritySend(t, c, `{"type":"telemetry","id":"g","metrics":{"ok":7}}`); f["type"] != "ack" {
		t.Fatal(f)
	}
	integrityWaitCount(t, influx, "names-1", "ok", 1)
	if rows := integrityRows(t, influx, `SELECT * FROM "telemetry" WHERE "device" = 'names-1' AND "site" = 'north'`); len(rows) != 1 {
		t.Errorf("rows of names-1: %v, want the one good reading", rows)
	}
	for k := range integrityFieldKeys(t, influx) {
		if k != "ok" {
			t.Errorf("InfluxDB has field %q", k)
		}
	}
	integrityNoDeadLetters(t, h)
}

// TestAttackTypeConflict: {"temp":"hot","TEMP":1} after temp was a number
// was acked, then InfluxDB refused the point and the whole reading (the
// valid TEMP too) went to the dead-letter file. It is refused before the
// ack now, and of two concurrent first uses of a new name with different
// types exactly one is acked.
func TestAttackTypeConflict(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	c := integrityDial(t, h, h.createDevice(t, "types-1"))
	if f := integritySend(t, c, `{"type":"telemetry","id":"1","metrics":{"temp":20}}`); f["type"] != "ack" {
		t.Fatal(f)
	}
	f := integritySend(t, c, `{"type":"telemetry","id":"2","metrics":{"temp":"hot","TEMP":1}}`)
	if f["code"] != "invalid" || f["message"] != "metrics.temp: is a number on this hub, got a string" {
		t.Fatalf("conflict: %v", f)
	}
	f = integritySend(t, c, `{"type":"telemetry","id":"3","readings":[{"metrics":{"mode":1}},{"metrics":{"mode":true}}]}`)
	if f["code"] != "invalid" || f["message"] != "readings[1].metrics.mode: is a number on this hub, got a boolean" {
		t.Errorf("conflict inside one message: %v", f)
	}
	if f := integritySend(t, c, `{"type":"telemetry","id":"4","metrics":{"temp":21}}`); f["type"] != "ack" {
		t.Fatal(f)
	}
	integrityWaitCount(t, influx, "types-1", "temp", 2)
	if n, _ := influx.Count("types-1", "TEMP"); n != 0 {
		t.Errorf("%d TEMP points stored from a refused message", n)
	}

	// Concurrent first uses: devices a and b race with the same new names,
	// a with numbers, b with strings. One message wins, the other is
	// refused; InfluxDB never sees both.
	ca := integrityDial(t, h, h.createDevice(t, "types-a"))
	cb := integrityDial(t, h, h.createDevice(t, "types-b"))
	for round := range 10 {
		var nums, strs []string
		for i := range 5 {
			n := fmt.Sprintf("race%d_%d", round, i)
			nums = append(nums, fmt.Sprintf("%q:%d", n, i))
			strs = append(strs, fmt.Sprintf("%q:\"s%d\"", n, i))
		}
		var wg sync.WaitGroup
		answers := make([]map[string]any, 2)
		start := make(chan struct{})
		for i, conn := range []*websocket.Conn{ca, cb} {
			msg := `{"type":"telemetry","id":"r","metrics":{` + strings.Join(nums, ",") + `}}`
			if i == 1 {
				msg = `{"type":"telemetry","id":"r","metrics":{` + strings.Join(strs, ",") + `}}`
			}
			wg.Go(func() {
				<-start
				if err := conn.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
					t.Error(err)
					return
				}
				_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
				if err := conn.ReadJSON(&answers[i]); err != nil {
					t.Error(err)
				}
			})
		}
		close(start)
		wg.Wait()
		if acks := btoi(answers[0]["type"] == "ack") + btoi(answers[1]["type"] == "ack"); acks != 1 {
			t.Fatalf("round %d: %d of 2 conflicting first uses acked: %v", round, acks, answers)
		}
	}
	// Every acked reading reached InfluxDB: nothing dead-lettered.
	if f := integritySend(t, c, `{"type":"telemetry","id":"5","metrics":{"temp":22}}`); f["type"] != "ack" {
		t.Fatal(f)
	}
	integrityWaitCount(t, influx, "types-1", "temp", 3)
	waitUntil(t, "race points written", 30*time.Second, func() bool {
		a, _ := influx.Count("types-a", "race9_0")
		b, _ := influx.Count("types-b", "race9_0")
		return a+b == 1
	})
	integrityNoDeadLetters(t, h)
	if v := integrityMetric(t, h, `fieldhub_metric_schema_rejections_total{reason="type_conflict"}`); v != "12" {
		t.Errorf("type_conflict rejections = %q, want 12", v)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestAttackTypeKnownAfterRestart: the type of a metric survives a restart
// (the store), and a hub with an empty store learns it from InfluxDB,
// including integer fields another writer created.
func TestAttackTypeKnownAfterRestart(t *testing.T) {
	influx := influxtest.Start(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	env := map[string]string{"FIELDHUB_DATA_DIR": dataDir}
	h := startHub(t, influx, env)
	env["FIELDHUB_ADMIN_TOKEN"] = h.adminToken
	token := h.createDevice(t, "restart-1")
	c := integrityDial(t, h, token)
	if f := integritySend(t, c, `{"type":"telemetry","id":"1","metrics":{"temp":20,"state":"idle"}}`); f["type"] != "ack" {
		t.Fatal(f)
	}
	integrityWaitCount(t, influx, "restart-1", "temp", 1)
	c.Close()
	h.stop(t)

	// Same data dir, InfluxDB down at start: the store knows.
	influx.Stop()
	h = startHub(t, influx, env)
	c = integrityDial(t, h, token)
	if f := integritySend(t, c, `{"type":"telemetry","id":"2","metrics":{"temp":"hot"}}`); f["message"] != "metrics.temp: is a number on this hub, got a string" {
		t.Errorf("after restart: %v", f)
	}
	if f := integritySend(t, c, `{"type":"telemetry","id":"3","metrics":{"state":1}}`); f["message"] != "metrics.state: is a string on this hub, got a number" {
		t.Errorf("after restart: %v", f)
	}
	c.Close()
	h.stop(t)
	influx.Restart()

	// Fresh data dir: InfluxDB knows, and says count is an integer field
	// another client wrote, which the hub (numbers as floats) cannot use.
	integrityInfluxWrite(t, influx, `telemetry,device=other count=5i`)
	h = startHub(t, influx, nil)
	c = integrityDial(t, h, h.createDevice(t, "restart-2"))
	if f := integritySend(t, c, `{"type":"telemetry","id":"4","metrics":{"temp":true}}`); f["message"] != "metrics.temp: is a number on this hub, got a boolean" {
		t.Errorf("learned from InfluxDB: %v", f)
	}
	if f := integritySend(t, c, `{"type":"telemetry","id":"5","metrics":{"count":1}}`); f["code"] != "invalid" || !strings.Contains(f["message"].(string), "metrics.count: is an integer") {
		t.Errorf("integer field: %v", f)
	}
	if f := integritySend(t, c, `{"type":"telemetry","id":"6","metrics":{"temp":23}}`); f["type"] != "ack" {
		t.Fatal(f)
	}
	integrityWaitCount(t, influx, "restart-2", "temp", 1)
	integrityNoDeadLetters(t, h)
}

// TestAttackMetricNameFlood: one device sending 100 new metric names per
// message grew the hub's memory without bound (+24.6 MB in 22 s). The
// device's names are bounded (FIELDHUB_MAX_METRICS_PER_DEVICE) and so are
// the fleet's (FIELDHUB_MAX_METRIC_NAMES).
func TestAttackMetricNameFlood(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_MAX_METRIC_NAMES": "350", "FIELDHUB_RATE_LIMIT": "1000", "FIELDHUB_RATE_BURST": "1000"})
	c := integrityDial(t, h, h.createDevice(t, "flood-1"))
	msg := func(prefix string, from int) string {
		var b bytes.Buffer
		fmt.Fprintf(&b, `{"type":"telemetry","id":"%s%d","metrics":{`, prefix, from)
		for i := range 100 {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"%s%d":%d`, prefix, from+i, i)
		}
		b.WriteString("}}")
		return b.String()
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	for i := range 2 {
		if f := integritySend(t, c, msg("m", i*100)); f["type"] != "ack" {
			t.Fatalf("message %d: %v", i, f)
		}
	}
	f := integritySend(t, c, msg("m", 200))
	if f["code"] != "invalid" || !strings.Contains(f["message"].(string), "at most 256 distinct metric names") {
		t.Fatalf("past 256 names: %v", f)
	}
	before := heap()
	refused := 0
	for i := 3; i < 300; i++ {
		if f := integritySend(t, c, msg("m", i*100)); f["code"] == "invalid" {
			refused++
		}
	}
	after := heap()
	t.Logf("heap over 297 messages of 100 new names: %.1f MB -> %.1f MB", float64(before)/1e6, float64(after)/1e6)
	if refused != 297 {
		t.Errorf("%d of 297 flood messages refused", refused)
	}
	if grew := int64(after) - int64(before); grew > 2<<20 { // unbounded: +4.1 MB here
		t.Errorf("heap grew %d bytes under a refused flood", grew)
	}
	// Known names still work.
	if f := integritySend(t, c, `{"type":"telemetry","id":"k","metrics":{"m5":1}}`); f["type"] != "ack" {
		t.Fatal(f)
	}
	// The fleet's bound: another device may add names up to 350 in all.
	c2 := integrityDial(t, h, h.createDevice(t, "flood-2"))
	if f := integritySend(t, c2, msg("n", 0)); f["type"] != "ack" {
		t.Fatal(f)
	}
	f = integritySend(t, c2, msg("n", 100))
	if f["code"] != "invalid" || !strings.Contains(f["message"].(string), "at most 350 are allowed") {
		t.Fatalf("past 350 fleet names: %v", f)
	}
	integrityWaitCount(t, influx, "flood-1", "m5", 2)
	// flood-2's names are in a later write than flood-1's m5: wait for
	// them too (on a loaded machine the field keys were counted between).
	integrityWaitCount(t, influx, "flood-2", "n0", 1)
	if keys := integrityFieldKeys(t, influx); len(keys) != 300 {
		t.Errorf("InfluxDB has %d field keys, want 300", len(keys))
	}
	if v := integrityMetric(t, h, `fieldhub_metric_schema_rejections_total{reason="device_metrics"}`); v != "298" {
		t.Errorf("device_metrics rejections = %q, want 298", v)
	}
	if v := integrityMetric(t, h, `fieldhub_metric_schema_rejections_total{reason="metric_names"}`); v != "1" {
		t.Errorf("metric_names rejections = %q, want 1", v)
	}
	integrityNoDeadLetters(t, h)
}

// TestAttackRefusedMessageClaimsNothing: while InfluxDB is down and the
// spool is full, a device sends {"temp":"hot","x":1,...}; the hub answers
// overloaded and nothing is stored, so nothing may be decided by it: once
// the spool drains, {"temp":21} is accepted and stored, and the refused
// message used none of the device's name budget.
func TestAttackRefusedMessageClaimsNothing(t *testing.T) {
	influx := influxtest.Start(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_SPOOL_MAX_BYTES": "1048576", "FIELDHUB_RATE_LIMIT": "100000", "FIELDHUB_RATE_BURST": "100000",
		"FIELDHUB_MAX_METRICS_PER_DEVICE": "4"})
	filler := h.createDevice(t, "filler")
	dev := h.createDevice(t, "claimer")
	influx.Kill()
	// Fill the spool to the last few bytes: batches of 1000, 100, 10, 1.
	for _, n := range []int{1000, 100, 10, 1} {
		var body strings.Builder
		body.WriteString(`{"readings":[`)
		for i := range n {
			if i > 0 {
				body.WriteString(",")
			}
			fmt.Fprintf(&body, `{"metrics":{"padding_metric_name":%d,"another_padding_metric":%d}}`, i, i)
		}
		body.WriteString(`]}`)
		full := false
		for range 200 {
			if st, _ := integrityPost(t, h, filler, body.String()); st != 200 {
				full = st == 503
				break
			}
		}
		if !full {
			t.Fatalf("the spool never refused a batch of %d", n)
		}
	}
	long := strings.Repeat("h", 200) // longer than the room the fillers left
	if st, e := integrityPost(t, h, dev, `{"metrics":{"temp":"`+long+`","x":1,"y":2,"z":3}}`); st != 503 || e["code"] != "overloaded" {
		t.Fatalf("full spool answered %d %v, want 503 overloaded", st, e)
	}
	influx.Restart()
	waitUntil(t, "temp:21 accepted once the spool drains", 120*time.Second, func() bool {
		st, e := integrityPost(t, h, dev, `{"metrics":{"temp":21}}`)
		if st == 400 {
			t.Fatalf("temp:21 refused: %v", e)
		}
		return st == 200
	})
	// 4 names per device: temp plus three new ones fit only if the refused
	// x, y, z were given back.
	waitUntil(t, "three new names accepted", 120*time.Second, func() bool {
		st, e := integrityPost(t, h, dev, `{"metrics":{"a":1,"b":2,"c":3}}`)
		if st == 400 {
			t.Fatalf("name budget after a refused message: %v", e)
		}
		return st == 200
	})
	integrityWaitCount(t, influx, "claimer", "temp", 1)
	if typ := integrityFieldKeys(t, influx)["temp"]; typ != "float" {
		t.Errorf("temp stored as %q, want float", typ)
	}
	integrityNoDeadLetters(t, h)
}
