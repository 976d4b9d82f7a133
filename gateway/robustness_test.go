package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// A client may send its first frame the moment the handshake completes,
// before the welcome arrives; no byte of it may be lost.
func TestFirstFrameRightAfterHandshake(t *testing.T) {
	ts := startServer(t, nil)
	for i := range 60 {
		w := dialWS(t, ts.ws, nil)
		w.send(map[string]any{"type": "subscribe", "id": "s", "room": fmt.Sprintf("early:%d", i)})
		w.expect("welcome")
		if ack := w.expect("ack"); ack["id"] != "s" {
			t.Fatalf("dial %d: got %v, want the subscribe ack", i, ack)
		}
		w.c.Close(websocket.StatusNormalClosure, "")
	}
}

// With the default ratio of pong timeout to write timeout (the pong timeout
// not shorter), a silent client still gets the 1001 close frame.
func TestHeartbeatCloseAfterWriteTimeout(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.PingInterval = 400 * time.Millisecond
		c.PongTimeout = 600 * time.Millisecond
		c.WriteTimeout = 300 * time.Millisecond
	})
	w := dialWS(t, ts.ws, nil)
	w.expect("welcome")
	w.expect("ping")
	if got := w.closeStatus(); got != websocket.StatusGoingAway {
		t.Fatalf("got close %v, want %v", got, websocket.StatusGoingAway)
	}
}

// The WebSocket library's own control writes (its pong to a client's ping)
// work after the session has been idle past the write timeout.
func TestClientPingAfterIdle(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.WriteTimeout = 100 * time.Millisecond })
	w := dialWS(t, ts.ws, nil)
	w.expect("welcome")
	time.Sleep(300 * time.Millisecond) // idle past the write timeout on purpose
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// Ping needs a reader to see the pong.
	go w.c.Read(ctx)
	if err := w.c.Ping(ctx); err != nil {
		t.Fatalf("ping after idle: %v", err)
	}
}

// Recovering more history than the queue bound holds is still a recovery,
// not a slow-consumer close that would repeat at every reconnect.
func TestLargeRecoveryIsNotASlowConsumer(t *testing.T) {
	const n, size = 1000, 2048
	ts := startServer(t, func(c *Config) { c.QueueLimit = 1 << 20 })
	room := "big:recovery"
	data := `{"pad":"` + strings.Repeat("x", size) + `"}`
	var epoch string
	for range n {
		res, err := ts.bus.Publish(context.Background(), room, fanout.Publication{Data: []byte(data)})
		if err != nil {
			t.Fatal(err)
		}
		epoch = res.Epoch
	}
	t.Run("websocket", func(t *testing.T) {
		w := dialWS(t, ts.ws, nil)
		w.expect("welcome")
		w.send(map[string]any{"type": "subscribe", "id": "r", "room": room, "since": fanout.Position{Epoch: epoch, Offset: 0}})
		if ack := w.expect("ack"); ack["recovered"] != true {
			t.Fatalf("got ack %v, want recovered", ack)
		}
		for i := 1; i <= n; i++ {
			m := w.expect("message")
			if got := uint64(m["offset"].(float64)); got != uint64(i) {
				t.Fatalf("got offset %d, want %d", got, i)
			}
		}
	})
	t.Run("sse", func(t *testing.T) {
		s := recOpenSSE(t, ts, room, cursor{room: {Epoch: epoch, Offset: 0}}.encode())
		s.open()
		s.welcome()
		for i := 1; i <= n; i++ {
			if m, _ := s.message(); m.offset != uint64(i) {
				t.Fatalf("got offset %d, want %d", m.offset, i)
			}
		}
	})
}

// Token holders get the same publish rate limit on the HTTP API as on a
// session; backends with the API key do not.
func TestAPIPublishRateLimit(t *testing.T) {
	ts := apiTestServer(t, func(c *Config) { c.PublishRate, c.PublishBurst = 1, 3 })
	tok := confToken(t, apiTestSecret, "flooder", nil)
	u := ts.url + "/v1/rooms/flood/messages"
	limited := 0
	for range 10 {
		resp, body := apiTestDo(t, http.MethodPost, u, tok, nil, `{"n":1}`)
		if resp.StatusCode == http.StatusTooManyRequests {
			apiTestCheckError(t, resp, body, http.StatusTooManyRequests, codeRateLimited)
			limited++
		}
	}
	if limited < 5 {
		t.Errorf("got %d of 10 rapid publishes rate limited, want at least 5", limited)
	}
	for range 10 {
		if resp, body := apiTestDo(t, http.MethodPost, u, apiTestKey, nil, `{"n":2}`); resp.StatusCode != http.StatusOK {
			t.Fatalf("backend publish: got %d %v, want 200", resp.StatusCode, body)
		}
	}
}

// The API key is a header credential only: in a URL it would land in logs.
func TestAPIKeyNotAcceptedInQuery(t *testing.T) {
	ts := apiTestServer(t, nil)
	resp, body := apiTestDo(t, http.MethodPost, ts.url+"/v1/rooms/q/messages?token="+apiTestKey, "", nil, `{"n":1}`)
	apiTestCheckError(t, resp, body, http.StatusUnauthorized, codeUnauthorized)
}

// A history page stops at its byte bound and says so.
func TestHistoryPageByteBound(t *testing.T) {
	ts := startServerWith(t, fanout.MemoryConfig{MaxRoomHistoryBytes: 64 << 20}, func(c *Config) {
		c.JWTSecret, c.APIKey = apiTestSecret, apiTestKey
	})
	room := "big:history"
	data := `{"pad":"` + strings.Repeat("y", 60<<10) + `"}`
	for range 80 {
		if _, err := ts.bus.Publish(context.Background(), room, fanout.Publication{Data: []byte(data)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{"limit=100", "since=0&limit=100"} {
		resp, body := apiTestDo(t, http.MethodGet, ts.url+"/v1/rooms/"+room+"/history?"+q, apiTestKey, nil, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: got %d, want 200", q, resp.StatusCode)
		}
		msgs := body["messages"].([]any)
		if body["truncated"] != true || len(msgs) == 0 || len(msgs) >= 80 {
			t.Errorf("%s: got %d messages, truncated %v; want fewer than 80 and truncated", q, len(msgs), body["truncated"])
		}
	}
}

// Subscribe churn is bounded per session, so one client cannot flood a
// room's presence watchers with joins and leaves.
func TestSubscribeChurnLimited(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxRoomsPerSession = 5 })
	w := dialWS(t, ts.ws, nil)
	w.expect("welcome")
	limited := 0
	for i := range 40 {
		typ := "subscribe"
		if i%2 == 1 {
			typ = "unsubscribe"
		}
		w.send(map[string]any{"type": typ, "id": fmt.Sprint(i), "room": "churn"})
	}
	for range 40 {
		f := w.next()
		if f["type"] == "error" && f["code"] == codeRateLimited {
			limited++
		}
	}
	if limited < 20 {
		t.Errorf("got %d of 40 rapid subscribe/unsubscribe commands rate limited, want at least 20 (limit 10 per second)", limited)
	}
}

// A session lasts as long as its token: when the token expires the client
// gets an unauthorized error and close 1008, over WebSocket and SSE.
func TestSessionEndsWhenTokenExpires(t *testing.T) {
	secret := []byte("expiry-secret")
	ts := startServer(t, func(c *Config) {
		c.JWTSecret = secret
		c.PingInterval = 400 * time.Millisecond // a heartbeat tick every 100ms
	})
	// The token is valid for the 5 s leeway past its exp, so it expires
	// about a second after the connection opens.
	tok, err := MintToken(secret, "brief", time.Second-tokenLeeway, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Run("websocket", func(t *testing.T) {
		w := dialWS(t, ts.ws+"?token="+tok, nil)
		w.expect("welcome")
		for {
			f, err := w.nextErr(5 * time.Second)
			if err != nil {
				if got := websocket.CloseStatus(err); got != websocket.StatusPolicyViolation {
					t.Fatalf("got close %v (%v), want 1008 after the token expired", got, err)
				}
				return
			}
			if f["type"] == "error" {
				if f["code"] != codeUnauthorized {
					t.Fatalf("got error %v, want unauthorized", f)
				}
				if got := w.closeStatus(); got != websocket.StatusPolicyViolation {
					t.Fatalf("got close %v, want 1008", got)
				}
				return
			}
		}
	})
	t.Run("sse", func(t *testing.T) {
		tok, err := MintToken(secret, "brief", time.Second-tokenLeeway, nil, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		// The stream is read as a browser's EventSource reads it: the error
		// is its own event, not a welcome, and then the stream ends.
		s := sseTestOpen(t, ts.url+"/v1/sse?rooms=brief&token="+tok, nil)
		s.start()
		start := time.Now()
		ev := s.next()
		for ev.event == "" && len(ev.comments) > 0 { // heartbeats
			ev = s.next()
		}
		var m map[string]any
		if ev.event != "error" || json.Unmarshal([]byte(ev.data), &m) != nil {
			t.Fatalf("got event %+v, want an error event with a JSON error frame", ev)
		}
		if m["type"] != "error" || m["code"] != codeUnauthorized || m["message"] != "token expired" {
			t.Errorf("error event data: got %s, want an unauthorized error frame saying the token expired", ev.data)
		}
		if ev.id != "" {
			t.Errorf("error event id: got %q, want none (an error moves no position)", ev.id)
		}
		s.expectEnd()
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("stream ended after %s, want about a second", took)
		}
	})
}

// WebSocket handshakes follow the same origin policy as SSE and the API: the
// page's own host, or a configured pattern.
func TestWebSocketOrigin(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Origins = []string{"*.example.com"} })
	host := strings.TrimPrefix(ts.url, "http://")
	tests := []struct {
		name   string
		origin string
		ok     bool
	}{
		{"no origin (not a browser)", "", true},
		{"own host", "http://" + host, true},
		{"allowed pattern", "https://app.example.com", true},
		{"foreign", "https://evil.test", false},
		{"pattern lookalike", "https://example.com.evil.test", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.origin != "" {
				h.Set("Origin", tt.origin)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, resp, err := websocket.Dial(ctx, ts.ws, &websocket.DialOptions{Subprotocols: []string{Subprotocol}, HTTPHeader: h})
			if tt.ok {
				if err != nil {
					t.Fatalf("got %v, want the handshake to succeed", err)
				}
				c.CloseNow()
				return
			}
			if err == nil {
				c.CloseNow()
				t.Fatal("handshake succeeded, want 403")
			}
			if resp == nil || resp.StatusCode != http.StatusForbidden {
				t.Fatalf("got %v (%v), want 403", resp, err)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"bad origin pattern", func(c *Config) { c.Origins = []string{"[a-"} }, "Config.Origins"},
		{"ping too short", func(c *Config) { c.PingInterval = time.Nanosecond }, "Config.PingInterval"},
		{"negative queue", func(c *Config) { c.QueueLimit = -1 }, "Config.QueueLimit"},
		{"no bus", func(c *Config) { c.Bus = nil }, "Config.Bus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bus := fanout.NewMemory(fanout.MemoryConfig{})
			defer bus.Close()
			cfg := Config{Bus: bus}
			tt.mod(&cfg)
			srv, err := New(cfg)
			if err == nil {
				srv.Shutdown(context.Background())
				t.Fatal("got no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error naming %s", err, tt.want)
			}
		})
	}
}
