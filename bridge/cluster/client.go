package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// The broker client: the few operations the cluster uses, behind an
// interface so that cluster behaviour is testable with an in-memory
// broker, and a factory in Options (as telegraf's mqtt_consumer does).
// NewPahoClient, the default, is the hub's only use of paho.

// Client is one connection to the broker, with its own persistent session.
type Client interface {
	// Connect starts connecting and returns at once; the client keeps
	// reconnecting in the background until Disconnect, calling
	// ClientOptions.OnConnect after each connect.
	Connect()
	// IsConnectionOpen reports whether the connection is up now.
	IsConnectionOpen() bool
	// Subscribe subscribes to filters (filter -> QoS) and waits for the
	// broker's answer until ctx ends: the QoS granted per filter, 0x80 for
	// a refused one. Messages of every subscription go to
	// ClientOptions.OnMessage.
	Subscribe(ctx context.Context, filters map[string]byte) (map[string]byte, error)
	// Publish sends payload on topic (never retained) with qos and
	// returns without waiting; the Token tells when it went out (QoS 1:
	// when the broker acknowledged it).
	Publish(topic string, qos byte, payload []byte) Token
	// Disconnect closes the connection, waiting up to quiesce for work in
	// flight; no reconnect follows.
	Disconnect(quiesce time.Duration)
}

// Token is a publish under way.
type Token interface {
	// Done is closed when the publish completed or failed.
	Done() <-chan struct{}
	// Error is why it failed, once Done is closed; nil if it did not.
	Error() error
}

// Message is one message from the broker.
type Message interface {
	Topic() string
	Payload() []byte
	// Duplicate reports whether the broker marked it a redelivery.
	Duplicate() bool
	// Ack acknowledges it (QoS 1: the PUBACK); the broker redelivers an
	// unacknowledged message to the session after a reconnect.
	Ack()
}

// Will is a message the broker publishes when the connection breaks.
type Will struct {
	Topic   string
	Payload []byte
	QoS     byte
}

// ClientOptions configures one broker connection. The callbacks run on
// the client's own goroutines; none may block unboundedly.
type ClientOptions struct {
	BrokerURL string
	ClientID  string
	Username  string
	Password  string
	TLS       *tls.Config // nil: system roots for ssl:// and wss://
	Will      *Will       // nil: none
	// OnMessage takes every message of every subscription, in the order
	// the connection received them; messages are acknowledged only by
	// Message.Ack.
	OnMessage func(Message)
	// OnConnect runs after each connect, to subscribe.
	OnConnect func(Client)
	// OnLost runs when an open connection broke.
	OnLost func(error)
	// OnConnectFailed runs for each failed connection attempt.
	OnConnectFailed func(error)
}

// NewPahoClient is the default ClientFactory: paho's client, MQTT 3.1.1,
// a persistent session (clean session off), manual acknowledgements in
// order, and automatic reconnects.
func NewPahoClient(o ClientOptions) Client {
	pc := &pahoClient{}
	po := paho.NewClientOptions().
		AddBroker(o.BrokerURL).
		SetClientID(o.ClientID).
		SetProtocolVersion(4). // MQTT 3.1.1; no silent fallback to 3.1, whose errors would mislead
		SetUsername(o.Username).
		SetPassword(o.Password).
		SetCleanSession(false). // the broker keeps our shared subscriptions' messages while we are away
		SetStore(newCopyingStore()).
		SetAutoAckDisabled(true).
		SetOrderMatters(true). // handlers only hand off; workers do the waiting
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(10 * time.Second).
		SetKeepAlive(30 * time.Second).
		SetPingTimeout(10 * time.Second).
		SetWriteTimeout(10 * time.Second).
		SetConnectTimeout(10 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			if o.OnMessage != nil {
				o.OnMessage(m)
			}
		}).
		SetOnConnectHandler(func(paho.Client) {
			if o.OnConnect != nil {
				o.OnConnect(pc)
			}
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			if o.OnLost != nil {
				o.OnLost(err)
			}
		}).
		SetConnectionNotificationHandler(func(_ paho.Client, n paho.ConnectionNotification) {
			if f, ok := n.(paho.ConnectionNotificationFailed); ok && o.OnConnectFailed != nil {
				o.OnConnectFailed(f.Reason)
			}
		})
	if o.TLS != nil {
		po.SetTLSConfig(o.TLS)
	}
	if o.Will != nil {
		po.SetBinaryWill(o.Will.Topic, o.Will.Payload, o.Will.QoS, false)
	}
	pc.c = paho.NewClient(po)
	return pc
}

// pahoClient adapts paho.Client to Client.
type pahoClient struct {
	c paho.Client // set once by NewPahoClient before any callback can run
}

func (p *pahoClient) Connect()               { p.c.Connect() }
func (p *pahoClient) IsConnectionOpen() bool { return p.c.IsConnectionOpen() }

func (p *pahoClient) Publish(topic string, qos byte, payload []byte) Token {
	return p.c.Publish(topic, qos, false, payload)
}

func (p *pahoClient) Subscribe(ctx context.Context, filters map[string]byte) (map[string]byte, error) {
	tok := p.c.SubscribeMultiple(filters, nil) // messages go to the default handler
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return nil, fmt.Errorf("subscribe: %w", ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	st, ok := tok.(*paho.SubscribeToken)
	if !ok {
		return nil, fmt.Errorf("subscribe: unexpected token %T", tok)
	}
	return st.Result(), nil
}

func (p *pahoClient) Disconnect(quiesce time.Duration) {
	p.c.Disconnect(uint(quiesce / time.Millisecond))
}
