package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
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
		{args: []string{"version"}, stdout: []string{"fieldhub ", "revision", "go1."}},
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
		code, stdout, stderr := cliRun(t, map[string]string{"FIELDHUB_TOKEN": secret}, c.group, c.name, "--help")
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
