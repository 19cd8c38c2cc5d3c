package influx

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// MetricSpan is what InfluxDB holds of one metric of a device: the type
// of its values ("number", "integer", "bool" or "string", the hub
// schema's names) and its first and last point.
type MetricSpan struct {
	Type        string
	First, Last time.Time
}

// MetricSpans returns every metric InfluxDB holds for device (not the
// field seq), with its
// type and its first and last point in time, up to a day past now (the
// hub accepts readings a few minutes ahead). InfluxDB scans the device's
// whole history for it, so ctx must bound it.
func (c *Client) MetricSpans(ctx context.Context, device string, now time.Time) (map[string]MetricSpan, error) {
	if device == "" || len(device) > 64 {
		return nil, fmt.Errorf("%w: device is invalid", ErrBadQuery)
	}
	spans := map[string]MetricSpan{}
	for _, sel := range []string{"first", "last"} {
		var b strings.Builder
		fmt.Fprintf(&b, "from(bucket: %s)\n", strconv.Quote(c.opts.Bucket))
		fmt.Fprintf(&b, "  |> range(start: 1970-01-01T00:00:00Z, stop: %s)\n", now.Add(24*time.Hour).UTC().Format(time.RFC3339Nano))
		// The field seq is the readings' sequence numbers (the ledger's),
		// not a metric: it stays out of the catalogue, charts and exports.
		fmt.Fprintf(&b, "  |> filter(fn: (r) => r._measurement == %s and r.%s == %s and r._field != %s)\n",
			strconv.Quote(telemetry.Measurement), telemetry.DeviceTag, strconv.Quote(device), strconv.Quote(telemetry.SeqField))
		b.WriteString("  |> keep(columns: [\"_time\", \"_field\", \"_value\"])\n")
		b.WriteString("  |> group(columns: [\"_field\"])\n")
		fmt.Fprintf(&b, "  |> %s()\n", sel)
		// The streaming client: ctx is the bound, not the per-request
		// timeout, for a long history takes a while to scan.
		res, err := c.stream.Query(ctx, b.String())
		if err != nil {
			return nil, fmt.Errorf("metric catalogue: query influxdb: %w", withoutURL(err))
		}
		for res.Next() {
			r := res.Record()
			name := r.Field()
			s := spans[name]
			if sel == "first" {
				s.First = r.Time()
			} else {
				s.Last = r.Time()
			}
			if s.Type == "" {
				s.Type = valueType(r.Value())
			}
			spans[name] = s
		}
		err = res.Err()
		res.Close()
		if err != nil {
			return nil, fmt.Errorf("metric catalogue: read influxdb answer: %w", withoutURL(err))
		}
	}
	return spans, nil
}

// valueType names the schema type of a value Flux returned.
func valueType(v any) string {
	switch v.(type) {
	case float64:
		return "number"
	case int64, uint64:
		return "integer"
	case bool:
		return "bool"
	case string:
		return "string"
	}
	return ""
}
