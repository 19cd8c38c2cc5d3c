// Package dynsec keeps Mosquitto's dynamic-security plugin in step with
// the device registry, for cluster mode on Mosquitto. It owns the
// plugin's control-topic protocol ($CONTROL/dynamic-security/v1: the
// commands, their correlation and answers) and what the hub keeps there:
// one client per device, with its token as password and client id = its
// id, and one role per device generated from telemetry.DeviceACL.
//
// It does not hold a broker connection: the caller (bridge/cluster)
// publishes its control messages (Options.Publish) and hands it the
// answers from ResponseTopic (OnResponse). It imports devices and
// telemetry.
package dynsec

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Mosquitto's dynamic-security plugin is managed by publishing commands to
// its control topic; answers come back, with our correlationData, on the
// response topic (to every admin subscribed, so other instances' answers
// are ignored by correlation).
const (
	// Topic is the plugin's control topic; Options.Publish sends there.
	Topic = "$CONTROL/dynamic-security/v1"
	// ResponseTopic carries the plugin's answers; subscribe to it and
	// give each message to OnResponse.
	ResponseTopic = Topic + "/response"
	// DeviceRolePrefix names the role each device gets: its own topics,
	// the same ACL as the embedded broker. Mosquitto 2.0's plugin has no
	// %u substitution, so the role is per device. The hub only ever
	// deletes clients whose role carries this prefix.
	DeviceRolePrefix = "fieldhub-device-"

	dynsecTimeout  = 10 * time.Second
	dynsecAttempts = 5
	dynsecQueue    = 256 // registry changes (each up to 10,000 devices)
	dynsecChunk    = 50  // devices per control message
	reconcileEvery = 5 * time.Minute
)

// Options configures a Sync. All are required but Logger.
type Options struct {
	// ID prefixes the correlation data of this instance's commands; unique
	// per instance (the cluster's client id).
	ID string
	// Publish sends one control message to Topic at QoS 1 and returns once
	// the broker took it, or ctx ended.
	Publish func(ctx context.Context, payload []byte) error
	// Connected reports whether the broker connection is up; nothing is
	// sent while it is not.
	Connected func() bool
	// Exists reports whether the registry has a device (reconcile deletes
	// the plugin's clients of devices it lacks).
	Exists func(id string) bool
	// Errors counts devices whose sync failed for good.
	Errors *atomic.Int64
	Logger *slog.Logger
}

// deviceACLs is a device's role, generated from telemetry.DeviceACL (the
// one definition of what a device may do; the plugin's defaults deny the
// rest): a topic the device publishes is a publishClientSend; one it
// subscribes to is a subscribeLiteral (the filter must be the topic itself,
// no wildcard) and a publishClientReceive (it may receive what the hub
// publishes there).
func deviceACLs(id string) []map[string]any {
	var out []map[string]any
	for _, r := range telemetry.DeviceACL(id) {
		if r.Access&telemetry.Publish != 0 {
			out = append(out, map[string]any{"acltype": "publishClientSend", "topic": r.Topic, "allow": true})
		}
		if r.Access&telemetry.Subscribe != 0 {
			out = append(out, map[string]any{"acltype": "subscribeLiteral", "topic": r.Topic, "allow": true},
				map[string]any{"acltype": "publishClientReceive", "topic": r.Topic, "allow": true})
		}
	}
	return out
}

// Sync keeps the plugin's clients in step with the registry: a device
// created or rotated here gets a broker client with its token as password
// (plaintext tokens exist only at that moment, so only the instance that
// made the change can do it); a deleted device's client is deleted, which
// disconnects it. A reconcile deletes leftovers of devices deleted while
// the broker was unreachable.
type Sync struct {
	o         Options
	log       *slog.Logger
	ops       chan []devices.DeviceChange
	reconcile chan struct{}
	seq       atomic.Uint64

	mu      sync.Mutex // guards waiting
	waiting map[string]chan Response
}

// Response is the plugin's answer to one command.
type Response struct {
	Command     string         `json:"command"`
	Error       string         `json:"error,omitzero"`
	Correlation string         `json:"correlationData,omitzero"`
	Data        jsontext.Value `json:"data,omitzero"`
}

// New returns a Sync; Run serves it.
func New(o Options) (*Sync, error) {
	if o.ID == "" || o.Publish == nil || o.Connected == nil || o.Exists == nil || o.Errors == nil {
		return nil, errors.New("dynsec: ID, Publish, Connected, Exists and Errors are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Sync{o: o, log: o.Logger, ops: make(chan []devices.DeviceChange, dynsecQueue), reconcile: make(chan struct{}, 1),
		waiting: map[string]chan Response{}}, nil
}

// Changed queues one registry change (a bulk import is one change of up
// to 10,000 devices). Full queue: the change is dropped and logged; a
// deletion is caught by the next reconcile, a creation or rotation needs
// the operator to rotate the token again.
func (d *Sync) Changed(ch devices.Changed) {
	if len(ch.Devices) == 0 {
		return
	}
	select {
	case d.ops <- ch.Devices:
	default:
		d.o.Errors.Add(int64(len(ch.Devices)))
		d.log.Error("broker credential sync queue full; rotate these devices' tokens to retry", "devices", len(ch.Devices), "first", ch.Devices[0].ID)
	}
}

// ReconcileSoon asks for a reconcile (after a connect): leftovers of
// devices deleted while the broker was unreachable are deleted, unbound
// clients bound.
func (d *Sync) ReconcileSoon() {
	select {
	case d.reconcile <- struct{}{}:
	default:
	}
}

// Run applies queued changes and reconciles (on request and every five
// minutes) until ctx ends.
func (d *Sync) Run(ctx context.Context) {
	t := time.NewTicker(reconcileEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case batch := <-d.ops:
			d.apply(ctx, batch)
		case <-d.reconcile:
			d.reconcileNow(ctx)
		case <-t.C:
			d.reconcileNow(ctx)
		}
	}
}

// apply mirrors device changes, dynsecChunk devices per control message,
// retrying what failed with backoff while the broker is unreachable.
func (d *Sync) apply(ctx context.Context, changes []devices.DeviceChange) {
	for len(changes) > 0 {
		chunk := changes[:min(len(changes), dynsecChunk)]
		changes = changes[len(chunk):]
		backoff := 500 * time.Millisecond
		for attempt := 1; len(chunk) > 0; attempt++ {
			var err error
			chunk, err = d.applyChunk(ctx, chunk)
			if len(chunk) == 0 {
				break
			}
			if ctx.Err() != nil {
				return // stopping; a deletion is caught by the next start's reconcile
			}
			d.log.Debug("broker credential sync failed; retrying", "devices", len(chunk), "attempt", attempt, "err", err)
			if attempt == dynsecAttempts {
				d.o.Errors.Add(int64(len(chunk)))
				d.log.Error("broker credential sync failed", "devices", len(chunk), "first", chunk[0].ID, "err", err)
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff *= 2
		}
	}
}

// applyChunk sends one chunk's commands and returns the changes that
// failed, with the first error.
func (d *Sync) applyChunk(ctx context.Context, chunk []devices.DeviceChange) ([]devices.DeviceChange, error) {
	var cmds []map[string]any
	for _, dc := range chunk {
		role := DeviceRolePrefix + dc.ID
		if dc.Deleted {
			cmds = append(cmds,
				map[string]any{"command": "deleteClient", "username": dc.ID},
				map[string]any{"command": "deleteRole", "rolename": role})
			continue
		}
		cmds = append(cmds,
			map[string]any{"command": "createRole", "rolename": role, "textname": "Fieldhub device " + dc.ID, "acls": deviceACLs(dc.ID)},
			// clientid: the broker accepts the device only with client id =
			// device id, so no device takes over or resumes another's session.
			map[string]any{"command": "createClient", "username": dc.ID, "clientid": dc.ID, "password": dc.Token, "textname": "Fieldhub device",
				"roles": []map[string]any{{"rolename": role}}})
	}
	res, err := d.Send(ctx, cmds)
	if err != nil {
		return chunk, err
	}
	var failed, rotated []devices.DeviceChange
	var firstErr error
	fail := func(dc devices.DeviceChange, r Response) {
		failed = append(failed, dc)
		if firstErr == nil {
			firstErr = fmt.Errorf("%s: %s", r.Command, r.Error)
		}
	}
	for i, dc := range chunk {
		first, second := res[2*i], res[2*i+1]
		switch {
		case dc.Deleted:
			if first.Error != "" && !strings.Contains(first.Error, "not found") {
				fail(dc, first)
			} else if second.Error != "" && !strings.Contains(second.Error, "not found") {
				fail(dc, second)
			}
		case first.Error != "" && !strings.Contains(first.Error, "already exists"):
			fail(dc, first)
		case second.Error == "":
		case strings.Contains(second.Error, "already exists"):
			rotated = append(rotated, dc)
		default:
			fail(dc, second)
		}
	}
	if len(rotated) == 0 {
		return failed, firstErr
	}
	// Rotations: a new password; with no grace, also cut sessions that
	// authenticated with the old one (disabling kicks them).
	cmds = cmds[:0]
	var owner []int // cmds index -> rotated index
	for i, dc := range rotated {
		// modifyClient sets the password and the role list in one step
		// (addClientRole of a role the client has fails in Mosquitto 2.0.11
		// with "Internal error").
		cmds = append(cmds, map[string]any{"command": "modifyClient", "username": dc.ID, "clientid": dc.ID, "password": dc.Token,
			"roles": []map[string]any{{"rolename": DeviceRolePrefix + dc.ID}}})
		owner = append(owner, i)
		if dc.Grace == 0 {
			cmds = append(cmds,
				map[string]any{"command": "disableClient", "username": dc.ID},
				map[string]any{"command": "enableClient", "username": dc.ID})
			owner = append(owner, i, i)
		}
	}
	res, err = d.Send(ctx, cmds)
	if err != nil {
		return append(failed, rotated...), err
	}
	bad := map[int]bool{}
	for j, r := range res {
		if r.Error != "" && !strings.Contains(r.Error, "already") && !bad[owner[j]] {
			bad[owner[j]] = true
			fail(rotated[owner[j]], r)
		}
	}
	return failed, firstErr
}

// reconcileNow deletes broker clients of devices the registry no longer
// has.
func (d *Sync) reconcileNow(ctx context.Context) {
	res, err := d.Send(ctx, []map[string]any{{"command": "listRoles", "verbose": false, "count": -1, "offset": 0}})
	if err != nil || res[0].Error != "" {
		d.log.Warn("list broker roles failed", "err", err, "error", res0Error(res))
		return
	}
	var data struct {
		Roles []string `json:"roles"`
	}
	if err := json.Unmarshal(res[0].Data, &data); err != nil {
		d.log.Warn("list broker roles: unexpected answer", "err", err)
		return
	}
	var gone []devices.DeviceChange
	for _, role := range data.Roles {
		id, ok := strings.CutPrefix(role, DeviceRolePrefix)
		if ok && devices.ValidID(id) && !d.o.Exists(id) {
			gone = append(gone, devices.DeviceChange{ID: id, Deleted: true})
		}
	}
	if len(gone) > 0 {
		d.log.Info("deleting broker clients of devices no longer registered", "devices", len(gone))
		d.apply(ctx, gone)
	}
	d.bindClientIDs(ctx)
}

// bindClientIDs sets client id = username on every device client of the
// plugin that lacks it: clients created before the hub bound client ids
// (createClient and modifyClient set it since) would otherwise let a
// device take over or resume another's session by its client id until the
// device's token is next rotated. It runs with every reconcile, so at each
// start (and after each reconnect to the broker), and sends nothing when
// every client is bound. Only clients with their own DeviceRolePrefix role
// are touched, never the hub's or an operator's; dynsecChunk clients per
// control message, dynsecAttempts tries with backoff, then counted in
// DynsecErrors and logged.
func (d *Sync) bindClientIDs(ctx context.Context) {
	res, err := d.Send(ctx, []map[string]any{{"command": "listClients", "verbose": true, "count": -1, "offset": 0}})
	if err != nil || res[0].Error != "" {
		d.log.Warn("list broker clients failed", "err", err, "error", res0Error(res))
		return
	}
	var data struct {
		Clients []struct {
			Username string `json:"username"`
			ClientID string `json:"clientid"`
			Roles    []struct {
				Rolename string `json:"rolename"`
			} `json:"roles"`
		} `json:"clients"`
	}
	if err := json.Unmarshal(res[0].Data, &data, json.RejectUnknownMembers(false)); err != nil {
		d.log.Warn("list broker clients: unexpected answer", "err", err)
		return
	}
	var unbound []string
	for _, cl := range data.Clients {
		if cl.ClientID == cl.Username || !devices.ValidID(cl.Username) {
			continue
		}
		for _, r := range cl.Roles {
			if r.Rolename == DeviceRolePrefix+cl.Username {
				unbound = append(unbound, cl.Username)
				break
			}
		}
	}
	if len(unbound) == 0 {
		return
	}
	d.log.Info("binding broker clients to their device id as client id", "devices", len(unbound))
	for len(unbound) > 0 {
		chunk := unbound[:min(len(unbound), dynsecChunk)]
		unbound = unbound[len(chunk):]
		backoff := 500 * time.Millisecond
		for attempt := 1; len(chunk) > 0; attempt++ {
			var err error
			chunk, err = d.bindChunk(ctx, chunk)
			if len(chunk) == 0 || ctx.Err() != nil {
				break
			}
			if attempt == dynsecAttempts {
				d.o.Errors.Add(int64(len(chunk)))
				d.log.Error("binding broker client ids failed", "devices", len(chunk), "first", chunk[0], "err", err)
				break
			}
			d.log.Debug("binding broker client ids failed; retrying", "devices", len(chunk), "attempt", attempt, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff *= 2
		}
	}
}

// bindChunk sends modifyClient with clientid = username for ids and
// returns those that failed, with the first error. A client deleted
// meanwhile needs nothing.
func (d *Sync) bindChunk(ctx context.Context, ids []string) ([]string, error) {
	cmds := make([]map[string]any, len(ids))
	for i, id := range ids {
		cmds[i] = map[string]any{"command": "modifyClient", "username": id, "clientid": id}
	}
	res, err := d.Send(ctx, cmds)
	if err != nil {
		return ids, err
	}
	var failed []string
	var firstErr error
	for i, r := range res {
		if r.Error != "" && !strings.Contains(r.Error, "not found") {
			failed = append(failed, ids[i])
			if firstErr == nil {
				firstErr = fmt.Errorf("%s %s: %s", r.Command, ids[i], r.Error)
			}
		}
	}
	return failed, firstErr
}

func res0Error(res []Response) string {
	if len(res) > 0 {
		return res[0].Error
	}
	return ""
}

// Send publishes commands in one message and waits for their answers,
// one per command in order.
func (d *Sync) Send(ctx context.Context, cmds []map[string]any) ([]Response, error) {
	if !d.o.Connected() {
		return nil, errors.New("not connected to the broker")
	}
	chans := make([]chan Response, len(cmds))
	keys := make([]string, len(cmds))
	d.mu.Lock()
	for i, cmd := range cmds {
		keys[i] = d.o.ID + "-" + strconv.FormatUint(d.seq.Add(1), 10)
		cmd["correlationData"] = keys[i]
		chans[i] = make(chan Response, 1)
		d.waiting[keys[i]] = chans[i]
	}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		for _, k := range keys {
			delete(d.waiting, k)
		}
		d.mu.Unlock()
	}()
	b, err := json.Marshal(map[string]any{"commands": cmds})
	if err != nil {
		return nil, fmt.Errorf("encode dynamic-security command: %w", err)
	}
	// Mosquitto's plugin rewrites its whole configuration file after each
	// change, so a message of many commands takes a while on a large fleet.
	wctx, cancel := context.WithTimeout(ctx, dynsecTimeout+time.Duration(len(cmds))*50*time.Millisecond)
	defer cancel()
	if err := d.o.Publish(wctx, b); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("publish dynamic-security command: %w", err)
	}
	out := make([]Response, len(cmds))
	for i, ch := range chans {
		select {
		case out[i] = <-ch:
		case <-wctx.Done():
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("dynamic-security %s: no answer in time (is the plugin loaded and the hub's client allowed $CONTROL/dynamic-security/#?)", cmds[i]["command"])
		}
	}
	return out, nil
}

// maxDynsecResponse bounds an answer we decode (listRoles of a large
// fleet is the biggest).
const maxDynsecResponse = 16 << 20

// OnResponse takes a message from ResponseTopic: the answers to this
// instance's commands are handed to their waiting Send.
func (d *Sync) OnResponse(payload []byte) {
	if len(payload) > maxDynsecResponse {
		return
	}
	var resp struct {
		Responses []Response `json:"responses"`
	}
	if err := json.Unmarshal(payload, &resp, json.RejectUnknownMembers(false)); err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range resp.Responses {
		if ch, ok := d.waiting[r.Correlation]; ok {
			ch <- r // buffered, one answer per key
			delete(d.waiting, r.Correlation)
		}
	}
}
