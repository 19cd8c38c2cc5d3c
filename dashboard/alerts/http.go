package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fieldhub/fieldhub/dashboard/operator"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Route is one REST endpoint of the engine with the role it needs; the
// hub registers each behind the dashboard's authentication
// (dashboard.Server.RequireRole), which puts the operator in the request
// context (operator.From).
type Route struct {
	Pattern string
	Role    devices.Role
	Handler http.HandlerFunc
}

// Routes are the engine's endpoints (docs/protocol.md "Alerts").
func (e *Engine) Routes() []Route {
	return []Route{
		{"POST /api/v1/alert-rules", devices.RoleAdmin, e.createRule},
		{"GET /api/v1/alert-rules", devices.RoleViewer, e.listRules},
		{"GET /api/v1/alert-rules/{id}", devices.RoleViewer, e.getRule},
		{"PUT /api/v1/alert-rules/{id}", devices.RoleAdmin, e.updateRule},
		{"DELETE /api/v1/alert-rules/{id}", devices.RoleAdmin, e.deleteRule},
		{"GET /api/v1/alerts", devices.RoleViewer, e.listAlerts},
		{"GET /api/v1/alerts/{id}", devices.RoleViewer, e.getAlert},
		{"POST /api/v1/alerts/{id}/ack", devices.RoleOperator, e.ack},
		{"POST /api/v1/silences", devices.RoleOperator, e.createSilence},
		{"GET /api/v1/silences", devices.RoleViewer, e.listSilences},
		{"DELETE /api/v1/silences/{id}", devices.RoleOperator, e.deleteSilence},
	}
}

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
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	var e apiError
	e.Error.Code, e.Error.Message = code, msg
	writeJSON(w, status, e)
}

func (e *Engine) writeStoreErr(w http.ResponseWriter, what string, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		writeErr(w, http.StatusNotFound, "not_found", what+" not found")
	case errors.Is(err, ErrInvalid):
		writeErr(w, http.StatusBadRequest, "bad_request", strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
	case errors.Is(err, ErrConflict):
		writeErr(w, http.StatusConflict, "conflict", what+" changed meanwhile or is resolved; reload and retry")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "alert engine busy; retry later")
	default:
		e.log.Error("alert store operation failed", "err", err)
		writeErr(w, http.StatusInternalServerError, "internal", "alert store unavailable; retry later")
	}
}

// decode reads a JSON body strictly (unknown fields refused) within
// MaxRuleBody; it answers the error itself and returns false.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRuleBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("trailing data after the JSON object")
	}
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("trailing data after the JSON object")
		}
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeErr(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body exceeds %d bytes", MaxRuleBody))
			return false
		}
		writeErr(w, http.StatusBadRequest, "bad_request", "invalid JSON body: "+telemetry.Truncate(telemetry.Printable(err.Error()), 200))
		return false
	}
	return true
}

func (e *Engine) createRule(w http.ResponseWriter, r *http.Request) {
	var spec RuleSpec
	if !decode(w, r, &spec) {
		return
	}
	if err := spec.Validate(); err != nil {
		e.writeStoreErr(w, "rule", err)
		return
	}
	by := operator.From(r.Context()).Name
	now := e.now()
	rule := Rule{ID: newID("rule-"), RuleSpec: spec, CreatedAt: now, UpdatedAt: now, CreatedBy: by, Version: 1}
	err := e.do(r.Context(), func(ctx context.Context) error {
		if len(e.rules.Load().list) >= MaxRules {
			return fmt.Errorf("%w: rules: at most %d rules", ErrInvalid, MaxRules)
		}
		if err := e.opts.Store.PutRule(ctx, rule, 0); err != nil {
			return err
		}
		e.applyRules(ctx, e.withRule(rule, ""))
		return nil
	})
	if err != nil {
		e.writeStoreErr(w, "rule", err)
		return
	}
	e.log.Info("alert rule created", "rule", rule.ID, "by", by)
	writeJSON(w, http.StatusCreated, map[string]any{"rule": rule})
}

// reloadRules takes the rules from the store and applies the change at
// once: alerts of a rule gone or no longer selecting their device
// resolve. Runs on the engine's goroutine.
func (e *Engine) reloadRules(ctx context.Context) error {
	rules, err := e.opts.Store.Rules(ctx)
	if err != nil {
		return err
	}
	e.applyRules(ctx, rules)
	return nil
}

// withRule is the current rules with the one of id replaced by r (r
// zero: removed; id "": r added), without reading them all back from the
// store: creating 1000 rules stays linear.
func (e *Engine) withRule(r Rule, id string) []Rule {
	cur := e.rules.Load().list
	out := make([]Rule, 0, len(cur)+1)
	for _, c := range cur {
		if id == "" || c.ID != id {
			out = append(out, *c.Rule)
		}
	}
	if r.ID != "" {
		out = append(out, r)
	}
	return out
}

// applyRules makes rules the engine's rules. Runs on the engine's goroutine.
func (e *Engine) applyRules(ctx context.Context, rules []Rule) {
	old := e.rules.Load()
	rs := newRuleSet(rules)
	e.rules.Store(rs)
	e.seedNoData(old, rs)
	now := e.now()
	var orphans []*Record
	for k, a := range e.open {
		c := rs.byID[k.rule]
		if c == nil {
			orphans = append(orphans, a)
			continue
		}
		// An episode belongs to its condition: a record from before Cond
		// existed is judged by the rule it was evaluated under.
		cond := a.Cond
		if oc := old.byID[k.rule]; cond == "" && oc != nil {
			cond = condKey(&oc.Condition)
		}
		if cond != "" && cond != condKey(&c.Condition) {
			e.resolve(ctx, a, now, Event{Reason: "rule condition changed"})
			continue
		}
		if labels, ok := e.labels(k.device); !ok || !c.selects(k.device, labels) {
			e.resolve(ctx, a, now, Event{Reason: "rule no longer selects the device"})
			continue
		}
		if a.Rule != c.Name || a.Severity != c.Severity {
			if a.State == StateFiring && a.Severity != c.Severity { // the gauge follows the severity shown
				e.firing[sevIndex(a.Severity)].Add(-1)
				e.firing[sevIndex(c.Severity)].Add(1)
			}
			// Shown at once, stored with the next transition; the
			// notifications keep NotifiedRule/NotifiedSeverity.
			a.Rule, a.Severity = c.Name, c.Severity
		}
	}
	// rules may be this engine's stale view plus one change: a rule it
	// does not know may exist (made on another instance).
	e.resolveOrphans(ctx, orphans, now)
}

func (e *Engine) listRules(w http.ResponseWriter, r *http.Request) {
	rs := e.rules.Load()
	out := make([]Rule, 0, len(rs.list))
	for _, c := range rs.list {
		out = append(out, *c.Rule)
	}
	writeJSON(w, http.StatusOK, map[string]any{"rules": out})
}

func (e *Engine) findRule(ctx context.Context, id string) (Rule, error) {
	rules, err := e.opts.Store.Rules(ctx)
	if err != nil {
		return Rule{}, err
	}
	for _, ru := range rules {
		if ru.ID == id {
			return ru, nil
		}
	}
	return Rule{}, ErrNotFound
}

func (e *Engine) getRule(w http.ResponseWriter, r *http.Request) {
	if c := e.rules.Load().byID[r.PathValue("id")]; c != nil {
		writeJSON(w, http.StatusOK, map[string]any{"rule": *c.Rule})
		return
	}
	ru, err := e.findRule(r.Context(), r.PathValue("id")) // made by another instance since the last resync
	if err != nil {
		e.writeStoreErr(w, "rule", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"rule": ru})
}

func (e *Engine) updateRule(w http.ResponseWriter, r *http.Request) {
	var spec RuleSpec
	if !decode(w, r, &spec) {
		return
	}
	if err := spec.Validate(); err != nil {
		e.writeStoreErr(w, "rule", err)
		return
	}
	by := operator.From(r.Context()).Name
	var out Rule
	err := e.do(r.Context(), func(ctx context.Context) error {
		old, err := e.findRule(ctx, r.PathValue("id"))
		if err != nil {
			return err
		}
		out = old
		out.RuleSpec, out.UpdatedAt, out.Version = spec, e.now(), old.Version+1
		if err := e.opts.Store.PutRule(ctx, out, old.Version); err != nil {
			return err
		}
		e.applyRules(ctx, e.withRule(out, out.ID))
		return nil
	})
	if err != nil {
		e.writeStoreErr(w, "rule", err)
		return
	}
	e.log.Info("alert rule updated", "rule", out.ID, "version", out.Version, "by", by)
	writeJSON(w, http.StatusOK, map[string]any{"rule": out})
}

func (e *Engine) deleteRule(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	err := e.do(r.Context(), func(ctx context.Context) error {
		if err := e.opts.Store.DeleteRule(ctx, id); err != nil {
			return err
		}
		e.applyRules(ctx, e.withRule(Rule{}, id))
		return nil
	})
	if err != nil {
		e.writeStoreErr(w, "rule", err)
		return
	}
	e.log.Info("alert rule deleted", "rule", id, "by", operator.From(r.Context()).Name)
	w.WriteHeader(http.StatusNoContent)
}

func (e *Engine) listAlerts(w http.ResponseWriter, r *http.Request) {
	q := Query{State: r.URL.Query().Get("state"), Device: r.URL.Query().Get("device"), Severity: r.URL.Query().Get("severity"),
		RuleID: r.URL.Query().Get("rule"), Limit: 100}
	if q.State != "" && q.State != StatePending && q.State != StateFiring && q.State != StateResolved {
		writeErr(w, http.StatusBadRequest, "bad_request", "state: must be one of pending, firing, resolved")
		return
	}
	if q.Severity != "" && !contains(severities, q.Severity) {
		writeErr(w, http.StatusBadRequest, "bad_request", "severity: must be one of info, warning, critical")
		return
	}
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			writeErr(w, http.StatusBadRequest, "bad_request", "limit: must be between 1 and 1000")
			return
		}
		q.Limit = n
	}
	recs, err := e.opts.Store.Alerts(r.Context(), q)
	if err != nil {
		e.writeStoreErr(w, "alert", err)
		return
	}
	out := make([]Alert, 0, len(recs))
	for _, rec := range recs {
		out = append(out, rec.Alert)
	}
	writeJSON(w, http.StatusOK, map[string]any{"alerts": out})
}

func (e *Engine) getAlert(w http.ResponseWriter, r *http.Request) {
	rec, evs, err := e.opts.Store.Alert(r.Context(), r.PathValue("id"))
	if err != nil {
		e.writeStoreErr(w, "alert", err)
		return
	}
	if evs == nil {
		evs = []Event{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"alert": rec.Alert, "events": evs})
}

type ackBody struct {
	Note string `json:"note"`
}

func (e *Engine) ack(w http.ResponseWriter, r *http.Request) {
	var body ackBody
	if !decode(w, r, &body) {
		return
	}
	if utf8.RuneCountInString(body.Note) > MaxNoteLen {
		writeErr(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("note: at most %d characters", MaxNoteLen))
		return
	}
	note := telemetry.Printable(body.Note)
	by := operator.From(r.Context()).Name
	id := r.PathValue("id")
	var out Record
	err := e.do(r.Context(), func(ctx context.Context) error {
		for try := 0; ; try++ {
			rec, _, err := e.opts.Store.Alert(ctx, id)
			if err != nil {
				return err
			}
			if !rec.Open() {
				return ErrConflict
			}
			now := e.now()
			n := rec
			n.AcknowledgedBy, n.AckNote = by, note
			n.AcknowledgedAt = &now
			if e.commit(ctx, &n, rec.Version, []Event{{At: now, Type: EventAcknowledged, By: by, Note: note}}, nil) {
				out = n
				return nil
			}
			if try >= 2 {
				return ErrConflict
			}
		}
	})
	if err != nil {
		e.writeStoreErr(w, "alert", err)
		return
	}
	e.log.Info("alert acknowledged", "alert", id, "by", by)
	writeJSON(w, http.StatusOK, map[string]any{"alert": out.Alert})
}

type silenceBody struct {
	RuleID string    `json:"rule_id"`
	Device string    `json:"device"`
	Until  string    `json:"until"`
	For    *Duration `json:"for"`
	Note   string    `json:"note"`
}

func (e *Engine) createSilence(w http.ResponseWriter, r *http.Request) {
	var b silenceBody
	if !decode(w, r, &b) {
		return
	}
	now := e.now()
	var until time.Time
	switch {
	case b.RuleID == "" && b.Device == "":
		writeErr(w, http.StatusBadRequest, "bad_request", "rule_id: give rule_id and/or device")
		return
	case b.Device != "" && !devices.ValidID(b.Device):
		writeErr(w, http.StatusBadRequest, "bad_request", "device: not a valid device id")
		return
	case len(b.RuleID) > 64 || telemetry.HasControl(b.RuleID):
		writeErr(w, http.StatusBadRequest, "bad_request", "rule_id: not a rule id")
		return
	case utf8.RuneCountInString(b.Note) > MaxNoteLen:
		writeErr(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("note: at most %d characters", MaxNoteLen))
		return
	case (b.Until == "") == (b.For == nil):
		writeErr(w, http.StatusBadRequest, "bad_request", "until: give until or for")
		return
	case b.For != nil:
		until = now.Add(time.Duration(*b.For))
	default:
		t, err := time.Parse(time.RFC3339, b.Until)
		if err != nil {
			writeErr(w, http.StatusBadRequest, "bad_request", "until: must be an RFC 3339 time")
			return
		}
		until = t.UTC()
	}
	if !until.After(now) || until.Sub(now) > MaxSilence {
		writeErr(w, http.StatusBadRequest, "bad_request", "until: must be in the future and at most 30 days away")
		return
	}
	by := operator.From(r.Context()).Name
	s := Silence{ID: newID("sil-"), RuleID: b.RuleID, Device: b.Device, Until: until, By: by, Note: telemetry.Printable(b.Note), CreatedAt: now}
	err := e.do(r.Context(), func(ctx context.Context) error {
		if len(e.activeSilences(now)) >= MaxSilences {
			return fmt.Errorf("%w: silences: at most %d active silences", ErrInvalid, MaxSilences)
		}
		if b.RuleID != "" && e.rules.Load().byID[b.RuleID] == nil {
			// Unknown here: the store is the truth (another instance may
			// have just created it).
			if _, err := e.findRule(ctx, b.RuleID); errors.Is(err, ErrNotFound) {
				return invalid("rule_id: no such rule")
			} else if err != nil {
				return err
			}
		}
		if err := e.opts.Store.PutSilence(ctx, s); err != nil {
			return err
		}
		e.silences = append(e.silences, s)
		for k, a := range e.open {
			if s.matches(k.rule, k.device, now) {
				n := *a
				u := s.Until
				n.SilencedUntil = &u
				e.commit(ctx, &n, a.Version, []Event{{At: now, Type: EventSilenced, By: by, Note: s.Note}}, nil)
			}
		}
		return nil
	})
	if err != nil {
		e.writeStoreErr(w, "silence", err)
		return
	}
	e.log.Info("silence created", "silence", s.ID, "rule", s.RuleID, "device", s.Device, "by", by)
	writeJSON(w, http.StatusCreated, map[string]any{"silence": s})
}

func (e *Engine) activeSilences(now time.Time) []Silence {
	out := []Silence{}
	for _, s := range e.silences {
		if now.Before(s.Until) {
			out = append(out, s)
		}
	}
	return out
}

func (e *Engine) listSilences(w http.ResponseWriter, r *http.Request) {
	all, err := e.opts.Store.Silences(r.Context())
	if err != nil {
		e.writeStoreErr(w, "silence", err)
		return
	}
	now := e.now()
	out := []Silence{}
	for _, s := range all {
		if now.Before(s.Until) {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b Silence) int { return a.Until.Compare(b.Until) })
	writeJSON(w, http.StatusOK, map[string]any{"silences": out})
}

func (e *Engine) deleteSilence(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	err := e.do(r.Context(), func(ctx context.Context) error {
		if err := e.opts.Store.DeleteSilence(ctx, id); err != nil {
			return err
		}
		e.silences = slices.DeleteFunc(e.silences, func(s Silence) bool { return s.ID == id })
		// The alerts it covered lose silenced_until now (unless another
		// silence covers them); the sweep then sends a firing
		// notification it held back.
		now := e.now()
		for _, a := range e.open {
			if a.SilencedUntil != nil && e.silencedUntil(a.RuleID, a.Device, now) == nil {
				n := *a
				n.SilencedUntil = nil
				e.commit(ctx, &n, a.Version, nil, nil)
			}
		}
		return nil
	})
	if err != nil {
		e.writeStoreErr(w, "silence", err)
		return
	}
	e.log.Info("silence deleted", "silence", id, "by", operator.From(r.Context()).Name)
	w.WriteHeader(http.StatusNoContent)
}
