package devices

import (
	"fmt"
	"slices"
	"sync"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Bounds of the rejections kept per device (docs/protocol.md,
// "Rejections"): what a misbehaving device can make the hub hold is
// RejectionsKept records of at most a few hundred bytes each, and only
// while the device is registered.
const (
	RejectionsKept      = 50
	MaxRejectionMessage = 256
)

// Rejection is one message the hub refused from a registered device, as
// the operator API shows it: when, over which transport, the error code,
// the first field path of the error ("" if none), the message (clipped to
// MaxRejectionMessage bytes) and the refused message's id if it had one.
type Rejection struct {
	At        int64  `json:"at"` // unix milliseconds
	Transport string `json:"transport"`
	Code      string `json:"code"`
	Field     string `json:"field"`
	Message   string `json:"message"`
	ID        string `json:"id"`
}

// rejections is one device's recent rejections: a ring of at most
// RejectionsKept, allocated at the first one (most devices never have
// any), and the count since the hub started. mu guards ring, next and
// total; it is taken only on a refusal and by readers of the API, never
// on the path of an accepted message.
type rejections struct {
	mu    sync.Mutex
	ring  []Rejection
	next  int // where the next one goes once ring is full
	total int64
}

func (r *rejections) add(rej Rejection) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.total++
	if len(r.ring) < RejectionsKept {
		r.ring = append(r.ring, rej)
		return
	}
	r.ring[r.next] = rej
	r.next = (r.next + 1) % RejectionsKept
}

// newestFirst returns the count and a copy of the ring, newest first.
func (r *rejections) newestFirst() (int64, []Rejection) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Rejection, 0, len(r.ring))
	out = append(out, r.ring[r.next:]...)
	out = append(out, r.ring[:r.next]...)
	slices.Reverse(out)
	return r.total, out
}

func (r *rejections) count() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// Rejected records that the hub refused a message of device over
// transport with e; id is the message's id ("" if it had none). A device
// that is not registered is ignored: only registered devices are kept,
// and a deleted device's rejections go with it. It takes the device's own
// lock for a moment and does no I/O, so a transport may call it inline.
func (r *Registry) Rejected(device, transport, id string, e *telemetry.Error) {
	d, ok := r.snap.Load().devices[device]
	if !ok || e == nil {
		return
	}
	// What the device chose (a field name, its id, text quoted in the
	// message) is kept with control characters escaped: it reaches
	// operators' terminals and tables.
	rej := Rejection{At: r.opts.Now().UnixMilli(), Transport: transport, Code: e.Code,
		Message: telemetry.Truncate(telemetry.Printable(e.Message), MaxRejectionMessage-3),
		ID:      telemetry.Truncate(telemetry.Printable(id), telemetry.MaxIDLen)}
	if len(e.Fields) > 0 {
		rej.Field = telemetry.Truncate(telemetry.Printable(e.Fields[0].Field), MaxRejectionMessage-3)
	}
	d.live.rejections.add(rej)
}

// Rejections returns how many messages of device the hub refused since
// it started and the last RejectionsKept of them, newest first.
func (r *Registry) Rejections(device string) (total int64, recent []Rejection, err error) {
	d, ok := r.snap.Load().devices[device]
	if !ok {
		return 0, nil, fmt.Errorf("device %q: %w", device, ErrNotFound)
	}
	total, recent = d.live.rejections.newestFirst()
	return total, recent, nil
}
