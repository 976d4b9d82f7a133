package turn

import (
	"net"
	"net/netip"
	"syscall"
)

// Batch sizes: how many datagrams one system call may read from a socket
// (recvmmsg on Linux). A socket starts reading one at a time and grows to
// its batch size the first time a read fills the batch with datagrams that
// were already queued, so an idle or lightly used relay socket keeps one
// buffer, as pion's own read loop would.
const (
	listenerBatch = 32
	relayBatch    = 8
)

// udpSock is a UDP socket with what the batched writes need of it.
type udpSock struct {
	conn *net.UDPConn
	raw  syscall.RawConn // nil where batching is not available
	v6   bool            // an AF_INET6 socket: IPv4 destinations go as mapped
}

func newUDPSock(c *net.UDPConn) *udpSock {
	s := &udpSock{conn: c}
	initUDPSock(s)
	return s
}

// batchReader reads datagrams from one socket in batches; one goroutine
// owns it. Each buffer keeps head bytes free in front of the datagram (the
// relay socket writes a ChannelData header there).
type batchReader struct {
	sock *udpSock
	head int
	max  int // batch size to grow to

	bufs [][]byte // each of the size asked in fill, head included
	lens []int    // datagram lengths, head excluded
	from []netip.AddrPort
	n    int // datagrams read in the last fill
	next int // next one pop returns

	sys sysReader
}

func newBatchReader(s *udpSock, head, max int) *batchReader {
	return &batchReader{sock: s, head: head, max: max}
}

// pop returns the next datagram of the batch, head bytes included, and its
// source (unmapped), or false once the batch is used up.
func (b *batchReader) pop() ([]byte, netip.AddrPort, bool) {
	if b.next >= b.n {
		return nil, netip.AddrPort{}, false
	}
	i := b.next
	b.next++
	return b.bufs[i][:b.head+b.lens[i]], b.from[i], true
}

// fill blocks until at least one datagram is read into buffers of size
// bytes (head included), as many as are ready up to the batch size.
func (b *batchReader) fill(size int) error {
	b.n, b.next = 0, 0
	if len(b.bufs) == 0 || len(b.bufs[0]) != size {
		b.bufs = [][]byte{make([]byte, size)}
		b.lens = make([]int, 1)
		b.from = make([]netip.AddrPort, 1)
		b.sys.reset()
	}
	n, err := b.read()
	if err != nil {
		return err
	}
	b.n = n
	for i := range n {
		b.from[i] = netip.AddrPortFrom(b.from[i].Addr().Unmap(), b.from[i].Port())
	}
	if n == len(b.bufs) && n < b.max && b.sock.raw != nil && !b.sys.waited {
		// Datagrams were queuing up (the read filled the batch without
		// waiting): read them in batches from now on. A socket whose
		// datagrams arrive one at a time to a waiting reader, such as a
		// slow media stream, keeps one buffer.
		for len(b.bufs) < b.max {
			b.bufs = append(b.bufs, make([]byte, size))
			b.lens = append(b.lens, 0)
			b.from = append(b.from, netip.AddrPort{})
		}
		b.sys.reset()
	}
	return nil
}

// sendItem is one datagram waiting in a batchWriter.
type sendItem struct {
	sock  *udpSock
	b     []byte
	to    netip.AddrPort
	relay *relayConn // counts to_peer when set
}

// batchWriter collects the datagrams the fast path relays while it goes
// through a batch and sends them in one system call per socket (sendmmsg
// on Linux). One goroutine owns it.
type batchWriter struct {
	items []sendItem
	group []int // indexes into items of one socket, scratch
	sys   sysWriter
}

func newBatchWriter(max int) *batchWriter {
	return &batchWriter{items: make([]sendItem, 0, max), group: make([]int, 0, max)}
}

func (w *batchWriter) add(s *udpSock, b []byte, to netip.AddrPort, relay *relayConn) {
	w.items = append(w.items, sendItem{sock: s, b: b, to: to, relay: relay})
}

// flush sends what was added, grouped by socket, and forgets it.
func (w *batchWriter) flush() {
	for i := range w.items {
		s := w.items[i].sock
		if s == nil {
			continue // sent with an earlier group
		}
		w.group = w.group[:0]
		for j := i; j < len(w.items); j++ {
			if w.items[j].sock == s {
				w.group = append(w.group, j)
			}
		}
		w.send(s)
		for j := i; j < len(w.items); j++ {
			if w.items[j].sock == s {
				w.items[j] = sendItem{}
			}
		}
	}
	w.items = w.items[:0]
}

// sent records the datagram items[i], of n bytes, as sent.
func (w *batchWriter) sent(i, n int) {
	if rc := w.items[i].relay; rc != nil {
		rc.c.toPeerBytes.Add(float64(n))
		rc.c.toPeerPackets.Inc()
	}
}

// sendOne is the write of one datagram, where batching is not available.
func (w *batchWriter) sendOne(i int) {
	it := &w.items[i]
	if n, err := it.sock.conn.WriteToUDPAddrPort(it.b, it.to); err == nil {
		w.sent(i, n)
	}
}

// readOne is the read of one datagram, where batching is not available.
func (b *batchReader) readOne() (int, error) {
	n, ap, err := b.sock.conn.ReadFromUDPAddrPort(b.bufs[0][b.head:])
	if err != nil {
		return 0, err
	}
	b.lens[0], b.from[0] = n, ap
	return 1, nil
}
