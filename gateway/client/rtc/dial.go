package rtc

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// turnDialTimeout bounds the TCP connect and TLS handshake of a TURN server
// reached over TCP or TLS. pion dials them with no deadline of its own: behind
// a firewall that drops TCP to the TURN port, the dial waited for the
// kernel's connect timeout (over two minutes on Linux), and closing the
// PeerConnection waited for the dial.
const turnDialTimeout = 5 * time.Second

// turnDialer is the dialer pion uses for TURN over TCP and TLS (pion's
// SettingEngine.SetICEProxyDialer). It dials with turnDialTimeout, and
// gives up at once when the Peer's Run ends. pion hands a proxy dialer the
// TURN server's host:port for turn: and turns: URLs alike and speaks STUN on
// what it gets, so this dialer does the TLS of a turns: server itself,
// checking its certificate against the URL's host as pion does.
type turnDialer struct{ p *Peer }

// Dial implements proxy.Dialer.
func (d turnDialer) Dial(network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(d.p.dialCtx, turnDialTimeout)
	defer cancel()
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	host, ok := d.p.turnsHost(addr)
	if !ok {
		return conn, nil
	}
	tc := tls.Client(conn, &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12})
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS to TURN server %s: %w", addr, err)
	}
	return tc, nil
}

// turnsHost reports whether addr, as pion gives it to the dialer
// (net.JoinHostPort of the URL's host and port), is the server of one of
// the Peer's turns: URLs, and that URL's host.
func (p *Peer) turnsHost(addr string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.iceServers {
		for _, u := range s.URLs {
			host, port, ok := turnsServer(u)
			if ok && sameAddr(net.JoinHostPort(host, strconv.Itoa(port)), addr) {
				return host, true
			}
		}
	}
	return "", false
}

// sameAddr reports whether two host:port addresses are the same: equal as
// written, or the same IP address and port however the IP is written
// (pion brackets an IPv6 host: [2001:db8::1]:443).
func sameAddr(a, b string) bool {
	if a == b {
		return true
	}
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	if errA != nil || errB != nil || pa != pb {
		return false
	}
	ia, errA := netip.ParseAddr(ha)
	ib, errB := netip.ParseAddr(hb)
	return errA == nil && errB == nil && ia.Unmap() == ib.Unmap()
}

// turnsServer parses a turns: URL (RFC 7065: turns:host[:port][?transport=
// tcp]) into its host and port, 5349 when it has none.
func turnsServer(raw string) (host string, port int, ok bool) {
	rest, found := strings.CutPrefix(raw, "turns:")
	if !found {
		return "", 0, false
	}
	rest, _, _ = strings.Cut(rest, "?")
	u, err := url.Parse("//" + rest)
	if err != nil || u.Hostname() == "" {
		return "", 0, false
	}
	port = 5349
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil {
			return "", 0, false
		}
	}
	return u.Hostname(), port, true
}
