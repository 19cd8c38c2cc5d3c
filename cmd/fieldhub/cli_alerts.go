package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// alertFlags are the flags of the alert commands (issue #23), kept apart
// from the device and command flags in cliFlags.
type alertFlags struct {
	severity   string
	devices    string // comma-separated device ids of a rule's selector
	threshold  string // "temp > 80"
	forDur     string // --for: how long the condition must hold
	clear      string // --clear: the threshold's hysteresis value
	offline    string // --offline DURATION
	noData     string // --no-data METRIC
	rejections int    // --rejections N
	gaps       int    // --gaps N
	window     string // --window DURATION
	state      string
	device     string
	rule       string
	note       string
	until      string
}

// thresholdExpr is --threshold: a metric, an operator, a number. The
// longer operators come first so ">=" is not read as ">".
var thresholdExpr = regexp.MustCompile(`^\s*([^\s<>=!]+)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$`)

// alertCommands are the `fieldhub alert ...` and `fieldhub alert rule ...`
// subcommands: the CLI of the REST API of docs/protocol.md ("Alerts").
func alertCommands() []cliCommand {
	ruleFlags := func(fs *flag.FlagSet, f *cliFlags) {
		a := &f.alert
		fs.StringVar(&f.name, "name", "", "the rule's `NAME` (1 to 100 printable characters)")
		fs.StringVar(&a.severity, "severity", "warning", "`SEVERITY`: info, warning or critical")
		fs.StringVar(&a.devices, "devices", "", "only these device `IDS` (comma-separated; default every device)")
		fs.Var(f.labels, "label", "only devices with label `key=value` (repeatable: all must match)")
		fs.StringVar(&a.threshold, "threshold", "", "fire when `'METRIC OP VALUE'` holds, e.g. 'temp > 80' (OP: > >= < <= == !=)")
		fs.StringVar(&a.forDur, "for", "", "how long the threshold or no-data condition must hold (`DURATION`, e.g. 30s)")
		fs.StringVar(&a.clear, "clear", "", "--threshold: resolve only once the value is back past `VALUE` (hysteresis)")
		fs.StringVar(&a.offline, "offline", "", "fire when a device has been offline for `DURATION`")
		fs.StringVar(&a.noData, "no-data", "", "fire when an online device sent no `METRIC` for --for")
		fs.IntVar(&a.rejections, "rejections", 0, "fire when more than `N` messages of a device were refused in --window")
		fs.IntVar(&a.gaps, "gaps", 0, "fire when a device has more than `N` open seq gaps (the ledger)")
		fs.StringVar(&a.window, "window", "", "--rejections: the `DURATION` counted, e.g. 5m")
	}
	return []cliCommand{
		{
			group: "alert rule", name: "create", args: "[BODY]", max: 1,
			summary: "create an alert rule (admin)",
			help: "Creates an alert rule with one condition: --threshold 'temp > 80' [--for 30s] [--clear 75],\n" +
				"--offline 5m, --no-data temp --for 10m, --rejections 10 --window 5m, or --gaps 5; --devices and --label\n" +
				"select devices (none: every device). Or give the whole rule as JSON: --json '<rule body>'.",
			flags: ruleFlags,
			run:   alertRuleCreate,
		},
		{
			group: "alert rule", name: "list", max: 0,
			summary: "list alert rules by name",
			help:    "Lists the alert rules by name: id, severity, condition, selector and version.",
			run:     alertRuleList,
		},
		{
			group: "alert rule", name: "delete", args: "ID", min: 1, max: 1,
			summary: "delete an alert rule; its open alerts resolve (admin)",
			help:    "Deletes alert rule ID; its open alerts resolve with reason 'rule deleted'.",
			run:     alertRuleDelete,
		},
		{
			group: "alert", name: "list", max: 0,
			summary: "list alerts: open ones first, then resolved, newest first",
			help:    "Lists alerts: without --state the open ones (pending, firing) first, then the resolved ones.",
			flags: func(fs *flag.FlagSet, f *cliFlags) {
				fs.StringVar(&f.alert.state, "state", "", "only alerts in `STATE`: pending, firing or resolved")
				fs.StringVar(&f.alert.device, "device", "", "only the alerts of device `ID`")
				fs.StringVar(&f.alert.severity, "severity", "", "only alerts of `SEVERITY`: info, warning or critical")
				fs.StringVar(&f.alert.rule, "rule", "", "only the alerts of rule `ID`")
				fs.IntVar(&f.limit, "limit", 100, "at most `N` alerts (1 to 1000)")
			},
			run: alertList,
		},
		{
			group: "alert", name: "ack", args: "ID", min: 1, max: 1,
			summary: "acknowledge an alert with a note (operator)",
			help:    "Acknowledges alert ID, recorded with your name, the time and --note; a resolved alert cannot be (exit code 5).",
			flags: func(fs *flag.FlagSet, f *cliFlags) {
				fs.StringVar(&f.alert.note, "note", "", "what you are doing about it (`TEXT`, at most 1000 characters)")
			},
			run: alertAck,
		},
		{
			group: "alert", name: "silence", max: 0,
			summary: "silence a rule or a device for a while (operator)",
			help:    "Silences the alerts of --rule and/or --device for --for (or --until): they still change state but are not notified.",
			flags: func(fs *flag.FlagSet, f *cliFlags) {
				fs.StringVar(&f.alert.rule, "rule", "", "silence the alerts of rule `ID`")
				fs.StringVar(&f.alert.device, "device", "", "silence the alerts of device `ID`")
				fs.StringVar(&f.alert.forDur, "for", "", "for `DURATION` (at most 720h), e.g. 1h")
				fs.StringVar(&f.alert.until, "until", "", "until `TIME` (RFC 3339), instead of --for")
				fs.StringVar(&f.alert.note, "note", "", "why (`TEXT`)")
			},
			run: alertSilence,
		},
	}
}

// alertRuleBody builds the rule body of `alert rule create` from its flags
// (or takes BODY as given). It checks only what the flags themselves need;
// the hub validates the rule and its 400 names the field.
func alertRuleBody(f *cliFlags, pos []string) (json.RawMessage, error) {
	a := &f.alert
	conds := 0
	for _, set := range []bool{a.threshold != "", a.offline != "", a.noData != "", f.set["rejections"], f.set["gaps"]} {
		if set {
			conds++
		}
	}
	if len(pos) == 1 {
		if conds > 0 || f.set["name"] || f.set["devices"] || f.set["label"] {
			return nil, usageErr("alert rule create: give the rule as JSON or as flags, not both")
		}
		if !json.Valid([]byte(pos[0])) || !strings.HasPrefix(strings.TrimSpace(pos[0]), "{") {
			return nil, usageErr("alert rule create: the rule body must be a JSON object")
		}
		return json.RawMessage(pos[0]), nil
	}
	if conds != 1 {
		return nil, usageErr("alert rule create: give exactly one condition: --threshold, --offline, --no-data, --rejections or --gaps")
	}
	only := func(flagName string, allowed bool, cond string) error {
		if f.set[flagName] && !allowed {
			return usageErr("alert rule create: --%s does not go with %s", flagName, cond)
		}
		return nil
	}
	var cond map[string]any
	var err error
	switch {
	case a.threshold != "":
		m := thresholdExpr.FindStringSubmatch(a.threshold)
		if m == nil {
			return nil, usageErr("alert rule create: --threshold %q is not 'METRIC OP VALUE', e.g. 'temp > 80'", a.threshold)
		}
		v, perr := strconv.ParseFloat(m[3], 64)
		if perr != nil {
			return nil, usageErr("alert rule create: --threshold value %q is not a number", m[3])
		}
		cond = map[string]any{"type": "threshold", "metric": m[1], "op": m[2], "value": v}
		if a.forDur != "" {
			cond["for"] = a.forDur
		}
		if a.clear != "" {
			c, perr := strconv.ParseFloat(a.clear, 64)
			if perr != nil {
				return nil, usageErr("alert rule create: --clear %q is not a number", a.clear)
			}
			cond["clear"] = c
		}
		err = only("window", false, "--threshold")
	case a.offline != "":
		cond = map[string]any{"type": "offline", "for": a.offline}
		for _, n := range []string{"for", "clear", "window"} {
			if err == nil {
				err = only(n, false, "--offline (its value is the duration)")
			}
		}
	case a.noData != "":
		if a.forDur == "" {
			return nil, usageErr("alert rule create: --no-data needs --for, e.g. --for 10m")
		}
		cond = map[string]any{"type": "no_data", "metric": a.noData, "for": a.forDur}
		for _, n := range []string{"clear", "window"} {
			if err == nil {
				err = only(n, false, "--no-data")
			}
		}
	case f.set["gaps"]:
		cond = map[string]any{"type": "gaps", "count": a.gaps}
		for _, n := range []string{"for", "clear", "window"} {
			if err == nil {
				err = only(n, false, "--gaps")
			}
		}
	default:
		if a.window == "" {
			return nil, usageErr("alert rule create: --rejections needs --window, e.g. --window 5m")
		}
		cond = map[string]any{"type": "rejections", "count": a.rejections, "window": a.window}
		for _, n := range []string{"for", "clear"} {
			if err == nil {
				err = only(n, false, "--rejections")
			}
		}
	}
	if err != nil {
		return nil, err
	}
	sel := map[string]any{}
	if a.devices != "" {
		var ids []string
		for _, id := range strings.Split(a.devices, ",") {
			if id = strings.TrimSpace(id); id != "" {
				ids = append(ids, id)
			}
		}
		sel["devices"] = ids
	}
	if len(f.labels) > 0 {
		sel["labels"] = map[string]string(f.labels)
	}
	b, _ := json.Marshal(map[string]any{"name": f.name, "severity": a.severity, "selector": sel, "condition": cond}) // maps of strings and numbers
	return b, nil
}

// alertRuleView is what the tables show of a rule.
type alertRuleView struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Severity string `json:"severity"`
	Version  int64  `json:"version"`
	Selector struct {
		Devices []string          `json:"devices"`
		Labels  map[string]string `json:"labels"`
	} `json:"selector"`
	Condition map[string]any `json:"condition"`
}

// conditionText is a rule's condition as one line, e.g. "temp > 80 for
// 30s, clear 75".
func conditionText(c map[string]any) string {
	s := func(k string) string {
		if v, ok := c[k]; ok && v != nil {
			return fmt.Sprint(v)
		}
		return ""
	}
	var out string
	switch s("type") {
	case "threshold":
		out = s("metric") + " " + s("op") + " " + s("value")
		if f := s("for"); f != "" && f != "0s" {
			out += " for " + f
		}
		if cl := s("clear"); cl != "" {
			out += ", clear " + cl
		}
	case "offline":
		out = "offline for " + s("for")
	case "no_data":
		out = "no " + s("metric") + " for " + s("for")
	case "rejections":
		out = "more than " + s("count") + " rejections in " + s("window")
	case "gaps":
		out = "more than " + s("count") + " open seq gaps"
	default:
		b, _ := json.Marshal(c)
		out = string(b)
	}
	return out
}

func (r alertRuleView) selectorText() string {
	var parts []string
	if len(r.Selector.Devices) > 0 {
		parts = append(parts, "devices "+strings.Join(r.Selector.Devices, ","))
	}
	keys := make([]string, 0, len(r.Selector.Labels))
	for k := range r.Selector.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+r.Selector.Labels[k])
	}
	if len(parts) == 0 {
		return "every device"
	}
	return strings.Join(parts, " ")
}

func alertRuleCreate(ctx context.Context, e *cliEnv, pos []string) error {
	body, err := alertRuleBody(e.f, pos)
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := e.c.do(ctx, "POST", "/api/v1/alert-rules", strings.NewReader(string(body)), "application/json", &raw); err != nil {
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	var out struct {
		Rule alertRuleView `json:"rule"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return e.table([][]string{{"rule", out.Rule.ID}, {"name", out.Rule.Name}, {"condition", conditionText(out.Rule.Condition)}, {"devices", out.Rule.selectorText()}})
}

func alertRuleList(ctx context.Context, e *cliEnv, _ []string) error {
	var raw json.RawMessage
	if err := e.c.do(ctx, "GET", "/api/v1/alert-rules", nil, "", &raw); err != nil {
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	var out struct {
		Rules []alertRuleView `json:"rules"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	rows := [][]string{{"ID", "NAME", "SEVERITY", "CONDITION", "DEVICES", "VERSION"}}
	for _, r := range out.Rules {
		rows = append(rows, []string{r.ID, clip(r.Name, 40), r.Severity, clip(conditionText(r.Condition), 50), clip(r.selectorText(), 40), fmt.Sprint(r.Version)})
	}
	return e.table(rows)
}

func alertRuleDelete(ctx context.Context, e *cliEnv, pos []string) error {
	if err := e.c.do(ctx, "DELETE", "/api/v1/alert-rules/"+url.PathEscape(pos[0]), nil, "", nil); err != nil {
		return err
	}
	if e.f.json {
		return e.printValue(map[string]any{"id": pos[0], "deleted": true})
	}
	return e.table([][]string{{"deleted", pos[0]}})
}

// alertView is what the tables show of an alert.
type alertView struct {
	ID             string     `json:"id"`
	Rule           string     `json:"rule"`
	Device         string     `json:"device"`
	Severity       string     `json:"severity"`
	State          string     `json:"state"`
	Since          *time.Time `json:"since"`
	Value          *float64   `json:"value"`
	Summary        string     `json:"summary"`
	AcknowledgedBy string     `json:"acknowledged_by"`
	AckNote        string     `json:"ack_note"`
	SilencedUntil  *time.Time `json:"silenced_until"`
}

func alertList(ctx context.Context, e *cliEnv, _ []string) error {
	a := &e.f.alert
	switch a.state {
	case "", "pending", "firing", "resolved":
	default:
		return usageErr("alert list: --state must be pending, firing or resolved")
	}
	if e.f.limit < 1 || e.f.limit > 1000 {
		return usageErr("alert list: --limit must be from 1 to 1000")
	}
	q := url.Values{"limit": {strconv.Itoa(e.f.limit)}}
	for k, v := range map[string]string{"state": a.state, "device": a.device, "severity": a.severity, "rule": a.rule} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var raw json.RawMessage
	if err := e.c.do(ctx, "GET", "/api/v1/alerts?"+q.Encode(), nil, "", &raw); err != nil {
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	var out struct {
		Alerts []alertView `json:"alerts"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	rows := [][]string{{"ID", "STATE", "SEVERITY", "DEVICE", "RULE", "SINCE", "VALUE", "ACKNOWLEDGED BY", "SUMMARY"}}
	for _, al := range out.Alerts {
		st := al.State
		if al.SilencedUntil != nil {
			st += " (silenced)"
		}
		val := "-"
		if al.Value != nil {
			val = strconv.FormatFloat(*al.Value, 'f', -1, 64)
		}
		sinceAt := "-"
		if al.Since != nil {
			sinceAt = al.Since.Local().Format(time.RFC3339)
		}
		rows = append(rows, []string{al.ID, st, al.Severity, al.Device, clip(al.Rule, 30), sinceAt, val, orDash(al.AcknowledgedBy), clip(al.Summary, 50)})
	}
	return e.table(rows)
}

func alertAck(ctx context.Context, e *cliEnv, pos []string) error {
	var raw json.RawMessage
	err := e.c.do(ctx, "POST", "/api/v1/alerts/"+url.PathEscape(pos[0])+"/ack", jsonBody(map[string]string{"note": e.f.alert.note}), "application/json", &raw)
	if err != nil {
		var ae *apiErr
		if errors.As(err, &ae) && ae.Status == 409 {
			return fmt.Errorf("alert %s is resolved, it cannot be acknowledged: %w", pos[0], err)
		}
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	var out struct {
		Alert alertView `json:"alert"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return e.table([][]string{{"acknowledged", out.Alert.ID}, {"by", out.Alert.AcknowledgedBy}, {"note", orDash(out.Alert.AckNote)}, {"state", out.Alert.State}})
}

func alertSilence(ctx context.Context, e *cliEnv, _ []string) error {
	a := &e.f.alert
	if a.rule == "" && a.device == "" {
		return usageErr("alert silence: give --rule ID and/or --device ID")
	}
	if (a.forDur == "") == (a.until == "") {
		return usageErr("alert silence: give either --for DURATION or --until TIME")
	}
	body := map[string]string{}
	for k, v := range map[string]string{"rule_id": a.rule, "device": a.device, "for": a.forDur, "until": a.until, "note": a.note} {
		if v != "" {
			body[k] = v
		}
	}
	var raw json.RawMessage
	if err := e.c.do(ctx, "POST", "/api/v1/silences", jsonBody(body), "application/json", &raw); err != nil {
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	var out struct {
		Silence struct {
			ID     string    `json:"id"`
			RuleID string    `json:"rule_id"`
			Device string    `json:"device"`
			Until  time.Time `json:"until"`
		} `json:"silence"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	s := out.Silence
	return e.table([][]string{{"silence", s.ID}, {"rule", orDash(s.RuleID)}, {"device", orDash(s.Device)}, {"until", s.Until.Local().Format(time.RFC3339)}})
}
