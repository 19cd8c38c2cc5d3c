package devices

import (
	"fmt"
	"strings"
	"testing"
)

func TestFailureLimiterPerPair(t *testing.T) {
	const burst = 5
	tests := []struct {
		name string
		// fails are recorded first, then check is asked.
		fails []string
		check string
		want  bool // Fail(check) within budget
	}{
		{"fresh pair", nil, FailureKey("10.0.0.1", "dev-a"), true},
		{"within burst", repeat(FailureKey("10.0.0.1", "dev-a"), burst-1), FailureKey("10.0.0.1", "dev-a"), true},
		{"past burst", repeat(FailureKey("10.0.0.1", "dev-a"), burst), FailureKey("10.0.0.1", "dev-a"), false},
		{"other identity, same address", repeat(FailureKey("10.0.0.1", "dev-a"), 50), FailureKey("10.0.0.1", "dev-b"), true},
		{"same identity, other address", repeat(FailureKey("10.0.0.1", "dev-a"), 50), FailureKey("10.0.0.2", "dev-a"), true},
		{"many identities from one address spend nothing of another", distinct("10.0.0.1", 100), FailureKey("10.0.0.1", "admin-token"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewFailureLimiter(0.001, burst)
			for _, k := range tt.fails {
				l.Fail(k)
			}
			if got := l.Fail(tt.check); got != tt.want {
				t.Errorf("Fail = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFailureKeyBounded(t *testing.T) {
	long := string(make([]byte, 1<<20))
	for _, k := range []string{FailureKey("1.2.3.4", long), FailureKey(long, "x"), FailureKey("", "")} {
		if len(k) > 100 {
			t.Errorf("key of %d bytes", len(k))
		}
	}
	if FailureKey("a", "secret-token") == FailureKey("a", "secret-tokem") {
		t.Error("distinct identities share a key")
	}
	if k := FailureKey("a", "fho_secret"); len(k) == 0 || strings.Contains(k, "secret") {
		t.Errorf("key %q holds the secret", k)
	}
}

func TestFailureLimiterTableBounded(t *testing.T) {
	l := NewFailureLimiter(0.001, 5)
	l.max = 1000
	for i := range 20000 {
		l.Fail(FailureKey("10.0.0.1", fmt.Sprint(i)))
		if n := l.Len(); n > l.max {
			t.Fatalf("table holds %d > %d entries", n, l.max)
		}
	}
	// The most recent guesser is still remembered.
	last := FailureKey("10.0.0.1", "19999")
	for range 10 {
		l.Fail(last)
	}
	if !l.Blocked(last) {
		t.Error("the most recent key was evicted")
	}
}

func TestConnectLimiter(t *testing.T) {
	tests := []struct {
		name    string
		connect []string
		addr    string
		want    bool
	}{
		{"fresh", nil, "10.0.0.1", true},
		{"within burst", repeat("10.0.0.1", 4), "10.0.0.1", true},
		{"past burst", repeat("10.0.0.1", 5), "10.0.0.1", false},
		{"other address unaffected", repeat("10.0.0.1", 50), "10.0.0.2", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewConnectLimiter(0.001, 5)
			for _, a := range tt.connect {
				l.Allow(a)
			}
			if got := l.Allow(tt.addr); got != tt.want {
				t.Errorf("Allow = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestConnectLimiterTableFull: a flood of new addresses fills the table;
// the next new address is still let in (the least recently seen go), and
// the table stays bounded.
func TestConnectLimiterTableFull(t *testing.T) {
	l := NewConnectLimiter(0.001, 5)
	for i := range limiterTableMax + 500 {
		l.Allow(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255))
	}
	if !l.Allow("192.0.2.1") {
		t.Error("a new address was refused because the table was full")
	}
	if n := l.Len(); n > limiterTableMax {
		t.Errorf("table holds %d addresses, bound %d", n, limiterTableMax)
	}
}

func repeat(k string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = k
	}
	return out
}

func distinct(addr string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = FailureKey(addr, fmt.Sprintf("fho_guess-%d", i))
	}
	return out
}
