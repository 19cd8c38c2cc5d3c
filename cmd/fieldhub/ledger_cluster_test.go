package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
)

// TestLedgerTwoInstances runs a fleet that skips sequence numbers (drop)
// and restarts (reboot) against two hub instances on PostgreSQL and one
// Mosquitto: the MQTT devices publish to the broker, whose shared
// subscription hands each message to A or B; the WebSocket devices are
// spread over A and B and fail over to A while B restarts gracefully in
// the middle. Each instance thus sees only part of most devices' streams.
// Once the fleet finished, both instances answer the same seq part for
// every device: exactly the ranges the simulator skipped as open gaps,
// gaps_total equal to their number (no false gap that later closed), and
// counts summed over the instances (durable == written); the fleet view
// of either instance counts every device's merged gaps.
func TestLedgerTwoInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Mosquitto, PostgreSQL, influxd, two hubs and a 30-device fleet across a restart; run without -short")
	}
	influx := startInflux(t)
	env := clusterEnv(t, influx)
	// A gap shows once every live instance saved past it: about two save
	// intervals and 2 s. 1 s keeps the waits below short.
	env["FIELDHUB_LEDGER_SAVE_INTERVAL"] = "1s"
	env["FIELDHUB_LOG_LEVEL"] = "info"
	envA, envB := map[string]string{"FIELDHUB_INSTANCE_ID": "ledger-a"}, map[string]string{"FIELDHUB_INSTANCE_ID": "ledger-b"}
	for k, v := range env {
		envA[k], envB[k] = v, v
	}
	a := startHub(t, influx, envA)
	b := startHub(t, influx, envB)
	for _, k := range []string{"FIELDHUB_HTTP_ADDR", "FIELDHUB_MQTT_ADDR", "FIELDHUB_DATA_DIR"} {
		envB[k] = b.env[k] // the restarted B is the same instance
	}
	a.waitBroker(t)
	b.waitBroker(t)

	// Provisioned on A; B must know every device before the fleet
	// starts, or B's first refusals would push its WebSocket devices to A.
	const wsDevices, mqttDevices, count = 14, 16, 60
	var wsCreds, mqttCreds []firmwaresim.Cred
	for i := 1; i <= wsDevices; i++ {
		id := fmt.Sprintf("lcw-%d", i)
		wsCreds = append(wsCreds, firmwaresim.Cred{ID: id, Token: a.createDevice(t, id)})
	}
	for i := 1; i <= mqttDevices; i++ {
		id := fmt.Sprintf("lcm-%d", i)
		mqttCreds = append(mqttCreds, firmwaresim.Cred{ID: id, Token: a.createDevice(t, id)})
	}
	all := append(slices.Clone(wsCreds), mqttCreds...)
	gapsRule := a.createRule(t, `{"name":"lossy","selector":{},"severity":"info","condition":{"type":"gaps","count":0}}`)
	waitUntil(t, "instance B knows every device", loadWait, func() bool {
		for _, c := range all {
			if st, _ := b.api(t, "GET", "/api/v1/devices/"+c.ID, b.adminToken, nil); st != 200 {
				return false
			}
		}
		return true
	})

	// Two fleets: a mix fleet alternates transports by index and spreads
	// by index over the hubs, which would put every WebSocket device on
	// A. The faults are those with an answer through a broker: oversized
	// is refused by the hub with an error the device cannot match (the
	// broker, whose limit is larger, keeps the connection open), and
	// wrong_token would meet B's restart as "connection refused".
	base := firmwaresim.Config{
		AdminToken: a.adminToken, Rate: 10, Batch: 2, FaultRate: 0.03,
		Faults:   []string{"malformed_json", "future_ts", "bad_metric", "type_conflict", "reserved_name", "flap"},
		DropRate: 0.1, RebootRate: 0.02, Count: count, Hold: true,
	}
	wsCfg, mqttCfg := base, base
	wsCfg.Hub, wsCfg.MoreHubs, wsCfg.Transport, wsCfg.Creds, wsCfg.Devices, wsCfg.Seed = a.url, []string{b.url}, firmwaresim.TransportWS, wsCreds, wsDevices, 1
	mqttCfg.Hub, mqttCfg.MQTT, mqttCfg.Transport, mqttCfg.Creds, mqttCfg.Devices, mqttCfg.Seed = a.url, strings.TrimPrefix(env["FIELDHUB_MQTT_BROKER"], "tcp://"), firmwaresim.TransportMQTT, mqttCreds, mqttDevices, 2
	wsFleet, stopWS := runFleet(t, wsCfg)
	mqttFleet, stopMQTT := runFleet(t, mqttCfg)
	fleets := []*firmwaresim.Fleet{wsFleet, mqttFleet}

	waitUntil(t, "a third of the readings acknowledged", loadWait, func() bool {
		return wsFleet.Stats().ReadingsAcked+mqttFleet.Stats().ReadingsAcked >= (wsDevices+mqttDevices)*count*2/3
	})
	b.stop(t)
	b = startHub(t, influx, envB)
	b.waitBroker(t)
	finishBy := time.Now().Add(loadWait)
	for wsFleet.Stats().Finished != wsDevices || mqttFleet.Stats().Finished != mqttDevices {
		if time.Now().After(finishBy) {
			t.Fatalf("timed out waiting for the fleet:\n%s\n%s\n%s", wsFleet.Stats().Line(), mqttFleet.Stats().Line(),
				strings.Join(append(wsFleet.Unfinished(5), mqttFleet.Unfinished(5)...), "\n"))
		}
		time.Sleep(100 * time.Millisecond) // polling the fleets' counters, not synchronising
	}
	for i, stop := range []func() error{stopWS, stopMQTT} {
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		st := fleets[i].Stats()
		t.Logf("%s", st.Line())
		// Through the broker, a faulty message that B refused while it
		// stopped can lose its error frame with B's broker connection: the
		// device then takes the broker's PUBACK for an ack. The refusal
		// stood (nothing was stored, which the counts below check); the
		// frame is not the ledger's. Any other violation is one.
		for _, v := range st.ViolationSamples {
			if i == 0 || !strings.Contains(v, `answered "", want`) {
				t.Errorf("%d contract violations: %v", st.Violations, st.ViolationSamples)
				break
			}
		}
		if st.Violations > int64(len(st.ViolationSamples)) {
			t.Errorf("%d contract violations, %d shown: %v", st.Violations, len(st.ViolationSamples), st.ViolationSamples)
		}
	}

	want := map[string][]string{}
	var skipped []firmwaresim.SeqGap
	for _, f := range fleets {
		skipped = append(skipped, f.SeqGaps()...)
	}
	for _, g := range skipped {
		want[g.Device] = append(want[g.Device], fmt.Sprintf("%s:%d-%d", g.Boot, g.From, g.To))
	}
	for _, w := range want {
		slices.Sort(w)
	}
	if len(skipped) == 0 {
		t.Fatal("the simulator skipped nothing: the drop fault did not run")
	}
	hubs := map[string]*hub{"A": a, "B": b}
	views := func(id string) map[string]map[string]any {
		out := map[string]map[string]any{}
		for name, h := range hubs {
			if code, led := h.api(t, "GET", "/api/v1/devices/"+id+"/ledger", h.adminToken, nil); code == 200 {
				out[name] = led
			}
		}
		return out
	}
	// mismatch says how a device's views differ from the contract, or
	// is empty once both instances show exactly what the fleet did.
	mismatch := func(id string, v map[string]map[string]any) string {
		var out []string
		w := want[id]
		for _, name := range []string{"A", "B"} {
			led := v[name]
			if led == nil {
				out = append(out, name+": no view")
				continue
			}
			seq := led["seq"].(map[string]any)
			open := openGaps(seq)
			if !slices.Equal(open, w) || int(seq["open_gaps"].(float64)) != len(w) || int(seq["gaps_total"].(float64)) != len(w) {
				out = append(out, fmt.Sprintf("%s: open gaps %v (open_gaps %v, gaps_total %v), the simulator skipped %v", name, open, seq["open_gaps"], seq["gaps_total"], w))
			}
			if led["durable"] != led["written"] || led["durable"].(float64) == 0 || led["dead_lettered"].(float64) != 0 {
				out = append(out, fmt.Sprintf("%s: durable %v written %v dead_lettered %v", name, led["durable"], led["written"], led["dead_lettered"]))
			}
		}
		if sa, sb := canonicalSeq(v["A"]), canonicalSeq(v["B"]); len(out) == 0 && sa != sb {
			out = append(out, fmt.Sprintf("two seq parts:\nA %s\nB %s", sa, sb))
		}
		return strings.Join(out, "; ")
	}
	// Wait for every view to settle; what is still wrong at the deadline
	// is reported device by device below.
	waitLedgersSettled(t, "both instances' ledgers", all, func(id string) string { return mismatch(id, views(id)) })
	var onBoth, dups, resets float64
	for _, c := range all {
		v := views(c.ID)
		if m := mismatch(c.ID, v); m != "" {
			t.Errorf("%s: %s", c.ID, m)
		}
		if v["A"] == nil || v["B"] == nil {
			continue
		}
		if strings.HasPrefix(c.ID, "lcm-") && v["A"]["instances"] == 2.0 && v["B"]["instances"] == 2.0 {
			onBoth++
		}
		seq := v["A"]["seq"].(map[string]any)
		dups += seq["duplicates"].(float64)
		resets += seq["resets"].(float64)
	}
	// The shared subscription really split the MQTT devices' streams:
	// without that the test could pass with no merging at all.
	if onBoth < mqttDevices*3/4 {
		t.Errorf("%.0f of %d MQTT devices have records on both instances; want most", onBoth, mqttDevices)
	}
	for name, h := range hubs {
		if m := scrape(t, h); m["fieldhub_ledger_durable_total"] == 0 {
			t.Errorf("instance %s made nothing durable", name)
		}
	}
	t.Logf("%d gaps skipped by the simulator; %.0f of %d MQTT devices on both instances; %.0f resets, %.0f duplicates", len(skipped), onBoth, mqttDevices, resets, dups)
	if resets == 0 {
		t.Error("no resets: the reboot fault did not run")
	}

	// The gaps alert ran on the merged numbers: every device with gaps
	// has one alert, firing, never resolved and fired again (a false
	// gap that a later merge closed would do that), and no device
	// without gaps has any.
	for _, c := range all {
		if len(want[c.ID]) > 0 { // the engine evaluates behind a queue
			a.waitAlert(t, gapsRule, c.ID, "firing")
		}
		list := a.alertsOf(t, "device="+c.ID+"&rule="+gapsRule)
		switch {
		case len(want[c.ID]) == 0 && len(list) != 0:
			t.Errorf("%s skipped nothing, yet has gaps alerts: %v", c.ID, list)
		case len(want[c.ID]) > 0 && len(list) != 1:
			t.Errorf("%s skipped %v: alerts %v, want one, firing", c.ID, want[c.ID], list)
		}
	}

	// The fleet view is fleet-wide on either instance.
	var withGaps []string
	for id, w := range want {
		withGaps = append(withGaps, fmt.Sprintf("%s:%d", id, len(w)))
	}
	slices.Sort(withGaps)
	for name, h := range hubs {
		code, fl := h.api(t, "GET", "/api/v1/ledger", h.adminToken, nil)
		if code != 200 {
			t.Fatalf("fleet ledger on %s: %d %v", name, code, fl)
		}
		var got []string
		for _, d := range fl["devices_with_open_gaps"].([]any) {
			d := d.(map[string]any)
			got = append(got, fmt.Sprintf("%s:%.0f", d["device"], d["open_gaps"]))
		}
		slices.Sort(got)
		if int(fl["open_gaps"].(float64)) != len(skipped) || !slices.Equal(got, withGaps) {
			t.Errorf("fleet ledger on %s: open_gaps %v, want %d; devices with open gaps %v, want %v", name, fl["open_gaps"], len(skipped), got, withGaps)
		}
	}
}

// runFleet starts a fleet and returns it with a stop that ends its run
// and returns Run's error (once; later calls return nil). The test's
// cleanup stops it too.
func runFleet(t *testing.T, cfg firmwaresim.Config) (*firmwaresim.Fleet, func() error) {
	t.Helper()
	fleet, err := firmwaresim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- fleet.Run(ctx) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-runErr
	}
	t.Cleanup(func() { _ = stop() })
	return fleet, stop
}

// openGaps lists a seq view's open gaps as boot:from-to, sorted.
func openGaps(seq map[string]any) []string {
	var open []string
	for _, g := range seq["gaps"].([]any) {
		g := g.(map[string]any)
		if g["closed_at"] == nil {
			open = append(open, fmt.Sprintf("%s:%.0f-%.0f", g["boot"], g["from"], g["to"]))
		}
	}
	slices.Sort(open)
	return open
}

// waitLedgersSettled polls until check finds nothing wrong with any of
// the devices, or loadWait passed; the caller then reports what is still
// wrong, device by device.
func waitLedgersSettled(t *testing.T, what string, devices []firmwaresim.Cred, check func(id string) string) {
	t.Helper()
	start := time.Now()
	for {
		ok := true
		for _, c := range devices {
			if check(c.ID) != "" {
				ok = false
				break
			}
		}
		if ok {
			t.Logf("%s settled %s after the fleet finished", what, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > loadWait {
			t.Errorf("the ledgers did not settle within %s", loadWait)
			return
		}
		time.Sleep(100 * time.Millisecond) // polling the views, not synchronising
	}
}

// canonicalSeq is a device view's seq part as JSON with its gaps in one
// order (boot, epoch, from): gaps changed at the same instant may be
// listed in either order, and everything else must be the same.
func canonicalSeq(led map[string]any) string {
	seq := maps.Clone(led["seq"].(map[string]any))
	gaps := slices.Clone(seq["gaps"].([]any))
	key := func(g any) string {
		m := g.(map[string]any)
		epoch, _ := m["epoch"].(float64) // omitted when 0
		return fmt.Sprintf("%v/%020.0f/%020.0f/%020.0f", m["boot"], epoch, m["from"], m["to"])
	}
	slices.SortFunc(gaps, func(x, y any) int { return strings.Compare(key(x), key(y)) })
	seq["gaps"] = gaps
	return compact(seq)
}
