package influx

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// PresenceLog returns the last n presence changes of device InfluxDB
// holds (telemetry.PresenceMeasurement), oldest first, as the live
// presence events they were written from.
func (c *Client) PresenceLog(ctx context.Context, device string, n int, now time.Time) ([]telemetry.Event, error) {
	if device == "" || len(device) > 64 || n < 1 {
		return nil, fmt.Errorf("%w: device or count is invalid", ErrBadQuery)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "from(bucket: %s)\n", strconv.Quote(c.opts.Bucket))
	fmt.Fprintf(&b, "  |> range(start: 1970-01-01T00:00:00Z, stop: %s)\n", now.Add(24*time.Hour).UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(&b, "  |> filter(fn: (r) => r._measurement == %s and r.%s == %s)\n",
		strconv.Quote(telemetry.PresenceMeasurement), telemetry.DeviceTag, strconv.Quote(device))
	b.WriteString("  |> keep(columns: [\"_time\", \"_field\", \"_value\"])\n")
	b.WriteString("  |> pivot(rowKey: [\"_time\"], columnKey: [\"_field\"], valueColumn: \"_value\")\n")
	b.WriteString("  |> group()\n")
	b.WriteString("  |> sort(columns: [\"_time\"], desc: true)\n")
	fmt.Fprintf(&b, "  |> limit(n: %d)\n", n)
	res, err := c.query.Query(ctx, b.String())
	if err != nil {
		return nil, fmt.Errorf("presence history: query influxdb: %w", withoutURL(err))
	}
	defer res.Close()
	evs := []telemetry.Event{}
	for res.Next() {
		r := res.Record()
		online, _ := r.ValueByKey("online").(bool)
		transport, _ := r.ValueByKey("transport").(string)
		reason, _ := r.ValueByKey("reason").(string)
		evs = append(evs, telemetry.Event{Type: telemetry.EventPresence, Device: device, Online: &online,
			Transport: transport, Reason: reason, At: r.Time().UnixMilli()})
	}
	if err := res.Err(); err != nil {
		return nil, fmt.Errorf("presence history: read influxdb answer: %w", withoutURL(err))
	}
	slices.Reverse(evs)
	return evs, nil
}
