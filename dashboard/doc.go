// Package dashboard serves operators: the REST API under /api/v1 (devices,
// tokens, readings history), operator authentication and roles, and (in
// later files) the live socket and the embedded web UI.
//
// It reads from devices and telemetry/influx and reaches the bridge only
// through the small interfaces it declares; it never imports bridge.
package dashboard
