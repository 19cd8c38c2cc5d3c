package devices

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Proxies are the reverse proxies whose X-Forwarded-For and X-Real-IP the
// hub believes (FIELDHUB_TRUSTED_PROXIES). The nil or zero Proxies trusts
// nobody: the socket peer is the client. Immutable once parsed, so safe
// for concurrent use.
type Proxies struct {
	nets []netip.Prefix
}

// ParseProxies reads a comma-separated list of CIDRs (a bare address means
// that one address). Empty means no trusted proxy.
func ParseProxies(s string) (*Proxies, error) {
	p := &Proxies{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		var pre netip.Prefix
		var err error
		if strings.Contains(f, "/") {
			pre, err = netip.ParsePrefix(f)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(f); err == nil {
				pre = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8 or 127.0.0.1/32", f)
		}
		p.nets = append(p.nets, pre.Masked())
	}
	return p, nil
}

// String lists the trusted CIDRs, comma-separated, for the start-up log.
func (p *Proxies) String() string {
	if p == nil {
		return ""
	}
	out := make([]string, len(p.nets))
	for i, n := range p.nets {
		out[i] = n.String()
	}
	return strings.Join(out, ",")
}

// trusts reports whether a is one of the trusted proxies.
func (p *Proxies) trusts(a netip.Addr) bool {
	if p == nil {
		return false
	}
	a = a.Unmap()
	for _, n := range p.nets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// parseHop reads one address as proxies write it: a bare IP, or one with
// a port ("1.2.3.4:5", "[::1]:5").
func parseHop(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// Trusted reports whether r came straight from a trusted proxy, so its
// X-Forwarded-* headers (For, Proto) may be believed.
func (p *Proxies) Trusted(r *http.Request) bool {
	peer, ok := parseHop(r.RemoteAddr)
	return ok && p.trusts(peer)
}

// ClientAddr is the address of the client behind r, without a port: the
// one function every way in uses for limits, presence and logs. From an
// untrusted peer it is the peer itself and every forwarding header is
// ignored (a client cannot spoof its way out of a limit). From a trusted
// proxy it is the right-most address of X-Forwarded-For that is not itself
// a trusted proxy (entries left of it were written by the client and prove
// nothing); without X-Forwarded-For, X-Real-IP; failing both, the left-most
// trusted hop seen.
func (p *Proxies) ClientAddr(r *http.Request) string {
	peer, ok := parseHop(r.RemoteAddr)
	if !ok {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			return r.RemoteAddr
		}
		return host
	}
	if !p.trusts(peer) {
		return peer.String()
	}
	client := peer
	xff := r.Header.Values("X-Forwarded-For")
	for i := len(xff) - 1; i >= 0; i-- {
		hops := strings.Split(xff[i], ",")
		for j := len(hops) - 1; j >= 0; j-- {
			a, ok := parseHop(hops[j])
			if !ok {
				return client.String() // garbage from beyond the last trusted hop
			}
			if !p.trusts(a) {
				return a.String()
			}
			client = a
		}
	}
	if len(xff) == 0 {
		if a, ok := parseHop(r.Header.Get("X-Real-IP")); ok {
			return a.String()
		}
	}
	return client.String()
}
