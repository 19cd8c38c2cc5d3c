package firmwaresim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/telemetry"
)

type inflightMsg struct {
	id    string
	fault string
	tok   paho.Token
}

// mqttOptions connects as the device: username and client id are both the
// device id, the hub's contract (any other client id is refused with
// return code 0x02, so no device can take over another's session). An
// anonymous device (Config.Anonymous) sends no username or password.
func (d *device) mqttOptions(password string, lost func(error)) *paho.ClientOptions {
	_, broker := d.endpoint()
	o := paho.NewClientOptions().AddBroker("tcp://" + broker).SetClientID(d.cred.ID)
	if !d.f.cfg.Anonymous {
		o.SetUsername(d.cred.ID).SetPassword(password)
	}
	return o.SetProtocolVersion(4).SetCleanSession(true).SetOrderMatters(false).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetKeepAlive(60 * time.Second).SetConnectTimeout(10 * time.Second).SetWriteTimeout(10 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost(err) })
}

// wrongTokenProbeMQTT checks the broker refuses a wrong token with return
// code 5 (not authorized).
func (d *device) wrongTokenProbeMQTT(ctx context.Context) {
	c := paho.NewClient(d.mqttOptions("fhd_not-a-real-token", func(error) {}))
	tok := c.Connect()
	if !waitToken(ctx, tok, 15*time.Second) {
		return
	}
	d.f.c.faultsSent.Add(1)
	ct := tok.(*paho.ConnectToken)
	if tok.Error() != nil && ct.ReturnCode() == 5 {
		d.f.c.faultsAnswered.Add(1)
	} else {
		d.f.c.violation("%s: wrong MQTT token got return code %d (%v), want 5", d.cred.ID, ct.ReturnCode(), tok.Error())
		c.Disconnect(0)
	}
}

func waitToken(ctx context.Context, tok paho.Token, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return true
	case <-ctx.Done():
		return false
	case <-t.C:
		return false
	}
}

// faultAnswerWait bounds how long after its PUBACK a faulty message's error
// frame may take. MQTT 3.1.1 acknowledges a refused message too and
// publishes the error on devices/{id}/errors, in no set order with the
// PUBACK: the error settles a faulty message; with none within this wait
// the PUBACK was an ack (a violation). Generous: a loaded test machine must
// not turn into a violation.
const faultAnswerWait = 30 * time.Second

// oversizedAnswerWait bounds how long the hub may take to close a
// connection that sent an oversized message, likewise generous.
const oversizedAnswerWait = 60 * time.Second

func (d *device) runMQTT(ctx context.Context) error {
	if d.f.wrongAuth && d.roll() && d.pickFault(faultWrongAuth, "") == faultWrongAuth {
		d.wrongTokenProbeMQTT(ctx)
	}
	end := newEndOnce()
	c := paho.NewClient(d.mqttOptions(d.cred.Token, end.end))
	tok := c.Connect()
	if !waitToken(ctx, tok, 15*time.Second) {
		c.Disconnect(0)
		return errors.New("mqtt connect timed out")
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("mqtt connect: %w", err)
	}
	d.f.c.connected.Add(1)
	defer d.f.c.connected.Add(-1)
	defer c.Disconnect(100)

	cmds := make(chan wsCommand, 16)
	states := newDesiredQueue()
	id := d.cred.ID
	errTopic := telemetry.Topic(id, telemetry.KindErrors)
	desiredTopic := stateDesiredTopic(id)
	sub := c.SubscribeMultiple(map[string]byte{telemetry.Topic(id, telemetry.KindCommands): 1, errTopic: 0, desiredTopic: 1}, func(_ paho.Client, m paho.Message) {
		var f wsFrame
		if json.Unmarshal(m.Payload(), &f) != nil {
			d.f.c.violation("%s: hub published a message that is not JSON on %s", d.cred.ID, m.Topic())
			return
		}
		switch m.Topic() {
		case errTopic:
			if isStateID(f.ID) {
				d.stateAnswered(f.ID, f.Code)
				return
			}
			d.answered(f.ID, f.Code, time.Now())
			return
		case desiredTopic:
			states.put(desiredDoc{Desired: f.Desired, Delta: f.Delta, Version: f.Version})
			return
		}
		select {
		case cmds <- wsCommand{f.ID, f.Name, f.Params}:
		default: // 16 commands waiting: drop; the hub redelivers
		}
	})
	if !waitToken(ctx, sub, 15*time.Second) || sub.Error() != nil {
		return fmt.Errorf("mqtt subscribe: %v", sub.Error())
	}

	// One waiter settles PUBACKs in publish order; it stops with the
	// connection.
	inflight := make(chan inflightMsg, d.f.cfg.MaxInflight)
	stop := make(chan struct{})
	waiterDone := make(chan struct{})
	go func() { // owner: runMQTT; ends when stop closes
		defer close(waiterDone)
		d.settlePubacks(inflight, stop)
	}()
	defer func() { close(stop); <-waiterDone }()
	return d.stream(ctx, &mqttLink{d: d, c: c, id: id, cmds: cmds, states: states, inflight: inflight, end: end})
}

// settlePubacks settles PUBACKs in publish order until stop closes.
func (d *device) settlePubacks(inflight <-chan inflightMsg, stop <-chan struct{}) {
	// Faulty messages PUBACKed and waiting for their error frame, at
	// most the ledger's size.
	type awaiting struct {
		id string
		by time.Time
	}
	var waiting []awaiting
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			waiting = slices.DeleteFunc(waiting, func(a awaiting) bool {
				if !d.unsettled(a.id) {
					return true
				}
				if now.After(a.by) { // no error frame: the PUBACK was an ack
					d.answered(a.id, "", now)
					return true
				}
				return false
			})
		case m := <-inflight:
			select {
			case <-stop:
				return
			case <-m.tok.Done():
			}
			switch {
			case d.f.cfg.QoS0:
				d.settleUnacked(m.id) // sent; only InfluxDB can tell whether it landed
			case m.tok.Error() == nil && m.fault == "":
				d.answered(m.id, "", time.Now())
			case m.tok.Error() == nil && m.fault != faultOversized:
				waiting = append(waiting, awaiting{m.id, time.Now().Add(faultAnswerWait)})
			}
		}
	}
}

// mqttLink is a device's MQTT session; paho's handlers feed cmds and end.
type mqttLink struct {
	d        *device
	c        paho.Client
	id       string
	cmds     chan wsCommand   // bounded at 16; the subscription handler drops when full
	states   desiredQueue     // the newest desired document; the handler coalesces
	inflight chan inflightMsg // bounded by MaxInflight; send waits (back-pressure) or ends with the connection
	end      *endOnce
}

func (l *mqttLink) send(ctx context.Context, id, fault string, payload []byte) error {
	qos := byte(1)
	if l.d.f.cfg.QoS0 {
		qos = 0
	}
	t := l.c.Publish(telemetry.Topic(l.id, telemetry.KindTelemetry), qos, false, payload)
	select {
	case l.inflight <- inflightMsg{id: id, fault: fault, tok: t}:
		return nil
	case <-l.end.ch:
		return l.end.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// answer publishes a command result; the result topic takes the frame
// without "type".
func (l *mqttLink) answer(ctx context.Context, res []byte) error {
	var m map[string]any
	_ = json.Unmarshal(res, &m)
	delete(m, "type")
	b, _ := json.Marshal(m)
	if t := l.c.Publish(telemetry.Topic(l.id, telemetry.KindCommandResult), 1, false, b); !waitToken(ctx, t, 10*time.Second) || t.Error() != nil {
		return fmt.Errorf("publish command result: %v", t.Error())
	}
	return nil
}

func (l *mqttLink) commands() <-chan wsCommand { return l.cmds }
func (l *mqttLink) desired() <-chan desiredDoc { return l.states }

// report publishes a reported patch at QoS 1 and waits for its PUBACK
// (bounded); a refusal would come on the errors topic.
func (l *mqttLink) report(ctx context.Context, frame []byte) error {
	t := l.c.Publish(stateReportedTopic(l.id), 1, false, reportPatch(frame))
	if !waitToken(ctx, t, 10*time.Second) || t.Error() != nil {
		return fmt.Errorf("publish reported state: %v", t.Error())
	}
	l.d.stateAnswered("", "")
	return nil
}
func (l *mqttLink) ended() <-chan struct{}  { return l.end.ch }
func (l *mqttLink) endErr() error           { return l.end.err }
func (l *mqttLink) oversizedAnswer() string { return "the broker closing the connection" }

// settleOversized settles the oversized message: for MQTT the broker
// closing the connection is the documented answer.
func (l *mqttLink) settleOversized() { l.d.closedByFault() }

// close has nothing to do: runMQTT disconnects the client after the loop.
func (l *mqttLink) close() {}
