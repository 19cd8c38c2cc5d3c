package load

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/bridge/cluster/mosquittotest"
	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

func TestFellBehind(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   Step
		want bool
	}{
		{"kept up", Step{Target: 1000, Offered: 1000, Acked: 990, AckP99: 50}, false},
		{"acks at 97 %", Step{Target: 1000, Offered: 1000, Acked: 970, AckP99: 50}, false},
		{"acks under 97 %", Step{Target: 1000, Offered: 1000, Acked: 969, AckP99: 50}, true},
		{"p99 over 2 s", Step{Target: 1000, Offered: 1000, Acked: 1000, AckP99: 2001}, true},
		{"offered under 90 % of target", Step{Target: 1000, Offered: 899, Acked: 899, AckP99: 50}, true},
	} {
		if got := fellBehind(tc.st); got != tc.want {
			t.Errorf("%s: fellBehind = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestLatencyRingMatchesOnlyKnownSequence(t *testing.T) {
	r := newLatencyRing()
	n := r.stamp()
	if _, ok := r.since(n, time.Now()); !ok {
		t.Fatal("a fresh stamp is not known")
	}
	if _, ok := r.since(n+1, time.Now()); ok {
		t.Fatal("an unsent sequence number matched")
	}
	for range ringSize {
		r.stamp()
	}
	if _, ok := r.since(n, time.Now()); ok {
		t.Fatal("a stamp a full ring old still matched")
	}
}

// TestLandedCount checks the landed count against a real influxd: only
// the fleet's devices (by prefix), in the measurement asked for, with
// timestamps in the window.
func TestLandedCount(t *testing.T) {
	influx := influxtest.Start(t)
	lines := strings.Join([]string{
		"telemetry,device=p-1 battery=1 1000",
		"telemetry,device=p-2 battery=1 2000",
		"telemetry,device=pp-1 battery=1 2000", // another fleet whose prefix starts alike
		"telemetry,device=q-1 battery=1 1500",
		"telemetry,device=p-3 temp=1 1500", // no battery: not a simulator reading
		"peer,device=p-1 battery=1 1000",
		"peer,device=p-1 battery=1 3000",
	}, "\n")
	resp, err := http.Post(influx.URL+"/write?db="+influxtest.Database+"&precision=ms", "text/plain", strings.NewReader(lines))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("write: HTTP %d", resp.StatusCode)
	}
	ms := time.UnixMilli
	for _, tc := range []struct {
		name, measurement, prefix string
		from, to                  time.Time
		want                      int64
	}{
		{"the hub's measurement by default", "", "p", ms(0), time.Time{}, 2},
		{"from a time on", "", "p", ms(1001), time.Time{}, 1},
		{"before a time", "", "p", ms(0), ms(2000), 1},
		{"another prefix", "", "q", ms(0), time.Time{}, 1},
		{"another measurement", "peer", "p", ms(0), time.Time{}, 2},
		{"another measurement in a window", "peer", "p", ms(2000), ms(4000), 1},
		{"a measurement with nothing", "none", "p", ms(0), time.Time{}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := New(Options{InfluxURL: influx.URL, InfluxDB: influxtest.Database, InfluxMeasurement: tc.measurement, Prefix: tc.prefix})
			n, err := h.countLanded(context.Background(), tc.from, tc.to)
			if err != nil {
				t.Fatal(err)
			}
			if n != tc.want {
				t.Fatalf("counted %d, want %d (%s)", n, tc.want, landedQuery(h.opts.InfluxMeasurement, tc.prefix, tc.from, tc.to))
			}
		})
	}
}

// TestStepsThroughPlainBroker runs a stepped load of an anonymous fleet
// (no hub, no provisioning) through a plain Mosquitto, the peer
// pipeline's broker, with the broker's CPU measured. Nothing bridges the
// broker to InfluxDB, so nothing lands: the run must end once the landed
// count stalled, not after the two-minute wait for acked readings.
func TestStepsThroughPlainBroker(t *testing.T) {
	broker := mosquittotest.StartWith(t, mosquittotest.Options{Anonymous: true})
	influx := influxtest.Start(t)
	const devices, stepLen, stall = 3, 2 * time.Second, 2 * time.Second
	// One reading per 1,000 s until the first step: the steps must take
	// effect at once. One message in flight per device, so the middle
	// step's rate is out of reach (it falls behind) and AllSteps must
	// still run the last.
	fleet, err := firmwaresim.New(firmwaresim.Config{MQTT: broker.Addr, Transport: firmwaresim.TransportMQTT, Anonymous: true,
		Prefix: "anon", Devices: devices, Rate: 0.001, MaxInflight: 1})
	if err != nil {
		t.Fatal(err)
	}
	h := New(Options{Steps: []float64{30, 1e7, 60}, AllSteps: true, StepDuration: stepLen, Procs: []Proc{{"mosquitto", broker.PID()}},
		InfluxURL: influx.URL, InfluxDB: influxtest.Database, Prefix: "anon", LandedStall: stall})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	if err := h.Run(ctx, fleet); err != nil {
		t.Fatal(err)
	}
	// Two steps, the connects and the stall, with room for a loaded box;
	// far less than the two minutes a run without LandedStall waits.
	if took := time.Since(start); took > 100*time.Second {
		t.Fatalf("the run took %s: the wait for readings to land did not stop at the stall", took)
	}
	st := fleet.Stats()
	b := h.Bench(st)
	if st.Violations > 0 || st.ReadingsAcked == 0 {
		t.Fatalf("the plain broker acked %d readings, violations %d: %v", st.ReadingsAcked, st.Violations, st.ViolationSamples)
	}
	if len(b.Steps) != 3 || !b.Steps[1].FellBehind {
		t.Fatalf("%d steps, want 3, the second fell behind: %+v", len(b.Steps), b.Steps)
	}
	for _, s := range b.Steps {
		if s.Sent == 0 || s.AckedN == 0 || s.End <= s.Start || s.Landed != 0 || s.AckedSent == 0 || s.Lost != s.AckedSent {
			t.Errorf("step %v: sent %d, acked %d, window %d..%d, landed %d, acked of the step %d, lost %d",
				s.Target, s.Sent, s.AckedN, s.Start, s.End, s.Landed, s.AckedSent, s.Lost)
		}
		if _, ok := s.CPU["mosquitto"]; !ok {
			t.Errorf("step %v: no CPU for mosquitto: %v", s.Target, s.CPU)
		}
	}
	if _, ok := b.CPU["mosquitto"]; !ok || b.Landed != 0 {
		t.Errorf("run: CPU %v, landed %d", b.CPU, b.Landed)
	}
	// Each device connected under its own id with no username.
	log := broker.Log()
	for i := 1; i <= devices; i++ {
		if !strings.Contains(log, fmt.Sprintf(" as anon-%d (", i)) {
			t.Errorf("no connect of anon-%d in the broker's log:\n%s", i, log)
		}
	}
	if strings.Contains(log, "u'anon-") {
		t.Errorf("an anonymous device sent a username:\n%s", log)
	}
}
