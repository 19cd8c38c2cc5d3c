// Package operator owns how an operator proves who they are to the
// dashboard: API tokens (Authorization: Bearer, or the token query
// parameter for browsers' WebSocket and EventSource), cookie sessions
// (sign-in, sign-out, the cookie's attributes), the CSRF rule for
// cookie-authenticated changes, the one Origin policy of operator
// streams (devices.OriginAllowed) and the one failed-authentication flow
// (devices.FailureLimiter.Refuse). It decides; it never writes a
// response: a refusal comes back as a *Refusal for the caller to answer
// in its own error format, so the policies are tested without a server.
//
// It may import devices and telemetry; it never imports dashboard (which
// serves the REST handlers around it) or dashboard/live.
package operator
