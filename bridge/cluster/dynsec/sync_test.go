package dynsec

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/fieldhub/fieldhub/devices"
)

// plugin is an in-memory stand-in for Mosquitto's dynamic-security
// plugin behind Options.Publish: it keeps clients and roles, answers each
// command as Mosquitto 2.0 words its errors, and records the commands.
type plugin struct {
	s *Sync

	mu      sync.Mutex // guards the fields below
	clients map[string]pluginClient
	roles   map[string]bool
	log     []string        // "command username-or-role", in order
	sizes   []int           // commands per control message
	drop    int             // control messages still to lose (the broker unreachable)
	broken  map[string]bool // users whose createClient and modifyClient fail
}

type pluginClient struct {
	ClientID, Password string
	Roles              []string
	Disabled           int // disableClient count
}

func newPlugin(t *testing.T, exists func(string) bool) *plugin {
	t.Helper()
	p := &plugin{clients: map[string]pluginClient{}, roles: map[string]bool{}, broken: map[string]bool{}}
	s, err := New(Options{ID: "hub-a", Publish: p.publish, Connected: func() bool { return true }, Exists: exists, Errors: new(atomic.Int64)})
	if err != nil {
		t.Fatal(err)
	}
	p.s = s
	return p
}

func (p *plugin) publish(_ context.Context, payload []byte) error {
	var msg struct {
		Commands []map[string]any `json:"commands"`
	}
	if err := json.Unmarshal(payload, &msg); err != nil {
		return err
	}
	var resp struct {
		Responses []Response `json:"responses"`
	}
	p.mu.Lock()
	if p.drop > 0 {
		p.drop--
		p.mu.Unlock()
		return errors.New("broker unreachable")
	}
	p.sizes = append(p.sizes, len(msg.Commands))
	for _, c := range msg.Commands {
		r := Response{Command: c["command"].(string), Correlation: c["correlationData"].(string)}
		r.Error, r.Data = p.apply(c)
		resp.Responses = append(resp.Responses, r)
	}
	p.mu.Unlock()
	slices.Reverse(resp.Responses) // answers are matched by correlation, not order
	resp.Responses = append(resp.Responses, Response{Command: "getClient", Correlation: "hub-b-1"})
	b, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	go p.s.OnResponse(b) // as the broker would: later, from another goroutine
	return nil
}

// apply runs one command; the caller holds p.mu.
func (p *plugin) apply(c map[string]any) (errText string, data []byte) {
	str := func(k string) string { s, _ := c[k].(string); return s }
	user, role := str("username"), str("rolename")
	p.log = append(p.log, fmt.Sprintf("%s %s%s", str("command"), user, role))
	roles := func() []string {
		var out []string
		rs, _ := c["roles"].([]any)
		for _, r := range rs {
			out = append(out, r.(map[string]any)["rolename"].(string))
		}
		return out
	}
	switch str("command") {
	case "createRole":
		if p.roles[role] {
			return "Role already exists", nil
		}
		p.roles[role] = true
	case "deleteRole":
		if !p.roles[role] {
			return "Role not found", nil
		}
		delete(p.roles, role)
	case "createClient":
		if p.broken[user] {
			return "Internal error", nil
		}
		if _, ok := p.clients[user]; ok {
			return "Client already exists", nil
		}
		p.clients[user] = pluginClient{ClientID: str("clientid"), Password: str("password"), Roles: roles()}
	case "deleteClient":
		if _, ok := p.clients[user]; !ok {
			return "Client not found", nil
		}
		delete(p.clients, user)
	case "modifyClient":
		if p.broken[user] {
			return "Internal error", nil
		}
		cl, ok := p.clients[user]
		if !ok {
			return "Client not found", nil
		}
		cl.ClientID = str("clientid")
		if pw := str("password"); pw != "" {
			cl.Password = pw
		}
		if rs := roles(); rs != nil {
			cl.Roles = rs
		}
		p.clients[user] = cl
	case "disableClient":
		cl := p.clients[user]
		cl.Disabled++
		p.clients[user] = cl
	case "enableClient":
	case "listRoles":
		var names []string
		for r := range p.roles {
			names = append(names, r)
		}
		slices.Sort(names)
		b, _ := json.Marshal(map[string]any{"roles": names})
		return "", b
	case "listClients":
		type role struct {
			Rolename string `json:"rolename"`
		}
		type client struct {
			Username string `json:"username"`
			ClientID string `json:"clientid"`
			Roles    []role `json:"roles"`
		}
		var out []client
		for u, cl := range p.clients {
			c := client{Username: u, ClientID: cl.ClientID}
			for _, r := range cl.Roles {
				c.Roles = append(c.Roles, role{r})
			}
			out = append(out, c)
		}
		b, _ := json.Marshal(map[string]any{"clients": out})
		return "", b
	default:
		return "Unknown command", nil
	}
	return "", nil
}

func (p *plugin) commands() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.log
	p.log = nil
	return out
}

func (p *plugin) client(user string) (pluginClient, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[user]
	return c, ok
}

// TestApply: what each registry change becomes in the plugin, in order.
func TestApply(t *testing.T) {
	ctx := context.Background()
	role := DeviceRolePrefix + "pump-1"
	for _, tc := range []struct {
		name     string
		existing bool // the device's client and role are in the plugin already
		change   devices.DeviceChange
		want     []string
		password string // the client's password after; "" for no client
	}{
		{"create", false, devices.DeviceChange{ID: "pump-1", Token: "t1"},
			[]string{"createRole " + role, "createClient pump-1"}, "t1"},
		{"rotate without grace cuts sessions", true, devices.DeviceChange{ID: "pump-1", Token: "t2"},
			[]string{"createRole " + role, "createClient pump-1", "modifyClient pump-1", "disableClient pump-1", "enableClient pump-1"}, "t2"},
		{"rotate with grace keeps sessions", true, devices.DeviceChange{ID: "pump-1", Token: "t2", Grace: time.Hour},
			[]string{"createRole " + role, "createClient pump-1", "modifyClient pump-1"}, "t2"},
		{"delete", true, devices.DeviceChange{ID: "pump-1", Deleted: true},
			[]string{"deleteClient pump-1", "deleteRole " + role}, ""},
		{"delete of a device the plugin lacks", false, devices.DeviceChange{ID: "pump-1", Deleted: true},
			[]string{"deleteClient pump-1", "deleteRole " + role}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPlugin(t, func(string) bool { return true })
			if tc.existing {
				p.apply(map[string]any{"command": "createRole", "rolename": role})
				p.apply(map[string]any{"command": "createClient", "username": "pump-1", "clientid": "pump-1", "password": "t0"})
				p.commands()
			}
			failed, err := p.s.applyChunk(ctx, []devices.DeviceChange{tc.change})
			if len(failed) != 0 || err != nil {
				t.Fatalf("failed %v, %v", failed, err)
			}
			if got := p.commands(); !slices.Equal(got, tc.want) {
				t.Fatalf("commands %q, want %q", got, tc.want)
			}
			cl, ok := p.client("pump-1")
			if tc.password == "" {
				if ok {
					t.Fatalf("client left: %+v", cl)
				}
				return
			}
			if !ok || cl.Password != tc.password || cl.ClientID != "pump-1" || !slices.Equal(cl.Roles, []string{role}) {
				t.Fatalf("client %+v (present %v), want password %q, client id pump-1, role %s", cl, ok, tc.password, role)
			}
		})
	}
}

// TestReconcile: clients of devices the registry lacks are deleted (only
// those with a device role), and device clients without client id =
// username are bound.
func TestReconcile(t *testing.T) {
	p := newPlugin(t, func(id string) bool { return id == "kept" || id == "unbound" })
	for _, c := range []struct{ user, clientID, role string }{
		{"kept", "kept", DeviceRolePrefix + "kept"},
		{"unbound", "", DeviceRolePrefix + "unbound"},
		{"gone", "gone", DeviceRolePrefix + "gone"},
		{"operator", "", "admin"},
	} {
		p.apply(map[string]any{"command": "createRole", "rolename": c.role})
		p.apply(map[string]any{"command": "createClient", "username": c.user, "clientid": c.clientID,
			"roles": []any{map[string]any{"rolename": c.role}}})
	}
	p.commands()
	p.s.reconcileNow(context.Background())
	if _, ok := p.client("gone"); ok {
		t.Fatal("client of a deleted device kept")
	}
	for user, wantID := range map[string]string{"kept": "kept", "unbound": "unbound", "operator": ""} {
		cl, ok := p.client(user)
		if !ok || cl.ClientID != wantID {
			t.Fatalf("client %s: %+v (present %v), want client id %q", user, cl, ok, wantID)
		}
	}
}

// TestSendMatchesByCorrelation: answers arrive in any order, mixed with
// other instances'; Send returns them in the order of its commands.
func TestSendMatchesByCorrelation(t *testing.T) {
	p := newPlugin(t, func(string) bool { return true })
	res, err := p.s.Send(context.Background(), []map[string]any{
		{"command": "createRole", "rolename": "r1"},
		{"command": "createRole", "rolename": "r1"},
		{"command": "bogus"},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := []string{res[0].Error, res[1].Error, res[2].Error}
	if want := []string{"", "Role already exists", "Unknown command"}; !slices.Equal(got, want) {
		t.Fatalf("answers %q, want %q", got, want)
	}
}

// TestRunChunksAndRetries: a bulk change goes out dynsecChunk devices per
// control message; a message lost with the broker is sent again; a device
// the plugin keeps refusing is counted in Errors after dynsecAttempts
// tries, and the others are in place.
func TestRunChunksAndRetries(t *testing.T) {
	p := newPlugin(t, func(string) bool { return true })
	p.drop = 1
	p.broken["dev-007"] = true
	var ch devices.Changed
	for i := range 2*dynsecChunk + 20 {
		ch.Devices = append(ch.Devices, devices.DeviceChange{ID: fmt.Sprintf("dev-%03d", i), Token: "t"})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	p.s.Changed(ch)
	all := func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.clients) == 2*dynsecChunk+19
	}
	deadline := time.Now().Add(time.Minute)
	for p.s.o.Errors.Load() == 0 || !all() {
		if time.Now().After(deadline) {
			t.Fatalf("after a minute: Errors = %d, all other clients created %v", p.s.o.Errors.Load(), all())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := p.s.o.Errors.Load(); n != 1 {
		t.Fatalf("Errors = %d, want 1", n)
	}
	p.mu.Lock()
	sizes := slices.Clone(p.sizes)
	p.mu.Unlock()
	// The first chunk: attempt 1 lost, attempt 2 all 50 devices (two
	// commands each), attempts 3..dynsecAttempts the refused device alone;
	// then the other chunks, 50 and 20 devices.
	want := append(append([]int{2 * dynsecChunk}, slices.Repeat([]int{2}, dynsecAttempts-2)...), 2*dynsecChunk, 40)
	if !slices.Equal(sizes, want) {
		t.Fatalf("commands per control message %v, want %v", sizes, want)
	}
	for i := range 2*dynsecChunk + 20 {
		id := fmt.Sprintf("dev-%03d", i)
		if _, ok := p.client(id); ok == (id == "dev-007") {
			t.Fatalf("client %s present %v", id, ok)
		}
	}
}

// TestBindRetriesThenCounts: a device client the plugin keeps refusing to
// bind is counted in Errors after dynsecAttempts tries; the others in its
// chunk are bound.
func TestBindRetriesThenCounts(t *testing.T) {
	p := newPlugin(t, func(string) bool { return true })
	for _, user := range []string{"ok-1", "stuck", "ok-2"} {
		role := DeviceRolePrefix + user
		p.apply(map[string]any{"command": "createRole", "rolename": role})
		p.apply(map[string]any{"command": "createClient", "username": user, "roles": []any{map[string]any{"rolename": role}}})
	}
	p.broken["stuck"] = true
	p.commands()
	p.s.bindClientIDs(context.Background())
	if n := p.s.o.Errors.Load(); n != 1 {
		t.Fatalf("Errors = %d, want 1", n)
	}
	binds := 0
	for _, c := range p.commands() {
		if c == "modifyClient stuck" {
			binds++
		}
	}
	if binds != dynsecAttempts {
		t.Fatalf("%d tries to bind the refused client, want %d", binds, dynsecAttempts)
	}
	for _, user := range []string{"ok-1", "ok-2"} {
		if cl, _ := p.client(user); cl.ClientID != user {
			t.Fatalf("client %s: client id %q, want bound", user, cl.ClientID)
		}
	}
}
