package main

import (
	"context"
	"fmt"
	"testing"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
)

// TestFleetAlerts: the simulator's spike and flap faults drive real
// alerts through the whole hub. A threshold rule (temp > 100, clear 60)
// fires on spikes (about 150 for three readings) and resolves when the
// temp is back, and never fires on the sensor's usual values; an offline
// rule fires when a flapping device drops and resolves when it is back.
func TestFleetAlerts(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a fleet until its faults have fired alerts; run without -short")
	}
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	for _, rule := range []map[string]any{
		{"name": "spikes", "severity": "critical", "selector": map[string]any{}, "condition": map[string]any{"type": "threshold", "metric": "temp", "op": ">", "value": 100, "clear": 60}},
		{"name": "flaps", "severity": "info", "selector": map[string]any{}, "condition": map[string]any{"type": "offline", "for": "0s"}},
	} {
		if st, m := h.api(t, "POST", "/api/v1/alert-rules", h.adminToken, rule); st != 201 {
			t.Fatalf("rule %v: %d %v", rule["name"], st, m)
		}
	}
	fleet, err := firmwaresim.New(firmwaresim.Config{Hub: h.url, AdminToken: h.adminToken, Provision: true,
		Devices: 5, Transport: firmwaresim.TransportWS, Rate: 5, FaultRate: 0.05, Faults: []string{"spike", "flap"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fleet.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })

	// alerts lists the resolved alerts of one rule that fired.
	alerts := func(rule string) []map[string]any {
		t.Helper()
		st, m := h.api(t, "GET", "/api/v1/alerts?state=resolved&limit=1000", h.adminToken, nil)
		if st != 200 {
			t.Fatalf("alerts: %d %v", st, m)
		}
		var out []map[string]any
		for _, a := range m["alerts"].([]any) {
			if a := a.(map[string]any); a["rule"] == rule && a["fired"] == true {
				out = append(out, a)
			}
		}
		return out
	}
	waitUntil(t, "spike alerts fired and resolved", loadWait, func() bool { return len(alerts("spikes")) >= 3 })
	waitUntil(t, "flap alerts fired and resolved", loadWait, func() bool { return len(alerts("flaps")) >= 1 })

	// Every spike alert fired on a spiked reading and resolved once the
	// temp was back below clear; its timeline says so.
	st, all := h.api(t, "GET", "/api/v1/alerts?limit=1000", h.adminToken, nil)
	if st != 200 {
		t.Fatalf("alerts: %d %v", st, all)
	}
	for _, a := range all["alerts"].([]any) {
		a := a.(map[string]any)
		if a["rule"] != "spikes" {
			continue
		}
		st, d := h.api(t, "GET", "/api/v1/alerts/"+a["id"].(string), h.adminToken, nil)
		if st != 200 {
			t.Fatalf("alert %v: %d %v", a["id"], st, d)
		}
		for _, ev := range d["events"].([]any) {
			ev := ev.(map[string]any)
			v, _ := ev["value"].(float64)
			switch ev["type"] {
			case "pending", "firing":
				if v < 150 {
					t.Errorf("alert %v on %v went %v at temp %v: not a spike (%v)", a["id"], a["device"], ev["type"], v, fmt.Sprint(d["events"]))
				}
			case "resolved":
				if v >= 60 {
					t.Errorf("alert %v on %v resolved at temp %v, above clear 60", a["id"], a["device"], v)
				}
			}
		}
	}
	if s := fleet.Stats(); s.Violations != 0 {
		t.Errorf("the hub broke its contract %d times: %v", s.Violations, s.ViolationSamples)
	}
}
