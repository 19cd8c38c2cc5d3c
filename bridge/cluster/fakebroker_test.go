package cluster

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"
)

// fakeBroker is an in-memory MQTT broker behind our Client interface, for
// tests of cluster behaviour without Mosquitto: topic filters with + and
// #, shared subscriptions ($share/{group}/{filter}, one subscriber of the
// group per message, round robin), each client's messages delivered in
// order on its own goroutine, and a record of each message's Ack. It has
// no sessions, QoS or retained messages: what it delivers, it delivers
// once.
type fakeBroker struct {
	mu      sync.Mutex // guards clients and next
	clients map[*fakeClient]struct{}
	next    int // round robin over a shared group's subscribers
}

func newFakeBroker() *fakeBroker {
	return &fakeBroker{clients: map[*fakeClient]struct{}{}}
}

// factory is the broker's ClientFactory.
func (b *fakeBroker) factory(o ClientOptions) Client {
	return &fakeClient{b: b, o: o, subs: map[string]byte{}}
}

// fakeClient is one connection to a fakeBroker.
type fakeClient struct {
	b *fakeBroker
	o ClientOptions

	mu    sync.Mutex // guards the fields below; never held while delivering
	open  bool
	subs  map[string]byte
	inbox chan *fakeMsg // bounded; full: the publisher waits, as TCP would make it
	stop  chan struct{}
	done  chan struct{} // closed when the delivery goroutine ended
}

// fakeMsg is a delivered message; acked is closed by its first Ack.
type fakeMsg struct {
	topic   string
	payload []byte
	once    sync.Once
	acked   chan struct{}
}

func (m *fakeMsg) Topic() string   { return m.topic }
func (m *fakeMsg) Payload() []byte { return m.payload }
func (m *fakeMsg) Duplicate() bool { return false }
func (m *fakeMsg) Ack()            { m.once.Do(func() { close(m.acked) }) }

// isAcked reports whether the receiver acknowledged m.
func (m *fakeMsg) isAcked() bool {
	select {
	case <-m.acked:
		return true
	default:
		return false
	}
}

// Connect connects at once and starts the client's delivery goroutine
// (owner: the client; stopped and waited for by Disconnect).
func (c *fakeClient) Connect() {
	c.mu.Lock()
	if c.open {
		c.mu.Unlock()
		return
	}
	c.open = true
	c.inbox = make(chan *fakeMsg, 1024)
	c.stop, c.done = make(chan struct{}), make(chan struct{})
	inbox, stop, done := c.inbox, c.stop, c.done
	c.mu.Unlock()
	c.b.mu.Lock()
	c.b.clients[c] = struct{}{}
	c.b.mu.Unlock()
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case m := <-inbox:
				if c.o.OnMessage != nil {
					c.o.OnMessage(m)
				}
			}
		}
	}()
	if c.o.OnConnect != nil {
		c.o.OnConnect(c)
	}
}

func (c *fakeClient) IsConnectionOpen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open
}

func (c *fakeClient) Subscribe(_ context.Context, filters map[string]byte) (map[string]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.open {
		return nil, errors.New("fake broker: not connected")
	}
	granted := map[string]byte{}
	for f, q := range filters {
		c.subs[f] = q
		granted[f] = q
	}
	return granted, nil
}

// Publish delivers at once; the token is done when every receiver has it
// in its inbox.
func (c *fakeClient) Publish(topic string, _ byte, payload []byte) Token {
	c.b.publish(topic, payload)
	return doneToken{}
}

func (c *fakeClient) Disconnect(time.Duration) {
	c.b.mu.Lock()
	delete(c.b.clients, c)
	c.b.mu.Unlock()
	c.mu.Lock()
	if !c.open {
		c.mu.Unlock()
		return
	}
	c.open = false
	close(c.stop)
	done := c.done
	c.mu.Unlock()
	<-done
}

// publish hands topic's message to every matching plain subscriber and to
// one subscriber per shared group, and returns the messages delivered.
func (b *fakeBroker) publish(topic string, payload []byte) []*fakeMsg {
	type target struct {
		c     *fakeClient
		inbox chan *fakeMsg
		stop  chan struct{}
	}
	var plain []target
	shared := map[string][]target{}
	b.mu.Lock()
	for c := range b.clients {
		c.mu.Lock()
		t := target{c, c.inbox, c.stop}
		hit := false
		for f := range c.subs {
			if rest, ok := strings.CutPrefix(f, "$share/"); ok {
				group, filter, _ := strings.Cut(rest, "/")
				if topicMatches(filter, topic) {
					shared[group] = append(shared[group], t)
				}
			} else if !hit && topicMatches(f, topic) {
				hit = true
				plain = append(plain, t)
			}
		}
		c.mu.Unlock()
	}
	for _, ts := range shared {
		b.next++
		plain = append(plain, ts[b.next%len(ts)])
	}
	b.mu.Unlock()
	var out []*fakeMsg
	for _, t := range plain {
		m := &fakeMsg{topic: topic, payload: append([]byte(nil), payload...), acked: make(chan struct{})}
		select {
		case t.inbox <- m:
			out = append(out, m)
		case <-t.stop: // disconnected meanwhile: lost, as QoS 0 would be
		}
	}
	return out
}

// topicMatches reports whether topic matches filter (+ one level, #
// the rest).
func topicMatches(filter, topic string) bool {
	fs, ts := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fs {
		if f == "#" {
			return true
		}
		if i >= len(ts) || (f != "+" && f != ts[i]) {
			return false
		}
	}
	return len(fs) == len(ts)
}

// doneToken is a publish that completed.
type doneToken struct{}

func (doneToken) Done() <-chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}

func (doneToken) Error() error { return nil }
