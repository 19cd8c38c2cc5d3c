package ledger

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Window is how many sequence numbers behind the newest one a device's
// tracker remembers exactly, one bit each (RFC 4303 section 3.4.3's
// anti-replay window, 4096 wide): within it a resend is told apart from a
// late fill; further behind, only the open gaps remember what is missing.
const Window = 4096

// DefaultMaxOpenGaps bounds the open gaps one device keeps; beyond it the
// oldest open gap is closed as expired (still counted in Gaps).
const DefaultMaxOpenGaps = 1000

// keptClosed is how many closed gaps a device keeps for operators.
const keptClosed = 32

// Gap is one range of sequence numbers a device skipped: From and To are
// inclusive missing numbers within Boot. ClosedAt is set when late
// resends filled it (or, with Expired, when newer gaps pushed it out of
// the bounded list: then the hub stopped watching, it did not see it
// filled).
type Gap struct {
	Boot      string     `json:"boot"`
	From      uint64     `json:"from"`
	To        uint64     `json:"to"`
	NoticedAt time.Time  `json:"noticed_at"`
	ClosedAt  *time.Time `json:"closed_at"`
	Expired   bool       `json:"expired,omitempty"`
	// Epoch counts the times Boot's counter went back without a new boot
	// before this gap: a gap of an earlier count is never filled by
	// numbers of a later one.
	Epoch uint32 `json:"epoch,omitempty"`
	// Cut is set while the gap is provisional (shared mode, shared.go):
	// the merge second it was noticed at. It is confirmed, and counted,
	// once the merges passed Cut by confirmAfter seconds still missing
	// its numbers; filled before that, it never existed. Views list
	// confirmed gaps only.
	Cut int64 `json:"cut,omitempty"`
	// Orig is a provisional gap's From when it was opened, kept by the
	// parts a fill splits it into, so a split gap is counted once.
	Orig uint64 `json:"orig,omitempty"`
}

// provisional reports whether g is not confirmed yet.
func (g *Gap) provisional() bool { return g.Cut != 0 }

// slot is the sequence state of one boot: Next is one past the highest
// seq seen, Base the lowest, Bits the seqs seen in [Next-Window, Next)
// (bit s%Window).
type slot struct {
	Boot  string
	Epoch uint32
	Used  bool
	Base  uint64
	Next  uint64
	Bits  [Window / 64]uint64
}

// slotJSON is a slot as persisted: the window as 512 bytes (base64 in
// JSON, 684 characters) rather than 64 decimal numbers.
type slotJSON struct {
	Boot  string `json:"boot"`
	Epoch uint32 `json:"epoch,omitempty"`
	Used  bool   `json:"used"`
	Base  uint64 `json:"base"`
	Next  uint64 `json:"next"`
	Bits  []byte `json:"bits"`
}

// MarshalJSON encodes the slot for the store.
func (s slot) MarshalJSON() ([]byte, error) {
	b := make([]byte, Window/8)
	for i, w := range s.Bits {
		binary.LittleEndian.PutUint64(b[i*8:], w)
	}
	return json.Marshal(slotJSON{Boot: s.Boot, Epoch: s.Epoch, Used: s.Used, Base: s.Base, Next: s.Next, Bits: b})
}

// UnmarshalJSON decodes a stored slot; a window of the wrong size is
// an error (the record is then not loaded).
func (s *slot) UnmarshalJSON(data []byte) error {
	var j slotJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return err
	}
	if len(j.Bits) != 0 && len(j.Bits) != Window/8 {
		return fmt.Errorf("ledger slot: window of %d bytes, want %d", len(j.Bits), Window/8)
	}
	*s = slot{Boot: j.Boot, Epoch: j.Epoch, Used: j.Used, Base: j.Base, Next: j.Next}
	for i := range s.Bits {
		if len(j.Bits) > 0 {
			s.Bits[i] = binary.LittleEndian.Uint64(j.Bits[i*8:])
		}
	}
	return nil
}

func (s *slot) has(n uint64) bool { return s.Bits[(n%Window)/64]&(1<<(n%64)) != 0 }
func (s *slot) set(n uint64)      { s.Bits[(n%Window)/64] |= 1 << (n % 64) }
func (s *slot) clear(n uint64)    { s.Bits[(n%Window)/64] &^= 1 << (n % 64) }

// advance moves Next to n+1 (n >= Next), forgetting what falls out of
// the window: at most Window bit clears, whatever the jump.
func (s *slot) advance(n uint64) {
	if n-s.Next >= Window {
		s.Bits = [Window / 64]uint64{}
	} else {
		for k := s.Next; k <= n; k++ {
			s.clear(k)
		}
	}
	s.set(n)
	s.Next = n + 1
}

// advanceTo marks Next..b (b >= Next) seen and moves Next to b+1: at
// most Window bit sets, whatever the span.
func (s *slot) advanceTo(b uint64) {
	if b-s.Next >= Window {
		for i := range s.Bits {
			s.Bits[i] = ^uint64(0)
		}
	} else {
		for k := s.Next; k <= b; k++ {
			s.set(k)
		}
	}
	s.Next = b + 1
}

// seqState is a device's sequence tracking: the current boot (slots[0])
// and the one before (slots[1]), so readings of the previous boot that a
// device resends after restarting are neither a reset nor new gaps; its
// open gaps, oldest first, bounded by maxOpen; the last closed gaps.
type seqState struct {
	Slots  [2]slot          `json:"slots"`
	Open   []Gap            `json:"open"`
	Closed [keptClosed]*Gap `json:"closed"`
	NextC  int              `json:"next_closed"`
	// Fuzzy are ranges a merge marked seen without knowing every number
	// in them (spans joined over the bound, shared.go), at most
	// maxFuzzy, newest last: a number of one coming again far behind is
	// neither a reset nor a duplicate.
	Fuzzy []fuzzyRange `json:"fuzzy,omitempty"`
	// cut, while a merge applies numbers (shared.go), makes the gaps
	// opened provisional, noticed at that merge second; expired counts
	// the provisional gaps the bound expired meanwhile.
	cut     int64
	expired uint64
}

// fuzzyRange is one of seqState.Fuzzy.
type fuzzyRange struct {
	Boot     string `json:"boot"`
	Epoch    uint32 `json:"epoch,omitempty"`
	From, To uint64
}

// maxFuzzy bounds seqState.Fuzzy.
const maxFuzzy = 16

// addFuzzy remembers [from, to] of boot as not known exactly.
func (st *seqState) addFuzzy(boot string, from, to uint64) {
	var epoch uint32
	if sl := st.slotOf(boot); sl != nil {
		epoch = sl.Epoch
	}
	st.Fuzzy = append(st.Fuzzy, fuzzyRange{Boot: boot, Epoch: epoch, From: from, To: to})
	if len(st.Fuzzy) > maxFuzzy {
		st.Fuzzy = st.Fuzzy[1:]
	}
}

// fuzzyEnd returns the end of the fuzzy range of boot holding n.
func (st *seqState) fuzzyEnd(boot string, epoch uint32, n uint64) (uint64, bool) {
	for _, f := range st.Fuzzy {
		if f.Boot == boot && f.Epoch == epoch && n >= f.From && n <= f.To {
			return f.To, true
		}
	}
	return 0, false
}

// valid reports whether a stored tracker is one this code could have
// written: a record edited or corrupted in the store is started again
// rather than trusted (an index out of range, a loop to 2^64).
func (st *seqState) valid(maxOpen int) bool {
	if st.NextC < 0 || st.NextC >= keptClosed || len(st.Open) > maxOpen || len(st.Fuzzy) > maxFuzzy {
		return false
	}
	for _, sl := range st.Slots {
		if sl.Used && (sl.Next > telemetry.MaxSeq+1 || sl.Base > sl.Next) {
			return false
		}
	}
	for _, g := range st.Open {
		if g.From > g.To || g.To > telemetry.MaxSeq {
			return false
		}
	}
	for _, f := range st.Fuzzy {
		if f.From > f.To {
			return false
		}
	}
	return true
}

// confirmedOpen is the number of open gaps that are not provisional.
func (st *seqState) confirmedOpen() int {
	n := 0
	for i := range st.Open {
		if !st.Open[i].provisional() {
			n++
		}
	}
	return n
}

// event is what one seq did, for the counters.
type event uint8

const (
	evNew event = iota
	evGap
	evDuplicate
	evReset
	evFilled
)

// observe records seq n of boot at now and says what it was. Bounded: no
// allocation per missing number, at most Window bit operations, a scan of
// at most maxOpen gaps for a seq behind the newest.
func (st *seqState) observe(boot string, n uint64, now time.Time, maxOpen int) (ev event, reset bool) {
	sl := &st.Slots[0]
	switch {
	case sl.Used && sl.Boot == boot:
	case st.Slots[1].Used && st.Slots[1].Boot == boot:
		sl = &st.Slots[1]
	default:
		reset = sl.Used // a new boot; the first one ever is no reset
		st.Slots[1] = st.Slots[0]
		st.Slots[0] = slot{Boot: boot}
	}
	if !sl.Used {
		sl.Used, sl.Base, sl.Next = true, n, n
		sl.advance(n)
		return evNew, reset
	}
	switch {
	case n >= sl.Next:
		ev = evNew
		if n > sl.Next {
			st.openGap(Gap{Boot: boot, Epoch: sl.Epoch, From: sl.Next, To: n - 1, NoticedAt: now}, now, maxOpen)
			ev = evGap
		}
		sl.advance(n)
		return ev, reset
	case n+Window >= sl.Next: // within the window (n <= MaxSeq: no overflow)
		if n < sl.Base { // before the first seq seen: never a gap
			sl.Base = n
			sl.set(n)
			return evNew, reset
		}
		if sl.has(n) {
			return evDuplicate, reset
		}
		sl.set(n)
		if st.fill(boot, sl.Epoch, n, now, maxOpen) {
			return evFilled, reset
		}
		return evNew, reset // its gap expired from the list
	default: // further behind than the window
		if st.fill(boot, sl.Epoch, n, now, maxOpen) {
			return evFilled, reset
		}
		if _, ok := st.fuzzyEnd(boot, sl.Epoch, n); ok {
			return evNew, reset // perhaps a hidden gap's fill: not a reset
		}
		// Backwards beyond the window and in no open gap: the counter
		// went back without a new boot. Start again from n, in a new
		// epoch, so the new numbers never fill the old count's gaps.
		*sl = slot{Boot: boot, Epoch: sl.Epoch + 1}
		sl.Used, sl.Base, sl.Next = true, n, n
		sl.advance(n)
		return evNew, true
	}
}

// openGap appends g, expiring the oldest open gap beyond maxOpen.
func (st *seqState) openGap(g Gap, now time.Time, maxOpen int) {
	g.Cut, g.Orig = st.cut, g.From
	st.Open = append(st.Open, g)
	st.trim(now, maxOpen)
}

// trim expires the oldest open gaps beyond maxOpen.
func (st *seqState) trim(now time.Time, maxOpen int) {
	for len(st.Open) > maxOpen {
		old := st.Open[0]
		old.Expired = true
		if old.provisional() { // counted and kept like a confirmed gap
			st.expired++
			old.Cut, old.Orig = 0, 0
		}
		st.close(old, now)
		st.Open = append(st.Open[:0], st.Open[1:]...)
	}
}

// close keeps g, closed at now, among the last closed gaps; a
// provisional gap is forgotten (it was never reported).
func (st *seqState) close(g Gap, now time.Time) {
	if g.provisional() {
		return
	}
	at := now
	g.ClosedAt = &at
	st.Closed[st.NextC%keptClosed] = &g
	st.NextC = (st.NextC + 1) % keptClosed
}

// fill removes n from the open gap of boot holding it, splitting it when
// n is inside; a gap left empty is closed. It reports whether n was in a
// gap.
func (st *seqState) fill(boot string, epoch uint32, n uint64, now time.Time, maxOpen int) bool {
	_, ok := st.fillSpan(boot, epoch, n, n, now, maxOpen)
	return ok
}

// fillSpan removes [a, min(b, To)] from the open gap of boot holding a,
// closing it when nothing is left and splitting it when the span is
// inside. It returns the last number filled, or false when a is in no
// open gap.
func (st *seqState) fillSpan(boot string, epoch uint32, a, b uint64, now time.Time, maxOpen int) (uint64, bool) {
	for i := range st.Open {
		g := &st.Open[i]
		if g.Boot != boot || g.Epoch != epoch || a < g.From || a > g.To {
			continue
		}
		hi := min(b, g.To)
		switch {
		case a == g.From && hi == g.To:
			done := *g
			st.Open = append(st.Open[:i], st.Open[i+1:]...)
			st.close(done, now)
		case a == g.From:
			g.From = hi + 1
		case hi == g.To:
			g.To = a - 1
		default: // split: the upper part keeps the gap's notice time
			upper := Gap{Boot: boot, Epoch: epoch, From: hi + 1, To: g.To, NoticedAt: g.NoticedAt, Cut: g.Cut, Orig: g.Orig}
			g.To = a - 1
			st.Open = append(st.Open, Gap{})
			copy(st.Open[i+2:], st.Open[i+1:])
			st.Open[i+1] = upper
			st.trim(now, maxOpen)
		}
		return hi, true
	}
	return 0, false
}

// slotOf returns the slot tracking boot, or nil.
func (st *seqState) slotOf(boot string) *slot {
	for i := range st.Slots {
		if st.Slots[i].Used && st.Slots[i].Boot == boot {
			return &st.Slots[i]
		}
	}
	return nil
}

// seqCounts is what a span of numbers did, for the counters.
type seqCounts struct{ gaps, duplicates, resets uint64 }

func (c *seqCounts) add(ev event, reset bool) {
	if reset {
		c.resets++
	}
	switch ev {
	case evGap:
		c.gaps++
	case evDuplicate:
		c.duplicates++
	}
}

// observeSpan records a..b (a <= b) of boot as observing them one by one
// in ascending order would, in work bounded by the window and the open
// gaps rather than by b-a: numbers above the newest are marked in bulk
// (they open no gap), numbers far behind fill open gaps span by span.
// Several instances' merged observations arrive this way (shared.go),
// and a span there can be large.
func (st *seqState) observeSpan(boot string, a, b uint64, now time.Time, maxOpen int) seqCounts {
	var c seqCounts
	if a > b || b > telemetry.MaxSeq { // not from any instance (valid checks stored spans)
		return c
	}
	for {
		if sl := st.slotOf(boot); sl != nil {
			switch {
			case a == sl.Next && a < b: // in order above the newest: no gap, no duplicate
				sl.advanceTo(b)
				return c
			case a+Window < sl.Next: // far behind: fills of open gaps, in bulk, up to the window
				if hi, ok := st.fillSpan(boot, sl.Epoch, a, min(b, sl.Next-Window-1), now, maxOpen); ok {
					if hi == b {
						return c
					}
					a = hi + 1
					continue
				}
				if end, ok := st.fuzzyEnd(boot, sl.Epoch, a); ok {
					hi := min(b, end, sl.Next-Window-1)
					if hi == b {
						return c
					}
					a = hi + 1
					continue
				}
			}
		}
		c.add(st.observe(boot, a, now, maxOpen))
		if a == b {
			return c
		}
		a++
	}
}
