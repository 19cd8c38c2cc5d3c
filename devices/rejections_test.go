package devices

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// TestRejections: the registry keeps the last RejectionsKept refusals of
// each registered device, newest first, with the first field path and a
// clipped message; it counts them in the device's JSON; it ignores ids
// that are not registered and forgets a deleted device's.
func TestRejections(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.UnixMilli(1_763_750_000_000)}
	r := openRegistry(t, filepath.Join(t.TempDir(), "r.db"), Options{Now: clk.now})
	for _, id := range []string{"d1", "d2"} {
		if _, err := r.Create(ctx, Spec{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	long := strings.Repeat("é", 200) // 400 bytes
	tests := []struct {
		name string
		e    *telemetry.Error
		id   string
		want Rejection
	}{
		{"no field", telemetry.ErrRateLimited, "", Rejection{Transport: "ws", Code: "rate_limited", Message: telemetry.ErrRateLimited.Message}},
		{"first field of several", &telemetry.Error{Code: "invalid", Message: "readings[1].metrics.t: bad", Fields: []telemetry.FieldError{{Field: "readings[1].metrics.t"}, {Field: "ts"}}}, "m-7",
			Rejection{Transport: "ws", Code: "invalid", Field: "readings[1].metrics.t", Message: "readings[1].metrics.t: bad", ID: "m-7"}},
		{"long message clipped on a rune", &telemetry.Error{Code: "bad_json", Message: long}, strings.Repeat("i", 100),
			Rejection{Transport: "ws", Code: "bad_json", Message: strings.Repeat("é", 126) + "...", ID: strings.Repeat("i", 64) + "..."}},
	}
	for i, tc := range tests {
		clk.add(time.Millisecond)
		r.Rejected("d1", "ws", tc.id, tc.e)
		total, recent, err := r.Rejections("d1")
		if err != nil || total != int64(i+1) || len(recent) != i+1 {
			t.Fatalf("%s: total %d, %d kept, %v", tc.name, total, len(recent), err)
		}
		tc.want.At = clk.now().UnixMilli()
		if recent[0] != tc.want {
			t.Errorf("%s: newest is %+v, want %+v", tc.name, recent[0], tc.want)
		}
		if len(recent[0].Message) > MaxRejectionMessage {
			t.Errorf("%s: message of %d bytes", tc.name, len(recent[0].Message))
		}
	}
	// Past the bound the oldest go; the count goes on.
	for i := range 2 * RejectionsKept {
		r.Rejected("d2", "mqtt", fmt.Sprint(i), telemetry.ErrOverloaded)
	}
	total, recent, _ := r.Rejections("d2")
	if total != 2*RejectionsKept || len(recent) != RejectionsKept || recent[0].ID != fmt.Sprint(2*RejectionsKept-1) || recent[RejectionsKept-1].ID != fmt.Sprint(RejectionsKept) {
		t.Fatalf("after %d: total %d, %d kept, newest %q, oldest %q", 2*RejectionsKept, total, len(recent), recent[0].ID, recent[len(recent)-1].ID)
	}
	if d, _ := r.Get("d2"); d.Rejected != 2*RejectionsKept {
		t.Fatalf("device JSON counts %d", d.Rejected)
	}
	if devs, _, _ := r.List(Filter{}); devs[0].Rejected != 3 || devs[1].Rejected != 2*RejectionsKept {
		t.Fatalf("list counts %d, %d", devs[0].Rejected, devs[1].Rejected)
	}
	// Unregistered ids are not kept; a deleted device's are forgotten.
	r.Rejected("ghost", "ws", "", telemetry.ErrOverloaded)
	if _, _, err := r.Rejections("ghost"); err == nil {
		t.Fatal("an unregistered device has rejections")
	}
	if err := r.Delete(ctx, "d2"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Create(ctx, Spec{ID: "d2"}); err != nil {
		t.Fatal(err)
	}
	if total, recent, _ := r.Rejections("d2"); total != 0 || len(recent) != 0 {
		t.Fatalf("recreated device has %d rejections (%d kept)", total, len(recent))
	}
	// A rotation keeps them (same device).
	if _, err := r.Rotate(ctx, "d1", 0); err != nil {
		t.Fatal(err)
	}
	if total, _, _ := r.Rejections("d1"); total != 3 {
		t.Fatalf("after rotation: %d", total)
	}
}

// TestUpdatePersists: Update writes through to the store: a registry
// opened on it afterwards has the new name and labels, the same token and
// last_seen.
func TestUpdatePersists(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	st, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.Create(ctx, Spec{ID: "p1", Name: "old", Labels: map[string]string{"a": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	seen := time.Now().Truncate(time.Millisecond)
	r.Touch("p1", seen)
	name, labels := "new", map[string]string{"b": "2"}
	if _, err := r.Update(ctx, "p1", Update{Name: &name, Labels: &labels}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Update(ctx, "p1", Update{Labels: &map[string]string{"bad key": "x"}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid update: %v", err)
	}
	r.Close()
	st.Close()
	st, err = OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r, err = Open(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	d, err := r.Get("p1")
	if err != nil || d.Name != "new" || len(d.Labels) != 1 || d.Labels["b"] != "2" || d.LastSeen == nil || !d.LastSeen.Equal(seen) {
		t.Fatalf("after reopen: %+v %v", d, err)
	}
	if id, _, ok := r.Authenticate(c.Token); !ok || id != "p1" {
		t.Fatal("the token changed with an update")
	}
}
