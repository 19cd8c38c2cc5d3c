package cluster

import (
	"context"
	"sync"
	"testing"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Tags and StillValid make registryStub a bridge.Devices too.
func (registryStub) Tags(string) []telemetry.Tag               { return nil }
func (registryStub) StillValid(string, devices.TokenHash) bool { return true }

type discardStore struct{}

func (discardStore) Append(context.Context, int, []byte) error { return nil }

// commandsFake records what the cluster hands the command service (our
// own small interface).
type commandsFake struct {
	mu        sync.Mutex
	results   []string
	forwarded []string
	connected []string
	changed   []string
}

func (f *commandsFake) CommandResult(device string, r *telemetry.CommandResult) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.results = append(f.results, device+"/"+r.ID)
	return nil
}

func (f *commandsFake) ForwardCommand(device string, cmd telemetry.Command) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forwarded = append(f.forwarded, device+"/"+cmd.ID)
	return true
}

func (f *commandsFake) RemoteConnected(device string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.connected = append(f.connected, device)
}

func (f *commandsFake) CommandChanged(device, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changed = append(f.changed, device+"/"+id)
}

// stubPeers are Peers for a Cluster whose device traffic a test does not
// look at: a real bridge over stubs, and a commandsFake.
func stubPeers(tb testing.TB, fan bridge.Fanout) Peers {
	tb.Helper()
	br, err := bridge.New(bridge.Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: discardStore{}, Devices: registryStub{}, Fanout: fan})
	if err != nil {
		tb.Fatal(err)
	}
	return Peers{Bridge: br, Commands: &commandsFake{}}
}
