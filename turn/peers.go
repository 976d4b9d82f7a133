package turn

import (
	"fmt"
	"net/netip"
	"strings"
)

// deniedPeers are the peer ranges the relay refuses by default
// (TURN-SECURITY rows 4 to 9): loopback, unspecified, link-local with the
// cloud metadata addresses, private and CGNAT, special-purpose and
// documentation ranges, reserved, broadcast and multicast.
var deniedPeers = mustPrefixes(
	// IPv4
	"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8",
	"169.254.0.0/16", "169.254.169.254/32", "172.16.0.0/12",
	"192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
	"198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
	"224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
	// IPv6
	"::/96", "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001:db8::/32",
	"fc00::/7", "fd00:ec2::254/128", "fe80::/10", "fec0::/10", "ff00::/8",
)

// Prefixes of IPv6 forms that carry an IPv4 address; the policy checks the
// embedded address too (TURN-SECURITY row 10). The deprecated
// IPv4-compatible form ::a.b.c.d is denied whole, with ::/96.
var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
	teredo    = netip.MustParsePrefix("2001::/32")
)

func mustPrefixes(ss ...string) []netip.Prefix {
	ps := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		ps[i] = netip.MustParsePrefix(s)
	}
	return ps
}

// ParseAllowPeers parses a comma-separated list of CIDRs (the
// --turn-allow-peers flag). A bare address is taken as a single-host prefix.
// Empty input yields no prefixes.
func ParseAllowPeers(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for field := range strings.SplitSeq(s, ",") {
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		if !strings.Contains(field, "/") {
			a, err := netip.ParseAddr(field)
			if err != nil {
				return nil, fmt.Errorf("turn: allow peers: %q is not a CIDR or an address: %w", field, err)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(field)
		if err != nil {
			return nil, fmt.Errorf("turn: allow peers: %q is not a CIDR: %w", field, err)
		}
		out = append(out, unmapPrefix(p.Masked()))
	}
	return out, nil
}

// unmapPrefix turns ::ffff:a.b.c.d/N (N >= 96) into a.b.c.d/(N-96).
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// peerPolicy decides which peer addresses an allocation may talk to.
//
// An address is denied when it falls in a denied range, unless an allow
// prefix covers it that is at least as specific as every denied range that
// covers it: deny wins where both match and the allow prefix is the broader
// one. So allowing 10.0.0.0/8 opens 10.0.0.1, allowing 0.0.0.0/0 opens
// nothing that is denied, and allowing 169.254.0.0/16 still leaves the
// metadata address 169.254.169.254 closed until it is allowed by itself.
//
// Addresses that embed an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo) are allowed only if the embedded address is allowed too.
// The relay's own address (the one in relay candidates) is always allowed,
// so that two relay-only clients of one server can reach each other; if the
// ranges deny it, the relay sockets refuse its ports outside the relay range
// (see relays.refused).
type peerPolicy struct {
	allow []netip.Prefix
	self  []netip.Addr
}

func (p *peerPolicy) allowed(a netip.Addr) bool {
	a = a.WithZone("")
	if p.isSelf(a) {
		return true
	}
	return p.allowedByRanges(a)
}

func (p *peerPolicy) isSelf(a netip.Addr) bool {
	a = a.Unmap()
	for _, s := range p.self {
		if s == a {
			return true
		}
	}
	return false
}

// allowedByRanges applies the deny and allow lists to a and to every IPv4
// address embedded in it.
func (p *peerPolicy) allowedByRanges(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap()
	if !p.allowedOne(a) {
		return false
	}
	if !a.Is6() {
		return true
	}
	for _, e := range embedded(a) {
		if !p.allowedOne(e) {
			return false
		}
	}
	return true
}

func (p *peerPolicy) allowedOne(a netip.Addr) bool {
	deny := longestMatch(deniedPeers, a)
	if deny < 0 {
		return true
	}
	return longestMatch(p.allow, a) >= deny
}

// longestMatch returns the length of the longest prefix in ps that contains
// a, or -1.
func longestMatch(ps []netip.Prefix, a netip.Addr) int {
	best := -1
	for _, p := range ps {
		if p.Bits() > best && p.Contains(a) {
			best = p.Bits()
		}
	}
	return best
}

// embedded returns the IPv4 addresses carried inside an IPv6 address.
func embedded(a netip.Addr) []netip.Addr {
	b := a.As16()
	var out []netip.Addr
	switch {
	case nat64.Contains(a):
		out = append(out, netip.AddrFrom4([4]byte(b[12:16])))
	case sixToFour.Contains(a):
		out = append(out, netip.AddrFrom4([4]byte(b[2:6])))
	case teredo.Contains(a):
		client := [4]byte{^b[12], ^b[13], ^b[14], ^b[15]}
		out = append(out, netip.AddrFrom4([4]byte(b[4:8])), netip.AddrFrom4(client))
	}
	return out
}
