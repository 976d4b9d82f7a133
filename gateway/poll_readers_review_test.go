package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// reviewRawDial opens a WebSocket on a bare TCP connection and returns it
// after the 101, without failing the test (it runs in goroutines).
func reviewRawDial(ts *testServer) (net.Conn, *bufio.Reader, error) {
	addr := strings.TrimPrefix(ts.url, "http://")
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(c, "GET /v1/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: parley.v1\r\n\r\n", addr)
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, nil, fmt.Errorf("handshake: %s", resp.Status)
	}
	c.SetReadDeadline(time.Time{})
	return c, br, nil
}

// reviewLiveClient answers every heartbeat ping of c until the connection
// ends, and returns the error that ended it.
func reviewLiveClient(c *websocket.Conn) <-chan error {
	ended := make(chan error, 1)
	go func() {
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				ended <- err
				return
			}
			if strings.Contains(string(b), `"type":"ping"`) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				c.Write(ctx, websocket.MessageText, []byte(`{"type":"pong"}`))
				cancel()
			}
		}
	}()
	return ended
}

// reviewHeartbeatSurvives runs a client that answers every ping for 3 s
// while hold keeps up to two other sessions' readers busy, and fails if the
// node closes the answering client.
func reviewHeartbeatSurvives(t *testing.T, ts *testServer, hold func(stop <-chan struct{})) {
	t.Helper()
	live := dialWS(t, ts.ws, nil)
	live.expect("welcome")
	ended := reviewLiveClient(live.c)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hold(stop)
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()
	select {
	case err := <-ended:
		t.Errorf("a client that answered every ping was closed while two other sessions' readers waited: %v (status %v); want it served", err, websocket.CloseStatus(err))
	case <-time.After(3 * time.Second):
	}
}

// halfFrames is a client that sends half a frame, waits for the node to cut
// it (FrameTimeout), and does it again until stop.
func halfFrames(ts *testServer) func(stop <-chan struct{}) {
	return func(stop <-chan struct{}) {
		f := maskedFrame(true, 1, []byte(`{"type":"subscribe","id":"a","room":"review:half"}`))
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, br, err := reviewRawDial(ts)
			if err != nil {
				return
			}
			c.Write(f[:8])
			go func() { <-stop; c.Close() }()
			io.Copy(io.Discard, br) // until the node cuts it
			c.Close()
		}
	}
}

// With MaxReaders readers waiting for the rest of a frame (a slowloris, or
// any client on a slow link), the poller's one goroutine blocks on the
// slots, and no other session is read: the answers of clients that do answer
// their heartbeat pings wait unread, and the node closes them for a
// heartbeat timeout. FrameTimeout is at least PongTimeout by default, so
// MaxReaders such connections (4096 by default: five addresses at
// MaxConnsPerIP) cut every other client off. With a reader goroutine per
// session (NoPoller) the same clients cost only their own goroutines.
func TestPollerReviewHalfFramesStallHeartbeats(t *testing.T) {
	for _, tc := range []struct {
		name     string
		noPoller bool
	}{
		{"poller", false},
		{"nopoller", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.noPoller {
				requirePoller(t)
			}
			ts := startServer(t, func(c *Config) {
				c.NoPoller = tc.noPoller
				c.MaxReaders = 2
				c.PingInterval = 200 * time.Millisecond
				c.PongTimeout = 400 * time.Millisecond
				// FrameTimeout: its default, PingInterval+PongTimeout.
			})
			reviewHeartbeatSurvives(t, ts, halfFrames(ts))
		})
	}
}

// slowBus is a Memory whose Publish takes a second, as a Redis bus does
// when Redis stalls (commandTimeout allows ten).
type slowBus struct {
	*fanout.Memory
}

func (b slowBus) Publish(ctx context.Context, room string, p fanout.Publication) (fanout.PublishResult, error) {
	select {
	case <-time.After(time.Second):
	case <-ctx.Done():
		return fanout.PublishResult{}, ctx.Err()
	}
	return b.Memory.Publish(ctx, room, p)
}

// A slow bus call inside handle holds the reader too: MaxReaders clients
// publishing while the bus is slow stop the reading of every other session,
// whose heartbeat answers then go unread past PongTimeout.
func TestPollerReviewSlowBusStallsHeartbeats(t *testing.T) {
	for _, tc := range []struct {
		name     string
		noPoller bool
	}{
		{"poller", false},
		{"nopoller", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.noPoller {
				requirePoller(t)
			}
			ts := startServer(t, func(c *Config) {
				c.Bus = slowBus{fanout.NewMemory(fanout.MemoryConfig{})}
				c.NoPoller = tc.noPoller
				c.MaxReaders = 2
				c.PingInterval = 200 * time.Millisecond
				c.PongTimeout = 400 * time.Millisecond
			})
			t.Cleanup(func() { ts.srv.cfg.Bus.(slowBus).Close() })
			reviewHeartbeatSurvives(t, ts, func(stop <-chan struct{}) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				c, _, err := websocket.Dial(ctx, ts.ws, &websocket.DialOptions{Subprotocols: []string{Subprotocol}})
				if err != nil {
					return
				}
				defer c.CloseNow()
				ended := reviewLiveClient(c)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-ended:
						return
					case <-time.After(50 * time.Millisecond):
					}
					wctx, wcancel := context.WithTimeout(context.Background(), time.Second)
					err := c.Write(wctx, websocket.MessageText, fmt.Appendf(nil, `{"type":"publish","id":"p%d","room":"review:slow","data":{}}`, i))
					wcancel()
					if err != nil && !errors.Is(err, context.DeadlineExceeded) {
						return
					}
				}
			})
		})
	}
}

// A client that sends WebSocket pings of its own (as many non-browser
// libraries do by default) and is subscribed to a busy room is cut after
// FrameTimeout: the node writes to it all the time, so its heartbeat never
// pings it and it has no data frame to send, while the reader that its
// WebSocket ping woke waits inside Read for a data message under
// FrameTimeout's deadline. With a reader goroutine per session it stays.
func TestPollerReviewClientPingOnBusyRoomCut(t *testing.T) {
	for _, tc := range []struct {
		name     string
		noPoller bool
	}{
		{"poller", false},
		{"nopoller", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.noPoller {
				requirePoller(t)
			}
			ts := startServer(t, func(c *Config) {
				c.NoPoller = tc.noPoller
				c.PingInterval = 200 * time.Millisecond
				c.PongTimeout = 200 * time.Millisecond
				// FrameTimeout: its default, 400ms.
			})
			c := dialWS(t, ts.ws, nil)
			c.expect("welcome")
			c.send(map[string]any{"type": "subscribe", "id": "s", "room": "review:busy"})
			c.expect("ack")
			ended := reviewLiveClient(c.c) // reads the room's messages, answers pings

			stop := make(chan struct{})
			pubDone := make(chan struct{})
			go func() {
				defer close(pubDone)
				for {
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
					ts.bus.Publish(context.Background(), "review:busy", fanout.Publication{Data: []byte(`{}`)})
				}
			}()
			defer func() { close(stop); <-pubDone }()

			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := c.c.Ping(ctx) // the client's own keepalive
			cancel()
			if err != nil {
				t.Fatalf("ping: %v", err)
			}
			select {
			case err := <-ended:
				t.Errorf("a client reading a busy room was closed after its WebSocket ping: %v (status %v); want it served", err, websocket.CloseStatus(err))
			case <-time.After(2 * time.Second):
			}
		})
	}
}
