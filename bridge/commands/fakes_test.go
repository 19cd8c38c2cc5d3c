package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// memStore is an in-memory Store (our own interface) with the contract
// of the real ones: the first final status wins.
type memStore struct {
	mu   sync.Mutex
	recs map[string]Record // device\x00id
	fail atomic.Bool       // PutCommand fails
}

func newMemStore() *memStore { return &memStore{recs: map[string]Record{}} }

func copyRec(r Record) Record {
	b, _ := json.Marshal(r)
	var c Record
	_ = json.Unmarshal(b, &c)
	return c
}

func (m *memStore) PutCommand(ctx context.Context, c Record) error {
	if m.fail.Load() {
		return errors.New("store down")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := c.Device + "\x00" + c.ID
	if old, ok := m.recs[k]; ok && old.Final() {
		return nil
	}
	m.recs[k] = copyRec(c)
	return nil
}

func (m *memStore) GetCommand(ctx context.Context, device, id string) (Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.recs[device+"\x00"+id]
	if !ok {
		return Record{}, fmt.Errorf("command %q: %w", id, devices.ErrNotFound)
	}
	return copyRec(r), nil
}

func (m *memStore) ListCommands(ctx context.Context, device, before string, limit int) ([]Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Record
	for _, r := range m.recs {
		if r.Device == device && (before == "" || r.ID < before) {
			out = append(out, copyRec(r))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID > out[j].ID })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

func (m *memStore) ActiveCommands(ctx context.Context) ([]Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Record
	for _, r := range m.recs {
		if !r.Final() {
			out = append(out, copyRec(r))
		}
	}
	return out, nil
}

// registry is a Devices fake: every device but "ghost" exists; a token
// works while valid > 0 (each check spends one) or always if valid < 0.
type registry struct {
	valid atomic.Int64
}

func (r *registry) Exists(id string) bool { return id != "ghost" }
func (r *registry) StillValid(string, devices.TokenHash) bool {
	if r.valid.Load() < 0 {
		return true
	}
	return r.valid.Add(-1) >= 0
}

// events is a Fanout that keeps command events.
type events struct {
	mu  sync.Mutex
	evs []telemetry.Event
}

func (e *events) Publish(ev telemetry.Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

func (e *events) statuses(id string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.evs {
		if ev.Type == telemetry.EventCommand && ev.ID == id {
			out = append(out, ev.Status)
		}
	}
	return out
}

// conn is a session's command sink: it takes commands while open.
type conn struct {
	mu     sync.Mutex
	got    []string
	closed bool
}

func (c *conn) deliver(cmd telemetry.Command) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.got = append(c.got, cmd.ID)
	return true
}

func (c *conn) ids() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...)
}

func (c *conn) setClosed(v bool) {
	c.mu.Lock()
	c.closed = v
	c.mu.Unlock()
}

// publisher is a Publisher fake: it records what would go to the broker.
type publisher struct {
	mu   sync.Mutex
	ids  []string
	down atomic.Bool
}

func (p *publisher) PublishCommand(device string, cmd telemetry.Command) bool {
	if p.down.Load() {
		return false
	}
	p.mu.Lock()
	p.ids = append(p.ids, cmd.ID)
	p.mu.Unlock()
	return true
}

func (p *publisher) published() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.ids...)
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// rig is a running Service over fakes.
type rig struct {
	s     *Service
	store *memStore
	reg   *registry
	ev    *events
	clk   *clock
}

const waitLong = 10 * time.Second // generous: the machine may be loaded

func newRig(t *testing.T, store *memStore, router Router) *rig {
	t.Helper()
	if store == nil {
		store = newMemStore()
	}
	r := &rig{store: store, reg: &registry{}, ev: &events{}, clk: &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}}
	r.reg.valid.Store(-1)
	var err error
	r.s, err = New(context.Background(), Options{Store: store, Devices: r.reg, Router: router, Fanout: r.ev, Now: r.clk.now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.s.Run(ctx); close(done) }() // owner: this rig; ends at cleanup
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// sync waits until the owner goroutine has run everything queued before,
// and has acted on the news from other instances marked before.
func (r *rig) sync(t *testing.T) {
	t.Helper()
	if err := r.s.do(context.Background(), r.s.drainNews); err != nil {
		t.Fatal(err)
	}
}

// tick runs the command clock once at the rig's time, on the owner.
func (r *rig) tick(t *testing.T) {
	t.Helper()
	if err := r.s.do(context.Background(), func() { r.s.tick(r.clk.now()) }); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) send(t *testing.T, device, name string) Record {
	t.Helper()
	rec, _, err := r.s.SendCommand(context.Background(), Spec{Device: device, Name: name, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func (r *rig) status(t *testing.T, device, id string) string {
	t.Helper()
	rec, err := r.store.GetCommand(context.Background(), device, id)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Status
}

func (r *rig) result(t *testing.T, device, id, status string) error {
	t.Helper()
	return r.s.CommandResult(device, &telemetry.CommandResult{ID: id, Status: status})
}

// eventually polls cond (under the owner goroutine's order) until it
// holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// parkOwner parks the owner goroutine in a request until the returned
// func (also run at cleanup, before the rig stops) is called.
func parkOwner(t *testing.T, s *Service) (release func()) {
	t.Helper()
	gate := make(chan struct{})
	parked := make(chan struct{})
	s.enqueue(func() { close(parked); <-gate })
	<-parked
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release)
	return release
}

// fillQueue parks the owner goroutine and fills its request queue with
// delivery nudges until one is dropped.
func fillQueue(t *testing.T, s *Service) (release func()) {
	t.Helper()
	release = parkOwner(t, s)
	for s.Stats().Dropped.Load() == 0 {
		s.DeliverCommands("filler")
	}
	return release
}

// rotating is a Devices whose token is rotated (snapshot swapped, then
// CredentialsChanged -> WakePollers) right after a poll's first check.
type rotating struct {
	s       *Service
	calls   atomic.Int64
	revoked atomic.Bool
}

func (d *rotating) Exists(string) bool { return true }
func (d *rotating) StillValid(id string, _ devices.TokenHash) bool {
	ok := !d.revoked.Load()
	if d.calls.Add(1) == 1 {
		d.revoked.Store(true)
		d.s.WakePollers(id)
	}
	return ok
}

// hangStore is a memStore whose PutCommand and ListCommands hang until
// their ctx ends while hang is set (a PostgreSQL that stopped answering);
// entered gets a signal when a call starts hanging.
type hangStore struct {
	*memStore
	hang    atomic.Bool
	entered chan struct{} // capacity 1
}

func newHangStore() *hangStore {
	return &hangStore{memStore: newMemStore(), entered: make(chan struct{}, 1)}
}

func (h *hangStore) hung(ctx context.Context) error {
	select {
	case h.entered <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return ctx.Err()
}

func (h *hangStore) PutCommand(ctx context.Context, c Record) error {
	if h.hang.Load() {
		return h.hung(ctx)
	}
	return h.memStore.PutCommand(ctx, c)
}

func (h *hangStore) ListCommands(ctx context.Context, device, before string, limit int) ([]Record, error) {
	if h.hang.Load() {
		return nil, h.hung(ctx)
	}
	return h.memStore.ListCommands(ctx, device, before, limit)
}
