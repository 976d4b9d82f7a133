package turn

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	pionstun "github.com/pion/stun/v3"
)

// TestFastPathRelaysChannelData binds a channel by hand and checks that
// ChannelData flows both ways through the fast path, with the counters.
func TestFastPathRelaysChannelData(t *testing.T) {
	ts := startServer(t, Config{AllowPeers: mustAllow(t, "127.0.0.0/8")})
	peer := echoPeer(t)
	user, pass := ts.creds("alice", time.Hour)
	c := dialRaw(t, "udp", ts.UDPAddr())
	c.username, c.password = user, pass
	if _, code := c.allocate(); code != 0 {
		t.Fatalf("allocate: %v", code)
	}
	if code := errorCode(c.request(pionstun.MethodChannelBind, true, channelAttr(0x4001), peerAttr(peer.IP, peer.Port))); code != 0 {
		t.Fatalf("channel bind: %v", code)
	}
	waitFor(t, "the fast path to know the channel", 5*time.Second, func() bool {
		ts.fast.mu.RLock()
		defer ts.fast.mu.RUnlock()
		return len(ts.fast.routes) == 1
	})
	for i := range 10 {
		msg := []byte{0x40, 0x01, 0, 5, 'h', 'e', 'l', 'l', byte('0' + i), 0, 0, 0}
		c.send(msg)
		b, err := c.readRaw(5 * time.Second)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if len(b) < 9 || binary.BigEndian.Uint16(b[0:2]) != 0x4001 || binary.BigEndian.Uint16(b[2:4]) != 5 || string(b[4:9]) != string(msg[4:9]) {
			t.Fatalf("message %d: got %x, want ChannelData 0x4001 with %q", i, b, msg[4:9])
		}
	}
	for _, dir := range []string{dirToPeer, dirFromPeer} {
		// A counter is added to just after its write, which may be after
		// the echo came back.
		labels := map[string]string{"transport": "udp", "direction": dir}
		waitFor(t, "10 packets "+dir, 5*time.Second, func() bool {
			return ts.metric(t, "parley_turn_relayed_packets_total", labels) == 10
		})
		if got := ts.metric(t, "parley_turn_relayed_bytes_total", labels); got != 50 {
			t.Errorf("got %v bytes %s, want 50", got, dir)
		}
	}
	// Deleting the allocation drops the route.
	if code := errorCode(c.request(pionstun.MethodRefresh, true, lifetimeAttr(0))); code != 0 {
		t.Fatalf("delete: %v", code)
	}
	waitFor(t, "the route to go", 5*time.Second, func() bool {
		ts.fast.mu.RLock()
		defer ts.fast.mu.RUnlock()
		return len(ts.fast.routes) == 0
	})
}

func TestFastPathAllocatesNothing(t *testing.T) {
	m := newMetrics()
	r := &relays{ports: newPortSet(41000, 41999), bindIP: netip.MustParseAddr("127.0.0.1"), track: newTracker(), byPort: map[int]*relayConn{}}
	f := newFastPath()
	r.fast = f
	rc, err := r.listen(0, m.relayCounters(transportUDP))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	out, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	client := netip.MustParseAddrPort("127.0.0.1:9") // discard
	peerAP := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	f.add(client, 0x4000, rc, peerAP, out)

	msg := make([]byte, 104)
	msg[0], msg[3] = 0x40, 100
	allocs := testing.AllocsPerRun(1000, func() {
		if !f.fromClient(client, msg) {
			t.Fatal("not relayed")
		}
	})
	if allocs != 0 {
		t.Errorf("client to peer: got %v allocations per datagram, want 0", allocs)
	}

}

// BenchmarkRelayChannelData sends ChannelData to an echo peer and waits for
// each echo, through the fast path and through pion's own path. The
// allocations reported are the whole process's: client, server and peer.
func BenchmarkRelayChannelData(b *testing.B) {
	for _, bm := range []struct {
		name     string
		disabled bool
	}{{"fast path", false}, {"pion path", true}} {
		b.Run(bm.name, func(b *testing.B) {
			ts := startBenchServer(b)
			ts.fast.disabled = bm.disabled
			peer := echoPeer(b)
			user, pass := Credentials(testSecret, "bench", time.Hour, time.Now())
			conn, err := channelToWith(ts.UDPAddr().(*net.UDPAddr), peer, user, pass)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			msg := make([]byte, 104)
			msg[0], msg[3] = 0x40, 100
			buf := make([]byte, 1600)
			b.ReportAllocs()
			b.SetBytes(100)
			b.ResetTimer()
			for b.Loop() {
				if _, err := conn.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := conn.Read(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func startBenchServer(b *testing.B) *Server {
	b.Helper()
	udp, tcp, err := Listen(b.Context(), "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s, err := NewServer(Config{Secret: testSecret, UDPConns: udp, TCPListener: tcp, AllowPeers: mustAllow(b, "127.0.0.0/8")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}
