package commands

import (
	"context"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// The HTTP long poll: a device without a socket takes its commands one
// by one.

// NextCommand is the HTTP long poll: the device's oldest queued command,
// marked sent, waiting up to wait for one to arrive. ok is false when none
// came. The poll is a session of the token with hash h: a credentials
// change wakes it (WakePollers), and once h no longer works it ends with
// ErrRevoked and hands nothing out.
func (s *Service) NextCommand(ctx context.Context, device string, h devices.TokenHash, wait time.Duration) (telemetry.Command, bool, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		// Checked before every take: a command queued after a rotation
		// never reaches the superseded token.
		if !s.opts.Devices.StillValid(device, h) {
			return telemetry.Command{}, false, ErrRevoked
		}
		var (
			cmd telemetry.Command
			ok  bool
			err error
			ch  chan struct{}
		)
		if derr := s.do(ctx, func() {
			cmd, ok, err = s.opts.Router.take(ctx, s, device, h)
			if ok || err != nil {
				return
			}
			// Checked again right before the registration: a rotation
			// since the check above woke the pollers registered then, not
			// this one, which would stay open for its whole wait.
			if !s.opts.Devices.StillValid(device, h) {
				err = ErrRevoked
				return
			}
			ch = make(chan struct{})
			s.pollers[device] = append(s.pollers[device], ch)
		}); derr != nil {
			return telemetry.Command{}, false, nil
		}
		if ok || err != nil {
			return cmd, ok, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			s.dropPoller(device, ch)
			return telemetry.Command{}, false, nil
		case <-deadline.C:
			s.dropPoller(device, ch)
			return telemetry.Command{}, false, nil
		}
	}
}

// takeLocal hands out the device's oldest queued command from the active
// set, to the token with hash h if it still works right before the
// hand-out. Owner goroutine.
func (s *Service) takeLocal(device string, h devices.TokenHash) (telemetry.Command, bool, error) {
	now := s.opts.Now().UTC()
	for _, a := range s.active[device] {
		if a.rec.Status != Queued {
			continue
		}
		// Checked again right before the hand-out: the token may have
		// been rotated since the caller's check.
		if !s.opts.Devices.StillValid(device, h) {
			return telemetry.Command{}, false, ErrRevoked
		}
		a.rec.Deliveries++
		t := now
		a.rec.SentAt = &t
		s.setStatus(a, Sent, now)
		s.changed(a.rec, true)
		return telemetry.Command{Type: telemetry.TypeCommand, ID: a.rec.ID, Name: a.rec.Name, Params: []byte(a.rec.Params)}, true, nil
	}
	return telemetry.Command{}, false, nil
}

// takeShared hands out, once, the device's oldest open command from the
// shared store that no poll took yet, to the token with hash h if it still
// works right before the hand-out (ErrRevoked otherwise). Owner goroutine.
func (s *Service) takeShared(ctx context.Context, device string, h devices.TokenHash) (telemetry.Command, bool, error) {
	now := s.opts.Now().UTC()
	lctx, cancel := callerStoreCtx(ctx)
	recs, err := s.opts.Store.ListCommands(lctx, device, "", MaxQueued+Window)
	cancel()
	if err != nil {
		s.log.Warn("list commands for a poll", "device", device, "err", err)
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
		announce := rec.Status == Queued
		if announce {
			rec.SentAt = &t
			rec.Status = Sent
			rec.History = append(rec.History, StatusChange{Status: Sent, At: now})
		}
		if !s.opts.Devices.StillValid(device, h) {
			return telemetry.Command{}, false, ErrRevoked
		}
		for _, a := range s.active[device] {
			if a.rec.ID == rec.ID {
				a.rec = rec
			}
		}
		s.changed(rec, announce)
		return telemetry.Command{Type: telemetry.TypeCommand, ID: rec.ID, Name: rec.Name, Params: []byte(rec.Params)}, true, nil
	}
	return telemetry.Command{}, false, nil
}

// WakePollers wakes the device's HTTP long polls on this instance: its
// credentials changed, or another instance published a command for it.
// It does not wait for the polls to wake, but while the request queue is
// full it waits for room: a poll must learn of a revocation.
func (s *Service) WakePollers(device string) {
	s.enqueue(func() { s.wakePollers(device) })
}

// wakePollers is WakePollers on the owner goroutine.
func (s *Service) wakePollers(device string) {
	for _, ch := range s.pollers[device] {
		close(ch)
	}
	delete(s.pollers, device)
}

func (s *Service) dropPoller(device string, ch chan struct{}) {
	s.enqueue(func() {
		list := s.pollers[device]
		for i, x := range list {
			if x == ch {
				s.pollers[device] = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(s.pollers[device]) == 0 {
			delete(s.pollers, device)
		}
	})
}
