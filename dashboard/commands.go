package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/dashboard/operator"
	"github.com/fieldhub/fieldhub/devices"
)

// Commander is the command service. *commands.Service implements it.
type Commander interface {
	SendCommand(ctx context.Context, spec commands.Spec) (rec commands.Record, replayed bool, err error)
	GetCommand(ctx context.Context, device, id string) (commands.Record, error)
	ListCommands(ctx context.Context, device, before string, limit int) ([]commands.Record, error)
	CancelCommand(ctx context.Context, device, id string) (commands.Record, error)
	WaitCommand(ctx context.Context, device, id string, d time.Duration) (commands.Record, error)
}

// maxCommandWait bounds ?wait= on command requests.
const maxCommandWait = 60 * time.Second

func (s *Server) registerCommands(mux *http.ServeMux) {
	mux.Handle("POST /api/v1/devices/{id}/commands", s.auth(devices.RoleOperator, s.sendCommand))
	mux.Handle("GET /api/v1/devices/{id}/commands", s.auth(devices.RoleViewer, s.listCommands))
	mux.Handle("GET /api/v1/devices/{id}/commands/{cid}", s.auth(devices.RoleViewer, s.getCommand))
	mux.Handle("DELETE /api/v1/devices/{id}/commands/{cid}", s.auth(devices.RoleOperator, s.cancelCommand))
}

func (s *Server) writeCommandErr(w http.ResponseWriter, err error) {
	if errors.Is(err, devices.ErrQueueFull) {
		w.Header().Set("Retry-After", "10")
		writeErr(w, http.StatusTooManyRequests, "rate_limited", err.Error())
		return
	}
	if errors.Is(err, devices.ErrConflict) {
		writeErr(w, http.StatusConflict, "conflict", err.Error())
		return
	}
	s.writeStoreErr(w, err)
}

func parseWait(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > maxCommandWait {
		return 0, fmt.Errorf("wait must be a duration up to %s, such as 10s", maxCommandWait)
	}
	return d, nil
}

func (s *Server) sendCommand(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Name    string          `json:"name"`
		Params  json.RawMessage `json:"params"`
		TTL     string          `json:"ttl"`
		Timeout string          `json:"timeout"`
	}
	if !s.decodeBody(w, r, &body, false) {
		return
	}
	wait, err := parseWait(r)
	if err != nil {
		writeErr(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	spec := commands.Spec{Device: r.PathValue("id"), Name: body.Name, Params: body.Params,
		CreatedBy: operator.From(r.Context()).Name, IdempotencyKey: r.Header.Get("Idempotency-Key")}
	for _, d := range []struct {
		name string
		v    string
		out  *time.Duration
	}{{"ttl", body.TTL, &spec.TTL}, {"timeout", body.Timeout, &spec.Timeout}} {
		if d.v == "" {
			continue
		}
		if *d.out, err = time.ParseDuration(d.v); err != nil || *d.out < time.Second {
			writeErr(w, http.StatusBadRequest, "bad_request", d.name+" must be a duration of at least 1s, such as 60s")
			return
		}
	}
	rec, replayed, err := s.opts.Commands.SendCommand(r.Context(), spec)
	if err != nil {
		s.writeCommandErr(w, err)
		return
	}
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	if wait > 0 && !rec.Final() {
		if rec, err = s.opts.Commands.WaitCommand(r.Context(), spec.Device, rec.ID, wait); err != nil {
			s.writeCommandErr(w, err)
			return
		}
	}
	status := http.StatusAccepted
	if rec.Final() {
		status = http.StatusOK
	}
	writeJSON(w, status, map[string]any{"command": rec})
}

func (s *Server) listCommands(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !s.opts.Registry.Exists(id) {
		writeErr(w, http.StatusNotFound, "not_found", fmt.Sprintf("device %q not found", id))
		return
	}
	limit := 50
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			writeErr(w, http.StatusBadRequest, "bad_request", "limit must be 1 to 500")
			return
		}
		limit = n
	}
	recs, err := s.opts.Commands.ListCommands(r.Context(), id, r.URL.Query().Get("before"), limit)
	if err != nil {
		s.writeCommandErr(w, err)
		return
	}
	next := ""
	if len(recs) == limit {
		next = recs[len(recs)-1].ID
	}
	writeJSON(w, http.StatusOK, map[string]any{"commands": recs, "next": next})
}

func (s *Server) getCommand(w http.ResponseWriter, r *http.Request) {
	rec, err := s.opts.Commands.GetCommand(r.Context(), r.PathValue("id"), r.PathValue("cid"))
	if err != nil {
		s.writeCommandErr(w, err)
		return
	}
	wait, err := parseWait(r)
	if err != nil {
		writeErr(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if wait > 0 && !rec.Final() {
		if rec, err = s.opts.Commands.WaitCommand(r.Context(), rec.Device, rec.ID, wait); err != nil {
			s.writeCommandErr(w, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"command": rec})
}

func (s *Server) cancelCommand(w http.ResponseWriter, r *http.Request) {
	rec, err := s.opts.Commands.CancelCommand(r.Context(), r.PathValue("id"), r.PathValue("cid"))
	if err != nil {
		s.writeCommandErr(w, err)
		return
	}
	s.log.Info("command cancelled", "device", rec.Device, "command", rec.ID, "by", operator.From(r.Context()).Name)
	writeJSON(w, http.StatusOK, map[string]any{"command": rec})
}
