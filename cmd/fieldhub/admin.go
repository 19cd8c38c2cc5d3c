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
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

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
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
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
		return json.Unmarshal(data, out)
	}
	return nil
}

func jsonBody(v any) io.Reader {
	b, _ := json.Marshal(v) // plain maps and strings
	return bytes.NewReader(b)
}

// labelsFlag collects repeated --label key=value.
type labelsFlag map[string]string

func (l labelsFlag) String() string { return "" }
func (l labelsFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok {
		return errors.New("want key=value")
	}
	l[k] = val
	return nil
}

// admin runs `fieldhub device ...` and `fieldhub token ...`.
func admin(ctx context.Context, group string, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%s: missing subcommand (see fieldhub --help)", group)
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("fieldhub "+group+" "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := getenv("FIELDHUB_URL")
	if base == "" {
		base = "http://127.0.0.1:8080"
	}
	hubURL := fs.String("url", base, "hub base URL (env FIELDHUB_URL)")
	token := fs.String("token", getenv("FIELDHUB_TOKEN"), "operator API token (env FIELDHUB_TOKEN)")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	name := fs.String("name", "", "display name")
	role := fs.String("role", "viewer", "token role: viewer, operator or admin")
	grace := fs.Duration("grace", 0, "rotation grace period during which the old token still works")
	online := fs.String("online", "", "filter by online state: true or false")
	params := fs.String("params", "{}", "command params as a JSON object")
	wait := fs.Duration("wait", 0, "wait up to this long for the command's final status")
	ttl := fs.Duration("ttl", 0, "how long the command may wait for delivery (default 1h)")
	timeout := fs.Duration("timeout", 0, "how long a sent command may wait for its result (default 30s)")
	labels := labelsFlag{}
	fs.Var(labels, "label", "label key=value (repeatable)")
	// Flags may come before or after positional arguments.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos, args = append(pos, args[0]), args[1:]
	}
	if *token == "" {
		return errors.New("no API token: set FIELDHUB_TOKEN or pass --token")
	}
	if _, err := url.Parse(*hubURL); err != nil {
		return fmt.Errorf("FIELDHUB_URL: %w", err)
	}
	c := &client{base: strings.TrimRight(*hubURL, "/"), token: *token, http: &http.Client{Timeout: 60 * time.Second}}
	arg := func(i int, what string) (string, error) {
		if i >= len(pos) {
			return "", fmt.Errorf("%s %s: missing %s", group, sub, what)
		}
		return pos[i], nil
	}
	printJSON := func(raw json.RawMessage) {
		var out bytes.Buffer
		if json.Indent(&out, raw, "", "  ") == nil {
			out.WriteByte('\n')
			_, _ = stdout.Write(out.Bytes())
		}
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	defer tw.Flush()

	switch group + " " + sub {
	case "device create":
		id, _ := arg(0, "device id")
		var raw json.RawMessage
		if err := c.do(ctx, "POST", "/api/v1/devices", jsonBody(map[string]any{"id": id, "name": *name, "labels": map[string]string(labels)}), "application/json", &raw); err != nil {
			return err
		}
		if *asJSON {
			printJSON(raw)
			return nil
		}
		var out struct {
			Device struct{ ID string } `json:"device"`
			Token  string              `json:"token"`
		}
		_ = json.Unmarshal(raw, &out)
		fmt.Fprintf(tw, "device\t%s\ntoken\t%s\t(shown once; store it now)\n", out.Device.ID, out.Token)
	case "device list":
		q := url.Values{}
		for k, v := range labels {
			q.Add("label", k+"="+v)
		}
		if *online != "" {
			q.Set("online", *online)
		}
		q.Set("limit", "1000")
		fmt.Fprintln(tw, "ID\tNAME\tONLINE\tTRANSPORT\tLAST SEEN")
		var all []json.RawMessage
		for {
			var page struct {
				Devices []json.RawMessage `json:"devices"`
				Next    string            `json:"next"`
			}
			if err := c.do(ctx, "GET", "/api/v1/devices?"+q.Encode(), nil, "", &page); err != nil {
				return err
			}
			all = append(all, page.Devices...)
			if page.Next == "" {
				break
			}
			q.Set("after", page.Next)
		}
		if *asJSON {
			b, _ := json.Marshal(map[string]any{"devices": all})
			printJSON(b)
			return nil
		}
		for _, raw := range all {
			var d struct {
				ID, Name, Transport string
				Online              bool
				LastSeen            *time.Time `json:"last_seen"`
			}
			_ = json.Unmarshal(raw, &d)
			seen := "-"
			if d.LastSeen != nil {
				seen = time.Since(*d.LastSeen).Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\n", d.ID, d.Name, d.Online, d.Transport, seen)
		}
	case "device get":
		id, err := arg(0, "device id")
		if err != nil {
			return err
		}
		var raw json.RawMessage
		if err := c.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(id), nil, "", &raw); err != nil {
			return err
		}
		printJSON(raw)
	case "device rotate":
		id, err := arg(0, "device id")
		if err != nil {
			return err
		}
		var out struct{ Token string }
		if err := c.do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(id)+"/token", jsonBody(map[string]string{"grace": grace.String()}), "application/json", &out); err != nil {
			return err
		}
		if *asJSON {
			b, _ := json.Marshal(map[string]string{"id": id, "token": out.Token})
			printJSON(b)
			return nil
		}
		fmt.Fprintf(tw, "device\t%s\ntoken\t%s\t(shown once; store it now)\n", id, out.Token)
	case "device delete":
		id, err := arg(0, "device id")
		if err != nil {
			return err
		}
		if err := c.do(ctx, "DELETE", "/api/v1/devices/"+url.PathEscape(id), nil, "", nil); err != nil {
			return err
		}
		fmt.Fprintf(tw, "deleted\t%s\n", id)
	case "device import":
		file, err := arg(0, "file (CSV with an id column, or JSON lines; - for stdin)")
		if err != nil {
			return err
		}
		var in io.Reader = os.Stdin
		if file != "-" {
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			defer f.Close()
			in = f
		}
		data, err := io.ReadAll(io.LimitReader(in, 16<<20))
		if err != nil {
			return err
		}
		ct := "application/x-ndjson"
		if strings.HasSuffix(file, ".csv") || bytes.HasPrefix(bytes.TrimSpace(data), []byte("id")) {
			ct = "text/csv"
		}
		var out struct {
			Devices []struct{ ID, Token string } `json:"devices"`
		}
		if err := c.do(ctx, "POST", "/api/v1/devices:batch", bytes.NewReader(data), ct, &out); err != nil {
			return err
		}
		if *asJSON {
			b, _ := json.Marshal(out)
			printJSON(b)
			return nil
		}
		fmt.Fprintln(tw, "id,token")
		for _, d := range out.Devices {
			fmt.Fprintf(tw, "%s,%s\n", d.ID, d.Token)
		}
	case "token create":
		n, err := arg(0, "token name")
		if err != nil {
			return err
		}
		var raw json.RawMessage
		if err := c.do(ctx, "POST", "/api/v1/tokens", jsonBody(map[string]string{"name": n, "role": *role}), "application/json", &raw); err != nil {
			return err
		}
		if *asJSON {
			printJSON(raw)
			return nil
		}
		var out struct {
			Token  struct{ ID, Role string } `json:"token"`
			Secret string                    `json:"secret"`
		}
		_ = json.Unmarshal(raw, &out)
		fmt.Fprintf(tw, "id\t%s\nrole\t%s\ntoken\t%s\t(shown once; store it now)\n", out.Token.ID, out.Token.Role, out.Secret)
	case "token list":
		var raw json.RawMessage
		if err := c.do(ctx, "GET", "/api/v1/tokens", nil, "", &raw); err != nil {
			return err
		}
		if *asJSON {
			printJSON(raw)
			return nil
		}
		var out struct {
			Tokens []struct {
				ID, Name, Role string
				CreatedAt      time.Time `json:"created_at"`
				LastUsed       time.Time `json:"last_used"`
			}
		}
		_ = json.Unmarshal(raw, &out)
		fmt.Fprintln(tw, "ID\tNAME\tROLE\tCREATED\tLAST USED")
		for _, t := range out.Tokens {
			used := "never"
			if !t.LastUsed.IsZero() {
				used = t.LastUsed.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Role, t.CreatedAt.Format(time.RFC3339), used)
		}
	case "token revoke":
		id, err := arg(0, "token id")
		if err != nil {
			return err
		}
		if err := c.do(ctx, "DELETE", "/api/v1/tokens/"+url.PathEscape(id), nil, "", nil); err != nil {
			return err
		}
		fmt.Fprintf(tw, "revoked\t%s\n", id)
	case "command send":
		dev, err := arg(0, "device id")
		if err != nil {
			return err
		}
		name, err := arg(1, "command name")
		if err != nil {
			return err
		}
		if !json.Valid([]byte(*params)) {
			return errors.New("--params must be a JSON object")
		}
		body := map[string]any{"name": name, "params": json.RawMessage(*params)}
		if *ttl > 0 {
			body["ttl"] = ttl.String()
		}
		if *timeout > 0 {
			body["timeout"] = timeout.String()
		}
		q := ""
		if *wait > 0 {
			q = "?wait=" + wait.String()
		}
		var raw json.RawMessage
		if err := c.do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(dev)+"/commands"+q, jsonBody(body), "application/json", &raw); err != nil {
			return err
		}
		if *asJSON {
			printJSON(raw)
			return nil
		}
		var out struct {
			Command struct {
				ID, Status, Error string
				Result            json.RawMessage
			} `json:"command"`
		}
		_ = json.Unmarshal(raw, &out)
		fmt.Fprintf(tw, "command\t%s\nstatus\t%s\n", out.Command.ID, out.Command.Status)
		if len(out.Command.Result) > 0 {
			fmt.Fprintf(tw, "result\t%s\n", out.Command.Result)
		}
		if out.Command.Error != "" {
			fmt.Fprintf(tw, "error\t%s\n", out.Command.Error)
		}
	case "command list":
		dev, err := arg(0, "device id")
		if err != nil {
			return err
		}
		var raw json.RawMessage
		if err := c.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(dev)+"/commands?limit=100", nil, "", &raw); err != nil {
			return err
		}
		if *asJSON {
			printJSON(raw)
			return nil
		}
		var out struct {
			Commands []struct {
				ID, Name, Status string
				CreatedBy        string    `json:"created_by"`
				CreatedAt        time.Time `json:"created_at"`
			}
		}
		_ = json.Unmarshal(raw, &out)
		fmt.Fprintln(tw, "ID\tNAME\tSTATUS\tBY\tCREATED")
		for _, cmd := range out.Commands {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cmd.ID, cmd.Name, cmd.Status, cmd.CreatedBy, cmd.CreatedAt.Format(time.RFC3339))
		}
	default:
		return fmt.Errorf("unknown command %q", group+" "+sub)
	}
	return nil
}
