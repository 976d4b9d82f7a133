package gateway

// Review of the raw WebSocket write path (wire.go, 227e5ae): each test
// states the property it checks on real connections.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// reviewPublish publishes data to room on the test server's bus.
func reviewPublish(t testing.TB, ts *testServer, room, data string) {
	t.Helper()
	if _, err := ts.bus.Publish(context.Background(), room, fanout.Publication{Data: json.RawMessage(data)}); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// wallStepped returns now with its wall-clock reading moved by d and its
// monotonic reading kept: what time.Now returns after the system's wall
// clock is stepped by d (settimeofday, an NTP step, a VM resumed), which
// moves the wall clock and not the monotonic one. No API makes such a
// time.Time, so this copies the monotonic reading of now into now.Add(d)
// through the layout of time.Time (wall, ext, loc); ok reports whether the
// result is what it should be.
func wallStepped(now time.Time, d time.Duration) (stepped time.Time, ok bool) {
	type layout struct {
		wall uint64
		ext  int64
		loc  unsafe.Pointer
	}
	s := now.Add(d)
	(*layout)(unsafe.Pointer(&s)).ext = (*layout)(unsafe.Pointer(&now)).ext
	return s, s.Sub(now) == 0 && s.UnixNano()-now.UnixNano() == int64(d)
}

// The node's wall clock steps back an hour (an NTP step, a VM resumed):
// sessions must go on as before. time.Now keeps a monotonic reading, and the
// connection's write deadline runs on it, so the step does not move the
// deadline the wire armed. But wsWire keeps that deadline as wall-clock
// nanoseconds (UnixNano) and compares the wall clock with it: after the
// step it believes an hour and WriteTimeout are left, re-arms nothing, and
// the next write that comes WriteTimeout after the last arming (a heartbeat
// ping at the latest) starts under a deadline that has passed, fails at
// once, and the session is closed with 1011 "write failed". On a node, every
// WebSocket session goes that way within a heartbeat interval of the step,
// and all their clients reconnect at once. Before 227e5ae each batch armed
// now.Add(WriteTimeout) and time.Until read it on the monotonic clock.
func TestWireReviewClockStepBack(t *testing.T) {
	const timeout = 300 * time.Millisecond
	if _, ok := wallStepped(time.Now(), -time.Hour); !ok {
		t.Fatal("wallStepped: time.Time's layout changed")
	}
	var stepped atomic.Bool
	ts := startServer(t, func(c *Config) {
		c.WriteTimeout = timeout
		c.now = func() time.Time {
			now := time.Now()
			if stepped.Load() {
				now, _ = wallStepped(now, -time.Hour)
			}
			return now
		}
	})
	w, _ := confDial(t, ts, nil)
	confSubscribe(w, "s", "review:clock", false)
	s := onlySession(t, ts)
	stepped.Store(true)
	time.Sleep(timeout + 100*time.Millisecond) // past the deadline armed for the ack
	reviewPublish(t, ts, "review:clock", `"after the step"`)
	m, err := w.nextErr(3 * time.Second)
	if err != nil {
		s.mu.Lock()
		code, reason := s.closeCode, s.closeReason
		s.mu.Unlock()
		t.Fatalf("after the wall clock stepped back: read: %v (the node closed the session with %d %q), want the message", err, code, reason)
	}
	if m["type"] != "message" || m["data"] != "after the step" {
		t.Fatalf("got %v, want the message", m)
	}
}

// reviewTLSServer is a gateway served with ServeTLS, with mod applied to its
// config.
func reviewTLSServer(t *testing.T, mod func(*Config)) (*testServer, *tls.Config) {
	t.Helper()
	cert, pool := testCert(t)
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	cfg := Config{Bus: bus, NodeID: "test-node", DrainTimeout: 200 * time.Millisecond, APIKey: testAPIKey}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() {
		served <- srv.ServeTLS(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if !srv.draining.Load() {
			srv.Shutdown(ctx)
		}
		<-served
		bus.Close()
	})
	url := "https://" + ln.Addr().String()
	return &testServer{srv: srv, bus: bus, url: url, ws: "wss://" + ln.Addr().String() + "/v1/ws"}, &tls.Config{RootCAs: pool}
}

// dialWSTLS dials a WebSocket over TLS.
func dialWSTLS(t *testing.T, ts *testServer, conf *tls.Config) *wsConn {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: conf}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, ts.ws, &websocket.DialOptions{Subprotocols: []string{Subprotocol}, HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.SetReadLimit(8 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return &wsConn{t: t, c: c}
}

// Over TLS (a *tls.Conn under the wire, a reader goroutine per session), a
// client that pings without pause gets every frame of a fast room whole, in
// order, frames of every length encoding, batches included.
func TestWireReviewTLSPingsAndFrames(t *testing.T) {
	ts, conf := reviewTLSServer(t, nil)
	w := dialWSTLS(t, ts, conf)
	w.expect("welcome")
	confSubscribe(w, "s", "review:tls", false)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stop := make(chan struct{})
	pinged := make(chan error, 1)
	var pongs atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				pinged <- nil
				return
			default:
			}
			if err := w.c.Ping(ctx); err != nil {
				pinged <- err
				return
			}
			pongs.Add(1)
		}
	}()
	const n = 600
	// The publisher stays at most 32 messages ahead of the reader: the test
	// is about framing, not about the session's queue bound, which a
	// publisher racing a reader of 70 KB frames over TLS could reach.
	var read atomic.Uint64
	go func() {
		for i := uint64(1); i <= n; i++ {
			for i > read.Load()+32 && ctx.Err() == nil {
				time.Sleep(time.Millisecond)
			}
			if _, err := ts.bus.Publish(ctx, "review:tls", fanout.Publication{Data: json.RawMessage(wireData(i))}); err != nil {
				return
			}
		}
	}()
	var got uint64
	defer func() { read.Store(n) }()
	for got < n {
		_, b, err := w.c.Read(ctx)
		if err != nil {
			t.Fatalf("read after %d messages: %v", got, err)
		}
		for line := range bytes.SplitSeq(b, []byte("\n")) {
			var m wireMessage
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatalf("after %d messages: %d bytes that are not a frame: %.80q", got, len(line), line)
			}
			got++
			if m.Offset != got || string(m.Data) != wireData(got) {
				t.Fatalf("got offset %d with %d bytes, want offset %d with %d", m.Offset, len(m.Data), got, len(wireData(got)))
			}
		}
		read.Store(got)
	}
	close(stop)
	go w.c.Read(ctx) // takes in the last pong
	if err := <-pinged; err != nil {
		t.Fatalf("ping: %v", err)
	}
	t.Logf("%d messages, %d pongs", got, pongs.Load())
}

// A connection left idle past WriteTimeout keeps a deadline that has
// passed: the pong coder/websocket writes for a client's ping, a message
// after it, and the close frame of a drain must all still go out.
func TestWireReviewIdlePastDeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	ts := startServer(t, func(c *Config) { c.WriteTimeout = timeout })
	w, _ := confDial(t, ts, nil)
	confSubscribe(w, "s", "review:idle", false)
	time.Sleep(2 * timeout) // the armed deadline passes while idle

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pinged := make(chan error, 1)
	go func() { pinged <- w.c.Ping(ctx) }()
	// The client takes in the pong inside a read: messages keep it reading
	// until the ping is answered.
	for i := 0; ; i++ {
		reviewPublish(t, ts, "review:idle", fmt.Sprintf(`"m%d"`, i))
		if m := w.next(); m["type"] != "message" || m["data"] != fmt.Sprintf("m%d", i) {
			t.Fatalf("got %v, want message m%d", m, i)
		}
		var done bool
		select {
		case err := <-pinged:
			if err != nil {
				t.Fatalf("ping after idling past the deadline: %v", err)
			}
			done = true
		case <-time.After(20 * time.Millisecond):
		}
		if done {
			break
		}
		if i == 50 {
			t.Fatal("no pong after 50 messages")
		}
	}
	time.Sleep(2 * timeout)
	shut := make(chan error, 1)
	go func() { shut <- ts.srv.Shutdown(context.Background()) }()
	if m := w.next(); m["type"] != "reconnect" {
		t.Fatalf("got %v, want the reconnect notice", m)
	}
	if got := w.closeStatus(); got != closeDraining {
		t.Fatalf("close: got %v, want %v", got, closeDraining)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// Messages published at random moments to a session whose writer comes and
// goes (the heartbeat tick is 10ms, so a writer lingers 10 to 20ms): none is
// left in the queue by a writer that decided to exit.
func TestWireReviewNoLostWakeups(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.PingInterval = 40 * time.Millisecond; c.PongTimeout = 5 * time.Second })
	const clients, n = 4, 150
	ws := make([]*wsConn, clients)
	for i := range ws {
		ws[i], _ = confDial(t, ts, nil)
		confSubscribe(ws[i], "s", "review:wake", false)
	}
	errs := make(chan error, clients)
	for _, w := range ws {
		go func() {
			var next uint64 = 1
			for next <= n {
				m, err := w.nextErr(3 * time.Second)
				if err != nil {
					errs <- fmt.Errorf("waiting for offset %d: %w", next, err)
					return
				}
				switch m["type"] {
				case "ping":
					continue // a pong is a frame the client need not send here
				case "message":
				default:
					errs <- fmt.Errorf("got %v", m)
					return
				}
				if off := uint64(m["offset"].(float64)); off != next {
					errs <- fmt.Errorf("got offset %d, want %d", off, next)
					return
				}
				next++
			}
			errs <- nil
		}()
	}
	for i := range n {
		reviewPublish(t, ts, "review:wake", `1`)
		// Gaps around the tick and the linger, so that pushes land while
		// writers decide to exit.
		time.Sleep(time.Duration(i%23) * time.Millisecond)
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// SSE streams (taken over on HTTP/1.1, and served by net/http on HTTP/2)
// share a message's frame with WebSocket sessions: their events carry the
// message's JSON, never the WebSocket header before it.
func TestWireReviewSSEGetsNoWebSocketHeader(t *testing.T) {
	ts := startServer(t, nil)
	w, _ := confDial(t, ts, nil)
	confSubscribe(w, "s", "review:shared", false)

	c, addr := dialRaw(t, ts)
	fmt.Fprintf(c, "GET /v1/sse?rooms=review:shared HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	h1 := bufio.NewReader(c)

	client, _ := http2Client(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.url+"/v1/sse?rooms=review:shared", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("got %s, want HTTP/2", resp.Proto)
	}
	h2 := bufio.NewReader(resp.Body)

	readUntil := func(br *bufio.Reader, what string) string {
		t.Helper()
		var sb strings.Builder
		for !strings.Contains(sb.String(), what) {
			line, err := br.ReadString('\n')
			sb.WriteString(line)
			if err != nil {
				t.Fatalf("sse: %v after %.200q", err, sb.String())
			}
		}
		return sb.String()
	}
	for _, br := range []*bufio.Reader{h1, h2} {
		readUntil(br, "event: welcome")
		readUntil(br, "\n\n") // the rest of the welcome
	}
	sizes := []int{10, 200, 70000}
	for _, n := range sizes {
		reviewPublish(t, ts, "review:shared", `"`+strings.Repeat("q", n)+`"`)
	}
	for _, n := range sizes {
		m := w.expect("message")
		if len(m["data"].(string)) != n {
			t.Fatalf("ws: got %d bytes, want %d", len(m["data"].(string)), n)
		}
		for name, br := range map[string]*bufio.Reader{"HTTP/1.1": h1, "HTTP/2": h2} {
			ev := readUntil(br, "\n\n")
			i := strings.Index(ev, "event: message\ndata: ")
			if i < 0 {
				t.Fatalf("%s: event %.100q is no message", name, ev)
			}
			line := ev[i+len("event: message\ndata: "):]
			line = line[:strings.IndexByte(line, '\n')]
			if !strings.HasPrefix(line, `{`) || !json.Valid([]byte(line)) {
				t.Fatalf("%s: data of the %d-byte message: got %.40q, want the message's JSON alone", name, n, line)
			}
		}
	}
}

// reviewStream publishes messages of every length encoding to room until
// ctx ends, keeping at most ahead of what the client read (read counts).
func reviewStream(ctx context.Context, ts *testServer, room string, window chan struct{}) {
	for n := uint64(1); ; n++ {
		select {
		case window <- struct{}{}:
		case <-ctx.Done():
			return
		}
		if _, err := ts.bus.Publish(ctx, room, fanout.Publication{Data: json.RawMessage(wireData(n))}); err != nil {
			return
		}
	}
}

// reviewReadStream reads whole, in-order messages until the connection
// ends, and returns how it ended and how many messages came before.
func reviewReadStream(t *testing.T, ctx context.Context, w *wsConn, window chan struct{}, after uint64, onRead func(uint64)) (uint64, error) {
	t.Helper()
	var got uint64
	for {
		_, b, err := w.c.Read(ctx)
		if err != nil {
			return got, err
		}
		for line := range bytes.SplitSeq(b, []byte("\n")) {
			var m wireMessage
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatalf("after %d messages: %d bytes that are not a frame: %.80q", got, len(line), line)
			}
			if m.Type != "message" {
				continue
			}
			got++
			if m.Offset != got || !reviewWholeData(m.Data) {
				t.Fatalf("got offset %d with %d bytes (%.20q), want offset %d with data as published", m.Offset, len(m.Data), m.Data, got)
			}
			select {
			case <-window:
			default:
			}
			if got == after && onRead != nil {
				onRead(got)
			}
		}
	}
}

// Closes that happen while the session's writer streams large frames reach
// the client whole, after whole frames: the node's own close (closeNow, here
// for a binary frame, 1003), and the answer coder/websocket writes to a
// client's close.
func TestWireReviewCloseMidStream(t *testing.T) {
	for _, tt := range []struct {
		name string
		act  func(ts *testServer, w *wsConn, s *session)
		want websocket.StatusCode
	}{
		{name: "node closes (binary frame)", want: closeUnsupported, act: func(_ *testServer, w *wsConn, _ *session) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			w.c.Write(ctx, websocket.MessageBinary, []byte{1, 2, 3})
		}},
		{name: "node closes (slow consumer)", want: closeSlowConsumer, act: func(ts *testServer, _ *wsConn, s *session) {
			// A burst past the queue bound while the writer waits for the
			// wire (the test holds it): the writer has a batch in hand
			// when closeNow's close frame comes to the wire too.
			s.wire.mu.Lock()
			for range 8 {
				ts.bus.Publish(context.Background(), "review:close", fanout.Publication{Data: json.RawMessage(`"` + strings.Repeat("s", 60000) + `"`)})
			}
			s.wire.mu.Unlock()
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, func(c *Config) { c.QueueLimit = 256 << 10 })
			w, _ := confDial(t, ts, nil)
			confSubscribe(w, "s", "review:close", false)
			s := onlySession(t, ts)
			if tc, ok := s.wire.conn.(*net.TCPConn); ok {
				tc.SetWriteBuffer(16 << 10)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			window := make(chan struct{}, 8)
			go reviewStream(ctx, ts, "review:close", window)
			got, err := reviewReadStream(t, ctx, w, window, 30, func(uint64) { go tt.act(ts, w, s) })
			if code := websocket.CloseStatus(err); code != tt.want {
				t.Fatalf("after %d messages: got %v (%v), want close %v", got, code, err, tt.want)
			}
			t.Logf("%d messages, then %v", got, err)
		})
	}
}

// reviewWholeData reports whether d is data as the review tests publish it:
// a JSON string of one repeated letter, of a length they use.
func reviewWholeData(d []byte) bool {
	if len(d) < 3 || d[0] != '"' || d[len(d)-1] != '"' {
		return false
	}
	body := d[1 : len(d)-1]
	if strings.Trim(string(body), string(body[:1])) != "" {
		return false
	}
	n := len(body)
	for _, size := range wireSizes {
		if n == size {
			return true
		}
	}
	return n == 60000
}

// dialWSSmallRcvbuf dials a WebSocket whose socket has a 4 KiB receive
// buffer, set before connect (see TestBadSlowConsumer).
func dialWSSmallRcvbuf(t *testing.T, ts *testServer) *wsConn {
	t.Helper()
	dialer := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = setRcvbuf(fd, 4<<10) }); err != nil {
			return err
		}
		return serr
	}}
	tr := &http.Transport{DialContext: dialer.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, ts.ws, &websocket.DialOptions{Subprotocols: []string{Subprotocol}, HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(8 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return &wsConn{t: t, c: c}
}

// A client that stops reading, with a backlog under the queue bound, is cut
// off about WriteTimeout after the node's writer blocks on it, whether it
// goes quiet or keeps pinging (each ping makes coder/websocket write a pong
// through the wire).
func TestWireReviewStalledClientCutOff(t *testing.T) {
	const timeout = 500 * time.Millisecond
	for _, pinging := range []bool{false, true} {
		t.Run(fmt.Sprintf("pinging=%v", pinging), func(t *testing.T) {
			ts := startServer(t, func(c *Config) { c.WriteTimeout = timeout; c.QueueLimit = 16 << 20 })
			w := dialWSSmallRcvbuf(t, ts)
			w.expect("welcome")
			confSubscribe(w, "s", "review:stall", false)
			s := onlySession(t, ts)
			if tc, ok := s.wire.conn.(*net.TCPConn); ok {
				tc.SetWriteBuffer(16 << 10)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if pinging {
				go func() {
					for ctx.Err() == nil {
						pctx, pcancel := context.WithTimeout(ctx, 50*time.Millisecond)
						w.c.Ping(pctx) // no pong is read: the client reads nothing
						pcancel()
					}
				}()
			}
			start := time.Now()
			for range 32 {
				reviewPublish(t, ts, "review:stall", `"`+strings.Repeat("p", 60000)+`"`)
			}
			deadline := start.Add(timeout + 1500*time.Millisecond)
			for !s.isClosed() {
				if time.Now().After(deadline) {
					t.Fatalf("the stalled client is still open %v after a 2 MiB backlog (WriteTimeout %v)", time.Since(start).Round(time.Millisecond), timeout)
				}
				time.Sleep(5 * time.Millisecond)
			}
			t.Logf("closed after %v", time.Since(start).Round(time.Millisecond))
		})
	}
}

// syncBuf is a bytes.Buffer for a writer and a poller on two goroutines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A TLS 1.3 client that asks for a key update (OpenSSL's SSL_key_update, the
// "K" command of s_client) while its connection is idle: the node's
// crypto/tls answers with a KeyUpdate of its own, written from inside the
// session reader's Read, under whatever write deadline the connection has.
// Before 227e5ae the writer cleared the deadline after each batch; now the
// wire leaves it armed, so on a connection idle past WriteTimeout the answer
// is written under a deadline that has passed and fails. crypto/tls then
// returns before rotating its read key too (handleKeyUpdate), so the
// client's next record (here a subscribe) fails the MAC check, and the
// session ends without its ack.
func TestWireReviewTLSKeyUpdateWhileIdle(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs openssl s_client to send a TLS 1.3 KeyUpdate (make test installs it)")
		}
		t.Skip("needs openssl s_client to send a TLS 1.3 KeyUpdate (make test installs it)")
	}
	const timeout = 300 * time.Millisecond
	logs := &syncBuf{}
	ts, _ := reviewTLSServer(t, func(c *Config) {
		c.WriteTimeout = timeout
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	addr := strings.TrimPrefix(ts.url, "https://")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, openssl, "s_client", "-connect", addr, "-tls1_3")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitOut := func(what string, d time.Duration) bool {
		deadline := time.Now().Add(d)
		for !strings.Contains(out.String(), what) {
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(10 * time.Millisecond)
		}
		return true
	}
	if !waitOut("TLSv1.3", 5*time.Second) {
		t.Fatalf("no TLS 1.3 session: %s", out.String())
	}
	fmt.Fprintf(stdin, "GET /v1/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: parley.v1\r\n\r\n", addr)
	if !waitOut(`"type":"welcome"`, 5*time.Second) {
		t.Fatalf("no welcome: %s", out.String())
	}
	time.Sleep(3 * timeout)    // idle: the deadline armed for the welcome passes
	stdin.Write([]byte("K\n")) // s_client: send a KeyUpdate that asks for one back
	time.Sleep(200 * time.Millisecond)
	// A subscribe, as a masked text frame (mask key zero).
	cmdFrame := []byte(`{"type":"subscribe","id":"after-key-update","room":"review:ku"}`)
	stdin.Write(append([]byte{0x81, 0x80 | byte(len(cmdFrame)), 0, 0, 0, 0}, cmdFrame...))
	if !waitOut(`"id":"after-key-update"`, 3*time.Second) {
		var said []string
		for line := range strings.SplitSeq(out.String(), "\n") {
			if strings.Contains(line, "welcome") || strings.Contains(line, "KEYUPDATE") || strings.Contains(line, "error") || strings.Contains(line, "closed") {
				said = append(said, strings.TrimSpace(line))
			}
		}
		for line := range strings.SplitSeq(logs.String(), "\n") {
			if strings.Contains(line, "session closed") || strings.Contains(line, "websocket read") {
				said = append(said, "node: "+line)
			}
		}
		t.Fatalf("no ack after the client's key update; s_client said:\n%s", strings.Join(said, "\n"))
	}
}

// A backlog larger than maxBatch goes out as several WebSocket messages,
// each at most maxBatch bytes unless it is one frame alone, every frame
// whole and in order; and the same frames replayed from history to a client
// that resumes come out the same way.
func TestWireReviewBacklogOverMaxBatch(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.QueueLimit = 8 << 20 })
	w, _ := confDial(t, ts, nil)
	ack := confSubscribe(w, "s", "review:batch", false)
	epoch, _ := ack["epoch"].(string)
	s := onlySession(t, ts)
	s.wire.mu.Lock()
	reviewPublish(t, ts, "review:batch", `"first"`)
	waitFor(t, "the writer to take the first message", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.queue) == 0
	})
	const n = 40
	for i := range n {
		size := []int{20000, 15, 70000, 3000}[i%4]
		reviewPublish(t, ts, "review:batch", `"`+strings.Repeat("b", size)+`"`)
	}
	s.wire.mu.Unlock()

	check := func(w *wsConn, what string, from uint64) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		next := from
		var messages int
		for next <= n+1 {
			_, b, err := w.c.Read(ctx)
			if err != nil {
				t.Fatalf("%s: read at offset %d: %v", what, next, err)
			}
			messages++
			lines := bytes.Split(b, []byte("\n"))
			if len(lines) > 1 && len(b) > maxBatch {
				t.Errorf("%s: a message of %d frames is %d bytes, want at most %d", what, len(lines), len(b), maxBatch)
			}
			for _, line := range lines {
				var m wireMessage
				if err := json.Unmarshal(line, &m); err != nil {
					t.Fatalf("%s: %d bytes that are not a frame: %.60q", what, len(line), line)
				}
				if m.Type != "message" {
					continue
				}
				if m.Offset != next {
					t.Fatalf("%s: got offset %d, want %d", what, m.Offset, next)
				}
				next++
			}
		}
		t.Logf("%s: %d messages for offsets %d to %d", what, messages, from, n+1)
	}
	check(w, "live backlog", 1)

	r, _ := confDial(t, ts, nil)
	r.send(map[string]any{"type": "subscribe", "id": "r", "room": "review:batch", "since": map[string]any{"epoch": epoch, "offset": 0}})
	// The ack comes first, alone or at the head of the replay's first message.
	for len(r.pending) == 0 {
		_, b, err := r.c.Read(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		r.pending = bytes.Split(b, []byte("\n"))
	}
	if first := string(r.pending[0]); !strings.Contains(first, `"type":"ack"`) {
		t.Fatalf("got %.80q, want the ack first", first)
	}
	rest := r.pending[1:]
	r.pending = nil
	next := uint64(1)
	for _, line := range rest {
		var m wireMessage
		if err := json.Unmarshal(line, &m); err != nil || m.Offset != next {
			t.Fatalf("replay: got %.60q, want offset %d", line, next)
		}
		next++
	}
	check(r, "replay", next)
}
