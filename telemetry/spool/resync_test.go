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
// empty padding record) ending the segment. Only the garbage is counted
// as damage; every reading record is replayed.
func TestResyncTargets(t *testing.T) {
	at := time.Now().UnixMilli()
	reading := func(points uint32, payload string) []byte { return appendRecord(nil, points, at, []byte(payload)) }
	garbage := bytes.Repeat([]byte{0xaa}, 30) // not a header: its length runs far past the segment
	tests := []struct {
		name   string
		after  [][]byte // the records after the garbage
		points int
	}{
		{"reading record, one byte per point", [][]byte{reading(3, "abc"), reading(1, "m v=1 1\n")}, 5},
		{"padding from an earlier recovery", [][]byte{padding(100), reading(1, "m v=2 2\n")}, 2},
		{"empty padding record ending the segment", [][]byte{padding(headerSize)}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			if err := os.MkdirAll(dir, 0o750); err != nil {
				t.Fatal(err)
			}
			seg := append(reading(1, "m v=0 0\n"), garbage...)
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
			if st.CorruptBytes != int64(len(garbage)) || st.CorruptRecords != 1 || st.RecoveredTorn != 0 {
				t.Errorf("CorruptBytes %d, CorruptRecords %d, RecoveredTorn %d; want %d, 1, 0",
					st.CorruptBytes, st.CorruptRecords, st.RecoveredTorn, len(garbage))
			}
		})
	}
}
