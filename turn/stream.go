package turn

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	pionstun "github.com/pion/stun/v3"
)

// Timeouts of TURN over TCP and TLS.
const (
	// streamIdleNew is how long a connection may go without a frame before
	// it has made an authenticated request (this includes the TLS
	// handshake).
	streamIdleNew = 30 * time.Second
	// streamWriteTimeout bounds one write to a client, so that a client
	// that stops reading cannot stall a relay goroutine.
	streamWriteTimeout = 10 * time.Second
	// streamReadBuffer is the buffered reader size of one connection.
	streamReadBuffer = 2048
)

var (
	errStreamFrame    = errors.New("turn: stream carries neither STUN nor ChannelData")
	errStreamTooLarge = errors.New("turn: stream frame too large")
)

// streamListener wraps the TCP or TLS listener: it bounds the number of
// connections, survives temporary accept errors (pion's accept loop would
// stop for good), and frames each connection so the gate sees whole
// messages.
type streamListener struct {
	tracked
	ln        net.Listener
	g         *gate
	idleAuthd time.Duration
	max       int
	track     *tracker
	log       func(msg string, err error)

	mu    sync.Mutex
	conns map[*streamConn]struct{}
}

var _ net.Listener = (*streamListener)(nil)

func (l *streamListener) Accept() (net.Conn, error) {
	l.enter()
	defer l.exit()
	backoff := 5 * time.Millisecond
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || l.isClosed() {
				return nil, err
			}
			l.log("turn: accept", err)
			t := time.NewTimer(backoff)
			<-t.C
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		sc := l.newConn(c)
		if sc == nil {
			_ = c.Close()
			continue
		}
		return sc, nil
	}
}

func (l *streamListener) newConn(c net.Conn) *streamConn {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.conns) >= l.max || l.isClosed() {
		return nil
	}
	sc := &streamConn{Conn: c, l: l, br: bufio.NewReaderSize(c, streamReadBuffer), src: addrIP(c.RemoteAddr())}
	sc.init(l.track)
	l.conns[sc] = struct{}{}
	return sc
}

func (l *streamListener) Close() error {
	l.markClosed()
	return l.ln.Close()
}

func (l *streamListener) Addr() net.Addr { return l.ln.Addr() }

// closeConns closes every connection still open.
func (l *streamListener) closeConns() {
	l.mu.Lock()
	conns := make([]*streamConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

func (l *streamListener) forget(c *streamConn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// streamConn hands pion one whole frame per Read. pion reads each
// connection from one goroutine.
type streamConn struct {
	net.Conn
	tracked
	l     *streamListener
	br    *bufio.Reader
	src   netip.Addr
	authd bool
	msg   pionstun.Message
}

func (c *streamConn) Read(p []byte) (int, error) {
	c.enter()
	defer c.exit()
	for {
		idle := streamIdleNew
		if c.authd {
			idle = c.l.idleAuthd
		}
		if err := c.Conn.SetReadDeadline(time.Now().Add(idle)); err != nil {
			return 0, err
		}
		n, err := c.readFrame(p)
		if err != nil {
			return 0, err
		}
		v, n := c.l.g.inspect(&c.msg, p, n, c.src, c.reply)
		if v == passed {
			c.authd = true
		}
		if v != drop {
			return n, nil
		}
	}
}

// readFrame reads one STUN message or padded ChannelData frame into p,
// keeping 8 bytes of room for the gate's LIFETIME rewrite.
func (c *streamConn) readFrame(p []byte) (int, error) {
	if len(p) < 28 {
		return 0, io.ErrShortBuffer
	}
	if _, err := io.ReadFull(c.br, p[:4]); err != nil {
		return 0, err
	}
	length := int(binary.BigEndian.Uint16(p[2:4]))
	var size int
	switch p[0] & 0xC0 {
	case 0x40: // ChannelData, padded to 4 bytes over streams
		size = 4 + (length+3)&^3
	case 0x00: // STUN
		size = 20 + length
	default:
		return 0, errStreamFrame
	}
	if size > len(p)-8 {
		return 0, errStreamTooLarge
	}
	if _, err := io.ReadFull(c.br, p[4:size]); err != nil {
		return 0, err
	}
	return size, nil
}

func (c *streamConn) reply(b []byte) { _, _ = c.Write(b) }

func (c *streamConn) Write(b []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(streamWriteTimeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

func (c *streamConn) Close() error {
	if !c.markClosed() {
		return nil
	}
	c.l.forget(c)
	return c.Conn.Close()
}
