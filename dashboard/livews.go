package dashboard

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/devices"
)

// Timing and size limits of operator live connections.
const (
	liveWriteWait    = 5 * time.Second
	livePongWait     = 60 * time.Second
	livePingPeriod   = livePongWait * 9 / 10
	liveMaxMessage   = 64 << 10
	liveMaxDevices   = 10000
	sseHeartbeat     = 15 * time.Second
	closeTryAgain    = 1013 // RFC 6455: try again later (slow consumer)
	closeShutdown    = websocket.CloseGoingAway
	maxLiveFrameSize = 1 << 20
)

// CloseRevoked closes a live socket whose credential stopped working: its
// token was deleted, its session signed out or expired.
const CloseRevoked = 4003

// originAllowed applies the hub's one Origin policy (devices.OriginAllowed)
// to operator streams.
func (s *Server) originAllowed(r *http.Request) bool {
	return devices.OriginAllowed(r, s.opts.AllowedOrigins)
}

// bindLive registers sub as a live connection of op, or answers the
// request itself and returns false: 503 when full, 401 when op's
// credential ended while the request was being authenticated (a
// revocation announced before sub was registered would miss it).
func (s *Server) bindLive(w http.ResponseWriter, op devices.Operator, sub *subscriber) bool {
	sub.owner = op
	if !s.opts.Live.add(sub) {
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "too many live connections")
		return false
	}
	if !s.opts.Registry.OperatorActive(op) {
		s.opts.Live.remove(sub)
		writeErr(w, http.StatusUnauthorized, "unauthorized", "the credential was revoked")
		return false
	}
	return true
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
	sub := newSubscriber(s.opts.Live)
	if !s.bindLive(w, op, sub) {
		return
	}
	defer s.opts.Live.remove(sub)
	if !s.trackLive() {
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "shutting down")
		return
	}
	defer s.liveWG.Done()
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &liveConn{s: s, ws: conn, sub: sub, done: make(chan struct{}), ctl: make(chan []byte, 16)}
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
	s    *Server
	ws   *websocket.Conn
	sub  *subscriber
	done chan struct{}
	ctl  chan []byte // error answers to client messages; bounded
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
			c.s.opts.Live.subscribe(c.sub, func(f *filter) { applySubscribe(f, m.Devices, m.Metrics) })
		case "unsubscribe":
			c.sub.update(func(f *filter) { applyUnsubscribe(f, m.Devices) })
		default:
			c.answer("unknown_type", `type must be "subscribe" or "unsubscribe"`)
		}
	}
}

func applySubscribe(f *filter, devs, metrics []string) {
	for _, d := range devs {
		if d == "*" {
			f.all = true
			continue
		}
		if f.devices == nil {
			f.devices = map[string]bool{}
		}
		f.devices[d] = true
	}
	if len(metrics) > 0 {
		f.metrics = map[string]bool{}
		for _, m := range metrics {
			f.metrics[m] = true
		}
	} else {
		f.metrics = nil
	}
}

func applyUnsubscribe(f *filter, devs []string) {
	for _, d := range devs {
		if d == "*" {
			f.all = false
			f.devices = nil
			continue
		}
		delete(f.devices, d)
	}
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
	var buf []*liveEvent
	write := func(b []byte) bool {
		_ = c.ws.SetWriteDeadline(time.Now().Add(liveWriteWait))
		return c.ws.WriteMessage(websocket.TextMessage, b) == nil
	}
	fail := func() { _ = c.ws.SetReadDeadline(time.Now()) } // ends the reader
	for {
		select {
		case <-c.done:
			return
		case <-c.s.stopLive:
			_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(closeShutdown, "server shutdown"), time.Now().Add(time.Second))
			fail()
			<-c.done
			return
		case <-c.sub.revoked:
			_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(CloseRevoked, "credentials revoked"), time.Now().Add(time.Second))
			c.s.log.Info("dashboard disconnected", "reason", "revoked", "token_id", c.sub.owner.TokenID, "remote", c.ws.RemoteAddr().String())
			fail()
			<-c.done
			return
		case <-c.sub.kick:
			_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(closeTryAgain, "slow consumer"), time.Now().Add(time.Second))
			c.s.log.Info("dashboard disconnected", "reason", "slow_consumer", "remote", c.ws.RemoteAddr().String())
			fail()
			<-c.done
			return
		case b := <-c.ctl:
			if !write(b) {
				fail()
				return
			}
		case <-c.sub.notify:
			if c.sub.isRevoked() {
				continue // nothing more for a revoked credential; close next
			}
			buf = c.sub.take(buf)
			metrics := c.sub.metrics()
			for _, le := range buf {
				b := c.sub.frame(le, metrics)
				if b == nil {
					continue
				}
				if !write(b) {
					fail()
					return
				}
				c.s.opts.Live.sent.Add(1)
			}
			clear(buf)
		case <-ping.C:
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(liveWriteWait)); err != nil {
				fail()
				return
			}
		}
	}
}

func (s *subscriber) metrics() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.metrics
}

// serveSSE is GET /api/v1/live: the same events as Server-Sent Events, for
// networks that block WebSockets. Last-Event-ID resumes from the replay
// window.
func (s *Server) serveSSE(w http.ResponseWriter, r *http.Request) {
	if !s.originAllowed(r) {
		writeErr(w, http.StatusForbidden, "forbidden", "Origin not allowed")
		return
	}
	q := r.URL.Query()
	sub := newSubscriber(s.opts.Live)
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
	var metrics []string
	if v := q.Get("metrics"); v != "" {
		metrics = strings.Split(v, ",")
	}
	f := sub.update(func(f *filter) { applySubscribe(f, devs, metrics) })
	if !s.bindLive(w, OperatorFrom(r.Context()), sub) {
		return
	}
	defer s.opts.Live.remove(sub)
	if !s.trackLive() {
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "shutting down")
		return
	}
	defer s.liveWG.Done()

	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{}) // a long-lived response; the server's ReadTimeout does not apply
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	write := func(le *liveEvent) error {
		b := sub.frame(le, f.metrics)
		if b == nil {
			return nil
		}
		_ = rc.SetWriteDeadline(time.Now().Add(liveWriteWait))
		if le.seq > 0 {
			if _, err := fmt.Fprintf(w, "id: %d\n", le.seq); err != nil {
				return err
			}
		}
		_, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", le.ev.Type, b)
		return err
	}
	// Resume or snapshot, then live.
	resumed := false
	if last := r.Header.Get("Last-Event-ID"); last != "" {
		if seq, err := strconv.ParseUint(last, 10, 64); err == nil {
			evs, complete := s.opts.Live.since(seq)
			for _, le := range evs {
				if f.matches(&le.ev) {
					if write(le) != nil {
						return
					}
				}
			}
			resumed = complete
		}
	}
	if !resumed {
		for _, ev := range s.opts.Live.snapshot(&f) {
			if write(&liveEvent{ev: ev}) != nil {
				return
			}
		}
	}
	if rc.Flush() != nil {
		return
	}
	hb := time.NewTicker(sseHeartbeat)
	defer hb.Stop()
	var buf []*liveEvent
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.stopLive:
			return
		case <-sub.kick:
			return
		case <-sub.revoked:
			s.log.Info("dashboard disconnected", "reason", "revoked", "token_id", sub.owner.TokenID, "transport", "sse", "remote", s.remoteIP(r))
			return
		case <-hb.C:
			_ = rc.SetWriteDeadline(time.Now().Add(liveWriteWait))
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case <-sub.notify:
			if sub.isRevoked() {
				continue // nothing more for a revoked credential; end next
			}
			buf = sub.take(buf)
			for _, le := range buf {
				if err := write(le); err != nil {
					return
				}
				s.opts.Live.sent.Add(1)
			}
			clear(buf)
			if rc.Flush() != nil {
				return
			}
		}
	}
}
