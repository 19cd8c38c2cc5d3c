package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"
)

// component is one long-lived part of the hub in start order. Each of
// Start, Run and Stop is optional:
//   - Start runs synchronously at the component's turn; an error stops the
//     components already started, in reverse order, and ends the hub.
//   - Run runs in the hub's errgroup with a context of the component's own,
//     cancelled at its turn in the shutdown (not before: a later component
//     may still need it while stopping). An error from Run shuts the hub down.
//   - Stop runs at the component's turn in the shutdown, before its Run
//     context is cancelled, with the component's deadline (stopAll).
//
// Reserve is the part of the shutdown timeout held back for this
// component: every component stopped before it must be done that long
// before the overall deadline, so a component that overruns (a Stop that
// waits out its context) cannot use up the time of a later one. Its own
// deadline is the overall one less what the components stopped after it
// reserve. Zero reserves nothing.
type component struct {
	Name    string
	Start   func(ctx context.Context) error
	Run     func(ctx context.Context) error
	Stop    func(ctx context.Context)
	Reserve time.Duration
}

// lifecycle starts components in order and stops them in reverse, by one
// loop, whatever ended the run: ctx, a Run error or a Start error.
type lifecycle struct {
	log             *slog.Logger
	shutdownTimeout time.Duration
	// onShutdown, if set, runs once when shutdown begins (a log line).
	onShutdown func()
}

// started is a component whose Start succeeded and whose Run (if any) is
// running under cancel, with done closed when Run returned.
type started struct {
	c      component
	cancel context.CancelFunc
	done   chan struct{}
}

// run starts comps in order, calls ready once every one started (never
// when one failed first), and returns when ctx ended or a component
// failed and every started component has been stopped in reverse order.
// The error is the first Start or Run error (a Start that fails only
// because a Run already failed reports that Run's error); nil on a clean
// shutdown.
func (lc *lifecycle) run(ctx context.Context, comps []component, ready func()) error {
	g, gctx := errgroup.WithContext(ctx)
	var up []started
	var startErr error
	for _, c := range comps {
		if gctx.Err() != nil {
			break // a Run failed or ctx ended while starting: start no more
		}
		if c.Start != nil {
			if err := c.Start(gctx); err != nil {
				if gctx.Err() == nil { // not merely given up because the hub is stopping
					startErr = fmt.Errorf("start %s: %w", c.Name, err)
				}
				break
			}
		}
		s := started{c: c, cancel: func() {}, done: make(chan struct{})}
		if c.Run != nil {
			runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			s.cancel = cancel
			g.Go(func() error { // owner: the lifecycle; ends at its turn in stopAll (cancel), waited by g.Wait
				defer close(s.done)
				if err := c.Run(runCtx); err != nil {
					return fmt.Errorf("%s: %w", c.Name, err)
				}
				return nil
			})
		} else {
			close(s.done)
		}
		up = append(up, s)
	}
	if startErr == nil && gctx.Err() == nil && ready != nil {
		ready()
	}
	if startErr == nil {
		<-gctx.Done() // ctx ended or a Run failed
	}
	lc.stopAll(up)
	runErr := g.Wait()
	if startErr != nil {
		return startErr
	}
	return runErr
}

// stopAll stops the started components in reverse order: Stop, then
// cancel Run and wait for it, one at a time. The whole shutdown ends by
// one deadline, shutdownTimeout from now; each component's own deadline is
// that one less the Reserve of every component stopped after it, so what
// a later component reserved is never spent before its turn. A component
// that overruns its deadline is logged and no longer waited for here; a
// component whose turn comes after its deadline (the sum of reserves
// exceeds the timeout) is logged, and still stopped.
func (lc *lifecycle) stopAll(up []started) {
	if lc.onShutdown != nil {
		lc.onShutdown()
	}
	end := time.Now().Add(lc.shutdownTimeout)
	// later[i] is what the components stopped after up[i] (up[:i]) hold back.
	later := make([]time.Duration, len(up))
	for i := 1; i < len(up); i++ {
		later[i] = later[i-1] + up[i-1].c.Reserve
	}
	for i := len(up) - 1; i >= 0; i-- {
		s := up[i]
		ctx, cancel := context.WithDeadline(context.Background(), end.Add(-later[i]))
		if ctx.Err() != nil {
			lc.log.Warn("component stopping after its shutdown deadline", "component", s.c.Name)
		}
		if s.c.Stop != nil {
			s.c.Stop(ctx)
		}
		s.cancel()
		select {
		case <-s.done: // looked at first: a component that stopped at its deadline still stopped
			lc.log.Debug("component stopped", "component", s.c.Name)
		default:
			select {
			case <-s.done:
				lc.log.Debug("component stopped", "component", s.c.Name)
			case <-ctx.Done():
				lc.log.Warn("component did not stop within the shutdown timeout", "component", s.c.Name)
			}
		}
		cancel()
	}
}
