package main

import (
	"io"
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
