package dashboard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/dashboard/live"
	"github.com/fieldhub/fieldhub/dashboard/operator"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Timing and size limits of operator live connections.
const (
	liveWriteWait    = 5 * time.Second
	livePongWait     = 60 * time.Second
	livePingPeriod   = livePongWait * 9 / 10
	liveMaxMessage   = 64 << 10
	liveMaxDevices   = 10000
	liveMaxMetrics   = 256 // metric names one live socket filters on; FIELDHUB_MAX_METRICS_PER_DEVICE's default
	sseHeartbeat     = 15 * time.Second
	closeTryAgain    = 1013 // RFC 6455: try again later (slow consumer)
	closeShutdown    = websocket.CloseGoingAway
	maxLiveFrameSize = 1 << 20
)

// CloseRevoked closes a live socket whose credential stopped working: its
// token was deleted, its session signed out or expired.
const CloseRevoked = 4003

// originAllowed applies the hub's one Origin policy, with the extra
// allowed origins, to operator streams (operator.Auth.StreamOriginAllowed).
func (s *Server) originAllowed(r *http.Request) bool { return s.authn.StreamOriginAllowed(r) }

// openLive is the one admission of a live stream, /ws/live and SSE
// alike: it registers sub as a live client of its owner's credential
// (which then owns it: ending the credential closes it) and with
// Shutdown, or answers before any upgrade: 503 at the hub's cap or while
// shutting down, 429 at the credential's, 401 when the credential ended
// meanwhile. On true the caller must call the returned end when the
// stream is over.
// Refusals are logged at most once per liveRefusalLogEvery, with how many
// were not logged, and counted (live.Stats).
func (s *Server) openLive(w http.ResponseWriter, r *http.Request, sub *live.Subscriber) (end func(), ok bool) {
	op := sub.Owner()
	err := s.opts.Live.Add(sub)
	if err == nil {
		// The credential may have ended between authentication and Add:
		// Hub.CloseCredential could not see this socket yet.
		if !s.opts.Registry.OperatorActive(op) {
			s.opts.Live.Remove(sub)
			writeErr(w, http.StatusUnauthorized, "unauthorized", "the credential was revoked")
			return nil, false
		}
		if !s.conns.Add(sub) {
			s.opts.Live.Remove(sub)
			writeErr(w, http.StatusServiceUnavailable, "unavailable", "shutting down")
			return nil, false
		}
		return func() { s.conns.Done(sub); s.opts.Live.Remove(sub) }, true
	}
	if errors.Is(err, live.ErrStopped) {
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "shutting down")
		return nil, false
	}
	reason := "full"
	if errors.Is(err, live.ErrPerCredential) {
		reason = "per_token"
	}
	if n, ok := s.liveRefusals.allow(time.Now()); ok {
		s.log.Warn("live connection refused", "reason", reason, "token_id", op.TokenID, "remote", s.authn.ClientAddr(r), "path", r.URL.Path, "unlogged", n)
	}
	w.Header().Set("Retry-After", "5")
	if reason == "full" {
		writeErr(w, http.StatusServiceUnavailable, "unavailable", fmt.Sprintf("the hub serves at most %d live connections; retry later", s.opts.Live.Options().MaxSubscribers))
		return nil, false
	}
	writeErr(w, http.StatusTooManyRequests, "too_many_connections", fmt.Sprintf("this credential already has %d live connections, the most allowed (FIELDHUB_LIVE_MAX_PER_TOKEN); close one first", s.opts.Live.Options().MaxPerCredential))
	return nil, false
}

// liveRefusalLogEvery spaces the refusal log lines, so a client hammering
// a cap cannot flood the log.
const liveRefusalLogEvery = 10 * time.Second

// logLimiter lets one event through per liveRefusalLogEvery and counts the
// others.
type logLimiter struct {
	next    atomic.Int64 // unix nanoseconds of the next allowed line
	dropped atomic.Int64
}

// allow reports whether to log now, and how many events were not logged
// since the last line.
func (l *logLimiter) allow(now time.Time) (int64, bool) {
	next := l.next.Load()
	if now.UnixNano() < next || !l.next.CompareAndSwap(next, now.Add(liveRefusalLogEvery).UnixNano()) {
		l.dropped.Add(1)
		return 0, false
	}
	return l.dropped.Swap(0), true
}

// clientMsg is what a dashboard sends on /ws/live.
type clientMsg struct {
	Type    string   `json:"type"`
	Devices []string `json:"devices"`
	Metrics []string `json:"metrics"`
}

// serveLiveWS is GET /ws/live.
func (s *Server) serveLiveWS(w http.ResponseWriter, r *http.Request) {
	if !s.originAllowed(r) {
		writeErr(w, http.StatusForbidden, "forbidden", "Origin not allowed")
		return
	}
	op, ok := s.authenticate(w, r, true)
	if !ok {
		return
	}
	sub := s.opts.Live.NewSubscriber(op)
	end, ok := s.openLive(w, r, sub)
	if !ok {
		return
	}
	defer end()
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &liveConn{s: s, ws: conn, sub: sub, remote: s.authn.ClientAddr(r), done: make(chan struct{}), ctl: make(chan []byte, 16)}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	c.readLoop()
	close(c.done)
	<-writerDone
	conn.Close()
}

type liveConn struct {
	s   *Server
	ws  *websocket.Conn
	sub *live.Subscriber
	// remote is the client address behind any trusted proxy, for the log.
	remote string
	done   chan struct{}
	ctl    chan []byte // error answers to client messages; bounded
}

func (c *liveConn) readLoop() {
	c.ws.SetReadLimit(liveMaxMessage)
	_ = c.ws.SetReadDeadline(time.Now().Add(livePongWait))
	c.ws.SetPongHandler(func(string) error { return c.ws.SetReadDeadline(time.Now().Add(livePongWait)) })
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		_ = c.ws.SetReadDeadline(time.Now().Add(livePongWait))
		var m clientMsg
		if err := json.Unmarshal(data, &m); err != nil {
			c.answer("bad_json", "messages are JSON objects with a type")
			continue
		}
		if len(m.Devices) > liveMaxDevices {
			c.answer("invalid", fmt.Sprintf("at most %d devices per message", liveMaxDevices))
			continue
		}
		switch m.Type {
		case "subscribe":
			if msg := badMetricFilter(m.Metrics); msg != "" {
				c.answer("invalid_metrics", msg+" (this subscribe was not applied)")
				continue
			}
			devs, unknown := c.s.knownDevices(m.Devices)
			if len(unknown) > 0 {
				c.answer("unknown_devices", unknownMessage(unknown))
			}
			max, over := c.s.opts.Live.Options().MaxFilterDevices, false
			c.s.opts.Live.Subscribe(c.sub, func(f *live.Filter) {
				if over = f.WouldHold(devs) > max; !over {
					f.Subscribe(devs, m.Metrics)
				}
			})
			if over {
				c.answer("too_many_devices", fmt.Sprintf("a live socket follows at most %d devices; subscribe to \"*\" or unsubscribe some first (this subscribe was not applied)", max))
			}
		case "unsubscribe":
			c.sub.Update(func(f *live.Filter) { f.Unsubscribe(m.Devices) })
		default:
			c.answer("unknown_type", `type must be "subscribe" or "unsubscribe"`)
		}
	}
}

// badMetricFilter says what is wrong with a metric filter, or "": at most
// liveMaxMetrics distinct names, each a valid metric name, so a socket's
// filter is bounded by the cap, not by the message size.
func badMetricFilter(names []string) string {
	seen := make(map[string]bool, min(len(names), liveMaxMetrics+1))
	for _, n := range names {
		if !telemetry.ValidName(n) {
			b, _ := json.Marshal(telemetry.Truncate(n, 64))
			return fmt.Sprintf("metric name %s is not valid", b)
		}
		if seen[n] {
			continue
		}
		if seen[n] = true; len(seen) > liveMaxMetrics {
			return fmt.Sprintf("a live stream filters on at most %d metric names", liveMaxMetrics)
		}
	}
	return ""
}

// knownDevices splits ids into those in the registry (and "*") and those
// not: a filter never holds an id the hub does not know, so its size is
// bounded by the fleet whatever a client sends.
func (s *Server) knownDevices(ids []string) (known, unknown []string) {
	for _, d := range ids {
		if d == "*" || s.opts.Registry.Exists(d) {
			known = append(known, d)
		} else {
			unknown = append(unknown, d)
		}
	}
	return known, unknown
}

// unknownMessage names the first few unknown ids, and how many in all.
func unknownMessage(unknown []string) string {
	const named = 5
	list := unknown[:min(len(unknown), named)]
	b, _ := json.Marshal(list)
	more := ""
	if len(unknown) > named {
		more = fmt.Sprintf(" and %d more", len(unknown)-named)
	}
	return fmt.Sprintf("%d device ids are not in the registry and were ignored: %s%s", len(unknown), b, more)
}

func (c *liveConn) answer(code, msg string) {
	b, _ := json.Marshal(map[string]string{"type": "error", "code": code, "message": msg})
	select {
	case c.ctl <- b:
	default: // a client flooding bad messages loses the answers
	}
}

func (c *liveConn) writeLoop() {
	ping := time.NewTicker(livePingPeriod)
	defer ping.Stop()
	var buf []*live.Event
	// A data write may take until the lag check has had its chance
	// (SlowAfter) and then some: the lag check ends a stalled client
	// cleanly with 1013 once its in-flight frame is through; the deadline
	// is the backstop for a client that never reads again.
	dataWait := c.s.opts.Live.Options().SlowAfter + 2*liveWriteWait
	// A write still blocked after SlowAfter marks the client slow at once,
	// whether or not events arrive meanwhile to be judged by the
	// publisher's lag check: the close 1013 then follows the frame in
	// flight as soon as the client reads again. One timer, re-armed per
	// write (no allocation).
	stalled := time.AfterFunc(time.Hour, c.sub.MarkSlow)
	stalled.Stop()
	defer stalled.Stop()
	write := func(b []byte) error {
		_ = c.ws.SetWriteDeadline(time.Now().Add(dataWait))
		stalled.Reset(c.s.opts.Live.Options().SlowAfter)
		err := c.ws.WriteMessage(websocket.TextMessage, b)
		stalled.Stop()
		return err
	}
	fail := func() { _ = c.ws.SetReadDeadline(time.Now()) } // ends the reader
	// failed ends the connection after a write error; a timed-out write is
	// a slow consumer like one the lag check found.
	failed := func(err error) {
		if isTimeout(err) {
			c.sub.MarkSlow()
			c.s.logSlow(c.sub, "ws", c.remote, "write timed out")
		}
		fail()
	}
	kicked := func() {
		// The client gets the time of one write to read what is in flight
		// and the close.
		_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(closeTryAgain, "slow consumer"), time.Now().Add(liveWriteWait))
		c.s.logSlow(c.sub, "ws", c.remote, "behind")
		fail()
		<-c.done
	}
	for {
		select {
		case <-c.done:
			return
		case <-c.s.stopLive:
			_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(closeShutdown, "server shutdown"), time.Now().Add(time.Second))
			fail()
			<-c.done
			return
		case <-c.sub.Revoked():
			_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(CloseRevoked, "credentials revoked"), time.Now().Add(time.Second))
			c.s.log.Info("dashboard disconnected", "reason", "revoked", "token_id", c.sub.Owner().TokenID, "remote", c.remote)
			fail()
			<-c.done
			return
		case <-c.sub.Kicked():
			kicked()
			return
		case b := <-c.ctl:
			if err := write(b); err != nil {
				failed(err)
				return
			}
		case <-c.sub.Notify():
			if c.sub.IsRevoked() {
				continue // nothing more for a revoked credential; close next
			}
			metrics := c.sub.Metrics()
			var stopped bool
			var err error
			buf, stopped, err = drainLive(c.s.opts.Live, c.sub, buf,
				// per frame: nothing after a revocation; the close follows
				func() bool { return c.sub.IsKicked() || c.sub.IsRevoked() },
				func(le *live.Event) (bool, error) {
					b := live.Frame(le, metrics)
					if b == nil {
						return false, nil
					}
					return true, write(b)
				})
			if err != nil {
				failed(err)
				return
			}
			if stopped && c.sub.IsKicked() {
				kicked()
				return
			}
			c.sub.CaughtUp()
		case <-ping.C:
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(liveWriteWait)); err != nil {
				failed(err)
				return
			}
		}
	}
}

// isTimeout reports whether a write failed on its deadline: the client
// stopped reading.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// logSlow is the one log line of a slow consumer's disconnection, on
// every path that finds one (the count is markSlow's).
func (s *Server) logSlow(sub *live.Subscriber, transport, remote, detail string) {
	s.log.Warn("live client disconnected", "reason", "slow_consumer", "transport", transport, "token_id", sub.Owner().TokenID, "remote", remote, "detail", detail)
}

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
	over := func() bool {
		select {
		case <-r.Context().Done():
		case <-s.stopLive:
		case <-sub.Revoked():
			revoked()
		case <-sub.Kicked():
			s.logSlow(sub, "sse", s.authn.ClientAddr(r), "behind")
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
		case <-s.stopLive:
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
		case <-s.stopLive:
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

// drainLive is the one drain of /ws/live and SSE: it takes everything sub
// holds (events in order, then the coalesced readings) and writes it, one
// frame per event, asking stop before each frame whether the stream must
// end (revoked, kicked, shutting down). It returns buf for reuse, whether
// stop ended it early, and the first write error. write reports whether
// it wrote a frame (a metric filter may leave nothing of a reading);
// written frames are counted.
func drainLive(h *live.Hub, sub *live.Subscriber, buf []*live.Event, stop func() bool, write func(le *live.Event) (bool, error)) ([]*live.Event, bool, error) {
	buf = sub.Take(buf)
	defer clear(buf)
	for _, le := range buf {
		if stop() {
			return buf, true, nil
		}
		wrote, err := write(le)
		if err != nil {
			return buf, false, err
		}
		if wrote {
			h.CountSent(1)
		}
	}
	return buf, false, nil
}
