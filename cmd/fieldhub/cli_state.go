package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

// stateFlags are the flags of `device state set`, shared by its flags and
// run functions (one instance per cliCommands call).
type stateFlags struct {
	patch   string
	ifMatch int64
}

// stateCommands are `fieldhub device state get|set`: a device's reported
// and desired state documents and their delta (docs/protocol.md, "Device
// state").
func stateCommands() []cliCommand {
	sf := &stateFlags{}
	return []cliCommand{
		{
			group: "device", name: "state get", args: "ID", min: 1, max: 1,
			summary: "the device's reported and desired state, and what is out of sync",
			help: "Prints device ID's state: each key's reported and desired value, whether it is out of sync (in the\n" +
				"delta) and when each side last changed it, with both documents' versions. --json prints the API's shape.",
			run: stateGet,
		},
		{
			group: "device", name: "state set", args: "ID [key=value ...]", min: 1, max: 1 << 10,
			summary: "change the device's desired state (a JSON merge patch)",
			help: "Changes device ID's desired state with a JSON merge patch (RFC 7386) of --patch and the key=value\n" +
				"arguments (which win): a value is JSON if it parses (5, true, \"5\", {\"a\":1}), else a string;\n" +
				"key=null deletes the key. Without --if-match it reads the current desired version first. When someone\n" +
				"else changed the desired state since that version, nothing changes and it exits 5 (conflict).",
			flags: func(fs *flag.FlagSet, _ *cliFlags) {
				fs.StringVar(&sf.patch, "patch", "", "a JSON merge patch `OBJECT` to apply (key=value arguments are added to it)")
				fs.Int64Var(&sf.ifMatch, "if-match", 0, "apply only if the desired state is still at `VERSION` (default: the version read first)")
			},
			run: func(ctx context.Context, e *cliEnv, pos []string) error { return stateSet(ctx, e, pos, sf) },
		},
	}
}

// stateDoc is one state document of GET /api/v1/devices/{id}/state.
type stateDoc struct {
	State     map[string]json.RawMessage `json:"state"`
	Version   int64                      `json:"version"`
	UpdatedAt map[string]string          `json:"updated_at"`
}

// stateView is the answer of GET .../state and PATCH .../state/desired.
type stateView struct {
	Reported stateDoc                   `json:"reported"`
	Desired  stateDoc                   `json:"desired"`
	Delta    map[string]json.RawMessage `json:"delta"`
}

// stateDo sends one request with extra headers (If-Match, the merge
// patch's Content-Type) and returns the answer's body; errors are those
// of client.do, so exitCode maps them the same way.
func stateDo(ctx context.Context, c *client, method, path string, body []byte, hdr http.Header) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the hub at %s (FIELDHUB_URL or --url): %s %s: %w", c.base, method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read answer of %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct {
				Code, Message string
				Errors        []struct{ Field, Reason string } // an invalid patch: where and why
			} `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error.Code != "" {
			msg := e.Error.Message
			for i, fe := range e.Error.Errors {
				if i == 5 {
					msg += fmt.Sprintf("; and %d more", len(e.Error.Errors)-i)
					break
				}
				msg += "; " + fe.Field + ": " + fe.Reason
			}
			return nil, &apiErr{resp.StatusCode, e.Error.Code, msg}
		}
		return nil, &apiErr{resp.StatusCode, "http_error", strings.TrimSpace(string(data))}
	}
	return data, nil
}

func stateGet(ctx context.Context, e *cliEnv, pos []string) error {
	raw, err := stateDo(ctx, e.c, "GET", devPath(pos[0], "state"), nil, nil)
	if err != nil {
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	return e.stateTable(raw)
}

// stateTable prints a state answer as one row per key: reported and
// desired values, whether the key is in the delta, and when each changed.
func (e *cliEnv) stateTable(raw []byte) error {
	var v stateView
	if err := json.Unmarshal(raw, &v); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	keys := map[string]bool{}
	for k := range v.Reported.State {
		keys[k] = true
	}
	for k := range v.Desired.State {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Slice(sorted, func(i, j int) bool { return naturalLess(sorted[i], sorted[j]) })
	value := func(m map[string]json.RawMessage, k string) string {
		b, ok := m[k]
		if !ok {
			return "-"
		}
		var out bytes.Buffer
		if json.Compact(&out, b) != nil {
			return string(b)
		}
		return clip(out.String(), 40)
	}
	rows := [][]string{{"KEY", "REPORTED", "DESIRED", "SYNC", "REPORTED AT", "DESIRED AT"}}
	for _, k := range sorted {
		sync := "-" // reported only: nothing desired
		if _, ok := v.Desired.State[k]; ok {
			sync = "in sync"
		}
		if _, ok := v.Delta[k]; ok {
			sync = "OUT OF SYNC"
		}
		rows = append(rows, []string{k, value(v.Reported.State, k), value(v.Desired.State, k), sync,
			orDash(v.Reported.UpdatedAt[k]), orDash(v.Desired.UpdatedAt[k])})
	}
	rows = append(rows, []string{fmt.Sprintf("(reported version %d, desired version %d, %d out of sync)", v.Reported.Version, v.Desired.Version, len(v.Delta))})
	return e.table(rows)
}

// statePatch builds the merge patch of --patch and key=value arguments.
func statePatch(patch string, args []string) ([]byte, error) {
	body := map[string]json.RawMessage{}
	if patch != "" {
		if err := json.Unmarshal([]byte(patch), &body); err != nil || body == nil {
			return nil, usageErr("device state set: --patch must be a JSON object")
		}
	}
	for _, a := range args {
		k, val, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, usageErr("device state set: %q is not key=value", a)
		}
		if json.Valid([]byte(val)) {
			body[k] = json.RawMessage(val)
		} else {
			s, _ := json.Marshal(val) // a string: cannot fail
			body[k] = s
		}
	}
	if len(body) == 0 {
		return nil, usageErr("device state set: nothing to change: give key=value arguments or --patch")
	}
	return json.Marshal(body)
}

func stateSet(ctx context.Context, e *cliEnv, pos []string, sf *stateFlags) error {
	id := pos[0]
	body, err := statePatch(sf.patch, pos[1:])
	if err != nil {
		return err
	}
	version := sf.ifMatch
	if !e.f.set["if-match"] {
		raw, err := stateDo(ctx, e.c, "GET", devPath(id, "state"), nil, nil)
		if err != nil {
			return err
		}
		var v stateView
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
		version = v.Desired.Version
	} else if version < 0 {
		return usageErr("device state set: --if-match must be a version, 0 or more")
	}
	hdr := http.Header{"Content-Type": {"application/merge-patch+json"}, "If-Match": {strconv.Quote(strconv.FormatInt(version, 10))}}
	raw, err := stateDo(ctx, e.c, "PATCH", devPath(id, "state", "desired"), body, hdr)
	if err != nil {
		var ae *apiErr
		if errors.As(err, &ae) && ae.Status == http.StatusPreconditionFailed {
			return &exitError{exitConflict, fmt.Errorf("conflict: the desired state of %s changed since version %d (someone else changed it); nothing was changed: read it again with 'fieldhub device state get %s' and retry: %w", id, version, id, err)}
		}
		return err
	}
	if e.f.json {
		return e.printJSON(raw)
	}
	return e.stateTable(raw)
}
