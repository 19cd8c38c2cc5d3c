package telemetry

import "github.com/go-json-experiment/json"

// Live event types pushed to operators' dashboards.
const (
	EventReading  = "reading"
	EventPresence = "presence"
	EventCommand  = "command"
)

// Event is one live event for dashboards: a reading, a presence change or a
// command status change. The same shape travels over /ws/live and SSE.
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
	// Command.
	ID     string `json:"id,omitzero"`
	Status string `json:"status,omitzero"`
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
