package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// cliRun runs the fieldhub command in-process as a script would: its
// exit code, stdout and stderr.
func cliRun(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut syncBuf
	err := run(context.Background(), append([]string{"fieldhub"}, args...), func(k string) string { return env[k] }, &out, &errOut)
	if err != nil {
		errOut.Write([]byte("fieldhub: " + err.Error() + "\n"))
	}
	return exitCode(err), out.String(), errOut.String()
}

// TestCLIUsage checks help, usage errors and exit codes without a hub,
// and that the operator token never appears in anything printed.
func TestCLIUsage(t *testing.T) {
	const secret = "fho_cli-usage-secret-never-printed"
	env := map[string]string{"FIELDHUB_TOKEN": secret, "FIELDHUB_URL": "http://" + freePort(t)} // nothing listens there
	tests := []struct {
		args        []string
		env         map[string]string
		code        int
		stdout      []string // each must appear
		stderr      []string
		notStdout   []string // none may appear
		emptyStdout bool
	}{
		{args: []string{"--help"}, stdout: []string{"Usage: fieldhub <command>", "device", "token", "command", "version", "Exit codes"}},
		{args: []string{}, code: exitUsage, stderr: []string{"Usage: fieldhub <command>", "no command given"}, emptyStdout: true},
		{args: []string{"frobnicate"}, code: exitUsage, stderr: []string{`unknown command "frobnicate"`}, emptyStdout: true},
		{args: []string{"device", "--help"}, stdout: []string{"Usage: fieldhub device <subcommand>", "create ID", "update ID", "import FILE"}},
		{args: []string{"device", "help"}, stdout: []string{"create ID"}},
		{args: []string{"help", "device"}, stdout: []string{"Usage: fieldhub device <subcommand>"}},
		{args: []string{"device"}, code: exitUsage, stderr: []string{"create ID", "missing subcommand"}, emptyStdout: true},
		{args: []string{"device", "frobnicate"}, code: exitUsage, stderr: []string{`unknown command "device frobnicate"`}, emptyStdout: true},
		{args: []string{"token", "--help"}, stdout: []string{"create NAME", "revoke ID"}},
		{args: []string{"command", "--help"}, stdout: []string{"send DEVICE NAME", "cancel DEVICE CMD", "list DEVICE"}},
		// Per-command help lists that command's flags and no other's.
		{args: []string{"device", "create", "--help"}, stdout: []string{"Usage: fieldhub device create ID [flags]", "--name NAME", "--label key=value", "--json", "--token TOKEN"},
			notStdout: []string{"--params", "--role", "--grace", "--wait", "--online"}},
		{args: []string{"help", "device", "update"}, stdout: []string{"Usage: fieldhub device update ID", "--clear-labels", "--remove-label key", "--label key=value"}, notStdout: []string{"--params", "--role"}},
		{args: []string{"command", "send", "-h"}, stdout: []string{"Usage: fieldhub command send DEVICE NAME", "--params OBJECT", "--wait DURATION", "exit code 0"}, notStdout: []string{"--label", "--role"}},
		{args: []string{"token", "create", "--help"}, stdout: []string{"--role ROLE"}, notStdout: []string{"--label", "--params"}},
		// Usage errors: exit 2, nothing sent, the usage on stderr.
		{args: []string{"device", "create"}, code: exitUsage, stderr: []string{"missing ID", "Usage: fieldhub device create ID"}, emptyStdout: true},
		{args: []string{"device", "create", "a", "b"}, code: exitUsage, stderr: []string{`unexpected argument "b"`}, emptyStdout: true},
		{args: []string{"device", "create", "pump-1", "--nmae", "x"}, code: exitUsage, stderr: []string{"flag provided but not defined: -nmae", "--name NAME"}, emptyStdout: true},
		{args: []string{"command", "send", "pump-1"}, code: exitUsage, stderr: []string{"missing NAME"}, emptyStdout: true},
		{args: []string{"command", "cancel", "pump-1"}, code: exitUsage, stderr: []string{"missing CMD"}, emptyStdout: true},
		{args: []string{"command", "send", "pump-1", "reboot", "--params", "[1]"}, code: exitUsage, stderr: []string{"--params must be a JSON object"}, emptyStdout: true},
		{args: []string{"command", "list", "pump-1", "--limit", "0"}, code: exitUsage, stderr: []string{"--limit"}, emptyStdout: true},
		{args: []string{"device", "update", "pump-1"}, code: exitUsage, stderr: []string{"nothing to change"}, emptyStdout: true},
		{args: []string{"device", "list", "--online", "maybe"}, code: exitUsage, stderr: []string{"--online must be true or false"}, emptyStdout: true},
		{args: []string{"token", "create", "x", "--role", "root"}, code: exitUsage, stderr: []string{"--role must be"}, emptyStdout: true},
		{args: []string{"device", "list", "--url", "ftp://hub"}, code: exitUsage, stderr: []string{"not an http(s) URL"}, emptyStdout: true},
		{args: []string{"device", "import", filepath.Join(t.TempDir(), "absent.csv")}, code: exitFailure, stderr: []string{"absent.csv"}, emptyStdout: true},
		{args: []string{"serve", "--no-such-setting"}, code: exitUsage, stderr: []string{"-no-such-setting"}},
		// No token, and a hub that is not there.
		{args: []string{"device", "list"}, env: map[string]string{}, code: exitAuth, stderr: []string{"no API token: set FIELDHUB_TOKEN"}, emptyStdout: true},
		{args: []string{"device", "list"}, code: exitUnreachable, stderr: []string{"cannot reach the hub"}, emptyStdout: true},
		{args: []string{"version"}, stdout: []string{"fieldhub (devel), revision unknown", "make build sets the version", "go1."}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			e := env
			if tt.env != nil {
				e = tt.env
			}
			code, stdout, stderr := cliRun(t, e, tt.args...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout, stderr)
			}
			for _, w := range tt.stdout {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout)
				}
			}
			for _, w := range tt.stderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			for _, w := range tt.notStdout {
				if strings.Contains(stdout, w) {
					t.Errorf("stdout has %q:\n%s", w, stdout)
				}
			}
			if tt.emptyStdout && stdout != "" {
				t.Errorf("stdout not empty:\n%s", stdout)
			}
			if strings.Contains(stdout+stderr, secret) {
				t.Errorf("the operator token was printed:\n%s%s", stdout, stderr)
			}
		})
	}
}

// TestCLIHelpOfEveryCommand checks each admin command's --help has its
// usage line, its description and the flags every command shares, and
// never shows the token.
func TestCLIHelpOfEveryCommand(t *testing.T) {
	const secret = "fho_help-secret"
	for _, c := range cliCommands() {
		code, stdout, stderr := cliRun(t, map[string]string{"FIELDHUB_TOKEN": secret}, append(strings.Fields(c.group), c.name, "--help")...)
		if code != 0 || !strings.Contains(stdout, "Usage: "+c.usageLine()) || !strings.Contains(stdout, c.help) ||
			!strings.Contains(stdout, "--json") || !strings.Contains(stdout, "--url URL") || strings.Contains(stdout+stderr, secret) {
			t.Errorf("%s %s --help: exit %d\n%s%s", c.group, c.name, code, stdout, stderr)
		}
	}
}

func TestCLIVersionJSON(t *testing.T) {
	code, stdout, _ := cliRun(t, nil, "version", "--json")
	var v map[string]any
	if code != 0 || json.Unmarshal([]byte(stdout), &v) != nil || v["version"] == "" || v["go"] == "" {
		t.Fatalf("version --json: %d %s", code, stdout)
	}
	// This test binary has no main module version: the fallback names it.
	if v["version"] != "(devel)" && v["version"] != readBuildVersion().Version {
		t.Errorf("version %v", v["version"])
	}
}

// TestCLIAgainstHub drives the admin commands against a running hub as a
// script would: consistent JSON, the exit code of each kind of refusal,
// nothing on stdout when a command fails, and commands with their outcome.
func TestCLIAgainstHub(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	admin := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.adminToken}
	viewer := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.token(t, "viewer")}
	wrong := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": "fho_wrong"}
	jsonOf := func(t *testing.T, stdout string) map[string]any {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal([]byte(stdout), &m); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, stdout)
		}
		return m
	}
	ok := func(t *testing.T, env map[string]string, args ...string) string {
		t.Helper()
		code, stdout, stderr := cliRun(t, env, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", args, code, stdout, stderr)
		}
		return stdout
	}

	// JSON keys are the API's, lowercase, whatever the command.
	created := jsonOf(t, ok(t, admin, "device", "create", "tank-1", "--name", "Tank", "--label", "site=north", "--json"))
	if created["device"].(map[string]any)["id"] != "tank-1" || !strings.HasPrefix(created["token"].(string), "fhd_") {
		t.Fatalf("create --json: %v", created)
	}
	rotated := jsonOf(t, ok(t, admin, "device", "rotate", "tank-1", "--json"))
	if rotated["id"] != "tank-1" || !strings.HasPrefix(rotated["token"].(string), "fhd_") {
		t.Fatalf("rotate --json: %v", rotated)
	}
	csv := filepath.Join(t.TempDir(), "fleet.csv")
	if err := os.WriteFile(csv, []byte("id,name\nimp-10,Ten\nimp-1,One\nimp-2,Two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	imported := jsonOf(t, ok(t, admin, "device", "import", csv, "--json"))
	devs := imported["devices"].([]any)
	if len(devs) != 3 || devs[0].(map[string]any)["id"] != "imp-10" || !strings.HasPrefix(devs[0].(map[string]any)["token"].(string), "fhd_") {
		t.Fatalf("import --json: %v", imported)
	}
	if out := ok(t, admin, "device", "import", writeFile(t, "more.csv", "id\nimp-3\n")); !strings.HasPrefix(out, "id,token\nimp-3,fhd_") {
		t.Fatalf("import: %q", out)
	}
	listed := jsonOf(t, ok(t, viewer, "device", "list", "--json"))
	if n := len(listed["devices"].([]any)); n != 5 {
		t.Fatalf("list --json: %d devices: %v", n, listed)
	}
	table := ok(t, viewer, "device", "list", "--label", "site=north")
	if !strings.HasPrefix(table, "ID ") || !strings.Contains(table, "tank-1") || !strings.Contains(table, "offline") || strings.Contains(table, "imp-1") {
		t.Fatalf("list table:\n%s", table)
	}
	if table := ok(t, viewer, "device", "list"); !regexp.MustCompile(`(?s)imp-1 .*imp-2 .*imp-10 .*tank-1 `).MatchString(table) {
		t.Fatalf("list table not in natural order:\n%s", table)
	}
	if got := jsonOf(t, ok(t, viewer, "device", "get", "tank-1")); got["device"].(map[string]any)["name"] != "Tank" {
		t.Fatalf("get: %v", got)
	}
	if got := jsonOf(t, ok(t, admin, "device", "delete", "imp-3", "--json")); got["id"] != "imp-3" || got["deleted"] != true {
		t.Fatalf("delete --json: %v", got)
	}

	// Each refusal has its exit code, and stdout stays empty: no table
	// header before an error.
	refusals := []struct {
		env  map[string]string
		args []string
		code int
		want string
	}{
		{admin, []string{"device", "get", "ghost"}, exitNotFound, "not_found"},
		{admin, []string{"device", "delete", "ghost"}, exitNotFound, "not_found"},
		{admin, []string{"device", "create", "tank-1"}, exitConflict, "409"},
		{admin, []string{"device", "create", "bad id!"}, exitUsage, "400"},
		{viewer, []string{"device", "create", "tank-2"}, exitAuth, "403"},
		{wrong, []string{"device", "list"}, exitAuth, "401"},
		{wrong, []string{"token", "list"}, exitAuth, "401"},
		{wrong, []string{"command", "list", "tank-1"}, exitAuth, "401"},
		{admin, []string{"command", "list", "ghost"}, exitNotFound, "404"},
		{admin, []string{"command", "cancel", "tank-1", "cmd-none"}, exitNotFound, "404"},
		{admin, []string{"token", "revoke", "tok-none"}, exitNotFound, "404"},
	}
	for _, r := range refusals {
		code, stdout, stderr := cliRun(t, r.env, r.args...)
		if code != r.code || stdout != "" || !strings.Contains(stderr, r.want) {
			t.Errorf("%v: exit %d (want %d), stdout %q, stderr %q (want %q)", r.args, code, r.code, stdout, stderr, r.want)
		}
	}

	// Commands: cancel while queued, then refused once cancelled.
	sent := jsonOf(t, ok(t, admin, "command", "send", "tank-1", "open", "--json"))
	cid := sent["command"].(map[string]any)["id"].(string)
	if out := ok(t, admin, "command", "cancel", "tank-1", cid); !strings.Contains(out, "cancelled") || !strings.Contains(out, cid) {
		t.Fatalf("cancel: %s", out)
	}
	if code, stdout, stderr := cliRun(t, admin, "command", "cancel", "tank-1", cid); code != exitConflict || stdout != "" || !strings.Contains(stderr, "cannot be cancelled") {
		t.Fatalf("second cancel: exit %d %q %q", code, stdout, stderr)
	}
	// An offline device: --wait ends with the command still queued.
	if code, _, stderr := cliRun(t, admin, "command", "send", "tank-1", "open", "--wait", "1s"); code != exitPending || !strings.Contains(stderr, "still queued") {
		t.Fatalf("send --wait offline: exit %d %s", code, stderr)
	}

	// A device that answers: succeeded is 0, failed and timed out are 7,
	// and the list says why.
	_, _ = wsDevice(t, h, h.createDevice(t, "valve-1"))
	if out := ok(t, admin, "command", "send", "valve-1", "set_interval", "--params", `{"seconds":9}`, "--wait", "60s"); !strings.Contains(out, "succeeded") || !strings.Contains(out, `"seconds":9`) {
		t.Fatalf("send ok: %s", out)
	}
	code, stdout, stderr := cliRun(t, admin, "command", "send", "valve-1", "fail", "--wait", "60s")
	if code != exitCommandFailed || !strings.Contains(stdout, "failed") || !strings.Contains(stdout, "valve stuck") || !strings.Contains(stderr, "valve stuck") {
		t.Fatalf("send fail: exit %d\n%s%s", code, stdout, stderr)
	}
	code, _, stderr = cliRun(t, admin, "command", "send", "valve-1", "ignore", "--timeout", "1s", "--wait", "60s")
	if code != exitCommandFailed || !strings.Contains(stderr, "timed_out") || !strings.Contains(stderr, "no result within 1s") {
		t.Fatalf("send ignore: exit %d %s", code, stderr)
	}
	list := ok(t, viewer, "command", "list", "valve-1")
	for _, want := range []string{"RESULT / REASON", "valve stuck", "no result within 1s", `{"echo":{"seconds":9}}`, `{"seconds":9}`} {
		if !strings.Contains(list, want) {
			t.Errorf("command list lacks %q:\n%s", want, list)
		}
	}
	got := jsonOf(t, ok(t, viewer, "command", "get", "tank-1", cid))["command"].(map[string]any)
	if got["status"] != "cancelled" || len(got["history"].([]any)) != 2 {
		t.Fatalf("command get: %v", got)
	}
	if code, stdout, _ := cliRun(t, viewer, "command", "get", "valve-1", cid); code != exitNotFound || stdout != "" {
		t.Fatalf("command get of another device's command: exit %d %q", code, stdout)
	}
}

// writeFile writes a temporary file and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCLIDeviceUpdate changes a device's name and labels through PATCH
// the way each flag promises, and reads its rejections.
func TestCLIDeviceUpdate(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	admin := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.adminToken}
	viewer := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.token(t, "viewer")}
	if code, _, stderr := cliRun(t, admin, "device", "create", "pump-1", "--name", "Pump", "--label", "site=north", "--label", "rack=1"); code != 0 {
		t.Fatalf("create: %s", stderr)
	}
	type want struct {
		name   string
		labels map[string]string
	}
	steps := []struct {
		args []string
		want want
	}{
		{[]string{"--name", "Pump 1"}, want{"Pump 1", map[string]string{"site": "north", "rack": "1"}}},
		{[]string{"--label", "rack=2"}, want{"Pump 1", map[string]string{"site": "north", "rack": "2"}}},
		{[]string{"--remove-label", "site", "--label", "zone=b"}, want{"Pump 1", map[string]string{"rack": "2", "zone": "b"}}},
		{[]string{"--clear-labels", "--label", "a=b"}, want{"Pump 1", map[string]string{"a": "b"}}},
		{[]string{"--clear-labels", "--name", ""}, want{"", map[string]string{}}},
	}
	for _, s := range steps {
		code, stdout, stderr := cliRun(t, admin, append([]string{"device", "update", "pump-1", "--json"}, s.args...)...)
		var got struct {
			Device struct {
				Name   string            `json:"name"`
				Labels map[string]string `json:"labels"`
			} `json:"device"`
		}
		if code != 0 || json.Unmarshal([]byte(stdout), &got) != nil {
			t.Fatalf("update %v: exit %d\n%s%s", s.args, code, stdout, stderr)
		}
		// What the hub now holds, not only what it answered.
		_, m := h.api(t, "GET", "/api/v1/devices/pump-1", h.adminToken, nil)
		held, _ := json.Marshal(m["device"].(map[string]any)["labels"])
		wantLabels, _ := json.Marshal(s.want.labels)
		if got.Device.Name != s.want.name || string(held) != string(wantLabels) || m["device"].(map[string]any)["name"] != s.want.name {
			t.Errorf("update %v: answered %+v, hub holds %v, want %+v", s.args, got.Device, m["device"], s.want)
		}
	}
	if _, stdout, _ := cliRun(t, admin, "device", "update", "pump-1", "--label", "site=south"); !strings.Contains(stdout, "site=south") {
		t.Errorf("update table: %s", stdout)
	}
	for _, r := range []struct {
		env  map[string]string
		args []string
		code int
	}{
		{admin, []string{"device", "update", "ghost", "--name", "x"}, exitNotFound},
		{admin, []string{"device", "update", "ghost", "--label", "a=b"}, exitNotFound},
		{viewer, []string{"device", "update", "pump-1", "--clear-labels"}, exitAuth},
		{admin, []string{"device", "update", "pump-1", "--label", "bad key!=x"}, exitUsage},
	} {
		if code, stdout, stderr := cliRun(t, r.env, r.args...); code != r.code || stdout != "" {
			t.Errorf("%v: exit %d (want %d) %q %q", r.args, code, r.code, stdout, stderr)
		}
	}

	// A refused reading shows in device rejections, with its field path.
	token := h.createDevice(t, "pump-2")
	req, _ := http.NewRequest("POST", h.url+"/api/v1/telemetry", strings.NewReader(`{"id":"m-7","metrics":{"temp":"hot","bad name":1}}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("bad reading: %d", resp.StatusCode)
	}
	code, stdout, stderr := cliRun(t, viewer, "device", "rejections", "pump-2")
	if code != 0 || !strings.Contains(stdout, "http") || !strings.Contains(stdout, "m-7") || !strings.Contains(stdout, "metrics.") || !strings.Contains(stdout, "(1 refused since the hub started)") {
		t.Fatalf("rejections: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, stdout, _ := cliRun(t, viewer, "device", "rejections", "ghost"); code != exitNotFound || stdout != "" {
		t.Fatalf("rejections of an unknown device: %d %q", code, stdout)
	}
}

// TestCLIExportAndMetrics exports a device's points through the CLI, to
// stdout and to a file, and lists its metric catalogue.
func TestCLIExportAndMetrics(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	viewer := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.token(t, "viewer")}
	token := h.createDevice(t, "boiler-1")
	base := time.Now().Add(-5 * time.Minute).Truncate(time.Second)
	var readings []string
	for i := range 5 {
		m := fmt.Sprintf(`"temp":%d`, 20+i)
		if i%2 == 0 {
			m += fmt.Sprintf(`,"state":"s%d"`, i)
		}
		readings = append(readings, fmt.Sprintf(`{"ts":%d,"metrics":{%s}}`, base.Add(time.Duration(i)*time.Second).UnixMilli(), m))
	}
	req, _ := http.NewRequest("POST", h.url+"/api/v1/telemetry", strings.NewReader(`{"readings":[`+strings.Join(readings, ",")+`]}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("telemetry: %d", resp.StatusCode)
	}
	waitUntil(t, "8 points in InfluxDB", loadWait, func() bool {
		a, _ := influx.Count("boiler-1", "temp")
		b, _ := influx.Count("boiler-1", "state")
		return a == 5 && b == 3
	})

	code, stdout, stderr := cliRun(t, viewer, "device", "export", "boiler-1", "--metric", "temp", "--metric", "state", "--start", "-10m")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 9 || lines[0] != "time,device,metric,value" {
		t.Fatalf("export csv: exit %d\n%s%s", code, stdout, stderr)
	}
	first := base.UTC().Format("2006-01-02T15:04:05.000Z07:00")
	if lines[1] != first+",boiler-1,temp,20" || lines[2] != first+",boiler-1,state,s0" {
		t.Errorf("export rows:\n%s", stdout)
	}

	out := filepath.Join(t.TempDir(), "boiler.jsonl")
	if code, stdout, stderr := cliRun(t, viewer, "device", "export", "boiler-1", "--metric", "temp", "--start", "-10m", "--format", "jsonl", "--output", out); code != 0 || stdout != "" {
		t.Fatalf("export jsonl: exit %d %q %s", code, stdout, stderr)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	rows := strings.Split(strings.TrimSpace(string(data)), "\n")
	var row map[string]any
	if len(rows) != 5 || json.Unmarshal([]byte(rows[4]), &row) != nil || row["value"] != 24.0 || row["metric"] != "temp" || row["ts"] != float64(base.Add(4*time.Second).UnixMilli()) {
		t.Fatalf("export file:\n%s", data)
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}

	// Refusals: nothing on stdout, no file.
	failed := filepath.Join(t.TempDir(), "never.csv")
	for _, r := range []struct {
		args []string
		code int
	}{
		{[]string{"device", "export", "ghost", "--metric", "temp", "--output", failed}, exitNotFound},
		{[]string{"device", "export", "boiler-1", "--metric", "temp", "--start", "--15m", "--output", failed}, exitUsage},
		{[]string{"device", "export", "boiler-1", "--metric", "temp", "--format", "xml"}, exitUsage},
		{[]string{"device", "export", "boiler-1"}, exitUsage},
		{[]string{"device", "metrics", "ghost"}, exitNotFound},
	} {
		if code, stdout, stderr := cliRun(t, viewer, r.args...); code != r.code || stdout != "" {
			t.Errorf("%v: exit %d (want %d) %q %s", r.args, code, r.code, stdout, stderr)
		}
	}
	if _, err := os.Stat(failed); !os.IsNotExist(err) {
		t.Errorf("a failed export left %s: %v", failed, err)
	}

	code, stdout, stderr = cliRun(t, viewer, "device", "metrics", "boiler-1")
	if code != 0 || !regexp.MustCompile(`(?m)^state +string +\S+Z +\S+Z$`).MatchString(stdout) || !regexp.MustCompile(`(?m)^temp +number +`).MatchString(stdout) {
		t.Fatalf("metrics: exit %d\n%s%s", code, stdout, stderr)
	}
}

// TestExportTrailer: the lines an export ends with when the hub cut it
// short make the command fail; ordinary last rows do not.
func TestExportTrailer(t *testing.T) {
	for _, tt := range []struct {
		body string
		want string // "" for no error
	}{
		{"time,device,metric,value\n2026-12-01T00:00:00.000Z,d,m,1\n", ""},
		{"time,device,metric,value\n2026-12-01T00:00:00.000Z,d,m,1\n# truncated at 1000000 rows\n", "cut short: truncated at 1000000 rows"},
		{"time,device,metric,value\n# error: influxdb: timeout\n", "broke off: error: influxdb: timeout"},
		{`{"ts":1,"device":"d","metric":"m","value":1}` + "\n" + `{"truncated":true}` + "\n", "cut short"},
		{`{"ts":1,"device":"d","metric":"m","value":1}` + "\n" + `{"error":"influxdb: timeout"}` + "\n", "broke off"},
		{`{"ts":1,"device":"d","metric":"m","value":"# error: a string value"}` + "\n", ""},
		{"", ""},
	} {
		var sink strings.Builder
		ll := &lastLine{w: &sink}
		for _, chunk := range strings.SplitAfter(tt.body, "0") { // lines split across writes
			_, _ = ll.Write([]byte(chunk))
		}
		err := exportTrailer(ll.last)
		if sink.String() != tt.body || (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%q: err %v, want %q", tt.body, err, tt.want)
		}
	}
}

func TestNaturalLess(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		less bool
	}{
		{"sim-2", "sim-10", true},
		{"sim-10", "sim-2", false},
		{"sim-2", "sim-2", false},
		{"sim-02", "sim-3", true},
		{"sim-2a", "sim-2b", true},
		{"pump", "pump-1", true},
		{"a10b2", "a10b10", true},
		{"b", "a100", false},
		{"99999999999999999999", "100000000000000000000", true},
	} {
		if got := naturalLess(tt.a, tt.b); got != tt.less {
			t.Errorf("naturalLess(%q, %q) = %v", tt.a, tt.b, got)
		}
	}
}
