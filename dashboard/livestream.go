package dashboard

// The live streams' shared parts: the one admission (openLive), the one
// drain (drainLive), the filter checks, the timing limits and the slow
// consumer log line. /ws/live framing is in livews.go, SSE in livesse.go.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/dashboard/live"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Timing and size limits of operator live connections.
const (
	liveWriteWait    = 5 * time.Second
	livePongWait     = 60 * time.Second
	livePingPeriod   = livePongWait * 9 / 10
	liveMaxMessage   = 64 << 10
	liveMaxDevices   = 10000
	liveMaxMetrics   = 256 // metric names one live socket filters on; FIELDHUB_MAX_METRICS_PER_DEVICE's default
	sseHeartbeat     = 15 * time.Second
	closeTryAgain    = 1013 // RFC 6455: try again later (slow consumer)
	closeShutdown    = websocket.CloseGoingAway
	maxLiveFrameSize = 1 << 20
)

// CloseRevoked closes a live socket whose credential stopped working: its
// token was deleted, its session signed out or expired.
const CloseRevoked = 4003

// originAllowed applies the hub's one Origin policy, with the extra
// allowed origins, to operator streams (operator.Auth.StreamOriginAllowed).
func (s *Server) originAllowed(r *http.Request) bool { return s.authn.StreamOriginAllowed(r) }

// openLive is the one admission of a live stream, /ws/live and SSE
// alike: it registers sub as a live client of its owner's credential
// (which then owns it: ending the credential closes it) and with
// Shutdown, or answers before any upgrade: 503 at the hub's cap or while
// shutting down, 429 at the credential's, 401 when the credential ended
// meanwhile. On true the caller must call the returned end when the
// stream is over.
// Refusals are logged at most once per liveRefusalLogEvery, with how many
// were not logged, and counted (live.Stats).
func (s *Server) openLive(w http.ResponseWriter, r *http.Request, sub *live.Subscriber) (end func(), ok bool) {
	op := sub.Owner()
	err := s.opts.Live.Add(sub)
	if err == nil {
		// The credential may have ended between authentication and Add:
		// Hub.CloseCredential could not see this socket yet.
		if !s.opts.Registry.OperatorActive(op) {
			s.opts.Live.Remove(sub)
			writeErr(w, http.StatusUnauthorized, "unauthorized", "the credential was revoked")
			return nil, false
		}
		if !s.conns.Add(sub) {
			s.opts.Live.Remove(sub)
			writeErr(w, http.StatusServiceUnavailable, "unavailable", "shutting down")
			return nil, false
		}
		return func() { s.conns.Done(sub); s.opts.Live.Remove(sub) }, true
	}
	if errors.Is(err, live.ErrStopped) {
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "shutting down")
		return nil, false
	}
	reason := "full"
	if errors.Is(err, live.ErrPerCredential) {
		reason = "per_token"
	}
	if n, ok := s.liveRefusals.allow(time.Now()); ok {
		s.log.Warn("live connection refused", "reason", reason, "token_id", op.TokenID, "remote", s.authn.ClientAddr(r), "path", r.URL.Path, "unlogged", n)
	}
	w.Header().Set("Retry-After", "5")
	if reason == "full" {
		writeErr(w, http.StatusServiceUnavailable, "unavailable", fmt.Sprintf("the hub serves at most %d live connections; retry later", s.opts.Live.Options().MaxSubscribers))
		return nil, false
	}
	writeErr(w, http.StatusTooManyRequests, "too_many_connections", fmt.Sprintf("this credential already has %d live connections, the most allowed (FIELDHUB_LIVE_MAX_PER_TOKEN); close one first", s.opts.Live.Options().MaxPerCredential))
	return nil, false
}

// liveRefusalLogEvery spaces the refusal log lines, so a client hammering
// a cap cannot flood the log.
const liveRefusalLogEvery = 10 * time.Second

// logLimiter lets one event through per liveRefusalLogEvery and counts the
// others.
type logLimiter struct {
	next    atomic.Int64 // unix nanoseconds of the next allowed line
	dropped atomic.Int64
}

// allow reports whether to log now, and how many events were not logged
// since the last line.
func (l *logLimiter) allow(now time.Time) (int64, bool) {
	next := l.next.Load()
	if now.UnixNano() < next || !l.next.CompareAndSwap(next, now.Add(liveRefusalLogEvery).UnixNano()) {
		l.dropped.Add(1)
		return 0, false
	}
	return l.dropped.Swap(0), true
}

// badMetricFilter says what is wrong with a metric filter, or "": at most
// liveMaxMetrics distinct names, each a valid metric name, so a socket's
// filter is bounded by the cap, not by the message size.
func badMetricFilter(names []string) string {
	seen := make(map[string]bool, min(len(names), liveMaxMetrics+1))
	for _, n := range names {
		if !telemetry.ValidName(n) {
			b, _ := json.Marshal(telemetry.Truncate(n, 64))
			return fmt.Sprintf("metric name %s is not valid", b)
		}
		if seen[n] {
			continue
		}
		if seen[n] = true; len(seen) > liveMaxMetrics {
			return fmt.Sprintf("a live stream filters on at most %d metric names", liveMaxMetrics)
		}
	}
	return ""
}

// knownDevices splits ids into those in the registry (and "*") and those
// not: a filter never holds an id the hub does not know, so its size is
// bounded by the fleet whatever a client sends.
func (s *Server) knownDevices(ids []string) (known, unknown []string) {
	for _, d := range ids {
		if d == "*" || s.opts.Registry.Exists(d) {
			known = append(known, d)
		} else {
			unknown = append(unknown, d)
		}
	}
	return known, unknown
}

// unknownMessage names the first few unknown ids, and how many in all.
func unknownMessage(unknown []string) string {
	const named = 5
	list := unknown[:min(len(unknown), named)]
	b, _ := json.Marshal(list)
	more := ""
	if len(unknown) > named {
		more = fmt.Sprintf(" and %d more", len(unknown)-named)
	}
	return fmt.Sprintf("%d device ids are not in the registry and were ignored: %s%s", len(unknown), b, more)
}

// isTimeout reports whether a write failed on its deadline: the client
// stopped reading.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// logSlow is the one log line of a slow consumer's disconnection, on
// every path that finds one (the count is markSlow's).
func (s *Server) logSlow(sub *live.Subscriber, transport, remote, detail string) {
	s.log.Warn("live client disconnected", "reason", "slow_consumer", "transport", transport, "token_id", sub.Owner().TokenID, "remote", remote, "detail", detail)
}

// drainLive is the one drain of /ws/live and SSE: it takes everything sub
// holds (events in order, then the coalesced readings) and writes it, one
// frame per event, asking stop before each frame whether the stream must
// end (revoked, kicked, shutting down). It returns buf for reuse, whether
// stop ended it early, and the first write error. write reports whether
// it wrote a frame (a metric filter may leave nothing of a reading);
// written frames are counted.
func drainLive(h *live.Hub, sub *live.Subscriber, buf []*live.Event, stop func() bool, write func(le *live.Event) (bool, error)) ([]*live.Event, bool, error) {
	buf = sub.Take(buf)
	defer clear(buf)
	for _, le := range buf {
		if stop() {
			return buf, true, nil
		}
		wrote, err := write(le)
		if err != nil {
			return buf, false, err
		}
		if wrote {
			h.CountSent(1)
		}
	}
	return buf, false, nil
}
