package firmwaresim

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// temps decodes the temp of every reading of a telemetry message.
func temps(t *testing.T, payload []byte) []float64 {
	t.Helper()
	var m struct {
		Readings []struct {
			Metrics map[string]any `json:"metrics"`
		} `json:"readings"`
	}
	if err := json.Unmarshal(payload, &m); err != nil {
		t.Fatalf("message is not JSON: %v\n%s", err, payload)
	}
	var out []float64
	for _, r := range m.Readings {
		v, ok := r.Metrics["temp"].(float64)
		if !ok {
			t.Fatalf("temp %v is not a number", r.Metrics["temp"])
		}
		out = append(out, v)
	}
	return out
}

// TestSpikeFault: with Faults [spike] every faulty message is a good
// message (no fault for the link, acked by the hub) whose temp jumps to
// about 150 for exactly spikeReadings readings and then comes back into
// the sensor's range; without spike in Faults no reading ever spikes.
func TestSpikeFault(t *testing.T) {
	for _, tc := range []struct {
		name      string
		faults    []string
		rate      float64
		wantSpike bool
	}{
		{"spike only", []string{"spike"}, 0.05, true},
		{"default kinds", nil, 0.05, false},
		{"flap only", []string{"flap"}, 0.05, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := New(Config{Hub: "http://127.0.0.1:1", Provision: true, FaultRate: tc.rate, Faults: tc.faults, Seed: 3, Batch: 2, MaxInflight: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			d := newDevice(f, 1, Cred{ID: "sim-1"}, TransportWS)
			now := time.UnixMilli(1_700_000_000_000)
			var all []float64
			for i := range 2000 {
				id, payload, fault, ok := d.next(now.Add(time.Duration(i)*time.Second), 1<<20)
				if !ok {
					t.Fatalf("message %d not built", i)
				}
				if fault == "" {
					all = append(all, temps(t, payload)...)
				}
				if tc.wantSpike && fault != "" {
					t.Fatalf("message %s: fault %q, want spikes sent as good messages", id, fault)
				}
				d.answered(id, "", now)
			}
			var runs []int // lengths of runs of spiked readings
			n := 0
			for _, v := range append(all, 0) {
				switch {
				case v >= spikeTemp:
					n++
					if v >= spikeTemp+10 {
						t.Fatalf("spiked temp %v, want %v..%v", v, spikeTemp, spikeTemp+10)
					}
				case v > 60:
					t.Fatalf("temp %v is neither in the sensor's range nor a spike", v)
				default:
					if n > 0 {
						runs = append(runs, n)
					}
					n = 0
				}
			}
			if !tc.wantSpike {
				if len(runs) > 0 {
					t.Fatalf("%d spikes without the spike fault", len(runs))
				}
				return
			}
			if len(runs) < 10 {
				t.Fatalf("%d spikes in 2000 messages at rate %v, want dozens", len(runs), tc.rate)
			}
			for _, r := range runs {
				// A spike drawn while one runs restarts it, so a run is a
				// multiple of spikeReadings only when draws do not overlap.
				if r < spikeReadings {
					t.Fatalf("a spike of %d readings, want at least %d (runs %v)", r, spikeReadings, runs)
				}
			}
			if d.f.c.violations.Load() != 0 {
				t.Fatalf("violations: %d", d.f.c.violations.Load())
			}
		})
	}
}

// TestFaultsConfig: unknown fault kinds are refused with the known list.
func TestFaultsConfig(t *testing.T) {
	_, err := New(Config{Hub: "http://127.0.0.1:1", Provision: true, Faults: []string{"spike", "meteor"}})
	if err == nil || !strings.Contains(err.Error(), `"meteor"`) || !strings.Contains(err.Error(), "spike") {
		t.Fatalf("New with an unknown fault: %v, want it named and the known kinds listed", err)
	}
	if _, err := New(Config{Hub: "http://127.0.0.1:1", Provision: true, Faults: FaultKinds()}); err != nil {
		t.Fatalf("every known kind: %v", err)
	}
}
