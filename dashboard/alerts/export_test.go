package alerts

import (
	"context"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Test hooks: the engine's goroutine steps, run synchronously by tests
// on a fake clock (Options.Now), so no test sleeps.

func (e *Engine) Load(ctx context.Context) error { return e.load(ctx) }

func (e *Engine) Step(ctx context.Context, ev telemetry.Event) {
	e.handle(ctx, input{kind: inEvent, ev: ev})
}

func (e *Engine) StepRejected(ctx context.Context, device string) {
	e.handle(ctx, input{kind: inRejected, ev: telemetry.Event{Device: device}})
}

func (e *Engine) StepDeleted(ctx context.Context, device string) {
	e.handle(ctx, input{kind: inDeleted, ev: telemetry.Event{Device: device}})
}

func (e *Engine) Sweep(ctx context.Context) { e.sweep(ctx) }

func (e *Engine) StartupOffline(ctx context.Context) { e.startupOffline(ctx) }

func (e *Engine) ReloadRules(ctx context.Context) error { return e.reloadRules(ctx) }

func (e *Engine) OpenCount() int { return len(e.open) }

func (e *Engine) QueueLen() int { return len(e.in) }

func (e *Engine) StepGaps(ctx context.Context, device string, open int) {
	e.handle(ctx, input{kind: inGaps, ev: telemetry.Event{Device: device}, n: open})
}
