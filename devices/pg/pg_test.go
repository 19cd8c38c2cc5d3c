package pg

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/devices/pg/pgtest"
)

func TestRegistryOnPostgreSQL(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	st, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := devices.Open(ctx, st, devices.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := reg.Create(ctx, devices.Spec{ID: "pump-1", Name: "Pump", Labels: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.CreateBatch(ctx, []devices.Spec{{ID: "b1"}, {ID: "b2"}}); err != nil {
		t.Fatal(err)
	}
	rotated, err := reg.Rotate(ctx, "b1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Delete(ctx, "b2"); err != nil {
		t.Fatal(err)
	}
	_, opSecret, err := reg.CreateOperatorToken(ctx, "ops", devices.RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	reg.Close()
	st.Close()

	// A second instance (or a restart) sees the same registry; migrations
	// run again harmlessly.
	st2, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	reg2, err := devices.Open(ctx, st2, devices.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg2.Close()
	if id, _, ok := reg2.Authenticate(c.Token); !ok || id != "pump-1" {
		t.Fatal("device token lost")
	}
	if _, ok := reg2.AuthenticateDevice("b1", rotated); !ok {
		t.Fatal("rotated token lost")
	}
	if reg2.Exists("b2") {
		t.Fatal("deleted device came back")
	}
	if op, ok := reg2.AuthenticateOperator(ctx, opSecret); !ok || op.Role != devices.RoleOperator {
		t.Fatal("operator token lost")
	}
	if d, _ := reg2.Get("pump-1"); d.Labels["site"] != "north" {
		t.Fatalf("labels: %+v", d)
	}
	if err := reg2.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRefreshSeesOtherInstance: two registries share one database, as two
// hub instances do. Refresh makes one see the other's changes and re-check
// the sessions of devices whose credentials changed.
func TestRefreshSeesOtherInstance(t *testing.T) {
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

	keep, err := a.Create(ctx, devices.Spec{ID: "keep", Labels: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	gone, err := a.Create(ctx, devices.Spec{ID: "gone"})
	if err != nil {
		t.Fatal(err)
	}
	rot, err := a.Create(ctx, devices.Spec{ID: "rot"})
	if err != nil {
		t.Fatal(err)
	}
	_, opSecret, err := a.CreateOperatorToken(ctx, "ops", devices.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok := b.Authenticate(keep.Token); ok {
		t.Fatal("b knows a device before refreshing")
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{keep.Token, gone.Token, rot.Token} {
		if _, _, ok := b.Authenticate(c); !ok {
			t.Fatal("b does not know a device after refreshing")
		}
	}
	if _, ok := b.AuthenticateOperator(ctx, opSecret); !ok {
		t.Fatal("b does not know the operator token after refreshing")
	}
	b.SetPresence("keep", devices.Presence{Online: true, Transport: devices.TransportWS})
	rechecked = nil

	newTok, err := a.Rotate(ctx, "rot", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	slices.Sort(rechecked)
	if !slices.Equal(rechecked, []string{"gone", "rot"}) {
		t.Fatalf("re-checked %v, want gone and rot", rechecked)
	}
	if _, _, ok := b.Authenticate(rot.Token); ok {
		t.Fatal("old token of a rotated device still works on b")
	}
	if _, _, ok := b.Authenticate(newTok); !ok {
		t.Fatal("new token does not work on b")
	}
	if b.Exists("gone") {
		t.Fatal("deleted device still exists on b")
	}
	if d, _ := b.Get("keep"); !d.Online || d.Labels["site"] != "north" {
		t.Fatalf("refresh lost presence or labels: %+v", d)
	}

	// a told its listener about each change, tokens included.
	var got []string
	for _, c := range changes {
		for _, d := range c.Devices {
			got = append(got, fmt.Sprintf("%s:%t:%t", d.ID, d.Token != "", d.Deleted))
		}
	}
	want := []string{"keep:true:false", "gone:true:false", "rot:true:false", "rot:true:false", "gone:false:true"}
	if !slices.Equal(got, want) {
		t.Fatalf("changes %v, want %v", got, want)
	}
}

// TestSessionsAcrossInstances: a dashboard session created on one
// instance works on another after a refresh, survives a reopen, and its
// sign-out on one instance ends it on the other (announced there).
func TestSessionsAcrossInstances(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	open := func(onEnd func(devices.OperatorEnded)) *devices.Registry {
		st, err := Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		reg, err := devices.Open(ctx, st, devices.Options{OnOperatorEnded: onEnd})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(reg.Close)
		return reg
	}
	a := open(nil)
	var mu sync.Mutex
	var ended []devices.OperatorEnded
	b := open(func(e devices.OperatorEnded) { mu.Lock(); ended = append(ended, e); mu.Unlock() })
	_, secret, err := a.CreateOperatorToken(ctx, "ops", devices.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	op, _ := a.AuthenticateOperator(ctx, secret)
	sid, err := a.CreateSession(ctx, op)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got, ok := b.AuthenticateSession(ctx, sid); !ok || got.Name != "ops" {
		t.Fatalf("b after refresh: %+v %v", got, ok)
	}
	if got, ok := open(nil).AuthenticateSession(ctx, sid); !ok || got.Name != "ops" {
		t.Fatalf("a new instance: %+v %v", got, ok)
	}
	if err := a.DeleteSession(ctx, sid); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.AuthenticateSession(ctx, sid); ok {
		t.Fatal("a signed-out session still works on b")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ended) != 1 || ended[0].TokenID != op.TokenID || ended[0].Session == "" {
		t.Fatalf("b announced %+v, want the session's end", ended)
	}
}

// TestSchemaOnPostgreSQL: the metric schema shared by instances: the first
// claim wins across two stores on one database, a device's names are
// bounded, and a deleted device's names go with it.
func TestSchemaOnPostgreSQL(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	a, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, _, err := a.ClaimFields(ctx, map[string]string{"temp": "number"}); err != nil || got["temp"] != "number" {
		t.Fatalf("claim: %v %v", got, err)
	}
	if got, claimed, err := b.ClaimFields(ctx, map[string]string{"temp": "string", "ok": "bool"}); err != nil || got["temp"] != "number" || got["ok"] != "bool" || !slices.Equal(claimed, []string{"ok"}) {
		t.Fatalf("second instance's claim: %v %v %v", got, claimed, err)
	}
	// A release deletes only a claim still of the type released.
	if err := b.ReleaseFields(ctx, map[string]string{"temp": "string", "ok": "bool"}); err != nil {
		t.Fatal(err)
	}
	if got, claimed, err := a.ClaimFields(ctx, map[string]string{"temp": "string", "ok": "string"}); err != nil || got["temp"] != "number" || got["ok"] != "string" || !slices.Equal(claimed, []string{"ok"}) {
		t.Fatalf("after release: %v %v %v", got, claimed, err)
	}
	if err := a.ReleaseFields(ctx, map[string]string{"ok": "string"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddDeviceMetrics(ctx, "d1", []string{"x", "y"}, 3); err != nil {
		t.Fatal(err)
	}
	have, err := b.AddDeviceMetrics(ctx, "d1", []string{"z", "w"}, 3)
	if !errors.Is(err, devices.ErrTooManyMetrics) || len(have) != 2 {
		t.Fatalf("past the bound from the other instance: %v %v", have, err)
	}
	if err := a.RemoveDeviceMetrics(ctx, "d1", []string{"y"}); err != nil {
		t.Fatal(err)
	}
	if have, err := b.AddDeviceMetrics(ctx, "d1", []string{"y"}, 3); err != nil || len(have) != 2 {
		t.Fatalf("after a removal: %v %v", have, err)
	}
	if _, err := b.AddDeviceMetrics(ctx, "d2", []string{"x"}, 3); err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(ctx, devices.Change{DeleteDevices: []string{"d2"}}); err != nil {
		t.Fatal(err)
	}
	sc, err := b.LoadSchema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(sc.DeviceMetrics["d1"])
	_, okKept := sc.Fields["ok"] // claimed and released twice above
	if sc.Fields["temp"] != "number" || okKept || !slices.Equal(sc.DeviceMetrics["d1"], []string{"x", "y"}) || sc.DeviceMetrics["d2"] != nil {
		t.Errorf("schema: %+v", sc)
	}
	if _, err := a.AddDeviceMetrics(ctx, "d3", []string{"temp"}, 3); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		device string
		want   map[string]string
	}{
		{"d1", map[string]string{"x": "", "y": ""}},
		{"d3", map[string]string{"temp": "number"}},
		{"d2", map[string]string{}},
	} {
		got, err := b.DeviceMetricTypes(ctx, tt.device)
		if err != nil || !maps.Equal(got, tt.want) {
			t.Errorf("DeviceMetricTypes(%s) = %v, %v; want %v", tt.device, got, err, tt.want)
		}
	}
}
