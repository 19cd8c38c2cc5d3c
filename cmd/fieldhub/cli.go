package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Exit codes of the fieldhub command, documented in docs/protocol.md
// ("The command line") so that scripts can branch on them.
const (
	exitOK            = 0
	exitFailure       = 1 // anything not below: the hub answered 5xx or 429, a file could not be read
	exitUsage         = 2 // unknown command, bad flag or argument, or input the hub refused (400, 413); nothing changed
	exitAuth          = 3 // no token, a wrong or revoked token (401), or a role too low (403)
	exitNotFound      = 4 // no such device, token or command (404)
	exitConflict      = 5 // the device exists, or the command was already sent (409)
	exitUnreachable   = 6 // the hub could not be reached (connection refused, timeout, DNS)
	exitCommandFailed = 7 // command send --wait: the command ended failed, timed_out, expired or cancelled
	exitPending       = 8 // command send --wait: the command was still queued or sent when the wait ended
)

// exitError carries the exit code main should use for an error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErr is an error in how the command was called: exit code 2.
func usageErr(format string, a ...any) error {
	return &exitError{exitUsage, fmt.Errorf(format, a...)}
}

// exitCode maps an error of run to the process exit code.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ae *apiErr
	if errors.As(err, &ae) {
		switch ae.Status {
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			return exitUsage
		case http.StatusUnauthorized, http.StatusForbidden:
			return exitAuth
		case http.StatusNotFound:
			return exitNotFound
		case http.StatusConflict:
			return exitConflict
		}
		return exitFailure
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || (errors.As(err, &ne) && ne.Timeout()) {
		return exitUnreachable
	}
	return exitFailure
}

// client talks to a hub's REST API for the admin subcommands.
type client struct {
	base, token string
	http        *http.Client
}

// apiErr is an error answer of the REST API.
type apiErr struct {
	Status  int
	Code    string
	Message string
}

func (e *apiErr) Error() string { return fmt.Sprintf("%s (HTTP %d): %s", e.Code, e.Status, e.Message) }

// do sends one request; out, when not nil, receives the JSON answer (a
// *json.RawMessage gets the bytes as they came).
func (c *client) do(ctx context.Context, method, path string, body io.Reader, contentType string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the hub at %s (FIELDHUB_URL or --url): %s %s: %w", c.base, method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read answer of %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error.Code != "" {
			return &apiErr{resp.StatusCode, e.Error.Code, e.Error.Message}
		}
		return &apiErr{resp.StatusCode, "http_error", strings.TrimSpace(string(data))}
	}
	if out != nil && len(data) > 0 {
		if raw, ok := out.(*json.RawMessage); ok {
			*raw = data
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode answer of %s %s: %w", method, path, err)
		}
	}
	return nil
}

// stream GETs path and copies a successful answer's body into w as it
// comes; an error answer is returned as for do, with nothing written.
func (c *client) stream(ctx context.Context, path string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the hub at %s (FIELDHUB_URL or --url): GET %s: %w", c.base, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error.Code != "" {
			return &apiErr{resp.StatusCode, e.Error.Code, e.Error.Message}
		}
		return &apiErr{resp.StatusCode, "http_error", strings.TrimSpace(string(data))}
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("GET %s: the answer broke off: %w", path, err)
	}
	return nil
}

// lastLine keeps the last line written through it (at most 4 KiB of it),
// for the trailer an export ends with when it was cut short.
type lastLine struct {
	w    io.Writer
	line []byte // the current line, up to 4 KiB
	last []byte // the last complete line
}

func (l *lastLine) Write(p []byte) (int, error) {
	for rest := p; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			l.line = appendMax(l.line, rest, 4096)
			break
		}
		l.line = appendMax(l.line, rest[:i], 4096)
		l.last, l.line = append(l.last[:0], l.line...), l.line[:0]
		rest = rest[i+1:]
	}
	return l.w.Write(p)
}

func appendMax(dst, src []byte, n int) []byte {
	if room := n - len(dst); len(src) > room {
		src = src[:max(room, 0)]
	}
	return append(dst, src...)
}

func jsonBody(v any) io.Reader {
	b, _ := json.Marshal(v) // maps, strings and raw JSON: cannot fail
	return bytes.NewReader(b)
}

// labelsFlag collects repeated --label key=value.
type labelsFlag map[string]string

func (l labelsFlag) String() string { return "" }
func (l labelsFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return errors.New("want key=value")
	}
	l[k] = val
	return nil
}

// listFlag collects a repeated string flag.
type listFlag []string

func (l *listFlag) String() string     { return "" }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// cliFlags holds every flag any admin command has; each command registers
// only those it uses (cliCommand.flags), so its --help lists only them.
type cliFlags struct {
	url, token   string
	json         bool
	name, role   string
	grace        time.Duration
	online       string
	params       string
	wait         time.Duration
	ttl, timeout time.Duration
	labels       labelsFlag
	removeLabels listFlag
	clearLabels  bool
	set          map[string]bool // the flags given on the command line
	limit        int
	metrics      listFlag
	start, stop  string
	format       string
	output       string
	alert        alertFlags // the alert commands' (cli_alerts.go)
}

// cliEnv is what a command's run function works with.
type cliEnv struct {
	c      *client
	f      *cliFlags
	stdout io.Writer
}

// printJSON writes an API answer indented, so scripts and people read the same.
func (e *cliEnv) printJSON(raw []byte) error {
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		return fmt.Errorf("answer is not JSON: %w", err)
	}
	out.WriteByte('\n')
	_, err := e.stdout.Write(out.Bytes())
	return err
}

func (e *cliEnv) printValue(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return e.printJSON(b)
}

// table writes rows through a tabwriter into stdout once they are all
// known, so an error never leaves a header behind it.
func (e *cliEnv) table(rows [][]string) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			// Anything a device or an operator typed is shown, never
			// obeyed: escapes and line breaks come out as \x1b, \n.
			cells[i] = telemetry.Printable(c)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := e.stdout.Write(buf.Bytes())
	return err
}

// cliCommand is one admin subcommand: how it is called, its own flags
// and what it does.
type cliCommand struct {
	group, name string
	args        string // positional arguments of the usage line, e.g. "DEVICE CMD"
	min, max    int    // how many positional arguments it takes
	summary     string // one line for the group's list
	help        string // what it does, for its --help
	flags       func(fs *flag.FlagSet, f *cliFlags)
	run         func(ctx context.Context, e *cliEnv, pos []string) error
}

func (c cliCommand) usageLine() string {
	s := "fieldhub " + c.group + " " + c.name
	if c.args != "" {
		s += " " + c.args
	}
	return s + " [flags]"
}

// cliGroup is a command word such as `device` and what it is about.
type cliGroup struct{ name, summary string }

func cliGroups() []cliGroup {
	return []cliGroup{
		{"device", "manage devices: create, list, get, metrics, export, rejections, update, rotate, delete, import, state"},
		{"token", "manage operator API tokens: create, list, revoke"},
		{"command", "send commands to devices and follow them: send, list, get, cancel"},
		{"alert", "alerts and their rules: list, ack, silence; rule create, list, delete"},
	}
}

const topUsage = `Usage: fieldhub <command> [flags]

Commands:
  serve     run the hub (fieldhub serve --help lists every setting)
%s  version   print the version and the source revision it was built from
  help      this text; 'fieldhub help device create' is 'fieldhub device create --help'

The admin commands talk to the REST API at FIELDHUB_URL (default
http://127.0.0.1:8080) with the operator token in FIELDHUB_TOKEN.
Run 'fieldhub <command> --help' for its subcommands, and
'fieldhub <command> <subcommand> --help' for their flags.
Exit codes: 0 ok, 1 failure, 2 usage or refused input, 3 unauthorized or
forbidden, 4 not found, 5 conflict, 6 hub unreachable, 7 command ended
unsuccessfully, 8 command still pending (see docs/protocol.md).
`

func writeTopUsage(w io.Writer) {
	var groups strings.Builder
	for _, g := range cliGroups() {
		fmt.Fprintf(&groups, "  %-9s %s\n", g.name, g.summary)
	}
	fmt.Fprintf(w, topUsage, groups.String())
}

func writeGroupUsage(w io.Writer, group string) {
	fmt.Fprintf(w, "Usage: fieldhub %s <subcommand> [flags]\n\nSubcommands:\n", group)
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	for _, c := range cliCommands() {
		// `alert --help` lists the `alert rule` subcommands too.
		if name, ok := strings.CutPrefix(c.group+" "+c.name, group+" "); ok {
			fmt.Fprintf(tw, "  %s %s\t%s\n", name, c.args, c.summary)
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nRun 'fieldhub %s <subcommand> --help' for its flags.\n", group)
}

// writeFlags lists a flag set as --name ARG and its usage, without
// defaults that could be secrets: the token's default is never shown.
func writeFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		if _, isBool := f.Value.(interface{ IsBoolFlag() bool }); isBool {
			arg = ""
		}
		head := "  --" + f.Name
		if arg != "" {
			head += " " + arg
		}
		fmt.Fprintf(w, "%s\n        %s\n", head, usage)
	})
}

// adminCLI runs `fieldhub <group> ...`: help, flag parsing and the command.
func adminCLI(ctx context.Context, group string, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		writeGroupUsage(stderr, group)
		return usageErr("%s: missing subcommand", group)
	}
	if group == "alert" && args[0] == "rule" { // a group of its own: alert rule create|list|delete
		return adminCLI(ctx, "alert rule", args[1:], getenv, stdout, stderr)
	}
	sub, args := args[0], args[1:]
	if group == "device" && sub == "state" && len(args) > 0 { // two-word subcommands: device state get|set
		sub, args = sub+" "+args[0], args[1:]
	}
	switch sub {
	case "-h", "-help", "--help", "help":
		writeGroupUsage(stdout, group)
		return nil
	}
	var cmd *cliCommand
	for _, c := range cliCommands() {
		if c.group == group && c.name == sub {
			cmd = &c
			break
		}
	}
	if cmd == nil {
		writeGroupUsage(stderr, group)
		return usageErr("unknown command %q", group+" "+sub)
	}
	f := &cliFlags{labels: labelsFlag{}, set: map[string]bool{}}
	fs := flag.NewFlagSet(cmd.group+" "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if cmd.flags != nil {
		cmd.flags(fs, f)
	}
	fs.BoolVar(&f.json, "json", false, "print JSON (the REST API's shapes, indented) instead of a table")
	fs.StringVar(&f.url, "url", "", "hub base `URL` (default: $FIELDHUB_URL, else http://127.0.0.1:8080)")
	fs.StringVar(&f.token, "token", "", "operator API `TOKEN` (default: $FIELDHUB_TOKEN; prefer the variable, a flag shows in ps)")
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: %s\n\n%s\n\nFlags:\n", cmd.usageLine(), cmd.help)
		writeFlags(w, fs)
	}
	// Flags may come before or after positional arguments.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				usage(stdout)
				return nil
			}
			usage(stderr)
			return usageErr("%s %s: %v", cmd.group, cmd.name, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos, args = append(pos, args[0]), args[1:]
	}
	fs.Visit(func(fl *flag.Flag) { f.set[fl.Name] = true })
	if len(pos) < cmd.min {
		usage(stderr)
		return usageErr("%s %s: missing %s", cmd.group, cmd.name, strings.Fields(cmd.args)[len(pos)])
	}
	if len(pos) > cmd.max {
		usage(stderr)
		return usageErr("%s %s: unexpected argument %q", cmd.group, cmd.name, pos[cmd.max])
	}
	if f.url == "" {
		f.url = getenv("FIELDHUB_URL")
	}
	if f.url == "" {
		f.url = "http://127.0.0.1:8080"
	}
	if u, err := url.Parse(f.url); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageErr("hub URL %q (FIELDHUB_URL or --url) is not an http(s) URL", f.url)
	}
	if f.token == "" {
		f.token = getenv("FIELDHUB_TOKEN")
	}
	if f.token == "" {
		return &exitError{exitAuth, errors.New("no API token: set FIELDHUB_TOKEN (or pass --token)")}
	}
	e := &cliEnv{
		c:      &client{base: strings.TrimRight(f.url, "/"), token: f.token, http: &http.Client{Timeout: 90 * time.Second}},
		f:      f,
		stdout: stdout,
	}
	return cmd.run(ctx, e, pos)
}

// The flags commands share.
func nameFlag(fs *flag.FlagSet, f *cliFlags) {
	fs.StringVar(&f.name, "name", "", "display `NAME`")
}
func labelFlag(fs *flag.FlagSet, f *cliFlags) {
	fs.Var(f.labels, "label", "label `key=value` (repeatable)")
}

func devPath(id string, rest ...string) string {
	p := "/api/v1/devices/" + url.PathEscape(id)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

func since(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return time.Since(*t).Round(time.Second).String() + " ago"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// clip shortens s to n runes for a table cell.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// cliCommands is the table of admin subcommands.
func cliCommands() []cliCommand {
	return append([]cliCommand{
		{
			group: "device", name: "create", args: "ID", min: 1, max: 1,
			summary: "register a device; prints its token once",
			help:    "Registers device ID (letters, digits, '_', '.', '-'; at most 64) and prints its token once: store it now.",
			flags:   func(fs *flag.FlagSet, f *cliFlags) { nameFlag(fs, f); labelFlag(fs, f) },
			run:     deviceCreate,
		},
		{
			group: "device", name: "list", max: 0,
			summary: "list devices, their presence and rejections",
			help:    "Lists every device (all pages), in id order.",
			flags: func(fs *flag.FlagSet, f *cliFlags) {
				fs.Var(f.labels, "label", "only devices with label `key=value` (repeatable: all must match)")
				fs.StringVar(&f.online, "online", "", "only online (`true`) or offline (false) devices")
			},
			run: deviceList,
		},
		{
			group: "device", name: "get", args: "ID", min: 1, max: 1,
			summary: "print one device as JSON",
			help:    "Prints device ID as the REST API has it (JSON).",
			run:     deviceGet,
		},
		{
			group: "device", name: "rejections", args: "ID", min: 1, max: 1,
			summary: "why the hub refused the device's last messages",
			help:    "Lists the last 50 messages of device ID the hub refused, newest first: when, over which transport,\nthe error code, the first field path and the message.",
			run:     deviceRejections,
		},
		{
			group: "device", name: "metrics", args: "ID", min: 1, max: 1,
			summary: "the device's metrics: name, type, first and last point",
			help:    "Lists device ID's metrics from the hub's schema and InfluxDB: name, type, first and last point.",
			run:     deviceMetrics,
		},
		{
			group: "device", name: "export", args: "ID", min: 1, max: 1,
			summary: "raw points of one or several metrics as CSV or JSON lines",
			help: "Writes the raw points of device ID's metrics in time order, as CSV (time,device,metric,value) or\n" +
				"JSON lines, streamed from the hub. At most 1,000,000 rows: a cut-short export (too many rows, or\n" +
				"InfluxDB failing midway) exits 1 and says so; with --output the file is written only when complete.",
			flags: func(fs *flag.FlagSet, f *cliFlags) {
				fs.Var(&f.metrics, "metric", "the metric `NAME` (repeatable, at most 16; required)")
				fs.StringVar(&f.start, "start", "-1h", "from `TIME`: -15m, RFC 3339, a date (2026-12-01) or unix ms")
				fs.StringVar(&f.stop, "stop", "now", "until `TIME`, as --start")
				fs.StringVar(&f.format, "format", "csv", "`FORMAT`: csv or jsonl")
				fs.StringVar(&f.output, "output", "", "write to `FILE` (only once complete) instead of stdout")
			},
			run: deviceExport,
		},
		{
			group: "device", name: "update", args: "ID", min: 1, max: 1,
			summary: "change a device's name or labels",
			help: "Changes device ID's name and labels (PATCH /api/v1/devices/{id}). --label sets one label and keeps\n" +
				"the others; --remove-label drops one; --clear-labels drops all first, so\n" +
				"'--clear-labels --label a=b' leaves exactly a=b. Its token is unchanged.",
			flags: func(fs *flag.FlagSet, f *cliFlags) {
				nameFlag(fs, f)
				fs.Var(f.labels, "label", "set label `key=value` (repeatable)")
				fs.Var(&f.removeLabels, "remove-label", "remove the label `key` (repeatable)")
				fs.BoolVar(&f.clearLabels, "clear-labels", false, "remove every label before applying --label")
			},
			run: deviceUpdate,
		},
		{
			group: "device", name: "rotate", args: "ID", min: 1, max: 1,
			summary: "issue a new token; prints it once",
			help:    "Issues device ID a new token and prints it once. Without --grace the old token stops at once.",
			flags: func(fs *flag.FlagSet, f *cliFlags) {
				fs.DurationVar(&f.grace, "grace", 0, "how long the old token keeps working (`DURATION`, e.g. 1h)")
			},
			run: deviceRotate,
		},
		{
			group: "device", name: "delete", args: "ID", min: 1, max: 1,
			summary: "delete a device; its sessions close",
			help:    "Deletes device ID; its connections close within a second. Its data stays in InfluxDB.",
			run:     deviceDelete,
		},
		{
			group: "device", name: "import", args: "FILE", min: 1, max: 1,
			summary: "bulk create from CSV or JSON lines; prints id,token",
			help: "Creates every device in FILE, all or none: CSV with a header id[,name,labels] (labels k=v;k2=v2),\n" +
				"or JSON lines {\"id\",\"name\",\"labels\"}; '-' reads stdin. Prints id,token CSV (or --json).",
			run: deviceImport,
		},
		{
			group: "token", name: "create", args: "NAME", min: 1, max: 1,
			summary: "create an operator token; prints it once",
			help:    "Creates an operator API token called NAME and prints its secret once.",
			flags: func(fs *flag.FlagSet, f *cliFlags) {
				fs.StringVar(&f.role, "role", "viewer", "`ROLE`: viewer, operator or admin")
			},
			run: tokenCreate,
		},
		{
			group: "token", name: "list", max: 0,
			summary: "list operator tokens (never their secrets)",
			help:    "Lists operator API tokens: id, name, role, when created and last used.",
			run:     tokenList,
		},
		{
			group: "token", name: "revoke", args: "ID", min: 1, max: 1,
			summary: "revoke a token; its sessions end",
			help:    "Revokes operator token ID (the id from 'token list', not the secret); its sessions end within a second.",
			run:     tokenRevoke,
		},
		{
			group: "command", name: "send", args: "DEVICE NAME", min: 2, max: 2,
			summary: "send a command, optionally waiting for its result",
			help: "Queues command NAME for DEVICE. With --wait it waits for the final status: exit code 0 when it\n" +
				"succeeded, 7 when it failed, timed out, expired or was cancelled, 8 when still pending.",
			flags: func(fs *flag.FlagSet, f *cliFlags) {
				fs.StringVar(&f.params, "params", "{}", "command params, a JSON `OBJECT`")
				fs.DurationVar(&f.wait, "wait", 0, "wait up to `DURATION` (at most 60s) for the final status")
				fs.DurationVar(&f.ttl, "ttl", 0, "how long it may wait for delivery (`DURATION`, default 1h)")
				fs.DurationVar(&f.timeout, "timeout", 0, "how long the device has to answer once sent (`DURATION`, default 30s)")
			},
			run: commandSend,
		},
		{
			group: "command", name: "list", args: "DEVICE", min: 1, max: 1,
			summary: "list a device's commands, newest first, with results and failure reasons",
			help:    "Lists DEVICE's commands, newest first: status, who sent it, and its result or why it failed.",
			flags: func(fs *flag.FlagSet, f *cliFlags) {
				fs.IntVar(&f.limit, "limit", 50, "at most `N` commands (1 to 1000)")
			},
			run: commandList,
		},
		{
			group: "command", name: "get", args: "DEVICE CMD", min: 2, max: 2,
			summary: "print one command as JSON, with its history",
			help:    "Prints command CMD of DEVICE with its params, result or error and status history (JSON).",
			run:     commandGet,
		},
		{
			group: "command", name: "cancel", args: "DEVICE CMD", min: 2, max: 2,
			summary: "cancel a queued command",
			help:    "Cancels command CMD of DEVICE while it is still queued; once sent it cannot be (exit code 5).",
			run:     commandCancel,
		},
	}, append(alertCommands(), stateCommands()...)...)
}

func deviceCreate(ctx context.Context, e *cliEnv, pos []string) error {
	var raw json.RawMessage
	body := map[string]any{"id": pos[0], "name": e.f.name, "labels": map[string]string(e.f.labels)}
	if err := e.c.do(ctx, "POST", "/api/v1/devices", jsonBody(body), "application/json", &raw); err != nil {
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	var out struct {
		Device struct {
			ID string `json:"id"`
		} `json:"device"`
		Token string `json:"token"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return e.table([][]string{{"device", out.Device.ID}, {"token", out.Token, "(shown once; store it now)"}})
}

// deviceRow is what the tables show of a device object.
type deviceRow struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Online    bool       `json:"online"`
	Transport string     `json:"transport"`
	LastSeen  *time.Time `json:"last_seen"`
	Rejected  *int64     `json:"rejected"`
}

func deviceList(ctx context.Context, e *cliEnv, _ []string) error {
	q := url.Values{}
	keys := make([]string, 0, len(e.f.labels))
	for k := range e.f.labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		q.Add("label", k+"="+e.f.labels[k])
	}
	switch e.f.online {
	case "", "true", "false":
	default:
		return usageErr("device list: --online must be true or false")
	}
	if e.f.online != "" {
		q.Set("online", e.f.online)
	}
	q.Set("limit", "1000")
	all := []json.RawMessage{}
	for {
		var page struct {
			Devices []json.RawMessage `json:"devices"`
			Next    string            `json:"next"`
		}
		if err := e.c.do(ctx, "GET", "/api/v1/devices?"+q.Encode(), nil, "", &page); err != nil {
			return err
		}
		all = append(all, page.Devices...)
		if page.Next == "" {
			break
		}
		q.Set("after", page.Next)
	}
	if e.f.json {
		return e.printValue(map[string]any{"devices": all})
	}
	rows := [][]string{{"ID", "NAME", "STATUS", "TRANSPORT", "LAST SEEN", "REJECTED"}}
	var body [][]string
	for _, raw := range all {
		var d deviceRow
		if err := json.Unmarshal(raw, &d); err != nil {
			return fmt.Errorf("decode device: %w", err)
		}
		status, rejected := "offline", "-"
		if d.Online {
			status = "online"
		}
		if d.Rejected != nil {
			rejected = fmt.Sprint(*d.Rejected)
		}
		body = append(body, []string{d.ID, orDash(d.Name), status, orDash(d.Transport), since(d.LastSeen), rejected})
	}
	// People read sim-2 before sim-10; --json keeps the API's id order.
	sort.SliceStable(body, func(i, j int) bool { return naturalLess(body[i][0], body[j][0]) })
	return e.table(append(rows, body...))
}

// naturalLess orders strings with their runs of digits compared as
// numbers: "sim-2" < "sim-10".
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitRun(a), digitRun(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitRun(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

func deviceGet(ctx context.Context, e *cliEnv, pos []string) error {
	var raw json.RawMessage
	if err := e.c.do(ctx, "GET", devPath(pos[0]), nil, "", &raw); err != nil {
		return err
	}
	return e.printJSON(raw)
}

func deviceMetrics(ctx context.Context, e *cliEnv, pos []string) error {
	var raw json.RawMessage
	if err := e.c.do(ctx, "GET", devPath(pos[0], "metrics"), nil, "", &raw); err != nil {
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	var out struct {
		Source  string `json:"source"`
		Metrics []struct {
			Name      string `json:"name"`
			Type      string `json:"type"`
			FirstSeen *int64 `json:"first_seen"`
			LastSeen  *int64 `json:"last_seen"`
		} `json:"metrics"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	at := func(ms *int64) string {
		if ms == nil {
			return "-"
		}
		return time.UnixMilli(*ms).UTC().Format(time.RFC3339)
	}
	rows := [][]string{{"NAME", "TYPE", "FIRST POINT", "LAST POINT"}}
	for _, m := range out.Metrics {
		rows = append(rows, []string{m.Name, m.Type, at(m.FirstSeen), at(m.LastSeen)})
	}
	if out.Source == "schema" {
		rows = append(rows, []string{"(InfluxDB did not answer: names and types from the hub's schema, times unknown)"})
	}
	return e.table(rows)
}

func deviceExport(ctx context.Context, e *cliEnv, pos []string) error {
	f := e.f
	if len(f.metrics) == 0 {
		return usageErr("device export: give at least one --metric")
	}
	if f.format != "csv" && f.format != "jsonl" {
		return usageErr("device export: --format must be csv or jsonl")
	}
	q := url.Values{"start": {f.start}, "stop": {f.stop}, "format": {f.format}}
	for _, m := range f.metrics {
		q.Add("metric", m)
	}
	path := devPath(pos[0], "export") + "?" + q.Encode()
	if f.output == "" {
		ll := &lastLine{w: e.stdout}
		if err := e.c.stream(ctx, path, ll); err != nil {
			return err
		}
		return exportTrailer(ll.last)
	}
	// Into a temporary file beside FILE, renamed once complete.
	tmp, err := os.CreateTemp(filepath.Dir(f.output), "."+filepath.Base(f.output)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	ll := &lastLine{w: tmp}
	err = e.c.stream(ctx, path, ll)
	if err == nil {
		err = exportTrailer(ll.last)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), f.output)
}

// exportTrailer turns the line an export ends with when cut short into an
// error: too many rows, or InfluxDB failing midway.
func exportTrailer(last []byte) error {
	s := string(last)
	switch {
	case strings.HasPrefix(s, "# truncated") || s == `{"truncated":true}`:
		return fmt.Errorf("export cut short: %s (the hub's limit is 1,000,000 rows: narrow --start and --stop)", strings.TrimPrefix(s, "# "))
	case strings.HasPrefix(s, "# error:") || strings.HasPrefix(s, `{"error":`):
		return fmt.Errorf("export broke off: %s", strings.TrimPrefix(s, "# "))
	}
	return nil
}

func deviceRejections(ctx context.Context, e *cliEnv, pos []string) error {
	var raw json.RawMessage
	if err := e.c.do(ctx, "GET", devPath(pos[0], "rejections"), nil, "", &raw); err != nil {
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	var out struct {
		Total      int64 `json:"total"`
		Rejections []struct {
			At        int64  `json:"at"`
			Transport string `json:"transport"`
			Code      string `json:"code"`
			Field     string `json:"field"`
			Message   string `json:"message"`
			ID        string `json:"id"`
		} `json:"rejections"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	rows := [][]string{{"AT", "TRANSPORT", "CODE", "FIELD", "MESSAGE ID", "MESSAGE"}}
	for _, r := range out.Rejections {
		rows = append(rows, []string{time.UnixMilli(r.At).UTC().Format("2006-01-02T15:04:05.000Z"), orDash(r.Transport), r.Code, orDash(r.Field), orDash(r.ID), clip(r.Message, 100)})
	}
	rows = append(rows, []string{fmt.Sprintf("(%d refused since the hub started)", out.Total)})
	return e.table(rows)
}

func deviceUpdate(ctx context.Context, e *cliEnv, pos []string) error {
	f := e.f
	if !f.set["name"] && len(f.labels) == 0 && len(f.removeLabels) == 0 && !f.clearLabels {
		return usageErr("device update: nothing to change: give --name, --label, --remove-label or --clear-labels")
	}
	body := map[string]any{}
	if f.set["name"] {
		body["name"] = f.name
	}
	if len(f.labels) > 0 || len(f.removeLabels) > 0 || f.clearLabels {
		// PATCH replaces the whole label set: start from the current one
		// unless told to clear it.
		labels := map[string]string{}
		if !f.clearLabels {
			var cur struct {
				Device struct {
					Labels map[string]string `json:"labels"`
				} `json:"device"`
			}
			if err := e.c.do(ctx, "GET", devPath(pos[0]), nil, "", &cur); err != nil {
				return err
			}
			for k, v := range cur.Device.Labels {
				labels[k] = v
			}
		}
		for _, k := range f.removeLabels {
			delete(labels, k)
		}
		for k, v := range f.labels {
			labels[k] = v
		}
		body["labels"] = labels
	}
	var raw json.RawMessage
	if err := e.c.do(ctx, "PATCH", devPath(pos[0]), jsonBody(body), "application/json", &raw); err != nil {
		return err
	}
	if f.json {
		return e.printJSON(raw)
	}
	var out struct {
		Device struct {
			ID     string            `json:"id"`
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		} `json:"device"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	keys := make([]string, 0, len(out.Device.Labels))
	for k := range out.Device.Labels {
		keys = append(keys, k+"="+out.Device.Labels[k])
	}
	sort.Strings(keys)
	return e.table([][]string{{"device", out.Device.ID}, {"name", orDash(out.Device.Name)}, {"labels", orDash(strings.Join(keys, ","))}})
}

func deviceRotate(ctx context.Context, e *cliEnv, pos []string) error {
	var out struct {
		Token string `json:"token"`
	}
	body := map[string]string{}
	if e.f.grace > 0 {
		body["grace"] = e.f.grace.String()
	}
	if err := e.c.do(ctx, "POST", devPath(pos[0], "token"), jsonBody(body), "application/json", &out); err != nil {
		return err
	}
	if e.f.json {
		return e.printValue(map[string]string{"id": pos[0], "token": out.Token})
	}
	return e.table([][]string{{"device", pos[0]}, {"token", out.Token, "(shown once; store it now)"}})
}

func deviceDelete(ctx context.Context, e *cliEnv, pos []string) error {
	if err := e.c.do(ctx, "DELETE", devPath(pos[0]), nil, "", nil); err != nil {
		return err
	}
	if e.f.json {
		return e.printValue(map[string]any{"id": pos[0], "deleted": true})
	}
	return e.table([][]string{{"deleted", pos[0]}})
}

// readInput reads at most the bulk import limit (16 MiB) of FILE, or of
// stdin for "-".
func readInput(file string) ([]byte, error) {
	in := io.Reader(os.Stdin)
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		in = f
	}
	data, err := io.ReadAll(io.LimitReader(in, 16<<20+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if len(data) > 16<<20 {
		return nil, usageErr("%s is larger than the bulk import limit of 16 MiB", file)
	}
	return data, nil
}

func deviceImport(ctx context.Context, e *cliEnv, pos []string) error {
	data, err := readInput(pos[0])
	if err != nil {
		return err
	}
	ct := "application/x-ndjson"
	if strings.HasSuffix(pos[0], ".csv") || bytes.HasPrefix(bytes.TrimSpace(data), []byte("id")) {
		ct = "text/csv"
	}
	var out struct {
		Devices []struct {
			ID    string `json:"id"`
			Token string `json:"token"`
		} `json:"devices"`
	}
	if err := e.c.do(ctx, "POST", "/api/v1/devices:batch", bytes.NewReader(data), ct, &out); err != nil {
		return err
	}
	if e.f.json {
		return e.printValue(out)
	}
	var b strings.Builder
	b.WriteString("id,token\n")
	for _, d := range out.Devices {
		fmt.Fprintf(&b, "%s,%s\n", d.ID, d.Token)
	}
	_, err = io.WriteString(e.stdout, b.String())
	return err
}

func tokenCreate(ctx context.Context, e *cliEnv, pos []string) error {
	switch e.f.role {
	case "viewer", "operator", "admin":
	default:
		return usageErr("token create: --role must be viewer, operator or admin")
	}
	var raw json.RawMessage
	if err := e.c.do(ctx, "POST", "/api/v1/tokens", jsonBody(map[string]string{"name": pos[0], "role": e.f.role}), "application/json", &raw); err != nil {
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	var out struct {
		Token struct {
			ID   string `json:"id"`
			Role string `json:"role"`
		} `json:"token"`
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return e.table([][]string{{"id", out.Token.ID}, {"role", out.Token.Role}, {"token", out.Secret, "(shown once; store it now)"}})
}

func tokenList(ctx context.Context, e *cliEnv, _ []string) error {
	var raw json.RawMessage
	if err := e.c.do(ctx, "GET", "/api/v1/tokens", nil, "", &raw); err != nil {
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	var out struct {
		Tokens []struct {
			ID        string    `json:"id"`
			Name      string    `json:"name"`
			Role      string    `json:"role"`
			CreatedAt time.Time `json:"created_at"`
			LastUsed  time.Time `json:"last_used"`
		} `json:"tokens"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	rows := [][]string{{"ID", "NAME", "ROLE", "CREATED", "LAST USED"}}
	for _, t := range out.Tokens {
		used := "never"
		if !t.LastUsed.IsZero() {
			used = t.LastUsed.Format(time.RFC3339)
		}
		rows = append(rows, []string{t.ID, t.Name, t.Role, t.CreatedAt.Format(time.RFC3339), used})
	}
	return e.table(rows)
}

func tokenRevoke(ctx context.Context, e *cliEnv, pos []string) error {
	if err := e.c.do(ctx, "DELETE", "/api/v1/tokens/"+url.PathEscape(pos[0]), nil, "", nil); err != nil {
		return err
	}
	if e.f.json {
		return e.printValue(map[string]any{"id": pos[0], "revoked": true})
	}
	return e.table([][]string{{"revoked", pos[0]}})
}

// commandView is what the tables show of a command object.
type commandView struct {
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Status    string          `json:"status"`
	Params    json.RawMessage `json:"params"`
	Result    json.RawMessage `json:"result"`
	Error     string          `json:"error"`
	CreatedBy string          `json:"created_by"`
	CreatedAt time.Time       `json:"created_at"`
	TimeoutMS int64           `json:"timeout_ms"`
}

// outcome says what became of a command: its result, or why it did not
// succeed.
func (c commandView) outcome() string {
	switch c.Status {
	case "succeeded":
		if len(c.Result) > 0 {
			return string(c.Result)
		}
		return "ok"
	case "failed":
		if c.Error != "" {
			return c.Error
		}
		return "the device reported an error"
	case "timed_out":
		return fmt.Sprintf("no result within %s of being sent", time.Duration(c.TimeoutMS)*time.Millisecond)
	case "expired":
		return "not delivered before its ttl"
	case "cancelled":
		return "cancelled before delivery"
	}
	return "-"
}

func commandSend(ctx context.Context, e *cliEnv, pos []string) error {
	f := e.f
	var params map[string]json.RawMessage
	if err := json.Unmarshal([]byte(f.params), &params); err != nil || params == nil {
		return usageErr("command send: --params must be a JSON object")
	}
	body := map[string]any{"name": pos[1], "params": json.RawMessage(f.params)}
	if f.ttl > 0 {
		body["ttl"] = f.ttl.String()
	}
	if f.timeout > 0 {
		body["timeout"] = f.timeout.String()
	}
	q := ""
	if f.wait > 0 {
		q = "?wait=" + f.wait.String()
	}
	var raw json.RawMessage
	if err := e.c.do(ctx, "POST", devPath(pos[0], "commands")+q, jsonBody(body), "application/json", &raw); err != nil {
		return err
	}
	var out struct {
		Command commandView `json:"command"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	c := out.Command
	var err error
	if f.json {
		err = e.printJSON(raw)
	} else {
		rows := [][]string{{"command", c.ID}, {"status", c.Status}}
		if c.Status != "queued" && c.Status != "sent" {
			rows = append(rows, []string{"outcome", c.outcome()})
		}
		err = e.table(rows)
	}
	if err != nil || f.wait == 0 {
		return err
	}
	switch c.Status {
	case "succeeded":
		return nil
	case "queued", "sent":
		return &exitError{exitPending, fmt.Errorf("command %s still %s after --wait %s", c.ID, c.Status, f.wait)}
	}
	return &exitError{exitCommandFailed, fmt.Errorf("command %s %s: %s", c.ID, c.Status, c.outcome())}
}

func commandList(ctx context.Context, e *cliEnv, pos []string) error {
	if e.f.limit < 1 || e.f.limit > 1000 {
		return usageErr("command list: --limit must be from 1 to 1000")
	}
	var raw json.RawMessage
	if err := e.c.do(ctx, "GET", devPath(pos[0], "commands")+fmt.Sprintf("?limit=%d", e.f.limit), nil, "", &raw); err != nil {
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	var out struct {
		Commands []commandView `json:"commands"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	rows := [][]string{{"ID", "NAME", "STATUS", "BY", "CREATED", "PARAMS", "RESULT / REASON"}}
	for _, c := range out.Commands {
		rows = append(rows, []string{c.ID, c.Name, c.Status, orDash(c.CreatedBy), c.CreatedAt.Format(time.RFC3339),
			clip(orDash(string(c.Params)), 40), clip(c.outcome(), 60)})
	}
	return e.table(rows)
}

func commandGet(ctx context.Context, e *cliEnv, pos []string) error {
	var raw json.RawMessage
	if err := e.c.do(ctx, "GET", devPath(pos[0], "commands", pos[1]), nil, "", &raw); err != nil {
		return err
	}
	return e.printJSON(raw)
}

func commandCancel(ctx context.Context, e *cliEnv, pos []string) error {
	var raw json.RawMessage
	if err := e.c.do(ctx, "DELETE", devPath(pos[0], "commands", pos[1]), nil, "", &raw); err != nil {
		var ae *apiErr
		if errors.As(err, &ae) && ae.Status == http.StatusConflict {
			return fmt.Errorf("command %s was already sent or is final, it cannot be cancelled: %w", pos[1], err)
		}
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	return e.table([][]string{{"cancelled", pos[1]}})
}
