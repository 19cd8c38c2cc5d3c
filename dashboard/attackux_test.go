package dashboard

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestAttackUXDownsampleUnknownString: a string metric InfluxDB holds
// but the schema store does not know (written before the hub kept a
// schema, or by another writer; the metric catalogue reports it as a
// string from InfluxDB) is charted with points=N. The readings endpoint
// takes its type from the schema only, so it aggregates the strings with
// mean: InfluxDB refuses and the operator gets 502 "InfluxDB did not
// answer" with the data right there, instead of the last value of each
// window and "type":"string".
func TestAttackUXDownsampleUnknownString(t *testing.T) {
	r := newExportRig(t, 0)
	now := time.Now()
	r.write(t, fmt.Sprintf("telemetry,device=exp-1 state=\"idle\" %d\ntelemetry,device=exp-1 state=\"run\" %d\n",
		now.Add(-30*time.Minute).UnixMilli(), now.Add(-10*time.Minute).UnixMilli()))
	req, _ := http.NewRequest("GET", r.srv.URL+"/api/v1/devices/exp-1/readings?metric=state&start=-1h&points=60", nil)
	req.Header.Set("Authorization", "Bearer "+r.viewer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out struct {
		Type   string `json:"type"`
		Points []struct {
			Value any `json:"value"`
		} `json:"points"`
	}
	_ = json.Unmarshal(b, &out)
	if resp.StatusCode != 200 {
		t.Fatalf("readings of a string metric the schema does not know: %d %s, want 200 with the last value per window", resp.StatusCode, b)
	}
	strs := 0
	for _, p := range out.Points {
		if _, ok := p.Value.(string); ok {
			strs++
		}
	}
	if out.Type != "string" || strs != 2 {
		t.Errorf("type %q, %d string values, want \"string\" and 2: %s", out.Type, strs, b)
	}
}
