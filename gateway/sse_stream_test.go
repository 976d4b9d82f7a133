package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
)

// openStream sends an SSE request on a raw TCP connection (proto is
// "HTTP/1.1" or "HTTP/1.0") and returns the connection and its reader.
func openStream(t *testing.T, ts *testServer, proto, path string, header string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, addr := dialRaw(t, ts)
	fmt.Fprintf(c, "GET %s %s\r\nHost: %s\r\n%s\r\n", path, proto, addr, header)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// readUntil reads lines until one equals want, and returns what it read.
func readUntil(t *testing.T, br *bufio.Reader, want string) string {
	t.Helper()
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			t.Fatalf("reading for %q: %v; read %q", want, err, b.String())
		}
		if strings.TrimRight(line, "\r\n") == want {
			return b.String()
		}
	}
}

// An SSE stream over HTTP/1.x is taken over from net/http: its head says
// the body ends with the connection, its CORS headers stay, its events
// arrive; with the poller the idle stream holds no goroutine of its own,
// and a client that goes away is noticed at once on both paths.
func TestSSEStreamTakenOver(t *testing.T) {
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		for _, noPoller := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/nopoller=%v", proto, noPoller), func(t *testing.T) {
				if !noPoller {
					requirePoller(t)
				}
				ts := startServer(t, func(c *Config) { c.NoPoller = noPoller })
				origin := "http://" + strings.TrimPrefix(ts.url, "http://")
				c, br := openStream(t, ts, proto, "/v1/sse?rooms=takeover", "Origin: "+origin+"\r\n")
				head := readUntil(t, br, "")
				for _, want := range []string{"HTTP/1.1 200 OK\r\n", "Content-Type: text/event-stream\r\n", "Cache-Control: no-cache\r\n",
					"Connection: close\r\n", "Access-Control-Allow-Origin: " + origin + "\r\n"} {
					if !strings.Contains(head, want) {
						t.Errorf("response head %q lacks %q", head, want)
					}
				}
				if strings.Contains(head, "Transfer-Encoding") || strings.Contains(head, "Content-Length") {
					t.Errorf("response head %q: want a body delimited by the connection's end", head)
				}
				if got := readUntil(t, br, ""); got != sseRetry {
					t.Errorf("stream starts %q, want %q", got, sseRetry)
				}
				if got := readUntil(t, br, ""); !strings.HasPrefix(got, "event: welcome\n") {
					t.Errorf("first event %q, want the welcome", got)
				}
				polled := func(n float64) bool {
					return noPoller || valueOf(ts.srv.metrics.polled[transportSSE]) == n && valueOf(ts.srv.metrics.readers) == 0
				}
				waitFor(t, "the stream in the poller", func() bool { return polled(1) })

				if _, err := ts.bus.Publish(context.Background(), "takeover", fanout.Publication{Data: []byte(`{"n":1}`)}); err != nil {
					t.Fatal(err)
				}
				ev := readUntil(t, br, "")
				if !strings.HasPrefix(ev, "event: message\ndata: ") || !strings.Contains(ev, `"data":{"n":1}`) || !strings.Contains(ev, "\nid: ") {
					t.Errorf("got event %q, want the message with an id", ev)
				}

				start := time.Now()
				c.Close()
				waitFor(t, "the stream's session to be released", func() bool {
					return valueOf(ts.srv.metrics.connections.WithLabelValues("sse")) == 0 && polled(0)
				})
				t.Logf("released %v after the client closed", time.Since(start).Round(time.Millisecond))
			})
		}
	}
}

// A client that sends bytes on its SSE connection after the request (which
// no SSE client does: a pipelined request cannot be answered on a stream
// that ends with the connection) has the stream closed, with the poller and
// without.
func TestSSEStreamClientSends(t *testing.T) {
	for _, noPoller := range []bool{false, true} {
		t.Run(fmt.Sprintf("nopoller=%v", noPoller), func(t *testing.T) {
			if !noPoller {
				requirePoller(t)
			}
			ts := startServer(t, func(c *Config) { c.NoPoller = noPoller })
			by := badNewBystander(t, ts, nil)
			c, br := openStream(t, ts, "HTTP/1.1", "/v1/sse?rooms=sends", "")
			readUntil(t, br, "") // head
			readUntil(t, br, "") // retry
			readUntil(t, br, "") // welcome
			waitFor(t, "the stream to be idle", func() bool {
				return noPoller || valueOf(ts.srv.metrics.polled[transportSSE]) == 1
			})
			fmt.Fprintf(c, "GET /v1/sse?rooms=other HTTP/1.1\r\nHost: x\r\n\r\n")
			rest, err := io.ReadAll(br)
			if err != nil {
				t.Fatalf("the stream did not end cleanly: %v (read %q)", err, rest)
			}
			if len(rest) != 0 {
				t.Errorf("after the client's bytes: got %q, want the stream's end", rest)
			}
			waitFor(t, "the stream's session to be released", func() bool {
				return valueOf(ts.srv.metrics.connections.WithLabelValues("sse")) == 0
			})
			by.check(t, "an SSE client that sends")
		})
	}
}

// Drain ends a taken-over stream with the reconnect event, then the end of
// the body, as it did when net/http served it.
func TestSSEStreamDrain(t *testing.T) {
	for _, noPoller := range []bool{false, true} {
		t.Run(fmt.Sprintf("nopoller=%v", noPoller), func(t *testing.T) {
			if !noPoller {
				requirePoller(t)
			}
			ts := startServer(t, func(c *Config) { c.NoPoller = noPoller })
			_, br := openStream(t, ts, "HTTP/1.1", "/v1/sse?rooms=drain", "")
			readUntil(t, br, "")
			readUntil(t, br, "")
			readUntil(t, br, "")
			waitFor(t, "the stream to be idle", func() bool {
				return noPoller || valueOf(ts.srv.metrics.polled[transportSSE]) == 1
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- ts.srv.Shutdown(ctx) }()
			rest, err := io.ReadAll(br)
			if err != nil {
				t.Fatalf("the stream did not end cleanly: %v (read %q)", err, rest)
			}
			if !strings.HasPrefix(string(rest), "event: reconnect\ndata: ") || !strings.HasSuffix(string(rest), "\n\n") {
				t.Errorf("drain: got %q, want the reconnect event and the end", rest)
			}
			if err := <-done; err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		})
	}
}

// A slow SSE client of a taken-over stream is closed as a slow consumer
// once the queue passes its bound, and a fast one beside it is not held up.
func TestSSEStreamSlowConsumer(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.QueueLimit = 64 << 10 })
	fast := badNewBystander(t, ts, nil)
	rawSSE(t, ts, "/v1/sse?rooms=slowsse", "")
	waitFor(t, "the slow stream", func() bool { return valueOf(ts.srv.metrics.connections.WithLabelValues("sse")) == 1 })
	pad := strings.Repeat("x", 8<<10)
	for i := 0; valueOf(ts.srv.metrics.connections.WithLabelValues("sse")) == 1; i++ {
		if i > 2000 {
			t.Fatal("the slow SSE stream is still open after 2000 messages of 8 KiB")
		}
		if _, err := ts.bus.Publish(context.Background(), "slowsse", fanout.Publication{Data: []byte(fmt.Sprintf(`{"i":%d,"pad":%q}`, i, pad))}); err != nil {
			t.Fatal(err)
		}
		if i%64 == 63 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	fast.check(t, "a slow SSE consumer")
}
