package turn

import (
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	pionstun "github.com/pion/stun/v3"
	dto "github.com/prometheus/client_model/go"
)

// TestFastPathRelaysChannelData binds a channel by hand and checks that
// ChannelData flows both ways through the fast path, with the counters.
func TestFastPathRelaysChannelData(t *testing.T) {
	ts := startServer(t, Config{AllowPeers: mustAllow(t, "127.0.0.0/8")})
	peer := echoPeer(t)
	user, pass := ts.creds("alice", time.Hour)
	c := ts.dialAs(t, user, pass)
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

// TestFastPathAllocatesNothing relays bursts of ChannelData both ways
// through the batched reads and writes of a listener socket and a relay
// socket, each burst followed by one datagram the fast path leaves to pion
// (which makes ReadFrom return), and checks that the datagrams relayed cost
// no allocation: a burst of 20 costs what a burst of none does.
func TestFastPathAllocatesNothing(t *testing.T) {
	m := newMetrics()
	track := newTracker()
	r := &relays{ports: newPortSet(41000, 41999), bindIP: netip.MustParseAddr("127.0.0.1"), track: track, byPort: map[int]*relayConn{}}
	f := newFastPath()
	r.fast = f
	rc, err := r.listen(0, m.relayCounters(transportUDP))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	udp := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	addrOf := func(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }
	listener, client, peer, other := udp(), udp(), udp(), udp()
	pc := &packetConn{conn: listener, udp: listener, g: &gate{}, fast: f}
	pc.sock = newUDPSock(listener)
	pc.in = newBatchReader(pc.sock, 0, listenerBatch)
	pc.out = newBatchWriter(listenerBatch)
	pc.init(track)
	defer pc.Close()
	f.add(addrOf(client), 0x4000, rc, addrOf(peer), pc.sock)

	relayAP := addrOf(rc.conn)
	p := make([]byte, 1600)
	in := make([]byte, 1600)
	msg := make([]byte, 104)
	msg[0], msg[3] = 0x40, 100
	unbound := []byte{0x40, 0x01, 0, 0}
	payload := msg[4:]
	toPeer := func(burst int) {
		for range burst {
			_, _ = client.WriteToUDPAddrPort(msg, addrOf(listener))
		}
		_, _ = client.WriteToUDPAddrPort(unbound, addrOf(listener))
		if n, _, err := pc.ReadFrom(p); err != nil || n != len(unbound) {
			t.Fatalf("listener: got %d bytes, %v; want the unbound ChannelData", n, err)
		}
		for i := range burst {
			_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, _, err := peer.ReadFromUDPAddrPort(in); err != nil || string(in[:n]) != string(payload) {
				t.Fatalf("peer, datagram %d: got %x, %v", i, in[:n], err)
			}
		}
	}
	fromPeer := func(burst int) {
		for range burst {
			_, _ = peer.WriteToUDPAddrPort(payload, relayAP)
		}
		_, _ = other.WriteToUDPAddrPort(payload[:7], relayAP)
		if n, _, err := rc.ReadFrom(p); err != nil || n != 7 {
			t.Fatalf("relay: got %d bytes, %v; want the datagram of the peer without a channel", n, err)
		}
		for i := range burst {
			_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, _, err := client.ReadFromUDPAddrPort(in)
			if err != nil || n != 104 || binary.BigEndian.Uint16(in[0:2]) != 0x4000 || binary.BigEndian.Uint16(in[2:4]) != 100 || string(in[4:n]) != string(payload) {
				t.Fatalf("client, datagram %d: got %x, %v", i, in[:n], err)
			}
		}
	}
	for _, dir := range []struct {
		name string
		run  func(int)
	}{{"client to peer", toPeer}, {"peer to client", fromPeer}} {
		base := testing.AllocsPerRun(100, func() { dir.run(0) })
		burst := testing.AllocsPerRun(100, func() { dir.run(20) })
		if burst != base {
			t.Errorf("%s: a burst of 20 cost %v allocations, none %v: want the same", dir.name, burst, base)
		}
	}
	if runtime.GOOS == "linux" && (len(pc.in.bufs) != listenerBatch || len(rc.in.bufs) != relayBatch) {
		t.Errorf("batches of %d and %d datagrams, want %d and %d", len(pc.in.bufs), len(rc.in.bufs), listenerBatch, relayBatch)
	}
	var d dto.Metric
	if err := rc.c.toPeerPackets.Write(&d); err != nil {
		t.Fatal(err)
	}
	if got := d.GetCounter().GetValue(); got != 101*20 {
		t.Errorf("counted %v packets to the peer, want %d", got, 101*20)
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

// A relay socket whose datagrams arrive one at a time to a waiting reader
// (a slow media stream) keeps one read buffer instead of a batch's worth.
func TestSlowStreamKeepsOneBuffer(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("batched reads are Linux only")
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sender, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	r := newBatchReader(newUDPSock(conn), 4, relayBatch)
	done := make(chan error, 1)
	go func() {
		for range 5 {
			if err := r.fill(1600); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	to := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	for range 5 {
		time.Sleep(20 * time.Millisecond) // the reader is waiting by now
		if _, err := sender.WriteToUDPAddrPort([]byte("rtp"), to); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(r.bufs) != 1 {
		t.Errorf("got %d read buffers after a slow stream, want 1", len(r.bufs))
	}
}
