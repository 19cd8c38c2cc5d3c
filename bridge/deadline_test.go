package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// waitLimit bounds how long the test store waits for the bridge's
// deadline before it reports that none came.
const waitLimit = 30 * time.Second

// seen is what the store saw of one append's context.
type seen struct {
	err      error         // ctx.Err() when the store returned
	deadline time.Duration // Deadline() minus the time Accept was called
	hasDL    bool
}

// deadlineStore plays the spool's part of the contract: it returns at
// once (mode "ok"), or waits for the context to end and returns its error
// (mode "wait"), telling the test when it started waiting.
type deadlineStore struct {
	mu      sync.Mutex
	mode    string
	start   time.Time
	seen    []seen
	waiting chan struct{}
}

func (st *deadlineStore) Append(ctx context.Context, _ int, _ []byte) error {
	st.mu.Lock()
	mode, start, waiting := st.mode, st.start, st.waiting
	st.mu.Unlock()
	dl, ok := ctx.Deadline()
	var err error
	if mode == "wait" {
		waiting <- struct{}{}
		select {
		case <-ctx.Done():
		case <-time.After(waitLimit):
		}
	}
	err = ctx.Err()
	st.mu.Lock()
	st.seen = append(st.seen, seen{err: err, deadline: dl.Sub(start), hasDL: ok})
	st.mu.Unlock()
	return err
}

// set starts a step: the store's mode, the step's start time (returned)
// and the channel the store signals on when it starts waiting.
func (st *deadlineStore) set(mode string) (time.Time, chan struct{}) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.mode, st.start, st.waiting = mode, time.Now(), make(chan struct{}, 1)
	return st.start, st.waiting
}

func (st *deadlineStore) last() seen {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.seen[len(st.seen)-1]
}

// TestStoreDeadlineLikeWithTimeout: a connected session's reusable store
// deadline behaves as context.WithTimeout(ctx, StoreTimeout) does for an
// ephemeral session, step by step on the same session: an append that
// outlasts StoreTimeout ends with DeadlineExceeded (the device is told
// "overloaded"), the next one gets its whole bound again, a caller's
// context cancelled mid-append or before it ends the append with
// Canceled, and a caller's deadline earlier than StoreTimeout is the one
// the store sees.
func TestStoreDeadlineLikeWithTimeout(t *testing.T) {
	const timeout = 150 * time.Millisecond
	type step struct {
		name     string
		mode     string // the store's: "ok" or "wait"
		ctx      string // the caller's: "background"; "live" (one cancellable context kept across steps, as a socket's); "cancel-during" (cancelled while the store waits); "cancelled"; "short-deadline"
		wantErr  error
		wantCode string // "" for an ack
	}
	steps := []step{
		{"fast append", "ok", "background", nil, ""},
		{"append outlasts the bound", "wait", "background", context.DeadlineExceeded, telemetry.CodeOverloaded},
		{"next append has its bound again", "ok", "background", nil, ""},
		{"and times out again", "wait", "background", context.DeadlineExceeded, telemetry.CodeOverloaded},
		{"cancelled caller mid-append", "wait", "cancel-during", context.Canceled, telemetry.CodeInternal},
		{"fast append after a cancel", "ok", "background", nil, ""},
		{"caller already cancelled", "ok", "cancelled", context.Canceled, telemetry.CodeInternal},
		{"caller's earlier deadline", "wait", "short-deadline", context.DeadlineExceeded, telemetry.CodeOverloaded},
		{"fast append under a live caller context", "ok", "live", nil, ""},
		{"the same caller context outlasts the bound", "wait", "live", context.DeadlineExceeded, telemetry.CodeOverloaded},
		{"and the same again, fast", "ok", "live", nil, ""},
		{"fast append at the end", "ok", "background", nil, ""},
	}
	for _, kind := range []string{"connected", "ephemeral"} {
		t.Run(kind, func(t *testing.T) {
			st := &deadlineStore{}
			b := newTestBridge(t, Options{Store: st, StoreTimeout: timeout, RatePerSec: 1e9, Burst: 1e9})
			s := b.Ephemeral("d1", devices.TransportHTTP, "test")
			if kind == "connected" {
				s = b.Connect("d1", devices.TransportWS, "test", devices.TokenHash{}, &nopConn{})
				defer b.Disconnect(s, ReasonClientClosed)
			}
			live, cancelLive := context.WithCancel(context.Background())
			defer cancelLive()
			for i, sp := range steps {
				start, waiting := st.set(sp.mode)
				ctx := context.Background()
				var cancelDuring func()
				switch sp.ctx {
				case "live":
					ctx = live
				case "cancel-during":
					c, cancel := context.WithCancel(context.Background())
					ctx, cancelDuring = c, cancel
				case "cancelled":
					c, cancel := context.WithCancel(context.Background())
					cancel()
					ctx = c
				case "short-deadline":
					c, cancel := context.WithTimeout(context.Background(), timeout/3)
					defer cancel()
					ctx = c
				}
				if cancelDuring != nil {
					go func() {
						<-waiting
						cancelDuring()
					}()
				} else if sp.mode == "wait" {
					go func() { <-waiting }()
				}
				a := b.Accept(ctx, s, Message{Kind: telemetry.KindTelemetry, Payload: []byte(fmt.Sprintf(`{"id":"%d","metrics":{"a":%d}}`, i, i))})
				took := time.Since(start)
				got := st.last()
				if !errors.Is(got.err, sp.wantErr) || (sp.wantErr == nil) != (got.err == nil) {
					t.Fatalf("step %d (%s): the store saw ctx.Err() = %v, want %v", i, sp.name, got.err, sp.wantErr)
				}
				switch {
				case sp.wantCode == "" && a.Err != nil:
					t.Fatalf("step %d (%s): refused %v, want an ack", i, sp.name, a.Err)
				case sp.wantCode != "" && (a.Err == nil || a.Err.Code != sp.wantCode):
					t.Fatalf("step %d (%s): answer %+v, want %s", i, sp.name, a, sp.wantCode)
				}
				if !got.hasDL {
					t.Fatalf("step %d (%s): the store's context has no deadline", i, sp.name)
				}
				bound := timeout
				if sp.ctx == "short-deadline" {
					bound = timeout / 3
				}
				// The deadline was set within Accept: at least the bound
				// after start, at most the bound after Accept returned.
				if got.deadline < bound || got.deadline > took+bound {
					t.Fatalf("step %d (%s): deadline %v after the call, want %v (the call took %v)", i, sp.name, got.deadline, bound, took)
				}
				if sp.wantErr == context.DeadlineExceeded && took < bound {
					t.Fatalf("step %d (%s): timed out after %v, before its bound %v", i, sp.name, took, bound)
				}
			}
		})
	}
}

// TestStoreDeadlineConcurrentAppends: appends of one connected session
// running at once (the second falls back to its own context) each get
// their own bound and their own outcome.
func TestStoreDeadlineConcurrentAppends(t *testing.T) {
	const timeout = 100 * time.Millisecond
	var calls sync.Mutex
	n := 0
	store := storeFunc(func(ctx context.Context, _ int, _ []byte) error {
		calls.Lock()
		n++
		slow := n%3 == 0
		calls.Unlock()
		if slow {
			select {
			case <-ctx.Done():
			case <-time.After(waitLimit):
			}
			return ctx.Err()
		}
		return ctx.Err()
	})
	b := newTestBridge(t, Options{Store: store, StoreTimeout: timeout, RatePerSec: 1e9, Burst: 1e9})
	s := b.Connect("d1", devices.TransportWS, "test", devices.TokenHash{}, &nopConn{})
	defer b.Disconnect(s, ReasonClientClosed)
	var wg sync.WaitGroup
	var mu sync.Mutex
	acks, overloaded := 0, 0
	for g := range 4 {
		wg.Go(func() {
			for i := range 30 {
				a := b.Accept(context.Background(), s, Message{Kind: telemetry.KindTelemetry, Payload: []byte(fmt.Sprintf(`{"metrics":{"a":%d}}`, g*100+i))})
				mu.Lock()
				switch {
				case a.Err == nil:
					acks++
				case a.Err.Code == telemetry.CodeOverloaded:
					overloaded++
				default:
					t.Errorf("answer %+v", a)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if acks+overloaded != 120 || overloaded != 40 {
		t.Fatalf("%d acks and %d overloaded, want 80 and 40 (every third append outlasts its bound, no other)", acks, overloaded)
	}
}
