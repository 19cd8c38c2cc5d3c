package firmwaresim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// link is one connected session of a device over one transport: the only
// part of the send loop that differs between WebSocket and MQTT. The loop
// (device.stream) owns the link and is its only caller; close is safe to
// call more than once.
type link interface {
	// send writes one telemetry message; id and fault let the transport
	// settle it in the ledger when the hub answers.
	send(ctx context.Context, id, fault string, payload []byte) error
	// answer writes the result frame of a command.
	answer(ctx context.Context, result []byte) error
	// commands yields the hub's commands (the transport drops one that
	// arrives while 16 are waiting).
	commands() <-chan wsCommand
	// desired yields the hub's desired state documents, the newest only
	// (desiredQueue coalesces).
	desired() <-chan desiredDoc
	// report writes a reported state patch (a reportFrame).
	report(ctx context.Context, frame []byte) error
	// ended is closed when the connection ends by itself; endErr says why.
	ended() <-chan struct{}
	endErr() error
	// oversizedAnswer names the documented answer to an oversized message
	// and settles it once the connection ended while one was waiting.
	oversizedAnswer() string
	settleOversized()
	// close ends the session the normal way and waits for its reader.
	close()
}

// stream is the device's one send loop over any transport: resend what is
// unanswered, then telemetry on a jittered timer, command results, faults,
// until ctx ends, the connection ends, or the device leaves.
func (d *device) stream(ctx context.Context, l link) error {
	defer l.close()
	for _, p := range d.unanswered() {
		var id struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(p, &id)
		if err := l.send(ctx, id.ID, "", p); err != nil {
			return err
		}
	}
	// Firmware, boot time and settings at every connect.
	if err := l.report(ctx, d.connectReport()); err != nil {
		return err
	}
	timer := time.NewTimer(d.phase())
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.rateChanged:
			timer.Reset(d.phase())
		case <-l.ended():
			return l.endErr()
		case doc := <-l.desired():
			if frame := d.applyDesired(doc); frame != nil {
				if err := l.report(ctx, frame); err != nil {
					return err
				}
			}
		case c := <-l.commands():
			res, reboot := d.command(c.id, c.name, c.params)
			if err := l.answer(ctx, res); err != nil {
				return err
			}
			if reboot {
				return errReboot
			}
		case now := <-timer.C:
			timer.Reset(d.jittered())
			id, payload, fault, ok := d.next(now, maxMessageBytes)
			if !ok {
				if d.leave() {
					return nil
				}
				continue
			}
			if fault == faultFlap {
				return errFlap
			}
			if err := l.send(ctx, id, fault, payload); err != nil {
				return err
			}
			d.f.c.sent.Add(1)
			if fault == "" {
				d.f.c.readingsSent.Add(int64(d.f.cfg.Batch))
			}
			if fault == faultOversized {
				return d.awaitOversizedAnswer(ctx, l)
			}
		}
	}
}

// awaitOversizedAnswer waits for the hub to end the connection, the
// documented answer to an oversized message.
func (d *device) awaitOversizedAnswer(ctx context.Context, l link) error {
	t := time.NewTimer(oversizedAnswerWait)
	defer t.Stop()
	select {
	case <-l.ended():
		l.settleOversized()
		return l.endErr()
	case <-t.C:
		d.f.c.violation("%s: oversized message not answered with %s within %s", d.cred.ID, l.oversizedAnswer(), oversizedAnswerWait)
		return errors.New("oversized message not refused")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// endOnce records why a connection ended, once, for ended/endErr.
type endOnce struct {
	once sync.Once
	ch   chan struct{}
	err  error // written once before ch closes; read only after
}

func newEndOnce() *endOnce { return &endOnce{ch: make(chan struct{})} }

// end records err and closes ch; only the first call counts (the
// WebSocket reader calls it once; paho's connection-lost handler should,
// but a second call must not panic inside paho).
func (e *endOnce) end(err error) {
	e.once.Do(func() {
		if err == nil {
			err = errors.New("closed")
		}
		e.err = fmt.Errorf("connection ended: %w", err)
		close(e.ch)
	})
}
