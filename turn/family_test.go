package turn

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	pionstun "github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// A listener reported as 0.0.0.0 is IPv4 only (Go reports a dual-stack one as
// [::]): an IPv6 public IP is refused with it, as not of its family.
func TestIPv4OnlyListenerIPv6Public(t *testing.T) {
	udp, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	s, err := newServer(Config{
		Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry(), Secret: testSecret,
		UDPConns: []net.PacketConn{udp}, PublicIP: netip.MustParseAddr("::1"),
		AllowPeers: []netip.Prefix{netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("127.0.0.0/8")},
	}, time.Now)
	if err == nil {
		defer s.Close()
		ts := &testServer{Server: s, clock: &testClock{}}
		user, pass := ts.creds("alice", time.Hour)
		port := udp.LocalAddr().(*net.UDPAddr).Port
		c := dialRaw(t, "udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		c.username, c.password = user, pass
		resp, code := c.allocate()
		var relayed pionstun.XORMappedAddress
		if code == 0 {
			if err := relayed.GetFromAs(resp, pionstun.AttrXORRelayedAddress); err != nil {
				t.Fatal(err)
			}
		}
		t.Fatalf("NewServer took an IPv4-only listener (%s) with an IPv6 PublicIP; an IPv4 client's allocation got relayed address %v (error code %d), want the config refused", udp.LocalAddr(), relayed.IP, code)
	}
}
