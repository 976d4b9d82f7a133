package gateway

import (
	"crypto/tls"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"
)

// frameKind says how a transport renders a queued frame.
type frameKind uint8

const (
	kindMessage   frameKind = iota // a room message; SSE renders it as an event
	kindControl                    // welcome, ack, presence: WebSocket only (SSE: its welcome)
	kindError                      // an error frame: SSE sends it as `event: error`
	kindAck                        // a subscribe ack: WebSocket sends it, SSE moves its cursor
	kindPing                       // heartbeat
	kindReconnect                  // drain notice
	kindClose                      // not sent: the writer closes the session after what precedes it
)

// frame is encoded bytes plus what a transport needs to know about them. A
// message frame is built once per node and shared by every session.
type frame struct {
	b []byte
	// wire, when set, is b as one WebSocket text frame, header included,
	// ready for the connection; b is its tail (wire.go).
	wire   []byte
	kind   frameKind
	room   string
	epoch  string
	offset uint64
	time   int64 // message: when the bus accepted it (Unix ns)
	// close frames
	code   websocket.StatusCode
	reason string
}

var pingFrame = newWireFrame(kindPing, pingFrameBytes)

type transportKind uint8

const (
	transportWS transportKind = iota
	transportSSE
)

func (t transportKind) String() string {
	if t == transportSSE {
		return "sse"
	}
	return "ws"
}

// session is one client connection. Its reader goroutine (the SSE handler for
// SSE) owns rooms, the limiters and ident.perms (a refresh replaces them); the
// queue is shared with the hub under mu. ident.user never changes.
type session struct {
	srv       *Server
	id        string
	ident     identity
	transport transportKind
	ip        string

	conn *websocket.Conn // WebSocket only
	// wire writes the frames of a WebSocket session (wire.go).
	wire *wsWire
	// netConn is the session's connection: WebSocket, and an SSE stream
	// the node took over from net/http (sse set); nil for an SSE stream
	// that net/http still serves (HTTP/2).
	netConn net.Conn
	// poll is the poller's state of a session it serves; nil for one with
	// a reader goroutine of its own.
	poll *pollState
	// sse is the writer's state of an SSE stream the node took over from
	// net/http; it is set, under mu, once the stream's head is written.
	sse *sseStream

	wake    chan struct{} // capacity 1: frames are waiting
	drained chan struct{} // capacity 1: the writer took the queue
	done    chan struct{} // closed when the session is closed

	mu        sync.Mutex
	queue     []*frame
	spare     []*frame
	queued    int // bytes of live frames in queue
	replies   int // bytes of replies in queue
	replaying int // bytes of replay in queue
	writing   bool
	closed    bool
	leaving   bool // leave has queued a reconnect notice and the close after it
	// abort, for SSE, ends a write in progress (set before register).
	abort func()
	// closeCode and closeReason say why the node closed the session, for
	// the log line its owner writes when it finishes.
	closeCode   websocket.StatusCode
	closeReason string

	rooms   map[string]*member
	limiter *rate.Limiter
	// refreshes bounds the refresh commands, each a signature check.
	refreshes *rate.Limiter

	// subOps counts subscribes and unsubscribes since the last heartbeat
	// tick, which resets it: churn is bounded without a limiter per session.
	subOps atomic.Int32

	lastWrite    atomic.Int64 // Unix ns of the last write
	pongDeadline atomic.Int64 // Unix ns; zero when no ping is outstanding
	pingShift    int64        // jitter of the first ping, owned by the heartbeat loop
	// expires is when the session's token stops being accepted, leeway
	// included (Unix ns; 0: never, or already expired). A refresh replaces
	// it; the heartbeat loop swaps it to 0 when it passes and ends the
	// session, so the two never both win.
	expires atomic.Int64
}

func newSession(srv *Server, ident identity, t transportKind, ip string) *session {
	s := &session{
		srv:       srv,
		id:        randomID(8),
		ident:     ident,
		transport: t,
		ip:        ip,
		wake:      make(chan struct{}, 1),
		drained:   make(chan struct{}, 1),
		done:      make(chan struct{}),
	}
	now := srv.cfg.now().UnixNano()
	s.lastWrite.Store(now)
	s.pingShift = rand.Int64N(int64(srv.cfg.PingInterval)/2 + 1)
	s.expires.Store(ident.expires)
	return s
}

// queueClass says which bound a queued frame counts against.
type queueClass uint8

const (
	// classLive frames (room messages, presence events, heartbeats, drain
	// notices) count against Config.QueueLimit: past it the session is a
	// slow consumer and is closed.
	classLive queueClass = iota
	// classReply frames answer the client's own commands. They never close
	// a session: while more than maxPendingReplies bytes of them are unsent,
	// the reader reads no further command (see awaitDrain), so a client that
	// does not read its replies is simply not served more.
	classReply
	// classReplay frames are history replayed by a subscribe and the live
	// frames held while it was read: their bytes are shared with every other
	// reader, and at most Config.ReplayLimit of them are unsent before the
	// reader waits.
	classReplay
)

// maxPendingReplies bounds the unsent reply bytes after which a session's
// reader waits for its writer before reading another command.
const maxPendingReplies = 64 << 10

// enqueue queues a live frame for the client without blocking. It reports
// false when the session is closed, or closes it as a slow consumer when the
// queue passes its bound.
func (s *session) enqueue(f *frame) bool {
	return s.push(f, classLive)
}

// reply queues the answer to a client's command; it never closes the session.
func (s *session) reply(f *frame) bool {
	return s.push(f, classReply)
}

// enqueueReplay queues a frame of a subscription's replay (history and the
// frames held while it was read). Replay does not count against the queue
// bound, so a client that resumes after a busy spell is not closed every time
// it tries; the replay budget bounds it instead.
func (s *session) enqueueReplay(f *frame) bool {
	return s.push(f, classReplay)
}

func (s *session) push(f *frame, class queueClass) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	s.queue = append(s.queue, f)
	switch {
	case f.kind == kindClose:
	case class == classReply:
		s.replies += len(f.b)
	case class == classReplay:
		s.replaying += len(f.b)
	default:
		s.queued += len(f.b)
		if s.queued > s.srv.cfg.QueueLimit {
			s.mu.Unlock()
			// No logging here: the hub calls push with a room locked. The
			// session's owner logs the close when it finishes.
			s.srv.metrics.slowConsumers.Inc()
			s.closeNow(closeSlowConsumer, "slow consumer")
			return false
		}
	}
	if (s.transport == transportWS || s.sse != nil) && !s.writing {
		s.writing = true
		s.mu.Unlock()
		s.srv.goroutines.Add(1)
		go s.writeLoop()
		return true
	}
	s.mu.Unlock()
	s.wakeUp()
	return true
}

// wakeUp tells whoever waits on s.wake (the session's lingering writer, or
// the handler of an SSE stream that net/http serves) to look at the session
// again. Waiters take a wake as a hint: it may find nothing new.
func (s *session) wakeUp() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pendingReplay returns the bytes of replay queued and not yet taken by the
// writer.
func (s *session) pendingReplay() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.replaying
}

// kick starts the writer for what is queued, if it is not running.
func (s *session) kick() {
	s.mu.Lock()
	if len(s.queue) == 0 || s.writing || s.closed {
		s.mu.Unlock()
		return
	}
	s.writing = true
	s.mu.Unlock()
	s.srv.goroutines.Add(1)
	go s.writeLoop()
}

// take removes every queued frame; the caller hands the slice back with
// release when written.
func (s *session) take() []*frame {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return nil
	}
	batch := s.queue
	s.queue, s.spare = s.spare[:0], nil
	s.queued, s.replies, s.replaying = 0, 0, 0
	select {
	case s.drained <- struct{}{}:
	default:
	}
	return batch
}

// awaitDrain waits until the session's unsent replies are within their bound
// and the writer has taken every replayed frame (so that the next replay
// counts alone against Config.ReplayLimit); it reports false if the session
// closed meanwhile. The reader
// calls it before reading a command, so a client that reads nothing stops
// being read (TCP pushes back on it) instead of growing the node's memory.
func (s *session) awaitDrain() bool {
	for {
		s.mu.Lock()
		over := s.replies > maxPendingReplies || s.replaying > 0
		closed := s.closed
		s.mu.Unlock()
		if closed {
			return false
		}
		if !over {
			return true
		}
		select {
		case <-s.drained:
		case <-s.done:
			return false
		}
	}
}

func (s *session) release(batch []*frame) {
	clear(batch)
	s.mu.Lock()
	if s.spare == nil && cap(batch) <= 1024 {
		s.spare = batch[:0]
	}
	s.mu.Unlock()
}

// closeNow drops whatever is queued and closes the session with code.
func (s *session) closeNow(code websocket.StatusCode, reason string) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.closeCode, s.closeReason = code, reason
	clear(s.queue)
	s.queue, s.queued, s.replies, s.replaying = nil, 0, 0, 0
	s.mu.Unlock()
	close(s.done)
	s.wakeUp()
	if s.abort != nil {
		s.abort()
	}
	if s.conn != nil {
		s.srv.goroutines.Add(1)
		go func() {
			defer s.srv.goroutines.Done()
			s.conn.Close(code, reason)
		}()
	}
}

// closeAfterFlush closes the session with code once what is queued now has
// been written.
func (s *session) closeAfterFlush(code websocket.StatusCode, reason string) {
	s.enqueue(&frame{kind: kindClose, code: code, reason: reason})
}

// leave tells the client to reconnect after about after and resume (a
// reconnect frame with reason), then closes the session as a drain does, once
// the notice is written: 1012 on WebSocket, the end of the stream on SSE. Only
// the first call does anything. Like drain's notice, the frame is no live
// frame: a session near its queue bound is still told.
func (s *session) leave(after time.Duration, reason string) {
	s.mu.Lock()
	told := s.leaving
	s.leaving = true
	s.mu.Unlock()
	if told {
		return
	}
	s.push(&frame{b: mustJSON(reconnectFrame{Type: "reconnect", AfterMS: after.Milliseconds(), Reason: reason}), kind: kindReconnect}, classReply)
	s.closeAfterFlush(closeDraining, reason)
}

// isClosed reports whether the session has been closed.
func (s *session) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// writeLoop drains the queue of a WebSocket session (batching a backlog into
// newline-separated frames) or of an SSE stream the node took over, and
// exits after writerLinger without work.
func (s *session) writeLoop() {
	defer s.srv.goroutines.Done()
	heartbeat := false // the last batch was heartbeat pings alone
	idle := lingering{tick: s.srv.ticks.Load()}
	for {
		batch := s.take()
		if batch == nil {
			if !s.linger(heartbeat, &idle) {
				return
			}
			continue
		}
		heartbeat = !slices.ContainsFunc(batch, func(f *frame) bool { return f.kind != kindPing })
		var closing *frame
		if s.sse != nil {
			closing = s.writeStream(batch)
		} else {
			closing = s.writeWS(batch)
		}
		s.release(batch)
		s.clearTLSDeadline()
		idle = lingering{tick: s.srv.ticks.Load()}
		if closing != nil {
			s.mu.Lock()
			already := s.closed
			s.closed = true
			if !already {
				s.closeCode, s.closeReason = closing.code, closing.reason
			}
			s.writing = false
			s.mu.Unlock()
			if !already {
				close(s.done)
				if s.conn != nil {
					s.conn.Close(closing.code, closing.reason)
				} else {
					closeStreamConn(s.netConn, closing == writeFailed)
				}
			}
			return
		}
	}
}

// lingering is what a writer without work counts: the heartbeat ticks it
// has seen pass since its last write.
type lingering struct {
	tick  uint64 // srv.ticks when the count last moved
	ticks int
}

// linger waits for more frames for one to two heartbeat ticks (the shared
// clock of every session, so no session holds a timer); it reports false when
// the writer should exit. A busy session keeps its writer goroutine, an idle
// one holds none. After a heartbeat ping alone it does not wait: the session
// is idle, and at 20,000 connections the writers lingering after their pings
// were some 1,500 goroutines.
//
// The writer waits on s.wake alone, the cheapest wait there is: a push wakes
// it, and so do closeNow and the heartbeat loop at every tick. A wake is only
// a hint, so linger returns to look at the queue after each one, and idle
// carries the count of ticks from one call to the next.
func (s *session) linger(heartbeat bool, idle *lingering) bool {
	if !heartbeat && !s.isClosed() {
		if t := s.srv.ticks.Load(); t != idle.tick {
			idle.tick = t
			idle.ticks++
		}
		if idle.ticks < 2 {
			<-s.wake
			return true
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) > 0 && !s.closed {
		return true
	}
	s.writing = false
	return false
}

// clearTLSDeadline lifts the write deadline of a connection over TLS once
// a batch is written: crypto/tls writes from inside a Read too (its answer
// to a client's key update), outside the session's writer, and a deadline
// that passed while the connection was quiet would fail that write and,
// with it, the connection. Over plain TCP only the writer writes, and the
// wire re-arms a stale deadline before it does.
func (s *session) clearTLSDeadline() {
	if _, ok := s.netConn.(*tls.Conn); !ok {
		return
	}
	if s.wire != nil {
		s.wire.clearDeadline()
	} else {
		s.netConn.SetWriteDeadline(time.Time{})
	}
}

// maxBatch bounds the bytes joined into one outgoing frame.
const maxBatch = 64 << 10

// writeFailed is what writeWS returns when a write failed.
var writeFailed = &frame{kind: kindClose, code: closeInternal, reason: "write failed"}

// batchPool holds the buffers that frame queued frames as one WebSocket
// message; a session holds one only while it writes.
var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// writeWS writes a batch as few text frames as the size bound allows, each
// one WebSocket frame of newline-separated frames. It returns the close frame
// if the batch ends the session (or a write failed). The session's wire
// bounds each write with its deadline.
func (s *session) writeWS(batch []*frame) *frame {
	if s.isClosed() {
		return nil
	}
	now := s.srv.cfg.now()
	var (
		start    int // first frame of the message being gathered
		size     int
		messages int
		oldest   int64
	)
	for i, f := range batch {
		if f.kind == kindClose {
			if err := s.writeMessage(batch[start:i], size, now); err != nil {
				return writeFailed
			}
			s.wrote(now, messages, oldest)
			return f
		}
		if i > start && size+1+len(f.b) > maxBatch {
			if err := s.writeMessage(batch[start:i], size, now); err != nil {
				return writeFailed
			}
			start, size = i, 0
		}
		if i > start {
			size++ // the newline
		}
		size += len(f.b)
		if f.kind == kindMessage {
			messages++
			if oldest == 0 || f.time < oldest {
				oldest = f.time
			}
		}
	}
	if err := s.writeMessage(batch[start:], size, now); err != nil {
		return writeFailed
	}
	s.wrote(now, messages, oldest)
	return nil
}

// writeMessage writes frames, whose bytes joined by newlines are size
// bytes, as one WebSocket text frame. A frame alone whose WebSocket frame is
// built (a room message, shared by every session that gets it) is written as
// it is; anything else is framed in a pooled buffer.
func (s *session) writeMessage(frames []*frame, size int, now time.Time) error {
	switch len(frames) {
	case 0:
		return nil
	case 1:
		if w := frames[0].wire; w != nil {
			return s.wire.writeFrame(w, now)
		}
	}
	bp := batchPool.Get().(*[]byte)
	buf := appendWSHeader((*bp)[:0], size)
	for i, f := range frames {
		if i > 0 {
			buf = append(buf, '\n')
		}
		buf = append(buf, f.b...)
	}
	err := s.wire.writeFrame(buf, now)
	if cap(buf) <= 2*maxBatch {
		*bp = buf[:0]
		batchPool.Put(bp)
	}
	return err
}

// wrote records a finished write for heartbeats and metrics.
func (s *session) wrote(now time.Time, messages int, oldest int64) {
	s.lastWrite.Store(now.UnixNano())
	if messages > 0 {
		s.srv.metrics.out[s.transport].Add(float64(messages))
		if oldest > 0 {
			s.srv.metrics.deliveryLatency.Observe(float64(now.UnixNano()-oldest) / 1e9)
		}
	}
}
