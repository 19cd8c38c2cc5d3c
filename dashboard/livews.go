package dashboard

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/dashboard/live"
)

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
