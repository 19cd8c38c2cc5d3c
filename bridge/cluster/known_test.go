package cluster

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
)

// lateRegistry learns of device "new-1" only when it is refreshed, like
// an instance that has not yet heard another instance's announcement.
type lateRegistry struct {
	registryStub
	refreshed atomic.Bool
}

func (r *lateRegistry) Refresh(context.Context) error { r.refreshed.Store(true); return nil }
func (r *lateRegistry) Exists(id string) bool         { return id == "new-1" && r.refreshed.Load() }
func (r *lateRegistry) Get(id string) (devices.Device, error) {
	return devices.Device{ID: id}, nil
}

// TestUnknownDeviceWaitsForRefresh: a message from a device this instance
// does not know yet makes it reload the registry and wait for it instead
// of dropping a message the broker already acknowledged; a device that
// stays unknown is remembered, so its next messages do not wait again.
func TestUnknownDeviceWaitsForRefresh(t *testing.T) {
	reg := &lateRegistry{}
	c := &Cluster{opts: Options{ClientID: "me", Registry: reg, Local: &recorder{}, RefreshEvery: time.Hour},
		log: discardLogger(), refresh: make(chan struct{}, 1), unknown: map[string]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.refreshLoop(ctx)
	if !c.known(ctx, "new-1") {
		t.Fatal("a device created elsewhere was not found after a refresh")
	}
	start := time.Now()
	if c.known(ctx, "gone-1") {
		t.Fatal("an unknown device was found")
	}
	if waited := time.Since(start); waited < unknownWait {
		t.Fatalf("gave up on an unknown device after %s, before waiting for a refresh", waited)
	}
	// Waiting again would take unknownWait: less says it did not (a fixed
	// second would be a window a loaded machine can miss).
	start = time.Now()
	if c.known(ctx, "gone-1") {
		t.Fatal("an unknown device was found")
	}
	if waited := time.Since(start); waited >= unknownWait {
		t.Fatalf("a device found unknown a moment ago made the worker wait again (%s)", waited)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
