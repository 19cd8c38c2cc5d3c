// Package firmwaresim simulates fleets of field devices against a running
// hub: realistic signals, real firmware behaviour (reconnect with capped
// exponential backoff and full jitter, resend of unacknowledged readings,
// obeying commands) and, at a configurable rate, deliberately faulty
// messages whose answers it checks against the documented contract.
//
// It is a device: it imports only telemetry among Fieldhub packages and
// talks to the hub over the public protocol (REST, WebSocket, MQTT), so
// demos, end-to-end tests and load runs exercise exactly what field devices
// do. Tests start fleets in-process with New and read their Stats. The
// load harness (dashboard latency, the hub's /proc, rate steps, what
// landed in InfluxDB) is package firmware-sim/load, which wraps a Fleet;
// this package never imports it.
package firmwaresim
