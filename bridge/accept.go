package bridge

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

// Errors of the pipeline's Store. A Store's error wraps one of them (or
// is mapped to one by storeError for the spool's own sentinels), and the
// pipeline answers the device from it alone.
var (
	// ErrStoreFull: the store cannot take the message now (full, closed,
	// or it did not answer within StoreTimeout); the device retries.
	ErrStoreFull = errors.New("bridge: store cannot take the message now")
	// ErrStoreTooLarge: the message is larger than the store takes.
	ErrStoreTooLarge = errors.New("bridge: message too large for the store")
	// ErrMaybeStored: the store gave up after it may have stored the
	// message; the metric names the message claimed stay claimed. With
	// ErrStoreFull also in the chain (a timeout) the device is told to
	// retry; otherwise it is an internal error.
	ErrMaybeStored = errors.New("bridge: message may be stored")
)

// storeError maps an error of Store.Append onto the bridge's sentinels,
// keeping the original in the chain. It is the only place that knows the
// spool's errors.
func storeError(err error) error {
	switch {
	case err == nil, errors.Is(err, ErrStoreFull), errors.Is(err, ErrStoreTooLarge), errors.Is(err, ErrMaybeStored):
		return err
	case errors.Is(err, spool.ErrMaybeStored) && errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %w: %w", ErrMaybeStored, ErrStoreFull, err)
	case errors.Is(err, spool.ErrMaybeStored):
		return fmt.Errorf("%w: %w", ErrMaybeStored, err)
	case errors.Is(err, spool.ErrFull), errors.Is(err, context.DeadlineExceeded), errors.Is(err, spool.ErrClosed):
		return fmt.Errorf("%w: %w", ErrStoreFull, err)
	case errors.Is(err, spool.ErrTooLarge):
		return fmt.Errorf("%w: %w", ErrStoreTooLarge, err)
	}
	return err
}

// Message is one payload a transport read from a device.
type Message struct {
	// Kind is what the topic or path says the payload is; KindFrame for a
	// WebSocket frame, whose "type" says it.
	Kind    telemetry.Kind
	Payload []byte
	// Binary marks a WebSocket binary frame: refused (only JSON text is
	// spoken), after the rate limit like every other message.
	Binary bool
	// PathID is the command id an HTTP result path names: the result must
	// carry that id or none. Empty elsewhere.
	PathID string
}

// Reply is what a transport sends for an accepted message.
type Reply uint8

// Replies.
const (
	ReplyNone Reply = iota // a command result: nothing (HTTP: 204)
	ReplyAck               // telemetry: every reading is durable
	ReplyPong              // a ping
)

// Answer is the pipeline's verdict on one message. Err, when set, is the
// refusal to send back in the form telemetry.AnswerFor(Err.Code) gives for
// the transport; otherwise Reply says what to send.
type Answer struct {
	ID    string // the message's id, echoed in the ack or error frame
	Err   *telemetry.Error
	Reply Reply
	// Version is the new reported version of an accepted state message
	// (Reply is ReplyAck).
	Version int64
	// State marks the answer to a state message: its ack carries Version.
	State bool
	// Unknown marks a command result for no command the device has
	// pending: HTTP answers 404, the sockets say nothing (a redelivered
	// duplicate is not the device's fault).
	Unknown bool
}

// ack is the Answer of accepted telemetry.
func ack(id string) Answer { return Answer{ID: id, Reply: ReplyAck} }

// Accept is the pipeline's one entry point, used by every transport for
// every device message (accept); a refusal is also told to
// Options.Rejections with the message's id.
func (b *Bridge) Accept(ctx context.Context, s *Session, m Message) Answer {
	a := b.accept(ctx, s, m)
	if a.Err != nil && b.opts.Rejections != nil {
		b.opts.Rejections.Rejected(s.DeviceID, s.Transport, a.ID, a.Err)
	}
	return a
}

// accept is the pipeline: rate limit, decode for the message's kind,
// validate, then by type: telemetry goes to the store (and only then to
// presence/last-seen and live fan-out), a command result to the commands,
// a ping is answered. Nothing is stored unless the Answer has no Err, and
// a telemetry Answer without Err means every reading is durable.
func (b *Bridge) accept(ctx context.Context, s *Session, m Message) Answer {
	s.messages.Add(1)
	// The device's rate limit bounds what it sends unasked: frames on its
	// socket and telemetry. A command result on its own topic or path
	// answers the hub and is never refused for rate (docs/protocol.md: the
	// result endpoint answers 204 or 404), or the command would time out.
	if m.Kind != telemetry.KindCommandResult && !s.limiter.Allow() {
		return Answer{Err: b.reject(s, telemetry.ErrRateLimited)}
	}
	if m.Binary {
		return Answer{Err: b.reject(s, &telemetry.Error{Code: telemetry.CodeBadJSON, Message: "binary frames are not supported; send JSON text frames"})}
	}
	if m.Kind == telemetry.KindStateReported { // the payload is the merge patch itself
		return b.reportState(ctx, s, "", m.Payload)
	}
	f, err := b.opts.Codec.DecodeKind(m.Payload, m.Kind)
	if err != nil {
		return Answer{ID: idOf(f), Err: b.reject(s, asError(err))}
	}
	switch f.Type {
	case telemetry.TypeState:
		patch, err := b.opts.Codec.StatePatch(f)
		if err != nil {
			return Answer{ID: f.ID, State: true, Err: b.reject(s, asError(err))}
		}
		return b.reportState(ctx, s, f.ID, patch)
	case telemetry.TypeTelemetry:
		id, e := b.ingest(ctx, s, f)
		if e != nil {
			return Answer{ID: id, Err: e}
		}
		return ack(id)
	case telemetry.TypeCommandResult:
		if f.ID == "" {
			f.ID = m.PathID
		}
		res, err := b.opts.Codec.CommandResult(f)
		if err == nil && m.PathID != "" && res.ID != m.PathID {
			err = &telemetry.Error{Code: telemetry.CodeInvalid, Message: "id: must match the command id in the path"}
		}
		if err != nil {
			return Answer{ID: f.ID, Err: b.reject(s, asError(err))}
		}
		if b.opts.Commands.CommandResult(s.DeviceID, res) != nil {
			return Answer{ID: res.ID, Unknown: true}
		}
		return Answer{ID: res.ID}
	}
	return Answer{ID: f.ID, Reply: ReplyPong} // DecodeKind lets no other type through
}

// reportState is the state step of Accept: the patch goes to the state
// service, which checks it (bounds, keys, an object) and stores it; the
// answer is the ack with the new reported version, or the refusal.
func (b *Bridge) reportState(ctx context.Context, s *Session, id string, patch []byte) Answer {
	if b.opts.State == nil {
		return Answer{ID: id, State: true, Err: b.reject(s, ErrNoState)}
	}
	sctx, cancel := context.WithTimeout(ctx, b.opts.StoreTimeout)
	defer cancel()
	v, err := b.opts.State.ReportState(sctx, s.DeviceID, patch)
	if err != nil {
		var e *telemetry.Error
		if errors.As(err, &e) {
			return Answer{ID: id, State: true, Err: b.reject(s, e)}
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return Answer{ID: id, State: true, Err: b.reject(s, telemetry.ErrOverloaded)}
		}
		b.log.Error("reported state not stored", "device", s.DeviceID, "err", err)
		return Answer{ID: id, State: true, Err: b.reject(s, telemetry.ErrInternal)}
	}
	b.opts.Devices.Touch(s.DeviceID, b.opts.Now())
	return Answer{ID: id, Reply: ReplyAck, State: true, Version: v}
}

// Ingest is Accept for a telemetry payload (the MQTT telemetry topic, the
// HTTP telemetry path, the cluster's shared subscription): the message id
// to acknowledge, or the refusal.
func (b *Bridge) Ingest(ctx context.Context, s *Session, payload []byte) (string, *telemetry.Error) {
	a := b.Accept(ctx, s, Message{Kind: telemetry.KindTelemetry, Payload: payload})
	return a.ID, a.Err
}

// ingest is the telemetry step of Accept for a decoded, admitted frame.
func (b *Bridge) ingest(ctx context.Context, s *Session, f *telemetry.Frame) (string, *telemetry.Error) {
	t, err := b.opts.Codec.Telemetry(f)
	if err != nil {
		return f.ID, b.reject(s, asError(err))
	}
	d := s.dev
	if d == nil {
		b.mu.Lock()
		d = b.deviceLocked(s.DeviceID)
		b.mu.Unlock()
	}
	var c claims
	if e := b.checkSchema(ctx, s, d, t, &c); e != nil {
		return t.ID, b.reject(s, e)
	}
	for i := range t.Readings {
		if r := &t.Readings[i]; r.Nanos != 0 { // sent without ts: unique per device
			r.Nanos = telemetry.HubTime(&d.clock, r.Nanos)
			r.TS = r.Nanos / int64(time.Millisecond)
		}
	}
	bufp := b.bufs.Get().(*[]byte)
	buf := telemetry.AppendLines((*bufp)[:0], s.DeviceID, b.opts.Devices.Tags(s.DeviceID), t.Readings)
	serr := storeError(b.appendStore(ctx, s, len(t.Readings), buf))
	*bufp = buf
	if cap(buf) <= 64<<10 {
		b.bufs.Put(bufp)
	}
	if serr != nil {
		if !errors.Is(serr, ErrMaybeStored) { // it may be stored: its claims stay
			b.releaseClaims(ctx, s, d, &c)
		}
		switch {
		case errors.Is(serr, ErrStoreFull):
			return t.ID, b.reject(s, telemetry.ErrOverloaded)
		case errors.Is(serr, ErrStoreTooLarge):
			return t.ID, b.reject(s, &telemetry.Error{Code: telemetry.CodeTooLarge, Message: "message too large"})
		default:
			b.log.Error("spool append failed", "device", s.DeviceID, "err", serr)
			return t.ID, b.reject(s, telemetry.ErrInternal)
		}
	}
	now := b.opts.Now()
	b.opts.Devices.Touch(s.DeviceID, now)
	s.readings.Add(int64(len(t.Readings)))
	switch {
	case b.batch != nil:
		evs := make([]telemetry.Event, len(t.Readings))
		for i, r := range t.Readings {
			evs[i] = telemetry.Event{Type: telemetry.EventReading, Device: s.DeviceID, TS: r.TS, Metrics: r.Metrics}
		}
		b.batch.PublishBatch(evs)
	case b.opts.Fanout != nil:
		for _, r := range t.Readings {
			b.opts.Fanout.Publish(telemetry.Event{Type: telemetry.EventReading, Device: s.DeviceID, TS: r.TS, Metrics: r.Metrics})
		}
	}
	return t.ID, nil
}

// appendStore appends one message of s to the store under ctx bounded
// by StoreTimeout. A connected session reuses its own bound
// (storeDeadline); an ephemeral one, or a second append of a session
// already in one, gets context.WithTimeout.
func (b *Bridge) appendStore(ctx context.Context, s *Session, points int, payload []byte) error {
	if d := s.storeDeadline(); d != nil && d.arm(ctx, b.opts.StoreTimeout) {
		defer d.disarm()
		return b.opts.Store.Append(d, points, payload)
	}
	sctx, cancel := context.WithTimeout(ctx, b.opts.StoreTimeout)
	defer cancel()
	return b.opts.Store.Append(sctx, points, payload)
}

func idOf(f *telemetry.Frame) string {
	if f == nil {
		return ""
	}
	return f.ID
}

// asError returns err as the refusal to send: the codec's own, or
// bad_json for anything else.
func asError(err error) *telemetry.Error {
	var e *telemetry.Error
	if errors.As(err, &e) {
		return e
	}
	return &telemetry.Error{Code: telemetry.CodeBadJSON, Message: err.Error()}
}
