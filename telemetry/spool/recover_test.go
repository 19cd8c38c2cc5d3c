package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// writeRecords appends n records (line(0) .. line(n-1)) and closes the
// spool; it returns the segment files in order.
func writeRecords(t *testing.T, dir string, opts Options, n int) []string {
	t.Helper()
	s := open(t, dir, opts)
	for i := range n {
		if err := s.Append(context.Background(), 1, line(i)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	segs, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

// recordOffsets returns the offset of each record in a segment's bytes,
// up to the preallocated zeros of a segment still active.
func recordOffsets(t *testing.T, b []byte) []int {
	t.Helper()
	b = bytes.TrimRight(b, "\x00") // a record ends in its payload, never in a zero
	var offs []int
	for off := 0; off < len(b); {
		n, _, _, ok := parseRecord(b[off:])
		if !ok {
			t.Fatalf("test segment not intact at %d", off)
		}
		offs = append(offs, off)
		off += int(n)
	}
	return offs
}

// replayedLines reads everything the spool replays, one entry per line.
func replayedLines(t *testing.T, s *Spool) map[string]int {
	t.Helper()
	got := map[string]int{}
	for _, l := range strings.SplitAfter(string(readAll(t, s, s.Confirmed()).Data), "\n") {
		if l != "" {
			got[l]++
		}
	}
	return got
}

// TestRecoverPastCorruption flips one byte at many places of a segment:
// every record but the one hit is replayed, exactly once; the hit one is
// counted and its bytes are in the quarantine file; a second Open finds
// nothing more to repair.
func TestRecoverPastCorruption(t *testing.T) {
	const n = 40
	type place struct {
		name  string
		field int // offset within the record; negative: from its end
	}
	places := []place{
		{"length low byte", 0}, {"length high byte", 3}, {"checksum", 5}, {"points", 8},
		{"append time", 13}, {"append time high byte", 19}, {"payload first byte", headerSize},
		{"payload middle", headerSize + 12}, {"payload last byte", -1},
	}
	records := []struct {
		name string
		i    int
	}{{"first record", 0}, {"second record", 1}, {"middle record", n / 2}, {"last record", n - 1}}
	for _, rec := range records {
		for _, pl := range places {
			for _, flip := range []byte{0x01, 0x80, 0xff} {
				t.Run(fmt.Sprintf("%s/%s/%#x", rec.name, pl.name, flip), func(t *testing.T) {
					dir := filepath.Join(t.TempDir(), "spool")
					seg := writeRecords(t, dir, Options{}, n)[0]
					b, err := os.ReadFile(seg)
					if err != nil {
						t.Fatal(err)
					}
					offs := append(recordOffsets(t, b), len(b))
					start, end := offs[rec.i], offs[rec.i+1]
					at := start + pl.field
					if pl.field < 0 {
						at = end + pl.field
					}
					b[at] ^= flip
					damaged := bytes.Clone(b[start:end])
					if err := os.WriteFile(seg, b, 0o640); err != nil {
						t.Fatal(err)
					}

					s := open(t, dir, Options{})
					got := replayedLines(t, s)
					st := s.Stats()
					for i := range n {
						want := 1
						if i == rec.i {
							want = got[string(line(i))] // the hit record may be lost, nothing more
						}
						if c := got[string(line(i))]; c != want {
							t.Errorf("line %d replayed %d times, want %d", i, c, want)
						}
					}
					if len(got) > n {
						t.Errorf("replayed %d distinct lines, want at most %d: %v", len(got), n, got)
					}
					if st.RecoveredTorn > 0 {
						// Only a length flipped past the end of the last record
						// of the last segment looks like a crash's torn tail.
						if rec.i != n-1 || pl.field > 3 {
							t.Errorf("damage at %s counted as a torn tail", pl.name)
						}
					} else {
						if st.CorruptRecords != 1 || st.CorruptBytes != int64(end-start) {
							t.Errorf("counted %d records, %d bytes, want 1, %d", st.CorruptRecords, st.CorruptBytes, end-start)
						}
						q, err := os.ReadFile(dir + ".quarantine")
						if err != nil || !bytes.Contains(q, damaged) {
							t.Errorf("quarantine lacks the damaged record (%v)", err)
						}
					}
					// The spool goes on, and the repair holds.
					if err := s.Append(context.Background(), 1, line(n)); err != nil {
						t.Fatal(err)
					}
					s.Close()
					s2 := open(t, dir, Options{})
					again := replayedLines(t, s2)
					if st2 := s2.Stats(); st2.CorruptBytes != 0 || st2.RecoveredTorn != 0 {
						t.Errorf("second Open found %d corrupt bytes, %d torn", st2.CorruptBytes, st2.RecoveredTorn)
					}
					for l, c := range got {
						if again[l] != c {
							t.Errorf("second Open replays %q %d times, first %d", l, again[l], c)
						}
					}
					if again[string(line(n))] != 1 {
						t.Errorf("append after recovery not replayed")
					}
				})
			}
		}
	}
}

// TestRecoverSegments: damage at the end of a segment that is not the last
// one written is corruption, not a torn tail, and the segments after it
// are replayed whole; a huge length field allocates nothing of its size.
func TestRecoverSegments(t *testing.T) {
	const n = 400
	opts := Options{SegmentBytes: 4096}
	tests := []struct {
		name   string
		damage func(b []byte, offs []int)
	}{
		{"last record of first segment, huge length", func(b []byte, offs []int) {
			binary.LittleEndian.PutUint32(b[offs[len(offs)-1]:], 0x7fffffff)
		}},
		{"middle record, huge length", func(b []byte, offs []int) {
			binary.LittleEndian.PutUint32(b[offs[len(offs)/2]:], 0xfffffff0)
		}},
		{"last record of first segment, payload", func(b []byte, offs []int) { b[len(b)-2] ^= 0x20 }},
		{"two records apart", func(b []byte, offs []int) { b[offs[3]+headerSize] ^= 1; b[offs[7]+2] ^= 0x40 }},
		{"two adjacent records", func(b []byte, offs []int) { b[offs[3]+headerSize] ^= 1; b[offs[4]+2] ^= 0x40 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			segs := writeRecords(t, dir, opts, n)
			if len(segs) < 3 {
				t.Fatalf("%d segments, want several", len(segs))
			}
			b, err := os.ReadFile(segs[0])
			if err != nil {
				t.Fatal(err)
			}
			offs := recordOffsets(t, b)
			orig := bytes.Clone(b)
			tt.damage(b, offs)
			lost := 0
			for i, off := range offs {
				end := len(b)
				if i+1 < len(offs) {
					end = offs[i+1]
				}
				if !bytes.Equal(b[off:end], orig[off:end]) {
					lost++
				}
			}
			if err := os.WriteFile(segs[0], b, 0o640); err != nil {
				t.Fatal(err)
			}

			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			s := open(t, dir, opts)
			runtime.ReadMemStats(&after)
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
				t.Errorf("Open allocated %d bytes for %d bytes of segments", alloc, n*40)
			}
			got := replayedLines(t, s)
			missing := 0
			for i := range n {
				switch got[string(line(i))] {
				case 0:
					missing++
				case 1:
				default:
					t.Errorf("line %d replayed more than once", i)
				}
			}
			st := s.Stats()
			if missing != lost || st.CorruptRecords != int64(lost) || st.RecoveredTorn != 0 {
				t.Errorf("missing %d, CorruptRecords %d, RecoveredTorn %d; want %d, %d, 0", missing, st.CorruptRecords, st.RecoveredTorn, lost, lost)
			}
		})
	}
}

// TestRecoverKeepsCheckpoint: damage before the checkpoint costs nothing
// that was not already in InfluxDB, and replay starts at the checkpoint.
func TestRecoverKeepsCheckpoint(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := open(t, dir, Options{})
	for i := range 20 {
		if err := s.Append(context.Background(), 1, line(i)); err != nil {
			t.Fatal(err)
		}
	}
	first, err := s.Read(s.Confirmed(), 10, 1<<20, nil)
	if err != nil || first.Points != 10 {
		t.Fatalf("read 10: %d %v", first.Points, err)
	}
	if err := s.Confirm(first.Next, first.Points); err != nil {
		t.Fatal(err)
	}
	s.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	b, _ := os.ReadFile(segs[0])
	offs := recordOffsets(t, b)
	binary.LittleEndian.PutUint32(b[offs[4]:], 1<<30) // a confirmed record's length
	b[offs[15]+headerSize+3] ^= 4                     // an unconfirmed record's payload
	if err := os.WriteFile(segs[0], b, 0o640); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, dir, Options{})
	got := replayedLines(t, s2)
	for i := range 20 {
		want := 0
		if i >= 10 && i != 15 {
			want = 1
		}
		if got[string(line(i))] != want {
			t.Errorf("line %d replayed %d times, want %d", i, got[string(line(i))], want)
		}
	}
	if st := s2.Stats(); st.PendingPoints != 9 || st.CorruptRecords != 2 {
		t.Errorf("PendingPoints %d, CorruptRecords %d; want 9, 2", st.PendingPoints, st.CorruptRecords)
	}
}

// TestQuarantineBounded: the quarantine file stops growing at its bound,
// whether one damaged run fills the room left or many runs do (each
// entry's size is counted exactly, so the bound holds after any number of
// them); damage past the bound is still skipped and counted.
func TestQuarantineBounded(t *testing.T) {
	tests := []struct {
		name    string
		room    int // bytes left below the bound before Open
		records int
		damaged func(i int) bool
	}{
		{"one run fills the room", 100, 20, func(i int) bool { return i == 2 || i == 5 || i == 9 }},
		{"many runs fill the room", 10000, 400, func(i int) bool { return i%2 == 1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			q := dir + ".quarantine"
			if err := os.MkdirAll(filepath.Dir(q), 0o750); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(q, make([]byte, maxQuarantineBytes-tt.room), 0o640); err != nil {
				t.Fatal(err)
			}
			seg := writeRecords(t, dir, Options{}, tt.records)[0]
			b, _ := os.ReadFile(seg)
			offs := recordOffsets(t, b)
			lost := 0
			for i := range tt.records {
				if tt.damaged(i) {
					b[offs[i]+headerSize] ^= 1
					lost++
				}
			}
			if err := os.WriteFile(seg, b, 0o640); err != nil {
				t.Fatal(err)
			}
			s := open(t, dir, Options{})
			if got := len(replayedLines(t, s)); got != tt.records-lost {
				t.Errorf("replayed %d lines, want %d", got, tt.records-lost)
			}
			if st := s.Stats(); st.CorruptRecords != int64(lost) {
				t.Errorf("CorruptRecords %d, want %d", st.CorruptRecords, lost)
			}
			if fi, err := os.Stat(q); err != nil || fi.Size() > maxQuarantineBytes {
				t.Errorf("quarantine file: %v, %d bytes, bound %d", err, fi.Size(), maxQuarantineBytes)
			}
		})
	}
}

// FuzzRecover runs the recovery scanner over arbitrary segment bytes: it
// never panics, only reports records whose checksum is right, covers the
// input with records, damage and tail in order, and once the damage is
// padded and the tail cut, the segment scans clean with the same records.
func FuzzRecover(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "*.seg"))
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seed segments in testdata: %v", err)
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		type rec struct{ off, n int64 }
		var recs []rec
		sc := scanRecords(data, func(off, n int64, points uint32, at int64) {
			if off < 0 || n < headerSize || off+n > int64(len(data)) {
				t.Fatalf("record [%d, +%d) outside %d bytes", off, n, len(data))
			}
			r := data[off : off+n]
			if int64(binary.LittleEndian.Uint32(r[0:4]))+headerSize != n ||
				crc32.Checksum(r[8:], crcTable) != binary.LittleEndian.Uint32(r[4:8]) {
				t.Fatalf("record at %d has a wrong length or checksum", off)
			}
			recs = append(recs, rec{off, n})
		})
		if countRecords(data) < 1 { // the estimate of a bad tail's records
			t.Fatal("countRecords < 1")
		}
		_ = tornTail(data)
		// Records and damage tile [0, tail) in order.
		pos, ri, di := int64(0), 0, 0
		for pos < sc.tail {
			switch {
			case ri < len(recs) && recs[ri].off == pos:
				pos += recs[ri].n
				ri++
			case di < len(sc.damaged) && sc.damaged[di].off == pos:
				d := sc.damaged[di]
				if d.end-d.off < headerSize || d.records < 1 {
					t.Fatalf("damage %+v", d)
				}
				pos = d.end
				di++
			default:
				t.Fatalf("gap at %d", pos)
			}
		}
		if pos != sc.tail || ri != len(recs) || di != len(sc.damaged) || sc.tail > int64(len(data)) {
			t.Fatalf("records and damage end at %d, tail %d of %d", pos, sc.tail, len(data))
		}
		repaired := bytes.Clone(data[:sc.tail])
		for _, d := range sc.damaged {
			copy(repaired[d.off:], padding(d.end-d.off))
		}
		var again, want []rec
		for i, r := range recs {
			if d := data[r.off:]; binary.LittleEndian.Uint32(d[8:12]) != 0 || binary.LittleEndian.Uint64(d[12:20]) != 0 {
				want = append(want, recs[i])
			}
		}
		sc2 := scanRecords(repaired, func(off, n int64, points uint32, at int64) {
			if points != 0 || at != 0 {
				again = append(again, rec{off, n})
			}
		})
		if len(sc2.damaged) != 0 || sc2.tail != int64(len(repaired)) {
			t.Fatalf("repaired segment still damaged: %+v", sc2)
		}
		if !slices.Equal(again, want) {
			t.Fatalf("repair changed the records: %v, want %v", again, want)
		}
	})
}

// TestRecoverCheckpointInsideDamage: one damaged stretch covers the last
// confirmed record and the first unconfirmed one, so the checkpoint points
// into it. The first Open moves the checkpoint past the damage and saves
// it before padding; every later Open replays the same intact records and
// Read never fails.
func TestRecoverCheckpointInsideDamage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := open(t, dir, Options{})
	for i := range 20 {
		if err := s.Append(context.Background(), 1, line(i)); err != nil {
			t.Fatal(err)
		}
	}
	first, err := s.Read(s.Confirmed(), 10, 1<<20, nil)
	if err != nil || first.Points != 10 {
		t.Fatalf("read 10: %d %v", first.Points, err)
	}
	if err := s.Confirm(first.Next, first.Points); err != nil {
		t.Fatal(err)
	}
	s.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	b, _ := os.ReadFile(segs[0])
	offs := recordOffsets(t, b)
	b[offs[9]+headerSize+2] ^= 4  // confirmed
	b[offs[10]+headerSize+2] ^= 4 // unconfirmed: the checkpoint is its start
	if err := os.WriteFile(segs[0], b, 0o640); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{}
	for i := 11; i < 20; i++ {
		want[string(line(i))] = 1
	}
	for round := range 3 {
		s := open(t, dir, Options{})
		if cp := s.Confirmed(); cp.Offset != int64(offs[11]) {
			t.Errorf("open %d: checkpoint %v, want offset %d (the first intact record after the damage)", round, cp, offs[11])
		}
		// A batch bound smaller than a padding record.
		if _, err := s.Read(s.Confirmed(), 5000, 100, nil); err != nil {
			t.Fatalf("open %d: small Read: %v", round, err)
		}
		if got := replayedLines(t, s); !maps.Equal(got, want) {
			t.Fatalf("open %d: replayed %v, want lines 11-19 once", round, got)
		}
		if st := s.Stats(); st.PendingPoints != 9 {
			t.Errorf("open %d: PendingPoints %d, want 9", round, st.PendingPoints)
		}
		s.Close()
	}
}

// TestReadResyncsInsideRecord: a position inside a record, however it got
// there, makes Read skip forward to the next intact record, whatever the
// batch bound, instead of failing on every call.
func TestReadResyncsInsideRecord(t *testing.T) {
	for _, maxBytes := range []int{1 << 20, 100, 1} {
		t.Run(fmt.Sprint(maxBytes), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			s := open(t, dir, Options{})
			for i := range 5 {
				if err := s.Append(context.Background(), 1, line(i)); err != nil {
					t.Fatal(err)
				}
			}
			segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
			b, _ := os.ReadFile(segs[0])
			offs := recordOffsets(t, b)
			pos := Position{Segment: s.Confirmed().Segment, Offset: int64(offs[1] + 3)}
			var lines []string
			for range 20 {
				bt, err := s.Read(pos, 5000, maxBytes, nil)
				if err != nil {
					t.Fatalf("Read at %v: %v", pos, err)
				}
				if bt.Points == 0 {
					break
				}
				lines = append(lines, strings.SplitAfter(string(bt.Data), "\n")...)
				pos = bt.Next
			}
			if got, want := strings.Join(lines, ""), string(line(2))+string(line(3))+string(line(4)); got != want {
				t.Fatalf("read %q, want %q", got, want)
			}
			// The skip is counted once, as the bytes up to the next record.
			if st := s.Stats(); st.CorruptRecords != 1 || st.CorruptBytes != int64(offs[2]-offs[1]-3) {
				t.Errorf("CorruptRecords %d, CorruptBytes %d; want 1, %d", st.CorruptRecords, st.CorruptBytes, offs[2]-offs[1]-3)
			}
		})
	}
}

// damagedSegment writes n records and flips a payload byte in every other
// one, so the segment holds n/2 damaged stretches; it returns the segment
// path and its damaged bytes.
func damagedSegment(tb testing.TB, dir string, n int) (string, []byte) {
	tb.Helper()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	for i := range n {
		if err := s.Append(context.Background(), 1, line(i)); err != nil {
			tb.Fatal(err)
		}
	}
	s.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	b, err := os.ReadFile(segs[0])
	if err != nil {
		tb.Fatal(err)
	}
	for off, i := 0, 0; off < len(b); i++ {
		next := off + headerSize + int(binary.LittleEndian.Uint32(b[off:]))
		if i%2 == 0 {
			b[off+headerSize] ^= 1
		}
		off = next
	}
	return segs[0], b
}

// BenchmarkRecoverDamaged measures Open over a segment with 1,000 damaged
// stretches (each quarantined and padded).
func BenchmarkRecoverDamaged(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "spool")
	seg, damaged := damagedSegment(b, dir, 2000)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		if err := os.WriteFile(seg, damaged, 0o640); err != nil {
			b.Fatal(err)
		}
		os.Remove(dir + ".quarantine")
		os.Remove(filepath.Join(dir, "checkpoint"))
		segs, err := filepath.Glob(filepath.Join(dir, "*.seg"))
		if err != nil {
			b.Fatal(err)
		}
		for _, p := range segs {
			if p != seg {
				os.Remove(p) // the segment the last Open started
			}
		}
		b.StartTimer()
		s, err := Open(Options{Dir: dir})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if st := s.Stats(); st.CorruptRecords != 1000 {
			b.Fatalf("CorruptRecords %d, want 1000", st.CorruptRecords)
		}
		s.Close()
		b.StartTimer()
	}
}

// TestRecoverManyDamagedStretches: a badly damaged segment (10,000 damaged
// stretches) is recovered in one pass with the quarantine file opened once
// and fsynced once, not once per stretch (which took 16 s). The bound is
// generous for a loaded machine; the stretch-by-stretch version misses it
// several times over.
func TestRecoverManyDamagedStretches(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	seg, damaged := damagedSegment(t, dir, 20000)
	if err := os.WriteFile(seg, damaged, 0o640); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s := open(t, dir, Options{})
	took := time.Since(start)
	if st := s.Stats(); st.CorruptRecords != 10000 {
		t.Errorf("CorruptRecords %d, want 10000", st.CorruptRecords)
	}
	if got := len(replayedLines(t, s)); got != 10000 {
		t.Errorf("replayed %d lines, want 10000", got)
	}
	q, err := os.ReadFile(dir + ".quarantine")
	if err != nil || bytes.Count(q, []byte("fieldhub-spool-quarantine ")) != 10000 {
		t.Errorf("quarantine file: %v, %d runs, want 10000", err, bytes.Count(q, []byte("fieldhub-spool-quarantine ")))
	}
	t.Logf("Open over 10000 damaged stretches took %v", took)
	if took > 4*time.Second {
		t.Errorf("Open took %v, want well under 4s", took)
	}
}

// TestCorruptCheckpointCounted: a checkpoint file that does not validate
// makes the spool replay everything (the safe choice: InfluxDB stores a
// point written twice once), and says so: one log line and a counter. A
// missing checkpoint (a new spool) is neither.
func TestCorruptCheckpointCounted(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content []byte // nil: no checkpoint file
		want    int64
	}{
		{"missing", nil, 0},
		{"flipped byte", nil, 1},
		{"short", []byte{1, 2, 3}, 1},
		{"empty", []byte{}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			s := open(t, dir, Options{})
			for i := range 4 {
				if err := s.Append(context.Background(), 1, line(i)); err != nil {
					t.Fatal(err)
				}
			}
			bt := readAll(t, s, s.Confirmed())
			if err := s.Confirm(bt.Next, bt.Points); err != nil {
				t.Fatal(err)
			}
			s.Close()
			cp := filepath.Join(dir, "checkpoint")
			switch {
			case tc.name == "missing":
				os.Remove(cp)
			case tc.content == nil:
				b, _ := os.ReadFile(cp)
				b[3] ^= 1
				os.WriteFile(cp, b, 0o640)
			default:
				os.WriteFile(cp, tc.content, 0o640)
			}
			var logs bytes.Buffer
			s2 := open(t, dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if got := s2.Stats().CorruptCheckpoints; got != tc.want {
				t.Errorf("CorruptCheckpoints %d, want %d", got, tc.want)
			}
			if got := int64(strings.Count(logs.String(), "spool: checkpoint unreadable")); got != tc.want {
				t.Errorf("%d log lines about the checkpoint, want %d:\n%s", got, tc.want, logs.String())
			}
			if got := len(replayedLines(t, s2)); got != 4 {
				t.Errorf("replayed %d lines, want all 4", got)
			}
		})
	}
}

// TestAppendRefusesEmbeddedRecord: a payload holding a whole valid record
// (or any zero byte, which every header holds) is refused, so a forged
// record can never be embedded in a reading and replayed on its own once
// resynchronisation skips a damaged outer header.
func TestAppendRefusesEmbeddedRecord(t *testing.T) {
	forged := appendRecord(nil, 1, time.Now().UnixMilli(), []byte("telemetry,device=victim v=666 1\n"))
	for _, tc := range []struct {
		name    string
		payload []byte
		want    error
	}{
		{"line protocol", line(1), nil},
		{"embedded record", append(append([]byte(`telemetry,device=a s="`), forged...), "\" 2\n"...), ErrInvalid},
		{"one zero byte", []byte("telemetry,device=a v=1\x00 2\n"), ErrInvalid},
		{"a zero byte first", []byte("\x00telemetry,device=a v=1 2\n"), ErrInvalid},
		{"a zero byte last", []byte("telemetry,device=a v=1 2\n\x00"), ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			s := open(t, dir, Options{})
			if err := s.Append(context.Background(), 1, tc.payload); !errors.Is(err, tc.want) {
				t.Fatalf("Append: %v, want %v", err, tc.want)
			}
			if got := s.Stats().AppendedPoints; (got == 0) != (tc.want != nil) {
				t.Errorf("AppendedPoints %d after Append returned %v", got, tc.want)
			}
		})
	}
}
