package main

import (
	"os"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestLedgerInBrowser: a device whose seq skipped numbers is badged in
// the overview, and its page's ledger panel lists the open gap and the
// counts; a late resend closes it; 0 axe-core violations, no console
// error.
func TestLedgerInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("drives headless Chromium; run without -short")
	}
	axeSrc, err := os.ReadFile("testdata/axe.min.js")
	if err != nil {
		t.Fatal(err)
	}
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	admin := h.token(t, "admin")
	tok := h.createDevice(t, "gappy-1")
	h.createDevice(t, "clean-1")
	send := func(seqs ...int) {
		t.Helper()
		var rs []map[string]any
		for _, s := range seqs {
			rs = append(rs, map[string]any{"seq": s, "metrics": map[string]any{"temp": 20 + s}})
		}
		if st, m := postReadings(t, h, tok, map[string]any{"boot": "b1", "readings": rs}); st != 200 {
			t.Fatalf("readings: %d %v", st, m)
		}
	}
	send(1, 2, 3, 7, 8)
	ctx, consoleErrors := browser(t)
	p := &page{t: t, ctx: ctx, errs: consoleErrors, axeSrc: string(axeSrc)}
	p.run(chromedp.Navigate(h.url+"/"),
		chromedp.WaitVisible("#signin-form", chromedp.ByQuery),
		chromedp.SendKeys("#token", admin, chromedp.ByQuery),
		chromedp.Click(`#signin-form button[type=submit]`, chromedp.ByQuery),
		chromedp.WaitVisible("#overview", chromedp.ByQuery))
	p.waitJS("gappy-1 badged with its open gap", `(() => { const r = document.querySelector('tr[data-device="gappy-1"] .gaps-badge'); return r && r.textContent === "1 gaps"; })()`)
	p.waitJS("clean-1 listed without a badge", `(() => { const r = document.querySelector('tr[data-device="clean-1"]'); return r && !r.querySelector(".gaps-badge"); })()`)
	p.axe("the overview with a gap badge")

	p.device(h.url, "gappy-1")
	p.waitJS("the open gap 4-6 in the ledger panel", `(() => { const r = document.querySelector("#ledger-gaps tr.open"); return r && r.cells[1].textContent === "4–6" && r.cells[0].textContent === "b1"; })()`)
	summary := p.text("#ledger-summary", func(s string) bool { return strings.Contains(s, "Readings durable 5") })
	if !strings.Contains(summary, "1 open gaps") {
		t.Errorf("summary %q", summary)
	}
	p.axe("the device page's ledger panel")

	send(4, 5, 6) // the late resend
	p.waitJS("the gap closed as filled", `(() => { const r = document.querySelector("#ledger-gaps tr.closed"); return r && r.cells[3].textContent.includes("(filled)") && !document.querySelector("#ledger-gaps tr.open"); })()`)
	screenshot(t, ctx, "device-ledger.png")
	if errs := consoleErrors(); len(errs) > 0 {
		t.Errorf("console errors: %v", errs)
	}
}
