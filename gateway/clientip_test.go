package gateway

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

func TestForwardedClient(t *testing.T) {
	trusted := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("2001:db8:ffff::/48"),
	}
	tests := []struct {
		name    string
		remote  string
		xff     []string // X-Forwarded-For lines
		fwd     []string // Forwarded lines
		trusted []netip.Prefix
		want    string
	}{
		{name: "no proxies configured", remote: "10.0.0.1:5000", xff: []string{"203.0.113.7"}, want: "10.0.0.1"},
		{name: "untrusted peer spoofs X-Forwarded-For", remote: "198.51.100.9:5000", xff: []string{"203.0.113.7"}, trusted: trusted, want: "198.51.100.9"},
		{name: "untrusted peer spoofs Forwarded", remote: "198.51.100.9:5000", fwd: []string{"for=203.0.113.7"}, trusted: trusted, want: "198.51.100.9"},
		{name: "trusted peer without headers", remote: "10.0.0.1:5000", trusted: trusted, want: "10.0.0.1"},
		{name: "trusted peer, one hop", remote: "10.0.0.1:5000", xff: []string{"203.0.113.7"}, trusted: trusted, want: "203.0.113.7"},
		{name: "client-supplied hops left of the client are ignored", remote: "10.0.0.1:5000", xff: []string{"1.2.3.4, 203.0.113.7"}, trusted: trusted, want: "203.0.113.7"},
		{name: "inner trusted proxies are skipped", remote: "10.0.0.1:5000", xff: []string{"1.2.3.4, 203.0.113.7, 10.1.1.1,10.2.2.2"}, trusted: trusted, want: "203.0.113.7"},
		{name: "several header lines make one chain", remote: "10.0.0.1:5000", xff: []string{"1.2.3.4", "203.0.113.7, 10.1.1.1", "10.2.2.2"}, trusted: trusted, want: "203.0.113.7"},
		{name: "every hop trusted: the leftmost", remote: "10.0.0.1:5000", xff: []string{"10.9.9.9, 10.1.1.1"}, trusted: trusted, want: "10.9.9.9"},
		{name: "IPv6 hop", remote: "[2001:db8:ffff::1]:443", xff: []string{"2001:db8:1::5"}, trusted: trusted, want: "2001:db8:1::5"},
		{name: "hop with a port", remote: "10.0.0.1:5000", xff: []string{"203.0.113.7:4711"}, trusted: trusted, want: "203.0.113.7"},
		{name: "bracketed IPv6 hop with a port", remote: "10.0.0.1:5000", xff: []string{"[2001:db8:1::5]:4711"}, trusted: trusted, want: "2001:db8:1::5"},
		{name: "garbage hop: the proxy's peer", remote: "10.0.0.1:5000", xff: []string{"203.0.113.7, not-an-ip, 10.1.1.1"}, trusted: trusted, want: "10.1.1.1"},
		{name: "garbage nearest: the trusted peer", remote: "10.0.0.1:5000", xff: []string{"203.0.113.7, <script>"}, trusted: trusted, want: "10.0.0.1"},
		{name: "empty hop ends the walk", remote: "10.0.0.1:5000", xff: []string{"203.0.113.7,,10.1.1.1"}, trusted: trusted, want: "10.1.1.1"},
		{name: "blank X-Forwarded-For is absent", remote: "10.0.0.1:5000", xff: []string{" "}, fwd: []string{"for=203.0.113.7"}, trusted: trusted, want: "203.0.113.7"},
		{name: "X-Forwarded-For wins over Forwarded", remote: "10.0.0.1:5000", xff: []string{"203.0.113.7"}, fwd: []string{"for=198.51.100.1"}, trusted: trusted, want: "203.0.113.7"},
		{name: "Forwarded, one element", remote: "10.0.0.1:5000", fwd: []string{"for=203.0.113.7;proto=https;by=10.0.0.1"}, trusted: trusted, want: "203.0.113.7"},
		{name: "Forwarded, quoted IPv6 with port", remote: "10.0.0.1:5000", fwd: []string{`for="[2001:db8:1::5]:4711"`}, trusted: trusted, want: "2001:db8:1::5"},
		{name: "Forwarded, quoted IPv4 with port, case-insensitive name", remote: "10.0.0.1:5000", fwd: []string{`For="203.0.113.7:4711"`}, trusted: trusted, want: "203.0.113.7"},
		{name: "Forwarded, obfuscated port", remote: "10.0.0.1:5000", fwd: []string{`for="203.0.113.7:_abc"`}, trusted: trusted, want: "203.0.113.7"},
		{name: "Forwarded, several elements and lines", remote: "10.0.0.1:5000", fwd: []string{`for=1.2.3.4, for="[2001:db8:1::5]"`, `for=10.1.1.1;proto=http, for=10.2.2.2`}, trusted: trusted, want: "2001:db8:1::5"},
		{name: "Forwarded, quoted comma and semicolon", remote: "10.0.0.1:5000", fwd: []string{`for=203.0.113.7;ext="a,b;c", for=10.1.1.1`}, trusted: trusted, want: "203.0.113.7"},
		{name: "Forwarded, unknown", remote: "10.0.0.1:5000", fwd: []string{"for=203.0.113.7, for=unknown, for=10.1.1.1"}, trusted: trusted, want: "10.1.1.1"},
		{name: "Forwarded, obfuscated node", remote: "10.0.0.1:5000", fwd: []string{"for=203.0.113.7, for=_hidden"}, trusted: trusted, want: "10.0.0.1"},
		{name: "Forwarded, element without for", remote: "10.0.0.1:5000", fwd: []string{"for=203.0.113.7, proto=https"}, trusted: trusted, want: "10.0.0.1"},
		{name: "Forwarded, for twice in one element", remote: "10.0.0.1:5000", fwd: []string{"for=203.0.113.7;for=198.51.100.1"}, trusted: trusted, want: "10.0.0.1"},
		{name: "Forwarded, unterminated quote", remote: "10.0.0.1:5000", fwd: []string{`for=203.0.113.7, for="10.1.1.1`}, trusted: trusted, want: "10.0.0.1"},
		{name: "Forwarded, unbracketed IPv6 is read whole", remote: "10.0.0.1:5000", fwd: []string{`for="2001:db8:1::5:4711"`}, trusted: trusted, want: "2001:db8:1::5:4711"},
		{name: "Forwarded, bracketed IPv4", remote: "10.0.0.1:5000", fwd: []string{`for="[203.0.113.7]"`}, trusted: trusted, want: "10.0.0.1"},
		{name: "Forwarded, port out of range", remote: "10.0.0.1:5000", fwd: []string{`for="203.0.113.7:70000"`}, trusted: trusted, want: "10.0.0.1"},
		{name: "IPv4-mapped peer is trusted as IPv4", remote: "[::ffff:10.0.0.1]:5000", xff: []string{"203.0.113.7"}, trusted: trusted, want: "203.0.113.7"},
		{name: "IPv4-mapped peer without proxies", remote: "[::ffff:198.51.100.9]:5000", want: "198.51.100.9"},
		{name: "IPv4-mapped hop", remote: "10.0.0.1:5000", xff: []string{"::ffff:203.0.113.7"}, trusted: trusted, want: "203.0.113.7"},
		{name: "IPv4-mapped inner proxy is skipped", remote: "10.0.0.1:5000", xff: []string{"203.0.113.7, ::ffff:10.1.1.1"}, trusted: trusted, want: "203.0.113.7"},
		{name: "zone dropped", remote: "[fe80::1%eth0]:5000", want: "fe80::1"},
		{name: "peer without a port", remote: "10.0.0.1", xff: []string{"203.0.113.7"}, trusted: trusted, want: "10.0.0.1"},
		{name: "peer that is not an IP", remote: "@:0", xff: []string{"203.0.113.7"}, trusted: trusted, want: "@"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tt.xff {
				h.Add("X-Forwarded-For", v)
			}
			for _, v := range tt.fwd {
				h.Add("Forwarded", v)
			}
			if got := forwardedClient(tt.remote, h, tt.trusted); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseTrustedProxies(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{in: "", want: nil},
		{in: " 10.0.0.0/8, 192.0.2.7 ,2001:db8::/32,2001:db8::1,", want: []string{"10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "2001:db8::1/128"}},
		{in: "::ffff:192.0.2.7", want: []string{"192.0.2.7/32"}},
		{in: "10.0.0.0/33", wantErr: `"10.0.0.0/33" is not a CIDR`},
		{in: "10.0.0.1/8", wantErr: "write 10.0.0.0/8"},
		{in: "::ffff:10.0.0.0/104", wantErr: "IPv4-mapped"},
		{in: "lb.example.com", wantErr: `"lb.example.com" is not a CIDR or an IP address`},
		{in: "fe80::1%eth0", wantErr: "not a CIDR or an IP address"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ps, err := ParseTrustedProxies(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range ps {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestConfigTrustedProxies(t *testing.T) {
	tests := []struct {
		name string
		p    netip.Prefix
		want string
	}{
		{"zero prefix", netip.Prefix{}, "Config.TrustedProxies[0]: not a valid prefix"},
		{"host bits", netip.PrefixFrom(netip.MustParseAddr("10.0.0.1"), 8), "Config.TrustedProxies[0]: 10.0.0.1/8 has bits set"},
		{"IPv4-mapped", netip.MustParsePrefix("::ffff:10.0.0.0/104"), "Config.TrustedProxies[0]: ::ffff:10.0.0.0/104 is IPv4-mapped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bus := fanout.NewMemory(fanout.MemoryConfig{})
			defer bus.Close()
			_, err := New(Config{Bus: bus, TrustedProxies: []netip.Prefix{tt.p}})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

// The per-address connection limit counts the forwarded client behind a
// trusted proxy, and the proxy itself when it is not trusted.
func TestConnLimitBehindProxy(t *testing.T) {
	dial := func(t *testing.T, url, xff string) int {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{
			Subprotocols: []string{Subprotocol},
			HTTPHeader:   http.Header{"X-Forwarded-For": {xff}},
		})
		if err != nil {
			if resp == nil {
				t.Fatalf("dial with X-Forwarded-For %s: %v", xff, err)
			}
			return resp.StatusCode
		}
		t.Cleanup(func() { c.CloseNow() })
		return resp.StatusCode
	}
	tests := []struct {
		name    string
		trusted []netip.Prefix
		xff     []string
		want    []int
	}{
		{
			name:    "trusted proxy: one limit per forwarded client",
			trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			xff:     []string{"203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.1", "203.0.113.1"},
			want:    []int{101, 101, 101, 101, 429},
		},
		{
			name: "no trusted proxy: one limit for the proxy",
			xff:  []string{"203.0.113.1", "203.0.113.2", "203.0.113.3"},
			want: []int{101, 101, 429},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, func(c *Config) {
				c.MaxConnsPerIP = 2
				c.TrustedProxies = tt.trusted
			})
			for i, xff := range tt.xff {
				if got := dial(t, ts.ws, xff); got != tt.want[i] {
					t.Errorf("connection %d (X-Forwarded-For %s): got %v, want %v", i+1, xff, got, tt.want[i])
				}
			}
		})
	}
}
