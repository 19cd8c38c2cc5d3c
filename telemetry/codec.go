package telemetry

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/go-playground/validator/v10"
)

// Limits bounds what one telemetry message may carry. Zero fields take the
// documented defaults.
type Limits struct {
	MaxMetrics   int           // metrics per reading; default 100
	MaxReadings  int           // readings per message; default 1,000
	MaxStringLen int           // bytes in a string value; default 256
	MaxFuture    time.Duration // how far ahead of the hub's clock a ts may be; default 5m
	MaxAge       time.Duration // how far behind the hub's clock a ts may be; default 7 days
	// TagKeys are the tag keys the hub writes besides DeviceTag (the
	// configured FIELDHUB_TAG_LABELS); no metric may take one as its name.
	TagKeys []string
}

// Default limits, as documented in docs/protocol.md.
const (
	DefaultMaxMetrics   = 100
	DefaultMaxReadings  = 1000
	DefaultMaxStringLen = 256
	DefaultMaxFuture    = 5 * time.Minute
	DefaultMaxAge       = 7 * 24 * time.Hour
	MaxIDLen            = 64
	MaxResultErrorLen   = 1024
)

func (l *Limits) ensureDefaults() {
	if l.MaxMetrics <= 0 {
		l.MaxMetrics = DefaultMaxMetrics
	}
	if l.MaxReadings <= 0 {
		l.MaxReadings = DefaultMaxReadings
	}
	if l.MaxStringLen <= 0 {
		l.MaxStringLen = DefaultMaxStringLen
	}
	if l.MaxFuture <= 0 {
		l.MaxFuture = DefaultMaxFuture
	}
	if l.MaxAge <= 0 {
		l.MaxAge = DefaultMaxAge
	}
}

// NamePattern is the rule for metric names and command names: safe as an
// InfluxDB field key and readable in any tool.
const NamePattern = `^[A-Za-z_][A-Za-z0-9_.-]{0,63}$`

// ValidName reports whether s is a valid metric or command name
// (NamePattern, checked by hand: it runs for every metric of every reading).
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case i > 0 && (c >= '0' && c <= '9' || c == '.' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// ReservedReason says why name, a ValidName, cannot be a metric name on
// this hub, or "" when it can. Reserved, in any letter case: "time"
// (InfluxDB keeps the timestamp there and silently drops such a field),
// DeviceTag and every TagKeys entry (a field beside a tag of the same key
// makes InfluxQL's WHERE on the tag miss), and names starting with '_'
// (InfluxDB's own columns: _time, _value, _field, _measurement, ...).
func (c *Codec) ReservedReason(name string) string {
	switch {
	case name == "":
		return ""
	case name[0] == '_':
		return "metric names starting with '_' are reserved for InfluxDB's own columns (_time, _value, _field, ...)"
	case strings.EqualFold(name, "time"):
		return `"time" is reserved: InfluxDB keeps the timestamp there and would drop the value`
	case strings.EqualFold(name, DeviceTag):
		return `"device" is reserved: the hub writes it as the tag that carries the device id`
	}
	for _, k := range c.limits.TagKeys {
		if strings.EqualFold(name, k) {
			return fmt.Sprintf("%q is reserved: the hub writes it as a tag from the device's labels", k)
		}
	}
	return ""
}

// Frame is one decoded device -> hub frame. Decoding is strict: member names
// match exactly, duplicates and unknown members are refused, so a payload
// can never be silently reinterpreted.
type Frame struct {
	V        *int           `json:"v"`
	Type     string         `json:"type"`
	ID       string         `json:"id"`
	TS       *int64         `json:"ts"`
	Metrics  Metrics        `json:"metrics"`
	Readings []wireReading  `json:"readings"`
	Status   string         `json:"status"`
	Result   jsontext.Value `json:"result"`
	Error    *string        `json:"error"`
	// Reported is a state frame's merge patch, checked by its owner
	// (devices/state) and not here.
	Reported jsontext.Value `json:"reported"`

	// tel is the first Telemetry made of this frame, in the frame's
	// allocation (one allocation less per message); telUsed marks it
	// taken, so a second call gets its own.
	tel     Telemetry
	telUsed bool
}

type wireReading struct {
	TS      *int64  `json:"ts"`
	Metrics Metrics `json:"metrics"`
}

// Codec decodes and validates device frames. One Codec serves every
// transport, so a reading means the same thing whichever way it arrived.
// It is safe for concurrent use.
type Codec struct {
	limits Limits
	now    func() time.Time
	v      *validator.Validate
}

// NewCodec returns a Codec enforcing l. now is the clock timestamps are
// judged against; nil means time.Now.
func NewCodec(l Limits, now func() time.Time) *Codec {
	l.ensureDefaults()
	if now == nil {
		now = time.Now
	}
	c := &Codec{limits: l, now: now, v: validator.New()}
	c.v.RegisterTagNameFunc(func(f reflect.StructField) string {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		return name
	})
	// Registration fails only for an empty tag or nil func; these are constants.
	must(c.v.RegisterValidation("readings", func(fl validator.FieldLevel) bool {
		n := fl.Field().Len()
		return n >= 1 && n <= c.limits.MaxReadings
	}))
	// One custom validator checks a reading's whole metrics map in a tight
	// loop: count, names and values. (Diving into the map with per-key
	// tags costs a reflective traversal per metric, the largest part of
	// ingest CPU.) validationError finds the individual culprits.
	must(c.v.RegisterValidation("metrics", func(fl validator.FieldLevel) bool {
		m, ok := fl.Field().Interface().(Metrics)
		return ok && c.metricsOK(m)
	}))
	must(c.v.RegisterValidation("ts", func(fl validator.FieldLevel) bool {
		return c.tsOK(fl.Field().Int())
	}))
	return c
}

func must(err error) {
	if err != nil {
		panic(err) // programming error at construction, never on input
	}
}

// Limits returns the limits c enforces.
func (c *Codec) Limits() Limits { return c.limits }

// Decode parses one device frame whose "type" says what it is (a
// WebSocket frame): DecodeKind(data, KindFrame).
func (c *Codec) Decode(data []byte) (*Frame, error) { return c.DecodeKind(data, KindFrame) }

// DecodeKind is the one decode entry point of a device message of kind k.
// It checks syntax, member names, the protocol version and the frame type;
// Telemetry and CommandResult check the rules of each type. Where the
// topic or path says the kind (anything but KindFrame), a missing "type"
// defaults to it (the one place that default is written) and any other
// type is refused; a WebSocket frame must name its type.
func (c *Codec) DecodeKind(data []byte, k Kind) (*Frame, error) {
	f := new(Frame)
	if err := json.Unmarshal(data, f, json.RejectUnknownMembers(true)); err != nil {
		return nil, decodeError(err)
	}
	if f.V != nil && *f.V != ProtocolVersion {
		return f, &Error{Code: CodeInvalid, Message: fmt.Sprintf("v: unsupported protocol version %d; this hub speaks %d", *f.V, ProtocolVersion),
			Fields: []FieldError{{Field: "v", Reason: fmt.Sprintf("unsupported protocol version; this hub speaks %d", ProtocolVersion)}}}
	}
	if k != KindFrame {
		want := ""
		if int(k) < len(frameType) {
			want = frameType[k]
		}
		switch f.Type {
		case "":
			f.Type = want
			return f, nil
		case want:
			return f, nil
		}
		return f, &Error{Code: CodeUnknownType, Message: fmt.Sprintf(`type: %q is not allowed here; expected %q`, Truncate(f.Type, 32), want)}
	}
	switch f.Type {
	case TypeTelemetry, TypeCommandResult, TypePing, TypeState:
		return f, nil
	case "":
		return f, &Error{Code: CodeUnknownType, Message: `type: required ("telemetry", "command_result", "state" or "ping")`}
	default:
		return f, &Error{Code: CodeUnknownType, Message: fmt.Sprintf(`type: unknown frame type %q; expected "telemetry", "command_result", "state" or "ping"`, Truncate(f.Type, 32))}
	}
}

// DecodeTelemetry decodes and validates a telemetry payload whose "type"
// may be omitted (the MQTT telemetry topic already says what it is).
func (c *Codec) DecodeTelemetry(data []byte) (*Telemetry, error) {
	f, err := c.DecodeKind(data, KindTelemetry)
	if err != nil {
		return nil, err
	}
	return c.Telemetry(f)
}

func decodeError(err error) *Error {
	var serr *json.SemanticError
	var synerr *jsontext.SyntacticError
	switch {
	case errors.As(err, &serr):
		path := pointerPath(serr.JSONPointer.Tokens())
		switch {
		case errors.Is(serr.Err, json.ErrUnknownName):
			return newError(CodeBadJSON, fmt.Sprintf("%s: unknown field (names are case-sensitive)", path))
		case serr.JSONKind != 0 && serr.GoType != nil:
			return newError(CodeBadJSON, fmt.Sprintf("%s: expected %s, got %s", orTop(path), kindWord(serr.GoType), serr.JSONKind.String()))
		case serr.Err != nil && errors.As(serr.Err, &synerr):
			return syntaxError(synerr)
		}
		return newError(CodeBadJSON, fmt.Sprintf("%s: malformed value", orTop(path)))
	case errors.As(err, &synerr):
		return syntaxError(synerr)
	}
	return newError(CodeBadJSON, "malformed JSON")
}

func syntaxError(e *jsontext.SyntacticError) *Error {
	path := pointerPath(e.JSONPointer.Tokens())
	if errors.Is(e.Err, jsontext.ErrDuplicateName) {
		return newError(CodeBadJSON, fmt.Sprintf("%s: duplicate field", orTop(path)))
	}
	return newError(CodeBadJSON, fmt.Sprintf("malformed JSON at byte %d", e.ByteOffset))
}

func orTop(path string) string {
	if path == "" {
		return "message"
	}
	return path
}

func kindWord(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Float64:
		return "a number"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Slice:
		return "an array"
	}
	return "a different kind of value"
}

// telemetryMsg is the validated shape of a telemetry message.
type telemetryMsg struct {
	ID       string    `json:"id" validate:"max=64"`
	Readings []Reading `json:"readings" validate:"readings,dive"`
}

// Telemetry validates a decoded telemetry frame and returns its readings,
// with missing timestamps set to the receive time (TS in milliseconds and
// Nanos in nanoseconds; the bridge then makes Nanos unique per device).
//
// The rules are the validator's (telemetryMsg's tags and the custom
// validations NewCodec registers). A message that passes the hand-written
// check (valid) is accepted without the validator's reflective walk; any
// other goes through the validator, which decides and words the errors.
// TestValidMatchesValidator and FuzzDecode hold the two to the same
// verdict.
func (c *Codec) Telemetry(f *Frame) (*Telemetry, error) {
	t, recv, err := c.readings(f)
	if err != nil {
		return nil, err
	}
	if !c.valid(t.ID, t.Readings, recv) {
		if err := c.validate(t.ID, t.Readings); err != nil {
			return nil, c.validationError(err, t.Single)
		}
	}
	return t, nil
}

// readings checks the shape of a telemetry frame (one form or the other)
// and returns its readings, not yet validated, and the receive time.
func (c *Codec) readings(f *Frame) (*Telemetry, time.Time, error) {
	if f.Status != "" || f.Result != nil || f.Error != nil {
		return nil, time.Time{}, fieldErr("status", "not allowed in a telemetry message")
	}
	if f.Reported != nil {
		return nil, time.Time{}, fieldErr("reported", "not allowed in a telemetry message")
	}
	recv := c.now()
	now, nowNanos := recv.UnixMilli(), recv.UnixNano()
	var t *Telemetry
	if f.telUsed {
		t = new(Telemetry)
	} else {
		t, f.telUsed = &f.tel, true
	}
	*t = Telemetry{ID: f.ID, Single: f.Readings == nil}
	switch {
	case f.Metrics != nil && f.Readings != nil:
		return nil, recv, fieldErr("readings", `send either "metrics" or "readings", not both`)
	case f.Readings != nil && f.TS != nil:
		return nil, recv, fieldErr("ts", `not allowed beside "readings"; give each reading its own ts`)
	case t.Single:
		if f.Metrics == nil {
			return nil, recv, fieldErr("metrics", `required (or "readings" for a batch)`)
		}
		r := Reading{TS: now, Nanos: nowNanos, Metrics: f.Metrics}
		if f.TS != nil {
			r.TS, r.Nanos = *f.TS, 0
		}
		t.one[0] = r
		t.Readings = t.one[:]
	default:
		t.Readings = make([]Reading, len(f.Readings))
		for i, r := range f.Readings {
			t.Readings[i] = Reading{TS: now, Nanos: nowNanos, Metrics: r.Metrics}
			if r.TS != nil {
				t.Readings[i].TS, t.Readings[i].Nanos = *r.TS, 0
			}
		}
	}
	return t, recv, nil
}

// validate runs the validator over a message: the rules, and the errors
// a refusal reports.
func (c *Codec) validate(id string, readings []Reading) error {
	return c.v.Struct(&telemetryMsg{ID: id, Readings: readings})
}

// valid is the validator's verdict on a message, checked by hand: the
// same rules as telemetryMsg's tags, with the clock read once (at now)
// instead of per reading. It decides only "valid"; a message it refuses
// goes to the validator.
func (c *Codec) valid(id string, readings []Reading, now time.Time) bool {
	// "max=64" on a string counts runes.
	if len(id) > MaxIDLen && utf8.RuneCountInString(id) > MaxIDLen {
		return false
	}
	if len(readings) < 1 || len(readings) > c.limits.MaxReadings {
		return false
	}
	for i := range readings {
		if !c.tsOKAt(readings[i].TS, now) || !c.metricsOK(readings[i].Metrics) {
			return false
		}
	}
	return true
}

// StatePatch returns the merge patch of a decoded state frame: its
// "reported" member, which must be there; no telemetry or command_result
// member may. The patch's own rules are its owner's (devices/state).
func (c *Codec) StatePatch(f *Frame) ([]byte, error) {
	switch {
	case f.Metrics != nil || f.Readings != nil || f.TS != nil || f.Status != "" || f.Result != nil || f.Error != nil:
		return nil, fieldErr("reported", "a state frame carries only id and reported")
	case f.Reported == nil:
		return nil, fieldErr("reported", "required: a JSON merge patch of the reported state")
	case len(f.ID) > MaxIDLen:
		return nil, fieldErr("id", "must be at most 64 characters")
	}
	return f.Reported, nil
}

// CommandResult validates a decoded command_result frame.
func (c *Codec) CommandResult(f *Frame) (*CommandResult, error) {
	switch {
	case f.Metrics != nil || f.Readings != nil || f.TS != nil:
		return nil, fieldErr("metrics", "not allowed in a command_result message")
	case f.Reported != nil:
		return nil, fieldErr("reported", "not allowed in a command_result message")
	case f.ID == "" || len(f.ID) > MaxIDLen:
		return nil, fieldErr("id", "required: the id of the command being answered (at most 64 characters)")
	case f.Status != ResultOK && f.Status != ResultError:
		return nil, fieldErr("status", `must be "ok" or "error"`)
	case f.Result != nil && f.Result.Kind() != '{' && f.Result.Kind() != 'n':
		return nil, fieldErr("result", "must be a JSON object")
	case f.Error != nil && len(*f.Error) > MaxResultErrorLen:
		return nil, fieldErr("error", fmt.Sprintf("must be at most %d bytes", MaxResultErrorLen))
	}
	r := &CommandResult{ID: f.ID, Status: f.Status, Result: f.Result}
	if f.Error != nil {
		r.Error = *f.Error
	}
	return r, nil
}

func fieldErr(field, reason string) *Error {
	return &Error{Code: CodeInvalid, Message: field + ": " + reason, Fields: []FieldError{{Field: field, Reason: reason}}}
}

func (c *Codec) metricsOK(m Metrics) bool {
	if len(m) < 1 || len(m) > c.limits.MaxMetrics {
		return false
	}
	for k, v := range m {
		if !ValidName(k) || c.ReservedReason(k) != "" || c.valueReason(v) != "" {
			return false
		}
	}
	return true
}

// metricErrors lists what is wrong with a metrics map at path.
func (c *Codec) metricErrors(path string, m Metrics) []FieldError {
	if len(m) < 1 || len(m) > c.limits.MaxMetrics {
		return []FieldError{{Field: path, Reason: fmt.Sprintf("must contain 1 to %d metrics", c.limits.MaxMetrics)}}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []FieldError
	for _, k := range keys {
		switch {
		case !ValidName(k):
			out = append(out, FieldError{Field: path + "." + k, Reason: "metric name must start with a letter or '_', then letters, digits, '_', '.' or '-' (max 64)"})
		case c.ReservedReason(k) != "":
			out = append(out, FieldError{Field: path + "." + k, Reason: c.ReservedReason(k)})
		case c.valueReason(m[k]) != "":
			out = append(out, FieldError{Field: path + "." + k, Reason: c.valueReason(m[k])})
		}
	}
	return out
}

func (c *Codec) tsOK(ts int64) bool { return c.tsOKAt(ts, c.now()) }

// tsOKAt reports whether ts (unix ms) is within the limits of the hub's
// clock reading now.
func (c *Codec) tsOKAt(ts int64, now time.Time) bool {
	return ts <= now.Add(c.limits.MaxFuture).UnixMilli() && ts >= now.Add(-c.limits.MaxAge).UnixMilli()
}

// valueReason says why v is not an acceptable metric value, or "" if it is.
func (c *Codec) valueReason(v Value) string {
	switch v.Kind {
	case KindNumber:
		if math.IsInf(v.Num, 0) || math.IsNaN(v.Num) {
			return "must be a finite number"
		}
	case KindBool:
	case KindString:
		switch {
		case len(v.Str) > c.limits.MaxStringLen:
			return fmt.Sprintf("string must be at most %d bytes", c.limits.MaxStringLen)
		case !utf8.ValidString(v.Str):
			return "string must be valid UTF-8"
		case strings.ContainsFunc(v.Str, isControl):
			return "string must not contain control characters"
		}
	default:
		return "must be a number, a boolean or a string (not null, an object or an array)"
	}
	return ""
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// validationError turns validator's errors into paths and reasons a firmware
// developer understands.
func (c *Codec) validationError(err error, single bool) *Error {
	var verrs validator.ValidationErrors
	if !errors.As(err, &verrs) {
		return newError(CodeInvalid, "message is invalid")
	}
	out := &Error{Code: CodeInvalid}
	for _, fe := range verrs {
		path := fieldPath(fe.Namespace(), single)
		var reason string
		switch fe.Tag() {
		case "max":
			reason = fmt.Sprintf("must be at most %d characters", MaxIDLen)
		case "readings":
			reason = fmt.Sprintf("must contain 1 to %d readings", c.limits.MaxReadings)
		case "metrics":
			m, _ := fe.Value().(Metrics)
			for _, mfe := range c.metricErrors(path, m) {
				out.addField(mfe)
			}
			continue
		case "ts":
			reason = fmt.Sprintf("unix ms, at most %s ahead of and %s behind the hub's clock", c.limits.MaxFuture, c.limits.MaxAge)
		default:
			reason = "breaks rule " + fe.Tag()
		}
		out.addField(FieldError{Field: path, Reason: reason})
	}
	if len(out.Fields) == 0 {
		out.Message = "message is invalid"
		return out
	}
	out.Message = out.Fields[0].Field + ": " + out.Fields[0].Reason
	if n := len(out.Fields) + out.Omitted; n > 1 {
		out.Message += fmt.Sprintf(" (and %d more)", n-1)
	}
	return out
}

// fieldPath converts validator's namespace ("telemetryMsg.readings[3].metrics[temp]")
// into the JSON path ("readings[3].metrics.temp").
func fieldPath(ns string, single bool) string {
	_, ns, _ = strings.Cut(ns, ".")
	if i := strings.Index(ns, "metrics["); i >= 0 && strings.HasSuffix(ns, "]") {
		ns = ns[:i] + "metrics." + ns[i+len("metrics["):len(ns)-1]
	}
	if single {
		ns = strings.TrimPrefix(ns, "readings[0].")
	}
	return ns
}
