package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
)

// browser starts headless Chromium (installed by scripts/install-chromium
// when missing) and collects every console error and uncaught exception.
func browser(t *testing.T) (context.Context, func() []string) {
	t.Helper()
	if out, err := exec.Command("bash", "../../scripts/install-chromium").CombinedOutput(); err != nil {
		t.Fatalf("install chromium: %v\n%s", err, out)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath("/usr/bin/chromium"),
		chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 800),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelC(); cancelA() })
	var mu sync.Mutex
	var errs []string
	chromedp.ListenTarget(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			errs = append(errs, "exception: "+ev.ExceptionDetails.Text)
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.APITypeError {
				errs = append(errs, fmt.Sprintf("console.error: %v", ev.Args))
			}
		case *cdplog.EventEntryAdded:
			if ev.Entry.Level == cdplog.LevelError {
				errs = append(errs, "log: "+ev.Entry.Text+" "+ev.Entry.URL)
			}
		}
	})
	if err := chromedp.Run(ctx, cdplog.Enable(), runtime.Enable()); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), errs...) }
}

// artifacts is where screenshots go: FIELDHUB_ARTIFACTS, or the test's
// temporary directory.
func artifacts(t *testing.T) string {
	if d := os.Getenv("FIELDHUB_ARTIFACTS"); d != "" {
		_ = os.MkdirAll(d, 0o755)
		return d
	}
	return t.TempDir()
}

func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	var png []byte
	if err := chromedp.Run(ctx, chromedp.FullScreenshot(&png, 100)); err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(artifacts(t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// pollText waits until the text of sel satisfies ok.
func pollText(t *testing.T, ctx context.Context, what, sel string, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(loadWait)
	for {
		var s string
		_ = chromedp.Run(ctx, chromedp.Evaluate(fmt.Sprintf(`(document.querySelector(%q)||{}).textContent||""`, sel), &s))
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s (%s = %q)", what, sel, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDashboardInBrowser signs in, watches a simulated device come online
// and its live values change, sends a command and sees it succeed, loads a
// history range, checks the viewer role and a phone-sized screen, and fails
// on any console error.
func TestDashboardInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("drives headless Chromium; run without -short")
	}
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_MQTT_CONNECT_RATE": "1000"})
	viewer := h.token(t, "viewer")
	ctx, consoleErrors := browser(t)

	run := func(actions ...chromedp.Action) {
		t.Helper()
		tctx, cancel := context.WithTimeout(ctx, loadWait)
		defer cancel()
		if err := chromedp.Run(tctx, actions...); err != nil {
			var html string
			_ = chromedp.Run(ctx, chromedp.OuterHTML("main:not([hidden])", &html, chromedp.ByQuery))
			screenshot(t, ctx, "failure.png")
			t.Fatalf("%v\nconsole: %v\nvisible: %.3000s", err, consoleErrors(), html)
		}
	}
	signIn := func(token string) {
		t.Helper()
		run(chromedp.Navigate(h.url+"/"),
			chromedp.WaitVisible("#signin-form", chromedp.ByQuery),
			chromedp.SendKeys("#token", token, chromedp.ByQuery),
			chromedp.Click(`#signin-form button[type=submit]`, chromedp.ByQuery),
			chromedp.WaitVisible("#overview", chromedp.ByQuery))
	}
	signIn(h.adminToken)

	// Devices are provisioned, then come online while the page watches.
	fleetCtx, stopFleet := context.WithCancel(context.Background())
	defer stopFleet()
	fleet, err := firmwaresim.New(firmwaresim.Config{Hub: h.url, MQTT: h.env["FIELDHUB_MQTT_ADDR"], AdminToken: h.adminToken,
		Provision: true, Devices: 6, Transport: firmwaresim.TransportMix, Rate: 4})
	if err != nil {
		t.Fatal(err)
	}
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- fleet.Run(fleetCtx) }()
	defer func() { stopFleet(); <-fleetDone }()
	waitUntil(t, "devices provisioned", loadWait, func() bool { return len(fleet.Creds()) == 6 })
	run(chromedp.Reload(), chromedp.WaitVisible(`tr[data-device="sim-1"]`, chromedp.ByQuery))
	run(chromedp.WaitVisible(`tr[data-device="sim-1"] .dot.on`, chromedp.ByQuery))
	pollText(t, ctx, "online count", "#c-online", func(s string) bool { n, _ := strconv.Atoi(s); return n >= 1 })
	screenshot(t, ctx, "overview.png")

	// The device page: live values change, the chart fills.
	run(chromedp.Click(`tr[data-device="sim-1"]`, chromedp.ByQuery), chromedp.WaitVisible(`canvas[data-metric="temp"]`, chromedp.ByQuery))
	first := pollText(t, ctx, "a live count value", `b[data-metric="count"]`, func(s string) bool { return s != "" })
	pollText(t, ctx, "the live value to change", `b[data-metric="count"]`, func(s string) bool { return s != first })

	// A command, answered by the simulated firmware.
	run(chromedp.SendKeys("#cmd-name", "set_interval", chromedp.ByQuery),
		chromedp.SendKeys("#cmd-params", `{"seconds":0.5}`, chromedp.ByQuery),
		chromedp.Click(`#cmd-form button[type=submit]`, chromedp.ByQuery))
	pollText(t, ctx, "the command to succeed", "#cmd-rows td[data-command]", func(s string) bool { return s == "succeeded" })

	// A history range from InfluxDB.
	waitUntil(t, "readings in InfluxDB", loadWait, func() bool { n, _ := influx.Count("sim-1", "temp"); return n > 0 })
	run(chromedp.Click(`.ranges button[data-range="1h"]`, chromedp.ByQuery))
	pollText(t, ctx, "the 1 h history chart", `.chart .title span:last-child`, func(s string) bool { return strings.HasSuffix(s, "points") && s != "0 points" })
	screenshot(t, ctx, "device.png")

	// The live socket drops: a banner says so, the page reconnects and
	// resubscribes, and live values flow again.
	run(chromedp.Evaluate(`state.live.close(); true`, nil),
		chromedp.WaitVisible("#banner", chromedp.ByQuery),
		chromedp.WaitNotVisible("#banner", chromedp.ByQuery))
	before := pollText(t, ctx, "a live count value", `b[data-metric="count"]`, func(s string) bool { return s != "" })
	pollText(t, ctx, "live values after reconnecting", `b[data-metric="count"]`, func(s string) bool { return s != before })

	// An admin rotates the device's token: the new one is shown once.
	run(chromedp.Click("#rotate", chromedp.ByQuery), chromedp.WaitVisible("#new-token", chromedp.ByQuery))
	pollText(t, ctx, "the new token", "#new-token", func(s string) bool { return strings.Contains(s, "fhd_") })

	// A phone: nothing wider than the screen.
	var overflow bool
	run(chromedp.EmulateViewport(390, 844), chromedp.Navigate(h.url+"/#/"), chromedp.WaitVisible(`tr[data-device="sim-1"]`, chromedp.ByQuery),
		chromedp.Evaluate(`document.documentElement.scrollWidth > window.innerWidth`, &overflow))
	if overflow {
		t.Error("the overview is wider than a 390-pixel phone screen")
	}
	screenshot(t, ctx, "overview-phone.png")
	run(chromedp.Navigate(h.url+"/#/devices/sim-1"), chromedp.WaitVisible(`canvas[data-metric="temp"]`, chromedp.ByQuery),
		chromedp.Evaluate(`document.documentElement.scrollWidth > window.innerWidth`, &overflow))
	if overflow {
		t.Error("the device page is wider than a 390-pixel phone screen")
	}
	run(chromedp.EmulateViewport(1280, 800))

	// A viewer sees no command or admin controls (the API refuses them too).
	run(chromedp.Navigate(h.url+"/#/"), chromedp.WaitVisible("#signout", chromedp.ByQuery), chromedp.Click("#signout", chromedp.ByQuery),
		chromedp.WaitVisible("#signin-form", chromedp.ByQuery))
	signIn(viewer)
	var cmdHidden, adminHidden bool
	run(chromedp.Navigate(h.url+"/#/devices/sim-2"), chromedp.WaitVisible(`#d-presence`, chromedp.ByQuery),
		chromedp.Evaluate(`document.getElementById("commands-panel").hidden`, &cmdHidden),
		chromedp.Evaluate(`document.getElementById("admin-panel").hidden`, &adminHidden))
	if !cmdHidden || !adminHidden {
		t.Errorf("viewer sees command controls %v, admin controls %v", !cmdHidden, !adminHidden)
	}

	if errs := consoleErrors(); len(errs) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(errs, "\n"))
	}
}
