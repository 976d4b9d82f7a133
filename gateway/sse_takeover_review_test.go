package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/parley-rt/parley/fanout"
)

// stallConn is a server-side connection whose writes can be made to block,
// as a real socket's do once its send buffer is full because the client
// stopped reading (the kernel's own behaviour depends on how full the last
// segment is, which a test cannot steer): a stalled Write returns only when
// its write deadline passes or the connection is closed.
type stallConn struct {
	net.Conn
	stalled atomic.Bool
	mu      sync.Mutex
	wdl     time.Time
	closed  chan struct{}
	once    sync.Once
}

func (c *stallConn) Write(b []byte) (int, error) {
	for c.stalled.Load() {
		c.mu.Lock()
		dl := c.wdl
		c.mu.Unlock()
		if !dl.IsZero() && !time.Now().Before(dl) {
			return 0, &net.OpError{Op: "write", Net: "tcp", Err: os.ErrDeadlineExceeded}
		}
		select {
		case <-c.closed:
			return 0, net.ErrClosed
		case <-time.After(2 * time.Millisecond):
		}
	}
	return c.Conn.Write(b)
}

func (c *stallConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.wdl = t
	c.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

func (c *stallConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.wdl = t
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// stallListener hands each accepted connection, as a stallConn, to conns.
type stallListener struct {
	net.Listener
	conns chan *stallConn
}

func (l stallListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	sc := &stallConn{Conn: c, closed: make(chan struct{})}
	select {
	case l.conns <- sc:
	default:
	}
	return sc, nil
}

// startTLS1Server is startServer over TLS offering HTTP/1.1 only, so that an
// SSE stream is taken over from net/http on the path that keeps a goroutine
// (TLS is never polled). The server's connections arrive on the returned
// channel, under TLS, as stallConns.
func startTLS1Server(t *testing.T, mod func(*Config)) (*testServer, *tls.Config, chan *stallConn) {
	t.Helper()
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	cfg := Config{Bus: bus, NodeID: "review", DrainTimeout: 200 * time.Millisecond, APIKey: testAPIKey}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Config = srv.http
	hs.EnableHTTP2 = false
	conns := make(chan *stallConn, 16)
	hs.Listener = stallListener{Listener: hs.Listener, conns: conns}
	hs.StartTLS()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if !srv.draining.Load() {
			srv.Shutdown(ctx)
		}
		hs.Close()
		bus.Close()
	})
	conf := hs.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	conf.NextProtos = []string{"http/1.1"}
	conf.ServerName = "example.com" // httptest's certificate names it
	return &testServer{srv: srv, bus: bus, http: hs, url: hs.URL}, conf, conns
}

// openTLSStream opens an SSE stream over TLS and HTTP/1.1 and reads it up to
// its welcome; it returns the client's connection and reader, and the
// server's side of the connection.
func openTLSStream(t *testing.T, ts *testServer, conf *tls.Config, conns chan *stallConn, path string) (*tls.Conn, *bufio.Reader, *stallConn) {
	t.Helper()
	addr := strings.TrimPrefix(ts.url, "https://")
	c, err := tls.Dial("tcp", addr, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var sc *stallConn
	select {
	case sc = <-conns:
	case <-time.After(5 * time.Second):
		t.Fatal("the server accepted no connection")
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	if head := readUntil(t, br, ""); !strings.HasPrefix(head, "HTTP/1.1 200 OK\r\n") || !strings.Contains(head, "Connection: close\r\n") {
		t.Fatalf("got head %q, want the taken-over stream's", head)
	}
	readUntil(t, br, "") // retry
	if ev := readUntil(t, br, ""); !strings.HasPrefix(ev, "event: welcome\n") {
		t.Fatalf("got %q, want the welcome", ev)
	}
	return c, br, sc
}

// A TLS client over HTTP/1.1 that stops reading (a laptop that went to
// sleep) has its taken-over stream closed once a write has been blocked for
// Config.WriteTimeout, and released then, as on plain TCP and as net/http
// did: the node does not wait a further 5 s to send a TLS close_notify alert
// that the full connection cannot take, and Shutdown with a context that
// has expired does not wait for it either.
func TestSSETakeoverReviewTLSWriteTimeoutReleases(t *testing.T) {
	const writeTimeout = 300 * time.Millisecond
	ts, conf, conns := startTLS1Server(t, func(c *Config) { c.WriteTimeout = writeTimeout })
	_, _, sc := openTLSStream(t, ts, conf, conns, "/v1/sse?rooms=tlsslow")
	sse := ts.srv.metrics.connections.WithLabelValues("sse")
	if got := valueOf(sse); got != 1 {
		t.Fatalf(`parley_connections{transport="sse"}: got %v, want 1`, got)
	}

	sc.stalled.Store(true) // the client stopped reading; the socket is full
	if _, err := ts.bus.Publish(context.Background(), "tlsslow", fanout.Publication{Data: []byte(`{"n":1}`)}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	deadline := start.Add(writeTimeout + time.Second)
	for valueOf(sse) != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	released, waited := valueOf(sse) == 0, time.Since(start)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	sdStart := time.Now()
	ts.srv.Shutdown(ctx)
	took := time.Since(sdStart)
	if !released {
		t.Errorf("the stream of a TLS client that stopped reading is still open %v after the publish, want it released within about WriteTimeout (%v)",
			waited.Round(time.Millisecond), writeTimeout)
	}
	if took > time.Second {
		t.Errorf("Shutdown with a context of 50ms took %v, want it to return promptly", took.Round(time.Millisecond))
	}
}

// bothPollers runs f with the poller and with Config.NoPoller.
func bothPollers(t *testing.T, f func(t *testing.T, noPoller bool)) {
	for _, noPoller := range []bool{false, true} {
		t.Run(fmt.Sprintf("nopoller=%v", noPoller), func(t *testing.T) {
			if !noPoller {
				requirePoller(t)
			}
			f(t, noPoller)
		})
	}
}

// sseGauge returns parley_connections{transport="sse"}.
func sseGauge(ts *testServer) float64 {
	return valueOf(ts.srv.metrics.connections.WithLabelValues("sse"))
}

// A HEAD request for a stream is answered with the head alone, as net/http
// answered it before the take-over: a response to HEAD has no body (RFC
// 9110, 9.3.2; the mux routes HEAD to "GET /v1/sse"). No session should stay
// open behind a head either (that part predates the take-over: net/http
// discarded the body but the handler served the stream until the client
// left).
func TestSSETakeoverReviewHead(t *testing.T) {
	bothPollers(t, func(t *testing.T, noPoller bool) {
		ts := startServer(t, func(c *Config) { c.NoPoller = noPoller })
		c, addr := dialRaw(t, ts)
		fmt.Fprintf(c, "HEAD /v1/sse?rooms=head HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
		br := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodHead})
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("HEAD: got %s, want 200", resp.Status)
		}
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if b, _ := br.ReadString('\n'); b != "" {
			t.Errorf("after the head of a HEAD response: got %q, want no body", b)
		}
		deadline := time.Now().Add(time.Second)
		for sseGauge(ts) != 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := sseGauge(ts); got != 0 {
			t.Errorf(`parley_connections{transport="sse"} a second after a HEAD was answered: got %v, want 0`, got)
		}
	})
}

// Bytes a client sends with its request (a pipelined request, which a
// stream that ends with the connection cannot answer) end the stream, as
// bytes sent after it do (TestSSEStreamClientSends): docs/PROTOCOL.md says
// "bytes that arrive end the stream". net/http has read them into its
// buffer before the take-over, where neither the poller nor the waiting
// read sees them.
func TestSSETakeoverReviewPipelinedBytes(t *testing.T) {
	bothPollers(t, func(t *testing.T, noPoller bool) {
		ts := startServer(t, func(c *Config) { c.NoPoller = noPoller })
		c, addr := dialRaw(t, ts)
		fmt.Fprintf(c, "GET /v1/sse?rooms=pipelined HTTP/1.1\r\nHost: %s\r\n\r\nGET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr)
		c.SetReadDeadline(time.Now().Add(time.Second))
		if got, err := io.ReadAll(c); err != nil {
			t.Fatalf("a stream whose client pipelined a request: still open after a second (%v), want it ended; read %q", err, got)
		}
		waitFor(t, "the session's release", func() bool { return sseGauge(ts) == 0 })
	})
}

// holdSubscribes makes every History call of bus (each subscribe reads it)
// wait until release is closed, telling entered when one begins.
func holdSubscribes(bus *faultBus) (entered chan struct{}, release chan struct{}) {
	entered, release = make(chan struct{}, 16), make(chan struct{})
	bus.setHistory(func(ctx context.Context, room string, q fanout.HistoryQuery, read func() (fanout.History, error)) (fanout.History, error) {
		entered <- struct{}{}
		<-release
		return read()
	})
	return entered, release
}

// A stream whose client goes away while its rooms are being subscribed
// (before the take-over), or that Shutdown closes then, is released once,
// and Shutdown returns once the subscribe does.
func TestSSETakeoverReviewEndsDuringSubscribe(t *testing.T) {
	bothPollers(t, func(t *testing.T, noPoller bool) {
		t.Run("client closes", func(t *testing.T) {
			ts, bus, _ := startFaultServer(t, fanout.MemoryConfig{}, func(c *Config) { c.NoPoller = noPoller })
			entered, release := holdSubscribes(bus)
			c, addr := dialRaw(t, ts)
			fmt.Fprintf(c, "GET /v1/sse?rooms=early HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
			<-entered
			c.Close()
			time.Sleep(20 * time.Millisecond) // net/http's background read sees the end
			close(release)
			waitFor(t, "the stream's session to be released", func() bool {
				ts.srv.sessMu.Lock()
				defer ts.srv.sessMu.Unlock()
				return len(ts.srv.sessions) == 0 && sseGauge(ts) == 0 && len(ts.srv.perIP) == 0
			})
		})
		t.Run("Shutdown", func(t *testing.T) {
			ts, bus, _ := startFaultServer(t, fanout.MemoryConfig{}, func(c *Config) { c.NoPoller = noPoller })
			entered, release := holdSubscribes(bus)
			c, addr := dialRaw(t, ts)
			fmt.Fprintf(c, "GET /v1/sse?rooms=early HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
			<-entered
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			done := make(chan struct{})
			go func() {
				defer close(done)
				ts.srv.Shutdown(ctx)
			}()
			time.Sleep(200 * time.Millisecond) // Shutdown closed the session meanwhile
			close(release)
			select {
			case <-done:
			case <-time.After(2 * time.Second):
				t.Fatal("Shutdown did not return within 2s of the subscribe's end")
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := io.ReadAll(c); err != nil {
				t.Errorf("the client's connection: got %v, want its end", err)
			}
			if got := sseGauge(ts); got != 0 {
				t.Errorf(`parley_connections{transport="sse"} after Shutdown: got %v, want 0`, got)
			}
		})
	})
}

// sseEvent is one event of a raw stream.
type sseEvent struct{ event, data, id string }

// readEvent reads the next event (skipping comments).
func readEvent(br *bufio.Reader) (sseEvent, error) {
	var ev sseEvent
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if ev.event != "" {
				return ev, nil
			}
		case strings.HasPrefix(line, "event: "):
			ev.event = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			ev.data = line[len("data: "):]
		case strings.HasPrefix(line, "id: "):
			ev.id = line[len("id: "):]
		}
	}
}

// Many streams open while messages are published: each starts with its
// welcome, then gets every message after the welcome's offset, in order,
// once; then half the clients leave and Shutdown with a context that has
// expired ends the rest, and every session is released.
func TestSSETakeoverReviewConcurrentOrder(t *testing.T) {
	bothPollers(t, func(t *testing.T, noPoller bool) {
		const streams, messages = 40, 300
		ts := startServer(t, func(c *Config) { c.NoPoller = noPoller })
		pubDone := make(chan struct{})
		go func() {
			defer close(pubDone)
			for i := 1; i <= messages; i++ {
				ts.bus.Publish(context.Background(), "order", fanout.Publication{Data: []byte(fmt.Sprintf(`{"i":%d}`, i))})
				if i%10 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		}()
		type result struct {
			c   net.Conn
			err error
		}
		results := make(chan result, streams)
		var midway atomic.Int32 // streams that opened while messages were published
		for range streams {
			go func() {
				addr := strings.TrimPrefix(ts.url, "http://")
				c, err := net.Dial("tcp", addr)
				if err != nil {
					results <- result{err: err}
					return
				}
				fmt.Fprintf(c, "GET /v1/sse?rooms=order HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				fail := func(format string, a ...any) { results <- result{c: c, err: fmt.Errorf(format, a...)} }
				ev, err := readEvent(br)
				if err != nil || ev.event != "welcome" {
					fail("first event %+v (%v), want the welcome", ev, err)
					return
				}
				var w struct {
					Rooms map[string]struct {
						Epoch  string
						Offset uint64
					}
				}
				if err := json.Unmarshal([]byte(ev.data), &w); err != nil {
					fail("welcome %q: %v", ev.data, err)
					return
				}
				next := w.Rooms["order"].Offset + 1
				if next > 1 && next <= messages {
					midway.Add(1)
				}
				for next <= messages {
					ev, err := readEvent(br)
					if err != nil {
						fail("after offset %d: %v", next-1, err)
						return
					}
					var m messageFrame
					if ev.event != "message" || json.Unmarshal([]byte(ev.data), &m) != nil {
						fail("got %+v, want message %d", ev, next)
						return
					}
					if m.Offset != next || m.Epoch != w.Rooms["order"].Epoch {
						fail("got message %d of epoch %s, want %d of %s (welcome at %d)", m.Offset, m.Epoch, next, w.Rooms["order"].Epoch, w.Rooms["order"].Offset)
						return
					}
					next++
				}
				results <- result{c: c}
			}()
		}
		var conns []net.Conn
		for range streams {
			r := <-results
			if r.err != nil {
				t.Error(r.err)
			}
			if r.c != nil {
				conns = append(conns, r.c)
			}
		}
		<-pubDone
		t.Logf("%d of %d streams opened while the messages were published", midway.Load(), streams)
		for i, c := range conns {
			if i%2 == 0 {
				c.Close()
			} else {
				defer c.Close()
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // done already (a deadline already past is TestSSETakeoverReviewShutdownPastDeadline)
		start := time.Now()
		ts.srv.Shutdown(ctx)
		if took := time.Since(start); took > time.Second {
			t.Errorf("Shutdown with an expired context took %v", took)
		}
		ts.srv.sessMu.Lock()
		left := len(ts.srv.sessions)
		ts.srv.sessMu.Unlock()
		if left != 0 || sseGauge(ts) != 0 {
			t.Errorf("after Shutdown: %d sessions, gauge %v; want none", left, sseGauge(ts))
		}
	})
}

// A client that half-closes its connection (CloseWrite) after the request
// has its stream ended and released, with the poller and without.
func TestSSETakeoverReviewHalfClose(t *testing.T) {
	bothPollers(t, func(t *testing.T, noPoller bool) {
		ts := startServer(t, func(c *Config) { c.NoPoller = noPoller })
		c, br := openStream(t, ts, "HTTP/1.1", "/v1/sse?rooms=half", "")
		readUntil(t, br, "")
		readUntil(t, br, "")
		readUntil(t, br, "")
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if rest, err := io.ReadAll(br); err != nil {
			t.Errorf("after CloseWrite: %v (read %q), want the stream's end", err, rest)
		}
		waitFor(t, "the session's release", func() bool { return sseGauge(ts) == 0 })
	})
}

// Over TLS and HTTP/1.1 (taken over, with a goroutine waiting in a read),
// events arrive, a client that goes away releases its session, and drain
// ends a stream with the reconnect event and the end of the body.
func TestSSETakeoverReviewTLS(t *testing.T) {
	ts, conf, conns := startTLS1Server(t, nil)
	c1, br1, _ := openTLSStream(t, ts, conf, conns, "/v1/sse?rooms=tls")
	_, br2, _ := openTLSStream(t, ts, conf, conns, "/v1/sse?rooms=tls")
	if got := valueOf(ts.srv.metrics.polled[transportSSE]); got != 0 {
		t.Errorf("polled SSE sessions over TLS: got %v, want 0", got)
	}
	if _, err := ts.bus.Publish(context.Background(), "tls", fanout.Publication{Data: []byte(`{"n":1}`)}); err != nil {
		t.Fatal(err)
	}
	for _, br := range []*bufio.Reader{br1, br2} {
		if ev, err := readEvent(br); err != nil || ev.event != "message" || !strings.Contains(ev.data, `"data":{"n":1}`) {
			t.Fatalf("got %+v (%v), want the message", ev, err)
		}
	}
	c1.Close()
	waitFor(t, "the closed client's session to be released", func() bool { return sseGauge(ts) == 1 })
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ts.srv.Shutdown(ctx)
	}()
	if ev, err := readEvent(br2); err != nil || ev.event != "reconnect" {
		t.Fatalf("got %+v (%v), want the reconnect event", ev, err)
	}
	if rest, err := io.ReadAll(br2); err != nil || len(rest) != 0 {
		t.Errorf("after the reconnect: got %q (%v), want the end of the stream", rest, err)
	}
}

// Shutdown given a context whose deadline has already passed (a caller's
// budget spent before it got there) closes what is open at once and returns
// the context's error; it does not panic. The drain window comes out
// negative (time.Until(dl)*9/10, server.go), and rand.Int64N panics on it.
func TestSSETakeoverReviewShutdownPastDeadline(t *testing.T) {
	ts := startServer(t, nil)
	_, br := openStream(t, ts, "HTTP/1.1", "/v1/sse?rooms=past", "")
	readUntil(t, br, "")
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Errorf("Shutdown with a deadline in the past panicked: %v", p)
			}
		}()
		err = ts.srv.Shutdown(ctx)
	}()
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: got %v, want nil or %v", err, context.DeadlineExceeded)
	}
}

// The head of a taken-over stream parses as an HTTP response, with each of
// its headers once (CORS for an allowed Origin included) and a Date, for an
// HTTP/1.1 and an HTTP/1.0 request.
func TestSSETakeoverReviewHeadHeaders(t *testing.T) {
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		t.Run(proto, func(t *testing.T) {
			ts := startServer(t, func(c *Config) { c.Origins = []string{"https://app.example.com"} })
			_, br := openStream(t, ts, proto, "/v1/sse?rooms=headers", "Origin: https://app.example.com\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{
				"Content-Type":                     "text/event-stream",
				"Cache-Control":                    "no-cache",
				"X-Accel-Buffering":                "no",
				"Access-Control-Allow-Origin":      "https://app.example.com",
				"Access-Control-Allow-Credentials": "true",
				"Vary":                             "Origin",
			}
			for k, v := range want {
				if got := resp.Header.Values(k); len(got) != 1 || got[0] != v {
					t.Errorf("header %s: got %q, want [%q]", k, got, v)
				}
			}
			if got := resp.Header.Values("Date"); len(got) != 1 {
				t.Errorf("Date: got %q, want one", got)
			} else if d, err := http.ParseTime(got[0]); err != nil || time.Since(d).Abs() > time.Minute {
				t.Errorf("Date %q: %v, want about now", got[0], err)
			}
			if resp.ContentLength != -1 || len(resp.TransferEncoding) != 0 || !resp.Close {
				t.Errorf("got ContentLength %d, TransferEncoding %v, Close %v; want a body that ends with the connection", resp.ContentLength, resp.TransferEncoding, resp.Close)
			}
			for k, v := range resp.Header {
				if len(v) != 1 {
					t.Errorf("header %s sent %d times: %q", k, len(v), v)
				}
			}
			body := bufio.NewReader(resp.Body)
			if got := readUntil(t, body, ""); got != sseRetry {
				t.Errorf("body starts %q, want %q", got, sseRetry)
			}
			if ev, err := readEvent(body); err != nil || ev.event != "welcome" {
				t.Errorf("first event %+v (%v), want the welcome", ev, err)
			}
		})
	}
}

// Config.WriteTimeout bounds a write to a taken-over stream whose client
// stopped reading, whatever the queue bound: the stream is closed and its
// session released, with the poller and without.
func TestSSETakeoverReviewWriteTimeout(t *testing.T) {
	bothPollers(t, func(t *testing.T, noPoller bool) {
		const writeTimeout = 300 * time.Millisecond
		ts := startServer(t, func(c *Config) {
			c.NoPoller = noPoller
			c.WriteTimeout = writeTimeout
			c.QueueLimit = 256 << 20
		})
		rawSSE(t, ts, "/v1/sse?rooms=wto", "")
		waitFor(t, "the stream", func() bool { return sseGauge(ts) == 1 })
		pad := strings.Repeat("x", 32<<10)
		var last time.Time
		for i := 0; sseGauge(ts) == 1; i++ {
			if i == 1024 {
				t.Fatal("the stream is still open after 32 MiB")
			}
			if _, err := ts.bus.Publish(context.Background(), "wto", fanout.Publication{Data: []byte(fmt.Sprintf(`{"i":%d,"pad":%q}`, i, pad))}); err != nil {
				t.Fatal(err)
			}
			last = time.Now()
			if i%32 == 31 {
				time.Sleep(50 * time.Millisecond)
			}
		}
		if took := time.Since(last); took > writeTimeout+time.Second {
			t.Errorf("released %v after the last publish, want within about WriteTimeout (%v)", took, writeTimeout)
		}
		var m dto.Metric
		ts.srv.metrics.slowConsumers.Write(&m)
		if got := m.GetCounter().GetValue(); got != 0 {
			t.Errorf("slow consumer closes: got %v, want 0 (the write timeout ends it)", got)
		}
	})
}

// Closing a stream's session at any moment of its opening (before the
// hijack, between it and the take-over, after: as a slow-consumer close or
// Shutdown's may come) ends the client's connection and releases the
// session once, with the poller and without.
func TestSSETakeoverReviewCloseRacesTakeover(t *testing.T) {
	bothPollers(t, func(t *testing.T, noPoller bool) {
		ts := startServer(t, func(c *Config) { c.NoPoller = noPoller })
		phases := map[string]int{}
		defer func() { t.Logf("what the clients read before the end: %v", phases) }()
		for i := range 60 {
			stop := make(chan struct{})
			closer := make(chan struct{})
			go func() {
				defer close(closer)
				delay := time.Duration(i%12) * 50 * time.Microsecond
				for {
					select {
					case <-stop:
						return
					default:
					}
					ts.srv.sessMu.Lock()
					var ss []*session
					for s := range ts.srv.sessions {
						ss = append(ss, s)
					}
					ts.srv.sessMu.Unlock()
					if len(ss) > 0 {
						time.Sleep(delay)
						for _, s := range ss {
							s.closeNow(closeSlowConsumer, "slow consumer")
						}
						return
					}
					runtime.Gosched()
				}
			}()
			c, addr := dialRaw(t, ts)
			fmt.Fprintf(c, "GET /v1/sse?rooms=race%d HTTP/1.1\r\nHost: %s\r\n\r\n", i, addr)
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("round %d: the client's connection did not end: %v", i, err)
			}
			switch {
			case len(got) == 0:
				phases["nothing"]++
			case strings.Contains(string(got), "event: welcome"):
				phases["welcome"]++
			default:
				phases["head"]++
			}
			close(stop)
			<-closer
			c.Close()
			waitFor(t, "the session's release", func() bool {
				ts.srv.sessMu.Lock()
				defer ts.srv.sessMu.Unlock()
				return len(ts.srv.sessions) == 0 && sseGauge(ts) == 0 && valueOf(ts.srv.metrics.polled[transportSSE]) == 0
			})
		}
	})
}
