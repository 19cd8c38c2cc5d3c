package devices

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// journal records every callback a listener got, in order.
type journal struct {
	mu  sync.Mutex
	got []string
}

func (j *journal) add(s string) { j.mu.Lock(); j.got = append(j.got, s); j.mu.Unlock() }
func (j *journal) list() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.got)
}

func (j *journal) subscriber(name string) Subscriber {
	return Subscriber{
		OnChange: func(c Changed) {
			for _, d := range c.Devices {
				j.add(name + " change " + d.ID)
			}
			if c.Operators {
				j.add(name + " change operators")
			}
		},
		OnCredentialsChanged: func(id string) { j.add(name + " credentials " + id) },
		OnOperatorEnded:      func(e OperatorEnded) { j.add(name + " ended " + e.TokenID) },
	}
}

// TestSubscribe: listeners subscribed after Open get every kind of
// callback, after the Options callbacks and in subscription order; a
// change made before a Subscribe does not reach that listener.
func TestSubscribe(t *testing.T) {
	ctx := context.Background()
	j := &journal{}
	opt := j.subscriber("options")
	r := openRegistry(t, filepath.Join(t.TempDir(), "r.db"), Options{
		OnChange: opt.OnChange, OnCredentialsChanged: opt.OnCredentialsChanged, OnOperatorEnded: opt.OnOperatorEnded,
	})
	if _, err := r.Create(ctx, Spec{ID: "early"}); err != nil {
		t.Fatal(err)
	}
	r.Subscribe(j.subscriber("first"))
	r.Subscribe(j.subscriber("second"))

	if _, err := r.Rotate(ctx, "early", 0); err != nil {
		t.Fatal(err)
	}
	op, _, err := r.CreateOperatorToken(ctx, "ops", RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.RevokeOperatorToken(ctx, op.ID); err != nil {
		t.Fatal(err)
	}

	want := []string{
		"options change early", // Create, before the Subscribes
		"options credentials early", "first credentials early", "second credentials early",
		"options change early", "first change early", "second change early",
		"options change operators", "first change operators", "second change operators",
	}
	got := j.list()
	// Revocation: each listener hears the end and the change; compare the
	// deterministic prefix, then the set of the rest.
	if len(got) < len(want) || !slices.Equal(got[:len(want)], want) {
		t.Fatalf("callbacks\n got %q\nwant prefix %q", got, want)
	}
	rest := got[len(want):]
	for _, name := range []string{"options", "first", "second"} {
		for _, ev := range []string{name + " ended " + op.ID, name + " change operators"} {
			if !slices.Contains(rest, ev) {
				t.Errorf("revocation: %q missing from %q", ev, rest)
			}
		}
	}
}
