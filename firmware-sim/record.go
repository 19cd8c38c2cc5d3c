package firmwaresim

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Reading is one reading the fleet sent, as the hub must store it: the
// device, the timestamp the device gave it (milliseconds since the epoch)
// and its metric values.
type Reading struct {
	Device  string
	TS      int64
	Metrics map[string]float64
}

// Record is what a fleet run with Config.RecordAcked remembered: every
// reading the hub acknowledged and every reading of a faulty message it
// refused, each up to the cap. AckedOver and RefusedOver count what did not
// fit; a check that finds AckedOver > 0 did not see every acked reading.
type Record struct {
	Acked, Refused         []Reading
	AckedOver, RefusedOver int64
}

// recorder keeps the fleet's Record. Devices call it after settling a
// message, outside their own lock; it is bounded by cap per list.
type recorder struct {
	mu  sync.Mutex // guards rec
	cap int
	rec Record
}

func (r *recorder) add(acked bool, rs []Reading) {
	if r.cap <= 0 || len(rs) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	list, over := &r.rec.Acked, &r.rec.AckedOver
	if !acked {
		list, over = &r.rec.Refused, &r.rec.RefusedOver
	}
	room := max(0, r.cap-len(*list))
	n := min(room, len(rs))
	*list = append(*list, rs[:n]...)
	*over += int64(len(rs) - n)
}

// Recorded returns what the fleet recorded so far (nothing unless
// Config.RecordAcked is set).
func (f *Fleet) Recorded() Record {
	r := &f.rec
	r.mu.Lock()
	defer r.mu.Unlock()
	return Record{Acked: slices.Clone(r.rec.Acked), Refused: slices.Clone(r.rec.Refused),
		AckedOver: r.rec.AckedOver, RefusedOver: r.rec.RefusedOver}
}

// Verification is the reading-by-reading comparison of a fleet's Record
// with what InfluxDB holds.
type Verification struct {
	// Acked acknowledged readings were checked; Found of them are in
	// InfluxDB at their device and timestamp with every metric value equal.
	Acked, Found int
	// Missing acked readings have no point at their device and timestamp;
	// Wrong ones have a point whose values differ (or lack a metric).
	Missing, Wrong int
	// Refused readings were checked for absence; RefusedStored of them
	// are in InfluxDB anyway.
	Refused, RefusedStored int
	// Unacked points of the fleet's devices match no acknowledged reading.
	Unacked int
	// Incomplete: the record hit its cap, so some acked readings went
	// unchecked.
	Incomplete bool
	// Samples describe the first problems: device, timestamp, metric,
	// value sent and value stored.
	Samples []string
}

// OK reports whether every acked reading was found as sent, no refused
// reading was stored, no point is unaccounted for and nothing went
// unchecked.
func (v Verification) OK() bool {
	return v.Found == v.Acked && v.Missing == 0 && v.Wrong == 0 && v.RefusedStored == 0 && v.Unacked == 0 && !v.Incomplete
}

// String is a one-line summary followed by the samples.
func (v Verification) String() string {
	s := fmt.Sprintf("acked %d: found %d, missing %d, wrong %d; refused %d: stored %d; unacked points %d; incomplete %v",
		v.Acked, v.Found, v.Missing, v.Wrong, v.Refused, v.RefusedStored, v.Unacked, v.Incomplete)
	for _, x := range v.Samples {
		s += "\n  " + x
	}
	return s
}

const maxVerifySamples = 20

func (v *Verification) sample(format string, args ...any) {
	if len(v.Samples) < maxVerifySamples {
		v.Samples = append(v.Samples, fmt.Sprintf(format, args...))
	}
}

// Verify compares every recorded reading with InfluxDB (the InfluxQL HTTP
// API at influxURL, database db), device by device: each acknowledged
// reading must be a point at its timestamp with each of its values, no
// refused reading may be stored, and no point of a recorded device between
// its first and last recorded timestamp may be left that no acknowledged
// reading accounts for (not checked once the record overflowed its cap).
// It does not wait: call it once the hub has drained what it acknowledged.
//
// Every reading the simulator sends carries its own ts, so the check is by
// timestamp. (A reading sent without ts would get a hub-assigned time the
// device cannot know; such readings would have to be checked by count and
// set of values per device instead. The fleet sends none.)
func (f *Fleet) Verify(ctx context.Context, influxURL, db string) (Verification, error) {
	return f.VerifyIn(ctx, influxURL, db, telemetry.Measurement)
}

// VerifyIn is Verify against another measurement than the hub's (another
// pipeline writing the same shape).
func (f *Fleet) VerifyIn(ctx context.Context, influxURL, db, measurement string) (Verification, error) {
	rec := f.Recorded()
	v := Verification{Acked: len(rec.Acked), Refused: len(rec.Refused), Incomplete: rec.AckedOver > 0}
	type key struct {
		device string
		ts     int64
	}
	acked := make(map[key]Reading, len(rec.Acked))
	byDevice := map[string][]string{} // device -> metric names it sent
	span := map[string][2]int64{}     // device -> first and last ts recorded
	note := func(r Reading) {
		names := byDevice[r.Device]
		for k := range r.Metrics {
			if !slices.Contains(names, k) {
				names = append(names, k)
			}
		}
		byDevice[r.Device] = names
		sp, ok := span[r.Device]
		if !ok {
			sp = [2]int64{r.TS, r.TS}
		}
		span[r.Device] = [2]int64{min(sp[0], r.TS), max(sp[1], r.TS)}
	}
	for _, r := range rec.Acked {
		acked[key{r.Device, r.TS}] = r // a resend of the same ts is the same reading
		note(r)
	}
	refused := make(map[key]bool, len(rec.Refused))
	for _, r := range rec.Refused {
		refused[key{r.Device, r.TS}] = true
		note(r)
	}
	devices := slices.Sorted(maps.Keys(byDevice))
	stored := map[key]map[string]float64{}
	for _, dev := range devices {
		names := byDevice[dev]
		sort.Strings(names)
		points, err := queryPoints(ctx, influxURL, db, measurement, dev, names, span[dev])
		if err != nil {
			return v, fmt.Errorf("verify %s: %w", dev, err)
		}
		for ts, m := range points {
			stored[key{dev, ts}] = m
		}
	}
	for k, r := range acked {
		got, ok := stored[k]
		if !ok {
			v.Missing++
			v.sample("acked reading missing: device %s ts %d %v", k.device, k.ts, r.Metrics)
			continue
		}
		wrong := false
		for _, name := range slices.Sorted(maps.Keys(r.Metrics)) {
			want := r.Metrics[name]
			if g, has := got[name]; !has || g != want {
				wrong = true
				v.sample("acked reading stored wrong: device %s ts %d metric %s sent %v, stored %s", k.device, k.ts, name, want, storedValue(g, has))
			}
		}
		if wrong {
			v.Wrong++
		} else {
			v.Found++
		}
	}
	for _, r := range rec.Refused {
		k := key{r.Device, r.TS}
		got, ok := stored[k]
		if !ok {
			continue
		}
		// A point at a refused reading's timestamp is only right when it is
		// an acked reading of that device with its own values.
		if a, isAcked := acked[k]; isAcked && !sameValues(a.Metrics, r.Metrics) && sameValues(a.Metrics, got) {
			continue
		}
		v.RefusedStored++
		v.sample("refused reading stored: device %s ts %d sent %v, stored %v", k.device, k.ts, r.Metrics, got)
	}
	for k, got := range stored {
		if v.Incomplete {
			break // readings acked past the cap are not in the record
		}
		if _, ok := acked[k]; !ok && !refused[k] {
			v.Unacked++
			v.sample("point nobody acked: device %s ts %d %v", k.device, k.ts, got)
		}
	}
	sort.Strings(v.Samples)
	return v, nil
}

func storedValue(g float64, has bool) string {
	if !has {
		return "nothing"
	}
	return fmt.Sprint(g)
}

func sameValues(want, got map[string]float64) bool {
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			return false
		}
	}
	return true
}

// queryPoints returns the device's points by timestamp (ms) with the named
// numeric fields, between the first and last timestamp recorded for it
// (which include refused readings' future ones).
func queryPoints(ctx context.Context, influxURL, db, measurement, device string, fields []string, span [2]int64) (map[int64]map[string]float64, error) {
	quoted := make([]string, len(fields))
	for i, f := range fields {
		quoted[i] = `"` + strings.ReplaceAll(f, `"`, `\"`) + `"`
	}
	q := fmt.Sprintf(`SELECT %s FROM "%s" WHERE "device" = '%s' AND time >= %dms AND time <= %dms`,
		strings.Join(quoted, ","), strings.ReplaceAll(measurement, `"`, `\"`), strings.ReplaceAll(device, `'`, `\'`), span[0], span[1])
	form := url.Values{"q": {q}, "db": {db}, "epoch": {"ms"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(influxURL, "/")+"/query", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("influxdb answered HTTP %d", resp.StatusCode)
	}
	var out struct {
		Results []struct {
			Error  string `json:"error"`
			Series []struct {
				Columns []string `json:"columns"`
				Values  [][]any  `json:"values"`
			} `json:"series"`
		} `json:"results"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	points := map[int64]map[string]float64{}
	if len(out.Results) == 0 {
		return points, nil
	}
	if e := out.Results[0].Error; e != "" {
		return nil, fmt.Errorf("influxql: %s", e)
	}
	for _, s := range out.Results[0].Series {
		for _, row := range s.Values {
			ts, ok := row[0].(float64)
			if !ok {
				return nil, fmt.Errorf("row without a time: %v", row)
			}
			m := map[string]float64{}
			for i := 1; i < len(row) && i < len(s.Columns); i++ {
				if n, ok := row[i].(float64); ok {
					m[s.Columns[i]] = n
				}
			}
			points[int64(ts)] = m
		}
	}
	return points, nil
}
