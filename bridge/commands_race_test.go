package bridge

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/bridge/commands"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// gateConn is a Conn whose Close blocks until released (a transport whose
// Close is slow, or a preempted goroutine), and that records deliveries.
type gateConn struct {
	gate   chan struct{}
	mu     sync.Mutex
	closed string
	got    []string
}

func (c *gateConn) Close(reason string) {
	if c.gate != nil {
		<-c.gate
	}
	c.mu.Lock()
	c.closed = reason
	c.mu.Unlock()
}

func (c *gateConn) Deliver(cmd telemetry.Command) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, cmd.ID)
	return true
}

func (c *gateConn) ids() []string { c.mu.Lock(); defer c.mu.Unlock(); return slices.Clone(c.got) }

type memCmdStore struct {
	mu   sync.Mutex
	recs map[string]commands.Record
}

func (m *memCmdStore) PutCommand(_ context.Context, c commands.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs[c.ID] = c
	return nil
}
func (m *memCmdStore) GetCommand(_ context.Context, _, id string) (commands.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.recs[id], nil
}
func (m *memCmdStore) ListCommands(context.Context, string, string, int) ([]commands.Record, error) {
	return nil, nil
}
func (m *memCmdStore) ActiveCommands(context.Context) ([]commands.Record, error) { return nil, nil }

// TestLateConnectKeepsCurrentSessionsCommands: A's Connect is held up
// kicking an older session O; B connects meanwhile (kicking A). A's
// Connect then finishes with a late SessionOpened and A's transport
// disconnects it (it was superseded). B, the bridge's current session,
// must still receive commands: the command service keeps the session with
// the higher epoch, and epochs follow the order sessions become current.
func TestLateConnectKeepsCurrentSessionsCommands(t *testing.T) {
	cmds, err := commands.New(context.Background(), commands.Options{Store: &memCmdStore{recs: map[string]commands.Record{}}, Devices: registryStub{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = cmds.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	b := newTestBridge(t, Options{Commands: cmds})

	o := &gateConn{gate: make(chan struct{})}
	b.Connect("d", devices.TransportWS, "o", devices.TokenHash{}, o)
	a, bc := &gateConn{}, &gateConn{}
	aDone := make(chan *Session)
	go func() { aDone <- b.Connect("d", devices.TransportWS, "a", devices.TokenHash{}, a) }()
	// Wait until A is current in the bridge (and held in O's Close).
	for b.Current("d") == nil || b.Current("d").Remote != "a" {
		time.Sleep(time.Millisecond)
	}
	sb := b.Connect("d", devices.TransportWS, "b", devices.TokenHash{}, bc)
	close(o.gate)
	sa := <-aDone
	b.Disconnect(sa, ReasonSuperseded) // A's transport saw its kick
	if b.Current("d") != sb {
		t.Fatal("setup: B is not current")
	}
	rec, _, err := cmds.SendCommand(context.Background(), commands.Spec{Device: "d", Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !slices.Contains(bc.ids(), rec.ID) {
		if time.Now().After(deadline) {
			t.Fatalf("the current session B never got command %s (A got %v)", rec.ID, a.ids())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
