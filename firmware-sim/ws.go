package firmwaresim

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

var (
	errReboot = errors.New("rebooting on command")
	errFlap   = errors.New("flapping on purpose")
)

// maxMessageBytes is the hub's default message size limit; oversized
// faults go just past it.
const maxMessageBytes = 256 << 10

type wsFrame struct {
	Type   string          `json:"type"`
	ID     string          `json:"id"`
	Code   string          `json:"code"`
	Name   string          `json:"name"`
	Params json.RawMessage `json:"params"`
}

type wsCommand struct {
	id, name string
	params   json.RawMessage
}

func (d *device) wsURL() string {
	hub, _ := d.endpoint()
	return strings.Replace(strings.TrimRight(hub, "/"), "http", "ws", 1) + "/ws/device"
}

// wrongTokenProbe tries to connect with a wrong token and checks the hub
// refuses it as documented (401, or 429 once the address is throttled).
func (d *device) wrongTokenProbe(ctx context.Context) {
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, resp, err := dialer.DialContext(ctx, d.wsURL(), http.Header{"Authorization": {"Bearer fhd_not-a-real-token"}})
	d.f.c.faultsSent.Add(1)
	if c != nil {
		c.Close()
	}
	switch {
	case resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusTooManyRequests):
		d.f.c.faultsAnswered.Add(1)
	case ctx.Err() != nil:
	default:
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		d.f.c.violation("%s: wrong token answered HTTP %d (%v), want 401", d.cred.ID, status, err)
	}
}

func (d *device) runWS(ctx context.Context) error {
	if d.roll() && d.pickFault(faultWrongAuth, "") == faultWrongAuth {
		d.wrongTokenProbe(ctx)
	}
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second, EnableCompression: false}
	conn, _, err := dialer.DialContext(ctx, d.wsURL(), http.Header{"Authorization": {"Bearer " + d.cred.Token}})
	if err != nil {
		return err
	}
	defer conn.Close()
	d.f.c.connected.Add(1)
	defer d.f.c.connected.Add(-1)

	cmds := make(chan wsCommand, 16)
	readerDone := make(chan error, 1)
	go func() { // owner: runWS; ends when conn is closed
		readerDone <- d.readWS(conn, cmds)
	}()
	write := func(b []byte) error {
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		return conn.WriteMessage(websocket.TextMessage, b)
	}
	closeConn := func(code int) {
		_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
		conn.Close()
		<-readerDone
	}
	for _, p := range d.unanswered() {
		if err := write(p); err != nil {
			conn.Close()
			<-readerDone
			return err
		}
	}
	timer := time.NewTimer(d.jittered())
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			closeConn(websocket.CloseNormalClosure)
			return ctx.Err()
		case err := <-readerDone:
			return err
		case c := <-cmds:
			res, reboot := d.command(c.id, c.name, c.params)
			if err := write(res); err != nil {
				conn.Close()
				<-readerDone
				return err
			}
			if reboot {
				closeConn(websocket.CloseNormalClosure)
				return errReboot
			}
		case now := <-timer.C:
			timer.Reset(d.jittered())
			_, payload, fault, ok := d.next(now, maxMessageBytes)
			if !ok {
				if d.leave() {
					closeConn(websocket.CloseNormalClosure)
					return nil
				}
				continue
			}
			if fault == faultFlap {
				closeConn(websocket.CloseNormalClosure)
				return errFlap
			}
			if err := write(payload); err != nil {
				conn.Close()
				<-readerDone
				return err
			}
			d.f.c.sent.Add(1)
			if fault == "" {
				d.f.c.readingsSent.Add(int64(d.f.cfg.Batch))
			}
			if fault == faultOversized {
				// The documented answer is close 1009; wait for it.
				select {
				case err := <-readerDone:
					return err
				case <-time.After(oversizedAnswerWait):
					d.f.c.violation("%s: oversized message not answered with close 1009 within %s", d.cred.ID, oversizedAnswerWait)
					conn.Close()
					<-readerDone
					return errors.New("oversized message not refused")
				}
			}
		}
	}
}

// readWS is the connection's one reader: acks and errors settle the
// ledger, commands go to the sender (dropped if 16 are already waiting).
func (d *device) readWS(conn *websocket.Conn, cmds chan<- wsCommand) error {
	conn.SetReadLimit(1 << 20)
	for {
		_, data, err := conn.ReadMessage()
		if err != nil {
			if websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
				d.closedByFault()
			}
			return err
		}
		var f wsFrame
		if err := json.Unmarshal(data, &f); err != nil {
			d.f.c.violation("%s: hub sent a frame that is not JSON", d.cred.ID)
			continue
		}
		now := time.Now()
		switch f.Type {
		case "ack":
			d.answered(f.ID, "", now)
		case "error":
			d.answered(f.ID, f.Code, now)
		case "command":
			select {
			case cmds <- wsCommand{f.ID, f.Name, f.Params}:
			default:
			}
		case "pong":
		default:
			d.f.c.violation("%s: unknown frame type %q from hub", d.cred.ID, f.Type)
		}
	}
}
