package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
)

// TestFleetStateConvergence: 1,000 simulated devices (half WebSocket,
// half MQTT) converge after one fleet-wide desired change. Once every
// device has reported its firmware, an operator PATCHes each device's
// desired interval (If-Match its version); the test measures how long
// until the hub holds every device's reported interval equal to desired,
// and logs the figure. No timed assertion: a generous deadline only.
func TestFleetStateConvergence(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 1,000-device fleet; run without -short")
	}
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_MQTT_CONNECT_RATE": "1000"})
	const devices = 1000
	fleet, err := firmwaresim.New(firmwaresim.Config{
		Hub: h.url, MQTT: h.env["FIELDHUB_MQTT_ADDR"], AdminToken: h.adminToken, Provision: true, Prefix: "conv",
		Devices: devices, Transport: firmwaresim.TransportMix, Rate: 0.2, // 200 readings/s in all
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stopFleet := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- fleet.Run(ctx) }()
	t.Cleanup(func() { stopFleet(); <-runErr }) // before the hub's cleanup: the fleet goes first

	waitUntil(t, "1,000 devices connected and reporting", 5*time.Minute, func() bool {
		st := fleet.Stats()
		return st.Connected == devices && st.StateAcked >= devices
	})
	ids := make([]string, 0, devices)
	for _, c := range fleet.Creds() {
		ids = append(ids, c.ID)
	}
	client := &http.Client{Timeout: 60 * time.Second}
	get := func(id string) (reported, desired map[string]any, version int64, err error) {
		req, _ := http.NewRequest("GET", h.url+"/api/v1/devices/"+id+"/state", nil)
		req.Header.Set("Authorization", "Bearer "+h.adminToken)
		resp, err := client.Do(req)
		if err != nil {
			return nil, nil, 0, err
		}
		defer resp.Body.Close()
		var v struct {
			Reported struct {
				State map[string]any `json:"state"`
			} `json:"reported"`
			Desired struct {
				State   map[string]any `json:"state"`
				Version int64          `json:"version"`
			} `json:"desired"`
		}
		if resp.StatusCode != 200 {
			return nil, nil, 0, fmt.Errorf("GET state of %s: HTTP %d", id, resp.StatusCode)
		}
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return nil, nil, 0, err
		}
		return v.Reported.State, v.Desired.State, v.Desired.Version, nil
	}
	// Every device reported its firmware and boot time at connect.
	for _, id := range ids[:20] {
		r, _, _, err := get(id)
		if err != nil || r["firmware"] != firmwaresim.Firmware || r["boot_time"] == nil || r["interval"] != 5.0 {
			t.Fatalf("%s reported %v (%v), want firmware, boot_time and interval 5", id, r, err)
		}
	}

	// Fleet-wide change: interval 30 s for every device, 8 PATCHes at a time.
	const want = 30.0
	parallel := func(fn func(id string) error) error {
		work := make(chan string)
		var wg sync.WaitGroup
		var first atomic.Pointer[error]
		for range 8 {
			wg.Go(func() {
				for id := range work {
					if err := fn(id); err != nil {
						first.CompareAndSwap(nil, &err)
					}
				}
			})
		}
		for _, id := range ids {
			work <- id
		}
		close(work)
		wg.Wait()
		if e := first.Load(); e != nil {
			return *e
		}
		return nil
	}
	start := time.Now()
	if err := parallel(func(id string) error {
		st, m, err := h.desiredPatch(h.adminToken, id, 0, map[string]any{"interval": want})
		if err != nil {
			return err
		}
		if st != 200 {
			return fmt.Errorf("PATCH desired of %s: HTTP %d %v", id, st, m)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	patched := time.Since(start)

	// Poll the hub for the devices not yet converged, until none is left.
	var mu sync.Mutex
	left := map[string]bool{}
	for _, id := range ids {
		left[id] = true
	}
	deadline := time.Now().Add(5 * time.Minute)
	sweeps := 0
	var lastSweep time.Duration // the resolution of the figure below
	for len(left) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after 5m %d devices have not reported interval %v: %s", len(left), want, fleet.Stats().Line())
		}
		sweeps++
		sweepStart := time.Now()
		pending := make([]string, 0, len(left))
		for id := range left {
			pending = append(pending, id)
		}
		var wg sync.WaitGroup
		work := make(chan string)
		for range 8 {
			wg.Go(func() {
				for id := range work {
					r, d, _, err := get(id)
					if err == nil && r["interval"] == want && d["interval"] == want {
						mu.Lock()
						delete(left, id)
						mu.Unlock()
					}
				}
			})
		}
		for _, id := range pending {
			work <- id
		}
		close(work)
		wg.Wait()
		lastSweep = time.Since(sweepStart)
	}
	converged := time.Since(start)
	st := fleet.Stats()
	t.Logf("%d devices: desired PATCHed in %s (8 at a time); every reported interval matched desired %s after the first PATCH, %s after the last (%d polling sweeps, the last took %s: the figure is at most that late); %d desired documents received, %d reported patches acked; %s",
		devices, patched.Round(time.Millisecond), converged.Round(time.Millisecond), (converged - patched).Round(time.Millisecond), sweeps,
		lastSweep.Round(time.Millisecond), st.DesiredReceived, st.StateAcked, st.Line())
	if st.Violations > 0 {
		t.Errorf("%d contract violations: %v", st.Violations, st.ViolationSamples)
	}
	for _, s := range fleet.States() {
		if s.Interval != want {
			t.Fatalf("%s runs with interval %v, want %v", s.ID, s.Interval, want)
		}
	}
}
