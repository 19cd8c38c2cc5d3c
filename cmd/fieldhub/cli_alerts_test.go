package main

import (
	"encoding/json"
	"flag"
	"io"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

// ruleBodyOf parses args as `alert rule create` does and returns the
// rule body it would send, or the usage error.
func ruleBodyOf(t *testing.T, args ...string) (map[string]any, error) {
	t.Helper()
	var create cliCommand
	for _, c := range alertCommands() {
		if c.group == "alert rule" && c.name == "create" {
			create = c
		}
	}
	f := &cliFlags{labels: labelsFlag{}, set: map[string]bool{}}
	fs := flag.NewFlagSet("alert rule create", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	create.flags(fs, f)
	fs.BoolVar(&f.json, "json", false, "")
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	fs.Visit(func(fl *flag.Flag) { f.set[fl.Name] = true })
	raw, err := alertRuleBody(f, fs.Args())
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("body is not JSON: %v\n%s", err, raw)
	}
	return m, nil
}

// TestCLIAlertRuleBody: every condition's flags make the contract's rule
// body (docs/protocol.md "Alerts"), and flags that do not fit the
// condition are usage errors before anything is sent.
func TestCLIAlertRuleBody(t *testing.T) {
	tests := []struct {
		args    []string
		want    string // the body as JSON, or "" for a usage error
		wantErr string
	}{
		{args: []string{"--name", "hot pumps", "--severity", "critical", "--devices", "pump-1, pump-2", "--label", "site=north", "--threshold", "temp > 80", "--for", "30s", "--clear", "75"},
			want: `{"name":"hot pumps","severity":"critical","selector":{"devices":["pump-1","pump-2"],"labels":{"site":"north"}},"condition":{"type":"threshold","metric":"temp","op":">","value":80,"for":"30s","clear":75}}`},
		{args: []string{"--name", "cold", "--threshold", "temp<=-5.5"},
			want: `{"name":"cold","severity":"warning","selector":{},"condition":{"type":"threshold","metric":"temp","op":"<=","value":-5.5}}`},
		{args: []string{"--name", "door", "--threshold", "door != 1"},
			want: `{"name":"door","severity":"warning","selector":{},"condition":{"type":"threshold","metric":"door","op":"!=","value":1}}`},
		{args: []string{"--name", "gone", "--offline", "5m"},
			want: `{"name":"gone","severity":"warning","selector":{},"condition":{"type":"offline","for":"5m"}}`},
		{args: []string{"--name", "quiet", "--no-data", "temp", "--for", "10m"},
			want: `{"name":"quiet","severity":"warning","selector":{},"condition":{"type":"no_data","metric":"temp","for":"10m"}}`},
		{args: []string{"--name", "noisy", "--rejections", "10", "--window", "5m"},
			want: `{"name":"noisy","severity":"warning","selector":{},"condition":{"type":"rejections","count":10,"window":"5m"}}`},
		{args: []string{"--name", "lossy", "--gaps", "5"},
			want: `{"name":"lossy","severity":"warning","selector":{},"condition":{"type":"gaps","count":5}}`},
		{args: []string{"--name", "x", "--gaps", "5", "--for", "1m"}, wantErr: "--for does not go with --gaps"},
		{args: []string{"--json", `{"name":"raw","condition":{"type":"offline","for":"1m"}}`},
			want: `{"name":"raw","condition":{"type":"offline","for":"1m"}}`},
		{args: []string{"--name", "x"}, wantErr: "exactly one condition"},
		{args: []string{"--name", "x", "--offline", "5m", "--threshold", "t > 1"}, wantErr: "exactly one condition"},
		{args: []string{"--name", "x", "--threshold", "temp above 80"}, wantErr: "is not 'METRIC OP VALUE'"},
		{args: []string{"--name", "x", "--threshold", "temp > hot"}, wantErr: "is not a number"},
		{args: []string{"--name", "x", "--threshold", "temp > 1", "--clear", "lukewarm"}, wantErr: "--clear"},
		{args: []string{"--name", "x", "--threshold", "temp > 1", "--window", "5m"}, wantErr: "--window does not go with --threshold"},
		{args: []string{"--name", "x", "--offline", "5m", "--for", "1m"}, wantErr: "--for does not go with --offline"},
		{args: []string{"--name", "x", "--no-data", "temp"}, wantErr: "--no-data needs --for"},
		{args: []string{"--name", "x", "--rejections", "3"}, wantErr: "--rejections needs --window"},
		{args: []string{"--name", "x", "--rejections", "3", "--window", "1m", "--clear", "2"}, wantErr: "--clear does not go with --rejections"},
		{args: []string{"--json", `[1]`}, wantErr: "must be a JSON object"},
		{args: []string{"--name", "x", "--json", `{"name":"y"}`}, wantErr: "not both"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got, err := ruleBodyOf(t, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || exitCode(err) != exitUsage {
					t.Fatalf("error %v (exit %d), want a usage error with %q", err, exitCode(err), tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want map[string]any
			if err := json.Unmarshal([]byte(tt.want), &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				gb, _ := json.Marshal(got)
				t.Fatalf("body\n %s\nwant\n %s", gb, tt.want)
			}
		})
	}
}

// TestCLIAlertUsage: help and usage errors of the alert commands, without
// a hub (nothing listens at FIELDHUB_URL, and nothing is sent).
func TestCLIAlertUsage(t *testing.T) {
	env := map[string]string{"FIELDHUB_TOKEN": "fho_x", "FIELDHUB_URL": "http://" + freePort(t)}
	tests := []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{args: []string{"--help"}, stdout: "alert "},
		{args: []string{"alert", "--help"}, stdout: "rule create [BODY]"},
		{args: []string{"alert", "rule", "--help"}, stdout: "Usage: fieldhub alert rule <subcommand>"},
		{args: []string{"alert", "rule", "create", "--help"}, stdout: "--threshold 'METRIC OP VALUE'"},
		{args: []string{"alert", "rule"}, code: exitUsage, stderr: "missing subcommand"},
		{args: []string{"alert", "rule", "frob"}, code: exitUsage, stderr: `unknown command "alert rule frob"`},
		{args: []string{"alert", "rule", "delete"}, code: exitUsage, stderr: "missing ID"},
		{args: []string{"alert", "ack"}, code: exitUsage, stderr: "missing ID"},
		{args: []string{"alert", "list", "--state", "burning"}, code: exitUsage, stderr: "--state must be pending, firing or resolved"},
		{args: []string{"alert", "list", "--limit", "5000"}, code: exitUsage, stderr: "--limit"},
		{args: []string{"alert", "silence", "--for", "1h"}, code: exitUsage, stderr: "--rule ID and/or --device ID"},
		{args: []string{"alert", "silence", "--device", "d"}, code: exitUsage, stderr: "either --for DURATION or --until TIME"},
		{args: []string{"alert", "list"}, code: exitUnreachable, stderr: "cannot reach the hub"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := cliRun(t, env, tt.args...)
			if code != tt.code || !strings.Contains(stdout, tt.stdout) || !strings.Contains(stderr, tt.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout, stderr)
			}
			if tt.code != 0 && stdout != "" {
				t.Fatalf("stdout not empty on error:\n%s", stdout)
			}
		})
	}
}

// TestCLIAlertsAgainstHub drives the alert commands against a running hub
// as a script would: a rule from flags and one from JSON, the refusal of a
// bad rule with the hub's message and exit 2, a reading that fires the
// threshold rule, listing, acknowledging (twice: the note is replaced, a
// viewer is refused), silencing, and deleting the rule, which resolves its
// alert.
func TestCLIAlertsAgainstHub(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	admin := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.adminToken}
	viewer := map[string]string{"FIELDHUB_URL": h.url, "FIELDHUB_TOKEN": h.token(t, "viewer")}
	ok := func(t *testing.T, env map[string]string, args ...string) string {
		t.Helper()
		code, stdout, stderr := cliRun(t, env, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", args, code, stdout, stderr)
		}
		return stdout
	}
	tok := h.createDevice(t, "tank-1")

	var created struct {
		Rule struct {
			ID        string         `json:"id"`
			Condition map[string]any `json:"condition"`
		} `json:"rule"`
	}
	out := ok(t, admin, "alert", "rule", "create", "--name", "hot tanks", "--severity", "critical", "--devices", "tank-1", "--threshold", "temp > 80", "--clear", "75", "--json")
	if err := json.Unmarshal([]byte(out), &created); err != nil || !strings.HasPrefix(created.Rule.ID, "rule-") || created.Rule.Condition["clear"] != 75.0 {
		t.Fatalf("rule create --json: %v\n%s", err, out)
	}
	if out := ok(t, admin, "alert", "rule", "create", "--offline", "5m", "--name", "gone"); !strings.Contains(out, "offline for 5m") || !strings.Contains(out, "every device") {
		t.Fatalf("rule create table:\n%s", out)
	}
	if code, stdout, stderr := cliRun(t, admin, "alert", "rule", "create", "--name", "bad", "--threshold", "temp > 80", "--clear", "90"); code != exitUsage || stdout != "" || !strings.Contains(stderr, "condition.clear") {
		t.Fatalf("bad rule: exit %d %q %q", code, stdout, stderr)
	}
	if code, _, stderr := cliRun(t, viewer, "alert", "rule", "create", "--name", "x", "--offline", "1m"); code != exitAuth {
		t.Fatalf("viewer creating a rule: exit %d %s", code, stderr)
	}
	rules := ok(t, viewer, "alert", "rule", "list")
	if !regexp.MustCompile(`(?s)^ID .*gone .*offline for 5m.*hot tanks .*critical .*temp > 80, clear 75 .*tank-1`).MatchString(rules) {
		t.Fatalf("rule list (by name):\n%s", rules)
	}

	if st, m := postReadings(t, h, tok, map[string]any{"readings": []map[string]any{{"ts": time.Now().UnixMilli(), "metrics": map[string]any{"temp": 91.5}}}}); st != 200 {
		t.Fatalf("reading: %d %v", st, m)
	}
	var list struct {
		Alerts []struct{ ID, State, Device, AcknowledgedBy string } `json:"alerts"`
	}
	waitUntil(t, "the alert firing", loadWait, func() bool {
		code, stdout, _ := cliRun(t, viewer, "alert", "list", "--state", "firing", "--device", "tank-1", "--json")
		return code == 0 && json.Unmarshal([]byte(stdout), &list) == nil && len(list.Alerts) == 1
	})
	id := list.Alerts[0].ID
	if table := ok(t, viewer, "alert", "list"); !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(id) + ` +firing +critical +tank-1 +hot tanks .* 91\.5 +- +temp`).MatchString(table) {
		t.Fatalf("alert list table:\n%s", table)
	}
	if code, _, _ := cliRun(t, viewer, "alert", "ack", id, "--note", "x"); code != exitAuth {
		t.Fatalf("viewer ack: exit %d", code)
	}
	if out := ok(t, admin, "alert", "ack", id, "--note", "draining it"); !strings.Contains(out, "draining it") || !strings.Contains(out, "firing") {
		t.Fatalf("ack:\n%s", out)
	}
	if code, _, stderr := cliRun(t, admin, "alert", "ack", "alert-none"); code != exitNotFound {
		t.Fatalf("ack of an unknown alert: exit %d %s", code, stderr)
	}
	if out := ok(t, admin, "alert", "silence", "--device", "tank-1", "--for", "1h", "--note", "maintenance"); !strings.Contains(out, "sil-") || !strings.Contains(out, "tank-1") {
		t.Fatalf("silence:\n%s", out)
	}
	waitUntil(t, "the alert shown silenced", loadWait, func() bool {
		_, stdout, _ := cliRun(t, viewer, "alert", "list", "--device", "tank-1")
		return strings.Contains(stdout, "firing (silenced)")
	})
	ok(t, admin, "alert", "rule", "delete", created.Rule.ID)
	waitUntil(t, "the alert resolved by the rule's deletion", loadWait, func() bool {
		code, stdout, _ := cliRun(t, viewer, "alert", "list", "--state", "resolved", "--json")
		return code == 0 && json.Unmarshal([]byte(stdout), &list) == nil && len(list.Alerts) == 1 && list.Alerts[0].ID == id
	})
	if code, _, _ := cliRun(t, admin, "alert", "ack", id); code != exitConflict {
		t.Fatalf("ack of a resolved alert: exit %d, want %d", code, exitConflict)
	}
	if code, _, _ := cliRun(t, admin, "alert", "rule", "delete", created.Rule.ID); code != exitNotFound {
		t.Fatalf("second delete: exit %d", code)
	}
}
