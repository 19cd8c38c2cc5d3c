package commands

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestRemoteConnectedSurvivesFullQueue: news that the device connected to
// another instance, arriving while the owner's request queue is full, is
// not lost: the commands handed to the cluster while the device was away
// are handed over again (instead of sitting "sent" until they time out).
func TestRemoteConnectedSurvivesFullQueue(t *testing.T) {
	pub := &publisher{}
	r := newRig(t, nil, ClusterRouter(pub))
	rec := r.send(t, "d", "x")
	r.sync(t)
	if got := pub.published(); len(got) != 1 {
		t.Fatalf("published %v, want the command once", got)
	}
	release := fillQueue(t, r.s)
	r.s.RemoteConnected("d") // the device connected to another instance; must not wait
	release()
	r.tick(t)
	if got := pub.published(); len(got) != 2 {
		t.Fatalf("after the device connected elsewhere the command %s was not handed over again (published %v): it will time out", rec.ID, got)
	}
}

// TestCommandChangedSurvivesFullQueue: news that another instance
// finished a command, arriving while the owner's request queue is full,
// is not lost: a waiter on this instance wakes on it instead of sleeping
// its whole wait.
func TestCommandChangedSurvivesFullQueue(t *testing.T) {
	pub := &publisher{}
	r := newRig(t, nil, ClusterRouter(pub))
	rec := r.send(t, "d", "x")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	got := make(chan Record, 1)
	go func() { // owner: this test; ends on the change, or at cleanup
		rec, _ := r.s.WaitCommand(ctx, "d", rec.ID, time.Hour)
		got <- rec
	}()
	eventually(t, "waiter registered", func() bool {
		n := 0
		_ = r.s.do(context.Background(), func() { n = len(r.s.waiters) })
		return n == 1
	})
	release := fillQueue(t, r.s)
	// Another instance recorded the device's result in the shared store.
	fin, _ := r.store.GetCommand(context.Background(), "d", rec.ID)
	fin.Status = Succeeded
	_ = r.store.PutCommand(context.Background(), fin)
	r.s.CommandChanged("d", rec.ID) // must not wait
	release()
	select {
	case rec := <-got:
		if rec.Status != Succeeded {
			t.Fatalf("status %s", rec.Status)
		}
	case <-time.After(waitLong):
		t.Fatal("the waiter did not wake on the change")
	}
}

// TestNewsOverflowRescans: when the set of news from other instances is
// full, the news that did not fit is not lost: the owner rescans every
// device (hands over again what went to the cluster) and every active
// command (asks the store whether it is final).
func TestNewsOverflowRescans(t *testing.T) {
	for _, tc := range []struct {
		name   string
		finish bool // another instance finished the command in the store
		mark   func(s *Service, device, id string)
		check  func(t *testing.T, r *rig, pub *publisher)
	}{
		{"connected elsewhere", false,
			func(s *Service, device, _ string) { s.RemoteConnected(device) },
			func(t *testing.T, r *rig, pub *publisher) {
				if got := pub.published(); len(got) != 2 {
					t.Fatalf("the command was not handed over again after the overflow (published %v)", got)
				}
			}},
		{"changed elsewhere", true,
			func(s *Service, device, id string) { s.CommandChanged(device, id) },
			func(t *testing.T, r *rig, pub *publisher) {
				n := -1
				_ = r.s.do(context.Background(), func() { n = len(r.s.active["d"]) })
				if n != 0 {
					t.Fatal("the command finished elsewhere is still tracked after the overflow")
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub := &publisher{}
			r := newRig(t, nil, ClusterRouter(pub))
			rec := r.send(t, "d", "x")
			r.sync(t)
			if tc.finish {
				fin, _ := r.store.GetCommand(context.Background(), "d", rec.ID)
				fin.Status = Succeeded
				_ = r.store.PutCommand(context.Background(), fin)
			}
			release := parkOwner(t, r.s)
			for i := range maxNews {
				tc.mark(r.s, fmt.Sprintf("other%d", i), "cmd-other")
			}
			if n := r.s.Stats().NewsOverflows.Load(); n != 0 {
				t.Fatalf("overflowed after %d entries (maxNews %d)", maxNews, maxNews)
			}
			tc.mark(r.s, "d", rec.ID) // the one that does not fit
			if n := r.s.Stats().NewsOverflows.Load(); n != 1 {
				t.Fatalf("overflows %d, want 1", n)
			}
			release()
			r.sync(t)
			tc.check(t, r, pub)
		})
	}
}
