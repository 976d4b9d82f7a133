package turn

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	pionturn "github.com/pion/turn/v4"
)

var errTCPRelay = errors.New("turn: TCP relays (RFC 6062) are not supported")

// relays owns the relay sockets of a server: it binds them in the port
// range, advertises them at the public address and counts what they relay.
type relays struct {
	ports   *portSet
	bindIP  netip.Addr // what relay sockets bind to
	relayIP netip.Addr // what XOR-RELAYED-ADDRESS says
	// restricted are the relay's own addresses that the deny list would
	// refuse: they are reachable as peers only on ports of the relay range,
	// which is what relay-to-relay traffic needs and no more.
	restricted []netip.Addr
	track      *tracker
	fast       *fastPath

	mu     sync.Mutex
	byPort map[int]*relayConn
}

func (r *relays) network() string {
	if r.bindIP.Is6() && !r.bindIP.Is4In6() {
		return "udp6"
	}
	return "udp4"
}

// generator returns the RelayAddressGenerator for one listener.
func (r *relays) generator(c *relayCounters) pionturn.RelayAddressGenerator {
	return &relayGenerator{r: r, c: c}
}

func (r *relays) listen(requestedPort int, c *relayCounters) (*relayConn, error) {
	var conn *net.UDPConn
	bind := func(port int) error {
		c, err := net.ListenUDP(r.network(), net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.bindIP, uint16(port))))
		if err != nil {
			return err
		}
		conn = c
		return nil
	}
	var port int
	var err error
	if requestedPort != 0 {
		port, err = requestedPort, r.ports.bindPort(requestedPort, bind)
	} else {
		port, err = r.ports.bind(bind)
	}
	if err != nil {
		return nil, err
	}
	sock := newUDPSock(conn)
	rc := &relayConn{conn: conn, sock: sock, r: r, c: c, port: port,
		in: newBatchReader(sock, 4, relayBatch), out: newBatchWriter(relayBatch)}
	rc.init(r.track)
	r.mu.Lock()
	r.byPort[port] = rc
	r.mu.Unlock()
	return rc, nil
}

func (r *relays) lookup(port int) *relayConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byPort[port]
}

func (r *relays) forget(rc *relayConn) {
	r.mu.Lock()
	if r.byPort[rc.port] == rc {
		delete(r.byPort, rc.port)
	}
	r.mu.Unlock()
	r.ports.release(rc.port)
}

// refused reports whether a peer address is one of the restricted own
// addresses on a port outside the relay range.
func (r *relays) refused(ap netip.AddrPort) bool {
	if len(r.restricted) == 0 {
		return false
	}
	a := ap.Addr().Unmap()
	for _, s := range r.restricted {
		if s == a {
			return !r.ports.contains(int(ap.Port()))
		}
	}
	return false
}

type relayGenerator struct {
	r *relays
	c *relayCounters
}

func (g *relayGenerator) Validate() error { return nil }

func (g *relayGenerator) AllocatePacketConn(_ string, requestedPort int) (net.PacketConn, net.Addr, error) {
	rc, err := g.r.listen(requestedPort, g.c)
	if err != nil {
		return nil, nil, err
	}
	return rc, net.UDPAddrFromAddrPort(netip.AddrPortFrom(g.r.relayIP, uint16(rc.port))), nil
}

func (g *relayGenerator) AllocateConn(string, int) (net.Conn, net.Addr, error) {
	return nil, nil, errTCPRelay
}

// relayConn is one relay socket. It counts relayed datagrams and refuses
// own addresses outside the relay range; it allocates nothing per datagram.
type relayConn struct {
	tracked
	conn *net.UDPConn
	sock *udpSock
	r    *relays
	c    *relayCounters
	port int

	mu        sync.Mutex
	allocated bool // counted in the active gauge
	closed    bool

	chanMu sync.RWMutex
	chans  map[netip.AddrPort]relayChannel // by peer, for the fast path

	// Owned by the goroutine in ReadFrom (pion's, one per allocation).
	in  *batchReader // 4 bytes free in front of each datagram
	out *batchWriter // ChannelData to clients
}

var _ net.PacketConn = (*relayConn)(nil)

// markAllocated counts the socket as a live allocation.
func (rc *relayConn) markAllocated() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.allocated || rc.closed {
		return
	}
	rc.allocated = true
	rc.c.created.Inc()
	rc.c.active.Inc()
}

// ReadFrom returns the next datagram from a peer for pion to relay. A
// datagram from a peer with a channel bound for a UDP client is relayed
// here instead, as ChannelData built in place in the batch's buffer (see
// fastPath).
func (rc *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	rc.enter()
	defer rc.exit()
	if len(p) < 8 {
		return 0, nil, io.ErrShortBuffer
	}
	for {
		b, ap, ok := rc.in.pop()
		if !ok {
			rc.out.flush()
			if err := rc.in.fill(len(p)); err != nil {
				return 0, nil, err
			}
			continue
		}
		n := len(b) - 4
		if rc.r.refused(ap) {
			continue
		}
		rc.c.fromPeerBytes.Add(float64(n))
		rc.c.fromPeerPackets.Inc()
		rc.chanMu.RLock()
		ch, ok := rc.chans[ap]
		rc.chanMu.RUnlock()
		if ok {
			binary.BigEndian.PutUint16(b[0:2], ch.channel)
			binary.BigEndian.PutUint16(b[2:4], uint16(n))
			rc.out.add(ch.out, b, ch.client, nil)
			continue
		}
		rc.out.flush()
		n = copy(p, b[4:])
		return n, net.UDPAddrFromAddrPort(ap), nil
	}
}

func (rc *relayConn) addChannel(peer netip.AddrPort, c relayChannel) {
	rc.chanMu.Lock()
	defer rc.chanMu.Unlock()
	if rc.chans == nil {
		rc.chans = make(map[netip.AddrPort]relayChannel)
	}
	rc.chans[peer] = c
}

func (rc *relayConn) removeChannel(peer netip.AddrPort) {
	rc.chanMu.Lock()
	defer rc.chanMu.Unlock()
	delete(rc.chans, peer)
}

func (rc *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, net.InvalidAddrError("turn: relay peer is not a UDP address")
	}
	ap := ua.AddrPort()
	if rc.r.refused(ap) {
		return len(p), nil
	}
	n, err := rc.conn.WriteToUDPAddrPort(p, ap)
	if err == nil {
		rc.c.toPeerBytes.Add(float64(n))
		rc.c.toPeerPackets.Inc()
	}
	return n, err
}

func (rc *relayConn) Close() error {
	if !rc.markClosed() {
		return nil
	}
	rc.mu.Lock()
	rc.closed = true
	if rc.allocated {
		rc.c.active.Dec()
	}
	rc.mu.Unlock()
	err := rc.conn.Close()
	rc.r.forget(rc)
	rc.chanMu.Lock()
	chans := rc.chans
	rc.chans = nil
	rc.chanMu.Unlock()
	if rc.r.fast != nil && len(chans) > 0 {
		rc.r.fast.forget(rc, chans)
	}
	return err
}

func (rc *relayConn) LocalAddr() net.Addr                { return rc.conn.LocalAddr() }
func (rc *relayConn) SetDeadline(t time.Time) error      { return rc.conn.SetDeadline(t) }
func (rc *relayConn) SetReadDeadline(t time.Time) error  { return rc.conn.SetReadDeadline(t) }
func (rc *relayConn) SetWriteDeadline(t time.Time) error { return rc.conn.SetWriteDeadline(t) }
