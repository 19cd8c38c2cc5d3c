package devices

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/fieldhub/fieldhub/telemetry"
)

// IDPattern is the rule for device ids: safe as an MQTT topic level and an
// InfluxDB tag value.
const IDPattern = `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`

var idRE = regexp.MustCompile(IDPattern)

// ValidID reports whether id is a valid device id.
func ValidID(id string) bool { return idRE.MatchString(id) }

// Limits on what operators may attach to a device.
const (
	MaxLabels       = 32
	MaxNameLen      = 128
	MaxLabelValue   = 128
	MaxListPageSize = 1000
)

// Sentinel errors. Callers branch with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrInvalid  = errors.New("invalid")
	// ErrConflict means the request does not fit the object's state (e.g.
	// cancelling a command that was already sent).
	ErrConflict = errors.New("conflict")
	// ErrQueueFull means the device has as many queued commands as allowed.
	ErrQueueFull = errors.New("queue full")
)

// Transports a device can be connected over.
const (
	TransportWS   = "ws"
	TransportMQTT = "mqtt"
	TransportHTTP = "http"
)

// Presence is where and since when a device is connected. The transports
// keep it up to date through the bridge.
type Presence struct {
	Online      bool       `json:"online"`
	Transport   string     `json:"transport,omitempty"`
	ConnectedAt *time.Time `json:"connected_at,omitempty"`
	LastSeen    *time.Time `json:"last_seen,omitempty"`
	RemoteAddr  string     `json:"remote_addr,omitempty"`
	// Reason is why the device last went offline.
	Reason string `json:"disconnect_reason,omitempty"`
}

// Device is the public view of a registered device.
type Device struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels"`
	CreatedAt time.Time         `json:"created_at"`
	Presence
	// Rejected counts the device's messages this hub instance refused
	// since it started (Registry.Rejections lists the last ones).
	Rejected int64 `json:"rejected"`
}

// Spec is what an operator gives to create a device.
type Spec struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
}

// Created is a new device with its token, shown once.
type Created struct {
	Device Device `json:"device"`
	Token  string `json:"token"`
}

// device is one device in a snapshot: its record, never changed once
// published, and its live state, which every snapshot holding the device
// shares.
type device struct {
	rec  Record
	live *liveState
	// tags caches the InfluxDB tags of rec's labels (Registry.Tags),
	// built on first use: rec never changes once published.
	tags atomic.Pointer[[]telemetry.Tag]
}

// liveState is what the transports change per message or per connection,
// without a lock: Touch and SetPresence store atomically into it.
type liveState struct {
	lastSeen atomic.Int64 // unix nanoseconds; 0: never heard from
	// stored is the last_seen the store has; only Flush (one at a time,
	// under flushMu) and the single writer change it.
	stored   atomic.Int64
	presence atomic.Pointer[Presence] // LastSeen left nil; nil: never connected here
	// rejections are the device's recent refused messages (rejections.go),
	// kept per instance like presence.
	rejections rejections
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func newLive(lastSeen time.Time) *liveState {
	l := &liveState{}
	l.lastSeen.Store(nanos(lastSeen))
	l.stored.Store(nanos(lastSeen))
	return l
}

// snapshot is the registry's device state at one instant. It is immutable
// once published through Registry.snap: a writer builds the next one from
// a copy and swaps the pointer, so readers never lock.
type snapshot struct {
	devices map[string]*device
	byHash  map[TokenHash]string // device token hash -> device id
	// cursor is the store's change cursor this snapshot has caught up
	// with (see ChangeFeed); 0 for stores without one.
	cursor uint64
}

// clone copies the maps (not the devices, which are immutable) for the
// writer to change.
func (s *snapshot) clone() *snapshot {
	return &snapshot{devices: maps.Clone(s.devices), byHash: maps.Clone(s.byHash), cursor: s.cursor}
}

// Defaults of Options.
const (
	DefaultStoreTimeout  = 10 * time.Second
	DefaultFlushInterval = 30 * time.Second
)

// Options configures a Registry. Its three callbacks are the first
// listener; listeners built after the registry are added with Subscribe.
type Options struct {
	Logger *slog.Logger
	// OnCredentialsChanged is called (without locks held, possibly from a
	// timer goroutine) after a device's tokens changed or the device was
	// deleted, so transports can re-check their sessions.
	OnCredentialsChanged func(deviceID string)
	// OnChange is called (without locks held) after this registry changed
	// its store: devices created, rotated or deleted, operator tokens
	// created or revoked. Several hub instances sharing one store use it
	// to tell each other to Refresh, and to mirror device credentials into
	// an external broker. It carries new device tokens in plaintext, which
	// exist nowhere else: never log a Change.
	OnChange func(c Changed)
	// OnOperatorEnded is called (without locks held, possibly from a timer
	// goroutine) after an operator credential stopped working: a token was
	// revoked, here or (seen by Refresh) on another instance, or one of its
	// dashboard sessions signed out, expired or was evicted. The dashboard
	// closes the live connections that credential opened.
	OnOperatorEnded func(e OperatorEnded)
	// SessionIdle ends a dashboard session unused for this long; default
	// 12 h. SessionMax ends it this long after sign-in whatever its use;
	// default 7 days.
	SessionIdle, SessionMax time.Duration
	// TagLabels names the device labels written to InfluxDB as tags.
	TagLabels []string
	// StoreTimeout bounds every store write and refresh, so a hung store
	// fails the operation instead of stalling the writer; default 10 s.
	StoreTimeout time.Duration
	// FlushInterval is how often Run writes the last_seen of devices heard
	// from since the previous flush, in one store write; default 30 s.
	// Close writes the rest.
	FlushInterval time.Duration
	Now           func() time.Time
}

// Subscriber is told what the registry changed, like the callbacks of
// Options; each func may be nil. It is the seam for listeners built after
// the registry (the bridge, the cluster), which the registry must exist to
// construct: serve opens the registry, builds them, then subscribes them
// once before anything runs, so no callback closes over a variable that is
// still nil. A change made before a Subscribe reaches only the listeners
// subscribed then (the Options callbacks always).
type Subscriber struct {
	OnChange             func(c Changed)
	OnCredentialsChanged func(deviceID string)
	OnOperatorEnded      func(e OperatorEnded)
}

// Changed says what one registry operation changed.
type Changed struct {
	Devices   []DeviceChange
	Operators bool // operator tokens were created or revoked
	// Updated are devices whose name or labels changed (Update): news
	// for the other instances, not a credential change.
	Updated []string
}

// DeviceChange is one device's credential change. Token is the new token
// (create, rotate), empty for a deletion.
type DeviceChange struct {
	ID      string
	Token   string
	Deleted bool
	// Grace is how long the device's previous tokens keep working after a
	// rotation.
	Grace time.Duration
}

// LogValue keeps tokens out of logs, whatever a caller does with a Change.
func (c DeviceChange) LogValue() slog.Value {
	return slog.GroupValue(slog.String("device", c.ID), slog.Bool("deleted", c.Deleted), slog.Duration("grace", c.Grace))
}

// Registry is the in-memory, write-through registry of devices and operator
// tokens. It is safe for concurrent use.
//
// Devices are an immutable snapshot behind snap: every read (Authenticate,
// StillValid, Tags, Exists, Get, List, Counts) loads the pointer and takes
// no lock; Touch and SetPresence store into per-device atomics. Device
// writes (CreateBatch, Rotate, Delete, Refresh) are serialised by the
// writer token wsem: the holder writes the change to the store under a
// deadline, and only when that succeeded publishes the next snapshot, so
// a failed write leaves the snapshot as it was. mu guards operator tokens
// and dashboard sessions (operators.go, sessions.go), never devices.
type Registry struct {
	store Store
	opts  Options
	log   *slog.Logger

	snap atomic.Pointer[snapshot]
	// wsem is the device writer's token (capacity 1): taking it honours
	// the caller's ctx, so a writer queued behind a hung store gives up at
	// its own deadline. Hot-path reads never take it.
	wsem chan struct{}
	// lastCreated is the newest CreatedAt this instance gave a device;
	// guarded by the writer token. CreateBatch keeps CreatedAt strictly
	// increasing, so a device deleted and created again with the same id
	// differs in CreatedAt, which ties a last_seen touch to its record.
	lastCreated time.Time
	// flushMu makes Flushes one at a time; held across the store write of
	// last_seen, which no reader waits for.
	flushMu sync.Mutex

	mu        sync.RWMutex
	operators map[string]*OperatorToken
	opByHash  map[TokenHash]string // operator token hash -> token id
	bootstrap *TokenHash           // FIELDHUB_ADMIN_TOKEN, never stored
	// sessions are the dashboard sign-ins by hash of their id (sessions.go).
	sessions   map[TokenHash]*session
	sessionSeq uint64 // sign-ins on this instance, ordering sessions created in the same millisecond; guarded by mu
	closed     bool   // guarded by mu
	// gen counts this registry's operator and session writes, so a Refresh
	// can tell that its load may predate one of them. Guarded by mu.
	gen uint64

	// tmu guards timers and timersClosed; nothing is called under it.
	tmu sync.Mutex
	// timers re-check a device's sessions when a grace period ends: one
	// per device and expiry instant, so each superseded token keeps exactly
	// the grace it was given.
	timers       map[string]map[int64]*time.Timer
	timersClosed bool

	// subs are the listeners: the Options callbacks first, then each
	// Subscribe in order. Copy-on-write: Subscribe swaps in a new slice,
	// callers of the callbacks (possibly timer goroutines) load it and take
	// no lock.
	subs atomic.Pointer[[]Subscriber]
}

// Subscribe adds s to the registry's listeners. Call it during
// construction, before Run and before serving; it is safe against
// callbacks already firing (a grace-period timer), which then reach the
// listeners subscribed so far.
func (r *Registry) Subscribe(s Subscriber) {
	for {
		old := r.subs.Load()
		next := append(append([]Subscriber(nil), *old...), s)
		if r.subs.CompareAndSwap(old, &next) {
			return
		}
	}
}

// listeners is the current list of subscribers; callers hold no lock.
func (r *Registry) listeners() []Subscriber { return *r.subs.Load() }

// applyLocked writes an operator or session change to the store, under
// the store deadline. Callers hold mu.
func (r *Registry) applyLocked(ctx context.Context, c Change) error {
	r.gen++
	ctx, cancel := context.WithTimeout(ctx, r.opts.StoreTimeout)
	defer cancel()
	return r.store.Apply(ctx, c)
}

// lockWriter takes the device writer's token, or gives up with ctx.
func (r *Registry) lockWriter(ctx context.Context) error {
	select {
	case r.wsem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the registry writer: %w", ctx.Err())
	}
}

func (r *Registry) unlockWriter() { <-r.wsem }

// refreshAfterRefusal catches up with the store after it refused a
// device write this instance's snapshot allowed (another instance created
// or deleted the device meanwhile), so the next request sees the truth.
// Best effort: the caller returns the refusal either way. Callers do not
// hold the writer token.
func (r *Registry) refreshAfterRefusal(ctx context.Context) {
	if err := r.Refresh(ctx); err != nil {
		r.log.Warn("refresh after a refused device write", "err", err)
	}
}

// applyDevices writes a device change to the store under the store
// deadline. Callers hold the writer token.
func (r *Registry) applyDevices(ctx context.Context, c Change) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.StoreTimeout)
	defer cancel()
	if err := r.store.Apply(ctx, c); err != nil {
		return err
	}
	return nil
}

// Open loads the registry from store.
func Open(ctx context.Context, store Store, opts Options) (*Registry, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SessionIdle <= 0 {
		opts.SessionIdle = DefaultSessionIdle
	}
	if opts.SessionMax <= 0 {
		opts.SessionMax = DefaultSessionMax
	}
	if opts.StoreTimeout <= 0 {
		opts.StoreTimeout = DefaultStoreTimeout
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = DefaultFlushInterval
	}
	lctx, cancel := context.WithTimeout(ctx, opts.StoreTimeout)
	defer cancel()
	st, err := store.Load(lctx)
	if err != nil {
		return nil, err
	}
	r := &Registry{
		store: store, opts: opts, log: opts.Logger,
		wsem:      make(chan struct{}, 1),
		operators: map[string]*OperatorToken{}, opByHash: map[TokenHash]string{},
		timers:   map[string]map[int64]*time.Timer{},
		sessions: map[TokenHash]*session{},
	}
	r.subs.Store(&[]Subscriber{{OnChange: opts.OnChange, OnCredentialsChanged: opts.OnCredentialsChanged, OnOperatorEnded: opts.OnOperatorEnded}})
	now := opts.Now()
	snap := &snapshot{devices: make(map[string]*device, len(st.Devices)), byHash: make(map[TokenHash]string, len(st.Devices)), cursor: st.Cursor}
	for _, rec := range st.Devices {
		snap.devices[rec.ID] = &device{rec: rec, live: newLive(rec.LastSeen)}
		for _, t := range rec.Tokens {
			snap.byHash[t.Hash] = rec.ID
			r.scheduleExpiry(rec.ID, t.ExpiresAt, now)
		}
	}
	r.snap.Store(snap)
	for _, o := range st.Operators {
		o := o
		r.operators[o.ID] = &o
		r.opByHash[o.Hash] = o.ID
	}
	r.loadSessions(ctx, st.Sessions, now)
	return r, nil
}

// Run writes last_seen to the store every FlushInterval until ctx ends,
// then once more. The caller owns the goroutine; Close flushes too, so a
// registry without Run still persists last_seen at shutdown.
func (r *Registry) Run(ctx context.Context) error {
	t := time.NewTicker(r.opts.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.opts.StoreTimeout)
			defer cancel()
			if err := r.Flush(fctx); err != nil {
				r.log.Warn("flush last_seen", "err", err)
			}
			return nil
		case <-t.C:
			if err := r.Flush(ctx); err != nil {
				r.log.Warn("flush last_seen", "err", err)
			}
		}
	}
}

// Flush writes, in one store write, the last_seen of every device heard
// from since it was last written. A device deleted meanwhile is not
// recreated, and one deleted and created again is not touched (each touch
// carries its record's CreatedAt; Change.TouchDevices). On failure
// nothing is marked written, so the next Flush tries again.
func (r *Registry) Flush(ctx context.Context) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	type pending struct {
		l  *liveState
		at int64
	}
	var (
		touches []LastSeen
		marks   []pending
	)
	for id, d := range r.snap.Load().devices {
		at := d.live.lastSeen.Load()
		if at != 0 && at != d.live.stored.Load() {
			touches = append(touches, LastSeen{ID: id, CreatedAt: d.rec.CreatedAt, At: time.Unix(0, at).UTC()})
			marks = append(marks, pending{d.live, at})
		}
	}
	if len(touches) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.StoreTimeout)
	defer cancel()
	if err := r.store.Apply(ctx, Change{TouchDevices: touches}); err != nil {
		return fmt.Errorf("write last_seen of %d devices: %w", len(touches), err)
	}
	for _, m := range marks {
		m.l.stored.Store(m.at)
	}
	return nil
}

// Close writes the last_seen not yet flushed, in one store write, and
// stops grace-period and session timers. The store is closed by its owner,
// after Close.
func (r *Registry) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), r.opts.StoreTimeout)
	defer cancel()
	if err := r.Flush(ctx); err != nil {
		r.log.Warn("flush last_seen", "err", err)
	}
	r.mu.Lock()
	r.closed = true
	for _, s := range r.sessions {
		s.timer.Stop()
	}
	r.mu.Unlock()
	r.tmu.Lock()
	r.timersClosed = true
	for id, ts := range r.timers {
		for _, t := range ts {
			t.Stop()
		}
		delete(r.timers, id)
	}
	r.tmu.Unlock()
}

// Ping reports whether the registry's store is usable, for readiness.
func (r *Registry) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.StoreTimeout)
	defer cancel()
	return r.store.Apply(ctx, Change{})
}

func validateSpec(s Spec) error {
	switch {
	case !ValidID(s.ID):
		return fmt.Errorf("%w: id %q must match %s", ErrInvalid, telemetry.Truncate(s.ID, 80), IDPattern)
	case len(s.Name) > MaxNameLen:
		return fmt.Errorf("%w: name must be at most %d bytes", ErrInvalid, MaxNameLen)
	case telemetry.HasControl(s.Name):
		return fmt.Errorf("%w: name must be UTF-8 text without control characters", ErrInvalid)
	case len(s.Labels) > MaxLabels:
		return fmt.Errorf("%w: at most %d labels", ErrInvalid, MaxLabels)
	}
	for k, v := range s.Labels {
		if !telemetry.ValidName(k) {
			return fmt.Errorf("%w: label key %q must match %s", ErrInvalid, telemetry.Truncate(k, 80), telemetry.NamePattern)
		}
		if !telemetry.ValidTagValue(v) {
			return fmt.Errorf("%w: label %q value must be 1 to %d bytes of UTF-8 without control characters or backslashes", ErrInvalid, k, MaxLabelValue)
		}
	}
	return nil
}

// Create registers one device and returns its token. An empty id is
// generated.
func (r *Registry) Create(ctx context.Context, s Spec) (Created, error) {
	out, err := r.CreateBatch(ctx, []Spec{s})
	if err != nil {
		return Created{}, err
	}
	return out[0], nil
}

// CreateBatch registers many devices atomically: all or none.
func (r *Registry) CreateBatch(ctx context.Context, specs []Spec) ([]Created, error) {
	now := r.opts.Now().UTC().Truncate(time.Millisecond)
	seen := make(map[string]bool, len(specs))
	recs := make([]Record, len(specs))
	tokens := make([]string, len(specs))
	for i, s := range specs {
		if s.ID == "" {
			s.ID = newDeviceID()
		}
		if err := validateSpec(s); err != nil {
			return nil, fmt.Errorf("device %d: %w", i+1, err)
		}
		if seen[s.ID] {
			return nil, fmt.Errorf("device %d: %w: id %q appears twice", i+1, ErrExists, s.ID)
		}
		seen[s.ID] = true
		tokens[i] = newToken(DeviceTokenPrefix)
		recs[i] = Record{ID: s.ID, Name: s.Name, Labels: maps.Clone(s.Labels), CreatedAt: now,
			Tokens: []StoredToken{{Hash: HashToken(tokens[i])}}}
		if recs[i].Labels == nil {
			recs[i].Labels = map[string]string{}
		}
	}
	if err := r.lockWriter(ctx); err != nil {
		return nil, err
	}
	if !now.After(r.lastCreated) {
		now = r.lastCreated.Add(time.Millisecond)
	}
	for i := range recs {
		recs[i].CreatedAt = now
	}
	cur := r.snap.Load()
	for _, rec := range recs {
		if _, ok := cur.devices[rec.ID]; ok {
			r.unlockWriter()
			return nil, fmt.Errorf("device %q: %w", rec.ID, ErrExists)
		}
	}
	if err := r.applyDevices(ctx, Change{CreateDevices: recs}); err != nil {
		r.unlockWriter()
		if errors.Is(err, ErrExists) {
			r.refreshAfterRefusal(ctx)
		}
		return nil, err
	}
	r.lastCreated = now
	next := cur.clone()
	out := make([]Created, len(recs))
	for i, rec := range recs {
		d := &device{rec: rec, live: newLive(time.Time{})}
		next.devices[rec.ID] = d
		next.byHash[rec.Tokens[0].Hash] = rec.ID
		out[i] = Created{Device: d.view(), Token: tokens[i]}
	}
	r.snap.Store(next)
	r.unlockWriter()
	r.notify(func() Changed {
		ch := Changed{Devices: make([]DeviceChange, len(recs))}
		for i, rec := range recs {
			ch.Devices[i] = DeviceChange{ID: rec.ID, Token: tokens[i]}
		}
		return ch
	})
	return out, nil
}

// notify calls every listener's OnChange with the change mk builds; mk
// runs only when someone listens, and once. Callers hold no lock and not
// the writer token.
func (r *Registry) notify(mk func() Changed) {
	var c *Changed
	for _, s := range r.listeners() {
		if s.OnChange != nil {
			if c == nil {
				v := mk()
				c = &v
			}
			s.OnChange(*c)
		}
	}
}

// lastSeen is the device's last_seen as this instance knows it.
func (d *device) lastSeen() *time.Time {
	n := d.live.lastSeen.Load()
	if n == 0 {
		return nil
	}
	t := time.Unix(0, n).UTC()
	return &t
}

func (d *device) view() Device {
	var p Presence
	if cur := d.live.presence.Load(); cur != nil {
		p = *cur
	}
	p.LastSeen = d.lastSeen()
	return Device{ID: d.rec.ID, Name: d.rec.Name, Labels: maps.Clone(d.rec.Labels), CreatedAt: d.rec.CreatedAt, Presence: p,
		Rejected: d.live.rejections.count()}
}

func (d *device) online() bool {
	p := d.live.presence.Load()
	return p != nil && p.Online
}

// Get returns the device with id.
func (r *Registry) Get(id string) (Device, error) {
	d, ok := r.snap.Load().devices[id]
	if !ok {
		return Device{}, fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	return d.view(), nil
}

// Exists reports whether a device is registered.
func (r *Registry) Exists(id string) bool {
	_, ok := r.snap.Load().devices[id]
	return ok
}

// Filter selects devices for List.
type Filter struct {
	Labels map[string]string // every label must match
	Online *bool
	Search string // substring of id or name, case-insensitive
	After  string // cursor: the last id of the previous page (id order only)
	Limit  int    // default 100, at most MaxListPageSize
	// Sort orders the whole match by one column (ListSorts) before it is
	// paged by Offset: the overview sorts the fleet, not one page of it.
	// "" is id order, paged by After.
	Sort   string
	Desc   bool
	Offset int
}

// ListSorts are the columns List sorts by: natural order of ids and
// names (sim-2 before sim-10), online first, transport, most rejected,
// most recently seen, longest offline first. Ties go by natural id order.
var ListSorts = []string{"id", "name", "status", "transport", "rejected", "seen", "since"}

// List returns devices in id order matching f, and the cursor of the next
// page ("" on the last page), and the total number matching.
func (r *Registry) List(f Filter) (devs []Device, next string, total int) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, MaxListPageSize)
	search := strings.ToLower(f.Search)
	snap := r.snap.Load()
	matched := make([]*device, 0, len(snap.devices))
	for _, d := range snap.devices {
		if f.Online != nil && d.online() != *f.Online {
			continue
		}
		if search != "" && !strings.Contains(strings.ToLower(d.rec.ID), search) && !strings.Contains(strings.ToLower(d.rec.Name), search) {
			continue
		}
		ok := true
		for k, v := range f.Labels {
			if d.rec.Labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			matched = append(matched, d)
		}
	}
	if f.Sort != "" {
		return listSorted(matched, f)
	}
	slices.SortFunc(matched, func(a, b *device) int { return cmp.Compare(a.rec.ID, b.rec.ID) })
	total = len(matched)
	start, _ := slices.BinarySearchFunc(matched, f.After, func(d *device, id string) int {
		if id == "" {
			return 1
		}
		return cmp.Compare(d.rec.ID, id)
	})
	if f.After != "" && start < len(matched) && matched[start].rec.ID == f.After {
		start++
	}
	end := min(start+f.Limit, len(matched))
	devs = make([]Device, 0, end-start)
	for _, d := range matched[start:end] {
		devs = append(devs, d.view())
	}
	if end < len(matched) {
		next = matched[end-1].rec.ID
	}
	return devs, next, total
}

// listSorted is List with f.Sort: the page at f.Offset; next is the
// offset of the next page ("" on the last).
func listSorted(matched []*device, f Filter) (devs []Device, next string, total int) {
	views := make([]Device, len(matched))
	for i, d := range matched {
		views[i] = d.view()
	}
	by := listOrder(f.Sort)
	slices.SortFunc(views, func(a, b Device) int {
		c := by(a, b)
		if f.Desc {
			c = -c
		}
		if c != 0 {
			return c
		}
		return NaturalCompare(a.ID, b.ID)
	})
	total = len(views)
	start := min(max(f.Offset, 0), total)
	end := min(start+f.Limit, total)
	if end < total {
		next = strconv.Itoa(end)
	}
	return views[start:end], next, total
}

// listOrder is the comparison of one ListSorts column (id when unknown).
func listOrder(col string) func(a, b Device) int {
	seen := func(d Device) int64 {
		if d.LastSeen == nil {
			return 0
		}
		return d.LastSeen.UnixMilli()
	}
	online := func(d Device) int {
		if d.Online {
			return 1
		}
		return 0
	}
	switch col {
	case "name":
		return func(a, b Device) int { return NaturalCompare(a.Name, b.Name) }
	case "status":
		return func(a, b Device) int { return online(b) - online(a) }
	case "transport":
		tr := func(d Device) string {
			if d.Online {
				return d.Transport
			}
			return ""
		}
		return func(a, b Device) int { return NaturalCompare(tr(a), tr(b)) }
	case "rejected":
		return func(a, b Device) int { return cmp.Compare(b.Rejected, a.Rejected) }
	case "seen":
		return func(a, b Device) int { return cmp.Compare(seen(b), seen(a)) }
	case "since":
		return func(a, b Device) int {
			if c := online(a) - online(b); c != 0 {
				return c
			}
			return cmp.Compare(seen(a), seen(b))
		}
	}
	return func(a, b Device) int { return NaturalCompare(a.ID, b.ID) }
}

// NaturalCompare orders strings with their digit runs as numbers, case
// folded: sim-2 before sim-10, as the operators' UI sorts.
func NaturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digitRun(a), digitRun(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := cmp.Compare(len(na), len(nb)); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		ra, sa := utf8.DecodeRuneInString(a)
		rb, sb := utf8.DecodeRuneInString(b)
		if c := cmp.Compare(unicode.ToLower(ra), unicode.ToLower(rb)); c != 0 {
			return c
		}
		a, b = a[sa:], b[sb:]
	}
	return cmp.Compare(len(a), len(b))
}

func digitRun(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

// Rotate issues a new token for device id. With grace 0 the old tokens stop
// working at once; otherwise they keep working until the grace period ends.
func (r *Registry) Rotate(ctx context.Context, id string, grace time.Duration) (string, error) {
	if grace < 0 || grace > 30*24*time.Hour {
		return "", fmt.Errorf("%w: grace must be between 0 and 720h", ErrInvalid)
	}
	token := newToken(DeviceTokenPrefix)
	now := r.opts.Now()
	if err := r.lockWriter(ctx); err != nil {
		return "", err
	}
	cur := r.snap.Load()
	d, ok := cur.devices[id]
	if !ok {
		r.unlockWriter()
		return "", fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	rec := d.rec
	var keep []StoredToken
	if grace > 0 {
		for _, t := range rec.Tokens {
			if t.ExpiresAt.IsZero() || t.ExpiresAt.After(now) {
				if t.ExpiresAt.IsZero() || t.ExpiresAt.After(now.Add(grace)) {
					t.ExpiresAt = now.Add(grace)
				}
				keep = append(keep, t)
			}
		}
	}
	rec.Tokens = append(keep, StoredToken{Hash: HashToken(token)})
	if ls := d.lastSeen(); ls != nil && ls.After(rec.LastSeen) {
		rec.LastSeen = *ls
	}
	if err := r.applyDevices(ctx, Change{UpdateDevices: []Record{rec}}); err != nil {
		r.unlockWriter()
		if errors.Is(err, ErrNotFound) {
			r.refreshAfterRefusal(ctx)
		}
		return "", err
	}
	d.live.stored.Store(nanos(rec.LastSeen))
	next := cur.clone()
	for _, t := range d.rec.Tokens {
		delete(next.byHash, t.Hash)
	}
	for _, t := range rec.Tokens {
		next.byHash[t.Hash] = id
	}
	next.devices[id] = &device{rec: rec, live: d.live}
	r.snap.Store(next)
	r.unlockWriter()
	for _, t := range rec.Tokens {
		r.scheduleExpiry(id, t.ExpiresAt, now)
	}
	if grace == 0 {
		r.changed(id)
	}
	r.notify(func() Changed { return Changed{Devices: []DeviceChange{{ID: id, Token: token, Grace: grace}}} })
	return token, nil
}

// Update is a change of a device's metadata: a nil field stays as it
// is; Labels, when set, replaces the whole set (an empty map clears it).
type Update struct {
	Name   *string            `json:"name"`
	Labels *map[string]string `json:"labels"`
}

// Update changes device id's name and labels, with the rules of Create,
// and returns the device as it is now. Other instances sharing the store
// see it at their next Refresh, like any other device write.
func (r *Registry) Update(ctx context.Context, id string, u Update) (Device, error) {
	if err := r.lockWriter(ctx); err != nil {
		return Device{}, err
	}
	cur := r.snap.Load()
	d, ok := cur.devices[id]
	if !ok {
		r.unlockWriter()
		return Device{}, fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	rec := d.rec
	if u.Name != nil {
		rec.Name = *u.Name
	}
	if u.Labels != nil {
		rec.Labels = maps.Clone(*u.Labels)
		if rec.Labels == nil {
			rec.Labels = map[string]string{}
		}
	}
	if err := validateSpec(Spec{ID: rec.ID, Name: rec.Name, Labels: rec.Labels}); err != nil {
		r.unlockWriter()
		return Device{}, err
	}
	if ls := d.lastSeen(); ls != nil && ls.After(rec.LastSeen) {
		rec.LastSeen = *ls
	}
	if err := r.applyDevices(ctx, Change{UpdateDevices: []Record{rec}}); err != nil {
		r.unlockWriter()
		if errors.Is(err, ErrNotFound) {
			r.refreshAfterRefusal(ctx)
		}
		return Device{}, err
	}
	d.live.stored.Store(nanos(rec.LastSeen))
	next := cur.clone()
	nd := &device{rec: rec, live: d.live}
	next.devices[id] = nd
	r.snap.Store(next)
	r.unlockWriter()
	r.notify(func() Changed { return Changed{Updated: []string{id}} })
	return nd.view(), nil
}

// scheduleExpiry re-checks a device's sessions when a token expiring at
// at stops working. Every expiry instant gets its own timer: a later
// rotation never moves an earlier token's end. A zero or past instant
// schedules nothing. It takes tmu; callers may hold the writer token.
func (r *Registry) scheduleExpiry(id string, at, now time.Time) {
	if at.IsZero() || !at.After(now) {
		return
	}
	r.tmu.Lock()
	defer r.tmu.Unlock()
	if r.timersClosed {
		return
	}
	key := at.UnixNano()
	ts := r.timers[id]
	if ts == nil {
		ts = map[int64]*time.Timer{}
		r.timers[id] = ts
	}
	if ts[key] != nil {
		return // already scheduled (a refresh sees the same tokens again)
	}
	ts[key] = time.AfterFunc(at.Sub(now)+time.Millisecond, func() {
		r.tmu.Lock()
		if cur := r.timers[id]; cur != nil {
			delete(cur, key)
			if len(cur) == 0 {
				delete(r.timers, id)
			}
		}
		r.tmu.Unlock()
		r.changed(id)
	})
}

// stopTimers drops a deleted device's grace-period timers.
func (r *Registry) stopTimers(id string) {
	r.tmu.Lock()
	defer r.tmu.Unlock()
	for _, t := range r.timers[id] {
		t.Stop()
	}
	delete(r.timers, id)
}

// changed tells every listener that device id's credentials changed.
// Callers hold no lock.
func (r *Registry) changed(id string) {
	for _, s := range r.listeners() {
		if s.OnCredentialsChanged != nil {
			s.OnCredentialsChanged(id)
		}
	}
}

// Delete removes device id; its tokens stop working and its sessions are
// closed through OnCredentialsChanged.
func (r *Registry) Delete(ctx context.Context, id string) error {
	if err := r.lockWriter(ctx); err != nil {
		return err
	}
	cur := r.snap.Load()
	d, ok := cur.devices[id]
	if !ok {
		r.unlockWriter()
		return fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	if err := r.applyDevices(ctx, Change{DeleteDevices: []string{id}}); err != nil {
		r.unlockWriter()
		return err
	}
	next := cur.clone()
	forget(next, id, d)
	r.snap.Store(next)
	r.unlockWriter()
	r.stopTimers(id)
	r.changed(id)
	r.notify(func() Changed { return Changed{Devices: []DeviceChange{{ID: id, Deleted: true}}} })
	return nil
}

// forget drops a deleted device from a snapshot being built, with its
// token hashes.
func forget(s *snapshot, id string, d *device) {
	for _, t := range d.rec.Tokens {
		delete(s.byHash, t.Hash)
	}
	delete(s.devices, id)
}

// Authenticate returns the device a token belongs to: one hash lookup,
// then a constant-time comparison and the grace-period check.
func (r *Registry) Authenticate(token string) (id string, h TokenHash, ok bool) {
	if !LooksLikeToken(token, DeviceTokenPrefix) {
		return "", TokenHash{}, false
	}
	h = HashToken(token)
	snap := r.snap.Load()
	id, ok = snap.byHash[h]
	if !ok || !r.valid(snap, id, h) {
		return "", TokenHash{}, false
	}
	return id, h, true
}

// AuthenticateDevice checks that token belongs to device id (MQTT sends
// both); a token is valid only with its own device id.
func (r *Registry) AuthenticateDevice(id, token string) (TokenHash, bool) {
	if !LooksLikeToken(token, DeviceTokenPrefix) {
		return TokenHash{}, false
	}
	h := HashToken(token)
	return h, r.valid(r.snap.Load(), id, h)
}

// StillValid reports whether a session authenticated with h may go on.
func (r *Registry) StillValid(id string, h TokenHash) bool {
	return r.valid(r.snap.Load(), id, h)
}

func (r *Registry) valid(s *snapshot, id string, h TokenHash) bool {
	d, ok := s.devices[id]
	if !ok {
		return false
	}
	now := r.opts.Now()
	valid := false
	for _, t := range d.rec.Tokens {
		// Compare every token so timing does not say which one matched.
		if t.Hash.Equal(h) && (t.ExpiresAt.IsZero() || now.Before(t.ExpiresAt)) {
			valid = true
		}
	}
	return valid
}

// SetPresence records a device's presence as decided by the bridge, which
// knows which session is current. It is served from memory at once; the
// last_seen it carries reaches the store with the next Flush (Run's
// interval, or Close), batched with every other device's.
func (r *Registry) SetPresence(id string, p Presence) {
	d, ok := r.snap.Load().devices[id]
	if !ok {
		return
	}
	if p.LastSeen != nil {
		d.live.lastSeen.Store(nanos(*p.LastSeen))
	}
	p.LastSeen = nil
	d.live.presence.Store(&p)
}

// Touch records that a device was heard from at at: one atomic store, no
// lock, no I/O. Flush persists it.
func (r *Registry) Touch(id string, at time.Time) {
	if d, ok := r.snap.Load().devices[id]; ok {
		d.live.lastSeen.Store(nanos(at))
	}
}

// Tags returns the InfluxDB tags for device id from its allow-listed
// labels, in TagLabels order. The slice is shared by every caller (built
// once per published record): callers must not modify it.
func (r *Registry) Tags(id string) []telemetry.Tag {
	if len(r.opts.TagLabels) == 0 {
		return nil
	}
	d, ok := r.snap.Load().devices[id]
	if !ok {
		return nil
	}
	if t := d.tags.Load(); t != nil {
		return *t
	}
	var tags []telemetry.Tag
	for _, k := range r.opts.TagLabels {
		if v, ok := d.rec.Labels[k]; ok {
			tags = append(tags, telemetry.Tag{Key: k, Value: v})
		}
	}
	d.tags.Store(&tags) // a racing caller builds the same slice
	return tags
}

// Counts returns how many devices are registered and online.
func (r *Registry) Counts() (total, online int) {
	snap := r.snap.Load()
	for _, d := range snap.devices {
		if d.online() {
			online++
		}
	}
	return len(snap.devices), online
}
