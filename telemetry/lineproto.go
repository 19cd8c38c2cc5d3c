package telemetry

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Measurement is the InfluxDB measurement every reading is written to; the
// schema is documented in docs/protocol.md.
const Measurement = "telemetry"

// SeqField is the integer field that stores a reading's sequence number
// (Reading.Seq); ReservedReason keeps metrics from taking the name.
const SeqField = "seq"

// DeviceTag is the tag key that carries the device id.
const DeviceTag = "device"

// Tag is one extra InfluxDB tag on a device's points, taken from a device
// label the operator allow-listed. Devices never choose tag keys.
type Tag struct {
	Key, Value string
}

// ValidTagValue reports whether s can be written as a tag value exactly: no
// control characters (the client library was seen rewriting newlines), no
// backslash (a trailing one escapes the separator that follows), valid
// UTF-8, not empty, at most 128 bytes.
func ValidTagValue(s string) bool {
	return s != "" && len(s) <= 128 && utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool {
		return r < 0x20 || r == 0x7f || r == '\\'
	})
}

// AppendLines appends one line-protocol line per reading to b, timestamps in
// nanoseconds (Reading.Nano: a device's ts in whole milliseconds, a
// hub-assigned time with its nanoseconds, so the two never collide). The device id must already satisfy the registry's id rule and
// every metric the validator's rules; tags that are not ValidTagValue are
// left out rather than written wrong.
func AppendLines(b []byte, device string, tags []Tag, readings []Reading) []byte {
	var keyBuf [16]string
	for _, r := range readings {
		b = append(b, Measurement...)
		b = append(b, ',')
		b = append(b, DeviceTag...)
		b = append(b, '=')
		b = appendEscaped(b, device)
		for _, t := range tags {
			if t.Key == DeviceTag || !ValidName(t.Key) || !ValidTagValue(t.Value) {
				continue
			}
			b = append(b, ',')
			b = appendEscaped(b, t.Key)
			b = append(b, '=')
			b = appendEscaped(b, t.Value)
		}
		keys := keyBuf[:0]
		for k := range r.Metrics {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		sep := byte(' ')
		for _, k := range keys {
			v := r.Metrics[k]
			if v.Kind == KindNumber && (math.IsNaN(v.Num) || math.IsInf(v.Num, 0)) || v.Kind == KindInvalid {
				continue // unreachable after validation; never write what InfluxDB rejects
			}
			b = append(b, sep)
			sep = ','
			b = appendEscaped(b, k)
			b = append(b, '=')
			switch v.Kind {
			case KindNumber:
				b = strconv.AppendFloat(b, v.Num, 'g', -1, 64)
			case KindBool:
				b = strconv.AppendBool(b, v.Bool)
			case KindString:
				b = append(b, '"')
				for i := 0; i < len(v.Str); i++ {
					if c := v.Str[i]; c == '"' || c == '\\' {
						b = append(b, '\\')
					}
					b = append(b, v.Str[i])
				}
				b = append(b, '"')
			}
		}
		if r.HasSeq && r.Seq <= MaxSeq && sep == ',' {
			b = append(b, ","+SeqField+"="...)
			b = strconv.AppendUint(b, r.Seq, 10)
			b = append(b, 'i')
		}
		b = append(b, ' ')
		b = strconv.AppendInt(b, r.Nano(), 10)
		b = append(b, '\n')
	}
	return b
}

// appendEscaped escapes the characters that delimit tag keys, tag values
// and field keys.
func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ',', '=', ' ':
			b = append(b, '\\', c)
		default:
			b = append(b, c)
		}
	}
	return b
}
