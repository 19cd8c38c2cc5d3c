package telemetry

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
