package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestReadyAggregator: /readyz is 200 "ready" when every check says the
// hub can take readings (a degraded one included) and 503 "not_ready" when
// any says it cannot; every check's status is reported under its key.
func TestReadyAggregator(t *testing.T) {
	fixed := func(key, status string, ok bool) healthCheck {
		return healthCheck{Key: key, Check: func(context.Context) (check, bool) { return check{Status: status}, ok }}
	}
	tests := []struct {
		name       string
		checks     health
		wantCode   int
		wantStatus string
	}{
		{"all ok", health{fixed("registry", "ok", true), fixed("spool", "ok", true)}, http.StatusOK, "ready"},
		{"degraded is still ready", health{fixed("influxdb", "spooling", true), fixed("mqtt", "disconnected", true)}, http.StatusOK, "ready"},
		{"one unready", health{fixed("registry", "ok", true), fixed("spool", "full", false), fixed("mqtt", "listening", true)}, http.StatusServiceUnavailable, "not_ready"},
		{"unready first", health{fixed("registry", "unavailable", false), fixed("spool", "ok", true)}, http.StatusServiceUnavailable, "not_ready"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			tt.checks.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
			if rec.Code != tt.wantCode {
				t.Fatalf("code %d, want %d", rec.Code, tt.wantCode)
			}
			var body struct {
				Status string
				Checks map[string]check
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatal(err)
			}
			if body.Status != tt.wantStatus {
				t.Errorf("status %q, want %q", body.Status, tt.wantStatus)
			}
			for _, hc := range tt.checks {
				want, _ := hc.Check(context.Background())
				if got := body.Checks[hc.Key]; got.Status != want.Status {
					t.Errorf("check %s = %q, want %q", hc.Key, got.Status, want.Status)
				}
			}
			if got := rec.Header().Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control %q, want no-store", got)
			}
		})
	}
}
