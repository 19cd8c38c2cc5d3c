package dashboard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/fieldhub/fieldhub/dashboard/operator"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/state"
	"github.com/fieldhub/fieldhub/telemetry"
)

// StateService is the device state service (issue #24) as operators
// use it. *state.Service implements it.
type StateService interface {
	Get(ctx context.Context, device string) (state.View, error)
	PatchDesired(ctx context.Context, device string, ifMatch int64, patch []byte, by string) (state.View, error)
}

func (s *Server) registerState(mux *http.ServeMux) {
	mux.Handle("GET /api/v1/devices/{id}/state", s.auth(devices.RoleViewer, s.getState))
	mux.Handle("PATCH /api/v1/devices/{id}/state/desired", s.auth(devices.RoleOperator, s.patchDesired))
}

// writeState answers the GET shape with the desired version as ETag.
func writeState(w http.ResponseWriter, v state.View) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("ETag", strconv.Quote(strconv.FormatInt(v.Desired.Version, 10)))
	_, _ = w.Write(v.Encode())
}

// stateError is an error body with the field paths of an invalid patch.
type stateError struct {
	Error struct {
		Code    string                 `json:"code"`
		Message string                 `json:"message"`
		Errors  []telemetry.FieldError `json:"errors,omitempty"`
	} `json:"error"`
}

func (s *Server) writeStateErr(w http.ResponseWriter, err error) {
	var te *telemetry.Error
	switch {
	case errors.As(err, &te):
		f := te.Frame("")
		var body stateError
		body.Error.Code, body.Error.Message, body.Error.Errors = f.Code, f.Message, f.Errors
		writeJSON(w, http.StatusBadRequest, body)
	case errors.Is(err, state.ErrUnknownDevice):
		writeErr(w, http.StatusNotFound, "not_found", "no such device")
	case errors.Is(err, state.ErrConflict):
		writeErr(w, http.StatusPreconditionFailed, "conflict", err.Error()+"; GET the state and retry with its ETag")
	default:
		s.log.Error("device state operation failed", "err", err)
		writeErr(w, http.StatusServiceUnavailable, "internal", "state store unavailable; retry later")
	}
}

func (s *Server) getState(w http.ResponseWriter, r *http.Request) {
	v, err := s.opts.State.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeStateErr(w, err)
		return
	}
	writeState(w, v)
}

// parseIfMatch reads If-Match as a desired version: a plain integer,
// quoted like an ETag ("3") or weak (W/"3").
func parseIfMatch(h string) (int64, error) {
	h = strings.TrimPrefix(strings.TrimSpace(h), "W/")
	if len(h) >= 2 && h[0] == '"' && h[len(h)-1] == '"' {
		h = h[1 : len(h)-1]
	}
	v, err := strconv.ParseInt(h, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("If-Match must be the desired version, such as \"3\"")
	}
	return v, nil
}

func (s *Server) patchDesired(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/merge-patch+json" && mt != "application/json") {
			writeErr(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send a JSON merge patch as application/merge-patch+json")
			return
		}
	}
	im := r.Header.Get("If-Match")
	if im == "" {
		writeErr(w, http.StatusPreconditionRequired, "precondition_required", "If-Match with the desired version (the GET's ETag) is required")
		return
	}
	ifMatch, err := parseIfMatch(im)
	if err != nil {
		writeErr(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeErr(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body exceeds %d bytes", s.opts.MaxBodyBytes))
			return
		}
		writeErr(w, http.StatusBadRequest, "bad_request", "could not read the body")
		return
	}
	v, err := s.opts.State.PatchDesired(r.Context(), r.PathValue("id"), ifMatch, body, operator.From(r.Context()).Name)
	if err != nil {
		s.writeStateErr(w, err)
		return
	}
	writeState(w, v)
}
