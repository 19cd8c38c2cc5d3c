// Package devices owns identity: the device registry (ids, names, labels,
// presence), per-device tokens, operator API tokens with roles, the limiters
// of failed authentications (per address and claimed identity) and of new
// connections (per address), and the client address behind trusted
// proxies. Devices live in memory as an immutable snapshot behind an
// atomic pointer, so lookups on every connect and message take no lock;
// one writer at a time writes each change through to a Store (bbolt by
// default, PostgreSQL for several instances) under a deadline, then
// publishes the next snapshot. Presence and last_seen are per-device
// atomics, flushed to the store in batches (registry.go, refresh.go).
// Each registered device's last refused messages are kept beside its
// presence, in memory and bounded, for operators (rejections.go).
//
// Secrets are never stored or logged: tokens are shown once, kept only as
// SHA-256 hashes and compared in constant time.
//
// Operators' dashboard sessions (sessions.go) and the one Origin policy of
// browser-reachable streams (origin.go) belong here too: they decide who may
// stay connected, and both the dashboard and the bridge import this package.
//
// It imports only telemetry among Fieldhub packages.
package devices
