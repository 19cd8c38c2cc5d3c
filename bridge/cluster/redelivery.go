package cluster

import (
	"hash/maphash"
	"sync"
)

// durableMemory is how many of the latest durable messages a Cluster
// remembers to recognise redeliveries. A redelivery comes from the
// broker's in-flight window (max_inflight_messages per ingest
// connection), so it arrives within a few thousand messages of the first
// delivery; 65,536 covers several windows at about 1 MiB.
const durableMemory = 1 << 16

// delivered remembers the latest messages made durable, as 64-bit hashes
// of topic and payload, so that a broker's redelivery of one whose
// PUBACK it never saw (the broker restarted, a connection was lost
// between the spool's fsync and the PUBACK) is acknowledged again without
// being stored, fanned out and counted a second time.
//
// Only messages the broker marks as duplicates are checked against it: a
// device may legitimately send the same bytes twice (no ts, the hub
// stamps each), and those are two readings.
type delivered struct {
	seed maphash.Seed

	mu   sync.Mutex // guards the fields below
	set  map[uint64]struct{}
	ring []uint64 // the remembered keys, oldest at next once full
	next int
}

func newDelivered(n int) *delivered {
	return &delivered{
		seed: maphash.MakeSeed(),
		set:  make(map[uint64]struct{}, n),
		ring: make([]uint64, 0, n),
	}
}

// key identifies a message by its topic and payload.
func (d *delivered) key(topic string, payload []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(d.seed)
	h.WriteString(topic)
	h.WriteByte(0)
	h.Write(payload)
	return h.Sum64()
}

// remember records a message made durable, forgetting the oldest once
// full.
func (d *delivered) remember(k uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.set[k]; ok {
		return
	}
	if len(d.ring) < cap(d.ring) {
		d.ring = append(d.ring, k)
	} else {
		delete(d.set, d.ring[d.next])
		d.ring[d.next] = k
		d.next = (d.next + 1) % len(d.ring)
	}
	d.set[k] = struct{}{}
}

// seen reports whether a message with key k was made durable recently.
func (d *delivered) seen(k uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.set[k]
	return ok
}
