package gateway

import (
	"bufio"
	"context"
	"net"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// The read side of a WebSocket session without a goroutine of its own.
//
// An idle session holds no goroutine: its connection waits in the server's
// poller (epoll on Linux) until it has bytes to read. The poller then starts
// a reader (readBurst) for it, bounded by Config.MaxReaders at once; the
// reader reads and handles frames while any are at hand, then gives the
// connection back to the poller and ends. Where no poller runs (another
// operating system, Config.NoPoller, a connection that is not plain TCP),
// the session keeps a reader goroutine for its life (readLoop), as before.
//
// This rests on these invariants of coder/websocket v1.8 (read.go, conn.go),
// checked against its source:
//
//   - Conn.Read reads only through the bufio.Reader that Hijack gave it (its
//     br), which reads the hijacked net.Conn: bytes of the connection are
//     either in the kernel's socket buffer, where epoll sees them, or in
//     that bufio.Reader (or in prefixConn, before the first read), where
//     readBurst looks before it gives the connection back. None is ever
//     held elsewhere, so a connection goes back to the poller only when no
//     byte of it is waiting in user space, and no byte waits unseen.
//   - Read with a context that has no Done channel sets no timer and starts
//     no goroutine; it returns after one whole data message. Ping, pong and
//     close frames before it are handled inside Read (a ping is answered
//     there). A partial frame makes Read wait for the rest: the read
//     deadline readBurst sets (Config.FrameTimeout) bounds that wait, so a
//     client that sends half a frame and stops (a slowloris) holds a reader
//     for at most that long, and is then closed.
//   - Only one Read runs at a time on a Conn. The poller's registration is
//     one-shot (EPOLLONESHOT): it reports a connection once, and only
//     readBurst arms it again, after its last Read, so two readers of one
//     session never overlap.
//   - Closing the Conn closes the net.Conn, which removes it from the epoll
//     set. pollConn's Close then tells the session (readerClosed), which
//     finishes it if no reader is running; a running reader finishes it
//     itself when its Read fails.
//
// A Parley client sends a frame only with something to say (its heartbeat
// answers are data frames), so an idle connection costs no goroutine. A
// client that sends WebSocket pings of its own makes its reader wait inside
// Read for the next data message, up to FrameTimeout after which the session
// is closed unless a data frame came; browsers never send pings.

// poller holds idle WebSocket connections without a goroutine each.
type poller interface {
	// add names s to the poller; arm then hands its connection over.
	add(s *session)
	// arm gives s's connection to the poller until it becomes readable
	// once; the poller then starts a reader for it (readBurst). It fails
	// when the connection is closed.
	arm(s *session) error
	// forget drops a finished session.
	forget(s *session)
	// close stops the poller; its sessions must be closed first.
	close()
}

// Reader states of a polled session.
const (
	readerPolled   int32 = iota // in the poller, no reader running
	readerRunning               // a readBurst runs
	readerFinished              // finished, or finishing
)

// pollConn is a hijacked connection watched by the poller. Close tells the
// session, whose reader may be waiting in the poller, that it ended.
type pollConn struct {
	net.Conn
	onClose atomic.Pointer[func()]
}

func (c *pollConn) Close() error {
	err := c.Conn.Close()
	if f := c.onClose.Swap(nil); f != nil {
		(*f)()
	}
	return err
}

// pollState is what a polled session keeps for the poller.
type pollState struct {
	state  atomic.Int32
	tcp    *net.TCPConn  // the connection's socket, for the poller
	br     *bufio.Reader // the reader coder/websocket reads through
	prefix *prefixConn   // bytes net/http read before the hijack, if any
	token  uint64        // the poller's name for the session
}

// buffered reports whether bytes of the connection wait in user space, where
// the poller cannot see them.
func (p *pollState) buffered() bool {
	return p.br.Buffered() > 0 || (p.prefix != nil && len(p.prefix.prefix) > 0)
}

// moreToRead reports whether bytes of the connection wait in user space,
// and whether the session is closed. It looks under s.mu: every close of a
// session marks it closed under s.mu before coder/websocket's close
// handshake reads the connection through the same bufio.Reader, so the two
// never look at that reader at once.
func (s *session) moreToRead() (more, closed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, true
	}
	return s.poll.buffered(), false
}

// startReading makes the session's reader: the poller's, or a goroutine of
// its own. register counted the session's owner in srv.goroutines.
func (s *session) startReading(ps *pollState) {
	if ps == nil || s.srv.poller == nil {
		go s.readLoop()
		return
	}
	s.poll = ps
	// Running until it is placed: a close meanwhile (readerClosed) then
	// leaves the session to this function, which finishes it once.
	ps.state.Store(readerRunning)
	f := s.readerClosed
	s.srv.poller.add(s)
	s.pollConn().onClose.Store(&f)
	if more, _ := s.moreToRead(); more {
		// The client sent its first frames with the handshake, and
		// net/http read them: no poller would see them.
		s.srv.goroutines.Add(1)
		go func() {
			defer s.srv.goroutines.Done()
			s.readBurst()
		}()
		return
	}
	// Read is called only when bytes are at hand: a session that says
	// nothing waits in the poller from the start.
	s.place()
}

// toPoller gives the session's connection to the poller. It returns an
// error only when the poller could not take it and the caller, not the
// connection's close, is the one to end the session (armFailed): whoever
// moves the state on first finishes it.
func (s *session) toPoller() error {
	s.poll.state.Store(readerPolled)
	if err := s.srv.poller.arm(s); err != nil && s.poll.state.CompareAndSwap(readerPolled, readerFinished) {
		return err
	}
	return nil
}

// place gives a new session's connection to the poller, in which it waits
// from then on; if the poller cannot take it, the session is ended (on a
// goroutine of its own: the caller is its handler).
func (s *session) place() {
	if err := s.toPoller(); err != nil {
		s.srv.goroutines.Add(1)
		go func() {
			defer s.srv.goroutines.Done()
			s.armFailed(err)
		}()
	}
}

// rearm gives the connection back to the poller at the end of a reader's
// turn; if the poller cannot take it, the reader ends the session.
func (s *session) rearm() {
	if err := s.toPoller(); err != nil {
		s.armFailed(err)
	}
}

// armFailed ends a session the poller could not take: its connection closed
// meanwhile, or epoll refused it (past fs.epoll.max_user_watches, out of
// memory, the poller stopped). The connection is closed in any case, so no
// client stays connected to a session the node no longer serves.
func (s *session) armFailed(err error) {
	if !s.isClosed() {
		s.srv.log.Warn("the poller could not take a WebSocket connection; closing it", "session", s.id, "err", err)
	}
	s.closeNow(websocket.StatusInternalError, "")
	s.finishPolled()
}

// pollConn returns the session's pollConn.
func (s *session) pollConn() *pollConn { return s.netConn.(*pollConn) }

// readable runs on a poller's reader when the session's connection has
// become readable.
func (s *session) readable() {
	if s.sse != nil {
		s.streamReadable()
		return
	}
	s.readBurst()
}

// readBurst reads and handles the session's frames while any are at hand,
// then gives the connection back to the poller. It runs on a reader the
// poller started (holding one of Config.MaxReaders) or that startReading
// started.
func (s *session) readBurst() {
	for {
		if !s.awaitDrain() {
			s.endReading()
			return
		}
		s.netConn.SetReadDeadline(time.Now().Add(s.srv.cfg.FrameTimeout))
		typ, b, err := s.conn.Read(context.Background())
		if err != nil {
			s.readFailed(err)
			s.endReading()
			return
		}
		s.netConn.SetReadDeadline(time.Time{})
		if typ == websocket.MessageBinary {
			s.closeNow(closeUnsupported, "binary frames are not supported")
			s.endReading()
			return
		}
		s.pongDeadline.Store(0) // any frame shows the client is alive
		s.handle(b)
		more, closed := s.moreToRead()
		if closed {
			// The close handshake reads the connection now; the session is
			// done with.
			s.endReading()
			return
		}
		if !more {
			break
		}
	}
	s.rearm()
}

// endReading finishes the session from its reader, once.
func (s *session) endReading() {
	if s.poll.state.Swap(readerFinished) != readerFinished {
		s.finishPolled()
	}
}

// readerClosed runs when the session's connection closes: a session waiting
// in the poller is finished here, since no reader will come for it.
func (s *session) readerClosed() {
	if s.poll.state.CompareAndSwap(readerPolled, readerFinished) {
		s.srv.goroutines.Add(1)
		go func() {
			defer s.srv.goroutines.Done()
			s.finishPolled()
		}()
	}
}

// finishPolled does for a polled session what the end of readLoop does:
// it releases the session and ends its owner's count.
func (s *session) finishPolled() {
	defer s.srv.goroutines.Done()
	s.srv.poller.forget(s)
	s.finish()
}
