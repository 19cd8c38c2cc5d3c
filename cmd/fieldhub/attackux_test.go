package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestAttackUXTerminalEscapes: what a hostile device sends, and what an
// admin types as a device name, reaches the operator's terminal raw.
// A device sends a reading whose metric name is an escape sequence (the
// hub refuses it and keeps the refusal); `fieldhub device rejections`
// prints the refused name as it came, ESC included, and an embedded
// line break forges a row of the table. `fieldhub device list` prints a
// device name with ESC in it the same way. Nothing the CLI prints into a
// table may hold a control character it did not put there.
func TestAttackUXTerminalEscapes(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	token := h.createDevice(t, "evil-1")
	admin := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.adminToken}
	viewer := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.token(t, "viewer")}

	dev, _ := wsDevice(t, h, token)
	hostile := map[string]any{"type": "telemetry", "metrics": map[string]any{"\x1b]0;owned\x07\x1b[2J\nFORGED\trow": 1}}
	if err := dev.WriteJSON(hostile); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	var out string
	for {
		code, stdout, stderr := cliRun(t, viewer, "device", "rejections", "evil-1")
		if code != 0 {
			t.Fatalf("device rejections: exit %d %s", code, stderr)
		}
		if !strings.Contains(stdout, "(0 refused") {
			out = stdout
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the refusal never showed:\n%s", stdout)
		}
		time.Sleep(50 * time.Millisecond) // polling the API, not synchronising goroutines
	}
	if strings.ContainsAny(out, "\x1b\x07") {
		t.Errorf("device rejections printed the device's escape sequences raw: %q", out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "FORGED") {
			t.Errorf("a line break in the device's metric name forged a table row: %q", line)
		}
	}

	if st, m := h.api(t, "PATCH", "/api/v1/devices/evil-1", h.adminToken, map[string]any{"name": "\x1b[2J\x1b[31mpump"}); st != 200 {
		t.Logf("PATCH refused the name (%d %v): the API already guards it", st, m)
	}
	code, stdout, stderr := cliRun(t, admin, "device", "list")
	if code != 0 {
		t.Fatalf("device list: exit %d %s", code, stderr)
	}
	if strings.Contains(stdout, "\x1b") {
		t.Errorf("device list printed a device name's escape sequence raw: %q", stdout)
	}
}

// TestAttackUXCommandReasonEscapes: a device answers a command with an
// error string holding an escape sequence and a line break;
// `fieldhub command list` prints it raw in its RESULT / REASON column.
func TestAttackUXCommandReasonEscapes(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	token := h.createDevice(t, "evil-2")
	viewer := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.token(t, "viewer")}
	dev, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	st, cmd := h.send(t, h.token(t, "operator"), "evil-2", "", map[string]any{"name": "reboot"}, nil)
	if st != 202 {
		t.Fatalf("send: %d %v", st, cmd)
	}
	for {
		var f map[string]any
		if err := dev.ReadJSON(&f); err != nil {
			t.Fatal(err)
		}
		if f["type"] == "command" {
			_ = dev.WriteJSON(map[string]any{"type": "command_result", "id": f["id"], "status": "error", "error": "\x1b]0;owned\x07\x1b[2J\nFORGED"})
			break
		}
	}
	waitUntil(t, "command failed", loadWait, func() bool { return h.commandStatus(t, "evil-2", cmd["id"].(string)) == "failed" })
	code, stdout, stderr := cliRun(t, viewer, "command", "list", "evil-2")
	if code != 0 {
		t.Fatalf("command list: exit %d %s", code, stderr)
	}
	if strings.ContainsAny(stdout, "\x1b\x07") || strings.Contains(stdout, "\nFORGED") {
		t.Errorf("command list printed the device's escape sequences / line break raw: %q", stdout)
	}
}
