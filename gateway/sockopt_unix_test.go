//go:build unix

package gateway

import "syscall"

// setRcvbuf sets a socket's receive buffer (SO_RCVBUF) by descriptor.
func setRcvbuf(fd uintptr, n int) error {
	return syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
}
