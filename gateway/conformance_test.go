package gateway

// Conformance tests: PROTOCOL.md's WebSocket frames, one by one, against a
// real server on 127.0.0.1:0 and a raw client.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// confToken mints an HS256 token for user, valid for an hour.
func confToken(t testing.TB, secret []byte, user string, perms *Permissions) string {
	t.Helper()
	tok, err := MintToken(secret, user, time.Hour, perms, time.Now())
	if err != nil {
		t.Fatalf("MintToken: %v", err)
	}
	return tok
}

// confBearer is an Authorization header carrying cred.
func confBearer(cred string) http.Header {
	return http.Header{"Authorization": {"Bearer " + cred}}
}

// confNum reads a JSON number that must be a non-negative integer.
func confNum(t testing.TB, v any) uint64 {
	t.Helper()
	f, ok := v.(float64)
	if !ok || f < 0 || f != math.Trunc(f) {
		t.Fatalf("got %v (%T), want a non-negative integer", v, v)
	}
	return uint64(f)
}

// confStr reads a JSON string field that must be present and non-empty.
func confStr(t testing.TB, m map[string]any, field string) string {
	t.Helper()
	s, ok := m[field].(string)
	if !ok || s == "" {
		t.Fatalf("%v: got %s = %v, want a non-empty string", m, field, m[field])
	}
	return s
}

// confDial connects and reads the welcome frame.
func confDial(t testing.TB, ts *testServer, header http.Header) (*wsConn, map[string]any) {
	t.Helper()
	w := dialWS(t, ts.ws, header)
	return w, w.expect("welcome")
}

// confAck reads the next frame, which must be the ack of command id.
func confAck(w *wsConn, id string) map[string]any {
	w.t.Helper()
	m := w.next()
	if m["type"] != "ack" || m["id"] != id {
		w.t.Fatalf("got %v, want the ack of %q", m, id)
	}
	return m
}

// confError reads the next frame, which must be an error for command id with
// code.
func confError(w *wsConn, id, code string) map[string]any {
	w.t.Helper()
	m := w.next()
	if m["type"] != "error" || m["code"] != code {
		w.t.Fatalf("got %v, want an error %q", m, code)
	}
	if id != "" && m["id"] != id {
		w.t.Fatalf("error frame id: got %v, want %q", m["id"], id)
	}
	if s, _ := m["message"].(string); s == "" {
		w.t.Fatalf("error frame %v has no message", m)
	}
	return m
}

// confSubscribe subscribes to room and returns the ack.
func confSubscribe(w *wsConn, id, room string, presence bool) map[string]any {
	w.t.Helper()
	w.send(map[string]any{"type": "subscribe", "id": id, "room": room, "presence": presence})
	return confAck(w, id)
}

// confNextSkipping returns the next frame that is not a presence event about
// the session self. A presence subscriber may be told of its own join after
// its ack (its member list already holds itself); PROTOCOL.md neither asks
// for nor forbids that, so these tests tolerate it.
func confNextSkipping(w *wsConn, self string) map[string]any {
	w.t.Helper()
	for {
		m := w.next()
		if m["type"] == "presence" && m["session"] == self {
			continue
		}
		return m
	}
}

// confCheckMessage checks a message frame against what was published.
func confCheckMessage(t testing.TB, m map[string]any, room string, offset uint64, epoch, data, from string) {
	t.Helper()
	if m["type"] != "message" {
		t.Fatalf("got %v, want a message", m)
	}
	if m["room"] != room {
		t.Errorf("room: got %v, want %v", m["room"], room)
	}
	if got := confNum(t, m["offset"]); got != offset {
		t.Errorf("offset: got %v, want %v", got, offset)
	}
	if m["epoch"] != epoch {
		t.Errorf("epoch: got %v, want %v", m["epoch"], epoch)
	}
	var want any
	if err := json.Unmarshal([]byte(data), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m["data"], want) {
		t.Errorf("data: got %v, want %v", m["data"], want)
	}
	if f, ok := m["from"]; from == "" && ok || from != "" && f != from {
		t.Errorf("from: got %v, want %q", f, from)
	}
	if _, ok := m["ts"].(float64); !ok {
		t.Errorf("ts: got %v, want a number", m["ts"])
	}
}

func TestConformanceWelcome(t *testing.T) {
	tests := []struct {
		name   string
		ping   time.Duration
		wantMS float64
	}{
		{name: "default ping", ping: 0, wantMS: 25000},
		{name: "configured ping", ping: 1500 * time.Millisecond, wantMS: 1500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, func(c *Config) { c.PingInterval = tt.ping })
			w, welcome := confDial(t, ts, nil)
			if got := w.c.Subprotocol(); got != Subprotocol {
				t.Errorf("subprotocol: got %q, want %q", got, Subprotocol)
			}
			if got := welcome["node"]; got != "test-node" {
				t.Errorf("node: got %v, want %v", got, "test-node")
			}
			confStr(t, welcome, "session")
			if user := confStr(t, welcome, "user"); !strings.HasPrefix(user, "anon-") {
				t.Errorf("dev mode user: got %q, want prefix %q", user, "anon-")
			}
			if got := welcome["ping_ms"]; got != tt.wantMS {
				t.Errorf("ping_ms: got %v, want %v", got, tt.wantMS)
			}
		})
	}
}

func TestConformanceDevUsersAreDistinct(t *testing.T) {
	ts := startServer(t, nil)
	_, w1 := confDial(t, ts, nil)
	_, w2 := confDial(t, ts, nil)
	if w1["user"] == w2["user"] {
		t.Errorf("two anonymous sessions: got the same user %v, want different ones", w1["user"])
	}
	if w1["session"] == w2["session"] {
		t.Errorf("two sessions: got the same session id %v, want different ones", w1["session"])
	}
}

func TestConformanceSubscribeAck(t *testing.T) {
	ts := startServer(t, nil)
	ctx := context.Background()

	w, welcome := confDial(t, ts, nil)
	ack := confSubscribe(w, "s1", "chat:empty", false)
	epoch := confStr(t, ack, "epoch")
	if got := confNum(t, ack["offset"]); got != 0 {
		t.Errorf("offset of an empty room: got %v, want %v", got, 0)
	}
	if got := ack["recovered"]; got != false {
		t.Errorf("recovered without since: got %v, want %v", got, false)
	}
	if _, ok := ack["members"]; ok {
		t.Errorf("members without presence: got %v, want none", ack["members"])
	}

	// A room with history: the ack names its top.
	var res fanout.PublishResult
	for i := range 3 {
		var err error
		if res, err = ts.bus.Publish(ctx, "chat:busy", fanout.Publication{Data: json.RawMessage(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	ack = confSubscribe(w, "s2", "chat:busy", true)
	if got := ack["epoch"]; got != res.Epoch {
		t.Errorf("epoch: got %v, want %v", got, res.Epoch)
	}
	if got := confNum(t, ack["offset"]); got != 3 {
		t.Errorf("offset: got %v, want %v", got, 3)
	}
	members, _ := ack["members"].([]any)
	if len(members) != 1 {
		t.Fatalf("members with presence: got %v, want this session", ack["members"])
	}
	if m, _ := members[0].(map[string]any); m["session"] != welcome["session"] || m["user"] != welcome["user"] {
		t.Errorf("member: got %v, want session %v user %v", members[0], welcome["session"], welcome["user"])
	}
	if epoch == res.Epoch {
		t.Errorf("two rooms share epoch %q; want one per room history", epoch)
	}

	// With since, the ack says recovered and the missed messages follow.
	w2, _ := confDial(t, ts, nil)
	w2.send(map[string]any{"type": "subscribe", "id": "s3", "room": "chat:busy", "since": map[string]any{"epoch": res.Epoch, "offset": 1}})
	ack = confAck(w2, "s3")
	if got := ack["recovered"]; got != true {
		t.Errorf("recovered with since: got %v, want %v", got, true)
	}
	if got := confNum(t, ack["offset"]); got != 3 {
		t.Errorf("offset: got %v, want %v", got, 3)
	}
	for off := uint64(2); off <= 3; off++ {
		confCheckMessage(t, w2.next(), "chat:busy", off, res.Epoch, fmt.Sprint(off-1), "")
	}
}

func TestConformancePublishAndMessage(t *testing.T) {
	secret := []byte("conformance-secret")
	ts := startServer(t, func(c *Config) { c.JWTSecret = secret })
	sub, _ := confDial(t, ts, confBearer(confToken(t, secret, "alice", nil)))
	pub, _ := confDial(t, ts, confBearer(confToken(t, secret, "bob", nil)))
	epoch := confStr(t, confSubscribe(sub, "s1", "chat:pm", false), "epoch")

	datas := []string{`{"text":"hello"}`, `[1,2,3]`, `"just a string"`, `42`, `{"nested":{"a":[true,null]}}`}
	before := time.Now().UnixMilli()
	for i, d := range datas {
		id := fmt.Sprintf("p%d", i)
		pub.send(map[string]any{"type": "publish", "id": id, "room": "chat:pm", "data": json.RawMessage(d)})
		ack := confAck(pub, id)
		if got := confNum(t, ack["offset"]); got != uint64(i+1) {
			t.Errorf("publish ack offset: got %v, want %v", got, i+1)
		}
		if got := ack["epoch"]; got != epoch {
			t.Errorf("publish ack epoch: got %v, want %v", got, epoch)
		}
		if _, ok := ack["duplicate"]; ok {
			t.Errorf("first publish: got duplicate %v, want none", ack["duplicate"])
		}
	}
	after := time.Now().UnixMilli()
	for i, d := range datas {
		m := sub.next()
		confCheckMessage(t, m, "chat:pm", uint64(i+1), epoch, d, "bob")
		if ts := int64(confNum(t, m["ts"])); ts < before || ts > after {
			t.Errorf("ts: got %v, want between %v and %v (Unix ms)", ts, before, after)
		}
	}
}

func TestConformanceUnsubscribe(t *testing.T) {
	ts := startServer(t, nil)
	sub, _ := confDial(t, ts, nil)
	pub, _ := confDial(t, ts, nil)
	confSubscribe(sub, "s1", "chat:u", false)

	pub.send(map[string]any{"type": "publish", "id": "p1", "room": "chat:u", "data": 1})
	confAck(pub, "p1")
	if m := sub.next(); m["type"] != "message" || confNum(t, m["offset"]) != 1 {
		t.Fatalf("got %v, want message 1", m)
	}

	sub.send(map[string]any{"type": "unsubscribe", "id": "u1", "room": "chat:u"})
	confAck(sub, "u1")
	// The publisher's ack means the bus has handed the message to the hub;
	// the next frame the old subscriber gets must be the ack of a later
	// command, not the message.
	pub.send(map[string]any{"type": "publish", "id": "p2", "room": "chat:u", "data": 2})
	confAck(pub, "p2")
	confSubscribe(sub, "s2", "chat:other", false)

	sub.send(map[string]any{"type": "unsubscribe", "id": "u2", "room": "chat:u"})
	confError(sub, "u2", "not_found")
}

func TestConformancePresence(t *testing.T) {
	secret := []byte("conformance-secret")
	// lobby is a presence room: every subscriber is a member, whether or not
	// it asked for the events.
	ts := startServer(t, func(c *Config) { c.JWTSecret, c.PresenceRooms = secret, []string{"lobby"} })
	dial := func(user string) (*wsConn, string) {
		w, welcome := confDial(t, ts, confBearer(confToken(t, secret, user, nil)))
		return w, confStr(t, welcome, "session")
	}
	alice, aliceS := dial("alice")
	bob, bobS := dial("bob")
	carol, carolS := dial("carol")

	confSubscribe(alice, "s1", "lobby", true)
	want := func(event, user, session string) {
		t.Helper()
		m := confNextSkipping(alice, aliceS)
		wantM := map[string]any{"type": "presence", "room": "lobby", "event": event, "user": user, "session": session}
		if !reflect.DeepEqual(m, wantM) {
			t.Fatalf("got %v, want %v", m, wantM)
		}
	}

	ack := confSubscribe(bob, "s1", "lobby", false)
	if _, ok := ack["members"]; ok {
		t.Errorf("members without presence: got %v, want none", ack["members"])
	}
	want("join", "bob", bobS)
	bob.send(map[string]any{"type": "unsubscribe", "id": "u1", "room": "lobby"})
	confAck(bob, "u1") // bob did not ask for presence: no events before this
	want("leave", "bob", bobS)

	confSubscribe(carol, "s1", "lobby", false)
	want("join", "carol", carolS)
	if err := carol.c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("close: %v", err)
	}
	want("leave", "carol", carolS)
}

func TestConformanceHeartbeat(t *testing.T) {
	const (
		ping = 200 * time.Millisecond
		pong = 300 * time.Millisecond
		// tick is the heartbeat loop's granularity for this ping interval.
		tick  = ping / 4
		slack = 150 * time.Millisecond
	)
	cfg := func(c *Config) { c.PingInterval, c.PongTimeout = ping, pong }

	t.Run("first ping within the ping interval", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, cfg)
		w, _ := confDial(t, ts, nil)
		start := time.Now()
		w.expect("ping")
		// The first ping is jittered earlier, by up to half the interval; the
		// heartbeat loop checks every tick.
		if got, limit := time.Since(start), ping+tick+slack; got > limit {
			t.Errorf("first ping after %v, want within %v", got, limit)
		}
	})

	t.Run("pong keeps the session open", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, cfg)
		w, _ := confDial(t, ts, nil)
		start := time.Now()
		// Answer pings for at least three of them and twice PongTimeout.
		for pings := 0; pings < 3 || time.Since(start) < 2*pong; pings++ {
			w.expect("ping")
			w.send(map[string]any{"type": "pong"})
		}
		confSubscribe(w, "s1", "chat:alive", false)
	})

	t.Run("no pong closes with 1001", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, cfg)
		w, _ := confDial(t, ts, nil)
		w.expect("ping")
		pinged := time.Now()
		if got := w.closeStatus(); got != websocket.StatusGoingAway {
			t.Errorf("close status: got %v, want %v", got, websocket.StatusGoingAway)
		}
		if got := time.Since(pinged); got < pong/2 || got > pong+tick+time.Second {
			t.Errorf("closed %v after the ping, want about PongTimeout %v", got, pong)
		}
	})

	t.Run("traffic defers the ping", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, func(c *Config) { c.PingInterval, c.PongTimeout = 300*time.Millisecond, time.Second })
		w, _ := confDial(t, ts, nil)
		confSubscribe(w, "s1", "chat:busy", false)
		// A message every 50ms for 700ms: the server has always sent something
		// well within the interval, so no ping goes out. Any ping would show
		// up among the frames read here, before the final ack.
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		end := time.Now().Add(700 * time.Millisecond)
		for i := 1; time.Now().Before(end); i++ {
			if _, err := ts.bus.Publish(context.Background(), "chat:busy", fanout.Publication{Data: json.RawMessage("1")}); err != nil {
				t.Fatal(err)
			}
			if m := w.next(); m["type"] != "message" || confNum(t, m["offset"]) != uint64(i) {
				t.Fatalf("got %v, want message %d and no ping", m, i)
			}
			<-tick.C
		}
		confSubscribe(w, "s2", "chat:after", false)
	})
}

func TestConformanceBatching(t *testing.T) {
	ts := startServer(t, nil)
	w, _ := confDial(t, ts, nil)
	epoch := confStr(t, confSubscribe(w, "s1", "chat:burst", false), "epoch")
	if len(w.pending) != 0 {
		t.Fatalf("got %d frames batched with the ack, want none", len(w.pending))
	}

	const n = 500
	for i := 1; i <= n; i++ {
		if _, err := ts.bus.Publish(context.Background(), "chat:burst", fanout.Publication{Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}); err != nil {
			t.Fatal(err)
		}
	}
	// Read raw frames: each may hold several messages separated by "\n".
	got, frames, maxPer := 0, 0, 0
	for got < n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		typ, b, err := w.c.Read(ctx)
		cancel()
		if err != nil {
			t.Fatalf("read after %d messages: %v", got, err)
		}
		if typ != websocket.MessageText {
			t.Fatalf("frame type: got %v, want %v", typ, websocket.MessageText)
		}
		frames++
		lines := bytes.Split(b, []byte("\n"))
		maxPer = max(maxPer, len(lines))
		for _, line := range lines {
			var m map[string]any
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatalf("line %q of a batch is not one JSON object: %v", line, err)
			}
			got++
			confCheckMessage(t, m, "chat:burst", uint64(got), epoch, fmt.Sprintf(`{"i":%d}`, got), "")
		}
	}
	if got != n {
		t.Errorf("messages: got %v, want %v", got, n)
	}
	t.Logf("%d messages arrived in %d frames, at most %d in one", n, frames, maxPer)
	if frames == n {
		t.Errorf("%d messages in %d frames: the burst was not batched", n, frames)
	}
}

func TestConformanceIdempotencyKey(t *testing.T) {
	ts := startServer(t, nil)
	sub, _ := confDial(t, ts, nil)
	pub, welcome := confDial(t, ts, nil)
	from := confStr(t, welcome, "user")
	epoch := confStr(t, confSubscribe(sub, "s1", "chat:idem", false), "epoch")

	tests := []struct {
		name       string
		key        string
		wantOffset uint64
		wantDup    bool
	}{
		{name: "first use of a key", key: "k1", wantOffset: 1},
		{name: "same key again", key: "k1", wantOffset: 1, wantDup: true},
		{name: "no key", key: "", wantOffset: 2},
		{name: "another key", key: "k2", wantOffset: 3},
		{name: "first key a third time", key: "k1", wantOffset: 1, wantDup: true},
		{name: "second key again", key: "k2", wantOffset: 3, wantDup: true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("p%d", i)
			f := map[string]any{"type": "publish", "id": id, "room": "chat:idem", "data": map[string]any{"n": i}}
			if tt.key != "" {
				f["key"] = tt.key
			}
			pub.send(f)
			ack := confAck(pub, id)
			if got := confNum(t, ack["offset"]); got != tt.wantOffset {
				t.Errorf("offset: got %v, want %v", got, tt.wantOffset)
			}
			if got, _ := ack["duplicate"].(bool); got != tt.wantDup {
				t.Errorf("duplicate: got %v, want %v", got, tt.wantDup)
			}
			if got := ack["epoch"]; got != epoch {
				t.Errorf("epoch: got %v, want %v", got, epoch)
			}
		})
	}
	// Each message was delivered once: offsets 1, 2, 3, then the ack of a
	// later command.
	for off, data := range []string{`{"n":0}`, `{"n":2}`, `{"n":3}`} {
		confCheckMessage(t, sub.next(), "chat:idem", uint64(off+1), epoch, data, from)
	}
	confSubscribe(sub, "s2", "chat:other", false)
}

func TestConformanceErrorFrames(t *testing.T) {
	ts := startServer(t, nil)
	w, _ := confDial(t, ts, nil)
	confSubscribe(w, "s0", "chat:taken", false)

	tests := []struct {
		name  string
		frame string
		id    string
		code  string
	}{
		{name: "bad room on subscribe", frame: `{"type":"subscribe","id":"e1","room":"no spaces"}`, id: "e1", code: "bad_room"},
		{name: "bad room on publish", frame: `{"type":"publish","id":"e2","room":"a/b","data":1}`, id: "e2", code: "bad_room"},
		{name: "room too long", frame: `{"type":"subscribe","id":"e3","room":"` + strings.Repeat("r", 129) + `"}`, id: "e3", code: "bad_room"},
		{name: "publish without data", frame: `{"type":"publish","id":"e4","room":"chat:x"}`, id: "e4", code: "bad_request"},
		{name: "subscribe without room", frame: `{"type":"subscribe","id":"e5"}`, id: "e5", code: "bad_request"},
		{name: "unknown type", frame: `{"type":"teleport","id":"e6"}`, id: "e6", code: "bad_request"},
		{name: "field of the wrong type", frame: `{"type":"subscribe","id":"e7","room":7}`, id: "e7", code: "bad_request"},
		{name: "unsubscribe a room not subscribed", frame: `{"type":"unsubscribe","id":"e8","room":"chat:none"}`, id: "e8", code: "not_found"},
		{name: "subscribe twice", frame: `{"type":"subscribe","id":"e9","room":"chat:taken"}`, id: "e9", code: "bad_request"},
		{name: "id of 64 bytes", frame: `{"type":"subscribe","id":"` + strings.Repeat("i", 64) + `","room":"a b"}`, id: strings.Repeat("i", 64), code: "bad_room"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w.send([]byte(tt.frame))
			confError(w, tt.id, tt.code)
		})
	}
	// The connection stays open after errors.
	confSubscribe(w, "s1", "chat:fine", false)
}

func TestConformanceJWT(t *testing.T) {
	secret := []byte("conformance-secret")
	ts := startServer(t, func(c *Config) { c.JWTSecret = secret })
	chatOnly := &Permissions{Subscribe: []string{"chat:*"}, Publish: []string{"chat:*"}}

	t.Run("token user is the welcome user and the message sender", func(t *testing.T) {
		tests := []struct {
			name string
			dial func(tok string) *wsConn
		}{
			{name: "authorization header", dial: func(tok string) *wsConn { return dialWS(t, ts.ws, confBearer(tok)) }},
			{name: "token query parameter", dial: func(tok string) *wsConn { return dialWS(t, ts.ws+"?token="+tok, nil) }},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				user := fmt.Sprintf("user-%d", i)
				w := tt.dial(confToken(t, secret, user, chatOnly))
				if got := w.expect("welcome")["user"]; got != user {
					t.Errorf("welcome user: got %v, want %v", got, user)
				}
				room := fmt.Sprintf("chat:jwt%d", i)
				epoch := confStr(t, confSubscribe(w, "s1", room, false), "epoch")
				w.send(map[string]any{"type": "publish", "id": "p1", "room": room, "data": "hi"})
				confCheckMessage(t, w.next(), room, 1, epoch, `"hi"`, user)
				confAck(w, "p1")
			})
		}
	})

	t.Run("rooms claim", func(t *testing.T) {
		tests := []struct {
			name  string
			perms *Permissions
			typ   string
			room  string
			code  string // empty: allowed
		}{
			{name: "subscribe matching pattern", perms: chatOnly, typ: "subscribe", room: "chat:general"},
			{name: "publish matching pattern", perms: chatOnly, typ: "publish", room: "chat:general"},
			{name: "subscribe other room", perms: chatOnly, typ: "subscribe", room: "news", code: "forbidden"},
			{name: "publish other room", perms: chatOnly, typ: "publish", room: "news", code: "forbidden"},
			{name: "prefix without its colon", perms: chatOnly, typ: "subscribe", room: "chat", code: "forbidden"},
			{name: "exact room name", perms: &Permissions{Subscribe: []string{"news"}}, typ: "subscribe", room: "news"},
			{name: "exact name is not a prefix", perms: &Permissions{Subscribe: []string{"news"}}, typ: "subscribe", room: "news2", code: "forbidden"},
			{name: "subscribe only may not publish", perms: &Permissions{Subscribe: []string{"*"}}, typ: "publish", room: "chat:general", code: "forbidden"},
			{name: "no rooms claim allows every room", perms: nil, typ: "publish", room: "anything"},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				w, _ := confDial(t, ts, confBearer(confToken(t, secret, "perm-user", tt.perms)))
				id := fmt.Sprintf("c%d", i)
				f := map[string]any{"type": tt.typ, "id": id, "room": tt.room}
				if tt.typ == "publish" {
					f["data"] = true
				}
				w.send(f)
				if tt.code != "" {
					confError(w, id, tt.code)
					return
				}
				confAck(w, id)
			})
		}
	})

	t.Run("no token", func(t *testing.T) {
		w := dialWS(t, ts.ws, nil)
		confError(w, "", "unauthorized")
		if got := w.closeStatus(); got != websocket.StatusPolicyViolation {
			t.Errorf("close status: got %v, want %v", got, websocket.StatusPolicyViolation)
		}
	})
}

// Outside the presence rooms, only sessions that subscribe with presence are
// members: a plain subscriber is not listed and causes no events.
func TestConformancePresenceOptIn(t *testing.T) {
	ts := startServer(t, nil)
	alice, welcome := confDial(t, ts, nil)
	aliceS := confStr(t, welcome, "session")
	bob, _ := confDial(t, ts, nil)
	carol, welcome := confDial(t, ts, nil)
	carolS := confStr(t, welcome, "session")

	ack := confSubscribe(alice, "s1", "quiet", true)
	if got := confNum(t, ack["members_total"]); got != 1 {
		t.Errorf("members_total: got %d, want 1", got)
	}
	confSubscribe(bob, "s1", "quiet", false)
	confSubscribe(carol, "s1", "quiet", true)
	// Alice hears carol join, and nothing of bob before it.
	m := confNextSkipping(alice, aliceS)
	want := map[string]any{"type": "presence", "room": "quiet", "event": "join", "user": confStr(t, m, "user"), "session": carolS}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got %v, want %v", m, want)
	}
	carol.send(map[string]any{"type": "presence", "id": "p1", "room": "quiet"})
	a := confAck(carol, "p1")
	if got := confNum(t, a["members_total"]); got != 2 {
		t.Errorf("presence members_total: got %d, want 2 (alice and carol, not bob)", got)
	}
	ms, _ := a["members"].([]any)
	sessions := map[string]bool{}
	for _, raw := range ms {
		mm, _ := raw.(map[string]any)
		sessions[fmt.Sprint(mm["session"])] = true
	}
	if len(ms) != 2 || !sessions[aliceS] || !sessions[carolS] {
		t.Errorf("presence members: got %v, want alice's and carol's sessions", ms)
	}
}
