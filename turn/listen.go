package turn

import (
	"context"
	"fmt"
	"net"
	"runtime"
)

// udpReadBuffer is the receive buffer asked for each UDP listener socket,
// well above Linux's 208 KiB default, so bursts are not dropped at the
// socket while a reader is busy.
const udpReadBuffer = 4 << 20

// Listen opens the sockets for TURN and STUN on addr (host:port, such as
// "localhost:3478"): one UDP socket per CPU, sharing the port with
// SO_REUSEPORT so the kernel spreads clients over them, each with a large
// receive buffer, and a TCP listener on the same port when it is free (a
// port of 0 picks one for UDP and tries it for TCP). Pass them to
// Config.UDPConns and Config.TCPListener. On systems without SO_REUSEPORT
// it opens one UDP socket.
func Listen(ctx context.Context, addr string) (udp []net.PacketConn, tcp net.Listener, err error) {
	lc := net.ListenConfig{Control: reusePortControl}
	first, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("turn: listen udp %s: %w", addr, err)
	}
	udp = append(udp, first)
	closeAll := func() {
		for _, c := range udp {
			_ = c.Close()
		}
	}
	bound := first.LocalAddr().String()
	if reusePortSupported {
		for range runtime.NumCPU() - 1 {
			c, err := lc.ListenPacket(ctx, "udp", bound)
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("turn: listen udp %s with SO_REUSEPORT: %w", bound, err)
			}
			udp = append(udp, c)
		}
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("turn: listen %s: %w", addr, err)
	}
	if port == "0" {
		_, udpPort, _ := net.SplitHostPort(bound)
		var tlc net.ListenConfig
		if tcp, err = tlc.Listen(ctx, "tcp", net.JoinHostPort(host, udpPort)); err == nil {
			return udp, tcp, nil
		}
	}
	var tlc net.ListenConfig
	tcp, err = tlc.Listen(ctx, "tcp", net.JoinHostPort(host, port))
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("turn: listen tcp %s: %w", addr, err)
	}
	return udp, tcp, nil
}
