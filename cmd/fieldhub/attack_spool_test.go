package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// TestAttackSpoolBitFlip: a hub with InfluxDB down acknowledges 1,000
// readings, which are then only in its spool; the hub stops, one byte in
// the middle of the spool segment is flipped, and the hub starts again
// with InfluxDB up. Every acknowledged reading but the one whose record the
// flip hit must reach InfluxDB (checked by value), the damaged bytes are in
// the quarantine file, and the corrupt metrics moved.
func TestAttackSpoolBitFlip(t *testing.T) {
	influx := influxtest.Start(t)
	env := map[string]string{
		"FIELDHUB_RATE_LIMIT": "100000", "FIELDHUB_RATE_BURST": "100000",
		"FIELDHUB_INFLUX_MAX_BACKOFF": "500ms", "FIELDHUB_SHUTDOWN_TIMEOUT": "1s",
	}
	h := startHub(t, influx, env)
	token := h.createDevice(t, "spool-flip")
	influx.Kill()
	s := newStreamer(t, h.url, token)
	const n = 1000
	for i := range n {
		if err := s.send(i); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if len(s.acked) != n {
		t.Fatalf("%d of %d readings acknowledged with InfluxDB down", len(s.acked), n)
	}
	dataDir := h.env["FIELDHUB_DATA_DIR"]
	h.stop(t)

	seg := spoolLargestSegment(t, filepath.Join(dataDir, "spool"))
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(seg, b, 0o640); err != nil {
		t.Fatal(err)
	}

	influx.Restart()
	env["FIELDHUB_DATA_DIR"] = dataDir
	h2 := startHub(t, influx, env)
	waitUntil(t, "spool replayed into InfluxDB", 60*time.Second, func() bool {
		m := scrape(t, h2)
		return m["fieldhub_spool_pending_readings"] == 0 && m["fieldhub_influx_up"] == 1
	})
	present := spoolPresent(t, influx, "spool-flip")
	var missing []int
	for _, v := range s.acked {
		if !present[v] {
			missing = append(missing, v)
		}
	}
	t.Logf("%d acknowledged, %d in InfluxDB after one flipped byte, missing %v", n, n-len(missing), missing[:min(len(missing), 10)])
	if len(missing) > 1 {
		t.Errorf("%d acknowledged readings lost to one flipped byte, want at most 1", len(missing))
	}
	m := scrape(t, h2)
	if m["fieldhub_spool_corrupt_records_total"] < 1 || m["fieldhub_spool_corrupt_bytes_total"] < 1 {
		t.Errorf("corrupt metrics did not move: records %v, bytes %v", m["fieldhub_spool_corrupt_records_total"], m["fieldhub_spool_corrupt_bytes_total"])
	}
	if q, err := os.ReadFile(filepath.Join(dataDir, "spool.quarantine")); err != nil || len(q) == 0 {
		t.Errorf("no quarantined bytes: %v", err)
	}
	if c := strings.Count(h2.stderr.String(), "spool: skipped corrupt records"); c != 1 {
		t.Errorf("%d log lines about the corrupt records, want 1", c)
	}
}

// TestAttackSpoolCheckpointInDamage: a bad sector covers the last reading
// InfluxDB confirmed and the first one it did not, so the spool checkpoint
// points into the damage. The hub restarts twice before InfluxDB is back:
// neither start may leave the checkpoint inside a record (the old hub
// exited on every later start with "influx writer: read spool: corrupt
// record"), and every acknowledged reading but the damaged unconfirmed one
// reaches InfluxDB.
func TestAttackSpoolCheckpointInDamage(t *testing.T) {
	influx := influxtest.Start(t)
	env := map[string]string{
		"FIELDHUB_RATE_LIMIT": "100000", "FIELDHUB_RATE_BURST": "100000",
		"FIELDHUB_INFLUX_MAX_BACKOFF": "500ms", "FIELDHUB_SHUTDOWN_TIMEOUT": "1s",
	}
	h := startHub(t, influx, env)
	token := h.createDevice(t, "spool-cp")
	s := newStreamer(t, h.url, token)
	for i := range 20 {
		if i == 10 {
			waitUntil(t, "readings 0-9 confirmed", 30*time.Second, func() bool {
				return scrape(t, h)["fieldhub_spool_pending_readings"] == 0
			})
			influx.Kill()
		}
		if err := s.send(i); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if len(s.acked) != 20 {
		t.Fatalf("%d of 20 readings acknowledged", len(s.acked))
	}
	dataDir := h.env["FIELDHUB_DATA_DIR"]
	h.stop(t)

	seg := spoolLargestSegment(t, filepath.Join(dataDir, "spool"))
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int // one record per reading: each message was appended alone
	for off := 0; off+20 <= len(b); off += 20 + int(binary.LittleEndian.Uint32(b[off:])) {
		offs = append(offs, off)
	}
	if len(offs) != 20 {
		t.Fatalf("%d records in the segment, want 20", len(offs))
	}
	b[offs[9]+25] ^= 1  // confirmed
	b[offs[10]+25] ^= 1 // not confirmed: the checkpoint is its start
	if err := os.WriteFile(seg, b, 0o640); err != nil {
		t.Fatal(err)
	}

	env["FIELDHUB_DATA_DIR"] = dataDir
	h2 := startHub(t, influx, env) // repairs the damage, InfluxDB still down
	if m := scrape(t, h2); m["fieldhub_spool_corrupt_records_total"] < 1 || m["fieldhub_spool_pending_readings"] != 9 {
		t.Errorf("first restart: corrupt records %v, pending %v; want >= 1, 9", m["fieldhub_spool_corrupt_records_total"], m["fieldhub_spool_pending_readings"])
	}
	h2.stop(t)

	h3 := startHub(t, influx, env)
	influx.Restart()
	waitUntil(t, "spool replayed into InfluxDB", 60*time.Second, func() bool {
		select {
		case err := <-h3.done:
			h3.cancel = nil
			t.Fatalf("hub exited on the second restart: %v", err)
		default:
		}
		m := scrape(t, h3)
		return m["fieldhub_spool_pending_readings"] == 0 && m["fieldhub_influx_up"] == 1
	})
	present := spoolPresent(t, influx, "spool-cp")
	for _, v := range s.acked {
		if v != 10 && !present[v] {
			t.Errorf("acknowledged reading %d not in InfluxDB", v)
		}
	}
	if strings.Contains(h3.stderr.String(), "corrupt record") {
		t.Errorf("second restart logged a corrupt record:\n%s", h3.stderr)
	}
}

// spoolLargestSegment returns the path of the biggest segment file in dir.
func spoolLargestSegment(t *testing.T, dir string) string {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	var best string
	var size int64
	for _, p := range segs {
		if fi, err := os.Stat(p); err == nil && fi.Size() > size {
			best, size = p, fi.Size()
		}
	}
	if best == "" {
		t.Fatalf("no non-empty segment in %s", dir)
	}
	return best
}

// spoolPresent returns the seq values of device's points in InfluxDB.
func spoolPresent(t *testing.T, influx *influxtest.Server, device string) map[int]bool {
	t.Helper()
	rows, err := influx.Query(fmt.Sprintf(`SELECT "n" FROM "telemetry" WHERE "device"='%s'`, device))
	if err != nil {
		t.Fatal(err)
	}
	have := make(map[int]bool, len(rows))
	for _, r := range rows {
		have[int(r[1].(float64))] = true
	}
	return have
}
