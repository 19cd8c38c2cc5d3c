package ws

import (
	"context"
	"errors"
	"mime"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/state"
	"github.com/fieldhub/fieldhub/telemetry"
)

// State is the device state service as the device transports use it
// (*state.Service): the state a device reads, its desired updates while
// it is connected, and the HTTP long poll. Reported patches go through
// the bridge's pipeline like every other device message.
type State interface {
	Get(ctx context.Context, device string) (state.View, error)
	Subscribe(ctx context.Context, device string, fn func(*state.Update)) (state.Update, func(), error)
	WaitDesired(ctx context.Context, device string, version int64, wait time.Duration, stop <-chan struct{}, valid func() bool) (state.Update, bool, error)
}

// Tokens re-checks a device's credential during a long poll
// (*devices.Registry).
type Tokens interface {
	StillValid(id string, h devices.TokenHash) bool
}

// pendingState is the desired-state frame waiting for a connection's
// writer: one slot, the latest update wins (coalescing), so a burst of
// operator changes costs the socket one frame per write, never a queue.
type pendingState struct {
	mu      sync.Mutex // guards frame and version
	frame   []byte
	version int64 // the highest version offered; -1 before the first
	ready   chan struct{}
}

func newPendingState() *pendingState {
	return &pendingState{version: -1, ready: make(chan struct{}, 1)}
}

// offer takes u for the writer unless an update at least as new was
// offered already; nil (a credentials change) is ignored: the session is
// re-checked by the bridge. It never blocks.
func (p *pendingState) offer(u *state.Update) {
	if u == nil {
		return
	}
	frame := u.Encode(true)
	p.mu.Lock()
	if u.Version <= p.version {
		p.mu.Unlock()
		return
	}
	p.frame, p.version = frame, u.Version
	p.mu.Unlock()
	select {
	case p.ready <- struct{}{}:
	default: // the writer is already told; it takes the latest frame
	}
}

// take returns the waiting frame, or nil.
func (p *pendingState) take() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.frame
	p.frame = nil
	return f
}

// subscribeState starts the desired updates of c's device: the current
// one first if there is one (a desired document that was ever written:
// version > 0; firmware that never uses state gets no frame it does not
// know), then every change. The returned cancel ends them.
func (c *conn_) subscribeState(ctx context.Context) func() {
	if c.h.opts.State == nil {
		return func() {}
	}
	u, cancel, err := c.h.opts.State.Subscribe(ctx, c.session.DeviceID, c.state.offer)
	if err != nil {
		c.h.log.Warn("device state not sent at connect", "device", c.session.DeviceID, "transport", devices.TransportWS, "err", err)
		return cancel
	}
	if u.Version > 0 {
		c.state.offer(&u)
	}
	return cancel
}

// ServeState is GET /api/v1/state: the device's own state, in the shape
// operators GET.
func (h *Handler) ServeState(w http.ResponseWriter, r *http.Request) {
	id, _, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	if h.opts.State == nil {
		writeError(w, "", bridge.ErrNoState)
		return
	}
	v, err := h.opts.State.Get(r.Context(), id)
	if err != nil {
		h.log.Error("device state read failed", "device", id, "err", err)
		writeError(w, "", telemetry.ErrInternal)
		return
	}
	h.opts.Bridge.Touch(id)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(v.Encode())
}

// ServeReportState is PATCH /api/v1/state/reported: a merge patch of the
// reported state (application/merge-patch+json or application/json),
// through the pipeline like the socket's state frames: rate limit, bounds,
// store. 200 with the state; 400 invalid with the field path.
func (h *Handler) ServeReportState(w http.ResponseWriter, r *http.Request) {
	id, _, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || (mt != "application/merge-patch+json" && mt != "application/json") {
			writeError(w, "", &telemetry.Error{Code: telemetry.CodeBadJSON, Message: "send the merge patch as application/merge-patch+json"})
			return
		}
	}
	body, ok := h.readBody(w, r)
	if !ok {
		return
	}
	s := h.opts.Bridge.Ephemeral(id, devices.TransportHTTP, h.opts.Proxies.ClientAddr(r))
	a := h.opts.Bridge.Accept(r.Context(), s, bridge.Message{Kind: telemetry.KindStateReported, Payload: body})
	if a.Err != nil {
		writeError(w, "", a.Err)
		return
	}
	h.ServeState(w, r)
}

// DesiredUntil is GET /api/v1/state/desired?version=N&wait=30s: 200 with
// {"desired","delta","version"} at once when the desired version is not N
// (or no version is given), else when it changes within wait (at most
// 60 s); 204 when it did not, or when stop closed (shutdown); 401 at once
// when the token is revoked meanwhile.
func (h *Handler) DesiredUntil(stop <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, hash, ok := h.authenticate(w, r)
		if !ok {
			return
		}
		if h.opts.State == nil || h.opts.Tokens == nil {
			writeError(w, "", bridge.ErrNoState)
			return
		}
		q := r.URL.Query()
		version := int64(-1)
		if v := q.Get("version"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				writeError(w, "", &telemetry.Error{Code: telemetry.CodeInvalid, Message: "version must be the desired version you have, such as 3",
					Fields: []telemetry.FieldError{{Field: "version", Reason: "must be a non-negative integer"}}})
				return
			}
			version = n
		}
		wait := 30 * time.Second
		if v := q.Get("wait"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 || d > maxPollWait {
				writeError(w, "", &telemetry.Error{Code: telemetry.CodeInvalid, Message: "wait must be a duration up to 60s, such as 30s",
					Fields: []telemetry.FieldError{{Field: "wait", Reason: "must be a duration up to 60s"}}})
				return
			}
			wait = d
		}
		h.opts.Bridge.Touch(id)
		h.log.Debug("device long poll started", "device", id, "poll", "state")
		u, ok, err := h.opts.State.WaitDesired(r.Context(), id, version, wait, stop, func() bool { return h.opts.Tokens.StillValid(id, hash) })
		switch {
		case errors.Is(err, state.ErrRevoked):
			h.log.Info("device long poll ended", "device", id, "reason", "revoked")
			writeError(w, "", &telemetry.Error{Code: telemetry.CodeUnauthorized, Message: "the device token was revoked during the poll"})
		case err != nil && r.Context().Err() == nil:
			h.log.Error("device state poll failed", "device", id, "err", err)
			writeError(w, "", telemetry.ErrInternal)
		case !ok:
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(u.Encode(false))
		}
	})
}
