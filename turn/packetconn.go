package turn

import (
	"net"
	"net/netip"
	"time"

	pionstun "github.com/pion/stun/v3"
)

// packetConn wraps a UDP listener socket: every datagram passes the gate
// before pion's read loop sees it. pion reads each socket from one
// goroutine, so the scratch message needs no lock.
type packetConn struct {
	tracked
	conn net.PacketConn
	udp  *net.UDPConn // conn, if it is one: then the fast path is on
	g    *gate
	fast *fastPath
	msg  pionstun.Message
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
		if c.udp != nil {
			var ap netip.AddrPort
			n, ap, err = c.udp.ReadFromUDPAddrPort(p)
			if err != nil {
				return 0, nil, err
			}
			ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			if n >= 4 && p[0]&0xC0 == 0x40 && c.fast.fromClient(ap, p[:n]) {
				continue
			}
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
