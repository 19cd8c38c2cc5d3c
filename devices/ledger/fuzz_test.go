package ledger

import (
	"encoding/binary"
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
