package devices

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRefreshFromSharedStore: two registries on one store (a store
// without a change feed is reloaded whole): creates, rotations, label
// changes and deletions of the one reach the other, re-checking exactly the
// devices whose credentials changed; presence and last_seen are kept.
func TestRefreshFromSharedStore(t *testing.T) {
	ctx := context.Background()
	st, err := OpenBolt(filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a, err := Open(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var ch changes
	var ended []OperatorEnded
	b, err := Open(ctx, st, Options{OnCredentialsChanged: ch.record, OnOperatorEnded: func(e OperatorEnded) { ended = append(ended, e) }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	keep, _ := a.Create(ctx, Spec{ID: "keep", Labels: map[string]string{"site": "n"}})
	rot, _ := a.Create(ctx, Spec{ID: "rot"})
	gone, _ := a.Create(ctx, Spec{ID: "gone"})
	tok, secret, err := a.CreateOperatorToken(ctx, "ops", RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Created{keep, rot, gone} {
		if id, _, ok := b.Authenticate(c.Token); !ok || id != c.Device.ID {
			t.Fatalf("b does not know %s", c.Device.ID)
		}
	}
	if _, ok := b.AuthenticateOperator(ctx, secret); !ok {
		t.Fatal("b does not know the operator token")
	}
	if len(ch.list()) != 0 {
		t.Fatalf("new devices re-checked: %v", ch.list())
	}
	at := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	b.SetPresence("keep", Presence{Online: true, Transport: TransportMQTT, LastSeen: &at})

	newTok, err := a.Rotate(ctx, "rot", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	// A label change arrives without touching credentials.
	rec := keep.Device
	if err := st.Apply(ctx, Change{UpdateDevices: []Record{{ID: "keep", Name: "renamed", Labels: map[string]string{"site": "s"}, CreatedAt: rec.CreatedAt,
		Tokens: []StoredToken{{Hash: HashToken(keep.Token)}}}}}); err != nil {
		t.Fatal(err)
	}
	if err := a.RevokeOperatorToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	got := ch.list()
	slices.Sort(got)
	if !slices.Equal(got, []string{"gone", "rot"}) {
		t.Fatalf("re-checked %v, want gone and rot", got)
	}
	if _, _, ok := b.Authenticate(rot.Token); ok {
		t.Fatal("rotated-out token works on b")
	}
	if _, _, ok := b.Authenticate(newTok); !ok {
		t.Fatal("new token refused on b")
	}
	if b.Exists("gone") {
		t.Fatal("deleted device exists on b")
	}
	d, _ := b.Get("keep")
	if !d.Online || d.LastSeen == nil || !d.LastSeen.Equal(at) || d.Name != "renamed" || d.Labels["site"] != "s" {
		t.Fatalf("refresh lost presence or missed the label change: %+v", d)
	}
	if len(ended) != 1 || ended[0].TokenID != tok.ID || ended[0].Reason != "revoked" {
		t.Fatalf("operator ends %v, want the revoked token", ended)
	}
	if _, ok := b.AuthenticateOperator(ctx, secret); ok {
		t.Fatal("revoked operator token works on b")
	}
	// A closed registry does not refresh.
	b.Close()
	if _, err := a.Create(ctx, Spec{ID: "late"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil || b.Exists("late") {
		t.Fatalf("a closed registry refreshed (%v)", err)
	}
}

// TestRefreshStoreFailure: a store that fails a refresh leaves the
// snapshot as it was and gives the writer token back.
func TestRefreshStoreFailure(t *testing.T) {
	ctx := context.Background()
	r, st := openFault(t, filepath.Join(t.TempDir(), "r.db"), Options{})
	if _, err := r.Create(ctx, Spec{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	before := r.snap.Load()
	st.BoltStore.Close() // Load fails from now on
	if err := r.Refresh(ctx); err == nil {
		t.Fatal("refresh on a closed store succeeded")
	}
	if r.snap.Load() != before {
		t.Fatal("a failed refresh changed the snapshot")
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.lockWriter(wctx); err != nil {
		t.Fatal("the writer token was not given back")
	}
	r.unlockWriter()
}

// TestSpecLimits: each bound on what an operator may attach, at the bound
// and one past it.
func TestSpecLimits(t *testing.T) {
	labels := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("k%d", i)] = "v"
		}
		return m
	}
	for _, tc := range []struct {
		name string
		spec Spec
		ok   bool
	}{
		{"name at the bound", Spec{ID: "d", Name: strings.Repeat("n", MaxNameLen)}, true},
		{"name past the bound", Spec{ID: "d", Name: strings.Repeat("n", MaxNameLen+1)}, false},
		{"labels at the bound", Spec{ID: "d", Labels: labels(MaxLabels)}, true},
		{"labels past the bound", Spec{ID: "d", Labels: labels(MaxLabels + 1)}, false},
		{"label key invalid", Spec{ID: "d", Labels: map[string]string{"bad key": "v"}}, false},
		{"label value empty", Spec{ID: "d", Labels: map[string]string{"k": ""}}, false},
		{"id invalid", Spec{ID: "-d"}, false},
		{"id at 64", Spec{ID: strings.Repeat("a", 64)}, true},
		{"id at 65", Spec{ID: strings.Repeat("a", 65)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateSpec(tc.spec)
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalid)) {
				t.Fatalf("validateSpec: %v, want ok=%t", err, tc.ok)
			}
		})
	}
}
