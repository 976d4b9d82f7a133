package gateway

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// refreshSecret signs the tokens of the refresh tests.
var refreshSecret = []byte("refresh-secret")

// startRefreshServer starts a node that checks tokens, with a heartbeat tick
// every 100ms, so a session ends within a tick of its token's expiry.
func startRefreshServer(t *testing.T) *testServer {
	t.Helper()
	return startServer(t, func(c *Config) {
		c.JWTSecret = refreshSecret
		c.PingInterval = 400 * time.Millisecond
	})
}

// briefToken mints a token for user that the node accepts for life from now,
// its 5 s leeway included (less up to a second: exp is whole seconds). It
// returns the token and when the node stops accepting it.
func briefToken(t *testing.T, secret []byte, user string, life time.Duration) (string, time.Time) {
	t.Helper()
	now := time.Now()
	tok, err := MintToken(secret, user, life-tokenLeeway, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	return tok, time.Unix(now.Add(life-tokenLeeway).Unix(), 0).Add(tokenLeeway)
}

// A WebSocket session that refreshes its token before it expires outlives
// the first token: it keeps its subscription and gets every message published
// across the old expiry, with no resubscribe and no replay, and a presence
// watcher sees no leave or join.
func TestRefreshKeepsSession(t *testing.T) {
	ts := startRefreshServer(t)
	const room = "chat:refresh"

	watcherTok, _ := briefToken(t, refreshSecret, "watcher", time.Hour)
	watcher := dialWS(t, ts.ws+"?token="+watcherTok, nil)
	watcher.expect("welcome")
	watcher.send(map[string]any{"type": "subscribe", "id": "w", "room": room, "presence": true})
	if ack := watcher.expect("ack"); ack["id"] != "w" {
		t.Fatalf("watcher: got %v, want the subscribe ack", ack)
	}

	tok, oldExpiry := briefToken(t, refreshSecret, "alice", 2*time.Second)
	w := dialWS(t, ts.ws+"?token="+tok, nil)
	welcome := w.expect("welcome")
	w.send(map[string]any{"type": "subscribe", "id": "1", "room": room, "presence": true})
	if ack := w.expect("ack"); ack["id"] != "1" {
		t.Fatalf("got %v, want the subscribe ack", ack)
	}
	// The watcher is told of alice's join once.
	for {
		f := watcher.next()
		if f["type"] == "presence" {
			if f["event"] != "join" || f["user"] != "alice" {
				t.Fatalf("watcher: got %v, want alice's join", f)
			}
			break
		}
	}

	// Messages are published every 50ms from now until a second past the
	// first token's expiry.
	total := int(time.Until(oldExpiry.Add(time.Second))/(50*time.Millisecond)) + 1
	go func() {
		for n := 1; n <= total; n++ {
			if _, err := ts.bus.Publish(context.Background(), room, fanout.Publication{Data: []byte(strconv.Itoa(n))}); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	fresh, err := MintToken(refreshSecret, "alice", time.Hour, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	w.send(map[string]any{"type": "refresh", "id": "9", "token": fresh})

	var offsets []uint64
	acks := 0
	for len(offsets) < total {
		f, err := w.nextErr(3 * time.Second)
		if err != nil {
			t.Fatalf("after %d messages: %v (close %v), want the session to go on", len(offsets), err, websocket.CloseStatus(err))
		}
		switch f["type"] {
		case "message":
			offsets = append(offsets, uint64(f["offset"].(float64)))
		case "ack":
			acks++
			want := float64(time.Now().Add(time.Hour).Unix())
			if f["id"] != "9" || acks > 1 {
				t.Fatalf("got ack %v, want one ack, for the refresh (no resubscribe)", f)
			}
			if exp, _ := f["expires"].(float64); exp < want-5 || exp > want+1 {
				t.Errorf("refresh ack expires: got %v, want the new token's exp (about %v)", f["expires"], want)
			}
		case "error", "welcome":
			t.Fatalf("got %v, want only messages and the refresh ack", f)
		}
	}
	if acks != 1 {
		t.Errorf("refresh acks: got %d, want 1", acks)
	}
	if time.Now().Before(oldExpiry) {
		t.Fatalf("the test ended before the first token expired")
	}
	for i, off := range offsets {
		if off != uint64(i+1) {
			t.Fatalf("offsets: got %v, want 1..%d with no gap or repeat", offsets, total)
		}
	}
	// Still the same session, still allowed to publish.
	w.send(map[string]any{"type": "publish", "id": "p", "room": room, "data": "after"})
	for {
		f := w.next()
		if f["type"] == "ack" {
			if f["id"] != "p" {
				t.Fatalf("got %v, want the publish ack", f)
			}
			break
		}
		if f["type"] == "error" {
			t.Fatalf("publish after the refresh: got %v", f)
		}
	}
	// The watcher saw every message and no presence change of alice's.
	for {
		f, err := watcher.nextErr(300 * time.Millisecond)
		if err != nil {
			break
		}
		if f["type"] == "presence" {
			t.Errorf("watcher: got %v, want no presence change across the refresh (session %v)", f, welcome["session"])
		}
	}
}

// A refresh the node refuses ends nothing: the error names what is wrong,
// the session goes on under its old token, and ends when that one expires.
func TestRefreshRefused(t *testing.T) {
	ts := startRefreshServer(t)
	tok, oldExpiry := briefToken(t, refreshSecret, "alice", 2*time.Second)
	w := dialWS(t, ts.ws+"?token="+tok, nil)
	w.expect("welcome")

	forged, err := MintToken([]byte("another-secret"), "alice", time.Hour, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	expiredAt := time.Now().Add(-time.Minute)
	expired, err := MintToken(refreshSecret, "alice", -time.Minute, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	other, err := MintToken(refreshSecret, "mallory", time.Hour, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := MintToken(refreshSecret, "alice", time.Hour, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		token string
		code  string
		msg   string
	}{
		{name: "forged", token: forged, code: codeUnauthorized, msg: "token signature is not valid"},
		{name: "expired", token: expired, code: codeUnauthorized, msg: "token expired at " + time.Unix(expiredAt.Unix(), 0).UTC().Format(time.RFC3339)},
		{name: "another user's", token: other, code: codeForbidden, msg: "a refresh token must be for the same user"},
		// Past the burst of three, even a good token waits.
		{name: "a fourth at once", token: fresh, code: codeRateLimited, msg: "refreshing the token too fast"},
	}
	for i, tt := range tests {
		id := "r" + strconv.Itoa(i)
		w.send(map[string]any{"type": "refresh", "id": id, "token": tt.token})
		f := w.expect("error")
		if f["id"] != id || f["code"] != tt.code || f["message"] != tt.msg {
			t.Errorf("%s token: got %v, want %s %q for id %s", tt.name, f, tt.code, tt.msg, id)
		}
	}
	// The session goes on.
	w.send(map[string]any{"type": "subscribe", "id": "s", "room": "after"})
	if f := w.expect("ack"); f["id"] != "s" {
		t.Fatalf("got %v, want the subscribe ack", f)
	}
	// And ends when the first token expires.
	for {
		f, err := w.nextErr(5 * time.Second)
		if err != nil {
			if got := websocket.CloseStatus(err); got != websocket.StatusPolicyViolation {
				t.Fatalf("got close %v (%v), want 1008 when the first token expired", got, err)
			}
			break
		}
		if f["type"] == "error" {
			if f["code"] != codeUnauthorized || f["message"] != "token expired" {
				t.Fatalf("got %v, want unauthorized: token expired", f)
			}
			if now := time.Now(); now.Before(oldExpiry) || now.After(oldExpiry.Add(time.Second)) {
				t.Errorf("session ended at %v, want at the first token's expiry %v", now.Format(time.StampMilli), oldExpiry.Format(time.StampMilli))
			}
		}
	}
}

// A node in dev mode checks no token, so it refuses a refresh.
func TestRefreshDevMode(t *testing.T) {
	ts := startServer(t, nil)
	w := dialWS(t, ts.ws, nil)
	w.expect("welcome")
	w.send([]byte(`{"type":"refresh","id":"9","token":"a.b.c"}`))
	f := w.expect("error")
	want := map[string]any{"type": "error", "id": "9", "code": codeBadRequest, "message": "this node does not check tokens"}
	if got, _ := json.Marshal(f); string(got) != string(mustJSON(want)) {
		t.Errorf("got %s, want %s", got, mustJSON(want))
	}
}
