package spool

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestResyncTargets: after a run of garbage, recovery resynchronises on
// the next intact record of every legal shape: a reading record with one
// payload byte per point (the most points a header may claim), a padding
// record left by an earlier recovery, and the smallest record there is (an
// empty padding record) ending the segment. It does not trust an intact
// record whose header is implausible (a reading with an append time
// outside 1970..3000 or more points than payload bytes, a padding record
// with an append time). Only the garbage and the untrusted records are
// counted as damage; every trusted reading record is replayed.
func TestResyncTargets(t *testing.T) {
	at := time.Now().UnixMilli()
	reading := func(points uint32, payload string) []byte { return appendRecord(nil, points, at, []byte(payload)) }
	garbage := bytes.Repeat([]byte{0xaa}, 30) // not a header: its length runs far past the segment
	tests := []struct {
		name        string
		implausible []byte   // an intact record resynchronisation must not trust, after the garbage
		after       [][]byte // the records after that
		points      int      // in segment 1, the record before the garbage included
	}{
		{"reading record, one byte per point", nil, [][]byte{reading(3, "abc"), reading(1, "m v=1 1\n")}, 5},
		{"padding from an earlier recovery", nil, [][]byte{padding(100), reading(1, "m v=2 2\n")}, 2},
		{"empty padding record ending the segment", nil, [][]byte{padding(headerSize)}, 1},
		{"not a reading with append time 0", appendRecord(nil, 1, 0, []byte("m v=3 3\n")), [][]byte{reading(1, "m v=4 4\n")}, 2},
		{"not a reading from the year 3000", appendRecord(nil, 1, maxAppendTime, []byte("m v=3 3\n")), [][]byte{reading(1, "m v=4 4\n")}, 2},
		{"not padding with an append time", appendRecord(nil, 0, at, make([]byte, 8)), [][]byte{reading(1, "m v=4 4\n")}, 2},
		{"not more points than payload bytes", appendRecord(nil, 4, at, []byte("abc")), [][]byte{reading(1, "m v=4 4\n")}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			if err := os.MkdirAll(dir, 0o750); err != nil {
				t.Fatal(err)
			}
			seg := append(reading(1, "m v=0 0\n"), garbage...)
			seg = append(seg, tt.implausible...)
			for _, r := range tt.after {
				seg = append(seg, r...)
			}
			if err := os.WriteFile(filepath.Join(dir, segName(1)), seg, 0o640); err != nil {
				t.Fatal(err)
			}
			// A later segment, so that segment 1 cannot hold a torn tail.
			if err := os.WriteFile(filepath.Join(dir, segName(2)), reading(1, "m v=9 9\n"), 0o640); err != nil {
				t.Fatal(err)
			}
			s := open(t, dir, Options{})
			got := readAll(t, s, s.Confirmed())
			if got.Points != tt.points+1 {
				t.Errorf("replayed %d points, want %d", got.Points, tt.points+1)
			}
			st := s.Stats()
			damaged := int64(len(garbage) + len(tt.implausible))
			if st.CorruptBytes != damaged || st.RecoveredTorn != 0 {
				t.Errorf("CorruptBytes %d, RecoveredTorn %d; want %d, 0", st.CorruptBytes, st.RecoveredTorn, damaged)
			}
		})
	}
}

// TestCorruptRecordEstimate: CorruptRecords counts the records a damaged
// run held, following the length fields of the damaged records while they
// land on plausible headers, down to a damaged record that is a bare
// header (an empty padding record).
func TestCorruptRecordEstimate(t *testing.T) {
	at := time.Now().UnixMilli()
	damagedReading := func(i int) []byte {
		r := appendRecord(nil, 1, at, line(i))
		r[headerSize+2] ^= 0x20 // the payload: the checksum fails, the header is intact
		return r
	}
	damagedPadding := padding(headerSize)
	damagedPadding[4] ^= 1 // its checksum
	tests := []struct {
		name    string
		damaged [][]byte
		want    int64
	}{
		{"one reading", [][]byte{damagedReading(1)}, 1},
		{"three readings", [][]byte{damagedReading(1), damagedReading(2), damagedReading(3)}, 3},
		{"a reading and an empty padding record", [][]byte{damagedReading(1), damagedPadding}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			if err := os.MkdirAll(dir, 0o750); err != nil {
				t.Fatal(err)
			}
			seg := appendRecord(nil, 1, at, line(0))
			var damaged int64
			for _, r := range tt.damaged {
				seg = append(seg, r...)
				damaged += int64(len(r))
			}
			seg = appendRecord(seg, 1, at, line(9))
			if err := os.WriteFile(filepath.Join(dir, segName(1)), seg, 0o640); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, segName(2)), appendRecord(nil, 1, at, line(10)), 0o640); err != nil {
				t.Fatal(err)
			}
			s := open(t, dir, Options{})
			if got := readAll(t, s, s.Confirmed()); got.Points != 3 {
				t.Errorf("replayed %d points, want 3", got.Points)
			}
			if st := s.Stats(); st.CorruptRecords != tt.want || st.CorruptBytes != damaged {
				t.Errorf("CorruptRecords %d, CorruptBytes %d; want %d, %d", st.CorruptRecords, st.CorruptBytes, tt.want, damaged)
			}
		})
	}
}

// TestPaddingCoversAnyLength: damage of any length (at least a header) is
// replaced by exactly as many bytes of intact padding records, none larger
// than maxPadRecord (so Read, whose batches are bounded, always fits one),
// and none holding data.
func TestPaddingCoversAnyLength(t *testing.T) {
	for _, n := range []int64{
		headerSize, headerSize + 1, 100, maxPadRecord - 1, maxPadRecord, maxPadRecord + 1,
		maxPadRecord + headerSize - 1, maxPadRecord + headerSize, maxPadRecord + headerSize + 1,
		2*maxPadRecord + 5, 3 * maxPadRecord,
	} {
		b := padding(n)
		if int64(len(b)) != n {
			t.Errorf("padding(%d) is %d bytes", n, len(b))
			continue
		}
		for off := int64(0); off < n; {
			rn, pts, at, ok := parseRecord(b[off:])
			if !ok || pts != 0 || at != 0 || rn > maxPadRecord {
				t.Errorf("padding(%d) at %d: record of %d bytes, %d points, time %d, intact %v", n, off, rn, pts, at, ok)
				break
			}
			off += rn
		}
	}
}
