package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// logLine is the part of a hub's JSON log line the shutdown tests read.
type logLine struct {
	Level, Msg, Component, Reason, Err string
}

// logLines parses a hub's JSON log, skipping what is not a JSON line.
func logLines(logs string) []logLine {
	var got []logLine
	for _, line := range strings.Split(logs, "\n") {
		var e logLine
		if json.Unmarshal([]byte(line), &e) == nil {
			got = append(got, e)
		}
	}
	return got
}

// stopOrder is the components' "component stopped" log lines of a hub's
// shutdown, in order.
func stopOrder(t *testing.T, logs string) []string {
	t.Helper()
	var got []string
	for _, e := range logLines(logs) {
		if e.Msg == "component stopped" {
			got = append(got, e.Component)
		}
	}
	return got
}

// shutdownOverruns are the log lines saying a component of the shutdown
// ran out of its deadline: srv.Shutdown gave up on running requests, a
// component did not stop in time, or one's turn came after its deadline
// (the spool drain, say, given nothing to drain with).
func shutdownOverruns(logs string) []string {
	var got []string
	for _, e := range logLines(logs) {
		switch e.Msg {
		case "http shutdown", "component did not stop within the shutdown timeout", "component stopping after its shutdown deadline":
			got = append(got, e.Msg+" "+e.Component+" "+e.Err)
		}
	}
	return got
}

// TestShutdownOrder: the real hub stops its components in the order
// docs/architecture.md gives ("Lifecycle and shutdown"): stop accepting ->
// close device sockets -> broker (or cluster) -> dashboard sockets -> live
// hub -> rates -> commands -> registry flush -> presence recorder and its
// writer -> drain the spool -> writer.
// The stores close after that, by serve's defers.
func TestShutdownOrder(t *testing.T) {
	h := startHub(t, startInflux(t), map[string]string{"FIELDHUB_LOG_FORMAT": "json"})
	h.stop(t)
	want := []string{"http server", "device sockets", "mqtt broker", "dashboard sockets", "live hub", "rates", "state",
		"commands", "registry", "presence recorder", "presence writer", "spool drain", "influx writer"}
	if got := stopOrder(t, h.stderr.String()); !slices.Equal(got, want) {
		t.Fatalf("stop order\n got %q\nwant %q", got, want)
	}
	if o := shutdownOverruns(h.stderr.String()); len(o) > 0 {
		t.Fatalf("an idle hub's shutdown overran: %q", o)
	}
}

// shutdownTimeout is FIELDHUB_SHUTDOWN_TIMEOUT in the tests of what must
// not hold the shutdown; the HTTP server gets half of it (the spool
// drain reserves the other half).
const shutdownTimeout = 40 * time.Second

// TestShutdownNotHeldByLongPoll: a device long-polling for its next
// command (up to 60 s) must not hold srv.Shutdown for its deadline: the
// HTTP server is stopped first, and a held poll would make every
// shutdown take the HTTP server's whole share of
// FIELDHUB_SHUTDOWN_TIMEOUT. As Shutdown begins the poll answers 204 ("no
// command", docs/protocol.md), logged before the HTTP server's stop
// completes, and no component runs out of its deadline.
func TestShutdownNotHeldByLongPoll(t *testing.T) {
	h := startHub(t, startInflux(t), map[string]string{"FIELDHUB_LOG_FORMAT": "json", "FIELDHUB_SHUTDOWN_TIMEOUT": shutdownTimeout.String()})
	tok := h.createDevice(t, "poller")
	polled := make(chan int, 1)
	go func() { // owner: this test; the poll ends by the hub's shutdown at the latest, read below
		req, _ := http.NewRequest("GET", h.url+"/api/v1/commands/next?wait=60s", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			polled <- -1
			return
		}
		resp.Body.Close()
		polled <- resp.StatusCode
	}()
	// The poll is about to wait once the device was touched (the poll
	// ends with 204 on shutdown whether it is waiting yet or not).
	waitUntil(t, "the long poll to start", loadWait, func() bool {
		_, m := h.api(t, "GET", "/api/v1/devices/poller", h.adminToken, nil)
		d, _ := m["device"].(map[string]any)
		return d != nil && d["last_seen"] != nil
	})
	start := time.Now()
	h.stop(t)
	took := time.Since(start)
	select {
	case st := <-polled:
		if st != http.StatusNoContent {
			t.Fatalf("long poll answered %d at shutdown, want 204", st)
		}
	case <-time.After(loadWait):
		t.Fatal("the long poll got no answer")
	}
	logs := h.stderr.String()
	if o := shutdownOverruns(logs); len(o) > 0 {
		t.Fatalf("the long poll held the shutdown: %q", o)
	}
	lines := logLines(logs)
	ended := slices.IndexFunc(lines, func(e logLine) bool { return e.Msg == "device long poll ended" && e.Reason == "server_shutdown" })
	httpStopped := slices.IndexFunc(lines, func(e logLine) bool { return e.Msg == "component stopped" && e.Component == "http server" })
	if ended < 0 || httpStopped < 0 || ended > httpStopped {
		t.Fatalf("want the poll ended for the shutdown (line %d) before the http server stopped (line %d)\n%s", ended, httpStopped, logs)
	}
	if took > shutdownTimeout/4 { // secondary: well under the HTTP server's share
		t.Fatalf("shutdown took %s", took.Round(time.Millisecond))
	}
	t.Logf("shutdown with a parked long poll took %s", took.Round(time.Millisecond))
}

// TestShutdownNotHeldBySSE: an operator's SSE stream (/api/v1/live) is a
// plain, never-ending HTTP response, not a hijacked connection: the
// "http server" component (srv.Shutdown, stopped first) waits for it,
// while "dashboard sockets" (api.Shutdown) is only stopped after. As
// Shutdown begins the stream ends (api.EndSSE), so srv.Shutdown returns
// without running out of its deadline and no later component is left
// without time.
func TestShutdownNotHeldBySSE(t *testing.T) {
	h := startHub(t, startInflux(t), map[string]string{"FIELDHUB_LOG_FORMAT": "json", "FIELDHUB_SHUTDOWN_TIMEOUT": shutdownTimeout.String()})
	req, _ := http.NewRequest("GET", h.url+"/api/v1/live", nil)
	req.Header.Set("Authorization", "Bearer "+h.adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 { // the stream is registered before its 200
		t.Fatalf("sse: %d", resp.StatusCode)
	}
	ended := make(chan error, 1)
	go func() { // owner: this test; ends with the stream (or the deferred Close), read below
		_, err := io.Copy(io.Discard, resp.Body)
		ended <- err
	}()
	start := time.Now()
	h.stop(t)
	took := time.Since(start)
	select {
	case err := <-ended:
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("SSE stream at shutdown: %v", err)
		}
	case <-time.After(loadWait):
		t.Fatal("the SSE stream did not end")
	}
	if o := shutdownOverruns(h.stderr.String()); len(o) > 0 {
		t.Fatalf("an open SSE stream held the shutdown: %q", o)
	}
	if took > shutdownTimeout/4 { // secondary: well under the HTTP server's share
		t.Fatalf("shutdown took %s", took.Round(time.Millisecond))
	}
	t.Logf("shutdown with an open SSE stream took %s", took.Round(time.Millisecond))
}

// TestLifecycleReserve: a component's Reserve is held back from every
// component stopped before it. One that waits out its whole deadline (a
// Stop held by a request that never ends) leaves the reserving component,
// stopped later, its reserve: its turn comes before its deadline, which
// is the overall one, and the overrunning component's deadline is the
// reserve earlier.
func TestLifecycleReserve(t *testing.T) {
	const timeout, reserve = 4 * time.Second, 3 * time.Second
	var heldDeadline, drainDeadline time.Time
	var drainErr error
	drained := false
	comps := []component{
		{Name: "drain", Reserve: reserve, Stop: func(ctx context.Context) {
			drained = true
			drainErr = ctx.Err()
			drainDeadline, _ = ctx.Deadline()
		}},
		{Name: "held", Stop: func(ctx context.Context) {
			heldDeadline, _ = ctx.Deadline()
			<-ctx.Done() // never ends by itself
		}},
	}
	lc := &lifecycle{log: slog.New(slog.DiscardHandler), shutdownTimeout: timeout}
	ctx, cancel := context.WithCancel(context.Background())
	if err := lc.run(ctx, comps, cancel); err != nil { // ready: shut down at once
		t.Fatalf("run = %v", err)
	}
	if !drained {
		t.Fatal("the reserving component was not stopped")
	}
	if drainErr != nil {
		t.Fatalf("the reserving component's turn came with its deadline passed (%v): the component before it used its reserve", drainErr)
	}
	if got := drainDeadline.Sub(heldDeadline); got != reserve {
		t.Fatalf("deadlines %s apart, want the reserve %s", got, reserve)
	}
}
