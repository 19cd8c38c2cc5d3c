package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/gorilla/websocket"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
)

// stateDevice is a WebSocket device the test steers: it reports what the
// test says, and hands over the hub's desired frames and its acks.
type stateDevice struct {
	c       *websocket.Conn
	desired chan map[string]any // the hub's "state" frames
	acks    chan map[string]any // acks and errors of reported patches
	seq     int
}

func dialStateDevice(t *testing.T, h *hub, token string) *stateDevice {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/device", http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	d := &stateDevice{c: c, desired: make(chan map[string]any, 64), acks: make(chan map[string]any, 64)}
	done := make(chan struct{})
	go func() { // owner: the test; ends when the connection closes (cleanup)
		defer close(done)
		for {
			var f map[string]any
			if err := c.ReadJSON(&f); err != nil {
				return
			}
			ch := d.acks
			if f["type"] == "state" {
				ch = d.desired
			}
			select {
			case ch <- f:
			default: // the test stopped reading: drop
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return d
}

// report sends a reported patch and waits for its ack.
func (d *stateDevice) report(t *testing.T, patch map[string]any) {
	t.Helper()
	d.seq++
	id := fmt.Sprintf("r%d", d.seq)
	if err := d.c.WriteJSON(map[string]any{"type": "state", "id": id, "reported": patch}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(loadWait)
	for {
		select {
		case f := <-d.acks:
			if f["id"] != id {
				continue
			}
			if f["type"] != "ack" || f["version"] == nil {
				t.Fatalf("reported %v: answered %v", patch, f)
			}
			return
		case <-deadline:
			t.Fatalf("no ack of reported %v", patch)
		}
	}
}

// nextDesired waits for a desired frame satisfying ok.
func (d *stateDevice) nextDesired(t *testing.T, what string, ok func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.After(loadWait)
	for {
		select {
		case f := <-d.desired:
			if ok(f) {
				return f
			}
		case <-deadline:
			t.Fatalf("no desired frame with %s", what)
		}
	}
}

// uiPatchDesired is an operator's PATCH of desired with If-Match.
func (h *hub) uiPatchDesired(t *testing.T, token, device string, ifMatch int64, patch map[string]any) (int, map[string]any) {
	t.Helper()
	st, m, err := h.desiredPatch(token, device, ifMatch, patch)
	if err != nil {
		t.Fatal(err)
	}
	return st, m
}

// desiredPatch is uiPatchDesired for any goroutine: it returns the error.
func (h *hub) desiredPatch(token, device string, ifMatch int64, patch map[string]any) (int, map[string]any, error) {
	b, _ := json.Marshal(patch)
	req, _ := http.NewRequest("PATCH", h.url+"/api/v1/devices/"+device+"/state/desired", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/merge-patch+json")
	req.Header.Set("If-Match", fmt.Sprintf("%q", fmt.Sprint(ifMatch)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("PATCH desired of %s: %w", device, err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m, nil
}

// TestDeviceStateInBrowser is the State panel in headless Chromium: it
// shows a device's reported, desired and delta with versions; an operator
// adds a desired key, the key is highlighted out of sync, the device
// reports it back and the highlight goes, live; a simulated device
// applies a desired interval by itself; a save after someone else's
// change is refused (412), said and reloaded; a viewer sees no editor;
// axe-core finds no violation and the console no error.
func TestDeviceStateInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("drives headless Chromium; run without -short")
	}
	axeSrc, err := os.ReadFile("testdata/axe.min.js")
	if err != nil {
		t.Fatal(err)
	}
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	operator, viewer := h.token(t, "operator"), h.token(t, "viewer")
	ctx, consoleErrors := browser(t)
	p := &page{t: t, ctx: ctx, errs: consoleErrors, axeSrc: string(axeSrc)}
	signIn := func(token string) {
		t.Helper()
		p.run(chromedp.Navigate(h.url+"/"),
			chromedp.WaitVisible("#signin-form", chromedp.ByQuery),
			chromedp.SendKeys("#token", token, chromedp.ByQuery),
			chromedp.Click(`#signin-form button[type=submit]`, chromedp.ByQuery),
			chromedp.WaitVisible("#overview", chromedp.ByQuery))
	}
	signIn(operator)

	// A test device reports its interval and firmware; desired starts empty.
	dev := dialStateDevice(t, h, h.createDevice(t, "thermo-1"))
	dev.report(t, map[string]any{"interval": 1, "firmware": "t-1.0"})
	p.device(h.url, "thermo-1")
	p.text("#state-summary", func(s string) bool { return s == "Reported version 1 · desired version 0 · in sync" })
	p.text(`#state-rows tr[data-key="interval"] td[data-side="reported"]`, func(s string) bool { return s == "1" })
	p.text(`#state-rows tr[data-key="firmware"] td[data-side="delta"]`, func(s string) bool { return s == "reported only" })
	p.waitJS("an updated_at per key", `document.querySelector('#state-rows tr[data-key="firmware"] td:nth-child(5)').textContent !== ""`)

	// The operator wants interval 2: a new key in the editor, saved.
	p.run(chromedp.Click("#state-add", chromedp.ByQuery),
		chromedp.SendKeys("#state-edit-rows .state-edit-row:last-child .state-key", "interval", chromedp.ByQuery),
		chromedp.SendKeys("#state-edit-rows .state-edit-row:last-child .state-value", "2", chromedp.ByQuery),
		chromedp.Click(`#state-form button[type=submit]`, chromedp.ByQuery))
	p.text("#state-note", func(s string) bool { return s == "Saved: desired version 1." })
	// Out of sync, in text and colour, until the device reports it.
	p.text(`#state-rows tr[data-key="interval"] td[data-side="delta"]`, func(s string) bool { return s == "out of sync" })
	p.waitJS("the interval row highlighted", `document.querySelector('#state-rows tr[data-key="interval"]').classList.contains("out") &&
		getComputedStyle(document.querySelector('#state-rows tr[data-key="interval"] td')).backgroundColor !== getComputedStyle(document.querySelector('#state-rows tr[data-key="firmware"] td')).backgroundColor`)
	p.text("#state-summary", func(s string) bool { return s == "Reported version 1 · desired version 1 · 1 key out of sync" })
	f := dev.nextDesired(t, "interval 2", func(f map[string]any) bool { return f["version"] == 1.0 })
	if delta, _ := f["delta"].(map[string]any); delta["interval"] != 2.0 || len(delta) != 1 {
		t.Fatalf("the device was sent %v, want the delta interval 2", f)
	}
	var audited bool
	p.eval(`document.querySelector('#state-rows tr[data-key="interval"] td:nth-child(6)').textContent !== ""`, &audited)
	if !audited {
		t.Error("no desired updated_at shown for interval")
	}
	screenshot(t, ctx, "device-state.png")
	p.axe("the State panel with a key out of sync")
	dev.report(t, map[string]any{"interval": 2})
	p.text("#state-summary", func(s string) bool { return s == "Reported version 2 · desired version 1 · in sync" })
	p.waitJS("no key highlighted", `!document.querySelector('#state-rows tr.out') && document.querySelector('#state-rows tr[data-key="interval"] td[data-side="delta"]').textContent === "in sync"`)

	// Someone else changes desired behind the page; the page follows the
	// live event while its editor is untouched.
	if st, m := h.uiPatchDesired(t, h.adminToken, "thermo-1", 1, map[string]any{"mode": "eco"}); st != 200 {
		t.Fatalf("PATCH behind the page: %d %v", st, m)
	}
	p.text(`#state-rows tr[data-key="mode"] td[data-side="desired"]`, func(s string) bool { return s == `"eco"` })
	p.waitJS("the editor follows", `[...document.querySelectorAll("#state-edit-rows .state-key")].map(e => e.value).join() === "interval,mode"`)
	// Now the operator starts an edit; meanwhile desired changes again;
	// the save is refused, said, and the editor reloaded.
	p.run(chromedp.SetValue(`#state-edit-rows .state-edit-row:first-child .state-value`, "3", chromedp.ByQuery))
	p.eval(`(() => { document.getElementById("state-edit-rows").dispatchEvent(new Event("input")); return true; })()`, nil)
	if st, m := h.uiPatchDesired(t, h.adminToken, "thermo-1", 2, map[string]any{"mode": "boost"}); st != 200 {
		t.Fatalf("second PATCH behind the page: %d %v", st, m)
	}
	p.text("#state-note", func(s string) bool { return strings.Contains(s, "saving will be refused") })
	p.run(chromedp.Click(`#state-form button[type=submit]`, chromedp.ByQuery))
	p.text("#state-error", func(s string) bool {
		return strings.Contains(s, "someone else changed the desired state") && strings.Contains(s, "version 3")
	})
	var editor []string
	p.eval(`[...document.querySelectorAll("#state-edit-rows .state-value")].map(e => e.value)`, &editor)
	if !slices.Equal(editor, []string{"2", `"boost"`}) {
		t.Errorf("after the 412 the editor holds %v, want theirs [2 \"boost\"]", editor)
	}
	if _, m := h.api(t, "GET", "/api/v1/devices/thermo-1/state", h.adminToken, nil); fmt.Sprint(m["desired"].(map[string]any)["state"]) != "map[interval:2 mode:boost]" {
		t.Errorf("the refused save changed desired: %v", m["desired"])
	}
	// Removing a key sends null; an invalid value is refused in the page.
	p.run(chromedp.Click(`button[aria-label="Remove desired key mode"]`, chromedp.ByQuery),
		chromedp.Click(`#state-form button[type=submit]`, chromedp.ByQuery))
	p.text("#state-note", func(s string) bool { return s == "Saved: desired version 4." })
	p.waitJS("mode gone from desired", `!document.querySelector('#state-rows tr[data-key="mode"]')`)
	p.run(chromedp.SetValue(`#state-edit-rows .state-edit-row:first-child .state-value`, "eco", chromedp.ByQuery),
		chromedp.Click(`#state-form button[type=submit]`, chromedp.ByQuery))
	p.text("#state-error", func(s string) bool { return strings.Contains(s, "is not JSON") })
	p.axe("the State panel after a refused save")

	// A simulated device applies a desired interval by itself.
	fleetCtx, stopFleet := context.WithCancel(context.Background())
	fleet, err := firmwaresim.New(firmwaresim.Config{Hub: h.url, AdminToken: h.adminToken, Provision: true, Devices: 1, Rate: 1, Prefix: "simst"})
	if err != nil {
		t.Fatal(err)
	}
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- fleet.Run(fleetCtx) }()
	defer func() { stopFleet(); <-fleetDone }()
	// The simulator provisions its device in the background: open its
	// page once it exists.
	waitUntil(t, "the simulator provisions simst-1", loadWait, func() bool {
		st, _ := h.api(t, "GET", "/api/v1/devices/simst-1", h.adminToken, nil)
		return st == 200
	})
	p.device(h.url, "simst-1")
	p.text(`#state-rows tr[data-key="firmware"] td[data-side="reported"]`, func(s string) bool { return s == `"`+firmwaresim.Firmware+`"` })
	p.run(chromedp.Click("#state-add", chromedp.ByQuery),
		chromedp.SendKeys("#state-edit-rows .state-edit-row:last-child .state-key", "interval", chromedp.ByQuery),
		chromedp.SendKeys("#state-edit-rows .state-edit-row:last-child .state-value", "0.5", chromedp.ByQuery),
		chromedp.Click("#state-add", chromedp.ByQuery),
		chromedp.SendKeys("#state-edit-rows .state-edit-row:last-child .state-key", "colour", chromedp.ByQuery),
		chromedp.SendKeys("#state-edit-rows .state-edit-row:last-child .state-value", `"red"`, chromedp.ByQuery),
		chromedp.Click(`#state-form button[type=submit]`, chromedp.ByQuery))
	p.text(`#state-rows tr[data-key="interval"] td[data-side="reported"]`, func(s string) bool { return s == "0.5" })
	p.text(`#state-rows tr[data-key="interval"] td[data-side="delta"]`, func(s string) bool { return s == "in sync" })
	// A key the firmware does not know stays out of sync.
	p.text(`#state-rows tr[data-key="colour"] td[data-side="delta"]`, func(s string) bool { return s == "out of sync" })
	p.text("#state-summary", func(s string) bool { return strings.HasSuffix(s, "· 1 key out of sync") })

	// A viewer reads the panel and has no editor.
	p.run(chromedp.Navigate(h.url+"/#/"), chromedp.WaitVisible("#signout", chromedp.ByQuery), chromedp.Click("#signout", chromedp.ByQuery),
		chromedp.WaitVisible("#signin-form", chromedp.ByQuery))
	signIn(viewer)
	p.device(h.url, "thermo-1")
	p.text(`#state-rows tr[data-key="interval"] td[data-side="desired"]`, func(s string) bool { return s == "2" })
	var hidden bool
	p.eval(`document.getElementById("state-form").hidden`, &hidden)
	if !hidden {
		t.Error("a viewer sees the desired editor")
	}
	p.axe("the viewer's State panel")

	// The one failure the test asked for: the refused save.
	errs := slices.DeleteFunc(consoleErrors(), func(e string) bool {
		return strings.Contains(e, "status of 412") && strings.Contains(e, "/api/v1/devices/thermo-1/state/desired")
	})
	if len(errs) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(errs, "\n"))
	}
}
