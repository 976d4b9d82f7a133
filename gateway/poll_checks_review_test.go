package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// Frames sent with the handshake, in the same write (net/http reads them
// with the request: the prefix), are all answered; and so is a frame whose
// first half came with the handshake and whose rest comes later.
func TestPollerReviewPipelinedAfterHandshake(t *testing.T) {
	requirePoller(t)
	ts, _ := startPolled(t, nil)
	addr := strings.TrimPrefix(ts.url, "http://")
	for _, tc := range []struct {
		name  string
		split int // bytes of the last frame sent after a pause; 0: none
	}{
		{"whole frames", 0},
		{"a frame split", 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var req []byte
			req = fmt.Appendf(req, "GET /v1/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
				"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: parley.v1\r\n\r\n", addr)
			for _, id := range []string{"a", "b", "c"} {
				req = append(req, maskedFrame(true, 1, fmt.Appendf(nil, `{"type":"subscribe","id":%q,"room":"review:pipe"}`, id))...)
			}
			rest := req[len(req)-tc.split:]
			c.Write(req[:len(req)-tc.split])
			if tc.split > 0 {
				time.Sleep(100 * time.Millisecond)
				c.Write(rest)
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("handshake: %v %v", resp, err)
			}
			r := &rawWS{c: c, br: br}
			var got string
			for !strings.Contains(got, `"id":"c"`) {
				got += r.readText(t)
			}
			for _, id := range []string{"a", "b", "c"} {
				if !strings.Contains(got, fmt.Sprintf(`"id":%q`, id)) {
					t.Errorf("got %s, want the ack of %s", got, id)
				}
			}
		})
	}
}

// A WebSocket over TLS is served by a reader goroutine of its own, not by
// the poller, and works.
func TestPollerReviewTLSFallsBack(t *testing.T) {
	requirePoller(t)
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	defer bus.Close()
	srv, err := New(Config{Bus: bus, NodeID: "review", DrainTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if srv.poller == nil {
		t.Fatal("no poller")
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Config = srv.http
	hs.EnableHTTP2 = false
	hs.StartTLS()
	defer hs.Close()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client := hs.Client()
	client.Transport.(*http.Transport).TLSClientConfig.NextProtos = []string{"http/1.1"}
	c, _, err := websocket.Dial(ctx, "wss"+strings.TrimPrefix(hs.URL, "https")+"/v1/ws",
		&websocket.DialOptions{Subprotocols: []string{Subprotocol}, HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	w := &wsConn{t: t, c: c}
	w.expect("welcome")
	w.send(map[string]any{"type": "subscribe", "id": "t", "room": "review:tls"})
	w.expect("ack")
	if got := valueOf(srv.metrics.polled[transportWS]); got != 0 {
		t.Errorf(`parley_polled_sessions{transport="ws"} with one TLS session: %v, want 0`, got)
	}
	_ = tls.VersionTLS13
}

// A session in the poller is finished, its presence left, when the party
// that ends it is the client (close frame, FIN, RST) or the node (a slow
// consumer close from the hub).
func TestPollerReviewEveryCloseFinishes(t *testing.T) {
	requirePoller(t)
	for _, tc := range []struct {
		name string
		end  func(t *testing.T, ts *testServer, idle *wsConn, raw net.Conn)
	}{
		{"client close frame", func(t *testing.T, ts *testServer, idle *wsConn, raw net.Conn) {
			idle.c.Close(websocket.StatusNormalClosure, "")
		}},
		{"client RST", func(t *testing.T, ts *testServer, idle *wsConn, raw net.Conn) {
			raw.(*net.TCPConn).SetLinger(0)
			raw.Close()
		}},
		{"slow consumer", func(t *testing.T, ts *testServer, idle *wsConn, raw net.Conn) {
			// idle reads nothing: loopback buffers fill, then its queue.
			data := []byte(`{"pad":"` + strings.Repeat("x", 60<<10) + `"}`)
			for range 2000 {
				if valueOf(ts.srv.metrics.connections.WithLabelValues("ws")) < 2 {
					return
				}
				ts.bus.Publish(context.Background(), "review:close", fanout.Publication{Data: data})
			}
		}},
	} {
		for _, noPoller := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/nopoller=%v", tc.name, noPoller), func(t *testing.T) {
				ts := startServer(t, func(c *Config) { c.QueueLimit = 64 << 10; c.NoPoller = noPoller })
				polled := func(n float64) bool { return noPoller || valueOf(ts.srv.metrics.polled[transportWS]) == n }
				watcher := dialWS(t, ts.ws, nil)
				watcher.expect("welcome")
				watcher.send(map[string]any{"type": "subscribe", "id": "w", "room": "review:close-watch", "presence": true})
				watcher.expect("ack")

				// The idle client is dialled on a connection the test holds, so
				// that it can reset it and stop reading it.
				var raw net.Conn
				hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
					raw = c
					if tc, ok := c.(*net.TCPConn); ok {
						tc.SetReadBuffer(4 << 10)
					}
					return c, err
				}}}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				c, _, err := websocket.Dial(ctx, ts.ws, &websocket.DialOptions{Subprotocols: []string{Subprotocol}, HTTPClient: hc})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.CloseNow() })
				idle := &wsConn{t: t, c: c}
				idle.expect("welcome")
				idle.send(map[string]any{"type": "subscribe", "id": "i", "room": "review:close-watch", "presence": true})
				idle.expect("ack")
				idle.send(map[string]any{"type": "subscribe", "id": "j", "room": "review:close"})
				idle.expect("ack")
				for {
					if m := watcher.next(); m["type"] == "presence" && m["event"] == "join" {
						break
					}
				}
				waitFor(t, "both sessions in the poller", func() bool {
					return polled(2) && valueOf(ts.srv.metrics.readers) == 0
				})
				start := time.Now()
				tc.end(t, ts, idle, raw)
				for {
					m, err := watcher.nextErr(20 * time.Second)
					if err != nil {
						t.Fatalf("no presence leave of the ended session: %v", err)
					}
					if m["type"] == "presence" && m["event"] == "leave" {
						break
					}
				}
				t.Logf("presence leave %v after the end", time.Since(start).Round(time.Millisecond))
				waitFor(t, "the session to be released", func() bool {
					return polled(1) && valueOf(ts.srv.metrics.connections.WithLabelValues("ws")) == 1
				})
			})
		}
	}
}

// Shutdown with many idle sessions in the poller returns within the drain
// window and a little, as without the poller.
func TestPollerReviewShutdownManyIdle(t *testing.T) {
	requirePoller(t)
	for _, noPoller := range []bool{false, true} {
		t.Run(fmt.Sprintf("nopoller=%v", noPoller), func(t *testing.T) {
			ts := startServer(t, func(c *Config) { c.NoPoller = noPoller; c.DrainTimeout = 500 * time.Millisecond })
			const n = 200
			done := make(chan struct{}, n)
			for range n {
				c := dialWS(t, ts.ws, nil)
				c.expect("welcome")
				go func() {
					// Reads the drain notice and answers the close.
					for {
						if _, err := c.nextErr(10 * time.Second); err != nil {
							break
						}
					}
					done <- struct{}{}
				}()
			}
			if !noPoller {
				waitFor(t, "every session in the poller", func() bool { return valueOf(ts.srv.metrics.polled[transportWS]) == n })
			}
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := ts.srv.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			took := time.Since(start)
			t.Logf("Shutdown with %d idle sessions took %v", n, took)
			if took > 3*time.Second {
				t.Errorf("Shutdown took %v, want about the drain window (500ms)", took)
			}
			for range n {
				<-done
			}
		})
	}
}

// A command sent the moment the previous one's answer arrives reaches the
// node while its reader is between its last Read and the re-arm (the answer
// is written while handle runs): the level-triggered re-arm reports it, and
// no command waits. Thousands of round trips, each bounded.
func TestPollerReviewRoundTripsRaceReArm(t *testing.T) {
	requirePoller(t)
	ts, _ := startPolled(t, nil)
	c := dialWS(t, ts.ws, nil)
	c.expect("welcome")
	for i := range 3000 {
		c.send(map[string]any{"type": "presence", "id": fmt.Sprint(i), "room": "review:rt"})
		m, err := c.nextErr(2 * time.Second)
		if err != nil {
			t.Fatalf("round trip %d: %v", i, err)
		}
		if m["id"] != fmt.Sprint(i) {
			t.Fatalf("round trip %d: got %v", i, m)
		}
	}
}
