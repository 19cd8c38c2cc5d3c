// Package dashboard serves operators: the REST API under /api/v1 (devices,
// tokens, readings history downsampled for charts, exports, the metric
// catalogue, presence history, rejections, commands), roles, the sign-in and sign-out
// endpoints, the /ws/live and SSE endpoints (one admission, one drain;
// they differ only in framing), the embedded web UI and the rate sampler.
// The live hub itself, without HTTP, is package dashboard/live; how an
// operator authenticates (tokens, cookie sessions, CSRF, Origin, failed
// authentications) is package dashboard/operator, whose refusals this
// package writes in the API's error format.
//
// It may import bridge/commands (the records it serves), bridge/hijack,
// dashboard/live, dashboard/operator, devices, telemetry and
// telemetry/influx; it reaches the bridge only through the small
// interfaces it declares (Commander, Totals); it never imports bridge.
package dashboard
