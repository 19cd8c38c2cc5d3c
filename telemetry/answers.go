package telemetry

// More error codes of the contract, answered before a message is read
// (HTTP) or about a command result.
const (
	CodeUnauthorized = "unauthorized" // missing, invalid or revoked device token
	CodeNotFound     = "not_found"    // no pending command with this id for this device
)

// MQTT311 is how the hub answers a refused MQTT 3.1.1 (or QoS 0) publish:
// the error frame always goes to devices/{id}/errors; then the PUBACK is
// sent or withheld.
type MQTT311 uint8

// MQTT 3.1.1 answers of a refused publish.
const (
	// MQTTAck acks the refused publish: the device must not resend it.
	MQTTAck MQTT311 = iota
	// MQTTWithhold withholds the PUBACK of a QoS 1 publish and closes
	// the connection, so the device keeps the message and sends it again
	// once reconnected (3.1.1 clients resend only then, [MQTT-4.4.0-1]).
	MQTTWithhold
)

// WSAnswer is how the hub answers a refused WebSocket frame.
type WSAnswer uint8

// WebSocket answers.
const (
	// WSErrorFrame sends an error frame and keeps the socket.
	WSErrorFrame WSAnswer = iota
	// WSRefuseUpgrade answers the upgrade request with the HTTP status;
	// no socket is opened.
	WSRefuseUpgrade
)

// MQTT 5 reason codes the hub sends (MQTT 5.0 §2.4). Zero: the packet is
// not sent for that code.
const (
	ReasonImplementationError  byte = 0x83 // PUBACK, PUBREC: valid, but not taken
	ReasonBadUserOrPassword    byte = 0x86 // CONNACK
	ReasonPacketTooLarge       byte = 0x95 // DISCONNECT only (5.0 §3.14.2.1)
	ReasonMessageRateTooHigh   byte = 0x96 // DISCONNECT only: never on a PUBACK (§3.4.2.1)
	ReasonQuotaExceeded        byte = 0x97 // PUBACK, PUBREC, DISCONNECT
	ReasonPayloadFormatInvalid byte = 0x99 // PUBACK, PUBREC
)

// Answer is what every transport answers for one error code: the table
// each transport reads instead of deciding on its own.
type Answer struct {
	// HTTPStatus answers an HTTP request (device endpoints).
	HTTPStatus int
	// RetryAfter is the Retry-After header in seconds ("" for none).
	RetryAfter string
	// WS is the answer on the device socket.
	WS WSAnswer
	// MQTT311 answers a refused QoS 1 publish of an MQTT 3.1.1 client.
	MQTT311 MQTT311
	// PubAck, ConnAck and Disconnect are the MQTT 5 reason codes of the
	// code on each packet type; zero when that packet never carries it.
	PubAck, ConnAck, Disconnect byte
	// Retry says whether the device should send the same message again
	// (later, or slower): the hub kept nothing of it and will take it.
	Retry bool
}

// answers is the error table (docs/protocol.md, "Errors"). HTTP statuses
// are net/http's numbers, written out so telemetry needs no net/http.
var answers = map[string]Answer{
	CodeBadJSON:             {HTTPStatus: 400, PubAck: ReasonPayloadFormatInvalid},
	CodeInvalid:             {HTTPStatus: 400, PubAck: ReasonPayloadFormatInvalid},
	CodeUnknownType:         {HTTPStatus: 400, PubAck: ReasonPayloadFormatInvalid},
	CodeRateLimited:         {HTTPStatus: 429, RetryAfter: "1", MQTT311: MQTTWithhold, PubAck: ReasonQuotaExceeded, Disconnect: ReasonMessageRateTooHigh, Retry: true},
	CodeOverloaded:          {HTTPStatus: 503, RetryAfter: "5", MQTT311: MQTTWithhold, PubAck: ReasonQuotaExceeded, Retry: true},
	CodeInternal:            {HTTPStatus: 503, RetryAfter: "5", MQTT311: MQTTWithhold, PubAck: ReasonQuotaExceeded, Retry: true},
	CodeTooLarge:            {HTTPStatus: 413, PubAck: ReasonImplementationError, Disconnect: ReasonPacketTooLarge},
	CodeUnsupportedEncoding: {HTTPStatus: 415},
	CodeUnauthorized:        {HTTPStatus: 401, WS: WSRefuseUpgrade, ConnAck: ReasonBadUserOrPassword},
	CodeNotFound:            {HTTPStatus: 404},
}

// AnswerFor returns the table's answer for code; a code not in the table
// is answered like CodeInvalid (400, payload format invalid, no retry).
func AnswerFor(code string) Answer {
	if a, ok := answers[code]; ok {
		return a
	}
	return answers[CodeInvalid]
}

// Codes returns every code in the error table, for tests and docs.
func Codes() []string {
	out := make([]string, 0, len(answers))
	for c := range answers {
		out = append(out, c)
	}
	return out
}
