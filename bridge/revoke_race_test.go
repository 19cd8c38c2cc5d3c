package bridge

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
)

// TestConnectAfterRevocationIsKicked: a transport authenticates a device
// (WS upgrade, MQTT OnConnectAuthenticate), then the token is rotated with
// no grace before the session is registered (the WS 101 handshake, the
// MQTT CONNACK and session inheritance lie in between). CredentialsChanged
// fired while there was no session, so nobody re-checks: the session must
// be refused when it registers, or it lives on with a revoked token.
func TestConnectAfterRevocationIsKicked(t *testing.T) {
	ctx := context.Background()
	st, err := devices.OpenBolt(filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	reg, err := devices.Open(ctx, st, devices.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	b := newTestBridge(t, Options{Devices: reg})
	reg.Subscribe(devices.Subscriber{OnCredentialsChanged: b.CredentialsChanged})
	c, err := reg.Create(ctx, devices.Spec{ID: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	id, h, ok := reg.Authenticate(c.Token) // the transport's check
	if !ok {
		t.Fatal("fresh token refused")
	}
	if _, err := reg.Rotate(ctx, "d1", 0); err != nil { // revoked meanwhile
		t.Fatal(err)
	}
	conn := &nopConn{}
	b.Connect(id, devices.TransportWS, "", h, conn)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		conn.mu.Lock()
		closed := conn.closed
		conn.mu.Unlock()
		if closed == ReasonRevoked {
			return
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not a wall-clock window
	}
	t.Fatalf("a session registered with a token revoked after authentication stays open (StillValid=%v)", reg.StillValid("d1", h))
}
