package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// TestCLIStateUsage checks the state commands' help and usage errors
// without a hub: exit 2 and nothing printed on stdout.
func TestCLIStateUsage(t *testing.T) {
	env := map[string]string{"FIELDHUB_TOKEN": "fho_state-usage", "FIELDHUB_URL": "http://" + freePort(t)} // nothing listens there
	for _, tt := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"device", "--help"}, 0, "state set ID [key=value ...]", ""},
		{[]string{"device", "state", "get", "--help"}, 0, "Usage: fieldhub device state get ID [flags]", ""},
		{[]string{"device", "state", "set", "--help"}, 0, "--if-match VERSION", ""},
		{[]string{"device", "state", "get"}, exitUsage, "", "missing ID"},
		{[]string{"device", "state", "frob", "d-1"}, exitUsage, "", `unknown command "device state frob"`},
		{[]string{"device", "state", "set", "d-1"}, exitUsage, "", "nothing to change"},
		{[]string{"device", "state", "set", "d-1", "interval"}, exitUsage, "", `"interval" is not key=value`},
		{[]string{"device", "state", "set", "d-1", "=5"}, exitUsage, "", `"=5" is not key=value`},
		{[]string{"device", "state", "set", "d-1", "--patch", "[1]"}, exitUsage, "", "--patch must be a JSON object"},
		{[]string{"device", "state", "set", "d-1", "a=1", "--if-match", "x"}, exitUsage, "", "invalid value"},
		{[]string{"device", "state", "set", "d-1", "a=1", "--if-match", "-1"}, exitUsage, "", "--if-match must be a version"},
		{[]string{"device", "state", "get", "d-1"}, exitUnreachable, "", "cannot reach the hub"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := cliRun(t, env, tt.args...)
			if code != tt.code || !strings.Contains(stdout, tt.stdout) || !strings.Contains(stderr, tt.stderr) || (tt.code != 0 && stdout != "") {
				t.Errorf("exit %d (want %d)\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout, stderr)
			}
		})
	}
}

// TestStatePatchArgs: key=value arguments are JSON when they parse, else
// strings, and win over --patch.
func TestStatePatchArgs(t *testing.T) {
	for _, tt := range []struct {
		patch string
		args  []string
		want  string
	}{
		{"", []string{"interval=5"}, `{"interval":5}`},
		{"", []string{"mode=eco", "on=true", "s=\"5\"", "gone=null", "net={\"a\":1}", "empty="}, `{"empty":"","gone":null,"mode":"eco","net":{"a":1},"on":true,"s":"5"}`},
		{`{"a":1,"b":{"c":2}}`, []string{"a=2"}, `{"a":2,"b":{"c":2}}`},
		{"", []string{"url=http://x/?a=b"}, `{"url":"http://x/?a=b"}`},
	} {
		b, err := statePatch(tt.patch, tt.args)
		if err != nil || string(b) != tt.want {
			t.Errorf("statePatch(%q, %q) = %s, %v; want %s", tt.patch, tt.args, b, err, tt.want)
		}
	}
}

// TestCLIState drives `device state get|set` against a running hub: the
// table and JSON, a stale --if-match refused with the conflict exit code,
// the device reporting back emptying the delta, and each refusal's code.
func TestCLIState(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	op := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.token(t, "operator")}
	viewer := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.token(t, "viewer")}
	devToken := h.createDevice(t, "pump-1")
	ok := func(env map[string]string, args ...string) string {
		t.Helper()
		code, stdout, stderr := cliRun(t, env, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", args, code, stdout, stderr)
		}
		return stdout
	}

	if out := ok(viewer, "device", "state", "get", "pump-1"); !strings.Contains(out, "(reported version 0, desired version 0, 0 out of sync)") {
		t.Fatalf("a device never written:\n%s", out)
	}
	// Without --if-match: the version is read first.
	out := ok(op, "device", "state", "set", "pump-1", "interval=5", "mode=eco")
	if !regexp.MustCompile(`interval\s+-\s+5\s+OUT OF SYNC`).MatchString(out) || !regexp.MustCompile(`mode\s+-\s+"eco"\s+OUT OF SYNC`).MatchString(out) ||
		!strings.Contains(out, "desired version 1, 2 out of sync") {
		t.Fatalf("set:\n%s", out)
	}
	var v stateView
	if err := json.Unmarshal([]byte(ok(op, "device", "state", "set", "pump-1", "--patch", `{"mode":null}`, "--json")), &v); err != nil ||
		v.Desired.Version != 2 || len(v.Desired.State) != 1 || string(v.Desired.State["interval"]) != "5" || v.Desired.UpdatedAt["interval"] == "" {
		t.Fatalf("set --json: %+v %v", v, err)
	}
	// A stale version: refused, exit 5, nothing changed, and it says so.
	code, stdout, stderr := cliRun(t, op, "device", "state", "set", "pump-1", "interval=9", "--if-match", "1")
	if code != exitConflict || stdout != "" || !strings.Contains(stderr, "someone else changed it") || !strings.Contains(stderr, "412") {
		t.Fatalf("stale --if-match: exit %d %q %q", code, stdout, stderr)
	}
	if out := ok(op, "device", "state", "set", "pump-1", "interval=7", "--if-match", "2"); !strings.Contains(out, "desired version 3") {
		t.Fatalf("--if-match of the current version:\n%s", out)
	}
	// The device reports it: in sync.
	if st, m := h.api(t, "PATCH", "/api/v1/state/reported", devToken, map[string]any{"interval": 7, "firmware": "1.2"}); st != 200 {
		t.Fatalf("reported: %d %v", st, m)
	}
	out = ok(viewer, "device", "state", "get", "pump-1")
	if !regexp.MustCompile(`interval\s+7\s+7\s+in sync`).MatchString(out) || !regexp.MustCompile(`firmware\s+"1.2"\s+-\s+-`).MatchString(out) ||
		!strings.Contains(out, "(reported version 1, desired version 3, 0 out of sync)") {
		t.Fatalf("after the report:\n%s", out)
	}

	for _, r := range []struct {
		env  map[string]string
		args []string
		code int
		want string
	}{
		{viewer, []string{"device", "state", "set", "pump-1", "a=1"}, exitAuth, "403"},
		{op, []string{"device", "state", "get", "ghost"}, exitNotFound, "404"},
		{op, []string{"device", "state", "set", "ghost", "a=1"}, exitNotFound, "404"},
		{op, []string{"device", "state", "set", "ghost", "a=1", "--if-match", "0"}, exitNotFound, "404"},
		{op, []string{"device", "state", "set", "pump-1", "bad key!=1"}, exitUsage, "desired.bad key!"},
	} {
		code, stdout, stderr := cliRun(t, r.env, r.args...)
		if code != r.code || stdout != "" || !strings.Contains(stderr, r.want) {
			t.Errorf("%v: exit %d (want %d), stdout %q, stderr %q (want %q)", r.args, code, r.code, stdout, stderr, r.want)
		}
	}
}
