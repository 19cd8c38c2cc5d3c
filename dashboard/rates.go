package dashboard

import (
	"context"
	"sync/atomic"
	"time"
)

// rateWindow is how far back the overview's rates look, sampled once a
// second.
const rateWindow = 10 * time.Second

// Rates turns the hub's counters into the overview's readings/s and
// rejected/s over the last 10 s. One goroutine (Run) samples the counters
// every second; readers only load the latest result, so every viewer sees
// the same rate whenever it asks, and asking changes nothing.
type Rates struct {
	totals Totals
	cur    atomic.Pointer[rateNow]
}

type rateNow struct{ readings, rejected float64 }

// NewRates returns the rates of t; they read 0 until Run has run a second.
func NewRates(t Totals) *Rates {
	r := &Rates{totals: t}
	r.cur.Store(&rateNow{})
	return r
}

// Run samples the counters every second until ctx ends.
func (r *Rates) Run(ctx context.Context) error {
	var ring rateRing
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for now := time.Now(); ; {
		readings, rejected := r.totals.Totals()
		rr, jr := ring.add(now, readings, rejected)
		r.cur.Store(&rateNow{rr, jr})
		select {
		case <-ctx.Done():
			return nil
		case now = <-tick.C:
		}
	}
}

// Now returns readings/s and rejected/s over the window.
func (r *Rates) Now() (readings, rejected float64) {
	c := r.cur.Load()
	return c.readings, c.rejected
}

// rateSample is the counters at one instant.
type rateSample struct {
	at                 time.Time
	readings, rejected int64
}

// rateRing keeps the samples of the last rateWindow, oldest first, and
// is owned by Rates.Run. Bounded: one sample a second, at most
// rateWindow/s+1 of them.
type rateRing struct {
	samples []rateSample
}

// add records a sample and returns the rates between the oldest sample
// still in the window and this one (0 until they are apart).
func (g *rateRing) add(now time.Time, readings, rejected int64) (float64, float64) {
	g.samples = append(g.samples, rateSample{now, readings, rejected})
	for len(g.samples) > 1 && now.Sub(g.samples[1].at) >= rateWindow {
		g.samples = g.samples[1:]
	}
	first := g.samples[0]
	d := now.Sub(first.at).Seconds()
	if d <= 0 {
		return 0, 0
	}
	return float64(readings-first.readings) / d, float64(rejected-first.rejected) / d
}
