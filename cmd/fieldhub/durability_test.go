package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// streamer is a WebSocket device that sends numbered readings and records
// which ones the hub acknowledged.
type streamer struct {
	c     *websocket.Conn
	acked []int
	base  int64
}

func newStreamer(t *testing.T, hubURL, token string) *streamer {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(hubURL, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &streamer{c: c, base: time.Now().Add(-2 * time.Minute).UnixMilli()}
}

// send sends reading n (a batch of one) and waits for the hub's answer.
func (s *streamer) send(n int) error {
	msg := fmt.Sprintf(`{"type":"telemetry","id":"%d","ts":%d,"metrics":{"n":%d}}`, n, s.base+int64(n), n)
	if err := s.c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		return err
	}
	var f map[string]any
	_ = s.c.SetReadDeadline(time.Now().Add(loadWait))
	if err := s.c.ReadJSON(&f); err != nil {
		return err
	}
	if f["type"] == "ack" {
		s.acked = append(s.acked, n)
	}
	return nil
}

// assertAllAckedPresent checks that every acknowledged reading is in
// InfluxDB, by its seq value, waiting up to 2*loadWait for the writers (a
// write InfluxDB refused for a moment is retried after a backoff).
func assertAllAckedPresent(t *testing.T, influx *influxtest.Server, device string, acked []int) {
	t.Helper()
	if len(acked) == 0 {
		t.Fatal("nothing was acknowledged")
	}
	var missing []int
	deadline := time.Now().Add(2 * loadWait)
	for {
		rows, err := influx.Query(fmt.Sprintf(`SELECT "n" FROM "telemetry" WHERE "device"='%s'`, device))
		if err == nil {
			have := make(map[int]bool, len(rows))
			for _, r := range rows {
				have[int(r[1].(float64))] = true
			}
			missing = missing[:0]
			for _, n := range acked {
				if !have[n] {
					missing = append(missing, n)
				}
			}
			if len(missing) == 0 {
				t.Logf("%d acknowledged readings, all present", len(acked))
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d acknowledged readings missing from InfluxDB after %s, e.g. %v (query error: %v)", len(missing), 2*loadWait, missing[:min(len(missing), 10)], err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestInfluxOutage kills influxd for 20 s while a device streams: ingest
// goes on into the spool, readiness says so, and afterwards every
// acknowledged reading is in InfluxDB.
func TestInfluxOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("20 s outage; run without -short")
	}
	influx := influxtest.Start(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_INFLUX_MAX_BACKOFF": "500ms", "FIELDHUB_RATE_LIMIT": "100000", "FIELDHUB_RATE_BURST": "100000"})
	_, m := h.api(t, "POST", "/api/v1/devices", h.adminToken, map[string]any{"id": "meter-1"})
	s := newStreamer(t, h.url, m["token"].(string))
	n := 0
	next := func() {
		t.Helper()
		if err := s.send(n); err != nil {
			t.Fatalf("send %d: %v", n, err)
		}
		n++
	}
	for range 200 {
		next()
	}
	influx.Kill()
	// The outage lasts 20 s, and past that until readiness has said
	// "spooling": how many readings fit in 20 s depends on the machine,
	// so readiness is asked every 20 readings and the outage ends on the
	// event, not on a count the window happened to allow.
	outageEnd := time.Now().Add(20 * time.Second)
	spoolingBy := time.Now().Add(loadWait)
	sawSpooling := false
	for time.Now().Before(outageEnd) || !sawSpooling {
		next()
		if n%20 == 0 && !sawSpooling {
			_, ready := h.api(t, "GET", "/readyz", "", nil)
			if c := ready["checks"].(map[string]any)["influxdb"].(map[string]any); c["status"] == "spooling" {
				sawSpooling = true
			}
		}
		if !sawSpooling && time.Now().After(spoolingBy) {
			t.Fatalf("readiness never reported spooling in %s of outage", loadWait)
		}
	}
	t.Logf("%d readings sent before and during the outage", n)
	influx.Restart()
	for range 200 {
		next()
	}
	if len(s.acked) != n {
		t.Errorf("%d of %d readings acknowledged: ingest should not depend on InfluxDB", len(s.acked), n)
	}
	assertAllAckedPresent(t, influx, "meter-1", s.acked)
}

// TestHubCrashReplaysSpool SIGKILLs a hub subprocess with readings still in
// its spool (InfluxDB is down), then restarts both: every acknowledged
// reading ends up in InfluxDB.
func TestHubCrashReplaysSpool(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the hub binary; run without -short")
	}
	influx := influxtest.Start(t)
	bin := filepath.Join(t.TempDir(), "fieldhub")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dataDir := t.TempDir()
	addr := freePort(t)
	admin := "crash-test-admin"
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "serve")
		cmd.Env = append(os.Environ(),
			"FIELDHUB_HTTP_ADDR="+addr, "FIELDHUB_MQTT_ADDR=off", "FIELDHUB_DATA_DIR="+dataDir,
			"FIELDHUB_INFLUX_URL="+influx.URL, "FIELDHUB_INFLUX_BUCKET="+influx.Bucket,
			"FIELDHUB_ADMIN_TOKEN="+admin, "FIELDHUB_INFLUX_MAX_BACKOFF=500ms",
			"FIELDHUB_RATE_LIMIT=10000", "FIELDHUB_RATE_BURST=10000")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		waitUntil(t, "hub health", loadWait, func() bool {
			resp, err := http.Get("http://" + addr + "/healthz")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil && resp.StatusCode == 200
		})
		return cmd
	}
	hubURL := "http://" + addr
	proc := start()
	h := &hub{url: hubURL} // only its api helper is used
	st, m := h.api(t, "POST", "/api/v1/devices", admin, map[string]any{"id": "pump-9"})
	if st != 201 {
		t.Fatalf("create device: %d %v", st, m)
	}
	s := newStreamer(t, hubURL, m["token"].(string))
	for i := range 100 {
		if err := s.send(i); err != nil {
			t.Fatal(err)
		}
	}
	assertAllAckedPresent(t, influx, "pump-9", s.acked)
	influx.Kill()
	for i := 100; i < 1100; i++ {
		if err := s.send(i); err != nil {
			t.Fatal(err)
		}
	}
	// Crash with 1,000 acknowledged readings only in the spool.
	if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = proc.Wait()
	influx.Restart()
	start()
	assertAllAckedPresent(t, influx, "pump-9", s.acked)
}
