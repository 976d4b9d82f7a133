//go:build !linux

package turn

// Without recvmmsg and sendmmsg, datagrams are read and written one at a
// time: initUDPSock leaves raw nil, so a batchReader never grows.

// sysReader reads one datagram at a time here; waited is never set, and no
// reader grows past one buffer without a raw connection.
type sysReader struct{ waited bool }

func (sysReader) reset() {}

func (b *batchReader) read() (int, error) { return b.readOne() }

type sysWriter struct{}

func (w *batchWriter) send(*udpSock) {
	for _, i := range w.group {
		w.sendOne(i)
	}
}

func initUDPSock(*udpSock) {}
