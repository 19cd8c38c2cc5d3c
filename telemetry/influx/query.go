package influx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// HistoryQuery asks for one metric of one device over a time range. Every
// part is validated before it goes into a Flux query, and strings enter the
// query only through strconv.Quote: there is no way to inject Flux.
type HistoryQuery struct {
	Device string
	Metric string
	Start  time.Time
	Stop   time.Time
	// Every, when set, aggregates into windows of that size with Fn.
	Every time.Duration
	Fn    string // mean, min, max, sum, count, last, first; default mean
	Limit int    // raw points only; default and maximum 10,000
	// Points, when set (1 to MaxDownsamplePoints), downsamples for a
	// chart: Every becomes the span divided by Points, rounded up to a
	// whole second, windows without a point come back with a nil Value
	// (a gap, not a line across it), and at most Points points are
	// returned (the newest, when the windows, aligned to the epoch, are
	// one more). Every must then be zero.
	Points int
}

// MaxDownsamplePoints bounds HistoryQuery.Points: no chart is wider.
const MaxDownsamplePoints = 2000

// window is the aggregation window of q and whether empty windows are
// kept: Every, or the one Points implies.
func (q HistoryQuery) window() (every time.Duration, createEmpty bool) {
	if q.Points <= 0 {
		return q.Every, false
	}
	span := q.Stop.Sub(q.Start)
	n := time.Duration(q.Points)
	secs := (span + n*time.Second - 1) / (n * time.Second) // ceil(span / Points) in whole seconds
	return max(secs, 1) * time.Second, true
}

// withGaps returns the downsampled points with a nil-valued point for
// every window that has none, newest Points of them. Windows are Flux's:
// aligned to the epoch, cut at Start and Stop, each stamped with its end.
func (q HistoryQuery) withGaps(points []Point) []Point {
	every, _ := q.window()
	w := every.Milliseconds()
	start, stop := q.Start.UnixMilli(), q.Stop.UnixMilli()
	var ends []int64
	for e := (start/w + 1) * w; e < stop; e += w {
		ends = append(ends, e)
	}
	ends = append(ends, stop)
	if len(ends) > q.Points {
		ends = ends[len(ends)-q.Points:]
	}
	out := make([]Point, 0, len(ends))
	i := 0
	for _, e := range ends {
		for i < len(points) && points[i].TS < e {
			i++ // before the first window kept
		}
		if i < len(points) && points[i].TS == e {
			out = append(out, points[i])
			i++
			continue
		}
		out = append(out, Point{TS: e})
	}
	return out
}

// Point is one value of a history series.
type Point struct {
	TS    int64 `json:"ts"`
	Value any   `json:"value"`
}

// MaxHistoryPoints bounds a raw history answer.
const MaxHistoryPoints = 10000

// AggregateFns are the aggregate functions the history API accepts.
var AggregateFns = map[string]bool{"mean": true, "min": true, "max": true, "sum": true, "count": true, "last": true, "first": true, "median": true}

// ErrBadQuery wraps a HistoryQuery that breaks a rule.
var ErrBadQuery = errors.New("bad history query")

// Flux returns the Flux query for q against bucket.
func (q HistoryQuery) Flux(bucket string) (string, error) {
	switch {
	case !telemetry.ValidName(q.Metric):
		return "", fmt.Errorf("%w: metric name is invalid", ErrBadQuery)
	case q.Device == "" || len(q.Device) > 64:
		return "", fmt.Errorf("%w: device is invalid", ErrBadQuery)
	case !q.Start.Before(q.Stop):
		return "", fmt.Errorf("%w: start must be before stop", ErrBadQuery)
	case q.Every < 0 || (q.Every > 0 && q.Every < time.Second):
		return "", fmt.Errorf("%w: every must be at least 1s", ErrBadQuery)
	case q.Points < 0 || q.Points > MaxDownsamplePoints:
		return "", fmt.Errorf("%w: points must be 1 to %d", ErrBadQuery, MaxDownsamplePoints)
	case q.Points > 0 && q.Every > 0:
		return "", fmt.Errorf("%w: give points or every, not both", ErrBadQuery)
	}
	fn := q.Fn
	if fn == "" {
		fn = "mean"
	}
	if !AggregateFns[fn] {
		return "", fmt.Errorf("%w: fn must be one of mean, min, max, sum, count, first, last, median", ErrBadQuery)
	}
	limit := q.Limit
	if limit <= 0 || limit > MaxHistoryPoints {
		limit = MaxHistoryPoints
	}
	every, _ := q.window()
	var b strings.Builder
	fmt.Fprintf(&b, "from(bucket: %s)\n", strconv.Quote(bucket))
	fmt.Fprintf(&b, "  |> range(start: %s, stop: %s)\n", q.Start.UTC().Format(time.RFC3339Nano), q.Stop.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(&b, "  |> filter(fn: (r) => r._measurement == %s and r.%s == %s and r._field == %s)\n",
		strconv.Quote(telemetry.Measurement), telemetry.DeviceTag, strconv.Quote(q.Device), strconv.Quote(q.Metric))
	b.WriteString("  |> keep(columns: [\"_time\", \"_value\"])\n")
	if every > 0 {
		// Empty windows are filled in by History (withGaps): Flux's
		// createEmpty makes none for selectors such as last.
		fmt.Fprintf(&b, "  |> aggregateWindow(every: %ds, fn: %s, createEmpty: false)\n", int64(every/time.Second), fn)
	}
	b.WriteString("  |> sort(columns: [\"_time\"])\n")
	fmt.Fprintf(&b, "  |> limit(n: %d)\n", limit)
	return b.String(), nil
}

// History runs q and returns its points in time order.
func (c *Client) History(ctx context.Context, q HistoryQuery) ([]Point, error) {
	flux, err := q.Flux(c.opts.Bucket)
	if err != nil {
		return nil, err
	}
	res, err := c.query.Query(ctx, flux)
	if err != nil {
		return nil, fmt.Errorf("query influxdb: %w", withoutURL(err))
	}
	defer res.Close()
	points := []Point{}
	for res.Next() {
		r := res.Record()
		points = append(points, Point{TS: r.Time().UnixMilli(), Value: r.Value()})
	}
	if err := res.Err(); err != nil {
		return nil, fmt.Errorf("read influxdb answer: %w", withoutURL(err))
	}
	if q.Points > 0 {
		points = q.withGaps(points)
	}
	return points, nil
}

// FieldTypes returns the type InfluxDB has for each field of the telemetry
// measurement ("float", "integer", "string" or "boolean"), so the hub
// refuses a conflicting reading before acknowledging it instead of
// InfluxDB refusing it afterwards. It asks with InfluxQL's SHOW FIELD KEYS
// on the 1.x query endpoint (InfluxDB 1.8, and 2.x with a DBRP mapping).
// A field with different types in different shards keeps the first.
func (c *Client) FieldTypes(ctx context.Context) (map[string]string, error) {
	db, rp, _ := strings.Cut(c.opts.Bucket, "/")
	form := url.Values{"q": {`SHOW FIELD KEYS FROM "` + telemetry.Measurement + `"`}, "db": {db}}
	if rp != "" {
		form.Set("rp", rp)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.opts.URL, "/")+"/query", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("show field keys: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if c.opts.Token != "" {
		req.Header.Set("Authorization", "Token "+c.opts.Token)
	}
	resp, err := (&http.Client{Timeout: c.opts.Timeout}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("show field keys: %w", withoutURL(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("show field keys: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("show field keys: status %d: %s", resp.StatusCode, telemetry.Truncate(string(body), 200))
	}
	var out struct {
		Results []struct {
			Error  string `json:"error"`
			Series []struct {
				Values [][]string `json:"values"`
			} `json:"series"`
		} `json:"results"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("show field keys: decode answer: %w", err)
	}
	types := map[string]string{}
	for _, r := range out.Results {
		if r.Error != "" {
			return nil, fmt.Errorf("show field keys: %s", telemetry.Truncate(r.Error, 200))
		}
		for _, s := range r.Series {
			for _, v := range s.Values {
				if len(v) == 2 {
					if _, ok := types[v[0]]; !ok {
						types[v[0]] = v[1]
					}
				}
			}
		}
	}
	return types, nil
}
