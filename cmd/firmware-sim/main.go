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
	"syscall"

	firmwaresim "github.com/fieldhub/fieldhub/firmware-sim"
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
	fs.StringVar(&cfg.Hub, "hub", "http://127.0.0.1:8080", "hub REST and WebSocket base URL")
	fs.StringVar(&cfg.MQTT, "mqtt", "127.0.0.1:1883", "hub MQTT address host:port")
	fs.StringVar(&cfg.AdminToken, "admin-token", getenv("FIELDHUB_ADMIN_TOKEN"), "admin API token for --provision (env FIELDHUB_ADMIN_TOKEN)")
	fs.BoolVar(&cfg.Provision, "provision", false, "create (or re-key) the devices <prefix>-1..N through the REST API")
	fs.StringVar(&cfg.Prefix, "prefix", "sim", "device id prefix for --provision")
	fs.IntVar(&cfg.Devices, "devices", 10, "number of devices (1 to 50,000)")
	fs.StringVar(&cfg.Transport, "transport", "ws", "ws, mqtt or mix")
	fs.Float64Var(&cfg.Rate, "rate", 1, "readings per second per device")
	fs.IntVar(&cfg.Batch, "batch", 1, "readings per message")
	fs.Float64Var(&cfg.FaultRate, "fault-rate", 0, "share of faulty messages and connects, 0 to 1")
	fs.DurationVar(&cfg.Duration, "duration", 0, "stop after this long (0: until Ctrl-C)")
	fs.IntVar(&cfg.Count, "count", 0, "stop each device after this many messages (0: no limit)")
	fs.IntVar(&cfg.MaxInflight, "max-inflight", 100, "unacknowledged messages per device before it waits")
	credsFile := fs.String("creds", "", "CSV id,token file: read it if it exists, otherwise provision and write it")
	asJSON := fs.Bool("json", false, "print the final summary as JSON")
	quiet := fs.Bool("quiet", false, "no progress lines")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if cfg.Devices < 1 || cfg.Devices > 50000 {
		return errors.New("--devices must be 1 to 50,000")
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
	if !*quiet {
		cfg.Progress = stderr
	}
	fleet, err := firmwaresim.New(cfg)
	if err != nil {
		return err
	}
	runErr := fleet.Run(ctx)
	if *credsFile != "" && cfg.Provision && len(fleet.Creds()) > 0 {
		if err := writeCreds(*credsFile, fleet.Creds()); err != nil {
			fmt.Fprintln(stderr, "firmware-sim: save credentials:", err)
		}
	}
	if runErr != nil {
		return runErr
	}
	st := fleet.Stats()
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(stdout, "final:", st.Line())
		for _, s := range st.ViolationSamples {
			fmt.Fprintln(stdout, "  violation:", s)
		}
	}
	if st.Violations > 0 {
		return errViolations
	}
	return nil
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
