package live

import (
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

// encodeEvent is the one live-event encoder, telemetry's.
func encodeEvent(ev telemetry.Event) []byte { return telemetry.EncodeEvent(ev) }
