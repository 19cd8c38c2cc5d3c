// Package devices owns identity: the device registry (ids, names, labels,
// presence), per-device tokens, operator API tokens with roles, the limiters
// of failed authentications (per address and claimed identity) and of new
// connections (per address), and the client address behind trusted
// proxies. State lives in memory for O(1) lookups on every connect and is
// written through to a Store (bbolt by default) so it survives restarts and
// crashes.
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
