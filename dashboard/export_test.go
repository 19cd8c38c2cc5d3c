package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry/influx"
	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// exportRig is the operator API with history and export on a real
// influxd, the points written straight to InfluxDB.
type exportRig struct {
	srv    *httptest.Server
	influx *influxtest.Server
	viewer string
}

func newExportRig(t *testing.T, maxRows int) *exportRig {
	t.Helper()
	st, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := devices.Open(context.Background(), st, devices.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := influxtest.Start(t)
	ic := influx.NewClient(influx.Options{URL: srv.URL, Bucket: srv.Bucket, Timeout: 5 * time.Second})
	api, err := New(Options{Registry: reg, History: ic, Export: ic, MaxExportRows: maxRows, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	r := &exportRig{srv: httptest.NewServer(mux), influx: srv}
	t.Cleanup(func() { r.srv.Close(); ic.Close(); reg.Close(); st.Close() })
	if _, err := reg.Create(context.Background(), devices.Spec{ID: "exp-1"}); err != nil {
		t.Fatal(err)
	}
	_, r.viewer, _ = reg.CreateOperatorToken(context.Background(), "screen", devices.RoleViewer)
	return r
}

func (r *exportRig) write(t *testing.T, lines string) {
	t.Helper()
	resp, err := http.Post(r.influx.URL+"/write?db="+r.influx.DB+"&precision=ms", "text/plain", strings.NewReader(lines))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("write: %d", resp.StatusCode)
	}
}

func (r *exportRig) get(t *testing.T, query string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", r.srv.URL+"/api/v1/devices/exp-1/export?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+r.viewer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestExport: CSV and JSON lines of one or several metrics in time order
// (every series of the device merged), the file name, the row bound with
// its last line, and 400 naming the rule for bad input.
func TestExport(t *testing.T) {
	r := newExportRig(t, 5)
	base := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	ms := func(s int) int64 { return base.Add(time.Duration(s) * time.Second).UnixMilli() }
	// temp and state interleaved; one temp point in a second series (a
	// label written as a tag), between the others in time.
	r.write(t, fmt.Sprintf(`telemetry,device=exp-1 temp=21.5 %d
telemetry,device=exp-1 state="idle, waiting" %d
telemetry,device=exp-1,site=north temp=22 %d
telemetry,device=exp-1 temp=23.25,on=true %d
telemetry,device=exp-1 state="=cmd()" %d
telemetry,device=other temp=99 %d
`, ms(0), ms(1), ms(2), ms(3), ms(4), ms(2)))
	rng := fmt.Sprintf("&start=%d&stop=%d", ms(0), ms(60))

	resp, body := r.get(t, "metric=temp&metric=state&metric=on"+rng)
	if resp.StatusCode != 200 {
		t.Fatalf("csv: %d %s", resp.StatusCode, body)
	}
	wantCSV := `time,device,metric,value
2026-11-30T12:00:00.000Z,exp-1,temp,21.5
2026-11-30T12:00:01.000Z,exp-1,state,"idle, waiting"
2026-11-30T12:00:02.000Z,exp-1,temp,22
2026-11-30T12:00:03.000Z,exp-1,temp,23.25
2026-11-30T12:00:03.000Z,exp-1,on,true
# truncated at 5 rows
`
	if body != wantCSV {
		t.Errorf("csv:\n%s\nwant:\n%s", body, wantCSV)
	}
	if got := resp.Header.Get("Content-Disposition"); got != `attachment; filename="exp-1-20261130T120000Z-20261130T120100Z.csv"` {
		t.Errorf("Content-Disposition %q", got)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/csv; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}

	resp, body = r.get(t, "metric=state&format=jsonl"+rng)
	if resp.StatusCode != 200 || !strings.HasSuffix(resp.Header.Get("Content-Disposition"), `.jsonl"`) {
		t.Fatalf("jsonl: %d %v", resp.StatusCode, resp.Header)
	}
	lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("jsonl lines %q", lines)
	}
	for i, want := range []map[string]any{
		{"ts": float64(ms(1)), "device": "exp-1", "metric": "state", "value": "idle, waiting"},
		{"ts": float64(ms(4)), "device": "exp-1", "metric": "state", "value": "=cmd()"},
	} {
		var got map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &got); err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("line %d = %s (%v), want %v", i, lines[i], err, want)
		}
	}
	// A formula-like string is quoted and defused in CSV, kept in JSON.
	if _, body := r.get(t, "metric=state"+rng); !strings.Contains(body, `state,"'=cmd()"`) {
		t.Errorf("formula not defused:\n%s", body)
	}
	// Past the bound, JSON lines end with {"truncated":true}; exactly at
	// it, nothing is added.
	if _, body := r.get(t, "metric=temp&metric=state&metric=on&format=jsonl"+rng); !strings.HasSuffix(body, "}\n{\"truncated\":true}\n") || strings.Count(body, "\n") != 6 {
		t.Errorf("truncated jsonl:\n%s", body)
	}
	r.write(t, fmt.Sprintf("telemetry,device=exp-1 temp=1 %d\ntelemetry,device=exp-1 temp=2 %d\n", ms(5), ms(6)))
	if _, body := r.get(t, "metric=temp"+rng); strings.Contains(body, "#") || strings.Count(body, "\n") != 6 {
		t.Errorf("exactly 5 rows:\n%s", body)
	}
	if _, body := r.get(t, "metric=nothing"+rng); body != "time,device,metric,value\n" {
		t.Errorf("no rows: %q", body)
	}

	many := strings.Repeat("metric=m&", 16) + "metric=m17"
	for _, tc := range []struct{ query, errHas string }{
		{"" + rng, "metric: give 1 to 16"},
		{many + rng, "metric: give 1 to 16"},
		{"metric=bad%20name" + rng, `is not a valid metric name`},
		{"metric=temp&metric=temp" + rng, `is named twice`},
		{"metric=temp&format=xml" + rng, "format must be csv or jsonl"},
		{"metric=temp&start=-1h&stop=-2h", "start must be before stop"},
		{"metric=temp&start=yesterday", "start: use now"},
	} {
		resp, body := r.get(t, tc.query)
		if resp.StatusCode != 400 || !strings.Contains(body, tc.errHas) {
			t.Errorf("%s: %d %s, want 400 saying %q", tc.query, resp.StatusCode, body, tc.errHas)
		}
	}
	req, _ := http.NewRequest("GET", r.srv.URL+"/api/v1/devices/nope/export?metric=temp", nil)
	req.Header.Set("Authorization", "Bearer "+r.viewer)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 404 {
		t.Errorf("unknown device: %v %v", resp.StatusCode, err)
	}
	r.influx.Stop()
	if resp, body := r.get(t, "metric=temp"+rng); resp.StatusCode != 502 {
		t.Errorf("influxdb down: %d %s", resp.StatusCode, body)
	}
}
