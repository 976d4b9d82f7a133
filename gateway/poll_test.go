package gateway

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// valueOf reads a gauge.
func valueOf(g prometheus.Gauge) float64 {
	var m dto.Metric
	g.Write(&m)
	return m.GetGauge().GetValue()
}

// requirePoller skips a test of the poller where there is none (not Linux:
// other systems keep a reader goroutine per session), except under
// CI=true, where it fails: CI runs on Linux, and a poller test that does
// not run there proves nothing.
func requirePoller(t testing.TB) {
	t.Helper()
	if runtime.GOOS == "linux" {
		return
	}
	const msg = "the poller is Linux's epoll; other systems keep a reader goroutine per session"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// startPolled starts a server with the poller (whatever PARLEY_NOPOLLER
// says) and a registry, and skips where there is no poller.
func startPolled(t *testing.T, mod func(*Config)) (*testServer, *prometheus.Registry) {
	t.Helper()
	requirePoller(t)
	reg := prometheus.NewRegistry()
	ts := startServer(t, func(c *Config) {
		c.NoPoller = false
		c.Registerer = reg
		if mod != nil {
			mod(c)
		}
	})
	if ts.srv.poller == nil {
		t.Fatal("no poller on Linux")
	}
	return ts, reg
}

// Idle WebSocket sessions hold no goroutine: 300 subscribed clients add a
// handful of goroutines to the node, not 300, and every one of them is
// still served: it gets a room's message, its commands are answered, and
// its ping is answered in time.
func TestPollerIdleSessionsHoldNoGoroutine(t *testing.T) {
	const n = 300
	ts, reg := startPolled(t, func(c *Config) { c.PingInterval = time.Second; c.PongTimeout = 10 * time.Second })
	before := runtime.NumGoroutine()
	conns := make([]*wsConn, n)
	for i := range conns {
		c := dialWS(t, ts.ws, nil)
		c.expect("welcome")
		c.send(map[string]any{"type": "subscribe", "id": "s", "room": "poll:idle"})
		c.expect("ack")
		conns[i] = c
	}
	waitFor(t, "the sessions to be polled, with no reader running", func() bool {
		return valueOf(ts.srv.metrics.polled[transportWS]) == n && valueOf(ts.srv.metrics.readers) == 0
	})
	// Writers linger for up to two heartbeat ticks after their last frame.
	time.Sleep(3 * time.Second / 4)
	grown := runtime.NumGoroutine() - before
	t.Logf("%d idle sessions: %d more goroutines in the process (server and clients)", n, grown)
	if grown > n/10 {
		t.Errorf("%d idle sessions grew the goroutines by %d, want O(1)", n, grown)
	}
	if got := valueOf(ts.srv.metrics.connections.WithLabelValues("ws")); got != n {
		t.Errorf("parley_connections{ws} = %v, want %d", got, n)
	}
	_ = reg

	publishAPI(t, ts, "poll:idle", `{"n":1}`)
	for i, c := range conns {
		// Heartbeat pings may come first: answered, as clients do.
		if m := c.nextAnswering(); m["type"] != "message" {
			t.Fatalf("conn %d: got %v, want the message", i, m)
		}
	}
	for _, c := range conns {
		c.send(map[string]any{"type": "unsubscribe", "id": "u", "room": "poll:idle"})
	}
	for i, c := range conns {
		if m := c.nextAnswering(); m["type"] != "ack" || m["id"] != "u" {
			t.Fatalf("conn %d: got %v, want the unsubscribe's ack", i, m)
		}
	}
	if got := counterValue(t, reg, "parley_heartbeat_timeouts_total"); got != 0 {
		t.Errorf("%v sessions closed for an unanswered ping, want none", got)
	}
}

// publishAPI publishes data to room through the HTTP API.
func publishAPI(t *testing.T, ts *testServer, room, data string) {
	t.Helper()
	req, _ := http.NewRequest("POST", ts.url+"/v1/rooms/"+room+"/messages", strings.NewReader(`{"data":`+data+`}`))
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		t.Fatalf("publish: %s", resp.Status)
	}
}

// A session that leaves no ping unanswered stays; one whose client stops
// answering is closed by the heartbeat, while it waits in the poller.
func TestPollerHeartbeat(t *testing.T) {
	ts, reg := startPolled(t, func(c *Config) { c.PingInterval = 100 * time.Millisecond; c.PongTimeout = 200 * time.Millisecond })
	silent := dialWS(t, ts.ws, nil)
	silent.expect("welcome")
	live := dialWS(t, ts.ws, nil)
	live.expect("welcome")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := live.nextErr(3 * time.Second)
			if err != nil {
				return
			}
			if m["type"] == "ping" {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				live.c.Write(ctx, websocket.MessageText, []byte(`{"type":"pong"}`))
				cancel()
			}
		}
	}()
	if code := silent.closeStatus(); code == -1 {
		t.Fatal("the silent client's session ended without a close frame")
	}
	if got := counterValue(t, reg, "parley_heartbeat_timeouts_total"); got != 1 {
		t.Errorf("heartbeat timeouts: %v, want 1", got)
	}
	time.Sleep(500 * time.Millisecond)
	live.c.CloseNow()
	<-done
	if got := counterValue(t, reg, "parley_heartbeat_timeouts_total"); got != 1 {
		t.Errorf("heartbeat timeouts after the answering client's 0.5 s more: %v, want still 1", got)
	}
	waitFor(t, "both sessions to be released", func() bool { return valueOf(ts.srv.metrics.polled[transportWS]) == 0 })
}

// rawWS is a WebSocket client on a bare TCP connection, to send frames as a
// client may: fragmented, split across writes, or half.
type rawWS struct {
	c  net.Conn
	br *bufio.Reader
}

// dialRaw opens a TCP connection to ts, closed when the test ends, and
// returns it with the address it dialled.
func dialRaw(t *testing.T, ts *testServer) (net.Conn, string) {
	t.Helper()
	addr := strings.TrimPrefix(ts.url, "http://")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, addr
}

func dialRawWS(t *testing.T, ts *testServer) *rawWS {
	t.Helper()
	c, addr := dialRaw(t, ts)
	fmt.Fprintf(c, "GET /v1/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: parley.v1\r\n\r\n", addr)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %s", resp.Status)
	}
	return &rawWS{c: c, br: br}
}

// maskedFrame encodes a masked client frame.
func maskedFrame(fin bool, opcode byte, payload []byte) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	default:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	}
	key := [4]byte{1, 2, 3, 4}
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// readText reads the server's next text message, skipping pings.
func (r *rawWS) readText(t *testing.T) string {
	t.Helper()
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		var h [2]byte
		if _, err := io.ReadFull(r.br, h[:]); err != nil {
			t.Fatalf("read: %v", err)
		}
		n := int(h[1] & 0x7f)
		switch n {
		case 126:
			var e [2]byte
			io.ReadFull(r.br, e[:])
			n = int(binary.BigEndian.Uint16(e[:]))
		case 127:
			var e [8]byte
			io.ReadFull(r.br, e[:])
			n = int(binary.BigEndian.Uint64(e[:]))
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(r.br, p); err != nil {
			t.Fatalf("read: %v", err)
		}
		if h[0]&0x0f == 1 {
			return string(p)
		}
	}
}

// Frames that arrive in pieces, a fragmented message, and a WebSocket ping
// of the client's are read whole by the poller's readers, with pauses
// between the pieces that leave the connection in the poller.
func TestPollerPartialAndFragmentedFrames(t *testing.T) {
	ts, _ := startPolled(t, nil)
	r := dialRawWS(t, ts)
	if m := r.readText(t); !strings.Contains(m, `"welcome"`) {
		t.Fatalf("got %s, want welcome", m)
	}
	// One frame in three writes.
	f := maskedFrame(true, 1, []byte(`{"type":"subscribe","id":"a","room":"poll:parts"}`))
	for _, part := range [][]byte{f[:1], f[1:9], f[9:]} {
		r.c.Write(part)
		time.Sleep(50 * time.Millisecond)
	}
	if m := r.readText(t); !strings.Contains(m, `"id":"a"`) {
		t.Fatalf("got %s, want the ack of a", m)
	}
	// A message in three fragments, with a client ping between them.
	msg := []byte(`{"type":"unsubscribe","id":"b","room":"poll:parts"}`)
	r.c.Write(maskedFrame(false, 1, msg[:10]))
	time.Sleep(50 * time.Millisecond)
	r.c.Write(maskedFrame(true, 9, []byte("hi")))
	r.c.Write(maskedFrame(false, 0, msg[10:30]))
	time.Sleep(50 * time.Millisecond)
	r.c.Write(maskedFrame(true, 0, msg[30:]))
	if m := r.readText(t); !strings.Contains(m, `"id":"b"`) {
		t.Fatalf("got %s, want the ack of b", m)
	}
	// Two whole frames in one write are both handled.
	two := append(maskedFrame(true, 1, []byte(`{"type":"subscribe","id":"c","room":"poll:parts"}`)),
		maskedFrame(true, 1, []byte(`{"type":"unsubscribe","id":"d","room":"poll:parts"}`))...)
	r.c.Write(two)
	got := r.readText(t)
	if !strings.Contains(got, `"id":"d"`) {
		got += r.readText(t)
	}
	if !strings.Contains(got, `"id":"c"`) || !strings.Contains(got, `"id":"d"`) {
		t.Fatalf("got %s, want the acks of c and d", got)
	}
}

// A client that sends half a frame and stops holds a reader for at most
// FrameTimeout, and is then closed; other clients are served meanwhile.
func TestPollerHalfFrame(t *testing.T) {
	const timeout = 300 * time.Millisecond
	ts, _ := startPolled(t, func(c *Config) { c.FrameTimeout = timeout })
	r := dialRawWS(t, ts)
	r.readText(t) // welcome
	f := maskedFrame(true, 1, []byte(`{"type":"subscribe","id":"a","room":"poll:half"}`))
	start := time.Now()
	r.c.Write(f[:8])

	other := dialWS(t, ts.ws, nil)
	other.expect("welcome")
	other.send(map[string]any{"type": "subscribe", "id": "s", "room": "poll:other"})
	other.expect("ack")

	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, r.br)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("waiting for the server to close: %v after %v", err, took)
	}
	if took < timeout-50*time.Millisecond || took > timeout+2*time.Second {
		t.Errorf("half a frame was cut after %v, want about %v", took, timeout)
	}
	waitFor(t, "the half-frame session to be released", func() bool { return valueOf(ts.srv.metrics.polled[transportWS]) == 1 })
}

// A session closed while it waits in the poller (by the node: a drain) is
// released: its presence leaves, and Shutdown returns.
func TestPollerCloseWhileIdle(t *testing.T) {
	ts, _ := startPolled(t, nil)
	watcher := dialWS(t, ts.ws, nil)
	watcher.expect("welcome")
	watcher.send(map[string]any{"type": "subscribe", "id": "w", "room": "poll:close", "presence": true})
	watcher.expect("ack")
	idle := dialWS(t, ts.ws, nil)
	welcome := idle.expect("welcome")
	idle.send(map[string]any{"type": "subscribe", "id": "i", "room": "poll:close", "presence": true})
	idle.expect("ack")
	for {
		m := watcher.next()
		if m["type"] == "presence" && m["event"] == "join" {
			break
		}
	}
	waitFor(t, "both sessions in the poller", func() bool {
		return valueOf(ts.srv.metrics.polled[transportWS]) == 2 && valueOf(ts.srv.metrics.readers) == 0
	})
	idle.c.CloseNow()
	for {
		m := watcher.next()
		if m["type"] == "presence" && m["event"] == "leave" {
			if m["session"] != welcome["session"] {
				t.Fatalf("leave of %v, want %v", m["session"], welcome["session"])
			}
			break
		}
	}
	// The watcher reads its drain notice and answers the close.
	go watcher.closeStatus()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a session in the poller: %v", err)
	}
	if got := valueOf(ts.srv.metrics.polled[transportWS]); got != 0 {
		t.Errorf(`parley_polled_sessions{transport="ws"} after Shutdown: %v`, got)
	}
}

// A client that says nothing for longer than FrameTimeout after its
// handshake, or between two commands, is not cut: only a frame that has
// begun to arrive is timed. (The first version read at once after the
// handshake, with the deadline set, and closed such clients.)
func TestPollerQuietClientStays(t *testing.T) {
	const timeout = 200 * time.Millisecond
	ts, _ := startPolled(t, func(c *Config) { c.FrameTimeout = timeout })
	c := dialWS(t, ts.ws, nil)
	c.expect("welcome")
	time.Sleep(3 * timeout)
	c.send(map[string]any{"type": "subscribe", "id": "a", "room": "poll:quiet"})
	c.expect("ack")
	time.Sleep(3 * timeout)
	c.send(map[string]any{"type": "unsubscribe", "id": "b", "room": "poll:quiet"})
	if m := c.expect("ack"); m["id"] != "b" {
		t.Fatalf("got %v, want the ack of b", m)
	}
}
