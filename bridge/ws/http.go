package ws

import (
	"errors"
	"io"
	"net/http"

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
	s := h.opts.Bridge.Ephemeral(id, devices.TransportHTTP, r.RemoteAddr)
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
