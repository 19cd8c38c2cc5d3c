package telemetry

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/go-json-experiment/json"
)

// Error codes carried in error frames, HTTP error bodies and MQTT error
// messages. They are part of the public contract: firmware branches on them.
const (
	CodeBadJSON     = "bad_json"     // the frame is not the JSON the protocol describes
	CodeInvalid     = "invalid"      // well-formed, but a field breaks a rule
	CodeUnknownType = "unknown_type" // "type" names no frame a device may send
	CodeRateLimited = "rate_limited" // the device exceeded its message rate
	CodeOverloaded  = "overloaded"   // the hub cannot take the message now; retry later
	CodeTooLarge    = "too_large"    // the message exceeds the size limit
	CodeInternal    = "internal"     // the hub failed; retry later

	CodeUnsupportedEncoding = "unsupported_encoding" // HTTP: a Content-Encoding other than gzip (415)
)

// FieldError names one broken rule by its JSON path.
type FieldError struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

// Error is a refusal of one device message. It is sent back to the device as
// an error frame and never changes anything else.
type Error struct {
	Code    string
	Message string
	Fields  []FieldError
	// Omitted counts broken rules found beyond Fields and not listed, so
	// that a message with thousands of them costs the hub (and the device)
	// no more than MaxFieldErrors entries.
	Omitted int
}

// Bounds of an error answer: however much is wrong with a message, the
// error frame answering it stays a few KiB (docs/protocol.md, "Bounds").
// Input of 239 KB once produced a 5.6 MB error frame.
const (
	MaxFieldErrors     = 20   // field errors listed; the rest are counted in a final "..." entry
	MaxFieldPathLen    = 64   // bytes of one field path (a refused name may be longer)
	MaxReasonLen       = 96   // bytes of one reason
	MaxErrorMessageLen = 200  // bytes of the message
	MaxErrorFrameBytes = 4096 // an encoded error frame never exceeds this
)

// MoreField is the field of the final entry of an error list that was
// cut at MaxFieldErrors; its reason says how many were left out.
const MoreField = "..."

// addField lists fe, clipped, or counts it in Omitted once MaxFieldErrors
// are listed.
func (e *Error) addField(fe FieldError) {
	if len(e.Fields) >= MaxFieldErrors {
		e.Omitted++
		return
	}
	e.Fields = append(e.Fields, FieldError{Field: clip(fe.Field, MaxFieldPathLen), Reason: clip(fe.Reason, MaxReasonLen)})
}

// clip shortens s to at most n bytes, on a rune boundary, marking the cut
// with "...".
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// Truncate shortens s to its first n bytes (backing off to a rune
// boundary) followed by "...", for a client's string echoed in a message
// or a log line: one copy for every package that echoes one.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// Printable returns s with every control character and every byte of
// invalid UTF-8 written as a Go escape (\n, \x1b, \u0085): for text a
// device chose that reaches an operator's terminal or a table, where an
// escape sequence or a line break would pass for output of the hub.
func Printable(s string) string {
	if utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case unicode.IsControl(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// HasControl reports whether s is invalid UTF-8 or holds a control
// character: names an operator gives (devices, tokens) may not.
func HasControl(s string) bool {
	return !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl)
}

func moreEntry(n int) FieldError {
	return FieldError{Field: MoreField, Reason: fmt.Sprintf("and %d more", n)}
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf is a short way to build an Error without field details.
func newError(code, msg string) *Error { return &Error{Code: code, Message: msg} }

// ErrRateLimited and ErrOverloaded are the shared refusals transports send
// when the bridge will not take a message.
var (
	ErrRateLimited = &Error{Code: CodeRateLimited, Message: "message rate limit exceeded; slow down"}
	ErrOverloaded  = &Error{Code: CodeOverloaded, Message: "hub cannot accept readings right now; retry later"}
	ErrInternal    = &Error{Code: CodeInternal, Message: "hub failed to store the message; retry later"}
)

// ErrorFrame is the wire form of an Error.
type ErrorFrame struct {
	Type    string       `json:"type"`
	ID      string       `json:"id,omitzero"`
	Code    string       `json:"code"`
	Message string       `json:"message"`
	Errors  []FieldError `json:"errors,omitzero"`
}

// Frame returns the error frame answering message id, within the bounds
// above: at most MaxFieldErrors entries, then one MoreField entry saying
// how many more there were; every string clipped. The echoed id is clipped
// to MaxIDLen (a longer one is refused anyway).
func (e *Error) Frame(id string) ErrorFrame { return e.frame(id, MaxFieldErrors) }

// frame is Frame listing at most n entries.
func (e *Error) frame(id string, n int) ErrorFrame {
	fields, more := e.Fields, e.Omitted
	if len(fields) > n {
		more += len(fields) - n
		fields = fields[:n]
	}
	var out []FieldError
	if len(fields) > 0 || more > 0 {
		out = make([]FieldError, 0, len(fields)+1)
		for _, f := range fields {
			out = append(out, FieldError{Field: clip(f.Field, MaxFieldPathLen), Reason: clip(f.Reason, MaxReasonLen)})
		}
		if more > 0 {
			out = append(out, moreEntry(more))
		}
	}
	return ErrorFrame{Type: TypeError, ID: clip(id, MaxIDLen), Code: e.Code, Message: clip(e.Message, MaxErrorMessageLen), Errors: out}
}

// EncodeError returns the JSON error frame for e answering message id. It
// is never larger than MaxErrorFrameBytes: should escaping still take the
// clipped frame past it, entries move from the list into the final count.
func EncodeError(id string, e *Error) []byte {
	for n := MaxFieldErrors; ; n-- {
		b, err := json.Marshal(e.frame(id, n))
		if err != nil { // only strings: unreachable, but never panic on a network path
			return []byte(`{"type":"error","code":"internal","message":"encode error"}`)
		}
		if len(b) <= MaxErrorFrameBytes || n == 0 {
			return b
		}
	}
}

// pointerPath turns a JSON pointer ("/readings/3/metrics/temp") into the
// path firmware developers read ("readings[3].metrics.temp").
func pointerPath(tokens func(yield func(string) bool)) string {
	var b strings.Builder
	prev := ""
	for tok := range tokens {
		switch {
		case prev == "readings":
			b.WriteString("[" + tok + "]")
		default:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(tok)
		}
		prev = tok
	}
	return clip(b.String(), MaxFieldPathLen)
}
