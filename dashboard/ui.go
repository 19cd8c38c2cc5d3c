package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"slices"
	"time"

	"github.com/fieldhub/fieldhub/dashboard/operator"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// uiFiles is the operators' web UI: plain HTML, CSS and JavaScript with no
// external requests, so it works on closed networks.
//
//go:embed ui
var uiFiles embed.FS

// Totals are the hub-wide counters the overview turns into rates.
// *bridge.Bridge implements it.
type Totals interface {
	Totals() (readings, rejected int64)
}

// registerUI adds the web UI and the endpoints only it needs.
func (s *Server) registerUI(mux *http.ServeMux) {
	sub, _ := fs.Sub(uiFiles, "ui") // the directory is embedded above
	static := http.FileServerFS(sub)
	mux.Handle("GET /ui/", http.StripPrefix("/ui/", s.uiHeaders(static)))
	mux.Handle("GET /{$}", s.uiHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, sub, "index.html")
	})))
	mux.HandleFunc("GET /api/v1/session", s.session)
	mux.HandleFunc("POST /api/v1/session", s.signIn)
	mux.HandleFunc("DELETE /api/v1/session", s.signOut)
	mux.Handle("GET /api/v1/stats", s.auth(devices.RoleViewer, s.stats))
	if s.opts.Live != nil {
		mux.Handle("GET /api/v1/devices/{id}/presence", s.auth(devices.RoleViewer, s.presence))
		mux.Handle("GET /api/v1/devices/{id}/latest", s.auth(devices.RoleViewer, s.latest))
	}
}

// uiHeaders sets a strict Content-Security-Policy: the page loads nothing
// from elsewhere and talks only to the hub.
func (s *Server) uiHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

// signIn is POST /api/v1/session: it exchanges an operator token for a
// session cookie (operator.Auth.SignIn owns the policy and the cookie).
func (s *Server) signIn(w http.ResponseWriter, r *http.Request) {
	if !operator.SameOrigin(r) { // before the body is read
		writeErr(w, http.StatusForbidden, "forbidden", "cross-site sign-in refused")
		return
	}
	var body struct {
		Token string `json:"token"`
	}
	if !s.decodeBody(w, r, &body, false) {
		return
	}
	c, _, err := s.authn.SignIn(r, body.Token)
	if err != nil {
		s.writeAuthErr(w, err)
		return
	}
	http.SetCookie(w, c)
	w.WriteHeader(http.StatusNoContent)
}

// writeAuthErr answers an error of sign-in or sign-out: a refusal of the
// operator policies, else the registry's.
func (s *Server) writeAuthErr(w http.ResponseWriter, err error) {
	var ref *operator.Refusal
	if errors.As(err, &ref) {
		writeRefusal(w, ref)
		return
	}
	s.writeStoreErr(w, err)
}

// session tells the page whether it is signed in, always with 200 so a
// signed-out page logs no failed request.
func (s *Server) session(w http.ResponseWriter, r *http.Request) {
	op, ok := s.authn.Session(r)
	if !ok {
		writeJSON(w, http.StatusOK, map[string]any{"signed_in": false})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"signed_in": true, "name": op.Name, "role": op.Role})
}

// signOut is DELETE /api/v1/session: it ends the session on the hub (its
// live sockets close) and clears the cookie.
func (s *Server) signOut(w http.ResponseWriter, r *http.Request) {
	c, err := s.authn.SignOut(r)
	if err != nil {
		s.writeAuthErr(w, err)
		return
	}
	http.SetCookie(w, c)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	total, online := s.opts.Registry.Counts()
	out := map[string]any{"devices": total, "online": online, "readings_per_second": 0.0, "rejected_per_second": 0.0}
	if s.opts.Rates != nil {
		out["readings_per_second"], out["rejected_per_second"] = s.opts.Rates.Now()
	}
	writeJSON(w, http.StatusOK, out)
}

// PresenceHistory reads devices' presence changes back from where the
// hub made them durable. *influx.Client implements it.
type PresenceHistory interface {
	PresenceLog(ctx context.Context, device string, n int, now time.Time) ([]telemetry.Event, error)
}

// presenceKept is how many presence changes GET .../presence answers.
const presenceKept = 50

// presence is GET /api/v1/devices/{id}/presence: the device's last 50
// presence changes, oldest first, from InfluxDB, so they survive a hub
// restart; changes this hub made that InfluxDB does not have yet (still
// spooled) are added from memory. With InfluxDB unreachable the answer
// is the memory's alone, and says so ("source":"memory").
func (s *Server) presence(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !s.opts.Registry.Exists(id) {
		writeErr(w, http.StatusNotFound, "not_found", "device not found")
		return
	}
	mem := s.opts.Live.PresenceLog(id)
	evs, source := mem, "memory"
	if s.opts.Presence != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		stored, err := s.opts.Presence.PresenceLog(ctx, id, presenceKept, s.opts.Now())
		cancel()
		if err != nil {
			s.log.Warn("presence history query failed; answering from memory", "device", id, "err", err)
		} else {
			evs, source = mergePresence(stored, mem), "influxdb"
		}
	}
	if len(evs) > presenceKept {
		evs = evs[len(evs)-presenceKept:]
	}
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		out = append(out, telemetry.EncodeEvent(ev))
	}
	writeJSON(w, http.StatusOK, map[string]any{"device": id, "events": out, "source": source})
}

// mergePresence is stored (from InfluxDB, oldest first) followed by the
// changes of mem (this hub's memory, oldest first) that are newer than
// the newest stored one or at the same millisecond and not among those
// stored: the ones still on their way to InfluxDB.
func mergePresence(stored, mem []telemetry.Event) []telemetry.Event {
	if len(stored) == 0 {
		return mem
	}
	last := stored[len(stored)-1].At
	same := func(a, b telemetry.Event) bool {
		return a.At == b.At && *a.Online == *b.Online && a.Transport == b.Transport && a.Reason == b.Reason
	}
	out := stored
	for _, ev := range mem {
		if ev.Online == nil || ev.At < last {
			continue
		}
		if ev.At == last && slices.ContainsFunc(stored, func(s telemetry.Event) bool { return same(s, ev) }) {
			continue
		}
		out = append(out, ev)
	}
	return out
}

func (s *Server) latest(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !s.opts.Registry.Exists(id) {
		writeErr(w, http.StatusNotFound, "not_found", "device not found")
		return
	}
	ev, ok := s.opts.Live.Latest(id)
	if !ok {
		writeJSON(w, http.StatusOK, map[string]any{"device": id, "metrics": map[string]any{}})
		return
	}
	writeJSON(w, http.StatusOK, json.RawMessage(telemetry.EncodeEvent(ev)))
}
