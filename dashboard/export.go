package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/telemetry/influx"
)

// Exporter streams raw points for downloads. *influx.Client implements it.
type Exporter interface {
	Export(ctx context.Context, q influx.ExportQuery) (*influx.Export, error)
}

// Bounds of one export request: how long it may stream, and how long one
// write to the client may take (a client that stops reading is cut).
const (
	exportMaxDuration = 30 * time.Minute
	exportWriteWait   = 30 * time.Second
)

// export is GET /api/v1/devices/{id}/export?metric=a&metric=b&start=
// &stop=&format=csv|jsonl: the raw points of up to 16 metrics in time
// order, streamed from InfluxDB to the client row by row.
func (s *Server) export(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !s.opts.Registry.Exists(id) {
		writeErr(w, http.StatusNotFound, "not_found", fmt.Sprintf("device %q not found", id))
		return
	}
	if s.opts.Export == nil {
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "history is not configured")
		return
	}
	q := r.URL.Query()
	format := q.Get("format")
	switch format {
	case "":
		format = "csv"
	case "csv", "jsonl":
	default:
		writeErr(w, http.StatusBadRequest, "bad_request", "format must be csv or jsonl")
		return
	}
	metrics := q["metric"]
	if len(metrics) == 0 || len(metrics) > influx.MaxExportMetrics {
		writeErr(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("metric: give 1 to %d metrics (metric=a&metric=b)", influx.MaxExportMetrics))
		return
	}
	start, stop, err := parseRange(q, s.opts.Now())
	if err != nil {
		writeErr(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), exportMaxDuration)
	defer cancel()
	ex, err := s.opts.Export.Export(ctx, influx.ExportQuery{Device: id, Metrics: metrics, Start: start, Stop: stop, MaxRows: s.opts.MaxExportRows})
	if errors.Is(err, influx.ErrBadQuery) {
		writeErr(w, http.StatusBadRequest, "bad_request", strings.TrimPrefix(err.Error(), influx.ErrBadQuery.Error()+": "))
		return
	}
	if err != nil {
		s.log.Warn("export query failed", "device", id, "err", err)
		writeErr(w, http.StatusBadGateway, "unavailable", "InfluxDB did not answer the export query; retry later")
		return
	}
	defer ex.Close()
	ext, ctype := ".csv", "text/csv; charset=utf-8"
	if format == "jsonl" {
		ext, ctype = ".jsonl", "application/x-ndjson"
	}
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s-%s-%s%s"`, id, fileTime(start), fileTime(stop), ext))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	out := bufio.NewWriterSize(&deadlineWriter{w: w, rc: http.NewResponseController(w)}, 32<<10)
	rows := 0
	var line []byte
	if format == "csv" {
		_, _ = out.WriteString("time,device,metric,value\n")
	}
	for ex.Next() {
		row := ex.Row()
		if format == "csv" {
			line = appendCSVRow(line[:0], id, row)
		} else {
			line = appendJSONRow(line[:0], id, row)
		}
		if _, err := out.Write(line); err != nil {
			s.log.Info("export ended by the client", "device", id, "rows", rows, "err", err)
			return
		}
		rows++
	}
	switch {
	case ex.Err() != nil:
		s.log.Warn("export cut short by InfluxDB", "device", id, "rows", rows, "err", ex.Err())
		if format == "csv" {
			_, _ = out.WriteString("# error: InfluxDB stopped answering; this export is incomplete\n")
		} else {
			_, _ = out.WriteString(`{"error":"InfluxDB stopped answering; this export is incomplete"}` + "\n")
		}
	case ex.Truncated():
		if format == "csv" {
			fmt.Fprintf(out, "# truncated at %d rows\n", rows)
		} else {
			_, _ = out.WriteString(`{"truncated":true}` + "\n")
		}
	}
	_ = out.Flush() // the client went away: nothing to do
}

// fileTime is an instant as it appears in an export's file name: UTC,
// without the colons some file systems refuse.
func fileTime(t time.Time) string { return t.UTC().Format("20060102T150405Z") }

// exportTimeLayout is RFC 3339 in UTC with milliseconds.
const exportTimeLayout = "2006-01-02T15:04:05.000Z07:00"

func appendCSVRow(b []byte, device string, r influx.Row) []byte {
	b = r.Time.UTC().AppendFormat(b, exportTimeLayout)
	b = append(b, ',')
	b = append(b, device...) // ids and metric names need no CSV quoting
	b = append(b, ',')
	b = append(b, r.Metric...)
	b = append(b, ',')
	switch v := r.Value.(type) {
	case float64:
		b = strconv.AppendFloat(b, v, 'g', -1, 64)
	case int64:
		b = strconv.AppendInt(b, v, 10)
	case uint64:
		b = strconv.AppendUint(b, v, 10)
	case bool:
		b = strconv.AppendBool(b, v)
	case string:
		b = appendCSVField(b, v)
	}
	return append(b, '\n')
}

// appendCSVField quotes s as RFC 4180 asks when it holds a comma, a
// quote, a line break or leading or trailing space, and, against CSV
// injection in spreadsheets, when it starts with = + - @ (a leading
// apostrophe is then added inside the quotes).
func appendCSVField(b []byte, s string) []byte {
	formula := s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0]))
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		formula = false // a string that reads as a number is not a formula
	}
	if !formula && !strings.ContainsAny(s, ",\"\r\n") && strings.TrimSpace(s) == s {
		return append(b, s...)
	}
	b = append(b, '"')
	if formula {
		b = append(b, '\'')
	}
	b = append(b, strings.ReplaceAll(s, `"`, `""`)...)
	return append(b, '"')
}

func appendJSONRow(b []byte, device string, r influx.Row) []byte {
	v, err := json.Marshal(r.Value)
	if err != nil { // NaN and Inf are never stored; keep the line valid anyway
		v = []byte("null")
	}
	b = append(b, `{"ts":`...)
	b = strconv.AppendInt(b, r.Time.UnixMilli(), 10)
	b = append(b, `,"device":`...)
	b = strconv.AppendQuote(b, device)
	b = append(b, `,"metric":`...)
	b = strconv.AppendQuote(b, r.Metric)
	b = append(b, `,"value":`...)
	b = append(b, v...)
	return append(b, "}\n"...)
}

// deadlineWriter gives every write to the client exportWriteWait, so a
// client that stops reading ends the export instead of holding it.
type deadlineWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	_ = d.rc.SetWriteDeadline(time.Now().Add(exportWriteWait)) // unsupported: the server's own timeouts apply
	n, err := d.w.Write(p)
	if err == nil {
		err = d.rc.Flush()
	}
	return n, err
}
