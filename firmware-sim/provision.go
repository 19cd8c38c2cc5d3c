package firmwaresim

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// provision creates the fleet's devices <prefix>-1..N through the REST API
// in one bulk call; devices that already exist get a fresh token instead.
func provision(ctx context.Context, cfg Config) ([]Cred, error) {
	if cfg.AdminToken == "" {
		return nil, errors.New("provision: an admin token is required (--admin-token or FIELDHUB_ADMIN_TOKEN)")
	}
	hc := &http.Client{Timeout: 60 * time.Second}
	base := strings.TrimRight(cfg.Hub, "/")
	call := func(method, path, ctype string, body []byte, out any) (int, error) {
		req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+cfg.AdminToken)
		req.Header.Set("Content-Type", ctype)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err != nil {
			return resp.StatusCode, err
		}
		if resp.StatusCode < 300 && out != nil {
			return resp.StatusCode, json.Unmarshal(data, out)
		}
		if resp.StatusCode >= 300 && resp.StatusCode != http.StatusConflict {
			return resp.StatusCode, fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(data))
		}
		return resp.StatusCode, nil
	}
	ids := make([]string, cfg.Devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", cfg.Prefix, i+1)
	}
	creds := make([]Cred, 0, len(ids))
	const chunk = 10000 // the hub's bulk limit
	for start := 0; start < len(ids); start += chunk {
		part := ids[start:min(start+chunk, len(ids))]
		var body bytes.Buffer
		for _, id := range part {
			fmt.Fprintf(&body, `{"id":%q,"labels":{"fleet":%q}}`+"\n", id, cfg.Prefix)
		}
		var out struct {
			Devices []struct{ ID, Token string } `json:"devices"`
		}
		status, err := call("POST", "/api/v1/devices:batch", "application/x-ndjson", body.Bytes(), &out)
		if err != nil {
			return nil, fmt.Errorf("provision: %w", err)
		}
		if status != http.StatusConflict {
			for _, d := range out.Devices {
				creds = append(creds, Cred{ID: d.ID, Token: d.Token})
			}
			continue
		}
		// Some exist already (a rerun): create or re-key one by one.
		for _, id := range part {
			var created struct {
				Token string `json:"token"`
			}
			st, err := call("POST", "/api/v1/devices", "application/json", []byte(fmt.Sprintf(`{"id":%q,"labels":{"fleet":%q}}`, id, cfg.Prefix)), &created)
			if err != nil {
				return nil, fmt.Errorf("provision %s: %w", id, err)
			}
			if st == http.StatusConflict {
				if _, err := call("POST", "/api/v1/devices/"+id+"/token", "application/json", nil, &created); err != nil {
					return nil, fmt.Errorf("re-key %s: %w", id, err)
				}
			}
			creds = append(creds, Cred{ID: id, Token: created.Token})
		}
	}
	return creds, nil
}

// ReadCreds reads device credentials as CSV with an id,token header, the
// format of the hub's bulk provisioning (fieldhub device import).
func ReadCreds(r io.Reader) ([]Cred, error) {
	cr := csv.NewReader(r)
	rows, err := cr.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("read credentials: %w", err)
	}
	if len(rows) == 0 || len(rows[0]) < 2 || rows[0][0] != "id" || rows[0][1] != "token" {
		return nil, errors.New(`read credentials: want CSV with an "id,token" header`)
	}
	out := make([]Cred, 0, len(rows)-1)
	for _, row := range rows[1:] {
		if len(row) >= 2 && row[0] != "" {
			out = append(out, Cred{ID: row[0], Token: row[1]})
		}
	}
	return out, nil
}

// WriteCreds writes credentials in the format ReadCreds reads.
func WriteCreds(w io.Writer, creds []Cred) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"id", "token"})
	for _, c := range creds {
		_ = cw.Write([]string{c.ID, c.Token})
	}
	cw.Flush()
	return cw.Error()
}
