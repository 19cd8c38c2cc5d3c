package ws

import (
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// ServeTelemetry is POST /api/v1/telemetry: the same telemetry body as the
// socket, for devices that wake up, post and sleep. 200 with an ack once
// every reading is durable; 400 with the error frame; 401; 413; 429; 503
// when the hub is overloaded (retry after the Retry-After header).
func (h *Handler) ServeTelemetry(w http.ResponseWriter, r *http.Request) {
	id, _, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.opts.ReadLimit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, &telemetry.Error{Code: telemetry.CodeTooLarge, Message: "body exceeds the message size limit"})
			return
		}
		writeError(w, http.StatusBadRequest, &telemetry.Error{Code: telemetry.CodeBadJSON, Message: "could not read body"})
		return
	}
	s := h.opts.Bridge.Ephemeral(id, devices.TransportHTTP, h.opts.Proxies.ClientAddr(r))
	msgID, terr := h.opts.Bridge.Ingest(r.Context(), s, body)
	if terr != nil {
		status := http.StatusBadRequest
		switch terr.Code {
		case telemetry.CodeRateLimited:
			status = http.StatusTooManyRequests
			w.Header().Set("Retry-After", "1")
		case telemetry.CodeOverloaded, telemetry.CodeInternal:
			status = http.StatusServiceUnavailable
			w.Header().Set("Retry-After", "5")
		case telemetry.CodeTooLarge:
			status = http.StatusRequestEntityTooLarge
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(telemetry.EncodeError(msgID, terr))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(telemetry.EncodeAck(msgID))
}

// maxPollWait bounds a device's command long poll.
const maxPollWait = 60 * time.Second

// ServeNextCommand is GET /api/v1/commands/next?wait=30s: a device without
// a socket long-polls for its next command. 200 with the command frame
// (the command is then "sent"), 204 when none came within the wait, 401
// when the token stopped working meanwhile (nothing is handed out then).
func (h *Handler) ServeNextCommand(w http.ResponseWriter, r *http.Request) {
	id, hash, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	wait := 30 * time.Second
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > maxPollWait {
			writeError(w, http.StatusBadRequest, &telemetry.Error{Code: telemetry.CodeInvalid, Message: "wait must be a duration up to 60s, such as 30s"})
			return
		}
		wait = d
	}
	h.opts.Bridge.Touch(id)
	cmd, ok, err := h.opts.Bridge.NextCommand(r.Context(), id, hash, wait)
	if errors.Is(err, bridge.ErrRevoked) {
		// The token changed during the poll: the poll ends like a request
		// made with it now would.
		h.log.Info("device long poll ended", "device", id, "reason", "revoked")
		writeError(w, http.StatusUnauthorized, &telemetry.Error{Code: "unauthorized", Message: "the device token was revoked during the poll"})
		return
	}
	if !ok {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(telemetry.EncodeCommand(cmd, true))
}

// ServeCommandResult is POST /api/v1/commands/{id}/result: the body is
// {"status":"ok"|"error","result":{...},"error":"..."}. 204 when recorded,
// 404 for a command the device does not have pending.
func (h *Handler) ServeCommandResult(w http.ResponseWriter, r *http.Request) {
	id, _, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.opts.ReadLimit))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, &telemetry.Error{Code: telemetry.CodeTooLarge, Message: "body exceeds the message size limit"})
		return
	}
	codec := h.opts.Bridge.Codec()
	f, derr := codec.Decode(body)
	if f != nil && f.Type == "" {
		f.Type, derr = telemetry.TypeCommandResult, nil
	}
	if f != nil && f.ID == "" {
		f.ID = r.PathValue("id")
	}
	var res *telemetry.CommandResult
	if derr == nil {
		res, derr = codec.CommandResult(f)
	}
	if derr != nil || res.ID != r.PathValue("id") {
		var e *telemetry.Error
		if !errors.As(derr, &e) {
			e = &telemetry.Error{Code: telemetry.CodeInvalid, Message: "id: must match the command id in the path"}
		}
		writeError(w, http.StatusBadRequest, e)
		return
	}
	if err := h.opts.Bridge.CommandResult(id, res); err != nil {
		writeError(w, http.StatusNotFound, &telemetry.Error{Code: "not_found", Message: "no pending command with this id for this device"})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
