// Package influx moves readings from the spool into InfluxDB and reads them
// back for the history API. It is the only package that imports
// influxdb-client-go, and it works the same against InfluxDB 1.8 (2.x
// compatibility API) and InfluxDB 2.x/Cloud: org, bucket and token are plain
// settings.
//
// Durability does not rest on the client library: the writer uses the
// blocking write API under its own retry loop and confirms a spool batch
// only after InfluxDB answered 2xx.
package influx

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api"
	http2 "github.com/influxdata/influxdb-client-go/v2/api/http"

	"github.com/fieldhub/fieldhub/telemetry"
	"github.com/fieldhub/fieldhub/telemetry/spool"
)

// Options configures the connection to InfluxDB and the writer. Zero values
// take the documented defaults.
type Options struct {
	URL    string // default http://127.0.0.1:8086
	Org    string // ignored by InfluxDB 1.8
	Bucket string // default "telemetry"; on 1.8 "db/retention-policy" or "db"
	Token  string // on 1.8 "user:password" or empty
	// BatchPoints and FlushInterval bound a write: up to BatchPoints points,
	// or what arrived within FlushInterval. Defaults 5,000 and 100 ms.
	BatchPoints   int
	FlushInterval time.Duration
	// Gzip compresses write bodies; it costs CPU, worth it on slow links.
	Gzip bool
	// Timeout bounds one HTTP request; default 10 s.
	Timeout time.Duration
	// MaxBackoff caps the wait between retries; default 30 s.
	MaxBackoff time.Duration
	// DeadLetterPath receives points InfluxDB permanently rejected, one
	// "# reason" line before each. Required for the writer.
	DeadLetterPath string
	Logger         *slog.Logger
}

func (o *Options) ensureDefaults() {
	if o.URL == "" {
		o.URL = "http://127.0.0.1:8086"
	}
	if o.Bucket == "" {
		o.Bucket = "telemetry"
	}
	if o.BatchPoints <= 0 {
		o.BatchPoints = 5000
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = 100 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Client is a connection to InfluxDB shared by the writer and the history
// queries.
type Client struct {
	opts  Options
	c     influxdb2.Client
	write api.WriteAPIBlocking
	query api.QueryAPI
	// streamC and stream answer exports (export.go): the same server
	// without the per-request timeout, which would cut a long download.
	streamC influxdb2.Client
	stream  api.QueryAPI
}

// NewClient returns a Client for opts. It does not connect.
func NewClient(opts Options) *Client {
	opts.ensureDefaults()
	o := influxdb2.DefaultOptions().
		SetPrecision(time.Nanosecond). // telemetry.AppendLines writes nanoseconds

		SetUseGZip(opts.Gzip).
		SetHTTPClient(&http.Client{Timeout: opts.Timeout})
	c := influxdb2.NewClientWithOptions(opts.URL, opts.Token, o)
	so := influxdb2.DefaultOptions().SetUseGZip(opts.Gzip).SetHTTPClient(streamingHTTPClient(opts.Timeout))
	sc := influxdb2.NewClientWithOptions(opts.URL, opts.Token, so)
	return &Client{opts: opts, c: c, write: c.WriteAPIBlocking(opts.Org, opts.Bucket), query: c.QueryAPI(opts.Org),
		streamC: sc, stream: sc.QueryAPI(opts.Org)}
}

// Close releases idle connections.
func (c *Client) Close() {
	c.c.Close()
	c.streamC.Close()
}

// Ping reports whether InfluxDB answers.
func (c *Client) Ping(ctx context.Context) error {
	ok, err := c.c.Ping(ctx)
	if err != nil {
		return fmt.Errorf("ping influxdb: %w", withoutURL(err))
	}
	if !ok {
		return errors.New("ping influxdb: not ok")
	}
	return nil
}

// WriterStats is a snapshot for readiness and metrics.
type WriterStats struct {
	WrittenPoints  int64
	Batches        int64
	DeadLettered   int64
	Retries        int64
	ErrorsByClass  map[string]int64
	LastError      string // empty when the last write succeeded
	LastErrorAt    time.Time
	Healthy        bool // the last write (or ping) succeeded
	LastBatchSize  int
	LastWriteNanos int64
}

// Error classes for metrics: low-cardinality names for why a write failed.
const (
	ClassNetwork   = "network"   // no HTTP answer
	ClassServer    = "server"    // 5xx
	ClassThrottled = "throttled" // 429 or 503 with Retry-After
	ClassAuth      = "auth"      // 401/403/404: a settings problem
	ClassRejected  = "rejected"  // 400/413/422: points permanently refused
)

// Writer drains the spool into InfluxDB in order, in batches, retrying
// transient failures with capped exponential backoff and full jitter, and
// sending permanently rejected points to the dead-letter file.
type Writer struct {
	c     *Client
	sp    *spool.Spool
	opts  Options
	log   *slog.Logger
	dlMu  sync.Mutex
	stats struct {
		written, batches, dead, retries atomic.Int64
		mu                              sync.Mutex
		byClass                         map[string]int64
		lastErr                         string
		lastErrAt                       time.Time
		healthy                         bool
		lastBatch                       int
		lastNanos                       int64
	}
	obs WriterObservers
}

// WriterObservers are optional callbacks a Writer calls on its one
// goroutine, given at construction (metrics hang off them); each must
// return quickly.
type WriterObservers struct {
	// OnBatch observes each successful write (points and duration).
	OnBatch func(points int, d time.Duration)
	// OnError observes each failed write by class.
	OnError func(class string)
	// OnWritten observes the line protocol of each successful write
	// (the ledger counts it per device); data is only borrowed for the
	// call.
	OnWritten func(data []byte)
	// OnDeadLettered observes the line protocol of points InfluxDB
	// refused for good, likewise.
	OnDeadLettered func(data []byte)
}

// NewWriter returns a writer draining sp into c, reporting to obs.
func NewWriter(c *Client, sp *spool.Spool, obs WriterObservers) (*Writer, error) {
	if c.opts.DeadLetterPath == "" {
		return nil, errors.New("influx writer: DeadLetterPath is required")
	}
	w := &Writer{c: c, sp: sp, opts: c.opts, log: c.opts.Logger, obs: obs}
	w.stats.byClass = map[string]int64{}
	w.stats.healthy = true
	return w, nil
}

// Stats returns a snapshot of the writer's counters.
// Ready is the writer's health: nil when InfluxDB answers a ping and the
// last write succeeded; otherwise the ping's error or the last write's.
// InfluxDB down only degrades the hub (readings wait in the spool), so
// the hub never turns unready on it; /readyz reports "spooling".
func (w *Writer) Ready(ctx context.Context) error {
	if err := w.c.Ping(ctx); err != nil {
		return err
	}
	if st := w.Stats(); !st.Healthy {
		return errors.New(st.LastError) // the write error as the writer logged it
	}
	return nil
}

func (w *Writer) Stats() WriterStats {
	w.stats.mu.Lock()
	defer w.stats.mu.Unlock()
	by := make(map[string]int64, len(w.stats.byClass))
	for k, v := range w.stats.byClass {
		by[k] = v
	}
	return WriterStats{
		WrittenPoints: w.stats.written.Load(), Batches: w.stats.batches.Load(),
		DeadLettered: w.stats.dead.Load(), Retries: w.stats.retries.Load(),
		ErrorsByClass: by, LastError: w.stats.lastErr, LastErrorAt: w.stats.lastErrAt,
		Healthy: w.stats.healthy, LastBatchSize: w.stats.lastBatch, LastWriteNanos: w.stats.lastNanos,
	}
}

// Run drains the spool until ctx ends. When ctx ends it stops between
// batches; what it did not confirm stays in the spool for the next start.
func (w *Writer) Run(ctx context.Context) error {
	pos := w.sp.Confirmed()
	buf := make([]byte, 0, 1<<20)
	maxBytes := 16 << 20
	for {
		b, err := w.sp.Read(pos, w.opts.BatchPoints, maxBytes, buf)
		if err != nil {
			return fmt.Errorf("read spool: %w", err)
		}
		if b.Points == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-w.sp.Notify():
				continue
			}
		}
		// Give a small batch up to FlushInterval to fill up.
		if b.Points < w.opts.BatchPoints {
			deadline := time.NewTimer(w.opts.FlushInterval)
		fill:
			for b.Points < w.opts.BatchPoints && len(b.Data) < maxBytes {
				select {
				case <-ctx.Done():
					deadline.Stop()
					break fill // write what we have; shutdown flushes
				case <-deadline.C:
					break fill
				case <-w.sp.Notify():
					more, err := w.sp.Read(b.Next, w.opts.BatchPoints-b.Points, maxBytes-len(b.Data), nil)
					if err != nil {
						deadline.Stop()
						return fmt.Errorf("read spool: %w", err)
					}
					b.Data = append(b.Data, more.Data...)
					b.Points += more.Points
					b.Next = more.Next
				}
			}
			deadline.Stop()
		}
		if err := w.writeAll(ctx, upgradeMillis(b.Data), b.Points); err != nil {
			return nil // ctx ended mid-retry; the batch stays unconfirmed
		}
		if err := w.sp.Confirm(b.Next, b.Points); err != nil {
			return fmt.Errorf("confirm spool: %w", err)
		}
		pos = b.Next
		buf = b.Data[:0]
	}
}

// writeAll writes data until InfluxDB accepted it or rejected parts of it
// for good. It returns an error only when ctx ends.
func (w *Writer) writeAll(ctx context.Context, data []byte, points int) error {
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		// string(data) copies the batch, on purpose: data is the spool's
		// read buffer, reused for the next batch as soon as this returns,
		// and the client may still read the body after WriteRecord
		// returned (its gzip compressor is an unwaited goroutine reading
		// the body through a pipe; net/http may finish writing a body
		// after RoundTrip returned). A zero-copy string over data would
		// race with the next read. The copy is one memmove per batch
		// (BenchmarkWriter: noise beside the HTTP round trip).
		err := w.c.write.WriteRecord(ctx, string(data))
		if err == nil {
			d := time.Since(start)
			w.succeeded(points, d)
			if w.obs.OnWritten != nil {
				w.obs.OnWritten(data)
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		class, status, retryAfter := classify(err)
		w.failed(class, err)
		if class == ClassRejected {
			if points <= 1 || status == 0 {
				return w.deadLetter(data, points, status, err)
			}
			// Find the bad lines by halving; good lines written twice are
			// stored once (same series and timestamp).
			first, second := splitLines(data)
			if err := w.writeAll(ctx, first, bytes.Count(first, []byte{'\n'})); err != nil {
				return err
			}
			return w.writeAll(ctx, second, bytes.Count(second, []byte{'\n'}))
		}
		wait := time.Duration(rand.Int64N(int64(backoff)) + 1) // full jitter
		if retryAfter > 0 {
			wait = retryAfter
		}
		backoff = min(backoff*2, w.opts.MaxBackoff)
		w.stats.retries.Add(1)
		w.log.Warn("influxdb write failed; retrying", "class", class, "status", status, "points", points, "retry_in", wait.Round(time.Millisecond), "err", withoutURL(err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (w *Writer) succeeded(points int, d time.Duration) {
	w.stats.written.Add(int64(points))
	w.stats.batches.Add(1)
	w.stats.mu.Lock()
	w.stats.healthy = true
	w.stats.lastErr = ""
	w.stats.lastBatch = points
	w.stats.lastNanos = int64(d)
	w.stats.mu.Unlock()
	if w.obs.OnBatch != nil {
		w.obs.OnBatch(points, d)
	}
}

func (w *Writer) failed(class string, err error) {
	w.stats.mu.Lock()
	w.stats.byClass[class]++
	if class != ClassRejected {
		w.stats.healthy = false
		w.stats.lastErr = class + ": " + telemetry.Truncate(withoutURL(err).Error(), 200)
		w.stats.lastErrAt = time.Now()
	}
	w.stats.mu.Unlock()
	if w.obs.OnError != nil {
		w.obs.OnError(class)
	}
}

// classify maps a write error to a class, its HTTP status (0 if none) and
// the server's Retry-After.
func classify(err error) (class string, status int, retryAfter time.Duration) {
	var he *http2.Error
	if !errors.As(err, &he) || he.StatusCode == 0 {
		return ClassNetwork, 0, 0
	}
	status = he.StatusCode
	retryAfter = time.Duration(he.RetryAfter) * time.Second
	switch {
	case status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable:
		return ClassThrottled, status, retryAfter
	case status == http.StatusBadRequest || status == http.StatusRequestEntityTooLarge || status == http.StatusUnprocessableEntity:
		return ClassRejected, status, 0
	case status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusNotFound:
		return ClassAuth, status, retryAfter
	default:
		return ClassServer, status, retryAfter
	}
}

// upgradeMillis rewrites the lines a hub before nanosecond timestamps
// spooled (timestamps in milliseconds: at most 16 digits, where
// nanoseconds of any time since 2001 have 19) to nanoseconds, so a spool
// written by an older version replays at the right instants. Data without
// such lines is returned as it is, without a copy.
func upgradeMillis(data []byte) []byte {
	var out []byte
	copied := 0
	for start := 0; start < len(data); {
		end := bytes.IndexByte(data[start:], '\n')
		if end < 0 {
			end = len(data)
		} else {
			end += start
		}
		line := data[start:end]
		if sp := bytes.LastIndexByte(line, ' '); sp >= 0 && len(line)-sp-1 > 0 && len(line)-sp-1 <= 16 {
			if out == nil {
				out = make([]byte, 0, len(data)+len(data)/8)
			}
			out = append(out, data[copied:end]...)
			out = append(out, "000000"...)
			copied = end
		}
		start = end + 1
	}
	if out == nil {
		return data
	}
	return append(out, data[copied:]...)
}

// splitLines cuts line-protocol data into two halves at a line boundary.
func splitLines(data []byte) (first, second []byte) {
	mid := len(data) / 2
	i := bytes.IndexByte(data[mid:], '\n')
	if i < 0 || mid+i+1 >= len(data) {
		i = bytes.LastIndexByte(data[:len(data)-1], '\n') - mid
	}
	cut := mid + i + 1
	return data[:cut], data[cut:]
}

func (w *Writer) deadLetter(data []byte, points int, status int, cause error) error {
	w.dlMu.Lock()
	defer w.dlMu.Unlock()
	f, err := os.OpenFile(w.opts.DeadLetterPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err == nil {
		bw := bufio.NewWriter(f)
		fmt.Fprintf(bw, "# %s status=%d reason=%q\n", time.Now().UTC().Format(time.RFC3339), status, telemetry.Truncate(cause.Error(), 500))
		bw.Write(data)
		if err = bw.Flush(); err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		// Losing the record of a point InfluxDB will never take is better
		// than blocking every good point behind it; say so loudly.
		w.log.Error("dead-letter write failed; rejected points dropped", "points", points, "err", err)
	} else {
		w.log.Warn("influxdb rejected points; dead-lettered", "points", points, "status", status, "reason", telemetry.Truncate(cause.Error(), 200))
	}
	w.stats.dead.Add(int64(points))
	if w.obs.OnDeadLettered != nil {
		w.obs.OnDeadLettered(data)
	}
	return nil
}

// withoutURL keeps request URLs (which name the server, bucket and org)
// out of logs and readiness output: a *url.Error becomes its operation and
// cause.
func withoutURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s request: %w", ue.Op, ue.Err)
	}
	return err
}
