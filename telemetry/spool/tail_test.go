package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"path/filepath"
	"testing"
)

// TestTailVerdict: what follows the last intact record of the last
// segment is a torn write (truncated silently, counted in RecoveredTorn)
// when it is less than a header, a header whose record runs past the end
// of the file, zeros (the file grew before its data reached the disk, or
// a preallocated segment's unused end), or a record whose payload was cut
// short by those zeros;
// anything else is damage (quarantined, counted in CorruptBytes). Either
// way the five intact records are replayed.
func TestTailVerdict(t *testing.T) {
	header := func(length uint32) []byte {
		b := binary.LittleEndian.AppendUint32(nil, length)
		b = binary.LittleEndian.AppendUint32(b, 0xdeadbeef) // a checksum that cannot match
		b = binary.LittleEndian.AppendUint32(b, 1)
		return binary.LittleEndian.AppendUint64(b, 1795000000000)
	}
	tests := []struct {
		name string
		tail []byte
		torn bool
	}{
		{"less than a header", header(8)[:headerSize-1], true},
		{"a header whose record runs past the end", append(header(10), "123456789"...), true},
		{"zeros", make([]byte, 50), true},
		{"zeros shorter than a header", make([]byte, 7), true},
		{"a whole empty record with a bad checksum", header(0), false},
		{"a whole record with a bad checksum", append(header(10), "1234567890"...), false},
		{"garbage after zeros", append(make([]byte, 30), bytes.Repeat([]byte{7}, 30)...), false},
		// A preallocated segment: the write stopped inside a record.
		{"a record cut short, then preallocated zeros", append(append(header(10), "12345"...), make([]byte, 100)...), true},
		{"a whole record with a bad checksum, then zeros", append(append(header(10), "1234567890"...), make([]byte, 100)...), false},
		{"a record cut short, zeros, then garbage", append(append(append(header(10), "12345"...), make([]byte, 100)...), 7), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			segs := writeRecords(t, dir, Options{}, 5)
			if err := appendBytes(segs[len(segs)-1], tt.tail); err != nil {
				t.Fatal(err)
			}
			s := open(t, dir, Options{})
			if got := readAll(t, s, s.Confirmed()); got.Points != 5 {
				t.Errorf("replayed %d points, want 5", got.Points)
			}
			st := s.Stats()
			wantTorn, wantCorrupt := int64(0), int64(len(tt.tail))
			if tt.torn {
				wantTorn, wantCorrupt = 1, 0
			}
			if st.RecoveredTorn != wantTorn || st.CorruptBytes != wantCorrupt {
				t.Errorf("RecoveredTorn %d, CorruptBytes %d; want %d, %d", st.RecoveredTorn, st.CorruptBytes, wantTorn, wantCorrupt)
			}
			// The tail is gone: appending and reopening finds intact records only.
			if err := s.Append(context.Background(), 1, line(5)); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s2 := open(t, dir, Options{})
			if st := s2.Stats(); st.RecoveredTorn != 0 || st.CorruptBytes != 0 || st.PendingPoints != 6 {
				t.Errorf("second Open: RecoveredTorn %d, CorruptBytes %d, PendingPoints %d; want 0, 0, 6", st.RecoveredTorn, st.CorruptBytes, st.PendingPoints)
			}
		})
	}
}
