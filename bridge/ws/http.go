package ws

import (
	"compress/flate"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Refusals of a request body before it is decoded.
var (
	errBodyTooLarge        = errors.New("body exceeds the message size limit")
	errUnsupportedEncoding = errors.New("unsupported Content-Encoding")
	errBadEncoding         = errors.New("body is not valid in its Content-Encoding")
)

// decodeBody reads a device's request body in its Content-Encoding
// (encodings, the header's values): none, identity or gzip. The limit
// applies to the body as the hub holds it, after decompression: a gzip
// body of a few KiB can expand to gigabytes, so the decompressed stream is
// read through the bound and never decompressed past limit+1 bytes.
func decodeBody(body io.Reader, encodings []string, limit int64) ([]byte, error) {
	gz := false
	for _, v := range encodings {
		for tok := range strings.SplitSeq(v, ",") {
			switch tok = strings.ToLower(strings.TrimSpace(tok)); {
			case tok == "" || tok == "identity":
			case (tok == "gzip" || tok == "x-gzip") && !gz:
				gz = true
			default:
				return nil, fmt.Errorf("%w %q", errUnsupportedEncoding, telemetry.Truncate(v, 32))
			}
		}
	}
	src := body
	if gz {
		zr, err := gzip.NewReader(body)
		if err != nil {
			return nil, bodyError(err)
		}
		defer zr.Close()
		src = zr
	}
	data, err := io.ReadAll(io.LimitReader(src, limit+1))
	if err != nil {
		return nil, bodyError(err)
	}
	if int64(len(data)) > limit {
		return nil, errBodyTooLarge
	}
	return data, nil
}

func bodyError(err error) error {
	var mbe *http.MaxBytesError
	var ce flate.CorruptInputError
	switch {
	case errors.As(err, &mbe):
		return errBodyTooLarge
	case errors.Is(err, gzip.ErrHeader), errors.Is(err, gzip.ErrChecksum), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.As(err, &ce):
		return errBadEncoding
	}
	return err
}

// readBody reads a device's request body (decodeBody) and answers the
// refusal itself: 413 past the limit, 415 for an encoding the hub does not
// take, 400 for a body it cannot read.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := decodeBody(http.MaxBytesReader(w, r.Body, h.opts.ReadLimit), r.Header.Values("Content-Encoding"), h.opts.ReadLimit)
	switch {
	case err == nil:
		return body, true
	case errors.Is(err, errBodyTooLarge):
		writeError(w, "", &telemetry.Error{Code: telemetry.CodeTooLarge, Message: fmt.Sprintf("body exceeds the message size limit of %d bytes (after decompression)", h.opts.ReadLimit)})
	case errors.Is(err, errUnsupportedEncoding):
		w.Header().Set("Accept-Encoding", "gzip")
		writeError(w, "", &telemetry.Error{Code: telemetry.CodeUnsupportedEncoding, Message: err.Error() + "; send the body as is or with Content-Encoding: gzip"})
	case errors.Is(err, errBadEncoding):
		writeError(w, "", &telemetry.Error{Code: telemetry.CodeBadJSON, Message: "body is not valid gzip"})
	default:
		writeError(w, "", &telemetry.Error{Code: telemetry.CodeBadJSON, Message: "could not read body"})
	}
	return nil, false
}

// ServeTelemetry is POST /api/v1/telemetry: the same telemetry body as the
// socket, for devices that wake up, post and sleep; the body may be gzip
// (Content-Encoding: gzip). 200 with an ack once every reading is durable;
// 400 with the error frame; 401; 413 past the size limit (counted after
// decompression); 415 for another Content-Encoding; 429; 503 when the hub
// is overloaded (retry after the Retry-After header).
func (h *Handler) ServeTelemetry(w http.ResponseWriter, r *http.Request) {
	id, _, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	body, ok := h.readBody(w, r)
	if !ok {
		return
	}
	s := h.opts.Bridge.Ephemeral(id, devices.TransportHTTP, h.opts.Proxies.ClientAddr(r))
	a := h.opts.Bridge.Accept(r.Context(), s, bridge.Message{Kind: telemetry.KindTelemetry, Payload: body})
	if a.Err != nil {
		writeError(w, a.ID, a.Err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(telemetry.EncodeAck(a.ID))
}

// maxPollWait bounds a device's command long poll.
const maxPollWait = 60 * time.Second

// ServeNextCommand is GET /api/v1/commands/next?wait=30s: a device without
// a socket long-polls for its next command. 200 with the command frame
// (the command is then "sent"), 204 when none came within the wait (or
// the poll was ended early, NextCommandUntil), 401 when the token stopped
// working meanwhile (nothing is handed out then).
func (h *Handler) ServeNextCommand(w http.ResponseWriter, r *http.Request) {
	h.serveNextCommand(w, r, nil)
}

// NextCommandUntil is ServeNextCommand whose waiting polls end when stop
// is closed: each answers 204 at once ("no command", as when its wait
// ran out; the device polls again, elsewhere or after the restart).
// http.Server.Shutdown waits for every running request, and a poll may
// wait 60 s: the hub closes stop as its HTTP server's Shutdown begins, so
// polls cannot hold the shutdown. Only the poll's wait ends; the request's
// own context is left alone.
func (h *Handler) NextCommandUntil(stop <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.serveNextCommand(w, r, stop) })
}

// serveNextCommand is ServeNextCommand; a nil stop never ends the wait
// early.
func (h *Handler) serveNextCommand(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
	id, hash, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	wait := 30 * time.Second
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > maxPollWait {
			writeError(w, "", &telemetry.Error{Code: telemetry.CodeInvalid, Message: "wait must be a duration up to 60s, such as 30s"})
			return
		}
		wait = d
	}
	ctx, cancel := context.WithCancel(r.Context())
	if stop != nil {
		watched := make(chan struct{})
		go func() { // owner: this request; ends when stop closes or the poll is over (cancel below); waited below
			defer close(watched)
			select {
			case <-stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		defer func() { <-watched }()
	}
	defer cancel() // runs before the wait above: it ends the watcher
	h.opts.Bridge.Touch(id)
	cmd, ok, err := h.opts.Commands.NextCommand(ctx, id, hash, wait)
	if errors.Is(err, commands.ErrRevoked) {
		// The token changed during the poll: the poll ends like a request
		// made with it now would.
		h.log.Info("device long poll ended", "device", id, "reason", "revoked")
		writeError(w, "", &telemetry.Error{Code: telemetry.CodeUnauthorized, Message: "the device token was revoked during the poll"})
		return
	}
	if !ok {
		if ctx.Err() != nil && r.Context().Err() == nil {
			h.log.Debug("device long poll ended", "device", id, "reason", "server_shutdown")
		}
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
	body, ok := h.readBody(w, r)
	if !ok {
		return
	}
	s := h.opts.Bridge.Ephemeral(id, devices.TransportHTTP, h.opts.Proxies.ClientAddr(r))
	a := h.opts.Bridge.Accept(r.Context(), s, bridge.Message{Kind: telemetry.KindCommandResult, Payload: body, PathID: r.PathValue("id")})
	switch {
	case a.Err != nil:
		writeError(w, "", a.Err)
		return
	case a.Unknown:
		writeError(w, "", &telemetry.Error{Code: telemetry.CodeNotFound, Message: "no pending command with this id for this device"})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
