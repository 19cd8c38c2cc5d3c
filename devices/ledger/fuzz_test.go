package ledger

import (
	"encoding/binary"
	"slices"
	"testing"
)

// FuzzSeqTracker holds the tracker to a model for any order of seqs of
// one boot within the window (the part where the hub knows exactly):
// every seq seen is in no open gap, every number between the first and
// the highest seen that was not seen is in exactly one open gap, and
// every repeat is one duplicate.
func FuzzSeqTracker(f *testing.F) {
	f.Add([]byte{0, 1, 0, 2, 0, 5, 0, 3, 0, 4})
	f.Add([]byte{0, 10, 0, 1, 0, 5, 0, 5, 0, 9, 0, 2})
	f.Add([]byte{0, 0, 0, 10, 0, 5, 0, 7, 0, 5, 0, 1, 0, 9}) // splits, edges, a repeat
	f.Add([]byte{15, 159, 0, 0, 7, 208, 7, 207})
	f.Fuzz(func(t *testing.T, data []byte) {
		st := &seqState{}
		seen := map[uint64]bool{}
		var lo, hi uint64
		for i := 0; i+1 < len(data) && i < 2000; i += 2 {
			n := uint64(binary.BigEndian.Uint16(data[i:])) % 4000 // within the window of 4,096
			ev, reset := st.observe("a", n, t0, DefaultMaxOpenGaps)
			if reset {
				t.Fatalf("reset for seq %d within the window", n)
			}
			if len(seen) == 0 {
				lo, hi = n, n
			}
			if seen[n] {
				if ev != evDuplicate {
					t.Fatalf("repeat of %d not a duplicate (%d)", n, ev)
				}
			}
			seen[n] = true
			lo, hi = min(lo, n), max(hi, n)
		}
		covered := map[uint64]int{}
		for _, g := range st.Open {
			if g.From > g.To {
				t.Fatalf("empty gap %+v", g)
			}
			for k := g.From; k <= g.To; k++ {
				covered[k]++
			}
		}
		for k := lo; k <= hi && len(seen) > 0; k++ {
			switch {
			case seen[k] && covered[k] != 0:
				t.Fatalf("seq %d seen but in an open gap %v", k, st.Open)
			case !seen[k] && k > lo && covered[k] != 1:
				// Below the first seq seen is never a gap; above it every
				// unseen number is in one gap. (lo itself is always seen.)
				if first := firstSeen(data); k > first {
					t.Fatalf("seq %d unseen, in %d open gaps: %v", k, covered[k], st.Open)
				}
			}
		}
	})
}

// firstSeen is the first seq of data as FuzzSeqTracker reads it.
func firstSeen(data []byte) uint64 {
	if len(data) < 2 {
		return 0
	}
	return uint64(binary.BigEndian.Uint16(data)) % 4000
}

// FuzzObserveSpan holds observeSpan (how settled spans from several
// instances are applied) to observing the same numbers one by one, in
// ascending order: the same slots, open gaps and counts, for any mix of
// two boots and spans ahead of, inside and far behind the window. (A
// third boot makes the tracker forget the oldest one's slot while its
// gaps stay open; a number of that boot coming back then may fill either
// of two overlapping gaps, and the order of fills decides which. And
// the bound on open gaps is not reached: one by one, a span filling a
// gap from its middle to its end splits it first, which at the bound
// expires the oldest gap; in bulk it only shrinks.)
func FuzzObserveSpan(f *testing.F) {
	f.Add([]byte{0, 0, 1, 0, 5, 0, 0, 2, 0, 9, 0, 3})
	f.Add([]byte{0, 0, 1, 0, 200, 10, 0, 100, 0, 50, 0, 20})      // a jump beyond the window, then spans far behind
	f.Add([]byte{0, 0, 5, 0, 1, 1, 1, 0, 0, 1, 2, 0, 1, 0, 3, 0}) // boots changing
	f.Fuzz(func(t *testing.T, data []byte) {
		bulk, one := &seqState{}, &seqState{}
		var cb, co seqCounts
		for i := 0; i+3 < len(data) && i < 400; i += 4 {
			boot := string(rune('a' + data[i]%2))
			// Starts up to 2^16*64 apart (beyond the window), spans up to 255 long.
			a := uint64(binary.BigEndian.Uint16(data[i+1:])) * uint64(1+data[i]%64)
			b := a + uint64(data[i+3])
			c := bulk.observeSpan(boot, a, b, t0, DefaultMaxOpenGaps)
			cb.gaps, cb.duplicates, cb.resets = cb.gaps+c.gaps, cb.duplicates+c.duplicates, cb.resets+c.resets
			for n := a; n <= b; n++ {
				co.add(one.observe(boot, n, t0, DefaultMaxOpenGaps))
			}
			if cb != co {
				t.Fatalf("after %s:%d-%d counts %+v, one by one %+v", boot, a, b, cb, co)
			}
			if bulk.Slots != one.Slots {
				for k := range bulk.Slots {
					x, y := bulk.Slots[k], one.Slots[k]
					if x != y {
						diff := []uint64{}
						for n := range uint64(Window) {
							if x.Bits[n/64]&(1<<(n%64)) != y.Bits[n/64]&(1<<(n%64)) {
								diff = append(diff, n)
							}
						}
						t.Errorf("slot %d: %s/%d used %v base %d next %d | %s/%d used %v base %d next %d; bits differ at %v", k,
							x.Boot, x.Epoch, x.Used, x.Base, x.Next, y.Boot, y.Epoch, y.Used, y.Base, y.Next, diff)
					}
				}
				t.Fatalf("after %s:%d-%d slots differ", boot, a, b)
			}
			if !slices.Equal(bulk.Open, one.Open) {
				t.Fatalf("after %s:%d-%d open gaps\n%v\none by one\n%v", boot, a, b, bulk.Open, one.Open)
			}
		}
	})
}
