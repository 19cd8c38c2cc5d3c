package live

import (
	"encoding/json"
	"sync"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Event is one published event with a hub-wide sequence number (0 for a
// snapshot value, which is not in the replay window). It is shared by
// every subscriber it goes to, and encoded at most once.
type Event struct {
	Seq  uint64
	Ev   telemetry.Event
	once sync.Once
	data []byte
}

// Encoded returns the event's JSON, encoding it on first use.
func (e *Event) Encoded() []byte {
	e.once.Do(func() { e.data = encodeEvent(e.Ev) })
	return e.data
}

func encodeEvent(ev telemetry.Event) []byte {
	b, err := json.Marshal(EventJSON(ev))
	if err != nil {
		return []byte(`{"type":"error","message":"encode event"}`)
	}
	return b
}

// EventJSON gives metrics their plain JSON values (encoding/json does not
// know telemetry.Value's encoder).
func EventJSON(ev telemetry.Event) any {
	type out struct {
		Type      string         `json:"type"`
		Device    string         `json:"device"`
		TS        int64          `json:"ts,omitempty"`
		Metrics   map[string]any `json:"metrics,omitempty"`
		Online    *bool          `json:"online,omitempty"`
		Transport string         `json:"transport,omitempty"`
		Reason    string         `json:"reason,omitempty"`
		At        int64          `json:"at,omitempty"`
		ID        string         `json:"id,omitempty"`
		Status    string         `json:"status,omitempty"`
	}
	o := out{Type: ev.Type, Device: ev.Device, TS: ev.TS, Online: ev.Online, Transport: ev.Transport, Reason: ev.Reason, At: ev.At, ID: ev.ID, Status: ev.Status}
	if len(ev.Metrics) > 0 {
		o.Metrics = make(map[string]any, len(ev.Metrics))
		for k, v := range ev.Metrics {
			switch v.Kind {
			case telemetry.KindNumber:
				o.Metrics[k] = v.Num
			case telemetry.KindBool:
				o.Metrics[k] = v.Bool
			case telemetry.KindString:
				o.Metrics[k] = v.Str
			}
		}
	}
	return o
}
