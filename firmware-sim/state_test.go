package firmwaresim

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func testDevice(t *testing.T, batch int) *device {
	t.Helper()
	f, err := New(Config{Hub: "http://127.0.0.1:1", Creds: []Cred{{ID: "d-1", Token: "x"}}, Rate: 1, Batch: batch})
	if err != nil {
		t.Fatal(err)
	}
	return newDevice(f, 0, Cred{ID: "d-1"}, TransportWS)
}

func raw(m map[string]any) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for k, v := range m {
		b, _ := json.Marshal(v)
		out[k] = b
	}
	return out
}

// TestApplyDesired: the firmware applies the desired keys it understands
// within range, reports exactly what changed, and leaves the rest.
func TestApplyDesired(t *testing.T) {
	for _, tc := range []struct {
		name         string
		batch        int
		desired      map[string]any
		wantPatch    map[string]any // nil: no patch sent
		wantInterval time.Duration  // between messages
		wantFault    float64
		wantRefused  int64
	}{
		{"interval", 1, map[string]any{"interval": 5}, map[string]any{"interval": 5.0}, 5 * time.Second, 0, 0},
		{"interval with batches", 4, map[string]any{"interval": 0.5}, map[string]any{"interval": 0.5}, 2 * time.Second, 0, 0},
		{"fault rate", 1, map[string]any{"fault_rate": 0.25}, map[string]any{"fault_rate": 0.25}, time.Second, 0.25, 0},
		{"both and an unknown key", 1, map[string]any{"interval": 2, "fault_rate": 1, "colour": "red"}, map[string]any{"interval": 2.0, "fault_rate": 1.0}, 2 * time.Second, 1, 0},
		{"already so", 1, map[string]any{"interval": 1, "fault_rate": 0}, nil, time.Second, 0, 0},
		{"interval out of range", 1, map[string]any{"interval": 0}, nil, time.Second, 0, 1},
		{"interval too long", 1, map[string]any{"interval": 86401}, nil, time.Second, 0, 1},
		{"interval not a number", 1, map[string]any{"interval": "5s"}, nil, time.Second, 0, 1},
		{"fault rate above 1", 1, map[string]any{"fault_rate": 1.5}, nil, time.Second, 0, 1},
		{"nothing understood", 1, map[string]any{"colour": "red"}, nil, time.Second, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := testDevice(t, tc.batch)
			d.connectReport() // what the hub was told at connect
			frame := d.applyDesired(desiredDoc{Desired: raw(tc.desired), Version: 3})
			if tc.wantPatch == nil {
				if frame != nil {
					t.Fatalf("sent %s, want nothing", frame)
				}
			} else {
				var f struct {
					Type, ID string
					Reported map[string]any
				}
				if err := json.Unmarshal(frame, &f); err != nil || f.Type != "state" || !isStateID(f.ID) {
					t.Fatalf("frame %s: %v", frame, err)
				}
				if b, w := mustJSON(f.Reported), mustJSON(tc.wantPatch); b != w {
					t.Fatalf("reported %s, want %s", b, w)
				}
				if p := string(reportPatch(frame)); p != mustJSON(tc.wantPatch) {
					t.Fatalf("MQTT payload %s, want %s", p, mustJSON(tc.wantPatch))
				}
			}
			if d.interval != tc.wantInterval || d.faultRate != tc.wantFault || d.st.desiredVersion != 3 {
				t.Fatalf("runs with interval %v fault rate %v desired version %d", d.interval, d.faultRate, d.st.desiredVersion)
			}
			if n := d.f.c.desiredRefused.Load(); n != tc.wantRefused {
				t.Fatalf("refused %d values, want %d", n, tc.wantRefused)
			}
			// Applying the same document again changes nothing and sends nothing.
			if again := d.applyDesired(desiredDoc{Desired: raw(tc.desired), Version: 3}); again != nil {
				t.Fatalf("the same desired document again sent %s", again)
			}
		})
	}
}

func mustJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

// TestConnectReport: firmware, boot time and the settings the device
// runs with, the desired number exactly once one was applied.
func TestConnectReport(t *testing.T) {
	d := testDevice(t, 3)
	var f struct{ Reported map[string]any }
	if err := json.Unmarshal(d.connectReport(), &f); err != nil {
		t.Fatal(err)
	}
	bt, err := time.Parse(time.RFC3339, f.Reported["boot_time"].(string))
	if f.Reported["firmware"] != Firmware || err != nil || time.Since(bt) > time.Minute || f.Reported["interval"] != 1.0 || f.Reported["fault_rate"] != 0.0 {
		t.Fatalf("connect report %v", f.Reported)
	}
	d.applyDesired(desiredDoc{Desired: raw(map[string]any{"interval": 0.1})})
	_ = json.Unmarshal(d.connectReport(), &f)
	if f.Reported["interval"] != 0.1 {
		t.Fatalf("after interval 0.1 the connect report says %v", f.Reported["interval"])
	}
}

// TestDesiredQueueCoalesces: the reader never blocks and the send loop
// gets the newest document.
func TestDesiredQueueCoalesces(t *testing.T) {
	q := newDesiredQueue()
	for v := int64(1); v <= 5; v++ {
		q.put(desiredDoc{Version: v})
	}
	if got := <-q; got.Version != 5 {
		t.Fatalf("got version %d, want the newest, 5", got.Version)
	}
	select {
	case got := <-q:
		t.Fatalf("a second document %d waited", got.Version)
	default:
	}
}

// TestDeviceStateOverWebSocket runs one simulated device against a
// WebSocket peer speaking the hub's state frames: the device reports its
// firmware at connect, applies a desired document the peer sends, reports
// it back with a "state" frame and counts the acks.
func TestDeviceStateOverWebSocket(t *testing.T) {
	type got struct {
		Type     string
		ID       string
		Reported map[string]any
	}
	frames := make(chan got, 64)
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		// The hub sends the desired document on connect.
		_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"state","desired":{"interval":2,"fault_rate":0,"colour":"red"},"delta":{"interval":2,"colour":"red"},"version":7}`))
		for {
			_, data, err := c.ReadMessage()
			if err != nil {
				return
			}
			var f got
			if json.Unmarshal(data, &f) != nil {
				continue
			}
			ack := map[string]any{"type": "ack", "id": f.ID}
			if f.Type == "state" {
				ack["version"] = 1
			}
			b, _ := json.Marshal(ack)
			_ = c.WriteMessage(websocket.TextMessage, b)
			select {
			case frames <- f:
			default:
			}
		}
	}))
	defer srv.Close()
	fleet, err := New(Config{Hub: srv.URL, Creds: []Cred{{ID: "d-1", Token: "t"}}, Devices: 1, Rate: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fleet.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var states []got
	deadline := time.After(60 * time.Second)
	for len(states) < 2 {
		select {
		case f := <-frames:
			if f.Type == "state" {
				states = append(states, f)
			}
		case <-deadline:
			t.Fatalf("state frames so far: %v", states)
		}
	}
	// In either order: the connect report and the applied desired.
	var connect, applied map[string]any
	for _, s := range states {
		if _, ok := s.Reported["firmware"]; ok {
			connect = s.Reported
		} else {
			applied = s.Reported
		}
	}
	if connect == nil || connect["firmware"] != Firmware || connect["boot_time"] == nil {
		t.Errorf("connect report %v", connect)
	}
	if applied != nil && mustJSON(applied) != `{"interval":2}` {
		t.Errorf("applied report %v, want interval 2 alone", applied)
	}
	if applied == nil && connect["interval"] != 2.0 {
		t.Errorf("neither report says interval 2: %v", states)
	}
	pollFor(t, "the acks counted and the state applied", func() bool {
		st, ds := fleet.Stats(), fleet.States()
		return st.StateAcked >= 2 && st.DesiredReceived == 1 && len(ds) == 1 && ds[0].Interval == 2 && ds[0].DesiredVersion == 7
	})
	if st := fleet.Stats(); st.Violations != 0 {
		t.Fatalf("violations: %v", st.ViolationSamples)
	}
}

func pollFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond) // polling counters, not synchronising
	}
}
