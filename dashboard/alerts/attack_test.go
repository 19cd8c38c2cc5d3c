package alerts_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/dashboard/alerts"
	"github.com/fieldhub/fieldhub/dashboard/alerts/boltstore"
	"github.com/fieldhub/fieldhub/dashboard/operator"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// serveEngine runs the harness's engine and serves its routes as an
// admin (the dashboard's role checks are tested end to end).
func serveEngine(t *testing.T, h *harness) *httptest.Server {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = h.e.Run(ctx) }()
	mux := http.NewServeMux()
	for _, r := range h.e.Routes() {
		mux.Handle(r.Pattern, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			r.Handler(w, req.WithContext(operator.WithOperator(req.Context(), devices.Operator{Name: "root", Role: devices.RoleAdmin})))
		}))
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(func() { srv.Close(); cancel(); wg.Wait() })
	return srv
}

func post(t *testing.T, url string, body []byte) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

func TestAttackAlertsRuleBodies(t *testing.T) {
	h := newHarness(t)
	srv := serveEngine(t, h)
	ids := make([]string, 10000)
	for i := range ids {
		ids[i] = fmt.Sprintf(`"dev-%d"`, i)
	}
	tenK := `{"name":"a","selector":{"devices":[` + strings.Join(ids, ",") + `]},"severity":"info","condition":{"type":"offline","for":"1m"}}`
	for _, tc := range []struct {
		name, body string
		status     int
		want       string
	}{
		{"10,000 devices", tenK, 413, "too_large"},
		{"1001 devices", `{"name":"a","selector":{"devices":[` + strings.Join(ids[:1001], ",") + `]},"severity":"info","condition":{"type":"offline","for":"1m"}}`, 400, "selector.devices: at most 1000"},
		{"huge name", `{"name":"` + strings.Repeat("x", 70000) + `"}`, 413, "too_large"},
		{"unknown field", `{"name":"a","severity":"info","condition":{"type":"offline","for":"1m"},"admin":true}`, 400, "unknown field"},
		{"unknown condition field", `{"name":"a","severity":"info","condition":{"type":"offline","for":"1m","script":"x"}}`, 400, "unknown field"},
		{"trailing data", `{"name":"a","severity":"info","condition":{"type":"offline","for":"1m"}} {}`, 400, "trailing data"},
		{"not json", `{"name":`, 400, "invalid JSON body"},
		{"nan value", `{"name":"a","severity":"info","condition":{"type":"threshold","metric":"t","op":">","value":"NaN"}}`, 400, "invalid JSON body"},
		{"bad duration", `{"name":"a","severity":"info","condition":{"type":"offline","for":"soon"}}`, 400, "duration string"},
	} {
		st, body := post(t, srv.URL+"/api/v1/alert-rules", []byte(tc.body))
		if st != tc.status || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %.200s; want %d with %q", tc.name, st, body, tc.status, tc.want)
		}
	}
}

func TestAttackAlertsRuleCountBound(t *testing.T) {
	h := newHarness(t)
	srv := serveEngine(t, h)
	body := []byte(`{"name":"r","severity":"info","condition":{"type":"threshold","metric":"temp","op":">","value":1}}`)
	for i := range alerts.MaxRules {
		if st, b := post(t, srv.URL+"/api/v1/alert-rules", body); st != 201 {
			t.Fatalf("rule %d: %d %s", i, st, b)
		}
	}
	if st, b := post(t, srv.URL+"/api/v1/alert-rules", body); st != 400 || !strings.Contains(b, "rules: at most 1000") {
		t.Fatalf("rule 1001: %d %s", st, b)
	}
	resp, err := http.Get(srv.URL + "/api/v1/alert-rules")
	if err != nil {
		t.Fatal(err)
	}
	var m struct{ Rules []alerts.Rule }
	_ = json.NewDecoder(resp.Body).Decode(&m)
	resp.Body.Close()
	if len(m.Rules) != alerts.MaxRules {
		t.Fatalf("%d rules listed", len(m.Rules))
	}
}

func TestAttackAlertsAckNote(t *testing.T) {
	h := newHarness(t)
	h.rule(hot)
	h.reading("pump-1", 90)
	a := h.state("pump-1")
	srv := serveEngine(t, h)
	st, body := post(t, srv.URL+"/api/v1/alerts/"+a.ID+"/ack", []byte(`{"note":"ok\u001b[2J\nrm -rf"}`))
	if st != 200 || !strings.Contains(body, `ok\\x1b[2J\\nrm -rf`) {
		t.Fatalf("ack: %d %s", st, body)
	}
	st, body = post(t, srv.URL+"/api/v1/alerts/"+a.ID+"/ack", []byte(`{"note":"`+strings.Repeat("x", 1001)+`"}`))
	if st != 400 || !strings.Contains(body, "note: at most 1000") {
		t.Fatalf("long note: %d %s", st, body)
	}
	if st, _ := post(t, srv.URL+"/api/v1/alerts/alert-nope/ack", []byte(`{}`)); st != 404 {
		t.Fatalf("unknown alert: %d", st)
	}
	for _, tc := range []struct{ body, want string }{
		{`{"for":"1h"}`, "rule_id: give rule_id and/or device"},
		{`{"device":"pump-1","for":"800h"}`, "until: must be in the future and at most 30 days away"},
		{`{"device":"pump-1","until":"yesterday"}`, "until: must be an RFC 3339 time"},
		{`{"device":"no such/device","for":"1h"}`, "device: not a valid device id"},
		{`{"rule_id":"rule-nope","for":"1h"}`, "rule_id: no such rule"},
	} {
		if st, b := post(t, srv.URL+"/api/v1/silences", []byte(tc.body)); st != 400 || !strings.Contains(b, tc.want) {
			t.Errorf("silence %s: %d %s", tc.body, st, b)
		}
	}
}

// slowStore is a store whose transitions hang until released: a
// PostgreSQL that stopped answering.
type slowStore struct {
	*boltstore.Store
	release chan struct{}
	entered chan struct{}
	once    sync.Once
}

func (s *slowStore) Apply(ctx context.Context, t alerts.Transition) error {
	s.once.Do(func() { close(s.entered) })
	select {
	case <-s.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.Store.Apply(ctx, t)
}

func TestAttackAlertsFloodWhileStoreHangs(t *testing.T) {
	h := newHarness(t)
	st := &slowStore{Store: h.store, release: make(chan struct{}), entered: make(chan struct{})}
	v := 1.0
	_ = h.store.PutRule(h.ctx, alerts.Rule{ID: "rule-s", Version: 1, RuleSpec: alerts.RuleSpec{Name: "s", Severity: "info",
		Condition: alerts.Condition{Type: alerts.CondThreshold, Metric: "temp", Op: ">", Value: &v}}}, 0)
	e, _ := alerts.New(alerts.Options{Store: st, Devices: h.fleet, QueueSize: 64})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	ev := telemetry.Event{Type: telemetry.EventReading, Device: "pump-1", Metrics: telemetry.Metrics{"temp": telemetry.Number(5)}}
	// Until Run has loaded the rule, readings are not even queued.
	stuck := time.After(30 * time.Second)
	for waiting := true; waiting; {
		e.Publish(ev)
		select {
		case <-st.entered: // the engine is stuck in the store
			waiting = false
		case <-stuck:
			t.Fatal("the engine never reached the store")
		case <-time.After(10 * time.Millisecond):
		}
	}
	for range 10000 {
		e.Publish(ev) // returns at once: the bridge never waits
	}
	if d := e.Stats().Dropped; d < 10000-64 {
		t.Fatalf("dropped %d, want at least %d", d, 10000-64)
	}
	close(st.release)
	deadline := time.Now().Add(30 * time.Second)
	for h.state("pump-1").State != alerts.StateFiring {
		if time.Now().After(deadline) {
			t.Fatal("the engine did not recover after the store came back")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FuzzRuleSpec: any rule body decodes and validates without panicking,
// and a valid rule survives a round trip unchanged in meaning.
func FuzzRuleSpec(f *testing.F) {
	f.Add([]byte(hot))
	f.Add([]byte(`{"name":"a","severity":"info","condition":{"type":"rejections","count":3,"window":"1m"}}`))
	f.Add([]byte(`{"name":"a","severity":"info","condition":{"type":"no_data","metric":"t","for":"1h"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var spec alerts.RuleSpec
		if json.Unmarshal(b, &spec) != nil || spec.Validate() != nil {
			return
		}
		out, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		var again alerts.RuleSpec
		if err := json.Unmarshal(out, &again); err != nil {
			t.Fatalf("%s: %v", out, err)
		}
		if err := again.Validate(); err != nil {
			t.Fatalf("valid rule %s invalid after a round trip: %v", out, err)
		}
	})
}
