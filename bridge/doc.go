// Package bridge is the core of the hub: every message from every transport
// goes through it. It owns device sessions (one per device, presence,
// per-device rate limits, revocation), the ingest path (decode -> validate
// -> spool -> ack, one implementation for all transports) and hands
// accepted readings and presence changes to the live fan-out.
//
// Transport adapters live in sub-packages (bridge/ws, bridge/mqtt), each the
// only importer of its network library. bridge imports telemetry and the
// spool; it reaches the registry and the fan-out through the small
// interfaces it declares (Devices, Store, Fanout, Commands), and never
// imports dashboard or bridge/commands: it only tells the command service
// which session of a device can take commands (Commands).
package bridge
