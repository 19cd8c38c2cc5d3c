package notify

import (
	"context"
	"sync"
	"time"
)

// memOutbox is an in-memory Outbox with the documented semantics (lease,
// oldest first, Delivered removes, Retry records and ends the lease), and
// counters the tests check.
type memOutbox struct {
	mu       sync.Mutex
	seq      int
	items    map[string]*memItem // target + "\x00" + key
	order    []*memItem          // oldest first; gone ones skipped
	head     int                 // order[:head] are all gone
	count    map[string]int      // per target
	maxClaim int                 // largest max passed to Claim
	nClaims  int                 // Claim calls
	inFlight int                 // claimed and not yet Delivered or Retried
	maxHeld  int                 // largest inFlight seen
	retries  []retryRecord
}

type memItem struct {
	d          Delivery
	seq        int
	leaseUntil time.Time
	leased     bool
	gone       bool
}

type retryRecord struct {
	key      string
	attempts int
	next     time.Time
	lastErr  string
}

func newMemOutbox() *memOutbox {
	return &memOutbox{items: map[string]*memItem{}, count: map[string]int{}}
}

func (m *memOutbox) add(target string, ns ...Notification) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, n := range ns {
		m.seq++
		it := &memItem{d: Delivery{Notification: n, Target: target}, seq: m.seq}
		m.items[target+"\x00"+n.Key] = it
		m.order = append(m.order, it)
		m.count[target]++
	}
}

func (m *memOutbox) Claim(_ context.Context, target string, now time.Time, lease time.Duration, max int) ([]Delivery, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.maxClaim = maxInt(m.maxClaim, max)
	m.nClaims++
	for m.head < len(m.order) && m.order[m.head].gone {
		m.head++
	}
	var due []*memItem
	for _, it := range m.order[m.head:] {
		if len(due) == max {
			break
		}
		if !it.gone && it.d.Target == target && !it.d.NextAt.After(now) && !it.leaseUntil.After(now) {
			due = append(due, it)
		}
	}
	out := make([]Delivery, len(due))
	for i, it := range due {
		it.leaseUntil = now.Add(lease)
		if !it.leased {
			it.leased = true
			m.inFlight++
		}
		out[i] = it.d
	}
	m.maxHeld = maxInt(m.maxHeld, m.inFlight)
	return out, nil
}

func (m *memOutbox) release(it *memItem) {
	if it.leased {
		it.leased = false
		m.inFlight--
	}
	it.leaseUntil = time.Time{}
}

func (m *memOutbox) Delivered(_ context.Context, target, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if it, ok := m.items[target+"\x00"+key]; ok {
		m.release(it)
		it.gone = true
		m.count[target]--
		delete(m.items, target+"\x00"+key)
	}
	return nil
}

func (m *memOutbox) Retry(_ context.Context, target, key string, attempts int, next time.Time, lastErr string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	it, ok := m.items[target+"\x00"+key]
	if !ok {
		return nil
	}
	m.release(it)
	it.d.Attempts, it.d.NextAt, it.d.LastError = attempts, next, lastErr
	m.retries = append(m.retries, retryRecord{key, attempts, next, lastErr})
	return nil
}

func (m *memOutbox) Queued(_ context.Context, target string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.count[target], nil
}

func (m *memOutbox) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.items)
}

func (m *memOutbox) retryLog() []retryRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]retryRecord(nil), m.retries...)
}

func (m *memOutbox) stats() (maxClaim, maxHeld int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.maxClaim, m.maxHeld
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

func (m *memOutbox) claims() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nClaims
}
