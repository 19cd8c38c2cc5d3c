package dashboard

import (
	"testing"
	"time"
)

// TestParseTime: the forms history accepts for start and stop, and a
// relative time takes one sign only ("--5m" is not five minutes ahead).
func TestParseTime(t *testing.T) {
	now := time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC)
	def := now.Add(-time.Hour)
	for _, c := range []struct {
		in   string
		want time.Time
		bad  bool
	}{
		{"", def, false},
		{"now", now, false},
		{"-5m", now.Add(-5 * time.Minute), false},
		{"-1h30m", now.Add(-90 * time.Minute), false},
		{"1764586800000", time.UnixMilli(1764586800000), false},
		{"2026-12-01T10:00:00Z", time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), false},
		{"2026-12-01", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), false},
		{"--5m", time.Time{}, true},
		{"--10m", time.Time{}, true},
		{"-+5m", time.Time{}, true},
		{"-", time.Time{}, true},
		{"-5", time.Time{}, true},
		{"-9999999h", time.Time{}, true},
		{"+1h", time.Time{}, true},
	} {
		got, err := parseTime(c.in, now, def)
		if c.bad != (err != nil) || !c.bad && !got.Equal(c.want) {
			t.Errorf("parseTime(%q) = %v, %v; want %v (refused: %v)", c.in, got, err, c.want, c.bad)
		}
	}
}
