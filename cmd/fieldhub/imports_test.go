package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportRules keeps the dependency directions of docs/architecture.md:
// a forbidden edge fails the build, not a code review.
func TestImportRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "github.com/fieldhub/fieldhub/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	const mod = "github.com/fieldhub/fieldhub/"
	// Fieldhub packages a package may import, by package prefix.
	allowed := map[string][]string{
		"telemetry":  {"telemetry"},
		"devices":    {"telemetry"},
		"devices/pg": {"devices", "telemetry"},
		// The ledger and its stores know the wire contract only; the
		// PostgreSQL store, which settles the instances' merged seq
		// numbers, speaks the ledger's SharedStore types.
		"devices/ledger":         {"telemetry"},
		"devices/ledger/pgstore": {"devices/ledger"},
		// Device state and its stores: the model knows only the wire
		// contract; its stores know only the model.
		"devices/state": {"devices/state", "telemetry"},
		"bridge":        {"bridge", "devices", "telemetry"},
		// hijack: the closing set of hijacked connections, shared by the
		// device and operator sockets; standard library only.
		"bridge/hijack": {},
		// Commands own their records and stores; they know nothing of the
		// pipeline or the transports.
		"bridge/commands": {"bridge/commands", "devices", "telemetry"},
		// dynsec owns Mosquitto's dynamic-security control protocol: it
		// knows the registry's change records and the one device ACL,
		// never the pipeline or the cluster that carries its messages.
		"bridge/cluster/dynsec": {"devices", "telemetry"},
		"dashboard":             {"dashboard", "bridge/commands", "bridge/hijack", "devices", "telemetry"},
		"dashboard/live":        {"devices", "telemetry"}, // the hub without HTTP: never the handlers
		// Operator authentication decides and never answers: no handlers,
		// no live hub, so its policies are tested without a server.
		"dashboard/operator": {"devices", "telemetry"},
		"firmware-sim":       {"telemetry"},
		// The load harness wraps a fleet; the fleet (a device) never
		// imports the harness.
		"firmware-sim/load": {"firmware-sim", "telemetry"},
		"cmd/firmware-sim":  {"firmware-sim", "telemetry"},
		"cmd/fieldhub":      {""},
		// The benchmark report (make bench) reads only JSON files.
		"scripts/plot": {},
	}
	// Third-party libraries and the one package allowed to import each.
	owners := map[string][]string{
		// The device gateway's codec (mochi's packets only: its broker is
		// forbidden below), and paho.golang's for one property check.
		"github.com/mochi-mqtt/server/v2/packets":     {"bridge/mqtt"},
		"github.com/eclipse/paho.golang":              {"bridge/mqtt"},
		"github.com/influxdata/influxdb-client-go/v2": {"telemetry/influx"},
		// The command, alert, ledger and state stores share the registry's open database.
		"go.etcd.io/bbolt":                       {"devices", "bridge/commands/boltstore", "dashboard/alerts/boltstore", "devices/ledger/boltstore", "devices/state/boltstore"},
		"github.com/jackc/pgx/v5":                {"devices/pg", "bridge/commands/pgstore", "dashboard/alerts/pgstore", "devices/ledger/pgstore", "devices/state/pgstore"},
		"github.com/prometheus/client_golang":    {"cmd/fieldhub"},
		"github.com/go-playground/validator/v10": {"telemetry"},
		// The hub's broker client, and the simulator's MQTT devices.
		"github.com/eclipse/paho.mqtt.golang": {"bridge/cluster", "firmware-sim"},
		// The plot of docs/benchmarks-cpu.png.
		"gonum.org/v1/plot": {"scripts/plot"},
		// fallocate and fdatasync for the spool's segments.
		"golang.org/x/sys": {"telemetry/spool"},
	}
	// mochi's broker was replaced by the hub's own gateway (issue #20):
	// nothing imports it, or its hooks and listeners, again.
	forbidden := func(imp string) bool {
		return strings.HasPrefix(imp, "github.com/mochi-mqtt/server/v2") && imp != "github.com/mochi-mqtt/server/v2/packets"
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		for _, imp := range fields[1:] {
			if forbidden(imp) {
				t.Errorf("%s imports %s: mochi's broker is not used (only its packets codec)", fields[0], imp)
			}
		}
		pkg := strings.TrimPrefix(fields[0], mod)
		// The most specific rule wins.
		var rule []string
		best := -1
		for prefix, r := range allowed {
			if (pkg == prefix || strings.HasPrefix(pkg, prefix+"/")) && len(prefix) > best {
				rule, best = r, len(prefix)
			}
		}
		for _, imp := range fields[1:] {
			if rel, ok := strings.CutPrefix(imp, mod); ok {
				okEdge := false
				for _, a := range rule {
					if a == "" || rel == a || strings.HasPrefix(rel, a+"/") {
						okEdge = true
					}
				}
				if !okEdge {
					t.Errorf("%s imports %s: not allowed by docs/architecture.md", pkg, rel)
				}
				continue
			}
			for lib, libOwners := range owners {
				if imp != lib && !strings.HasPrefix(imp, lib+"/") {
					continue
				}
				owned := false
				for _, owner := range libOwners {
					if pkg == owner || strings.HasPrefix(pkg, owner+"/") {
						owned = true
					}
				}
				if !owned {
					t.Errorf("%s imports %s; only %s may", pkg, imp, strings.Join(libOwners, " and "))
				}
			}
		}
	}
}
