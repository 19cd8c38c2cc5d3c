package dashboard

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fieldhub/fieldhub/dashboard/live"
	"github.com/fieldhub/fieldhub/dashboard/operator"
)

// errStreamCut is a write refused because the stream is ending.
var errStreamCut = errors.New("live stream ending")

// serveSSE is GET /api/v1/live: the same events as Server-Sent Events, for
// networks that block WebSockets. Last-Event-ID resumes from the replay
// window.
func (s *Server) serveSSE(w http.ResponseWriter, r *http.Request) {
	if !s.originAllowed(r) {
		writeErr(w, http.StatusForbidden, "forbidden", "Origin not allowed")
		return
	}
	select {
	case <-s.stopSSE: // the hub is stopping (EndSSE): as openLive answers once Shutdown ran
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "shutting down")
		return
	default:
	}
	q := r.URL.Query()
	sub := s.opts.Live.NewSubscriber(operator.From(r.Context()))
	var devs []string
	if v := q.Get("devices"); v != "" && v != "*" {
		devs = strings.Split(v, ",")
	} else {
		devs = []string{"*"}
	}
	if len(devs) > liveMaxDevices {
		writeErr(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("at most %d devices", liveMaxDevices))
		return
	}
	devs, _ = s.knownDevices(devs) // the stream has no way to answer; ids not in the registry are ignored
	var metrics []string
	if v := q.Get("metrics"); v != "" {
		metrics = strings.Split(v, ",")
		if msg := badMetricFilter(metrics); msg != "" {
			writeErr(w, http.StatusBadRequest, "bad_request", msg)
			return
		}
	}
	f := sub.Update(func(f *live.Filter) { f.Subscribe(devs, metrics) })
	end, ok := s.openLive(w, r, sub)
	if !ok {
		return
	}
	defer end()

	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{}) // a long-lived response; the server's ReadTimeout does not apply
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	dataWait := s.opts.Live.Options().SlowAfter + 2*liveWriteWait // as on /ws/live
	revoked := func() {
		s.log.Info("dashboard disconnected", "reason", "revoked", "token_id", sub.Owner().TokenID, "transport", "sse", "remote", s.authn.ClientAddr(r))
	}
	// over reports whether the stream must end before its next frame:
	// the request ended, the hub is stopping, the credential ended or
	// the client fell behind (each logged once here). Each frame of the
	// resume and the snapshot is checked, as in the live loop: a replay
	// window is thousands of frames to a client that may read slowly.
	// The credential's end and the client's lag are looked at first: a
	// write cut for a revocation fails, net/http then cancels the
	// request's context too, and the revocation's log line must not
	// depend on which ready case select picks.
	over := func() bool {
		select {
		case <-sub.Revoked():
			revoked()
			return true
		case <-sub.Kicked():
			s.logSlow(sub, "sse", s.authn.ClientAddr(r), "behind")
			return true
		default:
		}
		select {
		case <-r.Context().Done():
		case <-s.stopSSE:
		default:
			return false
		}
		return true
	}
	// A write blocked on a client that stopped reading is cut as soon as
	// the stream must end (revoked, shutdown, request over): the
	// watcher moves the write deadline to now. cutMu orders that against
	// the writer setting its own deadline, so the writer never re-arms a
	// deadline after the cut. The watcher stops when serveSSE returns.
	var (
		cutMu sync.Mutex
		cut   bool
	)
	setDeadline := func(d time.Duration) error {
		cutMu.Lock()
		defer cutMu.Unlock()
		if cut {
			return errStreamCut
		}
		return rc.SetWriteDeadline(time.Now().Add(d))
	}
	watchStop, watchDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watchDone)
		select {
		case <-watchStop:
			return
		case <-r.Context().Done():
		case <-s.stopSSE:
		case <-sub.Revoked():
		}
		cutMu.Lock()
		cut = true
		_ = rc.SetWriteDeadline(time.Now())
		cutMu.Unlock()
	}()
	defer func() {
		close(watchStop)
		<-watchDone
	}()
	// A write still blocked after SlowAfter marks the client slow, as on
	// /ws/live, whether or not events arrive to be judged by the
	// publishers' lag check; the stream ends after the frame in flight
	// (the client gets the time of one write to take it, dataWait).
	stalled := time.AfterFunc(time.Hour, sub.MarkSlow)
	stalled.Stop()
	defer stalled.Stop()
	// failed ends the stream after a write error: a cut write ends for
	// the watcher's reason; a timed-out one is a slow consumer, logged
	// once and counted.
	failed := func(err error) {
		stalled.Stop()
		cutMu.Lock()
		wasCut := cut
		cutMu.Unlock()
		switch {
		case wasCut || errors.Is(err, errStreamCut):
			over()
		case isTimeout(err):
			sub.MarkSlow()
			s.logSlow(sub, "sse", s.authn.ClientAddr(r), "write timed out")
		}
	}
	write := func(le *live.Event) (bool, error) {
		b := live.Frame(le, f.Metrics)
		if b == nil {
			return false, nil
		}
		if err := setDeadline(dataWait); err != nil {
			return false, err
		}
		stalled.Reset(s.opts.Live.Options().SlowAfter)
		defer stalled.Stop()
		if le.Seq > 0 {
			if _, err := fmt.Fprintf(w, "id: %d\n", le.Seq); err != nil {
				return false, err
			}
		}
		_, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", le.Ev.Type, b)
		return true, err
	}
	flush := func() error {
		stalled.Reset(s.opts.Live.Options().SlowAfter)
		defer stalled.Stop()
		return rc.Flush()
	}
	// Resume or snapshot, then live. The writer is busy meanwhile, so the
	// publishers' lag check (SlowAfter) applies as in the live loop.
	var backlog []*live.Event
	resumed := false
	if last := r.Header.Get("Last-Event-ID"); last != "" {
		if seq, err := strconv.ParseUint(last, 10, 64); err == nil {
			evs, complete := s.opts.Live.Since(seq)
			for _, le := range evs {
				if f.Matches(&le.Ev) {
					backlog = append(backlog, le)
				}
			}
			resumed = complete
		}
	}
	if !resumed {
		for _, ev := range s.opts.Live.Snapshot(&f) {
			backlog = append(backlog, &live.Event{Ev: ev})
		}
	}
	sub.Busy()
	for _, le := range backlog {
		if over() {
			return
		}
		wrote, err := write(le)
		if err != nil {
			failed(err)
			return
		}
		if wrote {
			s.opts.Live.CountSent(1)
		}
	}
	backlog = nil
	if err := flush(); err != nil {
		failed(err)
		return
	}
	sub.CaughtUp()
	hb := time.NewTicker(sseHeartbeat)
	defer hb.Stop()
	var buf []*live.Event
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.stopSSE:
			return
		case <-sub.Kicked():
			s.logSlow(sub, "sse", s.authn.ClientAddr(r), "behind")
			return
		case <-sub.Revoked():
			revoked()
			return
		case <-hb.C:
			err := setDeadline(liveWriteWait)
			if err == nil {
				_, err = fmt.Fprint(w, ": keep-alive\n\n")
			}
			if err == nil {
				err = rc.Flush()
			}
			if err != nil {
				failed(err)
				return
			}
		case <-sub.Notify():
			if sub.IsRevoked() {
				continue // nothing more for a revoked credential; end next
			}
			var stopped bool
			var err error
			buf, stopped, err = drainLive(s.opts.Live, sub, buf, over, write) // over: per frame, nothing after a revocation
			if stopped {
				return
			}
			if err != nil {
				failed(err)
				return
			}
			if err := flush(); err != nil {
				failed(err)
				return
			}
			sub.CaughtUp()
		}
	}
}
