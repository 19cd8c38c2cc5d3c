package telemetry

import (
	"strings"

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

// Frame returns the error frame answering message id.
func (e *Error) Frame(id string) ErrorFrame {
	return ErrorFrame{Type: TypeError, ID: id, Code: e.Code, Message: e.Message, Errors: e.Fields}
}

// EncodeError returns the JSON error frame for e answering message id.
func EncodeError(id string, e *Error) []byte {
	b, err := json.Marshal(e.Frame(id))
	if err != nil { // only strings: unreachable, but never panic on a network path
		return []byte(`{"type":"error","code":"internal","message":"encode error"}`)
	}
	return b
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
	return b.String()
}
