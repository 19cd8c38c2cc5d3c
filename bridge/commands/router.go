package commands

import (
	"context"
	"fmt"
	"time"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Router is how far the service reaches beyond this instance: where the
// commands of a device without a session here go, who hands out HTTP
// polls, and whether the store is shared. LocalRouter serves one
// instance; ClusterRouter several on an external broker sharing one
// Store. Its methods run on the service's owner goroutine.
type Router interface {
	// away returns the delivery target of a device that has no session
	// here: the id deliveries to it are counted against and the function
	// that hands it a command (which must not block); false: nowhere.
	away(device string) (uint64, func(telemetry.Command) bool, bool)
	// take hands out the device's next command to an HTTP poll.
	take(ctx context.Context, s *Service, device string, h devices.TokenHash) (telemetry.Command, bool, error)
	// unknownResult answers a result for a command not in the active set.
	unknownResult(s *Service, device string, r *telemetry.CommandResult, status string, now time.Time) error
	// finalElsewhere reports whether the store says another instance
	// finished the command already (with the record it holds).
	finalElsewhere(s *Service, device, id string) (Record, bool)
}

// LocalRouter is the Router of a single instance: a device's commands go
// only to its session here, and this instance's active set is the truth.
func LocalRouter() Router { return localRouter{} }

type localRouter struct{}

func (localRouter) away(string) (uint64, func(telemetry.Command) bool, bool) { return 0, nil, false }

func (localRouter) take(_ context.Context, s *Service, device string, h devices.TokenHash) (telemetry.Command, bool, error) {
	return s.takeLocal(device, h)
}

func (localRouter) unknownResult(_ *Service, _ string, r *telemetry.CommandResult, _ string, _ time.Time) error {
	return fmt.Errorf("command %q: %w", r.ID, devices.ErrNotFound)
}

func (localRouter) finalElsewhere(*Service, string, string) (Record, bool) { return Record{}, false }

// Publisher hands a command to the network beyond this instance: an
// external broker, from which the instance holding the device's session
// takes it. PublishCommand must not block; false means it cannot take the
// command now (the command clock tries again).
type Publisher interface {
	PublishCommand(device string, cmd telemetry.Command) bool
}

// awaySession is the delivery target "handed to the cluster": the device
// has no session on this instance. Session ids count up from 1 and never
// reach it.
const awaySession = ^uint64(0)

// ClusterRouter is the Router of several instances sharing one Store: a
// device without a session here gets its commands through p (again when
// it connects elsewhere: RemoteConnected); a result may finish a command
// another instance created; the shared store is the truth about whether
// a command is final and which one an HTTP poll takes next.
func ClusterRouter(p Publisher) Router { return clusterRouter{p: p} }

type clusterRouter struct{ p Publisher }

func (r clusterRouter) away(device string) (uint64, func(telemetry.Command) bool, bool) {
	return awaySession, func(cmd telemetry.Command) bool { return r.p.PublishCommand(device, cmd) }, true
}

func (clusterRouter) take(ctx context.Context, s *Service, device string, h devices.TokenHash) (telemetry.Command, bool, error) {
	// The command may have been created on any instance; the shared store
	// says which one is next.
	return s.takeShared(ctx, device, h)
}

func (clusterRouter) unknownResult(s *Service, device string, r *telemetry.CommandResult, status string, now time.Time) error {
	return s.finishShared(device, r, status, now)
}

func (clusterRouter) finalElsewhere(s *Service, device, id string) (Record, bool) {
	ctx, cancel := s.storeCtx()
	defer cancel()
	rec, err := s.opts.Store.GetCommand(ctx, device, id)
	return rec, err == nil && rec.Final()
}
