package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestSpoolCommitIntervalSetting: FIELDHUB_SPOOL_COMMIT_INTERVAL defaults
// to 2 ms, 0 switches the wait off, and values below 0 or above 100 ms
// (which every acknowledgement would pay) are refused with the setting's
// name; the flag wins over the environment.
func TestSpoolCommitIntervalSetting(t *testing.T) {
	tests := []struct {
		env, flag string
		want      time.Duration
		wantErr   bool
	}{
		{env: "", want: 2 * time.Millisecond},
		{env: "0", want: 0},
		{env: "5ms", want: 5 * time.Millisecond},
		{env: "100ms", want: 100 * time.Millisecond},
		{env: "5ms", flag: "1ms", want: time.Millisecond},
		{env: "101ms", wantErr: true},
		{env: "-1ms", wantErr: true},
		{env: "2", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.env+"/"+tt.flag, func(t *testing.T) {
			getenv := func(k string) string {
				if k == "FIELDHUB_SPOOL_COMMIT_INTERVAL" {
					return tt.env
				}
				return ""
			}
			var args []string
			if tt.flag != "" {
				args = []string{"--spool-commit-interval", tt.flag}
			}
			c, err := parseConfig(args, getenv, io.Discard)
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "FIELDHUB_SPOOL_COMMIT_INTERVAL") {
					t.Fatalf("err = %v, want one naming FIELDHUB_SPOOL_COMMIT_INTERVAL", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.SpoolCommitInterval != tt.want {
				t.Errorf("SpoolCommitInterval = %v, want %v", c.SpoolCommitInterval, tt.want)
			}
		})
	}
}

// TestAlertNotificationSettings: the Alertmanager and webhook URLs must be
// http(s), a webhook needs its secret (and a secret its webhook), and
// neither the URLs (they may carry credentials) nor the secret reach the
// log or an error message.
func TestAlertNotificationSettings(t *testing.T) {
	const (
		amURL   = "https://am-user:am-pass-51@alertmanager.internal:9093"
		hookURL = "https://hooks.example.com/fieldhub?token=hook-token-77"
		secret  = "whsec-config-test-3e"
	)
	tests := []struct {
		name    string
		env     map[string]string
		wantErr []string // every string the error must contain
	}{
		{name: "none"},
		{name: "alertmanager only", env: map[string]string{"FIELDHUB_ALERTMANAGER_URL": amURL}},
		{name: "webhook with secret", env: map[string]string{"FIELDHUB_ALERT_WEBHOOK_URL": hookURL, "FIELDHUB_ALERT_WEBHOOK_SECRET": secret}},
		{name: "all", env: map[string]string{"FIELDHUB_ALERTMANAGER_URL": amURL, "FIELDHUB_ALERT_WEBHOOK_URL": hookURL, "FIELDHUB_ALERT_WEBHOOK_SECRET": secret}},
		{name: "webhook without secret", env: map[string]string{"FIELDHUB_ALERT_WEBHOOK_URL": hookURL},
			wantErr: []string{"FIELDHUB_ALERT_WEBHOOK_URL", "FIELDHUB_ALERT_WEBHOOK_SECRET"}},
		{name: "secret without webhook", env: map[string]string{"FIELDHUB_ALERT_WEBHOOK_SECRET": secret},
			wantErr: []string{"FIELDHUB_ALERT_WEBHOOK_SECRET", "FIELDHUB_ALERT_WEBHOOK_URL"}},
		{name: "alertmanager not http", env: map[string]string{"FIELDHUB_ALERTMANAGER_URL": "tcp://am-user:am-pass-51@am:9093"},
			wantErr: []string{"FIELDHUB_ALERTMANAGER_URL", "http(s)"}},
		{name: "alertmanager no host", env: map[string]string{"FIELDHUB_ALERTMANAGER_URL": "http://"}, wantErr: []string{"FIELDHUB_ALERTMANAGER_URL"}},
		{name: "webhook relative", env: map[string]string{"FIELDHUB_ALERT_WEBHOOK_URL": "/hook", "FIELDHUB_ALERT_WEBHOOK_SECRET": secret},
			wantErr: []string{"FIELDHUB_ALERT_WEBHOOK_URL", "http(s)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseConfig(nil, func(k string) string { return tt.env[k] }, io.Discard)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatal("accepted")
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("err = %v, want it to name %s", err, w)
					}
				}
				for _, s := range []string{"am-pass-51", "hook-token-77", secret} {
					if strings.Contains(err.Error(), s) {
						t.Errorf("err %q repeats a credential", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.AlertmanagerURL != tt.env["FIELDHUB_ALERTMANAGER_URL"] || c.AlertWebhookURL != tt.env["FIELDHUB_ALERT_WEBHOOK_URL"] || c.AlertWebhookSecret != tt.env["FIELDHUB_ALERT_WEBHOOK_SECRET"] {
				t.Errorf("config = %q %q %q", c.AlertmanagerURL, c.AlertWebhookURL, c.AlertWebhookSecret)
			}
			var logged strings.Builder
			slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "config", c)
			for _, s := range []string{"am-pass-51", "alertmanager.internal", "hooks.example.com", "hook-token-77", secret} {
				if strings.Contains(logged.String(), s) {
					t.Errorf("the logged config contains %q: %s", s, logged.String())
				}
			}
			for k, env := range map[string]string{"alertmanager_url_set": "FIELDHUB_ALERTMANAGER_URL", "alert_webhook_url_set": "FIELDHUB_ALERT_WEBHOOK_URL", "alert_webhook_secret_set": "FIELDHUB_ALERT_WEBHOOK_SECRET"} {
				want := fmt.Sprintf(`"%s":%t`, k, tt.env[env] != "")
				if !strings.Contains(logged.String(), want) {
					t.Errorf("logged config lacks %s: %s", want, logged.String())
				}
			}
		})
	}
	var help strings.Builder
	_, _ = parseConfig([]string{"--help"}, func(k string) string {
		return map[string]string{"FIELDHUB_ALERTMANAGER_URL": amURL, "FIELDHUB_ALERT_WEBHOOK_URL": hookURL, "FIELDHUB_ALERT_WEBHOOK_SECRET": secret}[k]
	}, &help)
	for _, s := range []string{"am-pass-51", "hook-token-77", secret} {
		if strings.Contains(help.String(), s) {
			t.Errorf("--help shows %q", s)
		}
	}
}
