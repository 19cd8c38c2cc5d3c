package spool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// varied returns record i's payload: 1 to 4 points of different lengths,
// so that batch bounds fall at every kind of place.
func varied(i int) (int, []byte) {
	points := 1 + i%4
	var b []byte
	for p := range points {
		b = fmt.Appendf(b, "m,device=d%d v=%s %d\n", i, strings.Repeat("1", 1+(i*7+p)%13), i)
	}
	return points, b
}

// TestReadBatches: Read returns whole records, in order, as many as fit:
// it stops before the record that, counted with its header, would take
// the batch past maxBytes (unless the batch is empty: one record larger
// than the bound is returned alone) and once it holds maxPoints points or
// more. (Counting the header keeps a margin of headerSize bytes: a record
// whose payload alone would just fit starts the next batch.) The bounds
// include exact fits: records 0 and 1 take 18 + 20 + 51 = 89 bytes. Reading
// batch after batch returns every record exactly once, across segments.
func TestReadBatches(t *testing.T) {
	const n = 120
	tests := []struct {
		maxPoints, maxBytes int
	}{
		{5000, 1 << 20}, {1, 1 << 20}, {2, 1 << 20}, {7, 1 << 20}, {5000, 1}, {5000, 60}, {5000, 89}, {5000, 90}, {5000, 88}, {5000, 100}, {5000, 333}, {10, 200},
	}
	dir := filepath.Join(t.TempDir(), "spool")
	s := open(t, dir, Options{SegmentBytes: 2048})
	var recs [][]byte
	var pts []int
	for i := range n {
		p, b := varied(i)
		if err := s.Append(context.Background(), p, b); err != nil {
			t.Fatal(err)
		}
		recs, pts = append(recs, b), append(pts, p)
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("points=%d,bytes=%d", tt.maxPoints, tt.maxBytes), func(t *testing.T) {
			pos := s.Confirmed()
			next := 0 // the first record not read yet
			for batch := 0; next < n; batch++ {
				// The batch the rules above describe.
				var want []byte
				wantPoints, end := 0, next
				for end < n && wantPoints < tt.maxPoints && len(want) < tt.maxBytes {
					if len(want) > 0 && len(want)+headerSize+len(recs[end]) > tt.maxBytes {
						break
					}
					want = append(want, recs[end]...)
					wantPoints += pts[end]
					end++
				}
				b, err := s.Read(pos, tt.maxPoints, tt.maxBytes, nil)
				if err != nil {
					t.Fatalf("batch %d: %v", batch, err)
				}
				if b.Points != wantPoints || string(b.Data) != string(want) {
					t.Fatalf("batch %d from record %d: %d points, %d bytes; want records %d..%d: %d points, %d bytes",
						batch, next, b.Points, len(b.Data), next, end-1, wantPoints, len(want))
				}
				pos, next = b.Next, end
			}
			if b, err := s.Read(pos, tt.maxPoints, tt.maxBytes, nil); err != nil || b.Points != 0 || len(b.Data) != 0 {
				t.Fatalf("after the last record: %d points, %v", b.Points, err)
			}
		})
	}
}

// TestReadStopsAtDurable: bytes in the active segment past what the spool
// made durable (a write in flight, or a crash's leftovers) are never read,
// from any position and whatever the batch bound.
func TestReadStopsAtDurable(t *testing.T) {
	for _, maxBytes := range []int{1 << 20, 100, 1} {
		t.Run(fmt.Sprint(maxBytes), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			s := open(t, dir, Options{})
			for i := range 5 {
				if err := s.Append(context.Background(), 1, line(i)); err != nil {
					t.Fatal(err)
				}
			}
			seg := filepath.Join(dir, segName(s.Confirmed().Segment))
			// Not durable: a torn write, then a whole record.
			if err := appendBytes(seg, append([]byte("xxxxx"), appendRecord(nil, 1, 1, line(99))...)); err != nil {
				t.Fatal(err)
			}
			// From the second record, from inside it, and from inside the last.
			rec := int64(headerSize + len(line(0)))
			for _, from := range []int64{rec, rec + 3, 4*rec + 3} {
				pos := Position{s.Confirmed().Segment, from}
				var got []byte
				for range 20 {
					b, err := s.Read(pos, 5000, maxBytes, nil)
					if err != nil {
						t.Fatal(err)
					}
					if b.Points == 0 {
						if b.Next.less(pos) || !b.Next.less(Position{pos.Segment, 5*int64(headerSize+len(line(0))) + 1}) {
							t.Errorf("from %d: read stopped at %+v, past the durable end", from, b.Next)
						}
						break
					}
					got = append(got, b.Data...)
					pos = b.Next
				}
				if strings.Contains(string(got), string(line(99))) {
					t.Errorf("from %d: read a record that is not durable", from)
				}
			}
		})
	}
}

// TestGroupCommitRespectsSegmentSize: appends committed as one group
// (they queued while the previous commit ran) still respect the segment
// size: the group is split across segments, and none exceeds SegmentBytes.
func TestGroupCommitRespectsSegmentSize(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	const segBytes = 1024
	s := open(t, dir, Options{SegmentBytes: segBytes})
	s.mu.Lock() // hold the committer so that the appends queue up
	// Start appends until 60 wait behind the held committer (it takes
	// at most one group before it blocks): more than two segments' worth.
	errs := make(chan error, 1000)
	n := 0
	for len(s.reqs) < 60 {
		if n == cap(errs) {
			t.Fatal("appends never queued")
		}
		go func(i int) { errs <- s.Append(context.Background(), 1, line(i)) }(n)
		n++
		runtime.Gosched()
	}
	s.mu.Unlock()
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	for _, seg := range segs {
		fi, err := os.Stat(seg)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > segBytes {
			t.Errorf("%s holds %d bytes, more than SegmentBytes %d", filepath.Base(seg), fi.Size(), segBytes)
		}
	}
	s2 := open(t, dir, Options{SegmentBytes: segBytes})
	if got := readAll(t, s2, s2.Confirmed()); got.Points != n {
		t.Fatalf("replayed %d points, want %d", got.Points, n)
	}
}
