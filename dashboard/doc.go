// Package dashboard serves operators: the REST API under /api/v1 (devices,
// tokens, readings history), operator authentication, roles and cookie
// sessions, the /ws/live and SSE endpoints (one admission, one drain;
// they differ only in framing), the embedded web UI and the rate sampler.
// The live hub itself, without HTTP, is package dashboard/live.
//
// It may import dashboard/live, devices, telemetry and telemetry/influx;
// it reaches the bridge only through the small interfaces it declares
// (Commander, ...); it never imports bridge.
package dashboard
