package mqtt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldhub/fieldhub/bridge"
	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// hook connects mochi's callbacks to the bridge. Every callback decodes,
// hands off and returns; the only wait is OnPublish's for durability, which
// the bridge bounds (StoreTimeout), and which holds up only the publishing
// client, since mochi reads each client's packets in order.
type hook struct {
	mqtt.HookBase
	b *Broker

	mu       sync.Mutex // guards pending, sessions and conns
	pending  map[*mqtt.Client]devices.TokenHash
	sessions map[*mqtt.Client]*bridge.Session
	conns    map[*mqtt.Client]*conn

	// connectLog and publishLog rate-limit the refusal log lines.
	connectLog, publishLog bridge.LogLimiter
}

// hookID names the hook in mochi (and in mochi's log lines).
const hookID = "fieldhub"

func (h *hook) ID() string { return hookID }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPacketRead, mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSessionEstablished,
		mqtt.OnDisconnect, mqtt.OnPublish, mqtt.OnSubscribed:
		return true
	}
	return false
}

// OnPacketRead runs before mochi validates a CONNECT. An MQTT 3.1.1 (or
// 3.1) CONNECT with an empty client id and clean session off is invalid
// there (§3.1.3-8 wants return code 0x02 identifier rejected), and mochi
// would answer it with 0x80, which is no 3.1.1 return code. Our contract
// says an empty client id is assigned the device id, so it is filled in
// with the username here, and OnConnect then proves it as any other
// (only the device itself, by its credentials, resumes that session).
// Without a username there is no device id to assign: refused with 0x02.
// Every other packet passes untouched.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Connect || pk.ProtocolVersion >= 5 || pk.Connect.Clean || pk.Connect.ClientIdentifier != "" {
		return pk, nil
	}
	if user := string(pk.Connect.Username); user != "" && user != mqtt.InlineClientId {
		pk.Connect.ClientIdentifier = user
		return pk, nil
	}
	if n, ok := h.connectLog.Allow(); ok {
		h.b.log.Info("mqtt client id refused", "device", "", "client_id", "", "remote", remoteIP(cl.Net.Remote),
			"reason", "empty client id without clean session and no username", "suppressed", n)
	}
	cl.Properties.ProtocolVersion = pk.ProtocolVersion // ParseConnect has not run yet: CONNACK in the client's version
	if err := h.b.srv.SendConnack(cl, packets.ErrClientIdentifierNotValid, false, nil); err != nil {
		return pk, fmt.Errorf("refuse client id: %w", err)
	}
	return pk, packets.ErrClientIdentifierNotValid
}

// OnConnect binds the client id to the device (see clientID) and enforces
// keep-alive: a client asking for none, or for more than the maximum, gets
// the maximum (MQTT 5 clients are told in CONNACK).
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if err := h.clientID(cl, pk); err != nil {
		return err
	}
	maxKA := uint16(h.b.opts.MaxKeepalive / time.Second)
	if cl.State.Keepalive == 0 || cl.State.Keepalive > maxKA {
		cl.State.Keepalive = maxKA
		cl.State.ServerKeepalive = true
	}
	// No wills: a last will publishes on the device's behalf after it is
	// gone, outside the ACL.
	cl.Properties.Will = mqtt.Will{}
	return nil
}

// clientID enforces client id = device id (the username), so that a
// session, a persistent session and its in-flight commands can only ever be
// taken over or resumed by the device that owns them: mochi hands a client
// id's existing session to whoever connects with it. An empty client id is
// assigned the device id (MQTT 5: Assigned Client Identifier in CONNACK).
// Anything else is refused with CONNACK 0x85 Client Identifier not valid
// (MQTT 5.0 §3.2.2.2), which mochi sends as return code 0x02 identifier
// rejected to MQTT 3.1.1 clients (§3.2.2.3), before authentication and
// before anything of any session changes. mochi's inline client id is
// never a device's.
//
// Only the username is compared here; OnConnectAuthenticate then proves it.
func (h *hook) clientID(cl *mqtt.Client, pk packets.Packet) error {
	user := string(pk.Connect.Username)
	id := pk.Connect.ClientIdentifier
	if user != mqtt.InlineClientId {
		switch {
		case id == user:
			return nil
		case id == "":
			cl.ID = user
			cl.Properties.Props.AssignedClientID = user
			return nil
		}
	}
	if n, ok := h.connectLog.Allow(); ok {
		h.b.log.Info("mqtt client id refused", "device", telemetry.Truncate(user, 64), "client_id", telemetry.Truncate(id, 64),
			"remote", remoteIP(cl.Net.Remote), "reason", "client id must be the device id", "suppressed", n)
	}
	if err := h.b.srv.SendConnack(cl, packets.ErrClientIdentifierNotValid, false, nil); err != nil {
		return fmt.Errorf("refuse client id: %w", err)
	}
	return packets.ErrClientIdentifierNotValid
}

// OnConnectAuthenticate checks username = device id, password = token.
// The credentials are always checked and valid ones always pass; failures
// of this address with this username only keep refusals out of the log
// once past their budget (the answer is bad username or password either
// way).
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	ip := remoteIP(cl.Net.Remote)
	id := string(pk.Connect.Username)
	hash, ok := h.b.opts.Auth.AuthenticateDevice(id, string(pk.Connect.Password))
	if !ok {
		if h.b.opts.OnAuthFailure != nil {
			h.b.opts.OnAuthFailure(devices.TransportMQTT)
		}
		// Limited or not, the answer is bad username or password.
		h.b.opts.Failures.Refuse(h.b.log, "device authentication failed", ip, id, "transport", devices.TransportMQTT)
		return false
	}
	h.mu.Lock()
	h.pending[cl] = hash
	h.mu.Unlock()
	return true
}

func remoteIP(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// OnSessionEstablished opens the bridge session (and with it presence).
func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	h.mu.Lock()
	hash, ok := h.pending[cl]
	delete(h.pending, cl)
	h.mu.Unlock()
	if !ok {
		return
	}
	conn := &conn{b: h.b, cl: cl, commands: telemetry.Topic(string(cl.Properties.Username), telemetry.KindCommands)}
	s := h.b.opts.Bridge.Connect(string(cl.Properties.Username), devices.TransportMQTT, cl.Net.Remote, hash, conn)
	h.mu.Lock()
	h.sessions[cl] = s
	h.conns[cl] = conn
	h.mu.Unlock()
}

// OnSubscribed makes the session ready for commands once the device
// subscribed to its commands topic, and delivers what is waiting.
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	h.mu.Lock()
	conn := h.conns[cl]
	h.mu.Unlock()
	if conn == nil {
		return
	}
	for i, f := range pk.Filters {
		if f.Filter == conn.commands && i < len(reasonCodes) && reasonCodes[i] < 0x80 {
			conn.subscribed.Store(true)
			h.b.opts.Commands.DeliverCommands(string(cl.Properties.Username))
		}
	}
}

func (h *hook) session(cl *mqtt.Client) *bridge.Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessions[cl]
}

// OnDisconnect ends the bridge session with the reason the client left.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.mu.Lock()
	s := h.sessions[cl]
	delete(h.sessions, cl)
	delete(h.conns, cl)
	delete(h.pending, cl)
	h.mu.Unlock()
	if s != nil {
		h.b.opts.Bridge.Disconnect(s, disconnectReason(err))
	}
}

func disconnectReason(err error) string {
	var ne net.Error
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, packets.CodeDisconnect):
		return bridge.ReasonClientClosed
	case errors.Is(err, packets.ErrSessionTakenOver):
		return bridge.ReasonSuperseded
	case errors.Is(err, packets.ErrServerShuttingDown):
		return bridge.ReasonServerShutdown
	case errors.Is(err, packets.ErrPacketTooLarge):
		return bridge.ReasonReadLimit
	case errors.Is(err, packets.ErrKeepAliveTimeout), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return bridge.ReasonHeartbeatTimeout
	case errors.Is(err, net.ErrClosed), errors.Is(err, io.ErrUnexpectedEOF):
		return bridge.ReasonNetworkError
	}
	var code packets.Code
	if errors.As(err, &code) && code.Code == packets.CodeDisconnectWillMessage.Code {
		return bridge.ReasonClientClosed
	}
	return bridge.ReasonProtocolError
}

// topicAllowed is the embedded broker's form of the device ACL
// (telemetry.DeviceACL): write is a publish, otherwise a subscribe.
func topicAllowed(id, topic string, write bool) bool {
	a := telemetry.Subscribe
	if write {
		a = telemetry.Publish
	}
	return telemetry.Allowed(id, topic, a)
}

// OnACLCheck allows a device to publish only to its own telemetry and
// command results, and to subscribe only to its own commands and errors.
// Everything else, wildcards included, is denied.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	allowed := topicAllowed(string(cl.Properties.Username), topic, write)
	if !allowed {
		h.b.denied.Add(1)
		if h.b.opts.OnACLDenied != nil {
			h.b.opts.OnACLDenied()
		}
		h.b.log.Debug("mqtt acl denied", "device", string(cl.Properties.Username), "topic", telemetry.Truncate(topic, 128), "write", write)
	}
	return allowed
}

// OnPublish runs device messages through the bridge before mochi answers
// them: the PUBACK goes out only after this returns.
//
// Outcomes (checked against mochi v2.7.9): nil-with-Ignore acks without
// routing or retaining; packets.ErrRejectPacket withholds the PUBACK so an
// MQTT 3.1.1 device resends; a packets.Code answers an MQTT 5 QoS 1 publish
// with that reason code.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	s := h.session(cl)
	id, kind, ok := telemetry.ParseTopic(pk.TopicName)
	if s == nil || !ok || id != s.DeviceID || (kind != telemetry.KindTelemetry && kind != telemetry.KindCommandResult) {
		return pk, packets.ErrRejectPacket
	}
	a := h.b.opts.Bridge.Accept(context.Background(), s, bridge.Message{Kind: kind, Payload: pk.Payload})
	if a.Err != nil {
		return pk, h.refuse(cl, pk, a.ID, a.Err)
	}
	return pk, packets.CodeSuccessIgnore // an unknown or finished command result is a duplicate
}

// refuse answers a refused publish the way the client's protocol allows;
// msgID is the refused message's "id", echoed in the error frame.
//
// An MQTT 5 refusal goes back as a packets.Code, which mochi would log with
// the whole packet; the broker's logger drops that line (see
// mochiLogHandler) and this one logs it instead, short and rate-limited.
func (h *hook) refuse(cl *mqtt.Client, pk packets.Packet, msgID string, terr *telemetry.Error) error {
	ans := telemetry.AnswerFor(terr.Code)
	if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
		if ans.PubAck == 0 { // a code no publish earns: refuse it as malformed
			ans.PubAck = telemetry.ReasonPayloadFormatInvalid
		}
		code := packets.Code{Code: ans.PubAck, Reason: telemetry.Truncate(terr.Code+": "+terr.Message, 256)}
		if n, ok := h.publishLog.Allow(); ok {
			h.b.log.Debug("mqtt publish refused", "device", string(cl.Properties.Username), "topic", telemetry.Truncate(pk.TopicName, 128),
				"code", terr.Code, "reason_code", fmt.Sprintf("%#02x", code.Code), "suppressed", n)
		}
		return code
	}
	// MQTT 3.1.1 (or QoS 0): tell the device on its errors topic.
	id := string(cl.Properties.Username)
	if err := h.b.Publish(telemetry.Topic(id, telemetry.KindErrors), telemetry.EncodeError(msgID, terr), 0); err != nil {
		h.b.log.Debug("publish device error", "device", id, "err", err)
	}
	if ans.MQTT311 == telemetry.MQTTWithhold && pk.FixedHeader.Qos > 0 {
		// No PUBACK: the device keeps the message and sends it again.
		return packets.ErrRejectPacket
	}
	return packets.CodeSuccessIgnore
}

// conn is an MQTT session as the bridge sees it: it delivers commands on
// the device's commands topic (QoS 1) once the device subscribed, and ends
// the session (revoked, superseded, shutdown) without blocking the caller.
type conn struct {
	b          *Broker
	cl         *mqtt.Client
	commands   string
	subscribed atomic.Bool
	once       sync.Once
}

// Deliver publishes a command on the device's commands topic, QoS 1.
func (c *conn) Deliver(cmd telemetry.Command) bool {
	if !c.subscribed.Load() {
		return false
	}
	return c.b.Publish(c.commands, telemetry.EncodeCommand(cmd, false), 1) == nil
}

func (c *conn) Close(reason string) {
	c.once.Do(func() {
		code := packets.ErrNotAuthorized
		switch reason {
		case bridge.ReasonSuperseded:
			code = packets.ErrSessionTakenOver
		case bridge.ReasonServerShutdown:
			code = packets.ErrServerShuttingDown
		case bridge.ReasonSlowConsumer:
			code = packets.ErrQuotaExceeded
		}
		if !c.b.kicks.Add(c) { // shutting down: the broker's Close disconnects every client
			return
		}
		go func() { // owner: the broker; Run waits for kicks before closing
			defer c.b.kicks.Done(c)
			_ = c.b.srv.DisconnectClient(c.cl, code)
		}()
	})
}
