package turn

import (
	"syscall"

	"golang.org/x/sys/unix"
)

const reusePortSupported = true

// reusePortControl sets SO_REUSEPORT and the receive buffer, forced past
// net.core.rmem_max where the process may (CAP_NET_ADMIN), asked within it
// otherwise.
func reusePortControl(_, _ string, c syscall.RawConn) error {
	var opErr error
	err := c.Control(func(fd uintptr) {
		opErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpReadBuffer) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, udpReadBuffer)
		}
	})
	if err != nil {
		return err
	}
	return opErr
}
