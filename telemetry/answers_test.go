package telemetry_test

import (
	"slices"
	"testing"

	"github.com/fieldhub/fieldhub/telemetry"
)

// TestErrorTable pins every entry of the error table: the wire answers of
// docs/protocol.md for each code on each transport.
func TestErrorTable(t *testing.T) {
	tests := []struct {
		code                        string
		status                      int
		retryAfter                  string
		ws                          telemetry.WSAnswer
		mqtt311                     telemetry.MQTT311
		puback, connack, disconnect byte
		retry                       bool
	}{
		{telemetry.CodeBadJSON, 400, "", telemetry.WSErrorFrame, telemetry.MQTTAck, 0x99, 0, 0, false},
		{telemetry.CodeInvalid, 400, "", telemetry.WSErrorFrame, telemetry.MQTTAck, 0x99, 0, 0, false},
		{telemetry.CodeUnknownType, 400, "", telemetry.WSErrorFrame, telemetry.MQTTAck, 0x99, 0, 0, false},
		{telemetry.CodeRateLimited, 429, "1", telemetry.WSErrorFrame, telemetry.MQTTWithhold, 0x97, 0, 0x96, true},
		{telemetry.CodeOverloaded, 503, "5", telemetry.WSErrorFrame, telemetry.MQTTWithhold, 0x97, 0, 0, true},
		{telemetry.CodeInternal, 503, "5", telemetry.WSErrorFrame, telemetry.MQTTWithhold, 0x97, 0, 0, true},
		{telemetry.CodeTooLarge, 413, "", telemetry.WSErrorFrame, telemetry.MQTTAck, 0x83, 0, 0x95, false},
		{telemetry.CodeUnsupportedEncoding, 415, "", telemetry.WSErrorFrame, telemetry.MQTTAck, 0, 0, 0, false},
		{telemetry.CodeUnauthorized, 401, "", telemetry.WSRefuseUpgrade, telemetry.MQTTAck, 0, 0x86, 0, false},
		{telemetry.CodeNotFound, 404, "", telemetry.WSErrorFrame, telemetry.MQTTAck, 0, 0, 0, false},
	}
	var codes []string
	for _, tt := range tests {
		codes = append(codes, tt.code)
		a := telemetry.AnswerFor(tt.code)
		want := telemetry.Answer{HTTPStatus: tt.status, RetryAfter: tt.retryAfter, WS: tt.ws, MQTT311: tt.mqtt311,
			PubAck: tt.puback, ConnAck: tt.connack, Disconnect: tt.disconnect, Retry: tt.retry}
		if a != want {
			t.Errorf("AnswerFor(%q) = %+v, want %+v", tt.code, a, want)
		}
	}
	got := telemetry.Codes()
	slices.Sort(got)
	slices.Sort(codes)
	if !slices.Equal(got, codes) {
		t.Errorf("Codes() = %v; the test pins %v", got, codes)
	}
	if a, want := telemetry.AnswerFor("no_such_code"), telemetry.AnswerFor(telemetry.CodeInvalid); a != want {
		t.Errorf("AnswerFor(unknown) = %+v, want the invalid answer %+v", a, want)
	}
}

// TestErrorTableReasonCodesLegal: every MQTT 5 reason code in the table is
// one the specification allows on its packet type (5.0 §3.4.2.1 PUBACK,
// §3.2.2.2 CONNACK, §3.14.2.1 DISCONNECT); a standard client must never
// see another (paho-mqtt's network thread died on PUBACK 0x96).
func TestErrorTableReasonCodesLegal(t *testing.T) {
	legal := map[string][]byte{
		"PUBACK":     {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99},
		"CONNACK":    {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F},
		"DISCONNECT": {0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2},
	}
	for _, code := range telemetry.Codes() {
		a := telemetry.AnswerFor(code)
		for packet, c := range map[string]byte{"PUBACK": a.PubAck, "CONNACK": a.ConnAck, "DISCONNECT": a.Disconnect} {
			if c != 0 && !slices.Contains(legal[packet], c) {
				t.Errorf("%s: %s reason %#02x is not a %s reason code", code, packet, c, packet)
			}
		}
	}
}

// TestDecodeKindDefaultsType: a payload whose topic or path says its kind
// may leave "type" out, must not name another type, and still has its
// protocol version checked; a WebSocket frame must name its type.
func TestDecodeKindDefaultsType(t *testing.T) {
	c := telemetry.NewCodec(telemetry.Limits{}, nil)
	tests := []struct {
		name     string
		kind     telemetry.Kind
		payload  string
		wantType string
		wantCode string
	}{
		{"telemetry default", telemetry.KindTelemetry, `{"metrics":{"a":1}}`, telemetry.TypeTelemetry, ""},
		{"telemetry named", telemetry.KindTelemetry, `{"type":"telemetry","metrics":{"a":1}}`, telemetry.TypeTelemetry, ""},
		{"telemetry other type", telemetry.KindTelemetry, `{"type":"command_result","id":"c","status":"ok"}`, "", telemetry.CodeUnknownType},
		{"telemetry ping", telemetry.KindTelemetry, `{"type":"ping"}`, "", telemetry.CodeUnknownType},
		{"telemetry bad version", telemetry.KindTelemetry, `{"v":2,"metrics":{"a":1}}`, "", telemetry.CodeInvalid},
		{"result default", telemetry.KindCommandResult, `{"id":"c","status":"ok"}`, telemetry.TypeCommandResult, ""},
		{"result other type", telemetry.KindCommandResult, `{"type":"telemetry","id":"c","status":"ok"}`, "", telemetry.CodeUnknownType},
		{"frame needs type", telemetry.KindFrame, `{"metrics":{"a":1}}`, "", telemetry.CodeUnknownType},
		{"frame unknown type", telemetry.KindFrame, `{"type":"x"}`, "", telemetry.CodeUnknownType},
		{"frame ping", telemetry.KindFrame, `{"type":"ping"}`, telemetry.TypePing, ""},
		{"frame telemetry", telemetry.KindFrame, `{"type":"telemetry","metrics":{"a":1}}`, telemetry.TypeTelemetry, ""},
		{"frame version 1", telemetry.KindFrame, `{"v":1,"type":"ping"}`, telemetry.TypePing, ""},
		{"bad json", telemetry.KindTelemetry, `{`, "", telemetry.CodeBadJSON},
	}
	for _, tt := range tests {
		f, err := c.DecodeKind([]byte(tt.payload), tt.kind)
		if tt.wantCode != "" {
			e, ok := err.(*telemetry.Error)
			if !ok || e.Code != tt.wantCode {
				t.Errorf("%s: err = %v, want code %s", tt.name, err, tt.wantCode)
			}
			continue
		}
		if err != nil || f.Type != tt.wantType {
			t.Errorf("%s: frame %+v, err %v; want type %q", tt.name, f, err, tt.wantType)
		}
	}
}

func TestTruncate(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"abcdefghijk", 10, "abcdefghij..."},
		{"aé", 2, "a..."}, // never cuts a rune
		{"", 0, ""},
		{"x", 0, "..."},
	}
	for _, tt := range tests {
		if got := telemetry.Truncate(tt.in, tt.n); got != tt.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
