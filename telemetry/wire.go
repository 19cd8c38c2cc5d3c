package telemetry

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Frame types, the "type" field of every frame on a device socket.
const (
	TypeTelemetry     = "telemetry"
	TypeAck           = "ack"
	TypeError         = "error"
	TypeCommand       = "command"
	TypeCommandResult = "command_result"
	TypePing          = "ping"
	TypePong          = "pong"
	// TypeState is a device state frame: from the device
	// {"type":"state","id":..,"reported":{merge patch}}, from the hub
	// {"type":"state","desired":{..},"delta":{..},"version":N}.
	TypeState = "state"
)

// ProtocolVersion is the only protocol version this hub speaks. A frame
// without "v" is version 1.
const ProtocolVersion = 1

// ValueKind says which of the three allowed JSON kinds a metric value has.
type ValueKind uint8

// Value kinds. KindInvalid marks a value the decoder accepted syntactically
// but the contract forbids (null, object, array); validation reports it with
// the metric's path instead of failing the whole frame as bad JSON.
const (
	KindInvalid ValueKind = iota
	KindNumber
	KindBool
	KindString
)

// Value is one metric value: a number (stored as float), a boolean or a
// short string.
type Value struct {
	Kind ValueKind
	Num  float64
	Bool bool
	Str  string
}

// Number, Bool and String build values; tests and the simulator use them.
func Number(f float64) Value { return Value{Kind: KindNumber, Num: f} }

// Bool returns a boolean metric value.
func Bool(b bool) Value { return Value{Kind: KindBool, Bool: b} }

// String returns a string metric value.
func String(s string) Value { return Value{Kind: KindString, Str: s} }

// UnmarshalJSONFrom decodes a metric value. Numbers that overflow float64
// decode as ±Inf so validation can name them; null, objects and arrays
// decode as KindInvalid for the same reason.
func (v *Value) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	switch dec.PeekKind() {
	case '0':
		tok, err := dec.ReadToken()
		if err != nil {
			return err
		}
		f, err := strconv.ParseFloat(tok.String(), 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return err
		}
		*v = Value{Kind: KindNumber, Num: f}
	case 't', 'f':
		tok, err := dec.ReadToken()
		if err != nil {
			return err
		}
		*v = Value{Kind: KindBool, Bool: tok.Bool()}
	case '"':
		tok, err := dec.ReadToken()
		if err != nil {
			return err
		}
		*v = Value{Kind: KindString, Str: tok.String()}
	default:
		if err := dec.SkipValue(); err != nil {
			return err
		}
		*v = Value{Kind: KindInvalid}
	}
	return nil
}

// MarshalJSONTo encodes a metric value as its plain JSON form.
func (v Value) MarshalJSONTo(enc *jsontext.Encoder) error {
	switch v.Kind {
	case KindNumber:
		if math.IsNaN(v.Num) || math.IsInf(v.Num, 0) {
			return fmt.Errorf("metric value %v is not finite", v.Num)
		}
		return enc.WriteToken(jsontext.Float(v.Num))
	case KindBool:
		return enc.WriteToken(jsontext.Bool(v.Bool))
	case KindString:
		return enc.WriteToken(jsontext.String(v.Str))
	default:
		return enc.WriteToken(jsontext.Null)
	}
}

// Metrics maps metric names to values for one reading.
type Metrics map[string]Value

// Reading is one timestamped set of metrics from one device.
type Reading struct {
	// TS is the reading's time in unix milliseconds.
	TS      int64   `json:"ts" validate:"ts"`
	Metrics Metrics `json:"metrics" validate:"metrics"`
	// Nanos is the hub-assigned time in unix nanoseconds of a reading the
	// device sent without ts; 0 when the device gave ts. The codec sets it
	// to the receive time and the bridge makes it strictly increasing per
	// device (HubTime), so two readings without ts never share a point in
	// InfluxDB. TS is always Nanos in milliseconds when Nanos is set.
	Nanos int64 `json:"-" validate:"-"`
}

// Nano returns the reading's time in unix nanoseconds, the precision the
// hub writes to InfluxDB.
func (r *Reading) Nano() int64 {
	if r.Nanos != 0 {
		return r.Nanos
	}
	return r.TS * int64(time.Millisecond)
}

// HubTime returns the next hub-assigned time for a reading received at
// now (unix nanoseconds) by a device whose last assigned time is held in
// last: strictly greater than every earlier one of that device and never a
// whole millisecond, so it can equal neither another hub-assigned time nor
// any ts a device sends (device ts are milliseconds). It is lock-free: one
// compare-and-swap per reading.
func HubTime(last *atomic.Int64, now int64) int64 {
	for {
		prev := last.Load()
		n := max(now, prev+1)
		if n%int64(time.Millisecond) == 0 {
			n++
		}
		if last.CompareAndSwap(prev, n) {
			return n
		}
	}
}

// Telemetry is a validated telemetry message: one or more readings that are
// accepted or refused together, and acknowledged together under ID.
type Telemetry struct {
	ID       string
	Readings []Reading
	// Single records that the device sent the one-reading form, so error
	// paths read "metrics.temp" rather than "readings[0].metrics.temp".
	Single bool
	one    [1]Reading // Readings of a single reading, kept in the same allocation
}

// Points returns the number of readings in t.
func (t *Telemetry) Points() int { return len(t.Readings) }

// Command is a hub -> device command, as carried on every transport.
type Command struct {
	Type   string         `json:"type,omitzero"`
	ID     string         `json:"id"`
	Name   string         `json:"name"`
	Params jsontext.Value `json:"params,omitzero"`
}

// EncodeCommand returns the JSON of cmd: with "type":"command" for the
// WebSocket, without it for MQTT (the topic says what it is).
func EncodeCommand(cmd Command, withType bool) []byte {
	cmd.Type = ""
	if withType {
		cmd.Type = TypeCommand
	}
	if len(cmd.Params) == 0 {
		cmd.Params = jsontext.Value("{}")
	}
	b, err := json.Marshal(cmd)
	if err != nil { // params were validated as a JSON object when queued
		return []byte(`{"id":"` + cmd.ID + `","name":"` + cmd.Name + `","params":{}}`)
	}
	return b
}

// CommandResult is a device's answer to a Command.
type CommandResult struct {
	ID     string         `json:"id"`
	Status string         `json:"status"`
	Result jsontext.Value `json:"result,omitzero"`
	Error  string         `json:"error,omitzero"`
}

// Command result statuses a device may report.
const (
	ResultOK    = "ok"
	ResultError = "error"
)

// AckFrame is the hub's acknowledgement that every reading of message ID is
// durable.
type AckFrame struct {
	Type string `json:"type"`
	ID   string `json:"id,omitzero"`
}

// EncodeStateAck returns the ack of a state frame: the ack frame for
// message id with the new reported version.
func EncodeStateAck(id string, version int64) []byte {
	b, _ := json.Marshal(struct {
		AckFrame
		Version int64 `json:"version"`
	}{AckFrame{Type: TypeAck, ID: id}, version}) // cannot fail: two strings and a number
	return b
}

// EncodeAck returns the ack frame for message id.
func EncodeAck(id string) []byte {
	b, _ := json.Marshal(AckFrame{Type: TypeAck, ID: id}) // cannot fail: two strings
	return b
}
