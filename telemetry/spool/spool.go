// Package spool is the hub's durable queue between accepting readings and
// writing them to InfluxDB: an append-only log of checksummed records in
// fixed-size segment files under the data directory, written with group
// commit (one fsync for every append that arrived while the previous fsync
// ran or, with Options.CommitInterval, within that interval of the group's
// first append), read in order by one consumer, and trimmed only after the
// consumer confirms what it read.
//
// The active segment is preallocated to its full size (fallocate on
// Linux), so an append writes inside the file and the sync that makes it
// durable need not also commit a new file size; a segment is cut back to
// its records when it is sealed (full, or at Close). After a crash the
// active segment ends in zeros, which recovery treats as a torn tail.
//
// A device is acknowledged only after Append returns nil, so a reading the
// hub acknowledged survives a crash: on Open, every record after the last
// confirmed position is replayed. A torn tail (the incomplete last record a
// crash leaves) is truncated and counted. Damage elsewhere (a flipped bit,
// a bad sector) costs only the records it hit: recovery resynchronises on
// the next record whose header and checksum validate, replays everything
// intact, copies the damaged bytes to a bounded quarantine file beside the
// spool directory (<dir>.quarantine), replaces them with padding records
// so offsets stay valid, and counts them in Stats.
//
// Record format (little endian): payload length u32, CRC-32C u32 of the
// rest, point count u32, append time i64 (Unix ms), payload. A padding
// record has zero points, append time 0 and a zero payload. There is no
// sync marker: a valid header always holds zero bytes (the two high bytes
// of the append time, until the year 10889) and Append refuses a payload
// holding one (the hub's line protocol never does), so a payload cannot
// pass for a record; and segments written before recovery learnt to
// resynchronise are read as they are.
//
// Lock order: Spool.mu is a leaf lock; no other lock is taken while it is held.
// It imports the standard library and golang.org/x/sys/unix (fallocate,
// fdatasync).
package spool

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Sentinel errors returned by Append.
var (
	// ErrFull means the spool holds MaxBytes (or the disk is full); the
	// caller should answer "overloaded" and the sender retry later.
	ErrFull = errors.New("spool full")
	// ErrClosed means the spool is shutting down.
	ErrClosed = errors.New("spool closed")
	// ErrTooLarge means one record exceeds the segment size.
	ErrTooLarge = errors.New("record larger than a segment")
	// ErrInvalid means the payload holds a zero byte. Every record header
	// holds one and line protocol never does, so refusing them keeps a
	// forged record from being embedded in a payload and replayed on its
	// own when recovery resynchronises past a damaged header.
	ErrInvalid = errors.New("spool payload holds a zero byte")
	// ErrMaybeStored wraps the context's error when ctx ended after the
	// committer had copied the record: it may still become durable. The
	// caller must not acknowledge it, nor undo what it decided for it
	// (the bridge keeps the metric types such a message claimed).
	ErrMaybeStored = errors.New("record may still be stored")
)

const (
	headerSize = 20 // payload length, crc32c, point count (u32 each), append time (i64 ms)
	segSuffix  = ".seg"
	// maxGroup bounds how many appends share one write+fsync, so one
	// commit's latency stays bounded under any load.
	maxGroup = 4096
	// queueLen bounds appends waiting for the committer; a full queue makes
	// Append wait (bounded by its context), which is back-pressure.
	queueLen = 8192
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Options configures a Spool. Zero values take the documented defaults.
type Options struct {
	// Dir holds the segment files and the checkpoint. Required.
	Dir string
	// MaxBytes bounds the segment files on disk; default 1 GiB.
	MaxBytes int64
	// SegmentBytes is the size at which a new segment starts; default the
	// smaller of 64 MiB and MaxBytes/8.
	SegmentBytes int64
	// NoSync skips fsync. Only benchmarks that measure the cost of
	// everything else set it.
	NoSync bool
	// CommitInterval is how long the committer holds a group open for
	// more appends, counted from when the group's first append was queued,
	// before it writes and syncs the group (PostgreSQL's commit_delay,
	// MySQL's binlog_group_commit_sync_delay). Every Append, and so every
	// acknowledgement, may wait up to this much longer; in exchange,
	// appends that arrive less than an fsync apart (1,000 devices at one
	// reading a second arrive a millisecond apart) share one sync instead
	// of paying one each. Zero, the default, commits at once: a group is
	// then whatever arrived while the previous sync ran. A group of
	// maxGroup appends, or Close, ends the wait early.
	CommitInterval time.Duration
	Logger         *slog.Logger
}

// Position addresses a record boundary: a segment and a byte offset in it.
type Position struct {
	Segment uint64
	Offset  int64
}

func (p Position) less(q Position) bool {
	return p.Segment < q.Segment || p.Segment == q.Segment && p.Offset < q.Offset
}

// Stats is a snapshot for readiness and metrics.
type Stats struct {
	Bytes          int64     // record bytes in segment files (the active segment's preallocated rest not counted)
	MaxBytes       int64     // the bound on Bytes
	PendingPoints  int64     // points appended and not yet confirmed
	OldestPending  time.Time // append time of the oldest unconfirmed record; zero if none
	RecoveredTorn  int64     // torn tails truncated at Open (normal after a crash)
	CorruptBytes   int64     // damaged bytes skipped at Open (and by Read past a non-boundary), not counting torn tails
	CorruptRecords int64     // records skipped in them (estimated from their length fields, at least one per damaged run)
	AppendedPoints int64     // points appended since Open
	Commits        int64     // group commits (one write and one sync each) since Open
	LastFull       time.Time // when an append was last refused for lack of room; zero if never

	// CorruptCheckpoints counts checkpoint files Open could not use (0 or
	// 1): the spool then replayed every segment from the start.
	CorruptCheckpoints int64
}

// FullHold is how long after an append was refused for room the spool
// still counts as full, so readiness does not flap while a backlog drains.
const FullHold = 5 * time.Second

// Full is the spool's readiness policy: full when a record of room bytes
// (the largest message the hub accepts) may not fit, or when an append
// was refused for room less than FullHold before now. A full spool answers
// devices "overloaded"; the hub reports itself unready so that load
// balancers send them elsewhere first.
func (st Stats) Full(room int64, now time.Time) bool {
	return st.MaxBytes-st.Bytes < room || (!st.LastFull.IsZero() && now.Sub(st.LastFull) < FullHold)
}

type appendReq struct {
	data   []byte
	points uint32
	queued time.Time // when Append queued it; set only with a CommitInterval
	done   chan error

	// mu guards state. The committer holds it while it copies data or
	// decides to answer, and Append takes it to give up a request: once
	// Append returns, the spool never reads data again, and it sends on
	// done only if it took r first.
	mu    sync.Mutex
	state reqState
}

type reqState uint8

const (
	reqQueued    reqState = iota
	reqTaken              // the committer copied data or answered: it sends on done
	reqAbandoned          // Append returned first: the committer skips it
)

// take claims r for an answer without copying it; false means Append
// gave r up and nothing may be sent on done.
func (r *appendReq) take() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state == reqAbandoned {
		return false
	}
	r.state = reqTaken
	return true
}

// abandon gives r up after its Append stopped waiting. It reports whether
// the committer had not copied r yet (and now never will). If the
// committer is copying r, abandon waits for that copy, which does no I/O.
func (r *appendReq) abandon() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state == reqQueued {
		r.state = reqAbandoned
		return true
	}
	return false
}

// Spool is a durable, bounded, single-consumer log. Append is safe for
// concurrent use; Read and Confirm are for the one consumer.
type Spool struct {
	opts Options
	log  *slog.Logger

	reqs    chan *appendReq
	quit    chan struct{}
	stopped chan struct{}
	notify  chan struct{} // cap 1: wakes the consumer after a commit
	// pool holds *appendReq, each with its done channel (cap 1). A request
	// goes back only after its answer was received: one that Append gave
	// up may still sit in the queue, so it is left to the collector.
	pool sync.Pool

	// Owned by the committer goroutine.
	active    *os.File
	activeSeq uint64
	activeLen int64
	buf       []byte
	accepted  []*appendReq // commit's scratch list, reused

	mu        sync.Mutex
	segments  []uint64         // sorted sequence numbers of segment files
	sizes     map[uint64]int64 // durable size of each segment
	durable   Position         // end of the last fsynced record
	confirmed Position         // start of the first unconfirmed record
	times     []pendingTime    // append times of unconfirmed commits, oldest first
	bytes     int64            // sum of sizes
	readers   map[uint64]*os.File

	pending   atomic.Int64
	appended  atomic.Int64
	commits   atomic.Int64
	lastFull  atomic.Int64 // unix nanoseconds of the last ErrFull
	recovered int64

	// Set by recover; after Open, guarded by mu (Read adds what it skips).
	corruptBytes   int64
	corruptRecords int64
	quarantined    int64 // bytes copied to the quarantine file at Open
	qfile          quarantineFile

	// corruptCheckpoints is 1 when Open found a checkpoint it could not
	// use. Set by recover, read-only afterwards.
	corruptCheckpoints int64

	closeOnce sync.Once
}

type pendingTime struct {
	end Position
	at  int64
}

// Open opens or creates the spool in opts.Dir, recovering what a crash left:
// records after the last checkpoint are kept for replay, a torn tail is
// truncated, damaged records are skipped, quarantined and counted (see the
// package comment). It starts the committer, which Close stops.
func Open(opts Options) (*Spool, error) {
	if opts.Dir == "" {
		return nil, errors.New("spool: Dir is required")
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 1 << 30
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = min(64<<20, opts.MaxBytes/8)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.CommitInterval < 0 {
		opts.CommitInterval = 0
	}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("create spool dir: %w", err)
	}
	s := &Spool{
		opts:    opts,
		log:     opts.Logger,
		reqs:    make(chan *appendReq, queueLen),
		quit:    make(chan struct{}),
		stopped: make(chan struct{}),
		notify:  make(chan struct{}, 1),
		sizes:   map[uint64]int64{},
		readers: map[uint64]*os.File{},
	}
	s.pool.New = func() any { return &appendReq{done: make(chan error, 1)} }
	if err := s.recover(); err != nil {
		return nil, err
	}
	if err := s.roll(); err != nil {
		return nil, err
	}
	go s.commitLoop()
	return s, nil
}

func segName(seq uint64) string { return fmt.Sprintf("%016x%s", seq, segSuffix) }

func (s *Spool) segPath(seq uint64) string { return filepath.Join(s.opts.Dir, segName(seq)) }

// recover scans the segments from the checkpoint on. A torn tail (an
// incomplete last record of the last segment written, what a crash leaves)
// is truncated; damage anywhere else is skipped: recovery resynchronises on
// the next intact record, copies the damaged bytes to the quarantine file,
// overwrites them with padding records and counts them.
func (s *Spool) recover() error {
	entries, err := os.ReadDir(s.opts.Dir)
	if err != nil {
		return fmt.Errorf("list spool dir: %w", err)
	}
	var segs []uint64
	var lastWritten uint64 // the last segment with bytes in it: only it can be torn
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), segSuffix)
		if !ok {
			continue
		}
		seq, err := strconv.ParseUint(name, 16, 64)
		if err != nil {
			continue
		}
		segs = append(segs, seq)
		if fi, err := e.Info(); err == nil && fi.Size() > 0 && seq > lastWritten {
			lastWritten = seq
		}
	}
	slices.Sort(segs)
	cp := s.readCheckpoint()
	var corruptSegs int
	defer s.closeQuarantine()
	for _, seq := range segs {
		if seq < cp.Segment {
			if err := os.Remove(s.segPath(seq)); err != nil {
				return fmt.Errorf("remove confirmed segment: %w", err)
			}
			continue
		}
		res, err := s.scan(seq, cp, seq == lastWritten)
		if err != nil {
			return err
		}
		if res.torn {
			s.recovered++
		}
		if res.corruptBytes > 0 {
			corruptSegs++
			s.corruptBytes += res.corruptBytes
			s.corruptRecords += res.corruptRecords
		}
		if cp.Segment == seq {
			cp.Offset = res.cpOffset
		}
		s.segments = append(s.segments, seq)
		s.sizes[seq] = res.size
		s.bytes += res.size
		s.pending.Add(res.points)
		s.durable = Position{seq, res.size}
	}
	if len(s.segments) > 0 && cp.less(Position{s.segments[0], 0}) {
		cp = Position{s.segments[0], 0}
	}
	if len(s.segments) == 0 {
		cp = Position{}
	}
	if cp.Segment == s.durable.Segment && cp.Offset > s.durable.Offset {
		cp.Offset = s.durable.Offset // the checkpoint pointed into a truncated tail
	}
	s.confirmed = cp
	if s.recovered > 0 {
		s.log.Warn("spool: truncated a torn tail after a crash", "segments", s.recovered)
	}
	if s.corruptBytes > 0 {
		s.log.Error("spool: skipped corrupt records", "segments", corruptSegs, "records", s.corruptRecords,
			"bytes", s.corruptBytes, "quarantined", s.quarantined, "quarantine", s.quarantinePath())
	}
	if p := s.pending.Load(); p > 0 {
		s.log.Info("spool: replaying unconfirmed readings", "points", p)
	}
	return nil
}

// scanResult is what recovery learnt about one segment.
type scanResult struct {
	size           int64 // bytes kept: the segment ends on a record boundary here
	points         int64 // points at or after the checkpoint
	cpOffset       int64 // the checkpoint offset, moved past damage it pointed into
	torn           bool  // a torn tail was truncated
	corruptBytes   int64
	corruptRecords int64
}

// damage is a run of bytes in a segment that are not intact records.
type damage struct {
	off, end int64
	records  int64 // estimated from the length fields, at least 1
}

// segmentScan is the result of scanRecords over one segment's bytes.
type segmentScan struct {
	damaged []damage // in the middle: intact records follow each
	tail    int64    // where the last intact record ends; bytes after it are a bad tail
	torn    bool     // the bad tail looks like an interrupted write, not damage
}

// scanRecords walks data as a chain of records, calling visit for each
// intact one. At a record that does not validate it resynchronises on the
// next offset where a whole record with a plausible header and a correct
// checksum starts (a valid header always holds zero bytes, which line
// protocol never does, so a payload cannot pass for a record). Bytes after
// the last intact record are the tail, torn when they are an incomplete
// record or zeros. It only reads data, allocates nothing per byte, and
// never hands visit a record whose checksum is wrong.
//
// The search for the next record stops at the last non-zero byte: a run
// of zeros holds no intact record (its length field says 0 and the
// CRC-32C of 12 zero bytes is not 0), so the unused zeros of a
// preallocated segment are not searched byte by byte.
func scanRecords(data []byte, visit func(off, n int64, points uint32, at int64)) segmentScan {
	var sc segmentScan
	var off int64
	size := int64(len(data))
	lastNonZero := int64(-2) // not computed yet
	for off < size {
		if n, pts, at, ok := parseRecord(data[off:]); ok {
			if visit != nil {
				visit(off, n, pts, at)
			}
			off += n
			continue
		}
		// A genuine next record cannot start inside this one's header.
		if lastNonZero == -2 {
			lastNonZero = int64(len(bytes.TrimRight(data, "\x00"))) - 1
		}
		next := int64(-1)
		for p := off + headerSize; p+headerSize <= size && p <= lastNonZero; p++ {
			if plausibleHeader(data[p:]) {
				if _, _, _, ok := parseRecord(data[p:]); ok {
					next = p
					break
				}
			}
		}
		if next < 0 {
			sc.tail = off
			sc.torn = tornTail(data[off:])
			return sc
		}
		sc.damaged = append(sc.damaged, damage{off: off, end: next, records: countRecords(data[off:next])})
		off = next
	}
	sc.tail = off
	return sc
}

// plausibleHeader is a cheap test of the header at the start of b before
// its checksum is computed: the record fits in b, and it is either a
// reading record (1 point or more, at most one per payload byte, an append
// time between 1970 and the year 3000) or a padding record.
func plausibleHeader(b []byte) bool {
	length := binary.LittleEndian.Uint32(b[0:4])
	if int64(length) > int64(len(b)-headerSize) {
		return false
	}
	return plausibleFields(b) && binary.LittleEndian.Uint32(b[8:12]) <= length
}

// plausibleFields tests the point count and append time of the header at
// the start of b (at least headerSize bytes).
func plausibleFields(b []byte) bool {
	points := binary.LittleEndian.Uint32(b[8:12])
	at := int64(binary.LittleEndian.Uint64(b[12:20]))
	if points == 0 {
		return at == 0
	}
	return at > 0 && at < maxAppendTime
}

// maxAppendTime bounds the append time (ms) resynchronisation accepts.
const maxAppendTime = 32503680000000 // 3000-01-01

// tornTail reports whether b, the bytes after the last intact record, is
// what an interrupted write leaves: less than a header, a header whose
// record runs past the end, zeros (a file extended before its data
// reached the disk, or the unused part of a preallocated segment), or, in
// a preallocated segment, a record whose payload ends in zeros followed
// by zeros only (a payload never holds a zero byte, so its last byte is
// zero only where the write never reached).
func tornTail(b []byte) bool {
	if len(b) < headerSize {
		return true
	}
	length := int64(binary.LittleEndian.Uint32(b[0:4]))
	if length > int64(len(b)-headerSize) {
		return true
	}
	used := int64(len(bytes.TrimRight(b, "\x00")))
	return used == 0 || length > 0 && used < headerSize+length
}

// countRecords estimates the records in a damaged run by following its
// length fields from record to record while each one lands on a header
// whose point count and append time are plausible; it is at least 1.
func countRecords(b []byte) int64 {
	var n int64 = 1
	if len(b) < headerSize {
		return n
	}
	for off := int64(0); ; n++ {
		next := off + headerSize + int64(binary.LittleEndian.Uint32(b[off:off+4]))
		if next+headerSize > int64(len(b)) || !plausibleFields(b[next:]) {
			return n
		}
		off = next
	}
}

// scan validates one segment and counts the points at or after cp. A bad
// tail is truncated (counted as torn when last is set and it looks torn,
// as corrupt otherwise); damage in the middle is quarantined and replaced
// by padding records, so the next Open finds intact records only.
func (s *Spool) scan(seq uint64, cp Position, last bool) (scanResult, error) {
	res := scanResult{cpOffset: cp.Offset}
	f, err := os.OpenFile(s.segPath(seq), os.O_RDWR, 0)
	if err != nil {
		return res, fmt.Errorf("open segment: %w", err)
	}
	defer f.Close()
	// Bounded by the segment size; a length field read from the file only
	// ever indexes into data, it never sizes an allocation.
	data, err := io.ReadAll(f)
	if err != nil {
		return res, fmt.Errorf("read segment: %w", err)
	}
	now := time.Now().UnixMilli()
	// The checkpoint moves to the first record boundary at or after it: a
	// checkpoint inside a record (or inside damage padded below) would
	// leave the consumer stuck in the middle of a record.
	inSeg := cp.Segment == seq
	boundary := int64(-1)
	sc := scanRecords(data, func(off, n int64, pts uint32, at int64) {
		if inSeg && boundary < 0 && off >= cp.Offset {
			boundary = off
		}
		if (Position{seq, off}).less(cp) || pts == 0 && at == 0 {
			return // confirmed, or padding
		}
		res.points += int64(pts)
		if at > now || at <= 0 {
			at = now
		}
		s.times = append(s.times, pendingTime{end: Position{seq, off + n}, at: at})
	})
	// times is in order of end; damage found later cannot reorder it.
	bad := sc.damaged
	size := int64(len(data))
	if sc.tail < size {
		if !(last && sc.torn) {
			bad = append(bad, damage{off: sc.tail, end: size, records: countRecords(data[sc.tail:])})
		} else {
			res.torn = true
		}
	}
	for _, d := range bad {
		res.corruptBytes += d.end - d.off
		res.corruptRecords += d.records
		s.quarantine(seq, d.off, data[d.off:d.end])
	}
	if inSeg {
		res.cpOffset = sc.tail
		if boundary >= 0 {
			res.cpOffset = boundary
		}
		for _, d := range sc.damaged {
			if d.off >= cp.Offset && d.off < res.cpOffset {
				res.cpOffset = d.off // the damage starts on a record boundary (padded below)
			}
			if d.off < cp.Offset && cp.Offset < d.end && d.end < res.cpOffset {
				res.cpOffset = d.end // the checkpoint cannot point into damage
			}
		}
		// Saved before the padding is written: once padded, the damage
		// no longer shows where the checkpoint fell, and the next Open
		// must not start in the middle of a padding record.
		if res.cpOffset != cp.Offset {
			if err := s.writeCheckpoint(Position{seq, res.cpOffset}); err != nil {
				return res, err
			}
			s.log.Warn("spool: moved the checkpoint to a record boundary", "segment", segName(seq),
				"from", cp.Offset, "to", res.cpOffset)
		}
	}
	s.syncQuarantine()
	for _, d := range sc.damaged {
		if _, err := f.WriteAt(padding(d.end-d.off), d.off); err != nil {
			return res, fmt.Errorf("pad corrupt records: %w", err)
		}
	}
	if sc.tail < size {
		if err := f.Truncate(sc.tail); err != nil {
			return res, fmt.Errorf("truncate segment tail: %w", err)
		}
	}
	if len(bad) > 0 || res.torn {
		if err := f.Sync(); err != nil {
			return res, fmt.Errorf("sync recovered segment: %w", err)
		}
	}
	res.size = sc.tail
	return res, nil
}

// maxPadRecord bounds one padding record, so Read, which reads whole
// records into a batch of bounded size, always fits one.
const maxPadRecord = 4096

// padding returns n bytes (n >= headerSize) of padding records: zero
// points, zero append time, zero payload, a valid checksum. Read skips
// them; they take the place of damaged bytes so that offsets stay valid.
func padding(n int64) []byte {
	b := make([]byte, 0, n)
	for n > 0 {
		m := min(n, maxPadRecord)
		if rest := n - m; rest > 0 && rest < headerSize {
			m -= headerSize // leave room for a whole last record
		}
		b = appendRecord(b, 0, 0, make([]byte, m-headerSize))
		n -= m
	}
	return b
}

// maxQuarantineBytes bounds the quarantine file. Past it, damage is still
// skipped and counted but its bytes are no longer kept.
const maxQuarantineBytes = 64 << 20

func (s *Spool) quarantinePath() string { return filepath.Clean(s.opts.Dir) + ".quarantine" }

// quarantineFile is the quarantine file while recover runs: opened at
// the first damage, written through one buffer, fsynced once per segment
// before that segment's damage is padded over, closed when recover ends.
type quarantineFile struct {
	f      *os.File
	w      *bufio.Writer
	size   int64 // bytes in the file, written or buffered
	kept   int64 // damaged bytes buffered since the last sync
	broken bool  // a failure was logged; the evidence is no longer kept
}

// quarantine appends damaged bytes to the quarantine file beside the spool
// directory, each run after a one-line text header saying where it was.
// A failure only costs the evidence: it is logged once and recovery goes on.
func (s *Spool) quarantine(seq uint64, off int64, b []byte) {
	q := &s.qfile
	if q.broken {
		return
	}
	if q.f == nil {
		f, err := os.OpenFile(s.quarantinePath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			s.quarantineFailed("open", err)
			return
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			s.quarantineFailed("stat", err)
			return
		}
		q.f, q.w, q.size = f, bufio.NewWriterSize(f, 256<<10), fi.Size()
	}
	head := fmt.Sprintf("fieldhub-spool-quarantine segment=%s offset=%d bytes=%d at=%s\n",
		segName(seq), off, len(b), time.Now().UTC().Format(time.RFC3339))
	room := maxQuarantineBytes - q.size - int64(len(head)) - 1
	if room <= 0 {
		return
	}
	keep := b[:min(int64(len(b)), room)]
	q.w.WriteString(head)
	q.w.Write(keep)
	if err := q.w.WriteByte('\n'); err != nil { // a bufio.Writer keeps its first error
		s.quarantineFailed("write", err)
		return
	}
	q.size += int64(len(head)) + int64(len(keep)) + 1
	q.kept += int64(len(keep))
}

// syncQuarantine makes what quarantine buffered durable; recover calls it
// before it pads damage over, so the evidence is on disk first.
func (s *Spool) syncQuarantine() {
	q := &s.qfile
	if q.f == nil || q.broken || q.kept == 0 {
		return
	}
	if err := q.w.Flush(); err != nil {
		s.quarantineFailed("write", err)
		return
	}
	if err := q.f.Sync(); err != nil {
		s.quarantineFailed("sync", err)
		return
	}
	s.quarantined += q.kept
	q.kept = 0
}

// closeQuarantine syncs and closes the quarantine file at the end of recover.
func (s *Spool) closeQuarantine() {
	s.syncQuarantine()
	if s.qfile.f != nil {
		s.qfile.f.Close()
	}
	s.qfile = quarantineFile{}
}

func (s *Spool) quarantineFailed(what string, err error) {
	s.log.Error("spool: "+what+" quarantine file; damaged bytes are skipped without a copy", "err", err)
	s.qfile.broken = true
}

// parseRecord returns the length of the record at the start of b, its
// point count and append time, or ok=false if b does not start with a whole,
// intact record.
func parseRecord(b []byte) (n int64, points uint32, at int64, ok bool) {
	if len(b) < headerSize {
		return 0, 0, 0, false
	}
	length := binary.LittleEndian.Uint32(b[0:4])
	sum := binary.LittleEndian.Uint32(b[4:8])
	if int64(length) > int64(len(b)-headerSize) {
		return 0, 0, 0, false
	}
	if crc32.Checksum(b[8:headerSize+int(length)], crcTable) != sum {
		return 0, 0, 0, false
	}
	return headerSize + int64(length), binary.LittleEndian.Uint32(b[8:12]), int64(binary.LittleEndian.Uint64(b[12:20])), true
}

func appendRecord(b []byte, points uint32, at int64, payload []byte) []byte {
	start := len(b)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	b = binary.LittleEndian.AppendUint32(b, 0) // crc, filled below
	b = binary.LittleEndian.AppendUint32(b, points)
	b = binary.LittleEndian.AppendUint64(b, uint64(at))
	b = append(b, payload...)
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(b[start+8:], crcTable))
	return b
}

// roll starts a new active segment. Called from Open and the committer.
// The full segment is sealed first (cut back to its records and synced),
// so that only the newest segment can ever end in preallocated zeros. The
// new segment is created before the old one is closed: if creating it
// fails, the old one stays active (no longer preallocated: appends grow
// it) and the next append that needs room tries again.
func (s *Spool) roll() error {
	if s.active != nil {
		if err := s.seal(); err != nil {
			return err
		}
	}
	s.mu.Lock()
	seq := uint64(1)
	if n := len(s.segments); n > 0 {
		seq = s.segments[n-1] + 1
	}
	s.mu.Unlock()
	f, err := os.OpenFile(s.segPath(seq), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("create segment: %w", err)
	}
	if err := preallocate(f, s.opts.SegmentBytes); err != nil {
		// Only the saving is lost: appends then grow the file, and the
		// sync commits its size with the data.
		s.log.Warn("spool: preallocate segment", "segment", segName(seq), "err", err)
	}
	if !s.opts.NoSync {
		if err := syncDir(s.opts.Dir); err != nil {
			f.Close()
			os.Remove(s.segPath(seq)) // empty; the next try creates it again
			return err
		}
	}
	if s.active != nil {
		// Everything in it was synced by flush and seal; a close error loses nothing.
		if err := s.active.Close(); err != nil {
			s.log.Warn("spool: close full segment", "segment", segName(s.activeSeq), "err", err)
		}
	}
	s.active, s.activeSeq, s.activeLen = f, seq, 0
	s.mu.Lock()
	s.segments = append(s.segments, seq)
	s.sizes[seq] = 0
	if len(s.segments) == 1 {
		s.confirmed = Position{seq, 0}
		s.durable = Position{seq, 0}
	}
	s.mu.Unlock()
	return nil
}

// seal cuts the active segment back to its records, dropping the
// preallocated zeros after them, and syncs the new size, so that a
// segment other than the newest never ends in zeros (which recovery
// would have to tell apart from damage). Committer only, or Close after
// the committer stopped.
func (s *Spool) seal() error {
	if err := s.active.Truncate(s.activeLen); err != nil {
		return fmt.Errorf("seal segment: %w", err)
	}
	if s.opts.NoSync {
		return nil
	}
	if err := s.active.Sync(); err != nil {
		return fmt.Errorf("sync sealed segment: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open spool dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync spool dir: %w", err)
	}
	return nil
}

// Append makes payload (points line-protocol lines) durable. It returns nil
// only once the record is fsynced; ErrFull when the spool or disk is full;
// the context's error if ctx ends first (the record is durable then only
// if the committer had already copied it; the caller must not acknowledge
// it). With a CommitInterval it may wait that much longer for other
// appends to share its sync.
//
// payload must not hold a zero byte (line protocol never does; the bridge
// builds it with telemetry.AppendLines, whose fuzz test checks this):
// Append refuses it with ErrInvalid, so no payload can pass for a record
// when recovery resynchronises.
//
// Ownership: Append borrows payload and lets go of it before it returns,
// whatever it returns. The spool never reads payload after Append returned,
// so the caller may reuse or overwrite it at once (the bridge returns it
// to its buffer pool).
func (s *Spool) Append(ctx context.Context, points int, payload []byte) error {
	if int64(len(payload)+headerSize) > s.opts.SegmentBytes {
		return ErrTooLarge
	}
	if bytes.IndexByte(payload, 0) >= 0 {
		return ErrInvalid
	}
	r := s.pool.Get().(*appendReq)
	r.data, r.points, r.state = payload, uint32(points), reqQueued
	if s.opts.CommitInterval > 0 {
		r.queued = time.Now()
	}
	select {
	case s.reqs <- r:
	case <-s.quit:
		s.release(r)
		return ErrClosed
	case <-ctx.Done():
		s.release(r)
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		s.release(r)
		return err
	case <-s.stopped:
		select {
		case err := <-r.done:
			return err
		default:
			return ErrClosed
		}
	case <-ctx.Done():
		// r stays out of the pool either way: if abandon won, r is still
		// queued and the committer will look at it (and skip it); if the
		// committer copied payload first, it may still send on done.
		r.abandon()
		return fmt.Errorf("%w: %w", ErrMaybeStored, ctx.Err())
	}
}

// release returns r, answered or never queued, to the pool.
func (s *Spool) release(r *appendReq) {
	r.data = nil
	s.pool.Put(r)
}

func (s *Spool) commitLoop() {
	defer close(s.stopped)
	group := make([]*appendReq, 0, 64)
	// One timer for the whole loop; it runs only while a group lingers.
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for {
		select {
		case r := <-s.reqs:
			group = append(group[:0], r)
		case <-s.quit:
			// Commit what is already queued, then stop.
			for {
				group = group[:0]
			drain:
				for len(group) < maxGroup {
					select {
					case r := <-s.reqs:
						group = append(group, r)
					default:
						break drain
					}
				}
				if len(group) == 0 {
					return
				}
				s.commit(group)
			}
		}
	more:
		for len(group) < maxGroup {
			select {
			case r := <-s.reqs:
				group = append(group, r)
			default:
				break more
			}
		}
		if s.opts.CommitInterval > 0 {
			group = s.linger(group, linger)
		}
		s.commit(group)
	}
}

// linger holds group open until CommitInterval after its first append was
// queued, adding appends as they arrive. It returns early when the group
// holds maxGroup appends or the spool is closing, and at once when the
// first append already waited that long (it was queued while the previous
// sync ran).
func (s *Spool) linger(group []*appendReq, t *time.Timer) []*appendReq {
	wait := time.Until(group[0].queued.Add(s.opts.CommitInterval))
	if wait <= 0 || len(group) >= maxGroup {
		return group
	}
	t.Reset(wait)
	defer t.Stop()
	for len(group) < maxGroup {
		select {
		case r := <-s.reqs:
			group = append(group, r)
		case <-t.C:
			return group
		case <-s.quit:
			return group // commit at once; commitLoop drains the rest
		}
	}
	return group
}

// commit writes a group of records with one write and one sync (two when
// the group crosses into a new segment).
func (s *Spool) commit(group []*appendReq) {
	now := time.Now().UnixMilli()
	s.mu.Lock()
	room := s.opts.MaxBytes - s.bytes
	s.mu.Unlock()
	s.buf = s.buf[:0]
	accepted := s.accepted[:0]
	var points int64
	for _, r := range group {
		n := int64(headerSize + len(r.data))
		if n > room {
			if r.take() {
				s.lastFull.Store(time.Now().UnixNano())
				r.done <- ErrFull
			}
			continue
		}
		if s.activeLen+int64(len(s.buf))+n > s.opts.SegmentBytes && s.activeLen+int64(len(s.buf)) > 0 {
			s.flush(accepted, points, now)
			accepted, points, s.buf = accepted[:0], 0, s.buf[:0]
			if err := s.roll(); err != nil {
				s.log.Error("spool: roll segment", "err", err)
				if r.take() {
					r.done <- fmt.Errorf("roll segment: %w", err)
				}
				continue
			}
		}
		r.mu.Lock()
		if r.state == reqAbandoned {
			r.mu.Unlock()
			continue // Append returned: payload is no longer the spool's to read
		}
		s.buf = appendRecord(s.buf, r.points, now, r.data)
		r.state = reqTaken
		r.mu.Unlock()
		accepted = append(accepted, r)
		points += int64(r.points)
		room -= n
	}
	s.flush(accepted, points, now)
	clear(accepted) // drop the references: answered requests go back to the pool
	s.accepted = accepted[:0]
}

// flush writes s.buf to the active segment, syncs and answers the group.
func (s *Spool) flush(group []*appendReq, points, now int64) {
	if len(group) == 0 {
		return
	}
	err := s.write(s.buf)
	if err == nil {
		s.mu.Lock()
		s.activeLen += int64(len(s.buf))
		s.sizes[s.activeSeq] = s.activeLen
		s.bytes += int64(len(s.buf))
		s.durable = Position{s.activeSeq, s.activeLen}
		s.times = append(s.times, pendingTime{end: s.durable, at: now})
		s.mu.Unlock()
		s.pending.Add(points)
		s.appended.Add(points)
		s.commits.Add(1)
		select {
		case s.notify <- struct{}{}:
		default: // already signalled; the consumer reads everything durable
		}
	}
	for _, r := range group {
		r.done <- err
	}
}

// write puts b at the end of the active segment's records and makes it
// durable. The segment is preallocated, so the write lands inside the
// file; see datasync for why a data-only sync is enough.
func (s *Spool) write(b []byte) error {
	if _, err := s.active.WriteAt(b, s.activeLen); err != nil {
		s.cutBack()
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			s.lastFull.Store(time.Now().UnixNano())
			return ErrFull
		}
		return fmt.Errorf("write segment: %w", err)
	}
	if s.opts.NoSync {
		return nil
	}
	if err := datasync(s.active); err != nil {
		s.cutBack()
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			return ErrFull
		}
		return fmt.Errorf("fsync segment: %w", err)
	}
	return nil
}

// cutBack removes whatever part of a failed write reached the active
// segment, so that it ends on a record, and preallocates it again.
func (s *Spool) cutBack() {
	if err := s.active.Truncate(s.activeLen); err != nil {
		s.log.Error("spool: truncate after failed write", "err", err)
		return
	}
	if err := preallocate(s.active, s.opts.SegmentBytes); err != nil {
		s.log.Warn("spool: preallocate segment", "segment", segName(s.activeSeq), "err", err)
	}
}

// Notify returns a channel that receives after new records became durable.
func (s *Spool) Notify() <-chan struct{} { return s.notify }

// Confirmed returns the position of the first unconfirmed record, where a
// consumer starts reading after Open.
func (s *Spool) Confirmed() Position {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.confirmed
}

// Batch is a run of whole records read from the spool.
type Batch struct {
	Data   []byte // line protocol, one point per line
	Points int
	Next   Position // where the next Read starts
}

// Read returns the durable records from pos on, whole records only, until
// the batch holds maxPoints points or maxBytes bytes (at least one record
// when any is durable). It returns a Batch with Points == 0 when nothing is
// durable past pos. buf is reused for Data.
func (s *Spool) Read(pos Position, maxPoints int, maxBytes int, buf []byte) (Batch, error) {
	b := Batch{Data: buf[:0], Next: pos}
	for b.Points < maxPoints && len(b.Data) < maxBytes {
		s.mu.Lock()
		durable := s.durable
		segs := s.segments
		s.mu.Unlock()
		if !b.Next.less(durable) {
			return b, nil
		}
		end := s.segEnd(b.Next.Segment, durable)
		if b.Next.Offset >= end {
			next, ok := nextSegment(segs, b.Next.Segment)
			if !ok {
				return b, nil
			}
			b.Next = Position{next, 0}
			continue
		}
		f, err := s.reader(b.Next.Segment)
		if err != nil {
			return b, err
		}
		want := min(end-b.Next.Offset, int64(maxBytes-len(b.Data))+headerSize)
		chunk := make([]byte, want)
		if _, err := f.ReadAt(chunk, b.Next.Offset); err != nil && !errors.Is(err, io.EOF) {
			return b, fmt.Errorf("read segment: %w", err)
		}
		progressed := false
		for len(chunk) > 0 && b.Points < maxPoints {
			n, pts, at, ok := parseRecord(chunk)
			if !ok {
				if progressed {
					break // the chunk cut a record: it is read whole next time round
				}
				rest := chunk
				if int64(len(chunk)) < end-b.Next.Offset {
					rest = make([]byte, end-b.Next.Offset)
					if _, err := f.ReadAt(rest, b.Next.Offset); err != nil && !errors.Is(err, io.EOF) {
						return b, fmt.Errorf("read segment: %w", err)
					}
				}
				if n, _, _, ok := parseRecord(rest); ok {
					chunk = rest[:n] // one record larger than the batch bound
					continue
				}
				// Not a record boundary (damage since Open, or a position
				// inside a record): resynchronise on the next intact
				// record rather than fail on every call.
				skip := resync(rest)
				s.skipped(b.Next, skip)
				b.Next.Offset += skip
				progressed = true
				break
			}
			if len(b.Data) > 0 && len(b.Data)+int(n) > maxBytes {
				return b, nil
			}
			if pts != 0 || at != 0 { // padding carries no data
				b.Data = append(b.Data, chunk[headerSize:n]...)
			}
			b.Points += int(pts)
			b.Next.Offset += n
			chunk = chunk[n:]
			progressed = true
		}
		if !progressed {
			return b, nil
		}
	}
	return b, nil
}

// resync returns the offset in b of the first intact record after its
// start, or len(b) if there is none. Append refuses payloads holding a zero
// byte and every header holds one, so a payload cannot pass for a record.
func resync(b []byte) int64 {
	for p := 1; p+headerSize <= len(b); p++ {
		if plausibleHeader(b[p:]) {
			if _, _, _, ok := parseRecord(b[p:]); ok {
				return int64(p)
			}
		}
	}
	return int64(len(b))
}

// skipped logs and counts n bytes Read skipped at pos to resynchronise.
func (s *Spool) skipped(pos Position, n int64) {
	s.mu.Lock()
	s.corruptBytes += n
	s.corruptRecords++
	s.mu.Unlock()
	s.log.Error("spool: read position is not a record boundary, skipped to the next intact record",
		"segment", segName(pos.Segment), "offset", pos.Offset, "bytes", n)
}

// nextSegment returns the first segment after seq.
func nextSegment(segs []uint64, seq uint64) (uint64, bool) {
	i, found := slices.BinarySearch(segs, seq)
	if found {
		i++
	}
	if i >= len(segs) {
		return 0, false
	}
	return segs[i], true
}

func (s *Spool) segEnd(seq uint64, durable Position) int64 {
	if seq == durable.Segment {
		return durable.Offset
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sizes[seq]
}

func (s *Spool) reader(seq uint64) (*os.File, error) {
	s.mu.Lock()
	f := s.readers[seq]
	s.mu.Unlock()
	if f != nil {
		return f, nil
	}
	f, err := os.Open(s.segPath(seq))
	if err != nil {
		return nil, fmt.Errorf("open segment for reading: %w", err)
	}
	s.mu.Lock()
	s.readers[seq] = f
	s.mu.Unlock()
	return f, nil
}

// Confirm records that everything before pos is safely in InfluxDB: those
// records will not be replayed, and segments wholly before pos are deleted.
func (s *Spool) Confirm(pos Position, points int) error {
	s.mu.Lock()
	if !s.confirmed.less(pos) {
		s.mu.Unlock()
		return nil
	}
	s.confirmed = pos
	i := 0
	for i < len(s.times) && !pos.less(s.times[i].end) {
		i++
	}
	s.times = s.times[i:]
	var drop []uint64
	for len(s.segments) > 1 && s.segments[0] < pos.Segment {
		seq := s.segments[0]
		drop = append(drop, seq)
		s.bytes -= s.sizes[seq]
		delete(s.sizes, seq)
		if f := s.readers[seq]; f != nil {
			f.Close()
			delete(s.readers, seq)
		}
		s.segments = s.segments[1:]
	}
	s.mu.Unlock()
	s.pending.Add(-int64(points))
	if err := s.writeCheckpoint(pos); err != nil {
		return err
	}
	for _, seq := range drop {
		if err := os.Remove(s.segPath(seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove confirmed segment: %w", err)
		}
	}
	return nil
}

// The checkpoint need not be fsynced: if a crash loses it, the records after
// an older checkpoint are written to InfluxDB again, and a point written
// twice (same series and timestamp) is stored once.
func (s *Spool) writeCheckpoint(pos Position) error {
	var b []byte
	b = binary.LittleEndian.AppendUint64(b, pos.Segment)
	b = binary.LittleEndian.AppendUint64(b, uint64(pos.Offset))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
	tmp := filepath.Join(s.opts.Dir, "checkpoint.tmp")
	if err := os.WriteFile(tmp, b, 0o640); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.opts.Dir, "checkpoint")); err != nil {
		return fmt.Errorf("replace checkpoint: %w", err)
	}
	return nil
}

// readCheckpoint returns the saved checkpoint, or the start when there is
// none. A checkpoint that cannot be read or does not validate also means
// the start: everything is replayed (InfluxDB stores a point written twice
// once), which is logged and counted in Stats.CorruptCheckpoints.
func (s *Spool) readCheckpoint() Position {
	b, err := os.ReadFile(filepath.Join(s.opts.Dir, "checkpoint"))
	if errors.Is(err, os.ErrNotExist) {
		return Position{}
	}
	if err == nil && (len(b) != 20 || crc32.Checksum(b[:16], crcTable) != binary.LittleEndian.Uint32(b[16:])) {
		err = fmt.Errorf("%d bytes that do not validate", len(b))
	}
	if err != nil {
		s.corruptCheckpoints++
		s.log.Error("spool: checkpoint unreadable, replaying every segment from the start", "err", err)
		return Position{}
	}
	return Position{binary.LittleEndian.Uint64(b[0:8]), int64(binary.LittleEndian.Uint64(b[8:16]))}
}

// Stats returns a snapshot of the spool's state.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		Bytes:          s.bytes,
		MaxBytes:       s.opts.MaxBytes,
		PendingPoints:  s.pending.Load(),
		RecoveredTorn:  s.recovered,
		CorruptBytes:   s.corruptBytes,
		CorruptRecords: s.corruptRecords,
		AppendedPoints: s.appended.Load(),
		Commits:        s.commits.Load(),
	}
	st.CorruptCheckpoints = s.corruptCheckpoints
	if len(s.times) > 0 {
		st.OldestPending = time.UnixMilli(s.times[0].at)
	}
	if n := s.lastFull.Load(); n > 0 {
		st.LastFull = time.Unix(0, n)
	}
	return st
}

// Close stops accepting appends, commits what was already queued, cuts the
// active segment back to its records (dropping the preallocated rest) and
// closes the files. Unconfirmed records stay on disk for the next Open.
func (s *Spool) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.quit)
		<-s.stopped
		s.mu.Lock()
		for seq, f := range s.readers {
			f.Close()
			delete(s.readers, seq)
		}
		s.mu.Unlock()
		if s.active != nil {
			err = s.seal()
			if cerr := s.active.Close(); err == nil {
				err = cerr
			}
		}
	})
	return err
}
