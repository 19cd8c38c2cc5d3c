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
	// A "state" frame from the hub: the desired document.
	Desired map[string]json.RawMessage `json:"desired"`
	Delta   map[string]json.RawMessage `json:"delta"`
	Version int64                      `json:"version"`
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
	if d.f.wrongAuth && d.roll() && d.pickFault(faultWrongAuth, "") == faultWrongAuth {
		d.wrongTokenProbe(ctx)
	}
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second, EnableCompression: false}
	conn, _, err := dialer.DialContext(ctx, d.wsURL(), http.Header{"Authorization": {"Bearer " + d.cred.Token}})
	if err != nil {
		return err
	}
	d.f.c.connected.Add(1)
	defer d.f.c.connected.Add(-1)
	l := &wsLink{conn: conn, cmds: make(chan wsCommand, 16), states: newDesiredQueue(), end: newEndOnce()}
	go func() { // owner: the wsLink; ends when conn is closed (wsLink.close waits for it)
		l.end.end(d.readWS(conn, l.cmds, l.states))
	}()
	return d.stream(ctx, l)
}

// wsLink is a device's WebSocket session: writes go straight to the
// connection (the send loop is its one writer), readWS is its one reader.
type wsLink struct {
	conn   *websocket.Conn
	cmds   chan wsCommand // bounded at 16; readWS drops a command when full
	states desiredQueue   // the newest desired document; readWS coalesces
	end    *endOnce
	closed bool // only the send loop touches it
}

func (l *wsLink) write(b []byte) error {
	_ = l.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return l.conn.WriteMessage(websocket.TextMessage, b)
}

func (l *wsLink) send(_ context.Context, _, _ string, payload []byte) error { return l.write(payload) }
func (l *wsLink) answer(_ context.Context, result []byte) error             { return l.write(result) }
func (l *wsLink) commands() <-chan wsCommand                                { return l.cmds }
func (l *wsLink) desired() <-chan desiredDoc                                { return l.states }
func (l *wsLink) report(_ context.Context, frame []byte) error              { return l.write(frame) }
func (l *wsLink) ended() <-chan struct{}                                    { return l.end.ch }
func (l *wsLink) endErr() error                                             { return l.end.err }
func (l *wsLink) oversizedAnswer() string                                   { return "close 1009" }

// settleOversized has nothing to do: readWS settles the message when it
// reads close 1009.
func (l *wsLink) settleOversized() {}

func (l *wsLink) close() {
	if l.closed {
		return
	}
	l.closed = true
	_ = l.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	l.conn.Close()
	<-l.end.ch
}

// readWS is the connection's one reader: acks and errors settle the
// ledger, commands go to the sender (dropped if 16 are already waiting),
// desired documents too (the newest replaces one not yet applied).
func (d *device) readWS(conn *websocket.Conn, cmds chan<- wsCommand, states desiredQueue) error {
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
			if isStateID(f.ID) {
				d.stateAnswered(f.ID, "")
				continue
			}
			d.answered(f.ID, "", now)
		case "error":
			if isStateID(f.ID) {
				d.stateAnswered(f.ID, f.Code)
				continue
			}
			d.answered(f.ID, f.Code, now)
		case "state":
			states.put(desiredDoc{Desired: f.Desired, Delta: f.Delta, Version: f.Version})
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
