package commands

import (
	"slices"
	"testing"
)

// TestSessionOpenedIgnoresSupersededSession: two connects of one device
// can reach the service in either order (the bridge calls SessionOpened
// after releasing its lock). A superseded session's late SessionOpened
// (a lower sid) must not unseat the newer session, so its SessionClosed
// does not leave the device without a session here while the bridge's
// current session is the newer one.
func TestSessionOpenedIgnoresSupersededSession(t *testing.T) {
	r := newRig(t, nil, nil)
	older, newer := &conn{}, &conn{}
	r.s.SessionOpened("d", 2, newer.deliver) // the newer connect got here first
	r.s.SessionOpened("d", 1, older.deliver) // the superseded one, late
	r.s.SessionClosed("d", 1)                // its transport ends it (kicked: superseded)
	rec := r.send(t, "d", "x")               // delivered at once to the current session
	if !slices.Contains(newer.ids(), rec.ID) || len(older.ids()) != 0 {
		t.Fatalf("command not delivered to the current session 2 (older got %v, newer got %v); status %s",
			older.ids(), newer.ids(), r.status(t, "d", rec.ID))
	}
	// A newer session still replaces the held one.
	newest := &conn{}
	r.s.SessionOpened("d", 3, newest.deliver)
	r.s.SessionClosed("d", 2)
	rec = r.send(t, "d", "y")
	if !slices.Contains(newest.ids(), rec.ID) {
		t.Fatalf("command not delivered to the newest session 3 (got %v)", newest.ids())
	}
}
