//go:build !linux

package turn

// Without recvmmsg and sendmmsg, datagrams are read and written one at a
// time: initUDPSock leaves raw nil, so a batchReader never grows.

type sysReader struct{}

func (sysReader) reset() {}

func (b *batchReader) read() (int, error) { return b.readOne() }

type sysWriter struct{}

func (w *batchWriter) send(*udpSock) {
	for _, i := range w.group {
		w.sendOne(i)
	}
}

func initUDPSock(*udpSock) {}
