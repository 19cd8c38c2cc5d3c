package devices

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// OriginAllowed is the one Origin policy of every browser-reachable
// stream and cookie-authenticated change (operator /ws/live and SSE, MQTT
// over WebSocket, the dashboard's state changes): the cross-site
// WebSocket hijacking and CSRF defence. A request without Origin (a tool,
// not a browser page) is allowed; a browser's Origin must be the hub
// itself (same host) or one of allowed (e.g. https://ops.example.com,
// FIELDHUB_ALLOWED_ORIGINS), compared case-insensitively without a
// trailing slash; anything else, "null" included, is refused.
//
// It lives in devices, beside the failure limiter, because it is part of
// who may connect, and devices is the one package both the dashboard and
// the bridge's transports may import (telemetry is the wire contract, and
// an HTTP Origin rule is not wire protocol).
func OriginAllowed(r *http.Request, allowed []string) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	return slices.ContainsFunc(allowed, func(o string) bool {
		return strings.EqualFold(strings.TrimRight(o, "/"), strings.TrimRight(origin, "/"))
	})
}
