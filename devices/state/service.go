package state

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Store persists both documents of every device. SaveDoc is a
// compare-and-set on the version: it writes doc only if the stored
// version of that side is prev (0: none stored yet) and returns
// ErrConflict otherwise, so concurrent writers, on one instance or
// several, resolve by version and never by last-write-wins.
// DesiredVersions answers the stored desired version of each listed
// device that has one, for instances learning of each other's changes.
type Store interface {
	LoadState(ctx context.Context, device string) (reported, desired Doc, err error)
	SaveDoc(ctx context.Context, device string, side Side, doc Doc, prev int64) error
	DesiredVersions(ctx context.Context, devices []string) (map[string]int64, error)
}

// Errors of the service; callers branch with errors.Is.
var (
	// ErrConflict: the document's version is not the one the writer
	// expected (HTTP 412).
	ErrConflict = errors.New("state: version conflict")
	// ErrUnknownDevice: no such device (HTTP 404).
	ErrUnknownDevice = errors.New("state: unknown device")
)

// Devices is what the service asks the registry.
type Devices interface {
	Exists(id string) bool
}

// Fanout receives the live "state" events. Publish must not block.
type Fanout interface {
	Publish(ev telemetry.Event)
}

// View is a device's state as GET /api/v1/devices/{id}/state answers it.
type View struct {
	Reported Doc    `json:"reported"`
	Desired  Doc    `json:"desired"`
	Delta    Object `json:"delta"`
}

// Update is what a device is sent of its desired state: on connect, on
// subscribe, and on every change.
type Update struct {
	Desired Object `json:"desired"`
	Delta   Object `json:"delta"`
	Version int64  `json:"version"`
}

// UpdateOf returns the device-side form of v.
func UpdateOf(v View) Update {
	return Update{Desired: v.Desired.norm().State, Delta: v.Delta, Version: v.Desired.Version}
}

// Encode returns the JSON of u; with withType the WebSocket frame
// {"type":"state",...}.
func (u Update) Encode(withType bool) []byte {
	type frame struct {
		Type string `json:"type,omitzero"`
		Update
	}
	f := frame{Update: u}
	if withType {
		f.Type = TypeState
	}
	if f.Desired == nil {
		f.Desired = Object{}
	}
	if f.Delta == nil {
		f.Delta = Object{}
	}
	b, err := json.Marshal(f, json.Deterministic(true))
	if err != nil { // the documents were checked when written
		return []byte(`{"type":"error","code":"internal","message":"encode state"}`)
	}
	return b
}

// TypeState is the "type" of state frames on the device socket.
const TypeState = "state"

// Encode returns the JSON of v.
func (v View) Encode() []byte {
	v.Reported, v.Desired = v.Reported.norm(), v.Desired.norm()
	if v.Delta == nil {
		v.Delta = Object{}
	}
	b, err := json.Marshal(v, json.Deterministic(true))
	if err != nil {
		return []byte(`{"error":{"code":"internal","message":"encode state"}}`)
	}
	return b
}

func viewOf(reported, desired Doc) View {
	reported, desired = reported.norm(), desired.norm()
	return View{Reported: reported, Desired: desired, Delta: Delta(desired.State, reported.State)}
}

// Options configure a Service. Zero values take the documented defaults.
type Options struct {
	Store   Store   // required
	Devices Devices // required
	Fanout  Fanout  // optional: live "state" events
	Limits  Limits
	// PollInterval is how often the service asks the store for the
	// desired versions of the devices watched here, to learn of changes
	// another instance made; 0 (one instance) never asks.
	PollInterval time.Duration
	// OnDesired is told of every desired update this instance made or
	// learned of (the cluster publishes it retained); it must not block.
	OnDesired func(device string, u Update)
	// StoreTimeout bounds one store call; default 5 s.
	StoreTimeout time.Duration
	Logger       *slog.Logger
	Now          func() time.Time
}

// Service is the one way state is read and written. Watchers of a
// device's desired state (device sockets, MQTT subscriptions, HTTP long
// polls) are told of each change through a callback that must not block.
type Service struct {
	opts Options
	log  *slog.Logger

	mu       sync.Mutex // guards watchers, known and nextID; held for map access only, never for I/O
	watchers map[string]map[uint64]func(*Update)
	known    map[string]int64 // last desired version told to the watchers of each watched device
	nextID   uint64
}

// New returns a Service.
func New(opts Options) (*Service, error) {
	if opts.Store == nil || opts.Devices == nil {
		return nil, errors.New("state: Store and Devices are required")
	}
	opts.Limits.ensureDefaults()
	if opts.StoreTimeout <= 0 {
		opts.StoreTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Service{opts: opts, log: opts.Logger, watchers: map[string]map[uint64]func(*Update){}, known: map[string]int64{}}, nil
}

// Limits returns the document bounds in force.
func (s *Service) Limits() Limits { return s.opts.Limits }

// Get returns a device's state.
func (s *Service) Get(ctx context.Context, device string) (View, error) {
	if !s.opts.Devices.Exists(device) {
		return View{}, fmt.Errorf("device %q: %w", device, ErrUnknownDevice)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.StoreTimeout)
	defer cancel()
	rep, des, err := s.opts.Store.LoadState(ctx, device)
	if err != nil {
		return View{}, fmt.Errorf("load state of %q: %w", device, err)
	}
	return viewOf(rep, des), nil
}

// PatchDesired merges patch into the device's desired document if its
// version is ifMatch (ErrConflict otherwise), for operator by. A patch
// that changes nothing keeps the version. The change is logged (the audit
// line), published live and told to the device's watchers.
func (s *Service) PatchDesired(ctx context.Context, device string, ifMatch int64, patch []byte, by string) (View, error) {
	p, err := DecodePatch(patch, Desired, s.opts.Limits)
	if err != nil {
		return View{}, err
	}
	v, err := s.Get(ctx, device)
	if err != nil {
		return View{}, err
	}
	if v.Desired.Version != ifMatch {
		return v, fmt.Errorf("desired state of %q is at version %d, not %d: %w", device, v.Desired.Version, ifMatch, ErrConflict)
	}
	next, changed, err := Apply(v.Desired, p, Desired, s.opts.Limits, s.opts.Now())
	if err != nil || !changed {
		return v, err
	}
	if err := s.save(ctx, device, Desired, next, ifMatch); err != nil {
		return v, err
	}
	v = viewOf(v.Reported, next)
	s.log.Info("device state desired changed", "device", device, "version", next.Version, "by", by)
	s.changed(device, v, true)
	return v, nil
}

// maxReportRetries bounds the compare-and-set retries of one reported
// patch: the device is the only writer, so a conflict means one of its
// own patches (on another instance) won the race.
const maxReportRetries = 5

// PatchReported merges a device's patch into its reported document and
// returns the new state. A refusal is a *telemetry.Error and changes
// nothing.
func (s *Service) PatchReported(ctx context.Context, device string, patch []byte) (View, error) {
	p, err := DecodePatch(patch, Reported, s.opts.Limits)
	if err != nil {
		return View{}, err
	}
	for range maxReportRetries {
		v, err := s.Get(ctx, device)
		if err != nil {
			return View{}, err
		}
		next, changed, err := Apply(v.Reported, p, Reported, s.opts.Limits, s.opts.Now())
		if err != nil || !changed {
			return v, err
		}
		err = s.save(ctx, device, Reported, next, v.Reported.Version)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return v, err
		}
		v = viewOf(next, v.Desired)
		s.changed(device, v, false)
		return v, nil
	}
	return View{}, fmt.Errorf("reported state of %q: %d conflicting writers: %w", device, maxReportRetries, ErrConflict)
}

// ReportState is PatchReported answering only the new reported version:
// the device pipeline's (bridge.State) form.
func (s *Service) ReportState(ctx context.Context, device string, patch []byte) (int64, error) {
	v, err := s.PatchReported(ctx, device, patch)
	if err != nil {
		return 0, err
	}
	return v.Reported.Version, nil
}

// Subscribe is Watch plus the device's current desired update, read
// after the watch is in place so no change between the two is missed
// (a change may then arrive twice; the version tells). cancel must be
// called once the subscriber is gone, even after an error.
func (s *Service) Subscribe(ctx context.Context, device string, fn func(*Update)) (Update, func(), error) {
	cancel := s.Watch(device, fn)
	v, err := s.Get(ctx, device)
	if err != nil {
		return Update{}, cancel, err
	}
	s.Seen(device, v.Desired.Version)
	return UpdateOf(v), cancel, nil
}

func (s *Service) save(ctx context.Context, device string, side Side, d Doc, prev int64) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.StoreTimeout)
	defer cancel()
	if err := s.opts.Store.SaveDoc(ctx, device, side, d, prev); err != nil {
		return fmt.Errorf("save %s state of %q: %w", side, device, err)
	}
	return nil
}

// changed publishes the live event of v and, for a desired change (or
// a reported one, whose delta may differ), tells the watchers.
func (s *Service) changed(device string, v View, desired bool) {
	if s.opts.Fanout != nil {
		s.opts.Fanout.Publish(telemetry.Event{Type: telemetry.EventState, Device: device, State: jsontext.Value(v.Encode())})
	}
	u := UpdateOf(v)
	if s.opts.OnDesired != nil {
		s.opts.OnDesired(device, u)
	}
	if desired {
		s.notify(device, &u)
	}
}

// notify calls every watcher of device with u (nil: re-check your
// credentials) and records its version as known.
func (s *Service) notify(device string, u *Update) {
	s.mu.Lock()
	fns := slices.Collect(maps.Values(s.watchers[device]))
	if u != nil && len(fns) > 0 {
		s.known[device] = max(s.known[device], u.Version)
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn(u)
	}
}

// Watch calls fn with every desired update of device from now on, and
// with nil when the device's credentials changed (a long poll re-checks
// its token), until the returned cancel is called. fn must not block:
// it hands the update to its owner (coalescing, the latest wins).
func (s *Service) Watch(device string, fn func(*Update)) (cancel func()) {
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	ws := s.watchers[device]
	if ws == nil {
		ws = map[uint64]func(*Update){}
		s.watchers[device] = ws
	}
	ws[id] = fn
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.watchers[device], id)
		if len(s.watchers[device]) == 0 {
			delete(s.watchers, device)
			delete(s.known, device)
		}
	}
}

// Seen records that the watchers of device were given version (their
// first update, read at connect), so the poll does not resend it.
func (s *Service) Seen(device string, version int64) {
	s.mu.Lock()
	if _, ok := s.watchers[device]; ok {
		s.known[device] = max(s.known[device], version)
	}
	s.mu.Unlock()
}

// CredentialsChanged wakes the device's watchers with nil: its long
// polls re-check their token and end at once if it was revoked.
func (s *Service) CredentialsChanged(device string) { s.notify(device, nil) }

// WaitDesired is the long poll: the device's desired update at once if
// its version is not version (or version < 0), else the next change
// within wait; ok false when none came. It ends early, with ok false,
// when stop closes, and with ErrRevoked-like err when valid() turns
// false (the caller's credential ended).
func (s *Service) WaitDesired(ctx context.Context, device string, version int64, wait time.Duration, stop <-chan struct{}, valid func() bool) (u Update, ok bool, err error) {
	wake := make(chan struct{}, 1) // coalescing: one pending wake is enough, the state is read again
	cancel := s.Watch(device, func(*Update) {
		select {
		case wake <- struct{}{}:
		default: // a wake is pending already
		}
	})
	defer cancel()
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		if !valid() {
			return Update{}, false, ErrRevoked
		}
		v, err := s.Get(ctx, device)
		if err != nil {
			return Update{}, false, err
		}
		if version < 0 || v.Desired.Version != version {
			return UpdateOf(v), true, nil
		}
		select {
		case <-wake:
		case <-t.C:
			return Update{}, false, nil
		case <-stop:
			return Update{}, false, nil
		case <-ctx.Done():
			return Update{}, false, ctx.Err()
		}
	}
}

// Forgetter is a Store that can delete a device's documents (both
// stores are).
type Forgetter interface {
	Forget(ctx context.Context, device string) error
}

// Forget deletes the documents of a device that no longer exists, so a
// device created later under the same id starts at version 0 and never
// sees another's desired state. A device that exists is left alone.
func (s *Service) Forget(ctx context.Context, device string) error {
	f, ok := s.opts.Store.(Forgetter)
	if !ok || s.opts.Devices.Exists(device) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.StoreTimeout)
	defer cancel()
	if err := f.Forget(ctx, device); err != nil {
		return fmt.Errorf("forget state of %q: %w", device, err)
	}
	return nil
}

// ErrRevoked: the credential of a long poll ended while it waited.
var ErrRevoked = errors.New("state: credentials revoked")

// maxPollBatch bounds the devices named in one DesiredVersions call.
const maxPollBatch = 1000

// Run learns of desired changes other instances made, every
// PollInterval, for the devices watched here, until ctx ends. With no
// PollInterval it only waits for ctx.
func (s *Service) Run(ctx context.Context) error {
	if s.opts.PollInterval <= 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(s.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		s.mu.Lock()
		ids := slices.Sorted(maps.Keys(s.watchers))
		s.mu.Unlock()
		for len(ids) > 0 {
			n := min(len(ids), maxPollBatch)
			s.poll(ctx, ids[:n])
			ids = ids[n:]
		}
	}
}

func (s *Service) poll(ctx context.Context, ids []string) {
	pctx, cancel := context.WithTimeout(ctx, s.opts.StoreTimeout)
	vers, err := s.opts.Store.DesiredVersions(pctx, ids)
	cancel()
	if err != nil {
		s.log.Warn("state poll failed", "devices", len(ids), "err", err)
		return
	}
	for _, id := range ids {
		s.mu.Lock()
		known, watched := s.known[id]
		_, any := s.watchers[id]
		s.mu.Unlock()
		if !any || (watched && vers[id] <= known) || (!watched && vers[id] == 0) {
			continue
		}
		v, err := s.Get(ctx, id)
		if err != nil {
			s.log.Warn("state poll failed", "device", id, "err", err)
			continue
		}
		u := UpdateOf(v)
		s.notify(id, &u)
	}
}
