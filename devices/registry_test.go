package devices

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type changes struct {
	mu  sync.Mutex
	ids []string
}

func (c *changes) record(id string) { c.mu.Lock(); c.ids = append(c.ids, id); c.mu.Unlock() }
func (c *changes) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ids...)
}

func openRegistry(t *testing.T, path string, opts Options) *Registry {
	t.Helper()
	st, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(context.Background(), st, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); st.Close() })
	return r
}

func TestCreateGetListPersist(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	r := openRegistry(t, path, Options{})
	c, err := r.Create(ctx, Spec{ID: "pump-1", Name: "Pump 1", Labels: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.Token, DeviceTokenPrefix) || len(c.Token) < len(DeviceTokenPrefix)+22 {
		t.Fatalf("token %q: want prefix and >= 128 bits", c.Token)
	}
	if id, _, ok := r.Authenticate(c.Token); !ok || id != "pump-1" {
		t.Fatalf("Authenticate = %q, %v", id, ok)
	}
	gen, err := r.Create(ctx, Spec{Name: "generated"})
	if err != nil || !ValidID(gen.Device.ID) {
		t.Fatalf("generated id %q, %v", gen.Device.ID, err)
	}
	for i := range 5 {
		if _, err := r.Create(ctx, Spec{ID: fmt.Sprintf("valve-%d", i), Labels: map[string]string{"site": "south"}}); err != nil {
			t.Fatal(err)
		}
	}
	// Pagination walks every device once, in order.
	var seen []string
	after := ""
	for {
		page, next, total := r.List(Filter{Limit: 3, After: after})
		if total != 7 {
			t.Fatalf("total %d", total)
		}
		for _, d := range page {
			seen = append(seen, d.ID)
		}
		if next == "" {
			break
		}
		after = next
	}
	if len(seen) != 7 || seen[len(seen)-1] != "valve-4" {
		t.Fatalf("pages: %v", seen)
	}
	south, _, _ := r.List(Filter{Labels: map[string]string{"site": "south"}})
	if len(south) != 5 {
		t.Fatalf("label filter: %d", len(south))
	}
	if found, _, _ := r.List(Filter{Search: "PUMP"}); len(found) != 1 {
		t.Fatalf("search: %d", len(found))
	}

	// Everything survives a restart.
	r.Close()
	r.store.Close()
	r2 := openRegistry(t, path, Options{})
	d, err := r2.Get("pump-1")
	if err != nil || d.Name != "Pump 1" || d.Labels["site"] != "north" {
		t.Fatalf("after reopen: %+v, %v", d, err)
	}
	if id, _, ok := r2.Authenticate(c.Token); !ok || id != "pump-1" {
		t.Fatal("token lost across restart")
	}
}

func TestCreateRejects(t *testing.T) {
	ctx := context.Background()
	r := openRegistry(t, filepath.Join(t.TempDir(), "r.db"), Options{})
	if _, err := r.Create(ctx, Spec{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		spec Spec
		want error
	}{
		{Spec{ID: "a"}, ErrExists},
		{Spec{ID: "-starts-with-dash"}, ErrInvalid},
		{Spec{ID: "has/slash"}, ErrInvalid},
		{Spec{ID: "has+plus"}, ErrInvalid},
		{Spec{ID: strings.Repeat("x", 65)}, ErrInvalid},
		{Spec{ID: "ok", Labels: map[string]string{"bad key": "v"}}, ErrInvalid},
		{Spec{ID: "ok", Labels: map[string]string{"k": "ends\\"}}, ErrInvalid},
		{Spec{ID: "ok", Labels: map[string]string{"k": "new\nline"}}, ErrInvalid},
	}
	for _, tt := range tests {
		if _, err := r.Create(ctx, tt.spec); !errors.Is(err, tt.want) {
			t.Errorf("Create(%+v) = %v, want %v", tt.spec, err, tt.want)
		}
	}
	// A batch with one bad device creates none.
	_, err := r.CreateBatch(ctx, []Spec{{ID: "b1"}, {ID: "a"}})
	if !errors.Is(err, ErrExists) || r.Exists("b1") {
		t.Fatalf("batch: %v, b1 exists %v", err, r.Exists("b1"))
	}
}

func TestRotateRevoke(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.Now()}
	var ch changes
	r := openRegistry(t, filepath.Join(t.TempDir(), "r.db"), Options{Now: clk.now, OnCredentialsChanged: ch.record})
	c, _ := r.Create(ctx, Spec{ID: "d1"})

	// Immediate rotation: old token dies, sessions are told.
	t1, err := r.Rotate(ctx, "d1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok := r.Authenticate(c.Token); ok {
		t.Fatal("old token works after rotation")
	}
	if _, ok := r.AuthenticateDevice("d1", t1); !ok {
		t.Fatal("new token refused")
	}
	if got := ch.list(); len(got) != 1 || got[0] != "d1" {
		t.Fatalf("changes %v", got)
	}

	// Rotation with grace: both work until it ends.
	t2, err := r.Rotate(ctx, "d1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	h1, ok1 := r.AuthenticateDevice("d1", t1)
	_, ok2 := r.AuthenticateDevice("d1", t2)
	if !ok1 || !ok2 {
		t.Fatalf("during grace: old %v new %v", ok1, ok2)
	}
	clk.add(time.Hour + time.Second)
	if r.StillValid("d1", h1) {
		t.Fatal("old token valid after grace")
	}
	if _, ok := r.AuthenticateDevice("d1", t2); !ok {
		t.Fatal("new token refused after grace")
	}

	// A token is valid only with its own device id.
	other, _ := r.Create(ctx, Spec{ID: "d2"})
	if _, ok := r.AuthenticateDevice("d1", other.Token); ok {
		t.Fatal("d2's token accepted for d1")
	}

	if err := r.Delete(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.AuthenticateDevice("d1", t2); ok {
		t.Fatal("deleted device authenticates")
	}
	if err := r.Delete(ctx, "d1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if got := ch.list(); got[len(got)-1] != "d1" {
		t.Fatalf("delete did not notify: %v", got)
	}
}

func TestOperatorTokens(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	r := openRegistry(t, path, Options{})
	secret, err := r.EnsureAdmin(ctx)
	if err != nil || !strings.HasPrefix(secret, OperatorTokenPrefix) {
		t.Fatalf("EnsureAdmin = %q, %v", secret, err)
	}
	if again, _ := r.EnsureAdmin(ctx); again != "" {
		t.Fatal("second EnsureAdmin generated another token")
	}
	op, ok := r.AuthenticateOperator(ctx, secret)
	if !ok || op.Role != RoleAdmin {
		t.Fatalf("admin auth: %+v %v", op, ok)
	}
	tok, viewerSecret, err := r.CreateOperatorToken(ctx, "wall screen", RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	if op, ok := r.AuthenticateOperator(ctx, viewerSecret); !ok || op.Role != RoleViewer {
		t.Fatal("viewer auth")
	}
	if _, _, err := r.CreateOperatorToken(ctx, "x", Role("root")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad role: %v", err)
	}
	r.SetBootstrapAdmin("from-env-secret")
	if op, ok := r.AuthenticateOperator(ctx, "from-env-secret"); !ok || op.Role != RoleAdmin {
		t.Fatal("bootstrap admin from env")
	}
	if err := r.RevokeOperatorToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.AuthenticateOperator(ctx, viewerSecret); ok {
		t.Fatal("revoked token works")
	}
	r.Close()
	r.store.Close()
	r2 := openRegistry(t, path, Options{})
	if _, ok := r2.AuthenticateOperator(ctx, secret); !ok {
		t.Fatal("admin token lost across restart")
	}
	if _, ok := r2.AuthenticateOperator(ctx, "from-env-secret"); ok {
		t.Fatal("env admin token was persisted")
	}
	if lst := r2.ListOperatorTokens(); len(lst) != 1 || lst[0].LastUsed.IsZero() {
		t.Fatalf("tokens after restart: %+v", lst)
	}
}

func TestRoles(t *testing.T) {
	tests := []struct {
		have, need Role
		ok         bool
	}{
		{RoleViewer, RoleViewer, true}, {RoleViewer, RoleOperator, false}, {RoleOperator, RoleAdmin, false},
		{RoleOperator, RoleOperator, true}, {RoleAdmin, RoleViewer, true}, {Role("x"), RoleViewer, false},
	}
	for _, tt := range tests {
		if got := tt.have.Allows(tt.need); got != tt.ok {
			t.Errorf("%s.Allows(%s) = %v", tt.have, tt.need, got)
		}
	}
}

func TestFailureLimiter(t *testing.T) {
	l := NewFailureLimiter(1, 3)
	for range 3 {
		if l.Blocked("1.2.3.4") {
			t.Fatal("blocked within burst")
		}
		l.Fail("1.2.3.4")
	}
	if !l.Blocked("1.2.3.4") {
		t.Fatal("not blocked after burst")
	}
	if l.Blocked("5.6.7.8") {
		t.Fatal("another address blocked")
	}
	l.max = 2
	l.Fail("a")
	l.Fail("b")
	if len(l.entries) > 2 {
		t.Fatalf("table grew to %d", len(l.entries))
	}
}

// BenchmarkAuthenticate measures token verification, which sits on every
// device connect.
func BenchmarkAuthenticate(b *testing.B) {
	st, err := OpenBolt(filepath.Join(b.TempDir(), "r.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	r, _ := Open(context.Background(), st, Options{})
	specs := make([]Spec, 10000)
	for i := range specs {
		specs[i] = Spec{ID: fmt.Sprintf("sim-%d", i)}
	}
	created, err := r.CreateBatch(context.Background(), specs)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("token", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, _, ok := r.Authenticate(created[i%len(created)].Token); !ok {
				b.Fatal("refused")
			}
		}
	})
	b.Run("id+token", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			c := created[i%len(created)]
			if _, ok := r.AuthenticateDevice(c.Device.ID, c.Token); !ok {
				b.Fatal("refused")
			}
		}
	})
}

// TestListSorted: the overview's sort orders the whole match, then pages
// it: natural order of ids (sim-2 before sim-10), descending, offsets.
func TestListSorted(t *testing.T) {
	st, err := OpenBolt(filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r, err := Open(context.Background(), st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, id := range []string{"sim-10", "sim-2", "sim-1", "Sim-3", "sim-21"} {
		if _, err := r.Create(context.Background(), Spec{ID: id, Name: "n-" + id}); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(ds []Device) (out []string) {
		for _, d := range ds {
			out = append(out, d.ID)
		}
		return out
	}
	tests := []struct {
		f        Filter
		want     []string
		wantNext string
	}{
		{Filter{Sort: "id"}, []string{"sim-1", "sim-2", "Sim-3", "sim-10", "sim-21"}, ""},
		{Filter{Sort: "id", Desc: true}, []string{"sim-21", "sim-10", "Sim-3", "sim-2", "sim-1"}, ""},
		{Filter{Sort: "id", Limit: 2}, []string{"sim-1", "sim-2"}, "2"},
		{Filter{Sort: "id", Limit: 2, Offset: 2}, []string{"Sim-3", "sim-10"}, "4"},
		{Filter{Sort: "id", Limit: 2, Offset: 4}, []string{"sim-21"}, ""},
		{Filter{Sort: "name", Offset: 99}, nil, ""},
		{Filter{Sort: "status"}, []string{"sim-1", "sim-2", "Sim-3", "sim-10", "sim-21"}, ""}, // all offline: ties by natural id
	}
	for _, tt := range tests {
		got, next, total := r.List(tt.f)
		if !slices.Equal(ids(got), tt.want) || next != tt.wantNext || total != 5 {
			t.Errorf("List(%+v) = %v next %q total %d, want %v next %q total 5", tt.f, ids(got), next, total, tt.want, tt.wantNext)
		}
	}
	for _, c := range []struct {
		a, b string
		want int
	}{{"sim-2", "sim-10", -1}, {"a", "A", 0}, {"x01", "x1", 0}, {"x1", "x1a", -1}, {"b", "a10", 1}} {
		if got := NaturalCompare(c.a, c.b); got != c.want {
			t.Errorf("NaturalCompare(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}
