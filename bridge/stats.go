package bridge

import (
	"slices"
	"sync/atomic"

	"github.com/fieldhub/fieldhub/devices"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Transports and codes the counters are kept for. Anything else counts
// under "other", so labels stay low-cardinality whatever a peer sends.
var (
	statTransports = []string{devices.TransportWS, devices.TransportMQTT, devices.TransportHTTP}
	statCodes      = []string{telemetry.CodeBadJSON, telemetry.CodeInvalid, telemetry.CodeUnknownType, telemetry.CodeRateLimited, telemetry.CodeOverloaded, telemetry.CodeTooLarge, telemetry.CodeInternal}
	statSchema     = []string{SchemaTypeConflict, SchemaDeviceMetrics, SchemaMetricNames}
	statReasons    = []string{ReasonClientClosed, ReasonHeartbeatTimeout, ReasonSuperseded, ReasonRevoked, ReasonReadLimit, ReasonProtocolError, ReasonServerShutdown, ReasonSlowConsumer, ReasonNetworkError, ReasonBackpressure}
)

const other = "other"

// Stats are the bridge's counters, read by the metrics endpoint. The maps
// are built once and only read afterwards, so no lock is needed.
type Stats struct {
	Messages    map[string]*atomic.Int64            // by transport
	Readings    map[string]*atomic.Int64            // by transport
	Rejected    map[string]*atomic.Int64            // by error code
	Connects    map[string]*atomic.Int64            // by transport
	Connected   map[string]*atomic.Int64            // by transport (gauge)
	Disconnects map[string]map[string]*atomic.Int64 // by transport, reason
	// SchemaRejected counts messages refused by the metric schema (a type
	// conflict, a device's or the fleet's bound on metric names), by reason.
	SchemaRejected map[string]*atomic.Int64
	// SchemaReleaseFailed counts claims of a refused message that could
	// not be undone (the store failed): such a claim stays.
	SchemaReleaseFailed atomic.Int64
}

func counters(keys []string) map[string]*atomic.Int64 {
	m := make(map[string]*atomic.Int64, len(keys)+1)
	for _, k := range slices.Concat(keys, []string{other}) {
		m[k] = new(atomic.Int64)
	}
	return m
}

func (s *Stats) init() {
	s.Messages, s.Readings, s.Rejected = counters(statTransports), counters(statTransports), counters(statCodes)
	s.Connects, s.Connected = counters(statTransports), counters(statTransports)
	s.SchemaRejected = counters(statSchema)
	s.Disconnects = map[string]map[string]*atomic.Int64{}
	for _, t := range slices.Concat(statTransports, []string{other}) {
		s.Disconnects[t] = counters(statReasons)
	}
}

func pick(m map[string]*atomic.Int64, k string) *atomic.Int64 {
	if c, ok := m[k]; ok {
		return c
	}
	return m[other]
}

func (s *Stats) messages(t string) *atomic.Int64       { return pick(s.Messages, t) }
func (s *Stats) readings(t string) *atomic.Int64       { return pick(s.Readings, t) }
func (s *Stats) rejected(c string) *atomic.Int64       { return pick(s.Rejected, c) }
func (s *Stats) schemaRejected(r string) *atomic.Int64 { return pick(s.SchemaRejected, r) }
func (s *Stats) connects(t string) *atomic.Int64       { return pick(s.Connects, t) }
func (s *Stats) connected(t string) *atomic.Int64      { return pick(s.Connected, t) }
func (s *Stats) disconnects(t, r string) *atomic.Int64 {
	m, ok := s.Disconnects[t]
	if !ok {
		m = s.Disconnects[other]
	}
	return pick(m, r)
}

// Totals returns readings accepted and messages rejected since start, for
// the dashboard's overview rates.
func (b *Bridge) Totals() (readings, rejected int64) {
	for _, c := range b.stats.Readings {
		readings += c.Load()
	}
	for _, c := range b.stats.Rejected {
		rejected += c.Load()
	}
	return readings, rejected
}
