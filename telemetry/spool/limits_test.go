package spool

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestRecordSizeLimit: a record (header and payload) may be as large as a
// segment and no larger; without SegmentBytes a segment is the smaller of
// 64 MiB and MaxBytes/8. A refused record leaves the spool as it was.
func TestRecordSizeLimit(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		payload int
		want    error
	}{
		{"fills a set segment", Options{SegmentBytes: 1024}, 1024 - headerSize, nil},
		{"one byte over a set segment", Options{SegmentBytes: 1024}, 1024 - headerSize + 1, ErrTooLarge},
		{"fills the default segment, MaxBytes/8", Options{MaxBytes: 8192}, 1024 - headerSize, nil},
		{"one byte over the default segment, MaxBytes/8", Options{MaxBytes: 8192}, 1024 - headerSize + 1, ErrTooLarge},
		{"default MaxBytes: segments of 64 MiB", Options{}, 1 << 20, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, t.TempDir(), tt.opts)
			err := s.Append(context.Background(), 1, bytes.Repeat([]byte{'x'}, tt.payload))
			if !errors.Is(err, tt.want) {
				t.Fatalf("Append of %d bytes: %v, want %v", tt.payload, err, tt.want)
			}
			st := s.Stats()
			wantPoints := int64(1)
			if tt.want != nil {
				wantPoints = 0
			}
			if st.AppendedPoints != wantPoints || st.PendingPoints != wantPoints {
				t.Errorf("AppendedPoints %d, PendingPoints %d, want %d", st.AppendedPoints, st.PendingPoints, wantPoints)
			}
		})
	}
}

// TestEmptySegmentAfterTornTail: only the last segment holding bytes can
// have been torn by a crash; an empty segment file after it (one that was
// created and never written) does not turn its torn tail into damage.
func TestEmptySegmentAfterTornTail(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := open(t, dir, Options{})
	for i := range 5 {
		if err := s.Append(context.Background(), 1, line(i)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if err := appendBytes(filepath.Join(dir, segName(1)), appendRecord(nil, 1, 1, line(9))[:headerSize+5]); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, segName(2)), nil, 0o640); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, dir, Options{})
	if got := readAll(t, s2, s2.Confirmed()); got.Points != 5 {
		t.Fatalf("replayed %d points, want 5", got.Points)
	}
	st := s2.Stats()
	if st.RecoveredTorn != 1 || st.CorruptBytes != 0 || st.CorruptRecords != 0 {
		t.Errorf("RecoveredTorn %d, CorruptBytes %d, CorruptRecords %d; want 1, 0, 0", st.RecoveredTorn, st.CorruptBytes, st.CorruptRecords)
	}
	if _, err := os.Stat(filepath.Clean(dir) + ".quarantine"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a torn tail was quarantined: %v", err)
	}
}

// TestExactFit: records that exactly fill the room left (MaxBytes) are
// accepted and the next one is refused with ErrFull; records that exactly
// fill a segment stay in it and the next record starts a new segment.
func TestExactFit(t *testing.T) {
	rec := int64(headerSize + len(line(0)))
	tests := []struct {
		name     string
		opts     Options
		appends  int
		accepted int
		segments []int64 // sizes of the segment files, oldest first
	}{
		{"MaxBytes holds four records", Options{MaxBytes: 4 * rec, SegmentBytes: 4 * rec}, 5, 4, []int64{4 * rec}},
		{"segments of four records", Options{MaxBytes: 1 << 20, SegmentBytes: 4 * rec}, 9, 9, []int64{4 * rec, 4 * rec, rec}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, tt.opts)
			accepted := 0
			for i := range tt.appends {
				err := s.Append(context.Background(), 1, line(i))
				switch {
				case err == nil:
					accepted++
				case errors.Is(err, ErrFull) && i >= tt.accepted:
				default:
					t.Fatalf("Append %d: %v", i, err)
				}
			}
			if accepted != tt.accepted {
				t.Errorf("accepted %d of %d, want %d", accepted, tt.appends, tt.accepted)
			}
			if full := !s.Stats().LastFull.IsZero(); full != (accepted < tt.appends) {
				t.Errorf("LastFull set %v, want %v", full, accepted < tt.appends)
			}
			s.Close()
			segs, err := filepath.Glob(filepath.Join(dir, "*.seg"))
			if err != nil {
				t.Fatal(err)
			}
			var sizes []int64
			for _, seg := range segs {
				fi, err := os.Stat(seg)
				if err != nil {
					t.Fatal(err)
				}
				sizes = append(sizes, fi.Size())
			}
			if !slices.Equal(sizes, tt.segments) {
				t.Errorf("segment sizes %v, want %v", sizes, tt.segments)
			}
		})
	}
}
