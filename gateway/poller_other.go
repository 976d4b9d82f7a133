//go:build !linux

package gateway

import "errors"

// newPoller: there is no poller on this system; every WebSocket session
// keeps a reader goroutine of its own.
func newPoller(*Server) (poller, error) {
	return nil, errors.New("no poller on this operating system")
}
