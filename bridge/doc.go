// Package bridge is the core of the hub: every message from every transport
// goes through it. It owns device sessions (one per device, presence,
// per-device rate limits, revocation), the ingest path (decode -> validate
// -> spool -> ack, one implementation for all transports) and hands
// accepted readings and presence changes to the live fan-out. Accept is
// its one entry point: every transport hands it every device message.
//
// Transport adapters live in sub-packages (bridge/ws, bridge/mqtt), each the
// only importer of its network library. bridge imports telemetry and the
// spool (and hijack, through its transports); it reaches the registry,
// the store, the fan-out and the command service through the small
// interfaces it declares (Devices, Store, Fanout, Commands), and never
// imports dashboard or bridge/commands: it tells the command service
// which session of a device can take commands and hands it results.
package bridge
