package gateway

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// An SSE stream over HTTP/1.x is taken over from net/http once its rooms are
// subscribed: the node hijacks the connection, writes the response head
// itself and delimits the body by closing the connection (an SSE body has no
// other end). net/http's per-connection buffers and its handler goroutine are
// then no longer held:
//
//   - Writes happen on a writer goroutine that runs only while frames are
//     queued, as for WebSocket (writeLoop), with a buffer from a pool.
//   - The client sends nothing after its request, so the only thing to read
//     is its going away. With the poller (plain TCP), the connection waits
//     in it with no goroutine: readable means the client closed (or sent
//     bytes it has no business sending), and the stream is closed. Without
//     it (TLS, Config.NoPoller, other systems), the handler goroutine waits
//     in a read for the same.
//
// An SSE stream over HTTP/2 cannot be hijacked; net/http serves it to the end
// (handleSSE's loop).

// sseStream is the writer's state of an SSE stream the node took over.
type sseStream struct {
	pos     cursor // the positions the stream's event ids encode
	started bool   // the first batch (with the welcome) is written
}

// streamWriters holds the buffers that render events of taken-over streams;
// a stream holds one only while its writer writes.
var streamWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

// writeStream writes a batch to a taken-over SSE stream. It returns the
// close frame if the batch ends the stream, or writeFailed.
func (s *session) writeStream(batch []*frame) *frame {
	if s.isClosed() {
		return nil
	}
	if !s.sse.started {
		s.sse.started = true
		welcomeFirst(batch)
	}
	s.netConn.SetWriteDeadline(s.srv.cfg.now().Add(s.srv.cfg.WriteTimeout))
	bw := streamWriters.Get().(*bufio.Writer)
	bw.Reset(s.netConn)
	end := s.writeSSE(bw, s.sse.pos, batch)
	err := bw.Flush()
	bw.Reset(nil)
	streamWriters.Put(bw)
	if err != nil {
		return writeFailed
	}
	if end {
		return batch[slices.IndexFunc(batch, func(f *frame) bool { return f.kind == kindClose })]
	}
	return nil
}

// writeStreamHead writes the response head of a taken-over SSE stream and
// the client's reconnection delay. h holds the headers set so far (CORS).
func (srv *Server) writeStreamHead(c net.Conn, h http.Header) error {
	setStreamHeaders(h)
	h.Set("Connection", "close")
	h.Set("Date", srv.cfg.now().UTC().Format(http.TimeFormat))
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 200 OK\r\n")
	h.Write(&b)
	b.WriteString("\r\n" + sseRetry)
	c.SetWriteDeadline(srv.cfg.now().Add(srv.cfg.WriteTimeout))
	_, err := c.Write(b.Bytes())
	c.SetWriteDeadline(time.Time{})
	return err
}

// closeStreamConn closes a taken-over stream's connection. Over TLS, after
// a failed write (broken) or to end a write in progress, it closes the
// connection under TLS: crypto/tls's Close first writes a close_notify alert,
// with a deadline of its own of 5 s, which a client that stopped reading
// holds for that long, and the session with it. A stream that ends cleanly
// (drain, an expired token) sends the alert, so that its client can tell the
// end from a cut.
func closeStreamConn(c net.Conn, broken bool) {
	if tc, ok := c.(*tls.Conn); ok && broken {
		tc.NetConn().Close()
		return
	}
	c.Close()
}

// setStreamHeaders sets the headers of every SSE answer: its type, and no
// caching or buffering on the way (X-Accel-Buffering: nginx's).
func setStreamHeaders(h http.Header) {
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
}

// sseRetry is the first line of every stream: the client's reconnection
// delay.
const sseRetry = "retry: 3000\n\n"

// pollStream gives a taken-over stream's connection to the poller, which
// then owns the session: it finishes it when the connection closes. pc wraps
// tcp and is the session's netConn.
func (s *session) pollStream(tcp *net.TCPConn, pc *pollConn) {
	ps := &pollState{tcp: tcp}
	s.poll = ps
	// As in startReading: running until it is placed.
	ps.state.Store(readerRunning)
	f := s.readerClosed
	s.srv.poller.add(s)
	pc.onClose.Store(&f)
	s.place()
}

// streamReadable runs on a poller's reader when a taken-over stream's
// connection becomes readable: the client went away, or sent bytes, which
// an SSE client never does after its request. Either ends the stream.
func (s *session) streamReadable() {
	var b [64]byte
	s.poll.tcp.SetReadDeadline(time.Now().Add(time.Second))
	n, err := s.poll.tcp.Read(b[:])
	if ne, ok := err.(net.Error); ok && n == 0 && ne.Timeout() {
		// Nothing after all: back to the poller.
		s.poll.tcp.SetReadDeadline(time.Time{})
		s.rearm()
		return
	}
	if n > 0 {
		s.srv.log.Debug("sse client sent bytes after its request; closing the stream", "session", s.id)
	}
	s.closeNow(closeNormal, "")
	s.endReading()
}

// awaitStreamEnd waits, on the handler goroutine, until the client of a
// taken-over stream that no poller watches goes away (or sends bytes), or
// the stream is closed.
func awaitStreamEnd(c net.Conn) {
	var b [64]byte
	for {
		n, err := c.Read(b[:])
		if n > 0 || err != nil {
			return
		}
	}
}
