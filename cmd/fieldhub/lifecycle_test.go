package main

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"
)

// events records what the fake components did, in order.
type events struct {
	mu  sync.Mutex
	got []string
}

func (e *events) add(s string) { e.mu.Lock(); e.got = append(e.got, s); e.mu.Unlock() }
func (e *events) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.got)
}

// fake is a component that records its start, its Run ending and its stop.
func fake(ev *events, name string, startErr, runErr error) component {
	return component{
		Name: name,
		Start: func(context.Context) error {
			ev.add("start " + name)
			return startErr
		},
		Run: func(ctx context.Context) error {
			if runErr != nil {
				return runErr
			}
			<-ctx.Done()
			ev.add("run ended " + name)
			return nil
		},
		Stop: func(context.Context) { ev.add("stop " + name) },
	}
}

func testLifecycle() *lifecycle {
	return &lifecycle{log: slog.New(slog.DiscardHandler), shutdownTimeout: time.Minute}
}

// TestLifecycleStartFailureStopsStartedInReverse: a component that fails
// to start stops those already started, last first, and the ones after
// it never start.
func TestLifecycleStartFailureStopsStartedInReverse(t *testing.T) {
	ev := &events{}
	boom := errors.New("boom")
	comps := []component{fake(ev, "a", nil, nil), fake(ev, "b", nil, nil), fake(ev, "c", boom, nil), fake(ev, "d", nil, nil)}
	readyCalled := false
	err := testLifecycle().run(context.Background(), comps, func() { readyCalled = true })
	if !errors.Is(err, boom) {
		t.Fatalf("run = %v, want the start error", err)
	}
	if readyCalled {
		t.Error("ready called although a component failed to start")
	}
	want := []string{"start a", "start b", "start c", "stop b", "run ended b", "stop a", "run ended a"}
	if got := ev.list(); !slices.Equal(got, want) {
		t.Fatalf("events\n got %q\nwant %q", got, want)
	}
}

// TestLifecycleShutdownInReverse: ctx ending stops every component in
// reverse start order, each one's Run ending before the next one stops.
func TestLifecycleShutdownInReverse(t *testing.T) {
	ev := &events{}
	ctx, cancel := context.WithCancel(context.Background())
	comps := []component{fake(ev, "a", nil, nil), fake(ev, "b", nil, nil), fake(ev, "c", nil, nil)}
	err := testLifecycle().run(ctx, comps, cancel) // ready: shut down at once
	if err != nil {
		t.Fatalf("run = %v", err)
	}
	want := []string{"start a", "start b", "start c", "stop c", "run ended c", "stop b", "run ended b", "stop a", "run ended a"}
	if got := ev.list(); !slices.Equal(got, want) {
		t.Fatalf("events\n got %q\nwant %q", got, want)
	}
}

// TestLifecycleRunErrorShutsDown: a component whose Run fails shuts the
// hub down in reverse order and its error is returned.
func TestLifecycleRunErrorShutsDown(t *testing.T) {
	ev := &events{}
	boom := errors.New("listener gone")
	comps := []component{fake(ev, "a", nil, nil), fake(ev, "b", nil, boom), fake(ev, "c", nil, nil)}
	err := testLifecycle().run(context.Background(), comps, nil)
	if !errors.Is(err, boom) {
		t.Fatalf("run = %v, want the Run error", err)
	}
	want := []string{"start a", "start b", "start c", "stop c", "run ended c", "stop b", "stop a", "run ended a"}
	if got := ev.list(); !slices.Equal(got, want) {
		t.Fatalf("events\n got %q\nwant %q", got, want)
	}
}

// TestLifecycleRunFailureWhileStarting: a Run that fails while later
// components are still starting stops the start (no later component
// starts, ready is never called), stops what started in reverse, and its
// error, not the cancelled Start's, is returned.
func TestLifecycleRunFailureWhileStarting(t *testing.T) {
	ev := &events{}
	boom := errors.New("listener gone")
	a := fake(ev, "a", nil, nil)
	a.Run = func(context.Context) error { return boom }
	b := fake(ev, "b", nil, nil)
	b.Start = func(ctx context.Context) error {
		ev.add("start b")
		<-ctx.Done() // a slow start, given up when a's Run fails
		return ctx.Err()
	}
	comps := []component{fake(ev, "first", nil, nil), a, b, fake(ev, "c", nil, nil)}
	readyCalled := false
	err := testLifecycle().run(context.Background(), comps, func() { readyCalled = true })
	if !errors.Is(err, boom) {
		t.Fatalf("run = %v, want the Run error", err)
	}
	if readyCalled {
		t.Error("ready called although a component failed while starting")
	}
	want := []string{"start first", "start a", "start b", "stop a", "stop first", "run ended first"}
	if got := ev.list(); !slices.Equal(got, want) {
		t.Fatalf("events\n got %q\nwant %q", got, want)
	}
}
