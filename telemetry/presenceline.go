package telemetry

import "strconv"

// PresenceMeasurement is the InfluxDB measurement of devices' presence
// changes, so their history survives a hub restart: tag DeviceTag, fields
// online (boolean), transport and reason (strings), one point per change
// (docs/protocol.md).
const PresenceMeasurement = "fieldhub_presence"

// AppendPresenceLine appends presence event ev as one line-protocol line
// at ns nanoseconds. The device id must satisfy the registry's id rule;
// transport and reason are escaped as string fields.
func AppendPresenceLine(b []byte, ev Event, ns int64) []byte {
	b = append(b, PresenceMeasurement...)
	b = append(b, ',')
	b = append(b, DeviceTag...)
	b = append(b, '=')
	b = appendEscaped(b, ev.Device)
	b = append(b, " online="...)
	b = strconv.AppendBool(b, ev.Online != nil && *ev.Online)
	b = append(b, ",transport="...)
	b = appendStringField(b, ev.Transport)
	b = append(b, ",reason="...)
	b = appendStringField(b, ev.Reason)
	b = append(b, ' ')
	b = strconv.AppendInt(b, ns, 10)
	return append(b, '\n')
}

// appendStringField appends s as a quoted line-protocol string field.
func appendStringField(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n', '\r':
			b = append(b, ' ') // a line break would end the line
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
