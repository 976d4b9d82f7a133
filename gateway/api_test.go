package gateway

// HTTP API conformance: publish, history, presence, ICE servers, health and
// readiness, against a real server on 127.0.0.1:0.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/turn"
)

const apiTestKey = "test-api-key"

var apiTestSecret = []byte("api-secret")

// apiTestServer runs a gateway with a JWT secret and an API key.
func apiTestServer(t testing.TB, mod func(*Config)) *testServer {
	t.Helper()
	return startServer(t, func(c *Config) {
		c.JWTSecret, c.APIKey = apiTestSecret, apiTestKey
		if mod != nil {
			mod(c)
		}
	})
}

// apiTestDo makes a request with an optional bearer credential and returns
// the status and the decoded JSON body (nil when the body is not JSON).
func apiTestDo(t testing.TB, method, u, cred string, header http.Header, body string) (*http.Response, map[string]any) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, r)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if cred != "" {
		req.Header.Set("Authorization", "Bearer "+cred)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, u, err)
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		m = nil
	}
	return resp, m
}

// apiTestCheckError checks an error answer's status and code.
func apiTestCheckError(t testing.TB, resp *http.Response, body map[string]any, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status: got %v, want %v (body %v)", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type: got %q, want %q", ct, "application/json")
	}
	e, _ := body["error"].(map[string]any)
	if e["code"] != code {
		t.Errorf("error code: got %v, want %v", body, code)
	}
	if s, _ := e["message"].(string); s == "" {
		t.Errorf("error: got %v, want a message", body)
	}
}

func TestAPIPublish(t *testing.T) {
	ts := apiTestServer(t, func(c *Config) { c.MaxFrameSize = 1024 })
	user := confToken(t, apiTestSecret, "api-user", nil)
	noPublish := confToken(t, apiTestSecret, "reader", &Permissions{Subscribe: []string{"*"}})
	chatOnly := confToken(t, apiTestSecret, "chatter", &Permissions{Publish: []string{"chat:*"}})
	exact := `"` + strings.Repeat("x", 1022) + `"` // 1024 bytes: the limit itself

	tests := []struct {
		name       string
		path       string // room part of the URL; empty means a room of the row's own
		cred       string
		header     http.Header
		body       string
		wantStatus int
		wantCode   string
	}{
		{name: "api key", cred: apiTestKey, body: `{"text":"hi"}`, wantStatus: 200},
		{name: "user token", cred: user, body: `{"text":"hi"}`, wantStatus: 200},
		{name: "token with a matching pattern", path: "chat:api", cred: chatOnly, body: `1`, wantStatus: 200},
		{name: "body of exactly MaxFrameSize", cred: apiTestKey, body: exact, wantStatus: 200},
		{name: "body with whitespace", cred: apiTestKey, body: " { \"a\" : [ 1 , 2 ] }\n", wantStatus: 200},
		{name: "not JSON", cred: apiTestKey, body: `hello`, wantStatus: 400, wantCode: "bad_request"},
		{name: "truncated JSON", cred: apiTestKey, body: `{"a":`, wantStatus: 400, wantCode: "bad_request"},
		{name: "empty body", cred: apiTestKey, body: ``, wantStatus: 400, wantCode: "bad_request"},
		{name: "body over MaxFrameSize", cred: apiTestKey, body: `"` + strings.Repeat("x", 1023) + `"`, wantStatus: 413, wantCode: "too_large"},
		{name: "no credentials", body: `1`, wantStatus: 401, wantCode: "unauthorized"},
		{name: "wrong api key", cred: "not-the-key", body: `1`, wantStatus: 401, wantCode: "unauthorized"},
		{name: "authorization without bearer", header: http.Header{"Authorization": {apiTestKey}}, body: `1`, wantStatus: 401, wantCode: "unauthorized"},
		{name: "token lacking publish permission", cred: noPublish, body: `1`, wantStatus: 403, wantCode: "forbidden"},
		{name: "token for other rooms", path: "news", cred: chatOnly, body: `1`, wantStatus: 403, wantCode: "forbidden"},
		{name: "bad room", path: "bad%20room", cred: apiTestKey, body: `1`, wantStatus: 400, wantCode: "bad_room"},
		{name: "room too long", path: strings.Repeat("r", 129), cred: apiTestKey, body: `1`, wantStatus: 400, wantCode: "bad_room"},
		{name: "idempotency key too long", cred: apiTestKey, header: http.Header{"Idempotency-Key": {strings.Repeat("k", 65)}}, body: `1`, wantStatus: 400, wantCode: "bad_request"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			room := tt.path
			if room == "" {
				room = fmt.Sprintf("api:%d", i)
			}
			resp, body := apiTestDo(t, "POST", ts.url+"/v1/rooms/"+room+"/messages", tt.cred, tt.header, tt.body)
			if tt.wantCode != "" {
				apiTestCheckError(t, resp, body, tt.wantStatus, tt.wantCode)
				return
			}
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status: got %v, want %v (body %v)", resp.StatusCode, tt.wantStatus, body)
			}
			if body["room"] != room || confNum(t, body["offset"]) != 1 {
				t.Errorf("body: got %v, want room %v offset 1", body, room)
			}
			if _, ok := body["duplicate"]; ok {
				t.Errorf("body: got %v, want no duplicate", body)
			}
			h, err := ts.bus.History(context.Background(), room, fanout.HistoryQuery{Limit: 1})
			if err != nil {
				t.Fatal(err)
			}
			if got := confStr(t, body, "epoch"); got != h.Top.Epoch {
				t.Errorf("epoch: got %v, want %v", got, h.Top.Epoch)
			}
			var want, got any
			json.Unmarshal([]byte(tt.body), &want)
			if len(h.Messages) != 1 || json.Unmarshal(h.Messages[0].Data, &got) != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("history: got %v, want one message with %v", h.Messages, want)
			}
		})
	}
}

func TestAPIPublishIdempotencyKey(t *testing.T) {
	ts := apiTestServer(t, nil)
	sub, _ := confDial(t, ts, confBearer(confToken(t, apiTestSecret, "watcher", nil)))
	epoch := confStr(t, confSubscribe(sub, "s1", "orders", false), "epoch")
	post := func(key, body string) map[string]any {
		t.Helper()
		var h http.Header
		if key != "" {
			h = http.Header{"Idempotency-Key": {key}}
		}
		resp, m := apiTestDo(t, "POST", ts.url+"/v1/rooms/orders/messages", apiTestKey, h, body)
		if resp.StatusCode != 200 {
			t.Fatalf("status: got %v, want 200 (body %v)", resp.StatusCode, m)
		}
		return m
	}
	tests := []struct {
		name       string
		key        string
		wantOffset uint64
		wantDup    bool
	}{
		{name: "first", key: "order-1", wantOffset: 1},
		{name: "retry", key: "order-1", wantOffset: 1, wantDup: true},
		{name: "other key", key: "order-2", wantOffset: 2},
		{name: "no key", wantOffset: 3},
		{name: "retry of the first again", key: "order-1", wantOffset: 1, wantDup: true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := post(tt.key, fmt.Sprint(i))
			if got := confNum(t, m["offset"]); got != tt.wantOffset {
				t.Errorf("offset: got %v, want %v", got, tt.wantOffset)
			}
			if got, _ := m["duplicate"].(bool); got != tt.wantDup {
				t.Errorf("duplicate: got %v, want %v", got, tt.wantDup)
			}
		})
	}
	// Delivered once each: offsets 1, 2, 3, then the ack of a later command.
	for off, data := range []string{"0", "2", "3"} {
		confCheckMessage(t, sub.next(), "orders", uint64(off+1), epoch, data, "")
	}
	confSubscribe(sub, "s2", "other", false)
}

func TestAPIPublishReachesWebSocket(t *testing.T) {
	ts := apiTestServer(t, nil)
	sub, _ := confDial(t, ts, confBearer(confToken(t, apiTestSecret, "alice", nil)))
	epoch := confStr(t, confSubscribe(sub, "s1", "chat:http", false), "epoch")
	tests := []struct {
		name     string
		cred     string
		body     string
		wantData string
		wantFrom string
	}{
		{name: "backend with the api key", cred: apiTestKey, body: `{"text":"from backend"}`, wantData: `{"text":"from backend"}`},
		{name: "user with a token", cred: confToken(t, apiTestSecret, "bob", nil), body: "[ 1, 2 ]", wantData: `[1,2]`, wantFrom: "bob"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, m := apiTestDo(t, "POST", ts.url+"/v1/rooms/chat:http/messages", tt.cred, nil, tt.body)
			if resp.StatusCode != 200 {
				t.Fatalf("status: got %v, want 200 (body %v)", resp.StatusCode, m)
			}
			confCheckMessage(t, sub.next(), "chat:http", uint64(i+1), epoch, tt.wantData, tt.wantFrom)
		})
	}
}

func TestAPIHistory(t *testing.T) {
	ts := apiTestServer(t, nil)
	var epoch string
	for i := 1; i <= 5; i++ {
		resp, m := apiTestDo(t, "POST", ts.url+"/v1/rooms/log/messages", confToken(t, apiTestSecret, "writer", nil), nil, fmt.Sprintf(`{"n":%d}`, i))
		if resp.StatusCode != 200 {
			t.Fatalf("publish: got %v, want 200", resp.StatusCode)
		}
		epoch = m["epoch"].(string)
	}
	reader := confToken(t, apiTestSecret, "reader", &Permissions{Subscribe: []string{"log"}})
	noRead := confToken(t, apiTestSecret, "writer-only", &Permissions{Publish: []string{"*"}})

	tests := []struct {
		name          string
		room          string
		query         string
		cred          string
		wantStatus    int
		wantCode      string
		wantOffsets   []uint64
		wantRecovered any // nil: the field is absent
	}{
		{name: "newest by default", query: "", wantStatus: 200, wantOffsets: []uint64{1, 2, 3, 4, 5}},
		{name: "limit", query: "limit=2", wantStatus: 200, wantOffsets: []uint64{4, 5}},
		{name: "since", query: "since=2", wantStatus: 200, wantOffsets: []uint64{3, 4, 5}, wantRecovered: true},
		{name: "since zero", query: "since=0", wantStatus: 200, wantOffsets: []uint64{1, 2, 3, 4, 5}, wantRecovered: true},
		{name: "since and limit", query: "since=1&limit=2", wantStatus: 200, wantOffsets: []uint64{2, 3}, wantRecovered: true},
		{name: "since with epoch", query: "since=3&epoch=" + epoch, wantStatus: 200, wantOffsets: []uint64{4, 5}, wantRecovered: true},
		{name: "since the top", query: "since=5", wantStatus: 200, wantOffsets: []uint64{}, wantRecovered: true},
		{name: "since with a stale epoch", query: "since=3&epoch=stale", wantStatus: 200, wantOffsets: []uint64{}, wantRecovered: false},
		{name: "since beyond the top", query: "since=9", wantStatus: 200, wantOffsets: []uint64{}, wantRecovered: false},
		{name: "token with subscribe permission", query: "limit=1", cred: reader, wantStatus: 200, wantOffsets: []uint64{5}},
		{name: "empty room", room: "empty", query: "", wantStatus: 200, wantOffsets: []uint64{}},
		{name: "limit zero", query: "limit=0", wantStatus: 400, wantCode: "bad_request"},
		{name: "limit too large", query: "limit=1001", wantStatus: 400, wantCode: "bad_request"},
		{name: "limit not a number", query: "limit=many", wantStatus: 400, wantCode: "bad_request"},
		{name: "since negative", query: "since=-1", wantStatus: 400, wantCode: "bad_request"},
		{name: "since not a number", query: "since=x", wantStatus: 400, wantCode: "bad_request"},
		{name: "bad room", room: "no%20spaces", wantStatus: 400, wantCode: "bad_room"},
		{name: "no credentials", cred: "-", wantStatus: 401, wantCode: "unauthorized"},
		{name: "token lacking subscribe permission", cred: noRead, wantStatus: 403, wantCode: "forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			room, cred := tt.room, tt.cred
			if room == "" {
				room = "log"
			}
			switch cred {
			case "":
				cred = apiTestKey
			case "-":
				cred = ""
			}
			resp, body := apiTestDo(t, "GET", ts.url+"/v1/rooms/"+room+"/history?"+tt.query, cred, nil, "")
			if tt.wantCode != "" {
				apiTestCheckError(t, resp, body, tt.wantStatus, tt.wantCode)
				return
			}
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status: got %v, want %v (body %v)", resp.StatusCode, tt.wantStatus, body)
			}
			if body["room"] != room {
				t.Errorf("room: got %v, want %v", body["room"], room)
			}
			confStr(t, body, "epoch")
			if room == "log" && (body["epoch"] != epoch || confNum(t, body["offset"]) != 5) {
				t.Errorf("top: got %v %v, want %v 5", body["epoch"], body["offset"], epoch)
			}
			if got := body["recovered"]; got != tt.wantRecovered {
				t.Errorf("recovered: got %v, want %v", got, tt.wantRecovered)
			}
			msgs, ok := body["messages"].([]any)
			if !ok {
				t.Fatalf("messages: got %v, want a list", body["messages"])
			}
			got := []uint64{}
			for _, raw := range msgs {
				m, _ := raw.(map[string]any)
				off := confNum(t, m["offset"])
				got = append(got, off)
				confCheckMessage(t, m, room, off, epoch, fmt.Sprintf(`{"n":%d}`, off), "writer")
			}
			if !reflect.DeepEqual(got, tt.wantOffsets) {
				t.Errorf("offsets: got %v, want %v", got, tt.wantOffsets)
			}
		})
	}
}

func TestAPIPresence(t *testing.T) {
	ts := apiTestServer(t, nil)
	type member struct{ User, Session, Node string }
	dial := func(user, room string) (*wsConn, member) {
		w, welcome := confDial(t, ts, confBearer(confToken(t, apiTestSecret, user, nil)))
		confSubscribe(w, "s1", room, true)
		return w, member{User: user, Session: confStr(t, welcome, "session"), Node: "test-node"}
	}
	_, alice := dial("alice", "lobby")
	bobConn, bob := dial("bob", "lobby")
	dial("carol", "elsewhere")

	get := func(room, cred string) (*http.Response, []member) {
		t.Helper()
		resp, body := apiTestDo(t, "GET", ts.url+"/v1/rooms/"+room+"/presence", cred, nil, "")
		if resp.StatusCode != 200 {
			return resp, nil
		}
		if body["room"] != room {
			t.Errorf("room: got %v, want %v", body["room"], room)
		}
		raw, ok := body["members"].([]any)
		if !ok {
			t.Fatalf("members: got %v, want a list", body["members"])
		}
		var ms []member
		for _, r := range raw {
			m, _ := r.(map[string]any)
			ms = append(ms, member{User: fmt.Sprint(m["user"]), Session: fmt.Sprint(m["session"]), Node: fmt.Sprint(m["node"])})
		}
		return resp, ms
	}
	sameMembers := func(got, want []member) bool {
		if len(got) != len(want) {
			return false
		}
		for _, w := range want {
			found := false
			for _, g := range got {
				found = found || g == w
			}
			if !found {
				return false
			}
		}
		return true
	}

	tests := []struct {
		name       string
		room       string
		cred       string
		wantStatus int
		want       []member
	}{
		{name: "api key", room: "lobby", cred: apiTestKey, wantStatus: 200, want: []member{alice, bob}},
		{name: "user token", room: "lobby", cred: confToken(t, apiTestSecret, "dave", nil), wantStatus: 200, want: []member{alice, bob}},
		{name: "other room", room: "elsewhere", cred: apiTestKey, wantStatus: 200, want: nil},
		{name: "empty room", room: "nobody", cred: apiTestKey, wantStatus: 200, want: nil},
		{name: "no credentials", room: "lobby", wantStatus: 401},
		{name: "token lacking subscribe permission", room: "lobby", cred: confToken(t, apiTestSecret, "eve", &Permissions{Subscribe: []string{"public:*"}}), wantStatus: 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, got := get(tt.room, tt.cred)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status: got %v, want %v", resp.StatusCode, tt.wantStatus)
			}
			if tt.wantStatus != 200 {
				return
			}
			if tt.room == "elsewhere" {
				if len(got) != 1 || got[0].User != "carol" {
					t.Errorf("members: got %v, want carol", got)
				}
				return
			}
			if !sameMembers(got, tt.want) {
				t.Errorf("members: got %v, want %v", got, tt.want)
			}
		})
	}

	// A session that leaves is no longer listed.
	if err := bobConn.c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("close: %v", err)
	}
	var got []member
	for deadline := time.Now().Add(2 * time.Second); ; {
		_, got = get("lobby", apiTestKey)
		if sameMembers(got, []member{alice}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("members after bob left: got %v, want %v", got, []member{alice})
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAPIHealth(t *testing.T) {
	ts := startServer(t, nil)
	tests := []struct {
		name string
		path string
		want string
	}{
		{name: "liveness", path: "/healthz", want: "ok\n"},
		{name: "readiness", path: "/readyz", want: "ready\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := sseTestGet(t, "GET", ts.url+tt.path, nil)
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(b) != tt.want {
				t.Errorf("got %v %q, want 200 %q", resp.StatusCode, b, tt.want)
			}
		})
	}
}

func TestAPIReadyzWhileDraining(t *testing.T) {
	ts := startServer(t, nil)
	status := func(path string) int {
		t.Helper()
		resp := sseTestGet(t, "GET", ts.url+path, nil)
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if got := status("/readyz"); got != 200 {
		t.Fatalf("/readyz before drain: got %v, want 200", got)
	}
	// A WebSocket client that does not read holds the drain open: the
	// server waits for its answer to the close handshake.
	w, _ := confDial(t, ts, nil)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- ts.srv.Shutdown(ctx)
	}()
	for deadline := time.Now().Add(2 * time.Second); status("/readyz") != 503; {
		if time.Now().After(deadline) {
			t.Fatal("/readyz: still not 503 2s into the drain")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := status("/healthz"); got != 200 {
		t.Errorf("/healthz while draining: got %v, want 200", got)
	}
	// New sessions are refused while draining.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, ts.ws, &websocket.DialOptions{Subprotocols: []string{Subprotocol}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial while draining: got %v, %v; want 503", resp, err)
	}

	m := w.expect("reconnect")
	if m["reason"] != "draining" {
		t.Errorf("reconnect reason: got %v, want %v", m["reason"], "draining")
	}
	if after := confNum(t, m["after_ms"]); after > 200 {
		t.Errorf("reconnect after_ms: got %v, want within the drain window of 200", after)
	}
	if got := w.closeStatus(); got != websocket.StatusServiceRestart {
		t.Errorf("close status: got %v, want %v", got, websocket.StatusServiceRestart)
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: got %v, want nil", err)
	}
}

func TestAPIICEServers(t *testing.T) {
	ice := &ICE{STUN: []string{"stun:127.0.0.1:3478"}, TURN: []string{"turn:127.0.0.1:3478?transport=udp"}, Secret: "s3cret", TTL: 10 * time.Minute}
	tests := []struct {
		name       string
		mod        func(*Config)
		cred       string
		wantStatus int
		wantCode   string
		wantUser   string // "anon-" means any anonymous user
	}{
		{name: "not configured", mod: func(c *Config) {}, wantStatus: 404, wantCode: "not_found"},
		{name: "not configured with a token", mod: func(c *Config) { c.JWTSecret = apiTestSecret }, cred: confToken(t, apiTestSecret, "alice", nil), wantStatus: 404, wantCode: "not_found"},
		{name: "token", mod: func(c *Config) { c.JWTSecret, c.ICE = apiTestSecret, ice }, cred: confToken(t, apiTestSecret, "alice", nil), wantStatus: 200, wantUser: "alice"},
		{name: "no token with a secret", mod: func(c *Config) { c.JWTSecret, c.ICE = apiTestSecret, ice }, wantStatus: 401, wantCode: "unauthorized"},
		{name: "bad token", mod: func(c *Config) { c.JWTSecret, c.ICE = apiTestSecret, ice }, cred: "not.a.token", wantStatus: 401, wantCode: "unauthorized"},
		{name: "dev mode", mod: func(c *Config) { c.ICE = ice }, wantStatus: 200, wantUser: "anon-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, tt.mod)
			resp, body := apiTestDo(t, "GET", ts.url+"/v1/ice-servers", tt.cred, nil, "")
			if tt.wantCode != "" {
				apiTestCheckError(t, resp, body, tt.wantStatus, tt.wantCode)
				return
			}
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status: got %v, want %v (body %v)", resp.StatusCode, tt.wantStatus, body)
			}
			if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control: got %q, want %q", cc, "no-store")
			}
			if ttl, _ := body["ttl"].(float64); ttl != 600 {
				t.Errorf("ttl: got %v, want 600", body["ttl"])
			}
			servers, _ := body["iceServers"].([]any)
			if len(servers) != 2 {
				t.Fatalf("iceServers: got %v, want a STUN and a TURN entry", body["iceServers"])
			}
			stunEntry, _ := servers[0].(map[string]any)
			if !reflect.DeepEqual(stunEntry, map[string]any{"urls": []any{"stun:127.0.0.1:3478"}}) {
				t.Errorf("STUN entry: got %v", stunEntry)
			}
			turnEntry, _ := servers[1].(map[string]any)
			username, _ := turnEntry["username"].(string)
			expiry, user, _ := strings.Cut(username, ":")
			if tt.wantUser == "anon-" && !strings.HasPrefix(user, "anon-") || tt.wantUser != "anon-" && user != tt.wantUser {
				t.Errorf("TURN username %q: user got %q, want %q", username, user, tt.wantUser)
			}
			exp, err := strconv.ParseInt(expiry, 10, 64)
			if err != nil || time.Until(time.Unix(exp, 0)) > 10*time.Minute+time.Second || time.Until(time.Unix(exp, 0)) < 9*time.Minute {
				t.Errorf("TURN username %q: expiry is not about 10 minutes from now", username)
			}
			want := ICEServer{URLs: []string{"turn:127.0.0.1:3478?transport=udp"}}
			want.Username, want.Credential = turn.Credentials("s3cret", user, 10*time.Minute, time.Unix(exp, 0).Add(-10*time.Minute))
			if turnEntry["credential"] != want.Credential {
				t.Errorf("TURN credential: got %v, want %v (turn.Credentials of the same user and expiry)", turnEntry["credential"], want.Credential)
			}
		})
	}
}
