package commands

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Store persists commands: boltstore for one instance, pgstore for
// several sharing a database. Put never changes a command that is final
// in the store: the first final status wins. Implementations are safe for
// concurrent use.
type Store interface {
	PutCommand(ctx context.Context, c Record) error
	GetCommand(ctx context.Context, device, id string) (Record, error)
	ListCommands(ctx context.Context, device, before string, limit int) ([]Record, error)
	ActiveCommands(ctx context.Context) ([]Record, error)
}

// Devices is what the service asks the registry. It must not call the
// service back while it holds a lock the service's methods take.
type Devices interface {
	Exists(id string) bool
	StillValid(id string, h devices.TokenHash) bool
}

// Fanout receives command events for dashboards. Publish must not block.
type Fanout interface {
	Publish(ev telemetry.Event)
}

// Limits and defaults of commands.
const (
	MaxQueued         = 100
	MaxParamsBytes    = 8 << 10
	DefaultTTL        = time.Hour
	MaxTTL            = 30 * 24 * time.Hour
	DefaultTimeout    = 30 * time.Second
	MaxTimeout        = 24 * time.Hour
	maxIdempotencyKey = 128
)

// Window bounds the commands written to a session and not yet answered;
// the rest follow as results come in.
const Window = 16

// requestQueue bounds the requests waiting for the owner goroutine.
const requestQueue = 1024

// storeTimeout bounds one store call of the owner goroutine.
const storeTimeout = 10 * time.Second

// tickInterval is the period of the ttl/timeout clock.
const tickInterval = 100 * time.Millisecond

// ErrRevoked means the credential a request was authenticated with no
// longer works: the device's token was rotated without grace, its grace
// ended, or the device was deleted.
var ErrRevoked = errors.New("credentials revoked")

// ErrStopped means the service's Run has returned.
var ErrStopped = errors.New("command service stopped")

// Options configure a Service.
type Options struct {
	Store   Store   // required
	Devices Devices // required
	// Router carries commands to devices without a session here;
	// default LocalRouter (one instance).
	Router Router
	Fanout Fanout // default: none
	Logger *slog.Logger
	Now    func() time.Time
}

// Stats are the service's counters.
type Stats struct {
	// Finished counts commands reaching a final status, by status (the
	// keys are FinalStatuses).
	Finished map[string]*atomic.Int64
	// Dropped counts delivery nudges not queued because the request queue
	// was full (the clock delivers them on its next tick).
	Dropped atomic.Int64
	// NewsOverflows counts the times the set of news from other
	// instances (RemoteConnected, CommandChanged) was full and became one
	// "rescan everything" mark.
	NewsOverflows atomic.Int64
}

// Service is the command service: the persistent per-device queue, the
// status lifecycle, delivery over whatever transport the device is on,
// redelivery after reconnects and restarts (at least once; devices
// de-duplicate by command id), and the ttl/timeout clock.
//
// Statuses never claim more than the hub knows: "sent" means written to
// the device's session; only the device's result makes a command
// succeeded or failed.
//
// Run must be running for any method but GetCommand, ListCommands and the
// session hooks to return.
type Service struct {
	opts  Options
	log   *slog.Logger
	stats Stats
	seq   atomic.Uint32

	reqs chan func() // bounded by requestQueue; see do and nudge
	done chan struct{}

	newsMu sync.Mutex    // guards news only; held for map access, nothing else
	news   news          // from other instances, for the owner (remote.go)
	wake   chan struct{} // capacity 1: news is waiting

	smu      sync.Mutex // guards sessions only; held for map access, nothing else
	sessions map[string]session

	// Owned by the Run goroutine: touched only by functions it runs.
	active  map[string][]*activeCmd // by device, in creation order
	waiters map[string][]chan struct{}
	pollers map[string][]chan struct{} // HTTP long polls by device
	idem    map[string]string          // device\x00key -> command id, for active commands
}

// session is a device's current session on this instance.
type session struct {
	id      uint64
	deliver func(telemetry.Command) bool
}

type activeCmd struct {
	rec         Record
	deliveredTo uint64 // the target it was last written to; 0: none
}

// New loads the commands that were queued or sent when the hub stopped
// (sent ones are delivered again when their device connects) and returns
// the service; start it with Run.
func New(ctx context.Context, opts Options) (*Service, error) {
	if opts.Store == nil || opts.Devices == nil {
		return nil, errors.New("commands: Store and Devices are required")
	}
	if opts.Router == nil {
		opts.Router = LocalRouter()
	}
	if opts.Fanout == nil {
		opts.Fanout = noFanout{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Service{opts: opts, log: opts.Logger, reqs: make(chan func(), requestQueue), done: make(chan struct{}),
		sessions: map[string]session{}, active: map[string][]*activeCmd{}, waiters: map[string][]chan struct{}{},
		pollers: map[string][]chan struct{}{}, idem: map[string]string{}, news: emptyNews(), wake: make(chan struct{}, 1)}
	s.stats.Finished = map[string]*atomic.Int64{}
	for _, st := range FinalStatuses {
		s.stats.Finished[st] = new(atomic.Int64)
	}
	recs, err := opts.Store.ActiveCommands(ctx)
	if err != nil {
		return nil, fmt.Errorf("commands: %w", err)
	}
	for _, r := range recs {
		s.active[r.Device] = append(s.active[r.Device], &activeCmd{rec: r})
		if r.IdempotencyKey != "" {
			s.idem[idemKey(r.Device, r.IdempotencyKey)] = r.ID
		}
	}
	for _, list := range s.active {
		sortByID(list)
	}
	return s, nil
}

type noFanout struct{}

func (noFanout) Publish(telemetry.Event) {}

func idemKey(device, key string) string { return device + "\x00" + key }

func sortByID(list []*activeCmd) {
	for i := 1; i < len(list); i++ { // ids sort by creation time; lists are short
		for j := i; j > 0 && list[j].rec.ID < list[j-1].rec.ID; j-- {
			list[j], list[j-1] = list[j-1], list[j]
		}
	}
}

// Stats returns the service's counters.
func (s *Service) Stats() *Stats { return &s.stats }

// Run is the owner goroutine: it serves requests and drives the command
// clock (ttl and timeouts) until ctx ends. The caller owns it and waits
// for it to return.
func (s *Service) Run(ctx context.Context) error {
	defer close(s.done)
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case f := <-s.reqs:
			f()
		case <-s.wake:
			s.drainNews()
		case <-t.C:
			s.tick(s.opts.Now().UTC())
		}
	}
}

// States of a request sent by do.
const (
	reqQueued    int32 = iota // waiting for the owner goroutine
	reqRunning                // the owner goroutine runs it
	reqAbandoned              // the caller left first: it will not run
)

// do runs f on the owner goroutine and waits for it. While the request
// queue is full the caller waits (back pressure), until ctx ends. When
// ctx ends while f is still queued, do returns ctx.Err() at once and f
// never runs (the owner skips it), so f may write to the caller's
// variables and register waiters without anything leaking. When f has
// started already, do waits for it to finish and returns nil: f's store
// calls are bounded by storeTimeout (and those made with ctx end with it).
func (s *Service) do(ctx context.Context, f func()) error {
	ran := make(chan struct{})
	var state atomic.Int32 // reqQueued, reqRunning or reqAbandoned
	req := func() {
		if !state.CompareAndSwap(reqQueued, reqRunning) {
			return // the caller has gone
		}
		f()
		close(ran)
	}
	select {
	case s.reqs <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return ErrStopped
	}
	select {
	case <-ran:
		return nil
	case <-ctx.Done():
		if state.CompareAndSwap(reqQueued, reqAbandoned) {
			return ctx.Err()
		}
		select { // f is running
		case <-ran:
			return nil
		case <-s.done:
			return ErrStopped
		}
	case <-s.done:
		return ErrStopped
	}
}

// enqueue queues f for the owner goroutine and returns without waiting
// for it to run. While the request queue is full the caller waits (back
// pressure), until Run has returned.
func (s *Service) enqueue(f func()) {
	select {
	case s.reqs <- f:
	case <-s.done:
	}
}

// nudge queues f for the owner goroutine without waiting. When the queue
// is full f is dropped and counted: nudges are deliveries, which the
// clock retries on its next tick (pendingDelivery).
func (s *Service) nudge(f func()) {
	select {
	case s.reqs <- f:
	default:
		s.stats.Dropped.Add(1)
	}
}

// storeCtx bounds a store call of the owner goroutine made on its own
// behalf (a status change must be persisted whoever asked for it).
func (s *Service) storeCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), storeTimeout)
}

// callerStoreCtx bounds a store call of the owner goroutine made for a
// caller: it ends with the caller's ctx, and after storeTimeout at the
// latest, so a hung store (or a caller without a deadline) cannot hold
// the owner longer than that.
func callerStoreCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, storeTimeout)
}

// newID returns an id that sorts in creation order: the millisecond, then
// a per-process sequence for commands created in the same millisecond,
// then randomness so ids from several hub instances do not collide.
func (s *Service) newID(now time.Time) string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("cmd-%013x%06x%s", now.UnixMilli(), s.seq.Add(1)&0xffffff, hex.EncodeToString(r[:]))
}

// validate checks spec and fills in its defaults.
func validate(spec *Spec) error {
	switch {
	case !telemetry.ValidName(spec.Name):
		return fmt.Errorf("%w: name must match %s", devices.ErrInvalid, telemetry.NamePattern)
	case len(spec.Params) > MaxParamsBytes:
		return fmt.Errorf("%w: params must be at most %d bytes", devices.ErrInvalid, MaxParamsBytes)
	case spec.TTL < 0 || spec.TTL > MaxTTL:
		return fmt.Errorf("%w: ttl must be between 1s and %s", devices.ErrInvalid, MaxTTL)
	case spec.Timeout < 0 || spec.Timeout > MaxTimeout:
		return fmt.Errorf("%w: timeout must be between 1s and %s", devices.ErrInvalid, MaxTimeout)
	case len(spec.IdempotencyKey) > maxIdempotencyKey:
		return fmt.Errorf("%w: Idempotency-Key must be at most %d bytes", devices.ErrInvalid, maxIdempotencyKey)
	}
	if len(spec.Params) == 0 {
		spec.Params = json.RawMessage(`{}`)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(spec.Params, &obj); err != nil || obj == nil {
		return fmt.Errorf("%w: params must be a JSON object", devices.ErrInvalid)
	}
	if spec.TTL == 0 {
		spec.TTL = DefaultTTL
	}
	if spec.Timeout == 0 {
		spec.Timeout = DefaultTimeout
	}
	return nil
}

// SendCommand queues a command and delivers it at once if the device is
// reachable. With an idempotency key already used for the device, it
// returns the earlier command and replayed = true.
func (s *Service) SendCommand(ctx context.Context, spec Spec) (rec Record, replayed bool, err error) {
	if err := validate(&spec); err != nil {
		return rec, false, err
	}
	if !s.opts.Devices.Exists(spec.Device) {
		return rec, false, fmt.Errorf("device %q: %w", spec.Device, devices.ErrNotFound)
	}
	if spec.IdempotencyKey != "" {
		if prev, ok, err := s.byIdempotencyKey(ctx, spec.Device, spec.IdempotencyKey); err != nil || ok {
			return prev, ok, err
		}
	}
	now := s.opts.Now().UTC()
	rec = Record{
		ID: s.newID(now), Device: spec.Device, Name: spec.Name, Params: spec.Params,
		Status: Queued, CreatedAt: now, CreatedBy: spec.CreatedBy,
		ExpiresAt: now.Add(spec.TTL), TimeoutMS: spec.Timeout.Milliseconds(), IdempotencyKey: spec.IdempotencyKey,
		History: []StatusChange{{Status: Queued, At: now}},
	}
	var prevID string
	derr := s.do(ctx, func() {
		if spec.IdempotencyKey != "" {
			if id, ok := s.idem[idemKey(spec.Device, spec.IdempotencyKey)]; ok {
				prevID = id // a concurrent send with the same key won
				return
			}
		}
		queued := 0
		for _, a := range s.active[spec.Device] {
			if a.rec.Status == Queued {
				queued++
			}
		}
		if queued >= MaxQueued {
			err = fmt.Errorf("device %q has %d queued commands: %w", spec.Device, queued, devices.ErrQueueFull)
			return
		}
		pctx, cancel := callerStoreCtx(ctx)
		err = s.opts.Store.PutCommand(pctx, rec)
		cancel()
		if err != nil {
			return
		}
		s.active[spec.Device] = append(s.active[spec.Device], &activeCmd{rec: rec})
		if spec.IdempotencyKey != "" {
			s.idem[idemKey(spec.Device, spec.IdempotencyKey)] = rec.ID
		}
		s.wakePollers(spec.Device)
		s.publish(rec)
		s.log.Info("command queued", "device", spec.Device, "command", rec.ID, "name", rec.Name, "by", spec.CreatedBy)
		s.deliver(spec.Device)
	})
	if derr != nil {
		return Record{}, false, derr
	}
	if prevID != "" {
		prev, err := s.opts.Store.GetCommand(ctx, spec.Device, prevID)
		return prev, err == nil, err
	}
	if err != nil {
		return Record{}, false, err
	}
	if got, err := s.opts.Store.GetCommand(ctx, spec.Device, rec.ID); err == nil {
		rec = got
	}
	return rec, false, nil
}

func (s *Service) byIdempotencyKey(ctx context.Context, device, key string) (Record, bool, error) {
	var id string
	var ok bool
	if err := s.do(ctx, func() { id, ok = s.idem[idemKey(device, key)] }); err != nil {
		return Record{}, false, err
	}
	if ok {
		rec, err := s.opts.Store.GetCommand(ctx, device, id)
		return rec, err == nil, err
	}
	// Finished commands: search the kept history.
	recs, err := s.opts.Store.ListCommands(ctx, device, "", MaxKept)
	if err != nil {
		return Record{}, false, err
	}
	for _, r := range recs {
		if r.IdempotencyKey == key {
			return r, true, nil
		}
	}
	return Record{}, false, nil
}

func (s *Service) publish(rec Record) {
	s.opts.Fanout.Publish(telemetry.Event{Type: telemetry.EventCommand, Device: rec.Device, ID: rec.ID, Status: rec.Status, At: s.opts.Now().UnixMilli()})
}

// setStatus moves a command to status. Owner goroutine.
func (s *Service) setStatus(a *activeCmd, status string, now time.Time) {
	a.rec.Status = status
	a.rec.History = append(a.rec.History, StatusChange{Status: status, At: now})
	if a.rec.Final() {
		t := now
		a.rec.CompletedAt = &t
		if c := s.stats.Finished[status]; c != nil {
			c.Add(1)
		}
	}
}

// changed persists rec and announces it to dashboards, on the owner
// goroutine, so that the store and the event stream see a command's
// statuses in the order they happened. A store failure is logged: the
// in-memory state goes on and the next change writes it again.
func (s *Service) changed(rec Record, announce bool) {
	ctx, cancel := s.storeCtx()
	defer cancel()
	if err := s.opts.Store.PutCommand(ctx, rec); err != nil {
		s.log.Error("persist command", "device", rec.Device, "command", rec.ID, "err", err)
	}
	if announce {
		s.publish(rec)
	}
}

// CommandResult records a device's answer. An answer to a command that is
// unknown or already final (a duplicate after redelivery) changes nothing.
func (s *Service) CommandResult(device string, r *telemetry.CommandResult) error {
	var err error
	if derr := s.do(context.Background(), func() { err = s.result(device, r) }); derr != nil {
		return derr
	}
	return err
}

// result is CommandResult on the owner goroutine.
func (s *Service) result(device string, r *telemetry.CommandResult) error {
	now := s.opts.Now().UTC()
	status := Succeeded
	if r.Status == telemetry.ResultError {
		status = Failed
	}
	list := s.active[device]
	idx := -1
	for i, a := range list {
		if a.rec.ID == r.ID {
			idx = i
			break
		}
	}
	if idx < 0 {
		return s.opts.Router.unknownResult(s, device, r, status, now)
	}
	a := list[idx]
	a.rec.Result = json.RawMessage(r.Result)
	a.rec.Error = r.Error
	s.setStatus(a, status, now)
	s.changed(a.rec, true)
	s.remove(device, idx)
	s.log.Info("command finished", "device", device, "command", a.rec.ID, "status", a.rec.Status)
	s.deliver(device) // the window has room again
	return nil
}

// finishShared records a result for a command another instance created:
// the shared store says whether it is still open, and the announcement
// reaches its creator through the fan-out, which wakes its waiters
// (CommandChanged). Owner goroutine.
func (s *Service) finishShared(device string, r *telemetry.CommandResult, status string, now time.Time) error {
	ctx, cancel := s.storeCtx()
	defer cancel()
	rec, err := s.opts.Store.GetCommand(ctx, device, r.ID)
	if err != nil {
		return err
	}
	if rec.Final() {
		return nil // a duplicate after redelivery
	}
	rec.Result = json.RawMessage(r.Result)
	rec.Error = r.Error
	a := &activeCmd{rec: rec}
	s.setStatus(a, status, now)
	s.changed(a.rec, true)
	s.log.Info("command finished", "device", device, "command", rec.ID, "status", a.rec.Status)
	return nil
}

// remove drops a final command from the active list and wakes its
// waiters. Owner goroutine.
func (s *Service) remove(device string, idx int) {
	list := s.active[device]
	id := list[idx].rec.ID
	if key := list[idx].rec.IdempotencyKey; key != "" {
		delete(s.idem, idemKey(device, key))
	}
	s.active[device] = append(list[:idx], list[idx+1:]...)
	if len(s.active[device]) == 0 {
		delete(s.active, device)
	}
	for _, ch := range s.waiters[idemKey(device, id)] {
		close(ch)
	}
	delete(s.waiters, idemKey(device, id))
}

// CancelCommand cancels a queued command; a command already sent cannot be
// taken back (ErrConflict).
func (s *Service) CancelCommand(ctx context.Context, device, id string) (Record, error) {
	var (
		rec   Record
		found bool
		err   error
	)
	if derr := s.do(ctx, func() {
		for i, a := range s.active[device] {
			if a.rec.ID != id {
				continue
			}
			found, rec = true, a.rec
			if a.rec.Status != Queued {
				err = fmt.Errorf("command %q is %s, only queued commands can be cancelled: %w", id, a.rec.Status, devices.ErrConflict)
				return
			}
			s.setStatus(a, Cancelled, s.opts.Now().UTC())
			s.changed(a.rec, true)
			s.remove(device, i)
			rec = a.rec
			return
		}
	}); derr != nil {
		return Record{}, derr
	}
	if found {
		return rec, err
	}
	rec, err = s.opts.Store.GetCommand(ctx, device, id)
	if err != nil {
		return rec, err
	}
	return rec, fmt.Errorf("command %q is %s, only queued commands can be cancelled: %w", id, rec.Status, devices.ErrConflict)
}

// GetCommand returns one command.
func (s *Service) GetCommand(ctx context.Context, device, id string) (Record, error) {
	return s.opts.Store.GetCommand(ctx, device, id)
}

// ListCommands returns a device's commands, newest first.
func (s *Service) ListCommands(ctx context.Context, device, before string, limit int) ([]Record, error) {
	return s.opts.Store.ListCommands(ctx, device, before, limit)
}

// WaitCommand waits up to d for a command to reach a final status and
// returns it as it is then.
func (s *Service) WaitCommand(ctx context.Context, device, id string, d time.Duration) (Record, error) {
	key := idemKey(device, id)
	var ch chan struct{}
	if err := s.do(ctx, func() {
		for _, a := range s.active[device] {
			if a.rec.ID == id {
				ch = make(chan struct{})
				s.waiters[key] = append(s.waiters[key], ch)
				return
			}
		}
	}); err != nil {
		return Record{}, err
	}
	if ch != nil {
		t := time.NewTimer(d)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		s.enqueue(func() {
			list := s.waiters[key]
			for i, x := range list {
				if x == ch {
					s.waiters[key] = append(list[:i], list[i+1:]...)
					break
				}
			}
			if len(s.waiters[key]) == 0 {
				delete(s.waiters, key)
			}
		})
	}
	return s.opts.Store.GetCommand(context.WithoutCancel(ctx), device, id)
}

// tick expires queued commands past their ttl and times out sent commands
// past their timeout, then delivers what sessions have room for. Owner
// goroutine.
func (s *Service) tick(now time.Time) {
	for device, list := range s.active {
		for i := 0; i < len(list); i++ {
			a := list[i]
			var status string
			switch {
			case a.rec.Status == Queued && now.After(a.rec.ExpiresAt):
				status = Expired
			case a.rec.Status == Sent && a.rec.SentAt != nil && now.After(a.rec.SentAt.Add(time.Duration(a.rec.TimeoutMS)*time.Millisecond)):
				status = TimedOut
			default:
				continue
			}
			if rec, final := s.opts.Router.finalElsewhere(s, device, a.rec.ID); final {
				a.rec = rec // another instance finished it already
			} else {
				s.setStatus(a, status, now)
				s.changed(a.rec, true)
				s.log.Info("command finished", "device", device, "command", a.rec.ID, "status", a.rec.Status)
			}
			s.remove(device, i)
			list = s.active[device]
			i--
		}
	}
	// News from other instances the wake did not drain yet (there is
	// none when it did).
	s.drainNews()
	// Sessions whose queue was full, or whose window was: try again.
	for _, device := range s.pendingDelivery() {
		s.deliver(device)
	}
}
