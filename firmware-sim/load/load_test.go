package load

import (
	"testing"
	"time"
)

func TestFellBehind(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   Step
		want bool
	}{
		{"kept up", Step{Target: 1000, Offered: 1000, Acked: 990, AckP99: 50}, false},
		{"acks at 97 %", Step{Target: 1000, Offered: 1000, Acked: 970, AckP99: 50}, false},
		{"acks under 97 %", Step{Target: 1000, Offered: 1000, Acked: 969, AckP99: 50}, true},
		{"p99 over 2 s", Step{Target: 1000, Offered: 1000, Acked: 1000, AckP99: 2001}, true},
		{"offered under 90 % of target", Step{Target: 1000, Offered: 899, Acked: 899, AckP99: 50}, true},
	} {
		if got := fellBehind(tc.st); got != tc.want {
			t.Errorf("%s: fellBehind = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestLatencyRingMatchesOnlyKnownSequence(t *testing.T) {
	r := newLatencyRing()
	n := r.stamp()
	if _, ok := r.since(n, time.Now()); !ok {
		t.Fatal("a fresh stamp is not known")
	}
	if _, ok := r.since(n+1, time.Now()); ok {
		t.Fatal("an unsent sequence number matched")
	}
	for range ringSize {
		r.stamp()
	}
	if _, ok := r.since(n, time.Now()); ok {
		t.Fatal("a stamp a full ring old still matched")
	}
}
