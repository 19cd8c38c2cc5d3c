package operator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/fieldhub/fieldhub/devices"
)

// SessionCookie is the name of the dashboard's HttpOnly session cookie.
const SessionCookie = "fieldhub_session"

// Refusal is a request the operator policies refused, with the answer
// docs/protocol.md gives it. It is an error so that sign-in can return
// it beside store errors.
type Refusal struct {
	Status  int    // HTTP status: 401, 403 or 429
	Code    string // the API error code: unauthorized, forbidden, rate_limited
	Message string
	// RetryAfter, if set, is the Retry-After header (429).
	RetryAfter string
	// Challenge, if set, is the WWW-Authenticate header (401).
	Challenge string
}

// Error returns the refusal's message.
func (r *Refusal) Error() string { return fmt.Sprintf("%s: %s", r.Code, r.Message) }

// Options configures an Auth. Registry is required.
type Options struct {
	Registry *devices.Registry
	// Failures rate-limits failed authentications per (client address,
	// presented token); nil disables it.
	Failures *devices.FailureLimiter
	// Proxies are the trusted reverse proxies whose X-Forwarded-For gives
	// the client address; nil trusts none.
	Proxies *devices.Proxies
	// FromTrustedProxy reports whether a request came through a proxy
	// whose X-Forwarded-Proto is believed; nil trusts none. It decides the
	// session cookie's Secure flag.
	FromTrustedProxy func(r *http.Request) bool
	// AllowedOrigins are browser origins besides the hub's own allowed on
	// operator streams.
	AllowedOrigins []string
	// OnAuthFailure, if set, is told of each refused operator credential.
	OnAuthFailure func()
	Logger        *slog.Logger
}

// Auth applies the operator authentication policies. It holds no
// mutable state of its own: the registry and the limiter are safe for
// concurrent use, so one Auth serves every request.
type Auth struct {
	opts Options
	log  *slog.Logger
}

// New returns the operator authentication of opts.
func New(opts Options) (*Auth, error) {
	if opts.Registry == nil {
		return nil, errors.New("operator: Registry is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Auth{opts: opts, log: opts.Logger}, nil
}

// ClientAddr is the client address of r behind any trusted proxy, the
// one used in log lines and as the failure limiter's key.
func (a *Auth) ClientAddr(r *http.Request) string { return a.opts.Proxies.ClientAddr(r) }

// BearerToken returns the token of an Authorization: Bearer header.
func BearerToken(r *http.Request) string {
	t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(t)
}

// SessionToken returns the session id of r's session cookie, or "".
func SessionToken(r *http.Request) string {
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return ""
	}
	return c.Value
}

// SameOrigin reports whether a browser request comes from the hub's own
// pages (or from a non-browser client, which sends no Origin): the one
// Origin policy, without the extra allowed origins. Sign-in, sign-out
// and every cookie-authenticated change need it.
func SameOrigin(r *http.Request) bool { return devices.OriginAllowed(r, nil) }

// StreamOriginAllowed applies the one Origin policy, with the configured
// extra origins, to an operator stream (/ws/live, SSE).
func (a *Auth) StreamOriginAllowed(r *http.Request) bool {
	return devices.OriginAllowed(r, a.opts.AllowedOrigins)
}

// CrossSiteCookie reports whether r is a state change authenticated by
// a session cookie from another site: a cookie rides along with any
// request the browser makes, so a change made with it must come from
// the hub's own pages. Safe methods (GET, HEAD) change nothing.
func CrossSiteCookie(r *http.Request, sid string) bool {
	return sid != "" && r.Method != http.MethodGet && r.Method != http.MethodHead && !SameOrigin(r)
}

// Refuse is the dashboard's failed-authentication flow: it counts the
// failure of token from r's address (devices.FailureLimiter.Refuse, which
// also logs it) and returns the answer: 429 rate_limited once this
// address has failed too often with this same token, else 401. Others'
// failures never change the answer to a valid or a different token.
func (a *Auth) Refuse(r *http.Request, token string) *Refusal {
	if a.opts.OnAuthFailure != nil {
		a.opts.OnAuthFailure()
	}
	if a.opts.Failures.Refuse(a.log, "operator authentication failed", a.ClientAddr(r), token, "path", r.URL.Path) {
		return &Refusal{Status: http.StatusTooManyRequests, Code: "rate_limited", RetryAfter: "1",
			Message: "too many failed authentications with this token; retry later"}
	}
	return &Refusal{Status: http.StatusUnauthorized, Code: "unauthorized", Challenge: `Bearer realm="fieldhub"`,
		Message: "missing or invalid API token or session"}
}

// Authenticate returns the operator behind r's credential: a bearer
// token, else (allowQuery) the token query parameter, else the session
// cookie. The credential is always checked and a valid one always
// passes; a cookie-authenticated change from another site is refused
// 403 before the session is looked up.
func (a *Auth) Authenticate(r *http.Request, allowQuery bool) (devices.Operator, *Refusal) {
	token := BearerToken(r)
	if token == "" && allowQuery {
		// Browsers' WebSocket and EventSource cannot set headers.
		token = r.URL.Query().Get("token")
	}
	var op devices.Operator
	var ok bool
	if token == "" {
		sid := SessionToken(r)
		if CrossSiteCookie(r, sid) {
			return devices.Operator{}, &Refusal{Status: http.StatusForbidden, Code: "forbidden", Message: "cross-site request refused"}
		}
		op, ok = a.opts.Registry.AuthenticateSession(r.Context(), sid)
	} else {
		op, ok = a.opts.Registry.AuthenticateOperator(r.Context(), token)
	}
	if !ok {
		return devices.Operator{}, a.Refuse(r, token)
	}
	return op, nil
}

// Session returns the operator of r's session cookie, if it is live.
func (a *Auth) Session(r *http.Request) (devices.Operator, bool) {
	return a.opts.Registry.AuthenticateSession(r.Context(), SessionToken(r))
}

// SignIn exchanges an operator token for a server-side session and
// returns its cookie: it holds a random session id, never the token.
// Errors are a *Refusal (cross-site, bad token) or the registry's.
func (a *Auth) SignIn(r *http.Request, token string) (*http.Cookie, devices.Operator, error) {
	if !SameOrigin(r) {
		return nil, devices.Operator{}, &Refusal{Status: http.StatusForbidden, Code: "forbidden", Message: "cross-site sign-in refused"}
	}
	op, ok := a.opts.Registry.AuthenticateOperator(r.Context(), token)
	if !ok {
		return nil, devices.Operator{}, a.Refuse(r, token)
	}
	sid, err := a.opts.Registry.CreateSession(r.Context(), op)
	if err != nil {
		return nil, devices.Operator{}, fmt.Errorf("create session: %w", err)
	}
	// The browser drops the cookie at the session's absolute end; the hub
	// ends it earlier when idle.
	c := a.cookie(r, sid, int(a.opts.Registry.SessionMax().Seconds()))
	a.log.Info("operator signed in", "name", op.Name, "role", op.Role, "token_id", op.TokenID, "remote", a.ClientAddr(r))
	return c, op, nil
}

// SignOut ends r's session on the hub (its live sockets close) and
// returns the cookie that clears it in the browser. Errors are a
// *Refusal (cross-site) or the registry's.
func (a *Auth) SignOut(r *http.Request) (*http.Cookie, error) {
	if !SameOrigin(r) {
		return nil, &Refusal{Status: http.StatusForbidden, Code: "forbidden", Message: "cross-site sign-out refused"}
	}
	if err := a.opts.Registry.DeleteSession(r.Context(), SessionToken(r)); err != nil {
		return nil, fmt.Errorf("delete session: %w", err)
	}
	return a.cookie(r, "", -1), nil
}

// cookie is the session cookie with its one set of attributes: HttpOnly
// (page scripts cannot read it), SameSite=Strict (other sites cannot ride
// it), Secure when the browser reached the hub over TLS, Path=/.
func (a *Auth) cookie(r *http.Request, value string, maxAge int) *http.Cookie {
	trusted := a.opts.FromTrustedProxy != nil && a.opts.FromTrustedProxy(r)
	return &http.Cookie{Name: SessionCookie, Value: value, Path: "/", HttpOnly: true,
		Secure: RequestIsTLS(r, trusted), SameSite: http.SameSiteStrictMode, MaxAge: maxAge}
}

// RequestIsTLS reports whether the browser reached the hub over TLS: the
// hub terminated it, or a proxy did and says so in X-Forwarded-Proto,
// which is believed only when fromTrustedProxy.
func RequestIsTLS(r *http.Request, fromTrustedProxy bool) bool {
	if r.TLS != nil {
		return true
	}
	return fromTrustedProxy && strings.EqualFold(strings.TrimSpace(r.Header.Get("X-Forwarded-Proto")), "https")
}

type ctxKey struct{}

// WithOperator returns ctx carrying op, the operator a handler runs for.
func WithOperator(ctx context.Context, op devices.Operator) context.Context {
	return context.WithValue(ctx, ctxKey{}, op)
}

// From returns the operator WithOperator put in ctx (zero if none).
func From(ctx context.Context) devices.Operator {
	op, _ := ctx.Value(ctxKey{}).(devices.Operator)
	return op
}
