package devices

import (
	"net/http"
	"testing"
)

func TestParseProxies(t *testing.T) {
	tests := []struct {
		in      string
		wantErr bool
	}{
		{"", false},
		{"127.0.0.1/32", false},
		{" 10.0.0.0/8 , 192.168.1.7, ::1/128 ", false},
		{"fd00::/8", false},
		{"10.0.0.0/33", true},
		{"nginx", true},
		{"10.0.0.1/8/1", true},
		{"1.2.3.4:80", true},
	}
	for _, tt := range tests {
		_, err := ParseProxies(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseProxies(%q): err %v, want error %v", tt.in, err, tt.wantErr)
		}
	}
}

func TestClientAddr(t *testing.T) {
	tests := []struct {
		name    string
		trusted string
		remote  string
		xff     []string
		realIP  string
		want    string
	}{
		{"no proxies: peer", "", "203.0.113.9:4711", nil, "", "203.0.113.9"},
		{"no proxies: XFF ignored", "", "127.0.0.1:4711", []string{"198.51.100.1"}, "", "127.0.0.1"},
		{"no proxies: X-Real-IP ignored", "", "127.0.0.1:4711", nil, "198.51.100.1", "127.0.0.1"},
		{"untrusted peer: XFF ignored", "10.0.0.0/8", "203.0.113.9:1", []string{"198.51.100.1"}, "", "203.0.113.9"},
		{"trusted proxy: XFF client", "127.0.0.1/32", "127.0.0.1:4711", []string{"198.51.100.1"}, "", "198.51.100.1"},
		{"right-most untrusted wins over a spoofed left", "127.0.0.1/32", "127.0.0.1:1", []string{"6.6.6.6, 198.51.100.1"}, "", "198.51.100.1"},
		{"chain of trusted proxies skipped", "10.0.0.0/8,127.0.0.1/32", "127.0.0.1:1", []string{"6.6.6.6, 198.51.100.1, 10.1.2.3"}, "", "198.51.100.1"},
		{"several XFF headers read as one list", "10.0.0.0/8,127.0.0.1/32", "127.0.0.1:1", []string{"6.6.6.6", "198.51.100.1, 10.1.2.3"}, "", "198.51.100.1"},
		{"XFF with ports", "127.0.0.1/32", "127.0.0.1:1", []string{"[2001:db8::1]:443"}, "", "2001:db8::1"},
		{"garbage right of the client: last trusted hop", "10.0.0.0/8,127.0.0.1/32", "127.0.0.1:1", []string{"198.51.100.1, nonsense, 10.1.2.3"}, "", "10.1.2.3"},
		{"all hops trusted: left-most", "10.0.0.0/8,127.0.0.1/32", "127.0.0.1:1", []string{"10.9.9.9, 10.1.2.3"}, "", "10.9.9.9"},
		{"X-Real-IP without XFF", "127.0.0.1/32", "127.0.0.1:1", nil, "198.51.100.7", "198.51.100.7"},
		{"XFF wins over X-Real-IP", "127.0.0.1/32", "127.0.0.1:1", []string{"198.51.100.1"}, "198.51.100.7", "198.51.100.1"},
		{"bad X-Real-IP: the proxy", "127.0.0.1/32", "127.0.0.1:1", nil, "nobody", "127.0.0.1"},
		{"IPv4-mapped peer", "127.0.0.1/32", "[::ffff:127.0.0.1]:1", []string{"198.51.100.1"}, "", "198.51.100.1"},
		{"IPv6 peer", "", "[2001:db8::5]:1", nil, "", "2001:db8::5"},
		{"odd RemoteAddr", "", "pipe", nil, "", "pipe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParseProxies(tt.trusted)
			if err != nil {
				t.Fatal(err)
			}
			r, _ := http.NewRequest("GET", "http://hub/", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if tt.realIP != "" {
				r.Header.Set("X-Real-IP", tt.realIP)
			}
			if got := p.ClientAddr(r); got != tt.want {
				t.Errorf("ClientAddr = %q, want %q", got, tt.want)
			}
		})
	}
	if p, _ := ParseProxies(" 10.1.2.3/8, ::1 "); p.String() != "10.0.0.0/8,::1/128" {
		t.Errorf("String = %q", p.String())
	}
	var none *Proxies
	r, _ := http.NewRequest("GET", "http://hub/", nil)
	r.RemoteAddr, r.Header = "127.0.0.1:9", http.Header{"X-Forwarded-For": {"198.51.100.1"}}
	if got := none.ClientAddr(r); got != "127.0.0.1" {
		t.Errorf("nil Proxies: %q", got)
	}
}
