// Package alerts owns the hub's alert rules, their evaluation on the live
// stream, the alert state machine (pending -> firing -> resolved), the
// Store interface its persistence implements (boltstore, pgstore) and the
// REST handlers of /api/v1/alert-rules, /api/v1/alerts and
// /api/v1/silences (docs/architecture.md "Alerts").
//
// It may import telemetry, devices, dashboard/operator and
// dashboard/alerts/notify; nothing in bridge imports it: cmd/fieldhub
// tees the bridge's events into it.
package alerts

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Condition types. Adding one (#25's gaps) is a constant, a case in
// Condition.validate and a case in the engine's dispatch.
const (
	CondThreshold  = "threshold"
	CondOffline    = "offline"
	CondNoData     = "no_data"
	CondRejections = "rejections"
	// CondGaps fires while a device's open seq gaps (devices/ledger)
	// exceed count, and resolves when they no longer do.
	CondGaps = "gaps"
)

// Alert states.
const (
	StatePending  = "pending"
	StateFiring   = "firing"
	StateResolved = "resolved"
)

// Timeline event types besides the three states.
const (
	EventAcknowledged = "acknowledged"
	EventSilenced     = "silenced"
	EventNotified     = "notified"
)

// Bounds of what operators can make the hub keep.
const (
	MaxRules          = 1000
	MaxSelectorDevice = 1000
	MaxNameLen        = 100
	MaxNoteLen        = 1000
	MaxFor            = 24 * time.Hour
	MaxSilence        = 30 * 24 * time.Hour
	MaxEventsPerAlert = 100
	MaxResolvedKept   = 10000
	MaxOpenAlerts     = 100000
	MaxSilences       = 10000
	MaxOutboxPerTgt   = 100000
	MaxRuleBody       = 64 << 10
)

// Severities a rule may have.
var severities = []string{"info", "warning", "critical"}

var ops = []string{">", ">=", "<", "<=", "==", "!="}

// ErrNotFound is returned for an unknown rule, alert or silence.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned by a store when a compare-and-set lost: the
// stored version is not the one the caller read (another instance or
// request changed it), or an open alert already exists for the pair.
var ErrConflict = errors.New("conflict")

// ErrInvalid wraps validation failures; the message starts with the
// field's JSON path.
var ErrInvalid = errors.New("invalid")

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("must be a duration string such as \"30s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("must be a duration string such as \"30s\"")
	}
	*d = Duration(v)
	return nil
}

// Selector picks the devices a rule applies to: ids and/or exact label
// matches (AND); empty matches every device.
type Selector struct {
	Devices []string          `json:"devices,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// Condition is what a rule watches; Type says which fields apply.
type Condition struct {
	Type   string    `json:"type"`
	Metric string    `json:"metric,omitempty"`
	Op     string    `json:"op,omitempty"`
	Value  *float64  `json:"value,omitempty"`
	For    *Duration `json:"for,omitempty"`
	Clear  *float64  `json:"clear,omitempty"`
	Count  *int      `json:"count,omitempty"`
	Window *Duration `json:"window,omitempty"`
}

// RuleSpec is the body of POST and PUT /api/v1/alert-rules.
type RuleSpec struct {
	Name      string    `json:"name"`
	Selector  Selector  `json:"selector"`
	Severity  string    `json:"severity"`
	Condition Condition `json:"condition"`
}

// Rule is a stored alert rule.
type Rule struct {
	ID string `json:"id"`
	RuleSpec
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	CreatedBy string    `json:"created_by"`
	Version   int64     `json:"version"`
}

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// Validate checks a rule body, applying the default clear; the error
// message starts with the JSON path of the first bad field.
func (s *RuleSpec) Validate() error {
	n := utf8.RuneCountInString(s.Name)
	if n < 1 || n > MaxNameLen || telemetry.HasControl(s.Name) || strings.TrimSpace(s.Name) == "" {
		return invalid("name: must be 1-%d printable characters", MaxNameLen)
	}
	if len(s.Selector.Devices) > MaxSelectorDevice {
		return invalid("selector.devices: at most %d devices", MaxSelectorDevice)
	}
	for i, d := range s.Selector.Devices {
		if !devices.ValidID(d) {
			return invalid("selector.devices[%d]: not a valid device id", i)
		}
	}
	if len(s.Selector.Labels) > 100 {
		return invalid("selector.labels: at most 100 labels")
	}
	for k, v := range s.Selector.Labels {
		if k == "" || len(k) > 128 || len(v) > 256 || telemetry.HasControl(k) || telemetry.HasControl(v) {
			return invalid("selector.labels: %q must be a printable key of 1-128 bytes with a value of at most 256", telemetry.Truncate(telemetry.Printable(k), 40))
		}
	}
	found := false
	for _, sv := range severities {
		found = found || sv == s.Severity
	}
	if !found {
		return invalid("severity: must be one of info, warning, critical")
	}
	return s.Condition.validate()
}

func (c *Condition) validate() error {
	notAllowed := func(field string, set bool) error {
		if set {
			return invalid("condition.%s: not allowed for type %s", field, c.Type)
		}
		return nil
	}
	checkFor := func(required bool) error {
		if c.For == nil {
			if required {
				return invalid("condition.for: required")
			}
			zero := Duration(0)
			c.For = &zero
			return nil
		}
		if *c.For < 0 || time.Duration(*c.For) > MaxFor {
			return invalid("condition.for: must be between 0s and 24h")
		}
		return nil
	}
	metric := func() error {
		if !telemetry.ValidName(c.Metric) {
			return invalid("condition.metric: must match %s", telemetry.NamePattern)
		}
		return nil
	}
	switch c.Type {
	case CondThreshold:
		if err := metric(); err != nil {
			return err
		}
		if !contains(ops, c.Op) {
			return invalid("condition.op: must be one of >, >=, <, <=, ==, !=")
		}
		if c.Value == nil || math.IsNaN(*c.Value) || math.IsInf(*c.Value, 0) {
			return invalid("condition.value: must be a finite number")
		}
		if err := checkFor(false); err != nil {
			return err
		}
		if c.Clear != nil {
			switch {
			case math.IsNaN(*c.Clear) || math.IsInf(*c.Clear, 0):
				return invalid("condition.clear: must be a finite number")
			case c.Op == "==" || c.Op == "!=":
				return invalid("condition.clear: not allowed with %s", c.Op)
			case (c.Op == ">" || c.Op == ">=") && *c.Clear > *c.Value:
				return invalid("condition.clear: must be <= value for %s", c.Op)
			case (c.Op == "<" || c.Op == "<=") && *c.Clear < *c.Value:
				return invalid("condition.clear: must be >= value for %s", c.Op)
			}
		}
		return firstErr(notAllowed("count", c.Count != nil), notAllowed("window", c.Window != nil))
	case CondOffline:
		return firstErr(checkFor(true), notAllowed("metric", c.Metric != ""), notAllowed("op", c.Op != ""),
			notAllowed("value", c.Value != nil), notAllowed("clear", c.Clear != nil),
			notAllowed("count", c.Count != nil), notAllowed("window", c.Window != nil))
	case CondNoData:
		return firstErr(metric(), checkFor(true), notAllowed("op", c.Op != ""), notAllowed("value", c.Value != nil),
			notAllowed("clear", c.Clear != nil), notAllowed("count", c.Count != nil), notAllowed("window", c.Window != nil))
	case CondRejections:
		if c.Count == nil || *c.Count < 1 || *c.Count > 100000 {
			return invalid("condition.count: must be between 1 and 100000")
		}
		if c.Window == nil || *c.Window < Duration(time.Second) || time.Duration(*c.Window) > MaxFor {
			return invalid("condition.window: must be between 1s and 24h")
		}
		return firstErr(notAllowed("metric", c.Metric != ""), notAllowed("op", c.Op != ""), notAllowed("value", c.Value != nil),
			notAllowed("clear", c.Clear != nil), notAllowed("for", c.For != nil))
	case CondGaps:
		if c.Count == nil || *c.Count < 0 || *c.Count > 1000000 {
			return invalid("condition.count: must be between 0 and 1000000")
		}
		return firstErr(notAllowed("metric", c.Metric != ""), notAllowed("op", c.Op != ""), notAllowed("value", c.Value != nil),
			notAllowed("clear", c.Clear != nil), notAllowed("for", c.For != nil), notAllowed("window", c.Window != nil))
	default:
		return invalid("condition.type: must be one of threshold, offline, no_data, rejections, gaps")
	}
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// holds reports whether v meets the threshold condition.
func (c *Condition) holds(v float64) bool {
	t := *c.Value
	switch c.Op {
	case ">":
		return v > t
	case ">=":
		return v >= t
	case "<":
		return v < t
	case "<=":
		return v <= t
	case "==":
		return v == t
	case "!=":
		return v != t
	}
	return false
}

// clears reports whether v resolves a firing threshold alert: the
// hysteresis band (clear) for ordering operators, the condition no
// longer holding otherwise.
func (c *Condition) clears(v float64) bool {
	if c.Clear == nil {
		return !c.holds(v)
	}
	switch c.Op {
	case ">", ">=":
		return v < *c.Clear
	case "<", "<=":
		return v > *c.Clear
	}
	return !c.holds(v)
}

func (c *Condition) forDur() time.Duration {
	if c.For == nil {
		return 0
	}
	return time.Duration(*c.For)
}

// Presence is the presence change recorded with an offline transition.
type Presence struct {
	Online bool      `json:"online"`
	At     time.Time `json:"at"`
}

// Alert is one (rule, device) episode, the shape of the REST API, the
// live events and the UI.
type Alert struct {
	ID             string            `json:"id"`
	RuleID         string            `json:"rule_id"`
	Rule           string            `json:"rule"`
	Device         string            `json:"device"`
	Severity       string            `json:"severity"`
	State          string            `json:"state"`
	Since          time.Time         `json:"since"`
	StartedAt      time.Time         `json:"started_at"`
	FiredAt        *time.Time        `json:"fired_at,omitempty"`
	ResolvedAt     *time.Time        `json:"resolved_at,omitempty"`
	Fired          bool              `json:"fired"`
	Value          *float64          `json:"value"`
	Summary        string            `json:"summary"`
	AcknowledgedBy string            `json:"acknowledged_by"`
	AcknowledgedAt *time.Time        `json:"acknowledged_at,omitempty"`
	AckNote        string            `json:"ack_note"`
	SilencedUntil  *time.Time        `json:"silenced_until,omitempty"`
	Labels         map[string]string `json:"labels"`
}

// Record is an alert as stored: the alert plus what the engine needs to
// make each transition once (Version for the compare-and-set, Seq the
// last timeline event, Notified whether its firing was queued).
type Record struct {
	Alert
	Version  int64 `json:"version"`
	Seq      int64 `json:"seq"`
	Notified bool  `json:"notified"`
	// Cond is the condition (type and metric, condKey) the episode was
	// opened under: a rule changed to another condition ends it.
	Cond string `json:"cond,omitempty"`
	// LastRejection is, for a rejections alert, the newest rejection an
	// engine holding its window recorded: an engine without the window
	// (restarted, or another instance) resolves the alert only once a
	// whole window has passed since it.
	LastRejection *time.Time `json:"last_rejection,omitempty"`
	// NotifiedRule and NotifiedSeverity are the rule name and severity
	// the firing notification went out with: Alertmanager identifies an
	// alert by its labels (alertname, severity), so the re-sends and the
	// resolve keep them though the rule is renamed meanwhile.
	NotifiedRule     string `json:"notified_rule,omitempty"`
	NotifiedSeverity string `json:"notified_severity,omitempty"`
}

// condKey names what an episode is about: a rule update that changes it
// (threshold into offline, temp into pressure) ends the rule's episodes.
func condKey(c *Condition) string { return c.Type + "/" + c.Metric }

// Open reports whether the alert is pending or firing.
func (r *Record) Open() bool { return r.State != StateResolved }

// Event is one entry of an alert's timeline.
type Event struct {
	Seq       int64      `json:"seq"`
	At        time.Time  `json:"at"`
	Type      string     `json:"type"`
	Value     *float64   `json:"value,omitempty"`
	ReadingTS *time.Time `json:"reading_ts,omitempty"`
	Presence  *Presence  `json:"presence,omitempty"`
	By        string     `json:"by,omitempty"`
	Note      string     `json:"note,omitempty"`
	Reason    string     `json:"reason,omitempty"`
}

// Silence mutes notifications of a rule and/or a device until a time.
type Silence struct {
	ID        string    `json:"id"`
	RuleID    string    `json:"rule_id,omitempty"`
	Device    string    `json:"device,omitempty"`
	Until     time.Time `json:"until"`
	By        string    `json:"by"`
	Note      string    `json:"note,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

func (s *Silence) matches(rule, device string, now time.Time) bool {
	return now.Before(s.Until) && (s.RuleID == "" || s.RuleID == rule) && (s.Device == "" || s.Device == device)
}

// Query filters GET /api/v1/alerts.
type Query struct {
	State    string // "" open first, then resolved
	Device   string
	Severity string
	RuleID   string
	Limit    int
}

// Matches reports whether r passes q's filters (not the limit): the
// stores share it.
func (q Query) Matches(r *Record) bool {
	return (q.State == "" || r.State == q.State) && (q.Device == "" || r.Device == q.Device) &&
		(q.Severity == "" || r.Severity == q.Severity) && (q.RuleID == "" || r.RuleID == q.RuleID)
}

// TimeFormat is how alert times are written (REST, live events, the
// timeline): RFC 3339 with milliseconds, always three digits, which
// RFC3339Nano is not (it drops a zero fraction).
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// msTime is a time.Time written in TimeFormat; it reads back as any
// RFC 3339 time.
type msTime time.Time

// MarshalJSON writes the time in TimeFormat, UTC.
func (t msTime) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Time(t).UTC().Format(TimeFormat) + `"`), nil
}

func msPtr(t *time.Time) *msTime {
	if t == nil {
		return nil
	}
	m := msTime(*t)
	return &m
}

// MarshalJSON writes the alert with its times in TimeFormat.
func (a Alert) MarshalJSON() ([]byte, error) {
	type plain Alert // the fields without this method
	return json.Marshal(struct {
		plain
		Since          msTime  `json:"since"`
		StartedAt      msTime  `json:"started_at"`
		FiredAt        *msTime `json:"fired_at,omitempty"`
		ResolvedAt     *msTime `json:"resolved_at,omitempty"`
		AcknowledgedAt *msTime `json:"acknowledged_at,omitempty"`
		SilencedUntil  *msTime `json:"silenced_until,omitempty"`
	}{plain(a), msTime(a.Since), msTime(a.StartedAt), msPtr(a.FiredAt), msPtr(a.ResolvedAt), msPtr(a.AcknowledgedAt), msPtr(a.SilencedUntil)})
}

// MarshalJSON writes the record (the stores keep it as JSON): the alert,
// then the engine's fields. Without it Record would take Alert's
// MarshalJSON and lose them.
func (r Record) MarshalJSON() ([]byte, error) {
	a, err := json.Marshal(r.Alert)
	if err != nil {
		return nil, err
	}
	x, err := json.Marshal(struct {
		Version          int64   `json:"version"`
		Seq              int64   `json:"seq"`
		Notified         bool    `json:"notified"`
		Cond             string  `json:"cond,omitempty"`
		LastRejection    *msTime `json:"last_rejection,omitempty"`
		NotifiedRule     string  `json:"notified_rule,omitempty"`
		NotifiedSeverity string  `json:"notified_severity,omitempty"`
	}{r.Version, r.Seq, r.Notified, r.Cond, msPtr(r.LastRejection), r.NotifiedRule, r.NotifiedSeverity})
	if err != nil {
		return nil, err
	}
	// Both are non-empty objects: splice them into one.
	out := append(a[:len(a)-1:len(a)-1], ',')
	return append(out, x[1:]...), nil
}

// MarshalJSON writes the event with its times in TimeFormat.
func (ev Event) MarshalJSON() ([]byte, error) {
	type plain Event
	return json.Marshal(struct {
		plain
		At        msTime  `json:"at"`
		ReadingTS *msTime `json:"reading_ts,omitempty"`
	}{plain(ev), msTime(ev.At), msPtr(ev.ReadingTS)})
}

// MarshalJSON writes the presence change with its time in TimeFormat.
func (p Presence) MarshalJSON() ([]byte, error) {
	type plain Presence
	return json.Marshal(struct {
		plain
		At msTime `json:"at"`
	}{plain(p), msTime(p.At)})
}
