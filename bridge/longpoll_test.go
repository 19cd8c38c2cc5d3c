package bridge

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// rotatedAfterCheck is a registry whose device token works for the first
// valid checks only: as if it were rotated right after the long poll's
// first check.
type rotatedAfterCheck struct {
	registryStub
	valid atomic.Int32
}

func (r *rotatedAfterCheck) StillValid(string, devices.TokenHash) bool {
	return r.valid.Add(-1) >= 0
}

// TestLongPollRechecksBeforeHandOut: a command already queued does not go
// to a long poll whose token was rotated between its first check and the
// hand-out, on one instance (the local queue) or several (the shared
// store).
func TestLongPollRechecksBeforeHandOut(t *testing.T) {
	for _, shared := range []bool{false, true} {
		name := "local"
		if shared {
			name = "shared"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st, err := devices.OpenBolt(filepath.Join(t.TempDir(), "registry.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			reg := &rotatedAfterCheck{}
			reg.valid.Store(1 << 20)
			opts := Options{Codec: telemetry.NewCodec(telemetry.Limits{}, nil), Store: nopStore{}, Devices: reg, Commands: st, Fanout: &eventLog{}}
			if shared {
				opts.Remote = &remoteStub{}
			}
			br, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			rec, _, err := br.SendCommand(ctx, devices.CommandSpec{Device: "d1", Name: "reboot", Timeout: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			reg.valid.Store(1) // the poll's first check passes; then the token is rotated
			cmd, ok, err := br.NextCommand(ctx, "d1", devices.TokenHash{}, time.Second)
			if ok || !errors.Is(err, ErrRevoked) {
				t.Fatalf("poll got %q ok=%v err=%v, want ErrRevoked and nothing handed out", cmd.ID, ok, err)
			}
			got, err := st.GetCommand(ctx, "d1", rec.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.PolledAt != nil || !shared && got.Status != devices.CommandQueued {
				t.Errorf("command marked polled/delivered for the rotated token: %+v", got)
			}
		})
	}
}
