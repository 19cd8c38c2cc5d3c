package pg

import (
	"context"
	"maps"
	"slices"
	"testing"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
)

// TestUpdateReachesOtherInstance: a device's new name and labels, written
// by one instance, reach another at its next (incremental) refresh, keep
// the device's credentials and presence there, and are announced as an
// update, not a credential change.
func TestUpdateReachesOtherInstance(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	open := func(onCred func(string), onChange func(devices.Changed)) *devices.Registry {
		st, err := Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		reg, err := devices.Open(ctx, st, devices.Options{OnCredentialsChanged: onCred, OnChange: onChange})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(reg.Close)
		return reg
	}
	var changes []devices.Changed
	a := open(nil, func(c devices.Changed) { changes = append(changes, c) })
	var rechecked []string
	b := open(func(id string) { rechecked = append(rechecked, id) }, nil)
	c, err := a.Create(ctx, devices.Spec{ID: "pump-1", Name: "Pump", Labels: map[string]string{"site": "north", "floor": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	b.SetPresence("pump-1", devices.Presence{Online: true, Transport: devices.TransportMQTT})
	name, labels := "Pump 1 (east)", map[string]string{"site": "east"}
	changes, rechecked = nil, nil
	got, err := a.Update(ctx, "pump-1", devices.Update{Name: &name, Labels: &labels})
	if err != nil || got.Name != name || !maps.Equal(got.Labels, labels) {
		t.Fatalf("update: %+v %v", got, err)
	}
	if len(changes) != 1 || !slices.Equal(changes[0].Updated, []string{"pump-1"}) || len(changes[0].Devices) != 0 {
		t.Fatalf("announced %+v, want one update of pump-1 and no credential change", changes)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	d, err := b.Get("pump-1")
	if err != nil || d.Name != name || !maps.Equal(d.Labels, labels) || !d.Online {
		t.Fatalf("on the other instance: %+v %v", d, err)
	}
	if len(rechecked) != 0 {
		t.Fatalf("an update re-checked sessions of %v", rechecked)
	}
	if _, _, ok := b.Authenticate(c.Token); !ok {
		t.Fatal("the token stopped working after an update")
	}
	// An update of a device another instance deleted is refused, not a resurrection.
	if err := b.Delete(ctx, "pump-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Update(ctx, "pump-1", devices.Update{Name: &name}); err == nil {
		t.Fatal("updated a device deleted by the other instance")
	}
	if a.Exists("pump-1") {
		t.Fatal("the refused update left the deleted device on this instance")
	}
}
