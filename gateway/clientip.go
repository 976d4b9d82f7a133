package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// clientIP returns the address of the client that made r: the TCP peer, or,
// when the peer is one of Config.TrustedProxies, the address the proxies
// forwarded. The per-address connection limit, the dev-mode API publish limit
// and the logs all key on it.
//
// Headers are believed only from a trusted peer, so a client that connects
// directly cannot choose its address. From a trusted peer the forwarding chain
// is walked from the right, the hop nearest to this node, past every address
// that is itself a trusted proxy; the first untrusted address is the client.
// If every hop is trusted, the leftmost is. A hop that is not an address
// (garbage, "unknown", an obfuscated "_name" or a Forwarded element without
// for=) ends the walk, and the last address read, that of the proxy that
// wrote the unreadable hop, is the client.
//
// X-Forwarded-For is read when present, every header line in order, as one
// comma-separated list; otherwise the for= parameters of RFC 7239 Forwarded.
// X-Forwarded-For comes first because it is what nginx, the cloud load
// balancers and most other proxies write, while they pass a Forwarded header
// from the client through untouched: reading Forwarded first would let a
// client behind them name its own address.
//
// Addresses are returned without port or zone, and IPv4-mapped IPv6
// addresses in their IPv4 form.
func (srv *Server) clientIP(r *http.Request) string {
	return forwardedClient(r.RemoteAddr, r.Header, srv.cfg.TrustedProxies)
}

// forwardedClient is clientIP's rule for a peer address (host:port, as in
// http.Request.RemoteAddr), the request headers and the trusted prefixes.
func forwardedClient(remoteAddr string, h http.Header, trusted []netip.Prefix) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return remoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	client := normalize(peer)
	if !isTrusted(client, trusted) {
		return client.String()
	}
	hops := forwardedHops(h)
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := parseNode(hops[i])
		if !ok {
			break
		}
		client = a
		if !isTrusted(a, trusted) {
			break
		}
	}
	return client.String()
}

// forwardedHops returns the forwarded chain, client first: the elements of
// X-Forwarded-For if it has any, else the for= values of Forwarded. A hop that
// carries no address is returned as "".
func forwardedHops(h http.Header) []string {
	if xff := strings.Join(h.Values("X-Forwarded-For"), ","); strings.TrimSpace(xff) != "" {
		return strings.Split(xff, ",")
	}
	if fwd := strings.Join(h.Values("Forwarded"), ","); strings.TrimSpace(fwd) != "" {
		return forwardedFor(fwd)
	}
	return nil
}

// forwardedFor returns the for= value of each element of an RFC 7239
// Forwarded header, unquoted; "" for an element that has none, has it twice,
// or is malformed.
func forwardedFor(v string) []string {
	var hops []string
	for _, elem := range splitQuoted(v, ',') {
		var node string
		found, ok := 0, true
		for _, pair := range splitQuoted(elem, ';') {
			pair = strings.TrimSpace(pair)
			if pair == "" {
				continue
			}
			name, value, hasEq := strings.Cut(pair, "=")
			if !hasEq || strings.TrimSpace(name) == "" {
				ok = false
				break
			}
			if !strings.EqualFold(strings.TrimSpace(name), "for") {
				continue
			}
			found++
			if node, ok = unquote(strings.TrimSpace(value)); !ok {
				break
			}
		}
		if !ok || found != 1 {
			node = ""
		}
		hops = append(hops, node)
	}
	return hops
}

// splitQuoted splits s at sep outside quoted strings. An unterminated quoted
// string runs to the end of s, where unquote rejects it.
func splitQuoted(s string, sep byte) []string {
	var parts []string
	quoted, start := false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == sep:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

// unquote returns a Forwarded parameter value: a token as it is, a quoted
// string without its quotes and escapes.
func unquote(v string) (string, bool) {
	if !strings.HasPrefix(v, `"`) {
		return v, !strings.Contains(v, `"`)
	}
	if len(v) < 2 || !strings.HasSuffix(v, `"`) {
		return "", false
	}
	var b strings.Builder
	for i := 1; i < len(v)-1; i++ {
		c := v[i]
		switch {
		case c == '\\' && i+1 < len(v)-1:
			i++
			c = v[i]
		case c == '\\' || c == '"':
			return "", false
		}
		b.WriteByte(c)
	}
	return b.String(), true
}

// parseNode reads one hop: an IPv4 or IPv6 address, optionally with a port,
// IPv6 in brackets when it has one ("192.0.2.1", "192.0.2.1:4711",
// "2001:db8::1", "[2001:db8::1]:4711"). "unknown" and obfuscated identifiers
// are not addresses.
func parseNode(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if rest, ok := strings.CutPrefix(s, "["); ok {
		host, port, ok := strings.Cut(rest, "]")
		if !ok {
			return netip.Addr{}, false
		}
		if port != "" {
			if port, ok = strings.CutPrefix(port, ":"); !ok || !validPort(port) {
				return netip.Addr{}, false
			}
		}
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is6() {
			return netip.Addr{}, false
		}
		return normalize(a), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return normalize(a), true
	}
	host, port, ok := strings.Cut(s, ":")
	if !ok || !validPort(port) {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.Is4() {
		return netip.Addr{}, false
	}
	return a, true
}

// validPort accepts a decimal port or an RFC 7239 obfuscated one ("_abc").
func validPort(p string) bool {
	if p == "" {
		return false
	}
	if rest, ok := strings.CutPrefix(p, "_"); ok {
		if rest == "" {
			return false
		}
		for _, c := range rest {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
				return false
			}
		}
		return true
	}
	if len(p) > 5 {
		return false
	}
	n := 0
	for _, c := range p {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n <= 65535
}

// normalize drops a zone and turns an IPv4-mapped IPv6 address into IPv4, so
// that one client has one key and matches IPv4 prefixes.
func normalize(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ParseTrustedProxies parses a comma-separated list of CIDRs, such as the
// --trusted-proxies flag, into prefixes for Config.TrustedProxies. A bare
// address is a single-host prefix (/32 or /128); an IPv4-mapped IPv6 address
// is taken in its IPv4 form. Empty input yields none.
func ParseTrustedProxies(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for field := range strings.SplitSeq(s, ",") {
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		if !strings.Contains(field, "/") {
			a, err := netip.ParseAddr(field)
			if err != nil || a.Zone() != "" {
				return nil, fmt.Errorf("gateway: trusted proxies: %q is not a CIDR or an IP address", field)
			}
			a = a.Unmap()
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(field)
		if err != nil {
			return nil, fmt.Errorf("gateway: trusted proxies: %q is not a CIDR", field)
		}
		if err := checkTrustedPrefix(p); err != nil {
			return nil, fmt.Errorf("gateway: trusted proxies: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}

// validTrustedProxies checks Config.TrustedProxies.
func validTrustedProxies(ps []netip.Prefix) error {
	for i, p := range ps {
		if err := checkTrustedPrefix(p); err != nil {
			return fmt.Errorf("gateway: Config.TrustedProxies[%d]: %w", i, err)
		}
	}
	return nil
}

// checkTrustedPrefix refuses what cannot be meant: an invalid prefix, bits
// set past the mask (10.0.0.1/8 is either 10.0.0.0/8 or 10.0.0.1/32), and an
// IPv4-mapped prefix, which no client matches since addresses are compared in
// IPv4 form.
func checkTrustedPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("not a valid prefix")
	case p.Masked() != p:
		return fmt.Errorf("%s has bits set past the /%d mask: write %s, or the address alone for one host", p, p.Bits(), p.Masked())
	case p.Addr().Is4In6():
		return fmt.Errorf("%s is IPv4-mapped: write it in IPv4 form", p)
	}
	return nil
}
