package firmwaresim

import (
	"slices"
	"testing"
	"time"
)

func TestAnonymousConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"anonymous mqtt fleet", Config{MQTT: "127.0.0.1:1883", Transport: TransportMQTT, Anonymous: true}, true},
		{"anonymous with provisioning", Config{Hub: "http://127.0.0.1:1", MQTT: "127.0.0.1:1883", Transport: TransportMQTT, Anonymous: true, Provision: true}, false},
		{"anonymous with credentials", Config{MQTT: "127.0.0.1:1883", Transport: TransportMQTT, Anonymous: true, Creds: []Cred{{"a", "t"}}}, false},
		{"anonymous websocket fleet", Config{Hub: "http://127.0.0.1:1", Transport: TransportWS, Anonymous: true}, false},
		{"anonymous mixed fleet", Config{Hub: "http://127.0.0.1:1", MQTT: "127.0.0.1:1883", Transport: TransportMix, Anonymous: true}, false},
		{"neither credentials nor provisioning", Config{MQTT: "127.0.0.1:1883", Transport: TransportMQTT}, false},
	} {
		err := tc.cfg.ensureDefaults()
		if (err == nil) != tc.ok {
			t.Errorf("%s: ensureDefaults() = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
	if got := anonymousCreds("peer", 3); !slices.Equal(got, []Cred{{ID: "peer-1"}, {ID: "peer-2"}, {ID: "peer-3"}}) {
		t.Errorf("anonymousCreds = %v", got)
	}
}

// TestAckedByMark: an acknowledged reading counts in the window of its
// send time, however late its ack.
func TestAckedByMark(t *testing.T) {
	t1 := time.UnixMilli(1000)
	t2 := time.UnixMilli(2000)
	c := counters{marks: []time.Time{t1, t2}, ackedByMark: make([]int64, 3)}
	for _, tc := range []struct {
		sent time.Time
		n    int
	}{
		{t1.Add(-time.Microsecond), 1}, // window 0, before the first mark
		{t1, 10},                       // window 1 from its start on
		{t2.Add(-time.Microsecond), 100},
		{t2, 1000},
		{t2.Add(time.Hour), 10000},
	} {
		c.ack(tc.sent, tc.n, time.Millisecond)
	}
	if want := []int64{1, 110, 11000}; !slices.Equal(c.ackedByMark, want) {
		t.Fatalf("acked by window %v, want %v", c.ackedByMark, want)
	}
	var f Fleet
	before := time.Now()
	m := f.Mark()
	if !m.After(before) || m.Sub(before) > time.Millisecond || m.Nanosecond()%int(time.Millisecond) != 0 {
		t.Fatalf("Mark() = %v at %v: want the next whole millisecond", m, before)
	}
	if got := f.AckedByMark(); !slices.Equal(got, []int64{0, 0}) {
		t.Fatalf("after one mark: %v, want two empty windows", got)
	}
}
