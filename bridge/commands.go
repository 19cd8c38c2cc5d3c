package bridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// CommandStore persists commands. *devices.BoltStore implements it, and
// the PostgreSQL store that several instances share. PutCommand never
// changes a command that is final in the store: the first final status
// wins.
type CommandStore interface {
	PutCommand(ctx context.Context, c devices.CommandRecord) error
	GetCommand(ctx context.Context, device, id string) (devices.CommandRecord, error)
	ListCommands(ctx context.Context, device, before string, limit int) ([]devices.CommandRecord, error)
	ActiveCommands(ctx context.Context) ([]devices.CommandRecord, error)
}

// Limits and defaults of commands.
const (
	MaxQueuedCommands     = 100
	MaxCommandParamsBytes = 8 << 10
	DefaultCommandTTL     = time.Hour
	MaxCommandTTL         = 30 * 24 * time.Hour
	DefaultCommandTimeout = 30 * time.Second
	MaxCommandTimeout     = 24 * time.Hour
)

// commands is the command service: the persistent per-device queue, the
// status lifecycle, delivery over whatever transport the device is on,
// redelivery after reconnects and restarts (at least once; devices
// de-duplicate by command id), and the ttl/timeout clock.
//
// Statuses never claim more than the hub knows: "sent" means written to
// the device's session; only the device's result makes a command
// succeeded or failed.
type commands struct {
	b     *Bridge
	store CommandStore

	mu        sync.Mutex              // guards everything below
	active    map[string][]*activeCmd // by device, in creation order
	waiters   map[string][]chan struct{}
	pollers   map[string][]chan struct{} // HTTP long polls by device
	idemIndex map[string]string          // device\x00key -> command id, for active commands
	seq       atomic.Uint32
}

type activeCmd struct {
	rec         devices.CommandRecord
	deliveredTo uint64 // session id it was last written to; 0: none
}

func newCommands(b *Bridge, store CommandStore) *commands {
	return &commands{b: b, store: store, active: map[string][]*activeCmd{}, waiters: map[string][]chan struct{}{},
		pollers: map[string][]chan struct{}{}, idemIndex: map[string]string{}}
}

// load takes up the commands that were queued or sent when the hub
// stopped; sent ones are delivered again when their device connects.
func (c *commands) load(ctx context.Context) error {
	recs, err := c.store.ActiveCommands(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range recs {
		c.active[r.Device] = append(c.active[r.Device], &activeCmd{rec: r})
		if r.IdempotencyKey != "" {
			c.idemIndex[r.Device+"\x00"+r.IdempotencyKey] = r.ID
		}
	}
	for _, list := range c.active {
		sortByID(list)
	}
	return nil
}

func sortByID(list []*activeCmd) {
	for i := 1; i < len(list); i++ { // ids sort by creation time; lists are short
		for j := i; j > 0 && list[j].rec.ID < list[j-1].rec.ID; j-- {
			list[j], list[j-1] = list[j-1], list[j]
		}
	}
}

// newID returns an id that sorts in creation order: the millisecond, then
// a per-process sequence for commands created in the same millisecond,
// then randomness so ids from several hub instances do not collide.
func (c *commands) newID(now time.Time) string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("cmd-%013x%06x%s", now.UnixMilli(), c.seq.Add(1)&0xffffff, hex.EncodeToString(r[:]))
}

func (c *commands) validate(spec *devices.CommandSpec) error {
	switch {
	case !telemetry.ValidName(spec.Name):
		return fmt.Errorf("%w: name must match %s", devices.ErrInvalid, telemetry.NamePattern)
	case len(spec.Params) > MaxCommandParamsBytes:
		return fmt.Errorf("%w: params must be at most %d bytes", devices.ErrInvalid, MaxCommandParamsBytes)
	case spec.TTL < 0 || spec.TTL > MaxCommandTTL:
		return fmt.Errorf("%w: ttl must be between 1s and %s", devices.ErrInvalid, MaxCommandTTL)
	case spec.Timeout < 0 || spec.Timeout > MaxCommandTimeout:
		return fmt.Errorf("%w: timeout must be between 1s and %s", devices.ErrInvalid, MaxCommandTimeout)
	case len(spec.IdempotencyKey) > 128:
		return fmt.Errorf("%w: Idempotency-Key must be at most 128 bytes", devices.ErrInvalid)
	}
	if len(spec.Params) == 0 {
		spec.Params = json.RawMessage(`{}`)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(spec.Params, &obj); err != nil || obj == nil {
		return fmt.Errorf("%w: params must be a JSON object", devices.ErrInvalid)
	}
	if spec.TTL == 0 {
		spec.TTL = DefaultCommandTTL
	}
	if spec.Timeout == 0 {
		spec.Timeout = DefaultCommandTimeout
	}
	return nil
}

// SendCommand queues a command and delivers it at once if the device is
// connected. With an idempotency key already used for the device, it
// returns the earlier command and replayed = true.
func (b *Bridge) SendCommand(ctx context.Context, spec devices.CommandSpec) (rec devices.CommandRecord, replayed bool, err error) {
	c := b.commands
	if c == nil {
		return rec, false, errors.New("commands are not enabled")
	}
	if err := c.validate(&spec); err != nil {
		return rec, false, err
	}
	if !b.opts.Devices.Exists(spec.Device) {
		return rec, false, fmt.Errorf("device %q: %w", spec.Device, devices.ErrNotFound)
	}
	if spec.IdempotencyKey != "" {
		if prev, ok, err := c.byIdempotencyKey(ctx, spec.Device, spec.IdempotencyKey); err != nil || ok {
			return prev, ok, err
		}
	}
	now := b.opts.Now().UTC()
	rec = devices.CommandRecord{
		ID: c.newID(now), Device: spec.Device, Name: spec.Name, Params: spec.Params,
		Status: devices.CommandQueued, CreatedAt: now, CreatedBy: spec.CreatedBy,
		ExpiresAt: now.Add(spec.TTL), TimeoutMS: spec.Timeout.Milliseconds(), IdempotencyKey: spec.IdempotencyKey,
		History: []devices.StatusChange{{Status: devices.CommandQueued, At: now}},
	}
	c.mu.Lock()
	queued := 0
	for _, a := range c.active[spec.Device] {
		if a.rec.Status == devices.CommandQueued {
			queued++
		}
	}
	if queued >= MaxQueuedCommands {
		c.mu.Unlock()
		return devices.CommandRecord{}, false, fmt.Errorf("device %q has %d queued commands: %w", spec.Device, queued, devices.ErrQueueFull)
	}
	if err := c.store.PutCommand(ctx, rec); err != nil {
		c.mu.Unlock()
		return devices.CommandRecord{}, false, err
	}
	c.active[spec.Device] = append(c.active[spec.Device], &activeCmd{rec: rec})
	if spec.IdempotencyKey != "" {
		c.idemIndex[spec.Device+"\x00"+spec.IdempotencyKey] = rec.ID
	}
	for _, ch := range c.pollers[spec.Device] {
		close(ch)
	}
	delete(c.pollers, spec.Device)
	b.publishCommand(rec)
	c.mu.Unlock()
	b.log.Info("command queued", "device", spec.Device, "command", rec.ID, "name", rec.Name, "by", spec.CreatedBy)
	b.DeliverCommands(spec.Device)
	if got, err := c.store.GetCommand(ctx, spec.Device, rec.ID); err == nil {
		rec = got
	}
	return rec, false, nil
}

func (c *commands) byIdempotencyKey(ctx context.Context, device, key string) (devices.CommandRecord, bool, error) {
	c.mu.Lock()
	id, ok := c.idemIndex[device+"\x00"+key]
	c.mu.Unlock()
	if ok {
		rec, err := c.store.GetCommand(ctx, device, id)
		return rec, err == nil, err
	}
	// Finished commands: search the kept history.
	recs, err := c.store.ListCommands(ctx, device, "", devices.MaxCommandsKept)
	if err != nil {
		return devices.CommandRecord{}, false, err
	}
	for _, r := range recs {
		if r.IdempotencyKey == key {
			return r, true, nil
		}
	}
	return devices.CommandRecord{}, false, nil
}

func (b *Bridge) publishCommand(rec devices.CommandRecord) {
	if b.opts.Fanout != nil {
		b.opts.Fanout.Publish(telemetry.Event{Type: telemetry.EventCommand, Device: rec.Device, ID: rec.ID, Status: rec.Status, At: b.opts.Now().UnixMilli()})
	}
}

// setStatus moves a command to status, persists and announces it. Callers
// hold c.mu.
func (c *commands) setStatusLocked(a *activeCmd, status string, now time.Time) {
	a.rec.Status = status
	a.rec.History = append(a.rec.History, devices.StatusChange{Status: status, At: now})
	if a.rec.Final() {
		t := now
		a.rec.CompletedAt = &t
		pick(c.b.stats.Commands, status).Add(1)
	}
}

// changedLocked persists rec and announces it to dashboards. It runs under
// c.mu so that the store and the event stream see a command's statuses in
// the order they happened. A store failure is logged: the in-memory state
// goes on and the next change writes it again.
func (c *commands) changedLocked(rec devices.CommandRecord, announce bool) {
	if err := c.store.PutCommand(context.Background(), rec); err != nil {
		c.b.log.Error("persist command", "device", rec.Device, "command", rec.ID, "err", err)
	}
	if announce {
		c.b.publishCommand(rec)
	}
}

// remoteSession is the session id of "handed to Remote": the device is
// not connected to this instance.
const remoteSession = ^uint64(0)

// commandWindow bounds the commands written to a session and not yet
// answered; the rest follow as results come in.
const commandWindow = 16

// DeliverCommands writes the device's queued commands, and sent commands
// still waiting for a result that the current session has not seen, to
// the device's current session, in order, keeping at most commandWindow
// unanswered on it. Transports call it when a session becomes able to
// receive commands; results and the command clock call it again.
func (b *Bridge) DeliverCommands(device string) {
	c := b.commands
	if c == nil {
		return
	}
	var sid uint64
	var deliver func(telemetry.Command) bool
	if s := b.Current(device); s != nil {
		sid, deliver = s.ID, s.conn.Deliver
	} else if b.opts.Remote != nil {
		sid = remoteSession
		deliver = func(cmd telemetry.Command) bool { return b.opts.Remote.PublishCommand(device, cmd) }
	} else {
		return
	}
	now := b.opts.Now().UTC()
	c.mu.Lock()
	defer c.mu.Unlock()
	inWindow := 0
	for _, a := range c.active[device] {
		if a.deliveredTo == sid && !a.rec.Final() {
			inWindow++
		}
	}
	for _, a := range c.active[device] {
		if a.deliveredTo == sid || a.rec.Final() {
			continue
		}
		if inWindow >= commandWindow || !deliver(telemetry.Command{ID: a.rec.ID, Name: a.rec.Name, Params: []byte(a.rec.Params)}) {
			return // keep the order: the rest waits for the next chance
		}
		inWindow++
		a.deliveredTo = sid
		a.rec.Deliveries++
		first := a.rec.Status == devices.CommandQueued
		if first {
			t := now
			a.rec.SentAt = &t
			c.setStatusLocked(a, devices.CommandSent, now)
		}
		c.changedLocked(a.rec, first)
	}
}

// pendingDelivery lists devices with commands their current session has
// not been given yet.
func (c *commands) pendingDelivery() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for device, list := range c.active {
		sid := remoteSession
		if s := c.b.Current(device); s != nil {
			sid = s.ID
		} else if c.b.opts.Remote == nil {
			continue
		}
		for _, a := range list {
			if a.deliveredTo != sid {
				out = append(out, device)
				break
			}
		}
	}
	return out
}

// ErrRevoked means the credential a request was authenticated with no
// longer works: the device's token was rotated without grace, its grace
// ended, or the device was deleted.
var ErrRevoked = errors.New("credentials revoked")

// NextCommand is the HTTP long poll: the device's oldest queued command,
// marked sent, waiting up to wait for one to arrive. ok is false when none
// came. The poll is a session of the token with hash h: a credentials
// change wakes it (CredentialsChanged), and once h no longer works it ends
// with ErrRevoked and hands nothing out.
func (b *Bridge) NextCommand(ctx context.Context, device string, h devices.TokenHash, wait time.Duration) (telemetry.Command, bool, error) {
	c := b.commands
	if c == nil {
		return telemetry.Command{}, false, nil
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		// Checked before every take: a command queued after a rotation
		// never reaches the superseded token.
		if !b.opts.Devices.StillValid(device, h) {
			return telemetry.Command{}, false, ErrRevoked
		}
		now := b.opts.Now().UTC()
		if b.opts.Remote != nil {
			// Several instances: the command may have been created on any
			// of them; the shared store says which one is next.
			if cmd, ok, err := c.nextShared(ctx, device, h, now); ok || err != nil {
				return cmd, ok, err
			}
		}
		c.mu.Lock()
		for _, a := range c.active[device] {
			if b.opts.Remote != nil {
				break // taken above, from the store
			}
			if a.rec.Status != devices.CommandQueued {
				continue
			}
			// Checked again right before the hand-out, under c.mu: the
			// token may have been rotated since the check above. (The
			// registry never calls the bridge with its lock held, so
			// asking it under c.mu cannot deadlock.)
			if !b.opts.Devices.StillValid(device, h) {
				c.mu.Unlock()
				return telemetry.Command{}, false, ErrRevoked
			}
			a.rec.Deliveries++
			t := now
			a.rec.SentAt = &t
			c.setStatusLocked(a, devices.CommandSent, now)
			rec := a.rec
			c.changedLocked(rec, true)
			c.mu.Unlock()
			return telemetry.Command{Type: telemetry.TypeCommand, ID: rec.ID, Name: rec.Name, Params: []byte(rec.Params)}, true, nil
		}
		ch := make(chan struct{})
		c.pollers[device] = append(c.pollers[device], ch)
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			c.dropPoller(device, ch)
			return telemetry.Command{}, false, nil
		case <-deadline.C:
			c.dropPoller(device, ch)
			return telemetry.Command{}, false, nil
		}
	}
}

// nextShared hands out, once, the device's oldest open command from the
// shared store that no poll took yet, to the token with hash h if it still
// works right before the hand-out (ErrRevoked otherwise).
func (c *commands) nextShared(ctx context.Context, device string, h devices.TokenHash, now time.Time) (telemetry.Command, bool, error) {
	recs, err := c.store.ListCommands(ctx, device, "", MaxQueuedCommands+commandWindow)
	if err != nil {
		c.b.log.Warn("list commands for a poll", "device", device, "err", err)
		return telemetry.Command{}, false, nil
	}
	for i := len(recs) - 1; i >= 0; i-- { // oldest first
		rec := recs[i]
		if rec.Final() || rec.PolledAt != nil {
			continue
		}
		t := now
		rec.PolledAt = &t
		rec.Deliveries++
		announce := rec.Status == devices.CommandQueued
		if announce {
			rec.SentAt = &t
			rec.Status = devices.CommandSent
			rec.History = append(rec.History, devices.StatusChange{Status: devices.CommandSent, At: now})
		}
		c.mu.Lock()
		if !c.b.opts.Devices.StillValid(device, h) {
			c.mu.Unlock()
			return telemetry.Command{}, false, ErrRevoked
		}
		for _, a := range c.active[device] {
			if a.rec.ID == rec.ID {
				a.rec = rec
			}
		}
		c.changedLocked(rec, announce)
		c.mu.Unlock()
		return telemetry.Command{Type: telemetry.TypeCommand, ID: rec.ID, Name: rec.Name, Params: []byte(rec.Params)}, true, nil
	}
	return telemetry.Command{}, false, nil
}

// WakePollers wakes the device's HTTP long polls on this instance: another
// instance published a command for it.
func (b *Bridge) WakePollers(device string) {
	c := b.commands
	if c == nil {
		return
	}
	c.mu.Lock()
	for _, ch := range c.pollers[device] {
		close(ch)
	}
	delete(c.pollers, device)
	c.mu.Unlock()
}

func (c *commands) dropPoller(device string, ch chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	list := c.pollers[device]
	for i, x := range list {
		if x == ch {
			c.pollers[device] = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(c.pollers[device]) == 0 {
		delete(c.pollers, device)
	}
}

// CommandResult records a device's answer. An answer to a command that is
// unknown or already final (a duplicate after redelivery) changes nothing.
func (b *Bridge) CommandResult(device string, r *telemetry.CommandResult) error {
	c := b.commands
	if c == nil {
		return nil
	}
	now := b.opts.Now().UTC()
	c.mu.Lock()
	list := c.active[device]
	idx := -1
	for i, a := range list {
		if a.rec.ID == r.ID {
			idx = i
			break
		}
	}
	status := devices.CommandSucceeded
	if r.Status == telemetry.ResultError {
		status = devices.CommandFailed
	}
	if idx < 0 {
		c.mu.Unlock()
		if b.opts.Remote != nil {
			return c.finishShared(device, r, status, now)
		}
		return fmt.Errorf("command %q: %w", r.ID, devices.ErrNotFound)
	}
	a := list[idx]
	a.rec.Result = json.RawMessage(r.Result)
	a.rec.Error = r.Error
	c.setStatusLocked(a, status, now)
	c.changedLocked(a.rec, true)
	c.removeLocked(device, idx)
	rec := a.rec
	c.mu.Unlock()
	b.log.Info("command finished", "device", device, "command", rec.ID, "status", rec.Status)
	b.DeliverCommands(device) // the window has room again
	return nil
}

// finishShared records a result for a command another instance created:
// the shared store says whether it is still open, and the announcement
// reaches its creator through the fan-out, which wakes its waiters
// (CommandChanged).
func (c *commands) finishShared(device string, r *telemetry.CommandResult, status string, now time.Time) error {
	ctx := context.Background()
	rec, err := c.store.GetCommand(ctx, device, r.ID)
	if err != nil {
		return err
	}
	if rec.Final() {
		return nil // a duplicate after redelivery
	}
	rec.Result = json.RawMessage(r.Result)
	rec.Error = r.Error
	a := &activeCmd{rec: rec}
	c.mu.Lock()
	c.setStatusLocked(a, status, now)
	c.changedLocked(a.rec, true)
	c.mu.Unlock()
	c.b.log.Info("command finished", "device", device, "command", rec.ID, "status", a.rec.Status)
	return nil
}

// CommandChanged tells the command service that another instance changed
// a command (its live event came through the broker). A command this
// instance tracks and the shared store says is final is let go, and its
// waiters wake.
func (b *Bridge) CommandChanged(device, id string) {
	c := b.commands
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, a := range c.active[device] {
		if a.rec.ID != id {
			continue
		}
		if rec, err := c.store.GetCommand(context.Background(), device, id); err == nil && rec.Final() {
			a.rec = rec
			c.removeLocked(device, i)
		}
		return
	}
}

// RemoteConnected tells the command service that the device connected to
// another instance: commands handed to Remote before are handed over
// again, for that instance to deliver (at least once).
func (b *Bridge) RemoteConnected(device string) {
	c := b.commands
	if c == nil || b.opts.Remote == nil || b.Current(device) != nil {
		return
	}
	c.mu.Lock()
	for _, a := range c.active[device] {
		if a.deliveredTo == remoteSession {
			a.deliveredTo = 0
		}
	}
	c.mu.Unlock()
	b.DeliverCommands(device)
}

// ForwardCommand writes a command another instance published to this
// instance's session of the device, if it holds one.
func (b *Bridge) ForwardCommand(device string, cmd telemetry.Command) bool {
	s := b.Current(device)
	return s != nil && s.conn.Deliver(cmd)
}

// removeLocked drops a final command from the active list and wakes its
// waiters. Callers hold c.mu.
func (c *commands) removeLocked(device string, idx int) {
	list := c.active[device]
	id := list[idx].rec.ID
	if key := list[idx].rec.IdempotencyKey; key != "" {
		delete(c.idemIndex, device+"\x00"+key)
	}
	c.active[device] = append(list[:idx], list[idx+1:]...)
	if len(c.active[device]) == 0 {
		delete(c.active, device)
	}
	for _, ch := range c.waiters[device+"\x00"+id] {
		close(ch)
	}
	delete(c.waiters, device+"\x00"+id)
}

// CancelCommand cancels a queued command; a command already sent cannot be
// taken back (ErrConflict).
func (b *Bridge) CancelCommand(ctx context.Context, device, id string) (devices.CommandRecord, error) {
	c := b.commands
	c.mu.Lock()
	for i, a := range c.active[device] {
		if a.rec.ID != id {
			continue
		}
		if a.rec.Status != devices.CommandQueued {
			c.mu.Unlock()
			return a.rec, fmt.Errorf("command %q is %s, only queued commands can be cancelled: %w", id, a.rec.Status, devices.ErrConflict)
		}
		c.setStatusLocked(a, devices.CommandCancelled, b.opts.Now().UTC())
		c.changedLocked(a.rec, true)
		c.removeLocked(device, i)
		rec := a.rec
		c.mu.Unlock()
		return rec, nil
	}
	c.mu.Unlock()
	rec, err := c.store.GetCommand(ctx, device, id)
	if err != nil {
		return rec, err
	}
	return rec, fmt.Errorf("command %q is %s, only queued commands can be cancelled: %w", id, rec.Status, devices.ErrConflict)
}

// GetCommand returns one command.
func (b *Bridge) GetCommand(ctx context.Context, device, id string) (devices.CommandRecord, error) {
	return b.commands.store.GetCommand(ctx, device, id)
}

// ListCommands returns a device's commands, newest first.
func (b *Bridge) ListCommands(ctx context.Context, device, before string, limit int) ([]devices.CommandRecord, error) {
	return b.commands.store.ListCommands(ctx, device, before, limit)
}

// WaitCommand waits up to d for a command to reach a final status and
// returns it as it is then.
func (b *Bridge) WaitCommand(ctx context.Context, device, id string, d time.Duration) (devices.CommandRecord, error) {
	c := b.commands
	c.mu.Lock()
	isActive := false
	for _, a := range c.active[device] {
		if a.rec.ID == id {
			isActive = true
		}
	}
	var ch chan struct{}
	if isActive {
		ch = make(chan struct{})
		c.waiters[device+"\x00"+id] = append(c.waiters[device+"\x00"+id], ch)
	}
	c.mu.Unlock()
	if ch != nil {
		t := time.NewTimer(d)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		c.mu.Lock()
		key := device + "\x00" + id
		list := c.waiters[key]
		for i, x := range list {
			if x == ch {
				c.waiters[key] = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(c.waiters[key]) == 0 {
			delete(c.waiters, key)
		}
		c.mu.Unlock()
	}
	return c.store.GetCommand(context.WithoutCancel(ctx), device, id)
}

// tick expires queued commands past their ttl and times out sent commands
// past their timeout.
func (c *commands) tick(now time.Time) {
	var changed []devices.CommandRecord
	c.mu.Lock()
	for device, list := range c.active {
		for i := 0; i < len(list); i++ {
			a := list[i]
			var status string
			switch {
			case a.rec.Status == devices.CommandQueued && now.After(a.rec.ExpiresAt):
				status = devices.CommandExpired
			case a.rec.Status == devices.CommandSent && a.rec.SentAt != nil && now.After(a.rec.SentAt.Add(time.Duration(a.rec.TimeoutMS)*time.Millisecond)):
				status = devices.CommandTimedOut
			default:
				continue
			}
			if c.b.opts.Remote != nil {
				// Another instance may have finished it already.
				if rec, err := c.store.GetCommand(context.Background(), device, a.rec.ID); err == nil && rec.Final() {
					a.rec = rec
					c.removeLocked(device, i)
					list = c.active[device]
					i--
					continue
				}
			}
			c.setStatusLocked(a, status, now)
			c.changedLocked(a.rec, true)
			changed = append(changed, a.rec)
			c.removeLocked(device, i)
			list = c.active[device]
			i--
		}
	}
	c.mu.Unlock()
	for _, rec := range changed {
		c.b.log.Info("command finished", "device", rec.Device, "command", rec.ID, "status", rec.Status)
	}
	// Sessions whose queue was full, or whose window was: try again.
	for _, device := range c.pendingDelivery() {
		c.b.DeliverCommands(device)
	}
}

// Run drives the command clock (ttl and timeouts) until ctx ends.
func (b *Bridge) Run(ctx context.Context) error {
	if b.commands == nil {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			b.commands.tick(b.opts.Now().UTC())
		}
	}
}
