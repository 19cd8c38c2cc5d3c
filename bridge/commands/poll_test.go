package commands

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
)

// TestPollRevokedBeforeRegistration: a rotation that lands between
// NextCommand's validity check and its poller registration wakes the
// pollers registered then, not this one; the poll must still end at once
// with ErrRevoked instead of staying open for its whole wait (and ending
// 204, not 401).
func TestPollRevokedBeforeRegistration(t *testing.T) {
	dev := &rotating{}
	s, err := New(context.Background(), Options{Store: newMemStore(), Devices: dev})
	if err != nil {
		t.Fatal(err)
	}
	dev.s = s
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Run(ctx); close(done) }() // owner: this test; ends at cleanup
	defer func() { cancel(); <-done }()
	pollCtx, stopPoll := context.WithCancel(context.Background())
	defer stopPoll()
	type result struct {
		ok  bool
		err error
	}
	got := make(chan result, 1)
	go func() { // owner: this test; ends at the revocation, or when stopped
		_, ok, err := s.NextCommand(pollCtx, "d", devices.TokenHash{}, time.Hour)
		got <- result{ok, err}
	}()
	select {
	case res := <-got:
		if res.ok || !errors.Is(res.err, ErrRevoked) {
			t.Fatalf("NextCommand = ok %v, err %v; want ErrRevoked", res.ok, res.err)
		}
	case <-time.After(waitLong):
		stopPoll()
		<-got
		t.Fatal("the poll of the revoked token stayed open")
	}
}
