// Command firmware-sim runs a simulated device fleet against a Fieldhub:
// for demos, end-to-end checks and load. It exits non-zero when the hub
// broke its documented contract.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
	"github.com/fieldhub/fieldhub/firmware-sim/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "firmware-sim:", err)
		stop()
		os.Exit(1)
	}
}

// errViolations reports that the hub broke its contract during the run.
var errViolations = errors.New("the hub broke its documented contract (see contract_violations)")

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("firmware-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg firmwaresim.Config
	var lo load.Options
	hubs := fs.String("hub", "http://127.0.0.1:8080", "hub REST and WebSocket base URL; several, comma-separated, for devices to spread and fail over across")
	brokers := fs.String("mqtt", "127.0.0.1:1883", "hub MQTT address host:port; several, comma-separated")
	fs.StringVar(&cfg.AdminToken, "admin-token", getenv("FIELDHUB_ADMIN_TOKEN"), "admin API token for --provision (env FIELDHUB_ADMIN_TOKEN)")
	fs.BoolVar(&cfg.Provision, "provision", false, "create (or re-key) the devices <prefix>-1..N through the REST API")
	fs.StringVar(&cfg.Prefix, "prefix", "sim", "device id prefix for --provision and --no-provision")
	fs.BoolVar(&cfg.Anonymous, "no-provision", false, "devices <prefix>-1..N connect with no credentials to a plain MQTT broker that allows anonymous clients (another pipeline under the same load); --transport mqtt only")
	fs.IntVar(&cfg.Devices, "devices", 10, "number of devices (1 to 50,000)")
	fs.StringVar(&cfg.Transport, "transport", "ws", "ws, mqtt or mix")
	fs.Float64Var(&cfg.Rate, "rate", 1, "readings per second per device")
	fs.IntVar(&cfg.Batch, "batch", 1, "readings per message")
	fs.Float64Var(&cfg.FaultRate, "fault-rate", 0, "share of faulty messages and connects, 0 to 1")
	fs.Func("faults", "comma-separated fault kinds to draw from at --fault-rate (default: all but spike): "+strings.Join(firmwaresim.FaultKinds(), ", "), func(v string) error {
		for _, k := range strings.Split(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				cfg.Faults = append(cfg.Faults, k)
			}
		}
		return nil
	})
	fs.Float64Var(&cfg.DropRate, "drop-rate", 0, "share of messages before which the device skips 1-3 sequence numbers (a lossy radio), 0 to 1")
	fs.Float64Var(&cfg.RebootRate, "reboot-rate", 0, "share of messages before which the device restarts (new boot, seq from 0), 0 to 1")
	fs.DurationVar(&cfg.Duration, "duration", 0, "stop after this long (0: until Ctrl-C)")
	fs.IntVar(&cfg.Count, "count", 0, "stop each device after this many messages (0: no limit)")
	fs.IntVar(&cfg.MaxInflight, "max-inflight", 100, "unacknowledged messages per device before it waits")
	header := fs.Bool("report-header", false, "print the markdown header for --report rows and exit")
	fs.BoolVar(&cfg.Idle, "idle", false, "connect and send nothing (memory per idle connection)")
	fs.BoolVar(&cfg.QoS0, "qos0", false, "publish MQTT telemetry at QoS 0 (no acks; count what landed)")
	fs.IntVar(&lo.Dashboards, "dashboards", 0, "open this many /ws/live sockets and measure device -> dashboard latency")
	fs.IntVar(&lo.HubPID, "hub-pid", 0, "the hub's process id, to measure its CPU and RSS from /proc")
	fs.StringVar(&lo.InfluxURL, "influx-url", "", "InfluxDB URL, to count the readings that landed after the run")
	fs.StringVar(&lo.InfluxDB, "influx-db", "telemetry", "InfluxDB database for --influx-url")
	fs.StringVar(&lo.InfluxMeasurement, "influx-measurement", "telemetry", "InfluxDB measurement for --influx-url")
	fs.DurationVar(&lo.LandedStall, "landed-stall", 0, "with --influx-url, stop waiting for acked readings to land once the count has not grown for this long (0: wait up to two minutes)")
	fs.Func("pid", "name=pid of another process of the system under test whose CPU to measure (e.g. influxd=1234); repeatable", func(v string) error {
		p, err := parseProc(v)
		lo.Procs = append(lo.Procs, p)
		return err
	})
	fs.IntVar(&cfg.RecordAcked, "record-acked", 100000, "with --influx-url, remember up to this many acked readings (about 300 bytes each) and check each one in InfluxDB by device, ts and value; 0 only counts")
	steps := fs.String("steps", "", "comma-separated total readings/s to step through, stopping when acks fall behind")
	fs.DurationVar(&lo.StepDuration, "step-duration", 20*time.Second, "how long each --steps rate runs")
	fs.BoolVar(&lo.AllSteps, "all-steps", false, "run every --steps rate, also after one fell behind")
	report := fs.String("report", "", "also print a one-line markdown table row of the key figures, named this")
	credsFile := fs.String("creds", "", "CSV id,token file: read it if it exists, otherwise provision and write it")
	asJSON := fs.Bool("json", false, "print the final summary as JSON")
	quiet := fs.Bool("quiet", false, "no progress lines")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	cfg.Hub, cfg.MoreHubs = splitFirst(*hubs)
	cfg.MQTT, cfg.MoreMQTT = splitFirst(*brokers)
	if *header {
		fmt.Fprintln(stdout, reportHeader)
		return nil
	}
	for _, v := range strings.Split(*steps, ",") {
		if v = strings.TrimSpace(v); v == "" {
			continue
		}
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r <= 0 {
			return fmt.Errorf("--steps: %q is not a rate", v)
		}
		lo.Steps = append(lo.Steps, r)
	}
	if cfg.Devices < 1 || cfg.Devices > 50000 {
		return errors.New("--devices must be 1 to 50,000")
	}
	if len(lo.Steps) > 0 {
		cfg.Rate = lo.Steps[0] / float64(cfg.Devices) // while the fleet connects, before the first step
	}
	if *credsFile != "" {
		if f, err := os.Open(*credsFile); err == nil {
			cfg.Creds, err = firmwaresim.ReadCreds(f)
			f.Close()
			if err != nil {
				return err
			}
			cfg.Provision = len(cfg.Creds) < cfg.Devices
		} else {
			cfg.Provision = true
		}
	}
	if lo.InfluxURL == "" {
		cfg.RecordAcked = 0
	}
	if !*quiet {
		cfg.Progress = stderr
		lo.Progress = stderr
	}
	lo.Hub, lo.AdminToken, lo.Prefix = cfg.Hub, cfg.AdminToken, cfg.Prefix
	harness := load.New(lo)
	if lo.Dashboards > 0 {
		cfg.Stamp = harness.Stamp
	}
	fleet, err := firmwaresim.New(cfg)
	if err != nil {
		return err
	}
	runErr := harness.Run(ctx, fleet)
	if *credsFile != "" && cfg.Provision && len(fleet.Creds()) > 0 {
		if err := writeCreds(*credsFile, fleet.Creds()); err != nil {
			fmt.Fprintln(stderr, "firmware-sim: save credentials:", err)
		}
	}
	if runErr != nil {
		return runErr
	}
	st := fleet.Stats()
	b := harness.Bench(st)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		summary := struct {
			firmwaresim.Stats
			Bench load.Bench `json:"bench"`
		}{st, b}
		if err := enc.Encode(summary); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(stdout, "final:", st.Line())
		for _, s := range st.ViolationSamples {
			fmt.Fprintln(stdout, "  violation:", s)
		}
	}
	if *report != "" {
		fmt.Fprintln(stdout, reportRow(*report, st, b))
	}
	if st.Violations > 0 {
		return errViolations
	}
	return nil
}

// ReportHeader is the markdown table header for --report rows.
const reportHeader = "| scenario | connections | offered/s | acked/s | landed in InfluxDB | acked but missing | ack p50 / p99 ms | dashboard p50 / p99 / max ms | hub CPU-s per M readings | hub peak RSS MiB | RSS per conn KiB | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|"

func reportRow(name string, st firmwaresim.Stats, b load.Bench) string {
	errs := 0
	for _, v := range st.Errors {
		errs += int(v)
	}
	offered, acked := st.ReadingsPerSecSent, st.ReadingsPerSecAcked
	p50, p99 := st.AckP50, st.AckP99
	if n := len(b.Steps); n > 0 {
		// A stepped run reports its last step that kept up.
		best := b.Steps[0]
		for _, s := range b.Steps {
			if !s.FellBehind {
				best = s
			}
		}
		offered, acked, p50, p99 = best.Offered, best.Acked, best.AckP50, best.AckP99
		name = fmt.Sprintf("%s: kept up at %.0f/s, fell behind at %.0f/s", name, best.Target, b.Steps[n-1].Target)
	}
	dash, perConn := "–", "–"
	if b.DashReceived > 0 {
		dash = fmt.Sprintf("%.1f / %.1f / %.1f", b.DashP50, b.DashP99, b.DashMax)
	}
	if st.ReadingsSent == 0 && b.HubRSSPerConnKiB > 0 {
		perConn = fmt.Sprintf("%.1f", b.HubRSSPerConnKiB) // only meaningful for idle fleets
	}
	return fmt.Sprintf("| %s | %d | %.0f | %.0f | %d | %d | %.1f / %.1f | %s | %.1f | %.0f | %s | %d |",
		name, b.ConnectionsHeld, offered, acked, b.Landed, b.Lost, p50, p99,
		dash, b.HubCPUPerMillion, b.HubPeakRSSMiB, perConn, errs)
}

// parseProc parses a --pid value, name=pid.
func parseProc(v string) (load.Proc, error) {
	name, num, ok := strings.Cut(v, "=")
	pid, err := strconv.Atoi(num)
	if !ok || name == "" || err != nil || pid <= 0 {
		return load.Proc{}, fmt.Errorf("%q is not name=pid", v)
	}
	return load.Proc{Name: name, PID: pid}, nil
}

// splitFirst splits a comma-separated list into its first item and the rest.
func splitFirst(list string) (string, []string) {
	var items []string
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			items = append(items, s)
		}
	}
	if len(items) == 0 {
		return "", nil
	}
	return items[0], items[1:]
}

func writeCreds(path string, creds []firmwaresim.Cred) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := firmwaresim.WriteCreds(f, creds); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
