package gateway

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"time"
)

// The write side of a WebSocket session.
//
// A frame from server to client is not masked, so a room message's frame on
// the wire (header and payload) is the same for every session that gets it.
// The hub builds it once per message on the node (frame.wire), and a
// session's writer hands those bytes to the connection as they are: no copy,
// no framing, no allocation per recipient. A batch of several queued frames
// goes out as one text frame whose payload joins them with newlines, framed
// in a pooled buffer.
//
// coder/websocket still writes the frames it owns on the same connection:
// the pong that answers a client's ping (from the reader, inside Read), and
// the close frame of Close or of a protocol error. Its writes and the
// session's must never interleave on the wire. Both go through one wsWire,
// under its mutex, and each of coder/websocket's frames reaches it as one
// whole Write. This rests on coder/websocket v1.8 (write.go, frame.go),
// checked against its source:
//
//   - A server's Conn writes only through the bufio.Writer that Hijack gave
//     it; hijackWriter makes that writer one over the wsWire, smallBuf bytes
//     large.
//   - Conn.writeFrame, under Conn.writeFrameMu, puts the header and the
//     payload of one frame in that writer and flushes it when the frame is
//     final (fin). A control frame is always final, and is at most 2 header
//     bytes and 125 payload bytes (a server does not mask), so it fits the
//     empty buffer whole and the flush is a single Write.
//   - The buffer is empty when writeFrame starts: every earlier frame was
//     flushed, or its flush failed, and a bufio.Writer that failed once
//     fails every later Write and Flush without writing.
//   - The gateway gives coder/websocket no data frame to write while the
//     session's writer may write (only the refusal of a handshake whose
//     authentication failed is written with Conn.Write, before any session
//     exists), so each of its Writes starts with a frame header.
//   - coder/websocket bounds its own writes with a context (AfterFunc closes
//     the connection) and never sets a deadline on the connection: the write
//     deadline is the wsWire's alone.
//
// Write deadlines: every write, the session's and coder/websocket's, goes
// through the wsWire, which arms the connection's write deadline before
// writing whenever less than nine tenths of Config.WriteTimeout is left of
// it. So a write has between nine tenths and all of WriteTimeout to finish,
// a connection with a steady stream of writes pays one SetWriteDeadline per
// tenth of WriteTimeout instead of two per batch, and no write ever starts
// under a deadline that has passed. The deadline is kept as a time.Time and
// compared on the monotonic clock, as the connection enforces it: a step of
// the wall clock neither stops the re-arming nor starts a write under an
// expired deadline. Over TLS the session clears the deadline after each
// batch (session.clearTLSDeadline), as crypto/tls also writes from inside a
// Read, outside the wire.

// errCloseSent is what a session's write returns once the close frame has
// gone out: nothing may follow it on a WebSocket.
var errCloseSent = errors.New("gateway: websocket close frame sent")

// opClose is the opcode of a WebSocket close frame (RFC 6455, section 5.2).
const opClose = 0x8

// wsWire serializes the writes of a WebSocket connection and keeps its write
// deadline. coder/websocket writes to it as an io.Writer (Write), the
// session's writer with writeFrame.
type wsWire struct {
	mu      sync.Mutex
	conn    net.Conn // the hijacked connection
	timeout time.Duration
	now     func() time.Time
	// deadline is the write deadline armed on conn (zero: none).
	deadline time.Time
	// err is the first failed write's error: the frame it wrote may be cut
	// short, so nothing more is written after it.
	err error
	// closeSent is set once coder/websocket has written a close frame.
	closeSent bool
}

// Write writes one of coder/websocket's frames: a flush of its bufio.Writer,
// which is one whole frame (see above).
func (w *wsWire) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(p) > 0 && p[0]&0x0f == opClose {
		w.closeSent = true
	}
	return w.write(p, w.now())
}

// writeFrame writes p, one or more whole WebSocket frames of the session's.
// now is the caller's reading of the clock, for the deadline.
func (w *wsWire) writeFrame(p []byte, now time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closeSent {
		return errCloseSent
	}
	_, err := w.write(p, now)
	return err
}

// write arms the deadline if it is stale and writes p. w.mu is held.
func (w *wsWire) write(p []byte, now time.Time) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.deadline.IsZero() || w.deadline.Sub(now) < w.timeout-w.timeout/10 {
		d := now.Add(w.timeout)
		if err := w.conn.SetWriteDeadline(d); err != nil {
			w.err = err
			return 0, err
		}
		w.deadline = d
	}
	n, err := w.conn.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

// clearDeadline lifts the write deadline.
func (w *wsWire) clearDeadline() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.deadline.IsZero() || w.err != nil {
		return
	}
	if err := w.conn.SetWriteDeadline(time.Time{}); err == nil {
		w.deadline = time.Time{}
	}
}

// maxWSHeader is the longest header of an unmasked WebSocket frame.
const maxWSHeader = 10

// appendWSHeader appends the header of a final, unmasked text frame with a
// payload of n bytes.
func appendWSHeader(b []byte, n int) []byte {
	const finText = 0x80 | 0x1
	switch {
	case n <= 125:
		return append(b, finText, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, finText, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, finText, 127), uint64(n))
	}
}

// wsTextFrame returns p as one final, unmasked WebSocket text frame, in a new
// slice whose tail is a copy of p.
func wsTextFrame(p []byte) []byte {
	var h [maxWSHeader]byte
	hdr := appendWSHeader(h[:0], len(p))
	return append(append(make([]byte, 0, len(hdr)+len(p)), hdr...), p...)
}

// newWireFrame returns a frame of kind with b, whose WebSocket frame is
// built now; b is the tail of it.
func newWireFrame(kind frameKind, b []byte) *frame {
	wire := wsTextFrame(b)
	return &frame{kind: kind, wire: wire, b: wire[len(wire)-len(b):]}
}
