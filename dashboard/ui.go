package dashboard

import (
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"strings"

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

// signIn exchanges an operator token for a server-side session: the
// cookie holds a random session id, never the token. HttpOnly (page
// scripts cannot read it), SameSite=Strict (other sites cannot ride it),
// Secure when the browser reached the hub over TLS.
func (s *Server) signIn(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		writeErr(w, http.StatusForbidden, "forbidden", "cross-site sign-in refused")
		return
	}
	var body struct {
		Token string `json:"token"`
	}
	if !s.decodeBody(w, r, &body, false) {
		return
	}
	ip := s.remoteIP(r)
	op, ok := s.opts.Registry.AuthenticateOperator(r.Context(), body.Token)
	if !ok {
		s.failed(w, r, body.Token)
		return
	}
	sid, err := s.opts.Registry.CreateSession(r.Context(), op)
	if err != nil {
		s.writeStoreErr(w, err)
		return
	}
	trusted := s.opts.FromTrustedProxy != nil && s.opts.FromTrustedProxy(r)
	// The browser drops the cookie at the session's absolute end; the hub
	// ends it earlier when idle.
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: sid, Path: "/", HttpOnly: true,
		Secure: requestIsTLS(r, trusted), SameSite: http.SameSiteStrictMode, MaxAge: int(s.opts.Registry.SessionMax().Seconds())})
	s.log.Info("operator signed in", "name", op.Name, "role", op.Role, "token_id", op.TokenID, "remote", ip)
	w.WriteHeader(http.StatusNoContent)
}

// requestIsTLS reports whether the browser reached the hub over TLS: the
// hub terminated it, or a proxy did and says so in X-Forwarded-Proto, which
// is believed only when fromTrustedProxy.
func requestIsTLS(r *http.Request, fromTrustedProxy bool) bool {
	if r.TLS != nil {
		return true
	}
	return fromTrustedProxy && strings.EqualFold(strings.TrimSpace(r.Header.Get("X-Forwarded-Proto")), "https")
}

// session tells the page whether it is signed in, always with 200 so a
// signed-out page logs no failed request.
func (s *Server) session(w http.ResponseWriter, r *http.Request) {
	op, ok := s.opts.Registry.AuthenticateSession(r.Context(), sessionToken(r))
	if !ok {
		writeJSON(w, http.StatusOK, map[string]any{"signed_in": false})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"signed_in": true, "name": op.Name, "role": op.Role})
}

// signOut ends the session on the hub (its live sockets close) and clears
// the cookie.
func (s *Server) signOut(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		writeErr(w, http.StatusForbidden, "forbidden", "cross-site sign-out refused")
		return
	}
	if err := s.opts.Registry.DeleteSession(r.Context(), sessionToken(r)); err != nil {
		s.writeStoreErr(w, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", HttpOnly: true,
		Secure: requestIsTLS(r, s.opts.FromTrustedProxy != nil && s.opts.FromTrustedProxy(r)), SameSite: http.SameSiteStrictMode, MaxAge: -1})
	w.WriteHeader(http.StatusNoContent)
}

// sameOrigin reports whether a browser request comes from the hub's own
// pages (or from a non-browser client, which sends no Origin): the one
// Origin policy, without the extra allowed origins.
func sameOrigin(r *http.Request) bool {
	return devices.OriginAllowed(r, nil)
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	total, online := s.opts.Registry.Counts()
	out := map[string]any{"devices": total, "online": online, "readings_per_second": 0.0, "rejected_per_second": 0.0}
	if s.opts.Rates != nil {
		out["readings_per_second"], out["rejected_per_second"] = s.opts.Rates.Now()
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) presence(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !s.opts.Registry.Exists(id) {
		writeErr(w, http.StatusNotFound, "not_found", "device not found")
		return
	}
	evs := s.opts.Live.PresenceLog(id)
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		out = append(out, telemetry.EncodeEvent(ev))
	}
	writeJSON(w, http.StatusOK, map[string]any{"device": id, "events": out})
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
