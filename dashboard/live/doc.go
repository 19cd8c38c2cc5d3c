// Package live is the live fan-out without HTTP: it takes every accepted
// reading, presence change and command status (bridge.Fanout) and hands
// each to the dashboards subscribed to its device.
//
// It is the gorilla chat hub's shape: a publisher (a device's reader) does
// one non-blocking send of one message's readings into the hub's bounded
// input (dropped and counted when full); presence changes, command
// statuses and Forget go through a second input that never drops (see
// input.go); one goroutine (Hub.Run) owns the set of subscribers, the latest
// values, the presence logs and the SSE replay window, so the fan-out path
// takes no hub-wide lock; each subscriber has a bounded queue with a
// coalescing overflow that its connection's writer drains in one take.
// Policies owned here: the caps (hub-wide and per credential), filters,
// coalescing, the slow-consumer cut, revocation by credential and the
// replay window. The WebSocket and SSE endpoints live in package dashboard.
//
// It may import devices (the operator credential type) and telemetry.
package live
