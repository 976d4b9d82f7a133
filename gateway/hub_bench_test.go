package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// discardConn is the server side of a WebSocket connection whose client
// takes everything at once: writes succeed without a syscall and are counted,
// reads block until Close. It stands in for the kernel socket so that a
// benchmark measures the gateway, not TCP.
type discardConn struct {
	sink   *writeSink
	closed chan struct{}
	once   sync.Once
}

// writeSink counts writes across connections and says when a target count is
// reached.
type writeSink struct {
	writes atomic.Int64
	target atomic.Int64
	done   chan struct{} // one signal per target reached
}

func (c *discardConn) Write(p []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	if c.sink.writes.Add(1) == c.sink.target.Load() {
		c.sink.done <- struct{}{}
	}
	return len(p), nil
}

func (c *discardConn) Read(p []byte) (int, error) {
	<-c.closed
	return 0, net.ErrClosed
}

func (c *discardConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

var benchAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}

func (c *discardConn) LocalAddr() net.Addr                { return benchAddr }
func (c *discardConn) RemoteAddr() net.Addr               { return benchAddr }
func (c *discardConn) SetDeadline(t time.Time) error      { return nil }
func (c *discardConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *discardConn) SetWriteDeadline(t time.Time) error { return nil }

// hijackable is a ResponseWriter whose Hijack hands over a discardConn, so
// that websocket.Accept runs as it does behind net/http.
type hijackable struct {
	http.ResponseWriter
	conn net.Conn
}

func (h *hijackable) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return h.conn, bufio.NewReadWriter(bufio.NewReader(h.conn), bufio.NewWriter(h.conn)), nil
}

// newBenchSession builds a WebSocket session the way handleWS does, over a
// discardConn, and registers it with srv. No reader goroutine runs: the
// benchmark owns the session.
func newBenchSession(b *testing.B, srv *Server, sink *writeSink) *session {
	b.Helper()
	req := httptest.NewRequest(http.MethodGet, "/v1/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	req.Header.Set("Sec-WebSocket-Protocol", Subprotocol)
	hw := srv.newHijackWriter(&hijackable{ResponseWriter: httptest.NewRecorder(), conn: &discardConn{sink: sink, closed: make(chan struct{})}})
	conn, err := websocket.Accept(hw, req, &websocket.AcceptOptions{Subprotocols: []string{Subprotocol}, CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		b.Fatalf("Accept: %v", err)
	}
	s := newSession(srv, identity{user: "bench"}, transportWS, "127.0.0.1")
	s.conn, s.netConn, s.wire = conn, hw.conn, &hw.wire
	if !srv.register(s) {
		b.Fatalf("register refused")
	}
	return s
}

// expect arms the sink to signal once n more writes than now have happened;
// call it before what causes the writes, then wait.
func (sink *writeSink) expect(n int64) {
	sink.target.Store(sink.writes.Load() + n)
}

func (sink *writeSink) wait(b *testing.B) {
	select {
	case <-sink.done:
	case <-time.After(30 * time.Second):
		b.Fatalf("timed out at %d writes, want %d", sink.writes.Load(), sink.target.Load())
	}
}

// BenchmarkHubFanout publishes one message at a time on a Memory bus to a
// room with 10,000 local WebSocket sessions and waits until every session's
// writer has written it. Per delivery it reports the whole path (bus publish,
// hub fan-out, each session's queue, its writer goroutine, WebSocket framing
// and a write into a connection that discards), the part spent in Publish
// (encode once, queue to every session), and the allocations of all
// goroutines. Writers are warm: messages come faster than a writer's linger,
// so none has to be started again. docs/BENCHMARKS.md says what this leaves
// out.
func BenchmarkHubFanout(b *testing.B) {
	const sessions = 10000
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	defer bus.Close()
	srv, err := New(Config{Bus: bus, NodeID: "bench", PingInterval: time.Hour, DrainTimeout: time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	ctx := context.Background()
	sink := &writeSink{done: make(chan struct{}, 1)}
	sink.expect(sessions) // the subscribe acks

	all := make([]*session, sessions)
	for i := range all {
		s := newBenchSession(b, srv, sink)
		perr := srv.hub.subscribe(ctx, s, "bench", nil, false, func(res subscribeResult) *frame {
			off, rec := res.top.Offset, res.recovered
			return &frame{kind: kindAck, room: "bench", epoch: res.cursor.Epoch, offset: res.cursor.Offset,
				b: mustJSON(ackFrame{Type: "ack", ID: strconv.Itoa(i), Epoch: res.top.Epoch, Offset: &off, Recovered: &rec})}
		})
		if perr != nil {
			b.Fatalf("subscribe: %v", perr)
		}
		all[i] = s
	}
	defer func() {
		for _, s := range all {
			s.conn.CloseNow()
			s.closeNow(closeNormal, "")
			s.finish()
			srv.goroutines.Done() // register counted the benchmark as the session's owner
		}
	}()
	sink.wait(b)

	payload := json.RawMessage(`{"text":"hello, ten thousand sessions","user":"bench","n":12345}`)
	publish := func() time.Duration {
		sink.expect(sessions)
		t0 := time.Now()
		if _, err := bus.Publish(ctx, "bench", fanout.Publication{Data: payload, From: "bench"}); err != nil {
			b.Fatal(err)
		}
		d := time.Since(t0)
		sink.wait(b)
		return d
	}
	// Warm up: writers that exited while the sessions were set up start
	// again, and each session's queue reaches its steady pair of slices.
	publish()
	publish()

	var inPublish time.Duration
	var before, after runtime.MemStats
	runtime.GC()
	b.ResetTimer()
	runtime.ReadMemStats(&before)
	for range b.N {
		inPublish += publish()
	}
	runtime.ReadMemStats(&after)
	b.StopTimer()

	deliveries := float64(b.N) * sessions
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/deliveries, "ns/delivery")
	b.ReportMetric(float64(inPublish.Nanoseconds())/deliveries, "publish-ns/delivery")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/deliveries, "allocs/delivery")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/deliveries, "B/delivery")
}

func BenchmarkDecodeClientFrame(b *testing.B) {
	in := []byte(`{"type":"publish","id":"42","room":"chat:lobby","data":{"text":"hello","n":1},"key":"k-42"}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for range b.N {
		if _, perr := decodeClientFrame(in); perr != nil {
			b.Fatal(perr)
		}
	}
}

func BenchmarkEncodeMessage(b *testing.B) {
	m := &fanout.Message{Room: "chat:lobby", Offset: 123456, Epoch: "f3Jc0yq5m1xD", Data: json.RawMessage(`{"text":"hello","n":1}`), From: "alice", Time: time.Now().UnixNano()}
	b.ReportAllocs()
	for range b.N {
		if _, _, err := encodeMessage(m); err != nil {
			b.Fatal(err)
		}
	}
}
