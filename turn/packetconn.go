package turn

import (
	"net"
	"net/netip"
	"time"

	pionstun "github.com/pion/stun/v3"
)

// packetConn wraps a UDP listener socket: every datagram passes the gate
// before pion's read loop sees it. pion reads each socket from one
// goroutine, so the scratch message and the batches need no lock.
type packetConn struct {
	tracked
	conn net.PacketConn
	udp  *net.UDPConn // conn, if it is one: then the fast path is on
	sock *udpSock     // udp, for the fast path's writes
	g    *gate
	fast *fastPath
	msg  pionstun.Message
	in   *batchReader // reads udp
	out  *batchWriter // the fast path's datagrams to peers
}

var _ net.PacketConn = (*packetConn)(nil)

// ReadFrom returns the next frame for pion. ChannelData on a channel the
// fast path knows is relayed here instead; everything else passes the gate.
func (c *packetConn) ReadFrom(p []byte) (int, net.Addr, error) {
	c.enter()
	defer c.exit()
	for {
		var n int
		var addr net.Addr
		var err error
		if c.in != nil {
			b, ap, ok := c.in.pop()
			if !ok {
				c.out.flush()
				if err := c.in.fill(len(p)); err != nil {
					return 0, nil, err
				}
				continue
			}
			if len(b) >= 4 && b[0]&0xC0 == 0x40 {
				if r, payload, ok := c.fast.route(ap, b); ok {
					c.out.add(r.relay.sock, payload, r.peer, r.relay)
					continue
				}
			}
			c.out.flush()
			n = copy(p, b)
			addr = net.UDPAddrFromAddrPort(ap)
		} else if n, addr, err = c.conn.ReadFrom(p); err != nil {
			return n, addr, err
		}
		v, n := c.g.inspect(&c.msg, p, n, addrIP(addr), func(b []byte) {
			_, _ = c.conn.WriteTo(b, addr)
		})
		if v != drop {
			return n, addr, nil
		}
	}
}

func (c *packetConn) WriteTo(p []byte, addr net.Addr) (int, error) { return c.conn.WriteTo(p, addr) }

func (c *packetConn) Close() error {
	c.markClosed()
	return c.conn.Close()
}

func (c *packetConn) LocalAddr() net.Addr                { return c.conn.LocalAddr() }
func (c *packetConn) SetDeadline(t time.Time) error      { return c.conn.SetDeadline(t) }
func (c *packetConn) SetReadDeadline(t time.Time) error  { return c.conn.SetReadDeadline(t) }
func (c *packetConn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

// addrIP returns the IP of a UDP or TCP address.
func addrIP(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}
