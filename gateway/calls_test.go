package gateway

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// callConn is a WebSocket client in calls: a goroutine reads its frames
// (a read that times out would close a coder/websocket connection), and
// frames a test does not ask for yet are kept.
type callConn struct {
	*wsConn
	frames chan map[string]any
	kept   []map[string]any
}

func dialCall(t *testing.T, ts *testServer, token string) *callConn {
	t.Helper()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	w := dialWS(t, ts.ws, h)
	w.expect("welcome")
	c := &callConn{wsConn: w, frames: make(chan map[string]any, 1024)}
	go func() {
		defer close(c.frames)
		for {
			f, err := w.nextErr(time.Hour)
			if err != nil {
				return
			}
			c.frames <- f
		}
	}()
	return c
}

// wait returns the first frame that match accepts, reading for up to d.
func (c *callConn) wait(d time.Duration, match func(map[string]any) bool) (map[string]any, bool) {
	for i, f := range c.kept {
		if match(f) {
			c.kept = append(c.kept[:i:i], c.kept[i+1:]...)
			return f, true
		}
	}
	timeout := time.After(d)
	for {
		select {
		case f, ok := <-c.frames:
			if !ok {
				return nil, false
			}
			if match(f) {
				return f, true
			}
			c.kept = append(c.kept, f)
		case <-timeout:
			return nil, false
		}
	}
}

func (c *callConn) must(what string, match func(map[string]any) bool) map[string]any {
	c.t.Helper()
	f, ok := c.wait(5*time.Second, match)
	if !ok {
		c.t.Fatalf("no %s within 5s (kept %v)", what, c.kept)
	}
	return f
}

// command sends a frame with an id and returns the ack or error for it.
func (c *callConn) command(f map[string]any) map[string]any {
	c.t.Helper()
	id := fmt.Sprint(time.Now().UnixNano())
	f["id"] = id
	c.send(f)
	return c.must("reply to "+fmt.Sprint(f["type"]), func(m map[string]any) bool {
		return m["id"] == id && (m["type"] == "ack" || m["type"] == "error")
	})
}

func (c *callConn) join(call, resume string) map[string]any {
	c.t.Helper()
	f := map[string]any{"type": "join", "call": call}
	if resume != "" {
		f["resume"] = resume
	}
	a := c.command(f)
	if a["type"] != "ack" {
		c.t.Fatalf("join %s: %v", call, a)
	}
	return a
}

func peerEvent(event, session string) func(map[string]any) bool {
	return func(m map[string]any) bool {
		return m["type"] == "peer" && m["event"] == event && m["session"] == session
	}
}

func signalFrom(session string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["type"] == "signal" && m["from"] == session }
}

const (
	testOffer = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n" +
		"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\n" +
		"a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n" +
		"a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\n"
	testCandidate = "candidate:1 1 udp 2122260223 192.0.2.10 50000 typ host"
)

func TestCallOverWebSocket(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.JWTSecret = apiTestSecret
		c.ICE = &ICE{STUN: []string{"stun:127.0.0.1:3478"}, TURN: []string{"turn:127.0.0.1:3478?transport=udp"}, Secret: "x", TTL: time.Hour}
	})
	alice := dialCall(t, ts, confToken(t, apiTestSecret, "alice", nil))
	bob := dialCall(t, ts, relayToken(t, "bob"))

	a := alice.join("standup", "")
	if a["resumed"] != false || a["resume"] == "" || a["session"] == "" || len(a["peers"].([]any)) != 0 {
		t.Fatalf("first join ack: %v", a)
	}
	if _, ok := a["relay"]; ok {
		t.Errorf("alice's token has no relay claim, ack says relay: %v", a["relay"])
	}
	servers, _ := a["iceServers"].([]any)
	if len(servers) != 2 || a["ice_ttl"] != float64(3600) {
		t.Errorf("join ack ICE servers: %v (ttl %v), want STUN and TURN for an hour", a["iceServers"], a["ice_ttl"])
	}
	b := bob.join("standup", "")
	if b["relay"] != true {
		t.Errorf("bob's token has relay: true, ack says %v", b["relay"])
	}
	peers := b["peers"].([]any)
	if len(peers) != 1 || peers[0].(map[string]any)["session"] != a["session"] || peers[0].(map[string]any)["user"] != "alice" {
		t.Fatalf("bob's peers: %v, want alice", peers)
	}
	ev := alice.must("peer join of bob", peerEvent("join", b["session"].(string)))
	if ev["polite"] == peers[0].(map[string]any)["polite"] {
		t.Errorf("alice and bob have the same role toward each other (%v)", ev["polite"])
	}

	offer := map[string]any{"sdp": map[string]any{"type": "offer", "sdp": testOffer}, "extra": "dropped"}
	if r := alice.command(map[string]any{"type": "signal", "call": "standup", "to": b["session"], "data": offer}); r["type"] != "ack" {
		t.Fatalf("signal: %v", r)
	}
	got := bob.must("the offer", signalFrom(a["session"].(string)))
	data := got["data"].(map[string]any)
	if got["call"] != "standup" || data["sdp"].(map[string]any)["sdp"] != testOffer {
		t.Errorf("relayed offer: %v", got)
	}
	if _, ok := data["extra"]; ok {
		t.Errorf("a field the protocol does not name was relayed: %v", data)
	}
	if r := bob.command(map[string]any{"type": "leave", "call": "standup"}); r["type"] != "ack" {
		t.Fatalf("leave: %v", r)
	}
	alice.must("peer leave of bob", peerEvent("leave", b["session"].(string)))
}

// relayToken is a token for user whose calls must use TURN only.
func relayToken(t *testing.T, user string) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": user, "exp": time.Now().Add(time.Hour).Unix(), "relay": true}).SignedString(apiTestSecret)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestCallBadInput(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.JWTSecret = apiTestSecret
		c.Calls.SignalRate = 1000
	})
	alice := dialCall(t, ts, confToken(t, apiTestSecret, "alice", &Permissions{Call: []string{"team:*"}}))
	bob := dialCall(t, ts, confToken(t, apiTestSecret, "bob", nil))
	carol := dialCall(t, ts, confToken(t, apiTestSecret, "carol", nil))
	a := alice.join("team:1", "")
	b := bob.join("team:1", "")
	carol.join("team:2", "")
	bobID, aliceID := b["session"].(string), a["session"].(string)

	sig := func(data any) map[string]any {
		return map[string]any{"type": "signal", "call": "team:1", "to": bobID, "data": data}
	}
	offer := func(typ, sdp string) map[string]any {
		return map[string]any{"sdp": map[string]any{"type": typ, "sdp": sdp}}
	}
	tests := []struct {
		name  string
		conn  *callConn
		frame map[string]any
		code  string
	}{
		{"join without permission", alice, map[string]any{"type": "join", "call": "other"}, "forbidden"},
		{"join without call", alice, map[string]any{"type": "join"}, "bad_request"},
		{"join with a bad call name", alice, map[string]any{"type": "join", "call": "a b"}, "bad_room"},
		{"join with a call that is not a string", alice, map[string]any{"type": "join", "call": 7}, "bad_request"},
		{"join twice", alice, map[string]any{"type": "join", "call": "team:1"}, "bad_request"},
		{"join with a forged resume token", carol, map[string]any{"type": "join", "call": "team:3", "resume": "not-a-token"}, "bad_request"},
		{"signal without to", alice, map[string]any{"type": "signal", "call": "team:1", "data": offer("offer", testOffer)}, "bad_request"},
		{"signal without data", alice, map[string]any{"type": "signal", "call": "team:1", "to": bobID}, "bad_request"},
		{"signal of SDP garbage", alice, sig(offer("offer", "this is not SDP")), "bad_request"},
		{"signal of an unknown SDP type", alice, sig(offer("surprise", testOffer)), "bad_request"},
		{"signal of neither SDP nor candidate", alice, sig(map[string]any{"hello": 1}), "bad_request"},
		{"signal of a broken candidate", alice, sig(map[string]any{"candidate": map[string]any{"candidate": "candidate:garbage"}}), "bad_request"},
		{"signal of a string", alice, sig("hi"), "bad_request"},
		{"signal to a peer of another call", carol, map[string]any{"type": "signal", "call": "team:2", "to": bobID, "data": offer("offer", testOffer)}, "not_found"},
		{"signal to nobody", alice, map[string]any{"type": "signal", "call": "team:1", "to": "feedface", "data": offer("offer", testOffer)}, "not_found"},
		{"signal in a call not joined", carol, sig(offer("offer", testOffer)), "not_found"},
		{"signal to itself", alice, map[string]any{"type": "signal", "call": "team:1", "to": aliceID, "data": offer("offer", testOffer)}, "bad_request"},
		{"leave a call not joined", carol, map[string]any{"type": "leave", "call": "team:1"}, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.conn.t = t
			r := tt.conn.command(tt.frame)
			if r["type"] != "error" || r["code"] != tt.code {
				t.Fatalf("got %v, want error %s", r, tt.code)
			}
			if m, _ := r["message"].(string); m == "" {
				t.Errorf("error without a message: %v", r)
			}
		})
	}
	bob.t = t
	if f, ok := bob.wait(200*time.Millisecond, func(m map[string]any) bool { return m["type"] == "signal" }); ok {
		t.Errorf("a refused signal was relayed: %v", f)
	}
}

func TestCallSignalFlood(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Calls.SignalRate = 5 })
	alice, bob := dialCall(t, ts, ""), dialCall(t, ts, "")
	alice.join("flood", "")
	b := bob.join("flood", "")
	limited := 0
	for i := range 60 {
		cand := map[string]any{"candidate": map[string]any{"candidate": strings.Replace(testCandidate, "50000", fmt.Sprint(50000+i), 1), "sdpMid": "0", "sdpMLineIndex": 0}}
		r := alice.command(map[string]any{"type": "signal", "call": "flood", "to": b["session"], "data": cand})
		if r["type"] == "error" {
			if r["code"] != "rate_limited" {
				t.Fatalf("signal %d: %v", i, r)
			}
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("60 signals at once at 5/s (burst 20): none refused")
	}
}

func TestCallResumeAndGrace(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Calls.Grace = time.Second })
	alice, bob := dialCall(t, ts, ""), dialCall(t, ts, "")
	a := alice.join("c", "")
	b := bob.join("c", "")
	bobID := b["session"].(string)
	alice.must("peer join", peerEvent("join", bobID))

	// Bob's connection drops; alice signals meanwhile; bob rejoins on a
	// new connection with his token within the grace period.
	bob.c.CloseNow()
	// What was on its way to the dropped connection is lost with it; what
	// is sent once the node knows it dropped is held.
	waitFor(t, "the node to see bob's connection close", func() bool {
		ts.srv.sessMu.Lock()
		defer ts.srv.sessMu.Unlock()
		return len(ts.srv.sessions) == 1
	})
	for i := range 5 {
		cand := map[string]any{"candidate": map[string]any{"candidate": strings.Replace(testCandidate, "50000", fmt.Sprint(50000+i), 1), "sdpMid": "0", "sdpMLineIndex": 0}}
		if r := alice.command(map[string]any{"type": "signal", "call": "c", "to": bobID, "data": cand}); r["type"] != "ack" {
			t.Fatalf("signal to an away peer: %v", r)
		}
	}
	bob2 := dialCall(t, ts, "")
	r := bob2.join("c", b["resume"].(string))
	if r["resumed"] != true || r["session"] != bobID {
		t.Fatalf("rejoin: %v, want resumed as %s", r, bobID)
	}
	for i := range 5 {
		f := bob2.must("a held signal", signalFrom(a["session"].(string)))
		if !strings.Contains(fmt.Sprint(f["data"]), fmt.Sprint(50000+i)) {
			t.Fatalf("held signal %d: %v", i, f)
		}
	}
	if f, ok := alice.wait(1500*time.Millisecond, peerEvent("leave", bobID)); ok {
		t.Fatalf("alice saw bob leave though he rejoined in time: %v", f)
	}

	// Now his connection drops for good: alice hears of it after the
	// grace period.
	start := time.Now()
	bob2.c.CloseNow()
	alice.must("peer leave after the grace period", peerEvent("leave", bobID))
	if d := time.Since(start); d < 900*time.Millisecond || d > 4*time.Second {
		t.Errorf("leave came %v after the drop, grace 1s", d)
	}
	late := dialCall(t, ts, "")
	if r := late.join("c", r["resume"].(string)); r["resumed"] != false || r["session"] == bobID {
		t.Errorf("late rejoin: %v, want resumed false and a new session", r)
	}
}

// A session whose refreshed token no longer allows a call may not signal in
// it any more: the refresh takes effect for every command from then on.
func TestCallRefreshTakesCallAway(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.JWTSecret = apiTestSecret })
	alice := dialCall(t, ts, confToken(t, apiTestSecret, "alice", &Permissions{Call: []string{"team:*"}}))
	bob := dialCall(t, ts, confToken(t, apiTestSecret, "bob", nil))
	alice.join("team:1", "")
	b := bob.join("team:1", "")
	cand := map[string]any{"candidate": map[string]any{"candidate": testCandidate, "sdpMid": "0", "sdpMLineIndex": 0}}
	if r := alice.command(map[string]any{"type": "signal", "call": "team:1", "to": b["session"], "data": cand}); r["type"] != "ack" {
		t.Fatalf("signal before the refresh: %v", r)
	}
	tok := confToken(t, apiTestSecret, "alice", &Permissions{Subscribe: []string{"*"}})
	if r := alice.command(map[string]any{"type": "refresh", "token": tok}); r["type"] != "ack" {
		t.Fatalf("refresh: %v", r)
	}
	if r := alice.command(map[string]any{"type": "signal", "call": "team:1", "to": b["session"], "data": cand}); r["type"] != "error" || r["code"] != "forbidden" {
		t.Fatalf("signal after a refresh without the call: %v, want forbidden", r)
	}
	// Leaving is always allowed.
	if r := alice.command(map[string]any{"type": "leave", "call": "team:1"}); r["type"] != "ack" {
		t.Fatalf("leave: %v", r)
	}
}
