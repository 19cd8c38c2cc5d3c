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
	"strings"
	"sync"
	"time"

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

type entry struct {
	rec      Record
	presence Presence
}

// Options configures a Registry.
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
	Now       func() time.Time
}

// Changed says what one registry operation changed.
type Changed struct {
	Devices   []DeviceChange
	Operators bool // operator tokens were created or revoked
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
// tokens. It is safe for concurrent use. mu guards every map; store writes
// happen under mu so memory and disk change in the same order.
type Registry struct {
	store Store
	opts  Options
	log   *slog.Logger

	mu        sync.RWMutex
	devices   map[string]*entry
	byHash    map[TokenHash]string // device token hash -> device id
	operators map[string]*OperatorToken
	opByHash  map[TokenHash]string // operator token hash -> token id
	bootstrap *TokenHash           // FIELDHUB_ADMIN_TOKEN, never stored
	// sessions are the dashboard sign-ins by hash of their id (sessions.go).
	sessions   map[TokenHash]*session
	sessionSeq uint64 // sign-ins on this instance, ordering sessions created in the same millisecond; guarded by mu
	// timers re-check a device's sessions when a grace period ends: one
	// per device and expiry instant, so each superseded token keeps exactly
	// the grace it was given.
	timers map[string]map[int64]*time.Timer
	closed bool
	// gen counts this registry's credential writes, so a Refresh can tell
	// that its snapshot may predate one of them.
	gen uint64
}

// applyLocked writes a credential change to the store. Callers hold mu.
func (r *Registry) applyLocked(ctx context.Context, c Change) error {
	r.gen++
	return r.store.Apply(ctx, c)
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
	snap, err := store.Load(ctx)
	if err != nil {
		return nil, err
	}
	r := &Registry{
		store: store, opts: opts, log: opts.Logger,
		devices: map[string]*entry{}, byHash: map[TokenHash]string{},
		operators: map[string]*OperatorToken{}, opByHash: map[TokenHash]string{},
		timers:   map[string]map[int64]*time.Timer{},
		sessions: map[TokenHash]*session{},
	}
	now := opts.Now()
	for _, rec := range snap.Devices {
		e := &entry{rec: rec}
		if !rec.LastSeen.IsZero() {
			ls := rec.LastSeen
			e.presence.LastSeen = &ls
		}
		r.devices[rec.ID] = e
		for _, t := range rec.Tokens {
			r.byHash[t.Hash] = rec.ID
			r.scheduleExpiry(rec.ID, t.ExpiresAt, now)
		}
	}
	for _, o := range snap.Operators {
		o := o
		r.operators[o.ID] = &o
		r.opByHash[o.Hash] = o.ID
	}
	r.loadSessions(ctx, snap.Sessions, now)
	return r, nil
}

// Close stops grace-period timers. The store is closed by its owner.
func (r *Registry) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for id, ts := range r.timers {
		for _, t := range ts {
			t.Stop()
		}
		delete(r.timers, id)
	}
	for _, s := range r.sessions {
		s.timer.Stop()
	}
}

// Ping reports whether the registry's store is usable, for readiness.
func (r *Registry) Ping(ctx context.Context) error {
	return r.store.Apply(ctx, Change{})
}

func validateSpec(s Spec) error {
	switch {
	case !ValidID(s.ID):
		return fmt.Errorf("%w: id %q must match %s", ErrInvalid, truncate(s.ID, 80), IDPattern)
	case len(s.Name) > MaxNameLen:
		return fmt.Errorf("%w: name must be at most %d bytes", ErrInvalid, MaxNameLen)
	case len(s.Labels) > MaxLabels:
		return fmt.Errorf("%w: at most %d labels", ErrInvalid, MaxLabels)
	}
	for k, v := range s.Labels {
		if !telemetry.ValidName(k) {
			return fmt.Errorf("%w: label key %q must match %s", ErrInvalid, truncate(k, 80), telemetry.NamePattern)
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
	r.mu.Lock()
	for _, rec := range recs {
		if _, ok := r.devices[rec.ID]; ok {
			r.mu.Unlock()
			return nil, fmt.Errorf("device %q: %w", rec.ID, ErrExists)
		}
	}
	if err := r.applyLocked(ctx, Change{PutDevices: recs}); err != nil {
		r.mu.Unlock()
		return nil, err
	}
	out := make([]Created, len(recs))
	for i, rec := range recs {
		e := &entry{rec: rec}
		r.devices[rec.ID] = e
		r.byHash[rec.Tokens[0].Hash] = rec.ID
		out[i] = Created{Device: e.view(), Token: tokens[i]}
	}
	r.mu.Unlock()
	r.notify(func() Changed {
		ch := Changed{Devices: make([]DeviceChange, len(recs))}
		for i, rec := range recs {
			ch.Devices[i] = DeviceChange{ID: rec.ID, Token: tokens[i]}
		}
		return ch
	})
	return out, nil
}

// notify calls OnChange, if set, with the change mk builds; mk runs only
// when someone listens. Callers do not hold mu.
func (r *Registry) notify(mk func() Changed) {
	if r.opts.OnChange != nil {
		r.opts.OnChange(mk())
	}
}

func (e *entry) view() Device {
	return Device{ID: e.rec.ID, Name: e.rec.Name, Labels: maps.Clone(e.rec.Labels), CreatedAt: e.rec.CreatedAt, Presence: e.presence}
}

// Get returns the device with id.
func (r *Registry) Get(id string) (Device, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.devices[id]
	if !ok {
		return Device{}, fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	return e.view(), nil
}

// Exists reports whether a device is registered.
func (r *Registry) Exists(id string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.devices[id]
	return ok
}

// Filter selects devices for List.
type Filter struct {
	Labels map[string]string // every label must match
	Online *bool
	Search string // substring of id or name, case-insensitive
	After  string // cursor: the last id of the previous page
	Limit  int    // default 100, at most MaxListPageSize
}

// List returns devices in id order matching f, and the cursor of the next
// page ("" on the last page), and the total number matching.
func (r *Registry) List(f Filter) (devs []Device, next string, total int) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, MaxListPageSize)
	search := strings.ToLower(f.Search)
	r.mu.RLock()
	matched := make([]*entry, 0, len(r.devices))
	for _, e := range r.devices {
		if f.Online != nil && e.presence.Online != *f.Online {
			continue
		}
		if search != "" && !strings.Contains(strings.ToLower(e.rec.ID), search) && !strings.Contains(strings.ToLower(e.rec.Name), search) {
			continue
		}
		ok := true
		for k, v := range f.Labels {
			if e.rec.Labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			matched = append(matched, e)
		}
	}
	slices.SortFunc(matched, func(a, b *entry) int { return cmp.Compare(a.rec.ID, b.rec.ID) })
	total = len(matched)
	start, _ := slices.BinarySearchFunc(matched, f.After, func(e *entry, id string) int {
		if id == "" {
			return 1
		}
		return cmp.Compare(e.rec.ID, id)
	})
	if f.After != "" && start < len(matched) && matched[start].rec.ID == f.After {
		start++
	}
	end := min(start+f.Limit, len(matched))
	devs = make([]Device, 0, end-start)
	for _, e := range matched[start:end] {
		devs = append(devs, e.view())
	}
	r.mu.RUnlock()
	if end < len(matched) {
		next = matched[end-1].rec.ID
	}
	return devs, next, total
}

// Rotate issues a new token for device id. With grace 0 the old tokens stop
// working at once; otherwise they keep working until the grace period ends.
func (r *Registry) Rotate(ctx context.Context, id string, grace time.Duration) (string, error) {
	if grace < 0 || grace > 30*24*time.Hour {
		return "", fmt.Errorf("%w: grace must be between 0 and 720h", ErrInvalid)
	}
	token := newToken(DeviceTokenPrefix)
	now := r.opts.Now()
	r.mu.Lock()
	e, ok := r.devices[id]
	if !ok {
		r.mu.Unlock()
		return "", fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	rec := e.rec
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
	if err := r.applyLocked(ctx, Change{PutDevices: []Record{rec}}); err != nil {
		r.mu.Unlock()
		return "", err
	}
	for _, t := range e.rec.Tokens {
		delete(r.byHash, t.Hash)
	}
	for _, t := range rec.Tokens {
		r.byHash[t.Hash] = id
	}
	e.rec = rec
	for _, t := range rec.Tokens {
		r.scheduleExpiry(id, t.ExpiresAt, now)
	}
	r.mu.Unlock()
	if grace == 0 {
		r.changed(id)
	}
	r.notify(func() Changed { return Changed{Devices: []DeviceChange{{ID: id, Token: token, Grace: grace}}} })
	return token, nil
}

// scheduleExpiry re-checks a device's sessions when a token expiring at
// at stops working. Every expiry instant gets its own timer: a later
// rotation never moves an earlier token's end. A zero or past instant
// schedules nothing. Callers hold mu.
func (r *Registry) scheduleExpiry(id string, at, now time.Time) {
	if r.closed || at.IsZero() || !at.After(now) {
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
		r.mu.Lock()
		if cur := r.timers[id]; cur != nil {
			delete(cur, key)
			if len(cur) == 0 {
				delete(r.timers, id)
			}
		}
		r.mu.Unlock()
		r.changed(id)
	})
}

func (r *Registry) changed(id string) {
	if r.opts.OnCredentialsChanged != nil {
		r.opts.OnCredentialsChanged(id)
	}
}

// Delete removes device id; its tokens stop working and its sessions are
// closed through OnCredentialsChanged.
func (r *Registry) Delete(ctx context.Context, id string) error {
	r.mu.Lock()
	e, ok := r.devices[id]
	if !ok {
		r.mu.Unlock()
		return fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	if err := r.applyLocked(ctx, Change{DeleteDevices: []string{id}}); err != nil {
		r.mu.Unlock()
		return err
	}
	r.forgetLocked(id, e)
	r.mu.Unlock()
	r.changed(id)
	r.notify(func() Changed { return Changed{Devices: []DeviceChange{{ID: id, Deleted: true}}} })
	return nil
}

// forgetLocked drops a deleted device from memory: its token hashes and
// its grace-period timer. Callers hold mu.
func (r *Registry) forgetLocked(id string, e *entry) {
	for _, t := range e.rec.Tokens {
		delete(r.byHash, t.Hash)
	}
	delete(r.devices, id)
	for _, t := range r.timers[id] {
		t.Stop()
	}
	delete(r.timers, id)
}

// Authenticate returns the device a token belongs to: one hash lookup,
// then a constant-time comparison and the grace-period check.
func (r *Registry) Authenticate(token string) (id string, h TokenHash, ok bool) {
	if !LooksLikeToken(token, DeviceTokenPrefix) {
		return "", TokenHash{}, false
	}
	h = HashToken(token)
	r.mu.RLock()
	defer r.mu.RUnlock()
	id, ok = r.byHash[h]
	if !ok || !r.validLocked(id, h) {
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
	r.mu.RLock()
	defer r.mu.RUnlock()
	return h, r.validLocked(id, h)
}

// StillValid reports whether a session authenticated with h may go on.
func (r *Registry) StillValid(id string, h TokenHash) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.validLocked(id, h)
}

func (r *Registry) validLocked(id string, h TokenHash) bool {
	e, ok := r.devices[id]
	if !ok {
		return false
	}
	now := r.opts.Now()
	valid := false
	for _, t := range e.rec.Tokens {
		// Compare every token so timing does not say which one matched.
		if t.Hash.Equal(h) && (t.ExpiresAt.IsZero() || now.Before(t.ExpiresAt)) {
			valid = true
		}
	}
	return valid
}

// SetPresence records a device's presence as decided by the bridge, which
// knows which session is current. Going offline persists last_seen.
func (r *Registry) SetPresence(id string, p Presence) {
	r.mu.Lock()
	e, ok := r.devices[id]
	if !ok {
		r.mu.Unlock()
		return
	}
	if p.LastSeen == nil {
		p.LastSeen = e.presence.LastSeen
	}
	e.presence = p
	var rec Record
	persist := !p.Online && p.LastSeen != nil
	if persist {
		e.rec.LastSeen = *p.LastSeen
		rec = e.rec
	}
	r.mu.Unlock()
	if persist {
		// Best effort and outside the lock: last_seen is informative.
		if err := r.store.Apply(context.Background(), Change{PutDevices: []Record{rec}}); err != nil {
			r.log.Warn("persist last_seen", "device", id, "err", err)
		}
	}
}

// Touch records that a device was heard from now.
func (r *Registry) Touch(id string, at time.Time) {
	r.mu.Lock()
	if e, ok := r.devices[id]; ok {
		e.presence.LastSeen = &at
	}
	r.mu.Unlock()
}

// Tags returns the InfluxDB tags for device id from its allow-listed labels.
func (r *Registry) Tags(id string) []telemetry.Tag {
	if len(r.opts.TagLabels) == 0 {
		return nil
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.devices[id]
	if !ok {
		return nil
	}
	var tags []telemetry.Tag
	for _, k := range r.opts.TagLabels {
		if v, ok := e.rec.Labels[k]; ok {
			tags = append(tags, telemetry.Tag{Key: k, Value: v})
		}
	}
	return tags
}

// Counts returns how many devices are registered and online.
func (r *Registry) Counts() (total, online int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, e := range r.devices {
		if e.presence.Online {
			online++
		}
	}
	return len(r.devices), online
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
