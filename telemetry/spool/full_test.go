package spool

import (
	"testing"
	"time"
)

// TestStatsFull is the readiness policy: full when a largest message may
// not fit, or for FullHold after an append was refused for room.
func TestStatsFull(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const room = 100
	tests := []struct {
		name     string
		bytes    int64
		lastFull time.Time
		want     bool
	}{
		{"empty", 0, time.Time{}, false},
		{"exactly room left", 900, time.Time{}, false},
		{"one byte short of room", 901, time.Time{}, true},
		{"at the bound", 1000, time.Time{}, true},
		{"refused just now", 0, now, true},
		{"refused within the hold", 0, now.Add(-FullHold + time.Millisecond), true},
		{"refused a hold ago", 0, now.Add(-FullHold), false},
		{"refused long ago", 0, now.Add(-time.Hour), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := Stats{Bytes: tt.bytes, MaxBytes: 1000, LastFull: tt.lastFull}
			if got := st.Full(room, now); got != tt.want {
				t.Fatalf("Full(%d) with %d of 1000 bytes, last full %v = %v, want %v", room, tt.bytes, tt.lastFull, got, tt.want)
			}
		})
	}
}
