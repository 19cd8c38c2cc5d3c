package dashboard

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/bridge/hijack"
	"github.com/fieldhub/fieldhub/dashboard/live"
	"github.com/fieldhub/fieldhub/dashboard/operator"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/influx"
)

// Historian answers history queries. *influx.Client implements it.
type Historian interface {
	History(ctx context.Context, q influx.HistoryQuery) ([]influx.Point, error)
}

// MetricSchema is the hub's stored metric schema: the metric names a
// device has sent and their types ("number", "integer", "bool",
// "string"; "" when unknown). devices.BoltStore and pg.Store implement it;
// it survives restarts, unlike anything the hub keeps in memory.
type MetricSchema interface {
	DeviceMetricTypes(ctx context.Context, device string) (map[string]string, error)
}

// Options configures the operator API. Zero values take the documented
// defaults.
type Options struct {
	Registry *devices.Registry
	History  Historian
	// Export streams raw points for GET .../export; nil disables it (503).
	Export Exporter
	// Presence reads the presence history back from InfluxDB; nil: the
	// live hub's memory only.
	Presence PresenceHistory
	// Catalogue gives the metric catalogue InfluxDB's side (first and last
	// point of each metric); nil: the schema store's names only.
	Catalogue Catalogue
	// MaxExportRows bounds one export; default and maximum 1,000,000
	// (influx.MaxExportRows).
	MaxExportRows int
	// Schema gives the readings API a metric's type (which picks the
	// aggregate function) and the metric catalogue its names; nil: types
	// are unknown and numbers are assumed.
	Schema MetricSchema
	// Failures rate-limits failed authentications per (client address,
	// presented token); nil disables it.
	Failures *devices.FailureLimiter
	// Proxies are the trusted reverse proxies whose X-Forwarded-For gives
	// the client address; nil trusts none.
	Proxies *devices.Proxies
	// OnAuthFailure, if set, is told of each refused operator credential.
	OnAuthFailure func()
	// MaxBodyBytes bounds request bodies; default 1 MiB (bulk import 16 MiB).
	MaxBodyBytes int64
	// Live is the fan-out behind /ws/live and /api/v1/live; nil disables them.
	Live *live.Hub
	// Commands is the command service; nil disables the command routes.
	Commands Commander
	// State is the device state service; nil disables the state routes.
	State StateService
	// Rates feeds the overview's readings/s and rejected/s; the caller
	// runs it. Nil: the overview shows 0.
	Rates *Rates
	// AllowedOrigins are browser origins besides the hub's own allowed on
	// operator sockets (e.g. https://ops.example.com).
	AllowedOrigins []string
	// FromTrustedProxy reports whether a request came through a proxy
	// whose X-Forwarded-Proto is believed (FIELDHUB_TRUSTED_PROXIES); nil
	// trusts none. It decides the session cookie's Secure flag.
	FromTrustedProxy func(r *http.Request) bool
	Logger           *slog.Logger
	Now              func() time.Time
}

// Server is the operator HTTP API and the live sockets.
type Server struct {
	opts         Options
	log          *slog.Logger
	upgrader     websocket.Upgrader
	authn        *operator.Auth
	conns        hijack.Conns[*live.Subscriber] // live streams (/ws/live and SSE), for Shutdown
	stopOnce     sync.Once
	stopLive     chan struct{} // closed by Shutdown, after conns.Close: /ws/live sockets end on it
	sseOnce      sync.Once
	stopSSE      chan struct{} // closed by EndSSE (and so by Shutdown): SSE streams end on it, new ones are refused
	liveRefusals logLimiter    // refused live connections, for the log
}

// Bounds of the bulk import.
const (
	maxBatchDevices = 10000
	maxBatchBody    = 16 << 20
)

// New returns the operator API.
func New(opts Options) (*Server, error) {
	if opts.Registry == nil {
		return nil, errors.New("dashboard: Registry is required")
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 1 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	authn, err := operator.New(operator.Options{Registry: opts.Registry, Failures: opts.Failures, Proxies: opts.Proxies,
		FromTrustedProxy: opts.FromTrustedProxy, AllowedOrigins: opts.AllowedOrigins, OnAuthFailure: opts.OnAuthFailure, Logger: opts.Logger})
	if err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	s := &Server{opts: opts, log: opts.Logger, authn: authn, stopLive: make(chan struct{}), stopSSE: make(chan struct{})}
	s.upgrader = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   1024,
		WriteBufferSize:  4096,
		WriteBufferPool:  &sync.Pool{},
		// The Origin check runs before the upgrade, with a JSON 403.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	return s, nil
}

// Shutdown closes every live connection (WebSocket close 1001, SSE
// stream end: EndSSE) and waits for their handlers; net/http does not
// close hijacked connections. Streams admitted after it are refused 503.
// It may be called more than once, and after EndSSE.
func (s *Server) Shutdown() {
	s.EndSSE()
	s.conns.Close() // refuses new streams; the open sockets end on stopLive, the SSE streams on stopSSE
	s.stopOnce.Do(func() { close(s.stopLive) })
	s.conns.Wait()
}

// EndSSE ends every SSE stream (GET /api/v1/live) at once and refuses new
// ones with 503; it does not wait for their handlers (Shutdown does). An
// SSE stream is a plain HTTP response that never ends by itself, and
// http.Server.Shutdown waits for every running response: the hub calls
// EndSSE as its HTTP server's Shutdown begins (RegisterOnShutdown), so an
// open dashboard cannot hold the shutdown. The /ws/live sockets, hijacked
// and so not waited for by net/http, stay open until Shutdown. Safe to
// call more than once and from any goroutine.
func (s *Server) EndSSE() { s.sseOnce.Do(func() { close(s.stopSSE) }) }

// Register adds the API's routes to mux.
func (s *Server) Register(mux *http.ServeMux) {
	mux.Handle("GET /api/v1/me", s.auth(devices.RoleViewer, s.me))
	mux.Handle("POST /api/v1/devices", s.auth(devices.RoleAdmin, s.createDevice))
	mux.Handle("POST /api/v1/devices:batch", s.auth(devices.RoleAdmin, s.createBatch))
	mux.Handle("GET /api/v1/devices", s.auth(devices.RoleViewer, s.listDevices))
	mux.Handle("GET /api/v1/devices/{id}", s.auth(devices.RoleViewer, s.getDevice))
	mux.Handle("DELETE /api/v1/devices/{id}", s.auth(devices.RoleAdmin, s.deleteDevice))
	mux.Handle("PATCH /api/v1/devices/{id}", s.auth(devices.RoleAdmin, s.updateDevice))
	mux.Handle("POST /api/v1/devices/{id}/token", s.auth(devices.RoleAdmin, s.rotateToken))
	mux.Handle("GET /api/v1/devices/{id}/readings", s.auth(devices.RoleViewer, s.readings))
	mux.Handle("GET /api/v1/devices/{id}/rejections", s.auth(devices.RoleViewer, s.rejections))
	mux.Handle("GET /api/v1/devices/{id}/export", s.auth(devices.RoleViewer, s.export))
	mux.Handle("GET /api/v1/devices/{id}/metrics", s.auth(devices.RoleViewer, s.metrics))
	mux.Handle("POST /api/v1/tokens", s.auth(devices.RoleAdmin, s.createToken))
	mux.Handle("GET /api/v1/tokens", s.auth(devices.RoleAdmin, s.listTokens))
	mux.Handle("DELETE /api/v1/tokens/{id}", s.auth(devices.RoleAdmin, s.revokeToken))
	if s.opts.Commands != nil {
		s.registerCommands(mux)
	}
	if s.opts.State != nil {
		s.registerState(mux)
	}
	s.registerUI(mux)
	if s.opts.Live != nil {
		mux.HandleFunc("GET /ws/live", s.serveLiveWS)
		mux.Handle("GET /api/v1/live", s.authQuery(devices.RoleViewer, s.serveSSE))
	}
}

// apiError is the body of every error answer.
type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v) // the client went away; nothing to do
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	var e apiError
	e.Error.Code, e.Error.Message = code, msg
	writeJSON(w, status, e)
}

// writeStoreErr maps registry errors to statuses.
func (s *Server) writeStoreErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, devices.ErrNotFound):
		writeErr(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, devices.ErrExists):
		writeErr(w, http.StatusConflict, "conflict", err.Error())
	case errors.Is(err, devices.ErrInvalid):
		writeErr(w, http.StatusBadRequest, "bad_request", err.Error())
	default:
		s.log.Error("registry operation failed", "err", err)
		writeErr(w, http.StatusInternalServerError, "internal", "registry unavailable; retry later")
	}
}

// decodeBody reads a JSON body strictly, within the size limit. It answers
// the error itself and returns false.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	body := http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) && optional {
		return true
	}
	if err == nil && dec.More() {
		err = errors.New("trailing data after the JSON object")
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeErr(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body exceeds %d bytes", s.opts.MaxBodyBytes))
			return false
		}
		writeErr(w, http.StatusBadRequest, "bad_request", "invalid JSON body: "+err.Error())
		return false
	}
	return true
}

// writeRefusal answers a refusal of the operator policies.
func writeRefusal(w http.ResponseWriter, ref *operator.Refusal) {
	if ref.RetryAfter != "" {
		w.Header().Set("Retry-After", ref.RetryAfter)
	}
	if ref.Challenge != "" {
		w.Header().Set("WWW-Authenticate", ref.Challenge)
	}
	writeErr(w, ref.Status, ref.Code, ref.Message)
}

// authenticate returns the operator behind r's credential, answering
// 401/403/429 itself when there is none (operator.Auth.Authenticate).
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, allowQuery bool) (devices.Operator, bool) {
	op, ref := s.authn.Authenticate(r, allowQuery)
	if ref != nil {
		writeRefusal(w, ref)
		return devices.Operator{}, false
	}
	return op, true
}

// RequireRole wraps h so it runs only for operators whose role allows
// need; the hub uses it for endpoints outside this package (pprof).
func (s *Server) RequireRole(need devices.Role, h http.HandlerFunc) http.Handler {
	return s.auth(need, h)
}

// auth wraps h so it runs only for operators whose role allows need.
func (s *Server) auth(need devices.Role, h http.HandlerFunc) http.Handler {
	return s.authWith(need, h, false)
}

// authQuery is auth that also takes the token query parameter.
func (s *Server) authQuery(need devices.Role, h http.HandlerFunc) http.Handler {
	return s.authWith(need, h, true)
}

func (s *Server) authWith(need devices.Role, h http.HandlerFunc, allowQuery bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op, ok := s.authenticate(w, r, allowQuery)
		if !ok {
			return
		}
		if !op.Role.Allows(need) {
			writeErr(w, http.StatusForbidden, "forbidden", fmt.Sprintf("this needs the %s role; the token has %s", need, op.Role))
			return
		}
		h(w, r.WithContext(operator.WithOperator(r.Context(), op)))
	})
}

func (s *Server) me(w http.ResponseWriter, r *http.Request) {
	op := operator.From(r.Context())
	writeJSON(w, http.StatusOK, map[string]any{"name": op.Name, "role": op.Role, "token_id": op.TokenID})
}

func (s *Server) createDevice(w http.ResponseWriter, r *http.Request) {
	var spec devices.Spec
	if !s.decodeBody(w, r, &spec, false) {
		return
	}
	c, err := s.opts.Registry.Create(r.Context(), spec)
	if err != nil {
		s.writeStoreErr(w, err)
		return
	}
	s.log.Info("device created", "device", c.Device.ID, "by", operator.From(r.Context()).Name)
	writeJSON(w, http.StatusCreated, c)
}

// createBatch is the bulk import: JSON lines of {"id","name","labels"}, or
// CSV with an id,name[,labels] header where labels are k=v pairs separated
// by ';'. Out come ids and tokens, as JSON or (Accept: text/csv) CSV.
func (s *Server) createBatch(w http.ResponseWriter, r *http.Request) {
	body := http.MaxBytesReader(w, r.Body, maxBatchBody)
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var specs []devices.Spec
	var err error
	if mt == "text/csv" {
		specs, err = parseCSV(body)
	} else {
		specs, err = parseJSONLines(body)
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeErr(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body exceeds %d bytes", maxBatchBody))
			return
		}
		writeErr(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if len(specs) == 0 || len(specs) > maxBatchDevices {
		writeErr(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("send 1 to %d devices", maxBatchDevices))
		return
	}
	created, err := s.opts.Registry.CreateBatch(r.Context(), specs)
	if err != nil {
		s.writeStoreErr(w, err)
		return
	}
	s.log.Info("devices created in bulk", "count", len(created), "by", operator.From(r.Context()).Name)
	if accepts(r, "text/csv") {
		w.Header().Set("Content-Type", "text/csv")
		w.WriteHeader(http.StatusCreated)
		cw := csv.NewWriter(w)
		_ = cw.Write([]string{"id", "token"})
		for _, c := range created {
			_ = cw.Write([]string{c.Device.ID, c.Token})
		}
		cw.Flush()
		return
	}
	type idToken struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}
	out := make([]idToken, len(created))
	for i, c := range created {
		out[i] = idToken{c.Device.ID, c.Token}
	}
	writeJSON(w, http.StatusCreated, map[string]any{"devices": out})
}

func accepts(r *http.Request, mt string) bool {
	return strings.Contains(r.Header.Get("Accept"), mt)
}

func parseJSONLines(r io.Reader) ([]devices.Spec, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var specs []devices.Spec
	for line := 1; ; line++ {
		var s devices.Spec
		err := dec.Decode(&s)
		if errors.Is(err, io.EOF) {
			return specs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", line, err)
		}
		if len(specs) >= maxBatchDevices {
			return nil, fmt.Errorf("more than %d devices", maxBatchDevices)
		}
		specs = append(specs, s)
	}
}

func parseCSV(r io.Reader) ([]devices.Spec, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("csv header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.TrimSpace(strings.ToLower(h))] = i
	}
	if _, ok := col["id"]; !ok {
		return nil, errors.New(`csv header must name an "id" column (and optionally "name", "labels")`)
	}
	get := func(rec []string, name string) string {
		if i, ok := col[name]; ok && i < len(rec) {
			return strings.TrimSpace(rec[i])
		}
		return ""
	}
	var specs []devices.Spec
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return specs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("csv line %d: %w", line, err)
		}
		if len(specs) >= maxBatchDevices {
			return nil, fmt.Errorf("more than %d devices", maxBatchDevices)
		}
		s := devices.Spec{ID: get(rec, "id"), Name: get(rec, "name")}
		if l := get(rec, "labels"); l != "" {
			s.Labels = map[string]string{}
			for _, kv := range strings.Split(l, ";") {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return nil, fmt.Errorf("csv line %d: label %q is not key=value", line, kv)
				}
				s.Labels[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
		specs = append(specs, s)
	}
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := devices.Filter{Search: q.Get("q"), After: q.Get("after")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > devices.MaxListPageSize {
			writeErr(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("limit must be 1 to %d", devices.MaxListPageSize))
			return
		}
		f.Limit = n
	}
	if v := q.Get("online"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeErr(w, http.StatusBadRequest, "bad_request", "online must be true or false")
			return
		}
		f.Online = &b
	}
	for _, l := range q["label"] {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			writeErr(w, http.StatusBadRequest, "bad_request", "label filter must be key=value")
			return
		}
		if f.Labels == nil {
			f.Labels = map[string]string{}
		}
		f.Labels[k] = v
	}
	if v := q.Get("sort"); v != "" {
		if !slices.Contains(devices.ListSorts, v) {
			writeErr(w, http.StatusBadRequest, "bad_request", "sort must be one of "+strings.Join(devices.ListSorts, ", "))
			return
		}
		f.Sort = v
		switch q.Get("order") {
		case "", "asc":
		case "desc":
			f.Desc = true
		default:
			writeErr(w, http.StatusBadRequest, "bad_request", "order must be asc or desc")
			return
		}
		if v := q.Get("offset"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				writeErr(w, http.StatusBadRequest, "bad_request", "offset must be a whole number")
				return
			}
			f.Offset = n
		}
	}
	devs, next, total := s.opts.Registry.List(f)
	writeJSON(w, http.StatusOK, map[string]any{"devices": devs, "next": next, "total": total})
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) {
	d, err := s.opts.Registry.Get(r.PathValue("id"))
	if err != nil {
		s.writeStoreErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"device": d})
}

// updateDevice is PATCH /api/v1/devices/{id} {"name","labels"}: either
// may be left out; labels replaces the whole set.
func (s *Server) updateDevice(w http.ResponseWriter, r *http.Request) {
	var u devices.Update
	if !s.decodeBody(w, r, &u, false) {
		return
	}
	if u.Name == nil && u.Labels == nil {
		writeErr(w, http.StatusBadRequest, "bad_request", "nothing to change: give name, labels or both")
		return
	}
	id := r.PathValue("id")
	d, err := s.opts.Registry.Update(r.Context(), id, u)
	if err != nil {
		s.writeStoreErr(w, err)
		return
	}
	s.log.Info("device updated", "device", id, "name", u.Name != nil, "labels", u.Labels != nil, "by", operator.From(r.Context()).Name)
	writeJSON(w, http.StatusOK, map[string]any{"device": d})
}

// rejections is GET /api/v1/devices/{id}/rejections: why the device's
// last messages were refused, newest first, and how many were since the
// hub started.
func (s *Server) rejections(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	total, recent, err := s.opts.Registry.Rejections(id)
	if err != nil {
		s.writeStoreErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"device": id, "total": total, "rejections": recent})
}

func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.opts.Registry.Delete(r.Context(), id); err != nil {
		s.writeStoreErr(w, err)
		return
	}
	s.log.Info("device deleted", "device", id, "by", operator.From(r.Context()).Name)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) rotateToken(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Grace string `json:"grace"`
	}
	if !s.decodeBody(w, r, &body, true) {
		return
	}
	var grace time.Duration
	if body.Grace != "" {
		var err error
		if grace, err = time.ParseDuration(body.Grace); err != nil {
			writeErr(w, http.StatusBadRequest, "bad_request", "grace must be a duration such as 1h")
			return
		}
	}
	id := r.PathValue("id")
	token, err := s.opts.Registry.Rotate(r.Context(), id, grace)
	if err != nil {
		s.writeStoreErr(w, err)
		return
	}
	s.log.Info("device token rotated", "device", id, "grace", grace, "by", operator.From(r.Context()).Name)
	writeJSON(w, http.StatusOK, map[string]any{"token": token})
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Name string       `json:"name"`
		Role devices.Role `json:"role"`
	}
	if !s.decodeBody(w, r, &body, false) {
		return
	}
	tok, secret, err := s.opts.Registry.CreateOperatorToken(r.Context(), body.Name, body.Role)
	if err != nil {
		s.writeStoreErr(w, err)
		return
	}
	s.log.Info("operator token created", "token_id", tok.ID, "role", tok.Role, "by", operator.From(r.Context()).Name)
	writeJSON(w, http.StatusCreated, map[string]any{"token": tok, "secret": secret})
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"tokens": s.opts.Registry.ListOperatorTokens()})
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.opts.Registry.RevokeOperatorToken(r.Context(), id); err != nil {
		s.writeStoreErr(w, err)
		return
	}
	s.log.Info("operator token revoked", "token_id", id, "by", operator.From(r.Context()).Name)
	w.WriteHeader(http.StatusNoContent)
}

// readings is the history API: GET /api/v1/devices/{id}/readings?metric=
// &start=-1h&stop=now&every=1m&fn=mean&limit=, or points=N instead of
// every for a chart N pixels wide.
func (s *Server) readings(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !s.opts.Registry.Exists(id) {
		writeErr(w, http.StatusNotFound, "not_found", fmt.Sprintf("device %q not found", id))
		return
	}
	if s.opts.History == nil {
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "history is not configured")
		return
	}
	q := r.URL.Query()
	now := s.opts.Now()
	hq := influx.HistoryQuery{Device: id, Metric: q.Get("metric"), Fn: q.Get("fn")}
	var err error
	if hq.Start, hq.Stop, err = parseRange(q, now); err != nil {
		writeErr(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if v := q.Get("every"); v != "" {
		if hq.Every, err = time.ParseDuration(v); err != nil {
			writeErr(w, http.StatusBadRequest, "bad_request", "every must be a duration such as 1m")
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		if hq.Limit, err = strconv.Atoi(v); err != nil || hq.Limit < 1 || hq.Limit > influx.MaxHistoryPoints {
			writeErr(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("limit must be 1 to %d", influx.MaxHistoryPoints))
			return
		}
	}
	if v := q.Get("points"); v != "" {
		if hq.Points, err = strconv.Atoi(v); err != nil || hq.Points < 1 || hq.Points > influx.MaxDownsamplePoints {
			writeErr(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("points must be 1 to %d", influx.MaxDownsamplePoints))
			return
		}
		if hq.Limit != 0 {
			writeErr(w, http.StatusBadRequest, "bad_request", "limit is for raw points; give points or limit, not both")
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	typ := ""
	if telemetry.ValidName(hq.Metric) {
		typ = s.metricType(ctx, id, hq.Metric)
	}
	if hq.Points > 0 || hq.Every > 0 {
		if msg := pickFn(&hq, typ); msg != "" {
			writeErr(w, http.StatusBadRequest, "bad_request", msg)
			return
		}
	}
	if _, err := hq.Flux("x"); err != nil {
		writeErr(w, http.StatusBadRequest, "bad_request", strings.TrimPrefix(err.Error(), influx.ErrBadQuery.Error()+": "))
		return
	}
	points, err := s.opts.History.History(ctx, hq)
	if err != nil {
		s.log.Warn("history query failed", "device", id, "err", err)
		writeErr(w, http.StatusBadGateway, "unavailable", "InfluxDB did not answer the history query; retry later")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"device": id, "metric": hq.Metric, "type": typ, "points": points})
}

// API metric types: what a chart needs to know of a series.
const (
	typeNumber = "number"
	typeBool   = "bool"
	typeString = "string"
)

// apiType maps a schema type onto the API's: integers (a field another
// writer made) are numbers.
func apiType(stored string) string {
	switch stored {
	case "number", "integer":
		return typeNumber
	case "bool":
		return typeBool
	case "string":
		return typeString
	}
	return ""
}

// metricType is the API type of one metric of device: the schema's, else
// InfluxDB's; "" when neither knows it (or the schema cannot be read: the
// query then assumes a number, as before the schema existed).
func (s *Server) metricType(ctx context.Context, device, metric string) string {
	if s.opts.Schema != nil {
		types, err := s.opts.Schema.DeviceMetricTypes(ctx, device)
		if err != nil {
			s.log.Warn("read metric schema", "device", device, "err", err)
			return ""
		}
		if t := apiType(types[metric]); t != "" {
			return t
		}
	}
	// Data the schema never saw (written before it existed, or by another
	// writer): InfluxDB's own type of the field, as the catalogue does, so
	// a string is not averaged.
	if ft, ok := s.opts.History.(fieldTyper); ok {
		if all, err := ft.FieldTypes(ctx); err == nil {
			return apiType(all[metric])
		}
	}
	return ""
}

// fieldTyper is the History that can say InfluxDB's type of each field
// (*influx.Client).
type fieldTyper interface {
	FieldTypes(ctx context.Context) (map[string]string, error)
}

// pickFn sets the aggregate function of a downsampled or windowed query
// from the metric's type: mean for numbers (fn overrides), last for
// booleans and strings, which only selectors and count can aggregate. It
// returns the rule broken, or "".
func pickFn(hq *influx.HistoryQuery, typ string) string {
	if typ != typeBool && typ != typeString {
		return ""
	}
	switch hq.Fn {
	case "":
		hq.Fn = "last"
	case "last", "first", "count":
	default:
		return fmt.Sprintf("fn: %s is a %s metric; %s aggregates numbers only (use last, first or count)", hq.Metric, typ, hq.Fn)
	}
	return ""
}

// parseRange reads start (default -1h) and stop (default now) of a
// history request and checks the range (checkRange).
func parseRange(q url.Values, now time.Time) (start, stop time.Time, err error) {
	if start, err = parseTime(q.Get("start"), now, now.Add(-time.Hour)); err != nil {
		return start, stop, errors.New("start: " + err.Error())
	}
	if stop, err = parseTime(q.Get("stop"), now, now); err != nil {
		return start, stop, errors.New("stop: " + err.Error())
	}
	return start, stop, checkRange(start, stop, now)
}

// Bounds of a history range: InfluxDB cannot answer instants outside its
// time range, and a span of years is not a question the dashboard asks.
const (
	maxHistorySpan   = 400 * 24 * time.Hour
	maxHistoryFuture = 24 * time.Hour
)

// checkRange returns the rule a history range breaks, or nil: start before
// stop, nothing before 1970, stop at most a day ahead of now, a span of at
// most 400 days. Answered 400, so 502 only ever means InfluxDB failed.
func checkRange(start, stop, now time.Time) error {
	switch {
	case start.Before(time.Unix(0, 0)):
		return errors.New("start: instants before 1970-01-01 are not stored")
	case stop.After(now.Add(maxHistoryFuture)):
		return fmt.Errorf("stop: at most %s in the future", maxHistoryFuture)
	case !start.Before(stop):
		return errors.New("start must be before stop")
	case stop.Sub(start) > maxHistorySpan:
		return fmt.Errorf("a range spans at most %d days", int(maxHistorySpan/(24*time.Hour)))
	}
	return nil
}

// parseTime accepts "now", a negative duration relative to now ("-1h"),
// RFC 3339, a date (UTC midnight), or unix milliseconds.
func parseTime(v string, now, def time.Time) (time.Time, error) {
	switch {
	case v == "":
		return def, nil
	case v == "now":
		return now, nil
	case strings.HasPrefix(v, "-"):
		// One sign only: time.ParseDuration would take "--5m" as -(-5m),
		// five minutes ahead.
		rest := v[1:]
		d, err := time.ParseDuration(rest)
		if err == nil && (strings.HasPrefix(rest, "-") || strings.HasPrefix(rest, "+")) {
			err = errors.New("double sign")
		}
		if err != nil {
			return time.Time{}, errors.New("relative times look like -15m, -1h or -168h")
		}
		return now.Add(-d), nil
	}
	if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.UnixMilli(ms), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		if t, err = time.Parse(time.DateOnly, v); err == nil {
			return t, nil
		}
		return time.Time{}, errors.New("use now, -1h, RFC 3339, a date (2006-01-02) or unix milliseconds")
	}
	return t, nil
}
