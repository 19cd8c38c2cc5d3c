package influx

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/influxdata/influxdb-client-go/v2/api"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Bounds of an export (docs/protocol.md, the export endpoint).
const (
	MaxExportMetrics = 16
	MaxExportRows    = 1_000_000
)

// ExportQuery asks for the raw points of one or several metrics of one
// device over a time range, for a CSV or JSON lines download.
type ExportQuery struct {
	Device  string
	Metrics []string
	Start   time.Time
	Stop    time.Time
	// MaxRows bounds the rows of the whole export; default and maximum
	// MaxExportRows.
	MaxRows int
}

// Row is one point of an export.
type Row struct {
	Time   time.Time
	Metric string
	Value  any // float64, int64, bool or string
}

// check returns the rule q breaks, or nil.
func (q *ExportQuery) check() error {
	switch {
	case q.Device == "" || len(q.Device) > 64:
		return fmt.Errorf("%w: device is invalid", ErrBadQuery)
	case len(q.Metrics) == 0 || len(q.Metrics) > MaxExportMetrics:
		return fmt.Errorf("%w: give 1 to %d metrics", ErrBadQuery, MaxExportMetrics)
	case !q.Start.Before(q.Stop):
		return fmt.Errorf("%w: start must be before stop", ErrBadQuery)
	}
	for i, m := range q.Metrics {
		if !telemetry.ValidName(m) {
			return fmt.Errorf("%w: metric %q is not a valid metric name", ErrBadQuery, telemetry.Truncate(m, 80))
		}
		if slices.Contains(q.Metrics[:i], m) {
			return fmt.Errorf("%w: metric %q is named twice", ErrBadQuery, m)
		}
	}
	if q.MaxRows <= 0 || q.MaxRows > MaxExportRows {
		q.MaxRows = MaxExportRows
	}
	return nil
}

// exportFlux is the query for one metric of q: its points in time order,
// every series of the device (labels written as tags may have changed)
// merged, at most one row more than the export may hold, so the merge can
// tell there was more.
func (q *ExportQuery) exportFlux(bucket, metric string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "from(bucket: %s)\n", strconv.Quote(bucket))
	fmt.Fprintf(&b, "  |> range(start: %s, stop: %s)\n", q.Start.UTC().Format(time.RFC3339Nano), q.Stop.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(&b, "  |> filter(fn: (r) => r._measurement == %s and r.%s == %s and r._field == %s)\n",
		strconv.Quote(telemetry.Measurement), telemetry.DeviceTag, strconv.Quote(q.Device), strconv.Quote(metric))
	b.WriteString("  |> keep(columns: [\"_time\", \"_value\"])\n")
	b.WriteString("  |> group()\n")
	b.WriteString("  |> sort(columns: [\"_time\"])\n")
	fmt.Fprintf(&b, "  |> limit(n: %d)\n", q.MaxRows+1)
	return b.String()
}

// Export is an export being read: one streamed InfluxDB answer per
// metric, merged in time order as the caller reads, so the hub holds one
// row per metric whatever the range. Not safe for concurrent use.
type Export struct {
	q       ExportQuery
	streams []*exportStream
	rows    int
	err     error
	row     Row
	trunc   bool
}

type exportStream struct {
	metric string
	res    *api.QueryTableResult
	head   *Row // the stream's next row; nil once it ended
}

// Export starts q: every metric's query is sent and answered (status and
// first bytes) before it returns, so an InfluxDB that is down or refuses
// the query is an error here, before the caller has written anything.
// The caller reads with Next and must Close.
func (c *Client) Export(ctx context.Context, q ExportQuery) (*Export, error) {
	if err := q.check(); err != nil {
		return nil, err
	}
	e := &Export{q: q}
	for _, m := range q.Metrics {
		res, err := c.stream.Query(ctx, q.exportFlux(c.opts.Bucket, m))
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("export %s: query influxdb: %w", m, withoutURL(err))
		}
		s := &exportStream{metric: m, res: res}
		e.streams = append(e.streams, s)
		if err := s.advance(); err != nil {
			e.Close()
			return nil, fmt.Errorf("export %s: %w", m, err)
		}
	}
	return e, nil
}

// advance reads the stream's next row into head.
func (s *exportStream) advance() error {
	s.head = nil
	if s.res.Next() {
		r := s.res.Record()
		s.head = &Row{Time: r.Time(), Metric: s.metric, Value: r.Value()}
		return nil
	}
	if err := s.res.Err(); err != nil {
		return fmt.Errorf("read influxdb answer: %w", withoutURL(err))
	}
	return nil
}

// Next moves to the next row in time order (ties in the order the
// metrics were given) and reports whether there is one. It stops after
// MaxRows rows (Truncated then says whether there were more) or at an
// error (Err).
func (e *Export) Next() bool {
	if e.err != nil {
		return false
	}
	var next *exportStream
	for _, s := range e.streams {
		if s.head != nil && (next == nil || s.head.Time.Before(next.head.Time)) {
			next = s
		}
	}
	if next == nil {
		return false
	}
	if e.rows == e.q.MaxRows {
		e.trunc = true
		return false
	}
	e.row = *next.head
	e.rows++
	if err := next.advance(); err != nil {
		e.err = fmt.Errorf("export %s: %w", next.metric, err)
	}
	return true
}

// Row is the current row.
func (e *Export) Row() Row { return e.row }

// Truncated reports whether the export stopped at MaxRows with more rows
// in the range.
func (e *Export) Truncated() bool { return e.trunc }

// Err is the error that ended the export early, if any. The rows read
// before it are valid.
func (e *Export) Err() error { return e.err }

// Close ends every stream.
func (e *Export) Close() {
	for _, s := range e.streams {
		_ = s.res.Close()
	}
}

// streamingHTTPClient is the HTTP client of exports: no overall timeout
// (an export of a large range streams for as long as it takes, bounded by
// the caller's context), but the connection and InfluxDB's first answer
// are bounded by timeout, and an idle body read fails through the
// caller's context.
func streamingHTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		ResponseHeaderTimeout: timeout,
		MaxIdleConnsPerHost:   MaxExportMetrics,
		IdleConnTimeout:       90 * time.Second,
	}}
}
