package ws

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// logBuf is a goroutine-safe buffer for a handler's JSON log.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// pollWait bounds how long a test waits for an event it expects: generous
// for a loaded machine, and well under the polls' 60 s wait, so a poll
// that waits its whole wait fails the test.
const pollWait = 30 * time.Second

// TestNextCommandUntilEndsOnStop: a long poll served by NextCommandUntil
// answers 204 ("no command") once stop is closed, whether it was already
// waiting or came in after, instead of holding its request (and so
// http.Server.Shutdown) for its whole wait; the log says the poll was
// ended for the shutdown, not by its wait.
func TestNextCommandUntilEndsOnStop(t *testing.T) {
	tests := []struct {
		name       string
		stopBefore bool // stop is closed before the poll comes in
	}{
		{"waiting poll", false},
		{"poll after stop", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, rigOpts{})
			logs := &logBuf{}
			h, err := New(Options{Bridge: r.br, Commands: r.h.opts.Commands, Auth: r.reg,
				Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
			if err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			mux := http.NewServeMux()
			mux.Handle("GET /api/v1/commands/next", h.NextCommandUntil(stop))
			srv := httptest.NewServer(mux)
			defer srv.Close()
			if tc.stopBefore {
				close(stop)
			}

			polled := make(chan int, 1)
			go func() { // owner: this test; the poll ends by stop at the latest, read below
				req, _ := http.NewRequest("GET", srv.URL+"/api/v1/commands/next?wait=60s", nil)
				req.Header.Set("Authorization", "Bearer "+r.tokens["d1"])
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					polled <- -1
					return
				}
				resp.Body.Close()
				polled <- resp.StatusCode
			}()
			if !tc.stopBefore {
				// The poll is about to wait once the device was touched.
				deadline := time.Now().Add(pollWait)
				for {
					if d, err := r.reg.Get("d1"); err == nil && d.LastSeen != nil {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("the long poll did not start")
					}
					time.Sleep(10 * time.Millisecond)
				}
				close(stop)
			}
			select {
			case st := <-polled:
				if st != http.StatusNoContent {
					t.Fatalf("long poll answered %d, want 204", st)
				}
			case <-time.After(pollWait):
				t.Fatal("the long poll went on waiting after stop was closed")
			}
			if !shutdownLogged(logs.String()) {
				t.Fatalf("no \"device long poll ended\" line with reason server_shutdown in\n%s", logs)
			}
		})
	}
}

// shutdownLogged reports whether logs hold a long poll ended for the
// server's shutdown.
func shutdownLogged(logs string) bool {
	for line := range strings.SplitSeq(logs, "\n") {
		var e struct{ Msg, Reason string }
		if json.Unmarshal([]byte(line), &e) == nil && e.Msg == "device long poll ended" && e.Reason == "server_shutdown" {
			return true
		}
	}
	return false
}
