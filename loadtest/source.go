package loadtest

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime"
	"sync/atomic"
	"syscall"
)

// loopbackSources is how many source addresses a run spreads its
// connections over: 127.0.0.1 to 127.0.0.254. Linux routes all of
// 127.0.0.0/8 to the loopback interface, and a node counts connections per
// client address (--max-conns-per-ip), so each address gets its own share of
// the node's limit.
const loopbackSources = 254

// sourceAddrs returns the addresses to dial target from: 127.0.0.1 to
// 127.0.0.254 on Linux for an IPv4 loopback target (or localhost), none
// elsewhere (the system picks, and every connection has one address).
func sourceAddrs(target string) []netip.Addr {
	if runtime.GOOS != "linux" {
		return nil
	}
	u, err := url.Parse(target)
	if err != nil {
		return nil
	}
	host := u.Hostname()
	if ip, err := netip.ParseAddr(host); host != "localhost" && (err != nil || !ip.Is4() || !ip.IsLoopback()) {
		return nil
	}
	addrs := make([]netip.Addr, loopbackSources)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)})
	}
	return addrs
}

// httpClient returns the client that dials the node: each dial comes from
// the next of srcs in turn; nil srcs mean http.DefaultClient.
func httpClient(srcs []netip.Addr) *http.Client {
	if len(srcs) == 0 {
		return http.DefaultClient
	}
	var next atomic.Uint64
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			src := srcs[(next.Add(1)-1)%uint64(len(srcs))]
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
			c, err := d.DialContext(ctx, network, addr)
			if errors.Is(err, syscall.EADDRNOTAVAIL) {
				// A system without 127.0.0.0/8 on its loopback interface.
				var plain net.Dialer
				return plain.DialContext(ctx, network, addr)
			}
			return c, err
		},
	}}
}
