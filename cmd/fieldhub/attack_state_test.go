package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestAttackStateHugeAndDeep: a 10 MB patch is refused at the frame
// limit before any decoding (WebSocket 1009, HTTP 413); a patch nested
// 100,000 deep and a 100-keys-by-depth-5 document that explodes past
// the size bound are refused invalid; nothing changes.
func TestAttackStateHugeAndDeep(t *testing.T) {
	h := startHub(t, startInflux(t), nil)
	token := h.createDevice(t, "atk-1")
	huge := `{"a":"` + strings.Repeat("x", 10<<20) + `"}`

	st, _, _ := h.stateReq(t, "PATCH", "/api/v1/state/reported", token, huge, nil)
	if st != http.StatusRequestEntityTooLarge {
		t.Fatalf("10 MB over HTTP: %d", st)
	}
	d := dialState(t, h, token)
	_ = d.c.WriteMessage(websocket.TextMessage, []byte(`{"type":"state","id":"h","reported":`+huge+`}`))
	waitUntil(t, "socket closed for the 10 MB frame", loadWait, func() bool {
		select {
		case _, ok := <-d.frames:
			return !ok
		default:
			return false
		}
	})
	if _, _, err := d.c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseMessageTooBig) && err == nil {
		t.Fatalf("close: %v", err)
	}

	deep := strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000)
	start := time.Now()
	st, _, m := h.stateReq(t, "PATCH", "/api/v1/state/reported", token, deep[:200<<10-1], nil)
	if st != 400 {
		t.Fatalf("deep patch: %d %v", st, m)
	}
	t.Logf("a 200 KiB patch nested 40,000 deep refused in %s (%v)", time.Since(start), m["code"])

	// 100 keys, each 5 deep: small patches, a document past 8 KiB.
	var refused map[string]any
	for i := range 100 {
		k := "k" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		st, _, m := h.stateReq(t, "PATCH", "/api/v1/state/reported", token, `{"`+k+`":{"a":{"b":{"c":{"d":"`+strings.Repeat("v", 60)+`"}}}}}`, nil)
		if st == 400 {
			refused = m
			break
		}
		if st != 200 {
			t.Fatalf("patch %d: %d %v", i, st, m)
		}
	}
	errs, _ := refused["errors"].([]any)
	if refused == nil || refused["code"] != "invalid" || len(errs) != 1 || errs[0].(map[string]any)["field"] != "reported" {
		t.Fatalf("the exploding document was not refused: %v", refused)
	}
	_, _, v := h.stateReq(t, "GET", "/api/v1/state", token, "", nil)
	if b, _ := json.Marshal(doc(v, "reported")["state"]); len(b) > 8192 {
		t.Fatalf("reported document is %d bytes", len(b))
	}
}

// TestAttackStateCrossDevice: over MQTT a device can neither write
// another device's reported state nor subscribe to its desired state.
func TestAttackStateCrossDevice(t *testing.T) {
	h := startHub(t, startInflux(t), nil)
	evilTok := h.createDevice(t, "evil")
	h.createDevice(t, "victim")
	h.patchDesired(t, h.adminToken, "victim", "0", `{"secret_key":"s3cr3t"}`)
	d := dialMQTTState(t, h, "evil", evilTok, true)
	d.subscribe(t, "devices/evil/errors")
	if q := d.subscribe(t, "devices/victim/state/desired"); q != 0x80 {
		t.Fatalf("subscribe to another device's desired state granted %d", q)
	}
	d.publish(t, "devices/victim/state/reported", `{"owned":true}`)
	if e := d.next(t, "devices/evil/errors"); e["code"] != "invalid" {
		t.Fatalf("cross-device publish: %v", e)
	}
	select {
	case m := <-d.msgs:
		if strings.Contains(m.Topic(), "victim") {
			t.Fatalf("got the victim's %s: %s", m.Topic(), m.Payload())
		}
	default:
	}
	_, _, v := h.stateReq(t, "GET", "/api/v1/devices/victim/state", h.adminToken, "", nil)
	if doc(v, "reported")["version"] != 0.0 {
		t.Fatalf("the victim's reported state changed: %v", v)
	}
}

// TestAttackStateRevokedPoll: a long poll on the desired state ends at
// once (401) when the token that opened it is rotated without grace.
func TestAttackStateRevokedPoll(t *testing.T) {
	h := startHub(t, startInflux(t), nil)
	token := h.createDevice(t, "rev-1")
	type res struct {
		st  int
		dur time.Duration
	}
	out := make(chan res, 1)
	go func() {
		start := time.Now()
		req, _ := http.NewRequest("GET", h.url+"/api/v1/state/desired?version=0&wait=60s", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			out <- res{0, 0}
			return
		}
		resp.Body.Close()
		out <- res{resp.StatusCode, time.Since(start)}
	}()
	// Rotated once the poll is open (authenticated with the old token).
	waitUntil(t, "poll open", loadWait, func() bool {
		return strings.Contains(h.stderr.String(), `msg="device long poll started" device=rev-1 poll=state`)
	})
	if st, m := h.api(t, "POST", "/api/v1/devices/rev-1/token", h.adminToken, map[string]any{}); st != 200 && st != 201 {
		t.Fatalf("rotate: %d %v", st, m)
	}
	select {
	case r := <-out:
		if r.st != http.StatusUnauthorized {
			t.Fatalf("poll after rotation: %d", r.st)
		}
		t.Logf("poll ended %s after it started", r.dur)
	case <-time.After(loadWait):
		t.Fatal("the revoked token's long poll kept waiting")
	}
}

// TestAttackStateFlood: reported patches are rate-limited like
// telemetry: a flood gets rate_limited error frames, not an unbounded
// stream of store writes.
func TestAttackStateFlood(t *testing.T) {
	h := startHub(t, startInflux(t), map[string]string{"FIELDHUB_RATE_LIMIT": "5", "FIELDHUB_RATE_BURST": "10"})
	token := h.createDevice(t, "flood-1")
	d := dialState(t, h, token)
	// Bursts of 20, each answered before the next: a device that reads
	// its answers (one that does not is cut as a slow consumer, a
	// different bound).
	const n, burst = 200, 20
	limited, acked := 0, 0
	for sent := 0; sent < n; sent += burst {
		for i := range burst {
			if err := d.c.WriteJSON(map[string]any{"type": "state", "id": "f", "reported": map[string]any{"n": sent + i}}); err != nil {
				t.Fatal(err)
			}
		}
		for limited+acked < sent+burst {
			select {
			case f, ok := <-d.frames:
				if !ok {
					t.Fatalf("socket closed after %d acks, %d limited\n%s", acked, limited, grepLines(h.stderr.String(), "flood-1"))
				}
				switch {
				case f["type"] == "ack":
					acked++
				case f["type"] == "error" && f["code"] == "rate_limited":
					limited++
				}
			case <-time.After(loadWait):
				t.Fatalf("%d acks, %d limited of %d", acked, limited, n)
			}
		}
	}
	_, _, v := h.stateReq(t, "GET", "/api/v1/devices/flood-1/state", h.adminToken, "", nil)
	if ver := doc(v, "reported")["version"].(float64); limited < n/2 || int(ver) != acked {
		t.Fatalf("%d limited, %d acked, reported version %v", limited, acked, ver)
	}
}

// TestAttackStateDeletedDevice: a device deleted and created again under
// the same id starts with empty documents at version 0, not with the
// old device's desired state (which could carry its configuration).
func TestAttackStateDeletedDevice(t *testing.T) {
	h := startHub(t, startInflux(t), nil)
	h.createDevice(t, "reuse-1")
	h.patchDesired(t, h.adminToken, "reuse-1", "0", `{"wifi_psk":"old-site"}`)
	if st, m := h.api(t, "DELETE", "/api/v1/devices/reuse-1", h.adminToken, nil); st != 204 && st != 200 {
		t.Fatalf("delete: %d %v", st, m)
	}
	token := h.createDevice(t, "reuse-1")
	st, _, v := h.stateReq(t, "GET", "/api/v1/state", token, "", nil)
	if st != 200 || doc(v, "desired")["version"] != 0.0 || compact(doc(v, "desired")["state"]) != `{}` {
		t.Fatalf("re-created device: %d %v", st, v)
	}
}

// TestStateLongPollEndsAtShutdown: a waiting desired-state long poll
// answers 204 when the hub shuts down and does not hold the shutdown.
func TestStateLongPollEndsAtShutdown(t *testing.T) {
	h := startHub(t, startInflux(t), map[string]string{"FIELDHUB_LOG_FORMAT": "json", "FIELDHUB_SHUTDOWN_TIMEOUT": shutdownTimeout.String()})
	tok := h.createDevice(t, "sleepy")
	polled := make(chan int, 1)
	go func() { // owner: this test; the poll ends by the hub's shutdown at the latest, read below
		req, _ := http.NewRequest("GET", h.url+"/api/v1/state/desired?version=0&wait=60s", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			polled <- -1
			return
		}
		resp.Body.Close()
		polled <- resp.StatusCode
	}()
	waitUntil(t, "the long poll to start", loadWait, func() bool {
		return strings.Contains(h.stderr.String(), `"msg":"device long poll started","device":"sleepy","poll":"state"`)
	})
	h.stop(t)
	select {
	case st := <-polled:
		if st != http.StatusNoContent {
			t.Fatalf("state long poll answered %d at shutdown, want 204", st)
		}
	case <-time.After(loadWait):
		t.Fatal("the state long poll got no answer")
	}
	if o := shutdownOverruns(h.stderr.String()); len(o) > 0 {
		t.Fatalf("the state long poll held the shutdown: %q", o)
	}
}
