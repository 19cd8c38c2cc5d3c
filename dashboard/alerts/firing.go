package alerts

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/dashboard/alerts/notify"
)

// Firing is the notifier's notify.FiringSource over an alert store: the
// Alertmanager re-send, which keeps Alertmanager from resolving a firing
// alert after its resolve_timeout. It reads the store, so with several
// instances every instance's firing alerts are in it, and it needs no
// engine: the notifier is built before the engine that wakes it.
type Firing struct {
	Store AlertStore
	Now   func() time.Time // default time.Now
}

// Firing lists the alerts firing now whose firing was notified (not held
// back by a silence), as notifications, in id order after the id after,
// at most max. Safe to call from any goroutine.
func (f Firing) Firing(ctx context.Context, after string, max int) ([]notify.Notification, error) {
	open, err := f.Store.Open(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("list firing alerts: %w", err)
	}
	clock := f.Now
	if clock == nil {
		clock = time.Now
	}
	now := clock().UTC().Truncate(time.Millisecond)
	recs := make([]*Record, 0, len(open))
	for i := range open {
		r := &open[i]
		if r.State != StateFiring || !r.Notified || r.ID <= after {
			continue
		}
		if r.SilencedUntil != nil && r.SilencedUntil.After(now) {
			continue
		}
		recs = append(recs, r)
	}
	slices.SortFunc(recs, func(a, b *Record) int { return strings.Compare(a.ID, b.ID) })
	if len(recs) > max {
		recs = recs[:max]
	}
	out := make([]notify.Notification, len(recs))
	for i, r := range recs {
		out[i] = notification(r, notify.KindFiring, r.Seq, now)
	}
	return out, nil
}
