package telemetry

import (
	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Live event types pushed to operators' dashboards.
const (
	EventReading  = "reading"
	EventPresence = "presence"
	EventCommand  = "command"
	// EventAlert is an alert's state change (dashboard/alerts); ID is the
	// alert's id and Alert its JSON, the shape GET /api/v1/alerts lists.
	EventAlert = "alert"
	// EventState is a change of a device's desired or reported state
	// document; State is the JSON GET /api/v1/devices/{id}/state answers.
	EventState = "state"
)

// Event is one live event for dashboards: a reading, a presence change, a
// command status change, an alert's state change or a device state change. The same shape travels over /ws/live and SSE.
type Event struct {
	Type   string `json:"type"`
	Device string `json:"device"`
	// Reading.
	TS      int64   `json:"ts,omitzero"`
	Metrics Metrics `json:"metrics,omitzero"`
	// Presence.
	Online    *bool  `json:"online,omitzero"`
	Transport string `json:"transport,omitzero"`
	Reason    string `json:"reason,omitzero"`
	At        int64  `json:"at,omitzero"`
	// Command (and alert: ID is the alert's id).
	ID     string `json:"id,omitzero"`
	Status string `json:"status,omitzero"`
	// Alert: the alert object, already encoded by its owner, so this
	// package carries it without knowing its shape.
	Alert jsontext.Value `json:"alert,omitzero"`
	// State: the device's state document, already encoded by its owner.
	State jsontext.Value `json:"state,omitzero"`
}

// EncodeEvent returns the JSON of ev, the one encoding of a live event
// (dashboards' /ws/live, SSE and REST; between instances it is the same
// shape, the Event type's own JSON form): members left out when zero,
// metric values as plain JSON values, metric names in sorted order.
func EncodeEvent(ev Event) []byte {
	b, err := json.Marshal(ev, json.Deterministic(true))
	if err != nil { // a non-finite number: validation refuses them first
		return []byte(`{"type":"error","message":"encode event"}`)
	}
	return b
}
