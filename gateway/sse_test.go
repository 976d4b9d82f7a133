package gateway

// SSE conformance: PROTOCOL.md's Server-Sent Events section, read line by
// line with net/http from a real server on 127.0.0.1:0.

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
)

// sseTestEvent is one block of an event stream, up to its blank line.
type sseTestEvent struct {
	event, data, id, retry string
	comments               []string
}

// sseTestStream reads an event stream line by line.
type sseTestStream struct {
	t     testing.TB
	resp  *http.Response
	lines chan string
	err   error // why lines was closed; read only after that
	stop  chan struct{}
	done  chan struct{}
	first bool // the next block is the stream's first
}

// sseTestGet makes a request and closes its body when the test ends.
func sseTestGet(t testing.TB, method, u string, header http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// sseTestOpen opens an event stream, which must answer 200.
func sseTestOpen(t testing.TB, u string, header http.Header) *sseTestStream {
	t.Helper()
	resp := sseTestGet(t, http.MethodGet, u, header)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: got status %v (%s), want %v", u, resp.StatusCode, b, http.StatusOK)
	}
	s := &sseTestStream{t: t, resp: resp, lines: make(chan string), stop: make(chan struct{}), done: make(chan struct{}), first: true}
	go func() {
		defer close(s.done)
		defer close(s.lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			select {
			case s.lines <- sc.Text():
			case <-s.stop:
				return
			}
		}
		s.err = sc.Err()
	}()
	t.Cleanup(s.close)
	return s
}

// close drops the connection, as a browser does when a tab goes away.
func (s *sseTestStream) close() {
	select {
	case <-s.stop:
		return
	default:
	}
	close(s.stop)
	s.resp.Body.Close()
	<-s.done
}

// next returns the next block of the stream.
func (s *sseTestStream) next() sseTestEvent {
	s.t.Helper()
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	var ev sseTestEvent
	empty := true
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("stream ended (%v), want another event", s.err)
			}
			if s.first && !strings.HasPrefix(line, "retry:") {
				s.t.Fatalf("first line: got %q, want retry: 3000", line)
			}
			s.first = false
			if line == "" {
				if empty {
					continue
				}
				return ev
			}
			empty = false
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "":
				ev.comments = append(ev.comments, value)
			case "event":
				ev.event = value
			case "data":
				if ev.data != "" {
					ev.data += "\n"
				}
				ev.data += value
			case "id":
				ev.id = value
			case "retry":
				ev.retry = value
			default:
				s.t.Fatalf("got line %q, want an SSE field", line)
			}
		case <-timer.C:
			s.t.Fatalf("no event within 5s")
		}
	}
}

// expect returns the next block, which must be an event of type typ.
func (s *sseTestStream) expect(typ string) (sseTestEvent, map[string]any) {
	s.t.Helper()
	ev := s.next()
	if ev.event != typ {
		s.t.Fatalf("got event %+v, want %q", ev, typ)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(ev.data), &m); err != nil {
		s.t.Fatalf("event %q data %q is not JSON: %v", typ, ev.data, err)
	}
	return ev, m
}

// start reads what every stream begins with: retry, then the welcome.
func (s *sseTestStream) start() (sseTestEvent, map[string]any) {
	s.t.Helper()
	if ev := s.next(); ev.retry != "3000" || ev.event != "" || ev.data != "" {
		s.t.Fatalf("first block: got %+v, want retry: 3000 alone", ev)
	}
	return s.expect("welcome")
}

// expectEnd waits for the server to end the stream.
func (s *sseTestStream) expectEnd() {
	s.t.Helper()
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				if s.err != nil {
					s.t.Fatalf("stream ended with %v, want a clean end", s.err)
				}
				return
			}
			if line != "" {
				s.t.Fatalf("got line %q, want the end of the stream", line)
			}
		case <-timer.C:
			s.t.Fatalf("stream still open after 5s")
		}
	}
}

// sseTestErr checks an API error answer: status and JSON error code.
func sseTestErr(t testing.TB, resp *http.Response, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status: got %v, want %v", resp.StatusCode, status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type: got %q, want %q", ct, "application/json")
	}
	var body struct {
		Error struct{ Code, Message string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("error body: %v", err)
	}
	if body.Error.Code != code || body.Error.Message == "" {
		t.Errorf("error: got %+v, want code %q and a message", body.Error, code)
	}
}

// sseTestPublish publishes data to room on the bus.
func sseTestPublish(t testing.TB, ts *testServer, room, data string) fanout.PublishResult {
	t.Helper()
	res, err := ts.bus.Publish(context.Background(), room, fanout.Publication{Data: json.RawMessage(data), From: "pub"})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestSSEConformanceStream(t *testing.T) {
	ts := startServer(t, nil)
	sseTestPublish(t, ts, "feed", `"before"`)
	sseTestPublish(t, ts, "feed", `"before"`)

	s := sseTestOpen(t, ts.url+"/v1/sse?rooms=feed,alerts", nil)
	if ct := s.resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type: got %q, want %q", ct, "text/event-stream")
	}
	if cc := s.resp.Header.Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("Cache-Control: got %q, want %q", cc, "no-cache")
	}
	ev, welcome := s.start()
	if ev.id == "" {
		t.Errorf("welcome: got no id, want the starting cursor")
	}
	if welcome["node"] != "test-node" {
		t.Errorf("welcome node: got %v, want %v", welcome["node"], "test-node")
	}
	confStr(t, welcome, "session")
	if user := confStr(t, welcome, "user"); !strings.HasPrefix(user, "anon-") {
		t.Errorf("welcome user: got %q, want prefix anon-", user)
	}
	if welcome["ping_ms"] != float64(25000) {
		t.Errorf("welcome ping_ms: got %v, want %v", welcome["ping_ms"], 25000)
	}
	rooms, _ := welcome["rooms"].(map[string]any)
	feed, _ := rooms["feed"].(map[string]any)
	if feed == nil || confNum(t, feed["offset"]) != 2 || feed["recovered"] != false {
		t.Errorf("welcome rooms.feed: got %v, want offset 2, recovered false", rooms["feed"])
	}
	if _, ok := rooms["alerts"]; !ok {
		t.Errorf("welcome rooms: got %v, want alerts too", rooms)
	}

	// Live messages only: nothing from before the stream opened.
	ids := map[string]bool{ev.id: true}
	tests := []struct {
		name   string
		room   string
		data   string
		offset uint64
	}{
		{name: "object", room: "feed", data: `{"text":"one"}`, offset: 3},
		{name: "second room", room: "alerts", data: `"alarm"`, offset: 1},
		{name: "array", room: "feed", data: `[1,2]`, offset: 4},
		{name: "number", room: "feed", data: `5`, offset: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := sseTestPublish(t, ts, tt.room, tt.data)
			ev, m := s.expect("message")
			confCheckMessage(t, m, tt.room, tt.offset, res.Epoch, tt.data, "pub")
			if ev.id == "" || ids[ev.id] {
				t.Errorf("id: got %q, want a new cursor", ev.id)
			}
			ids[ev.id] = true
		})
	}
}

func TestSSEConformanceResume(t *testing.T) {
	tests := []struct {
		name string
		// resume turns a cursor into the reconnect's URL suffix and header.
		resume func(cursor string) (string, http.Header)
		// fromWelcome resumes from the welcome's id, before any message.
		fromWelcome bool
	}{
		{name: "Last-Event-ID header", resume: func(c string) (string, http.Header) {
			return "", http.Header{"Last-Event-ID": {c}}
		}},
		{name: "last_event_id query parameter", resume: func(c string) (string, http.Header) {
			return "&last_event_id=" + url.QueryEscape(c), nil
		}},
		{name: "from the welcome's id", fromWelcome: true, resume: func(c string) (string, http.Header) {
			return "", http.Header{"Last-Event-ID": {c}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, nil)
			base := ts.url + "/v1/sse?rooms=news,sports"
			s := sseTestOpen(t, base, nil)
			ev, _ := s.start()
			last, next := ev.id, uint64(1)
			if !tt.fromWelcome {
				for ; next <= 2; next++ {
					sseTestPublish(t, ts, "news", fmt.Sprint(next))
					ev, _ := s.expect("message")
					last = ev.id
				}
			}
			s.close()

			// Missed while away: news next..next+2, and one in sports.
			var want []string
			for range 3 {
				sseTestPublish(t, ts, "news", fmt.Sprint(next))
				want = append(want, fmt.Sprintf("news %d", next))
				next++
			}
			sseTestPublish(t, ts, "sports", `"goal"`)
			want = append(want, "sports 1")

			suffix, header := tt.resume(last)
			s = sseTestOpen(t, base+suffix, header)
			if ev := s.next(); ev.retry != "3000" {
				t.Fatalf("first block: got %+v, want retry: 3000", ev)
			}
			// One live message after the resume, then read until it is seen.
			sseTestPublish(t, ts, "news", fmt.Sprint(next))
			want = append(want, fmt.Sprintf("news %d", next))
			var got []string
			welcomes := 0
			for len(got) < len(want) {
				ev := s.next()
				switch ev.event {
				case "welcome":
					welcomes++
					var w struct {
						Rooms map[string]struct{ Recovered bool }
					}
					if err := json.Unmarshal([]byte(ev.data), &w); err != nil {
						t.Fatal(err)
					}
					if !w.Rooms["news"].Recovered {
						t.Errorf("welcome after resume: got %s, want news recovered", ev.data)
					}
				case "message":
					var m struct {
						Room   string
						Offset uint64
					}
					if err := json.Unmarshal([]byte(ev.data), &m); err != nil {
						t.Fatal(err)
					}
					got = append(got, fmt.Sprintf("%s %d", m.Room, m.Offset))
				default:
					t.Fatalf("got %+v, want a message or the welcome", ev)
				}
			}
			if welcomes != 1 {
				t.Errorf("welcome events: got %v, want %v", welcomes, 1)
			}
			// The live message is last; the missed ones keep their order per room.
			if strings.Join(got, ",") != strings.Join(want, ",") && !sameOrderPerRoom(got, want) {
				t.Fatalf("messages after resume: got %v, want %v", got, want)
			}
			// Nothing more is pending: the next event is the next live message.
			sseTestPublish(t, ts, "sports", `"again"`)
			_, m := s.expect("message")
			if m["room"] != "sports" || confNum(t, m["offset"]) != 2 {
				t.Errorf("next message: got %v, want sports 2", m)
			}
		})
	}
}

// sameOrderPerRoom reports whether got and want hold the same "room offset"
// entries with each room's entries in the same order. Streams of different
// rooms may interleave either way.
func sameOrderPerRoom(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	per := func(list []string) map[string][]string {
		m := map[string][]string{}
		for _, e := range list {
			room, _, _ := strings.Cut(e, " ")
			m[room] = append(m[room], e)
		}
		return m
	}
	g, w := per(got), per(want)
	if len(g) != len(w) {
		return false
	}
	for room, list := range w {
		if strings.Join(g[room], ",") != strings.Join(list, ",") {
			return false
		}
	}
	return true
}

func TestSSEConformanceBadLastEventID(t *testing.T) {
	ts := startServer(t, nil)
	b64 := base64.RawURLEncoding.EncodeToString
	tests := []struct {
		name   string
		cursor string
		query  bool
	}{
		{name: "not base64", cursor: "!!not base64!!"},
		{name: "not a cursor", cursor: b64([]byte("hello"))},
		{name: "offset not a number", cursor: b64([]byte("news abc x"))},
		{name: "bad room in cursor", cursor: b64([]byte("bad/room abc 1"))},
		{name: "negative offset", cursor: b64([]byte("news abc -1"))},
		{name: "room twice", cursor: b64([]byte("news abc 1,news abc 2"))},
		{name: "query fallback", cursor: "!!not base64!!", query: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := ts.url + "/v1/sse?rooms=news"
			var h http.Header
			if tt.query {
				u += "&last_event_id=" + url.QueryEscape(tt.cursor)
			} else {
				h = http.Header{"Last-Event-ID": {tt.cursor}}
			}
			sseTestErr(t, sseTestGet(t, http.MethodGet, u, h), http.StatusBadRequest, "bad_request")
		})
	}
}

func TestSSEConformancePing(t *testing.T) {
	const ping = 200 * time.Millisecond
	ts := startServer(t, func(c *Config) { c.PingInterval = ping })
	s := sseTestOpen(t, ts.url+"/v1/sse?rooms=quiet", nil)
	_, welcome := s.start()
	if welcome["ping_ms"] != float64(ping.Milliseconds()) {
		t.Errorf("welcome ping_ms: got %v, want %v", welcome["ping_ms"], ping.Milliseconds())
	}
	for i := range 2 {
		start := time.Now()
		ev := s.next()
		if len(ev.comments) != 1 || ev.comments[0] != "ping" || ev.event != "" || ev.data != "" {
			t.Fatalf("idle stream block %d: got %+v, want a ': ping' comment", i, ev)
		}
		if got, limit := time.Since(start), ping+ping/4+150*time.Millisecond; got > limit {
			t.Errorf("ping %d after %v, want within %v", i, got, limit)
		}
	}
	// The stream is still live after pings.
	res := sseTestPublish(t, ts, "quiet", `"hi"`)
	_, m := s.expect("message")
	confCheckMessage(t, m, "quiet", 1, res.Epoch, `"hi"`, "pub")
}

func TestSSEConformanceCORS(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Origins = []string{"*.example.com", "https://exact.test"} })
	own := ts.url // http://127.0.0.1:port
	tests := []struct {
		name       string
		method     string
		path       string
		origin     string
		wantStatus int
		wantACAO   string
		wantHeader map[string]string // header name -> substring
	}{
		{name: "no origin", method: "GET", path: "/v1/sse?rooms=a", wantStatus: 200},
		{name: "own host", method: "GET", path: "/v1/sse?rooms=a", origin: own, wantStatus: 200, wantACAO: own},
		{name: "host pattern", method: "GET", path: "/v1/sse?rooms=a", origin: "https://app.example.com", wantStatus: 200, wantACAO: "https://app.example.com"},
		{name: "origin pattern with scheme", method: "GET", path: "/v1/sse?rooms=a", origin: "https://exact.test", wantStatus: 200, wantACAO: "https://exact.test"},
		{name: "foreign origin", method: "GET", path: "/v1/sse?rooms=a", origin: "https://evil.test", wantStatus: 403},
		{name: "pattern is not a suffix match", method: "GET", path: "/v1/sse?rooms=a", origin: "https://example.com.evil.test", wantStatus: 403},
		{name: "other port of own host", method: "GET", path: "/v1/sse?rooms=a", origin: "http://127.0.0.1:1", wantStatus: 403},
		{name: "preflight for SSE", method: "OPTIONS", path: "/v1/sse?rooms=a", origin: "https://app.example.com", wantStatus: 204, wantACAO: "https://app.example.com",
			wantHeader: map[string]string{"Access-Control-Allow-Methods": "GET", "Access-Control-Allow-Headers": "Last-Event-ID"}},
		{name: "preflight for publish", method: "OPTIONS", path: "/v1/rooms/a/messages", origin: own, wantStatus: 204, wantACAO: own,
			wantHeader: map[string]string{"Access-Control-Allow-Methods": "POST", "Access-Control-Allow-Headers": "Idempotency-Key"}},
		{name: "preflight from a foreign origin", method: "OPTIONS", path: "/v1/sse?rooms=a", origin: "https://evil.test", wantStatus: 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h http.Header
			if tt.origin != "" {
				h = http.Header{"Origin": {tt.origin}, "Access-Control-Request-Method": {"GET"}}
			}
			resp := sseTestGet(t, tt.method, ts.url+tt.path, h)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status: got %v, want %v", resp.StatusCode, tt.wantStatus)
			}
			if got := resp.Header.Get("Access-Control-Allow-Origin"); got != tt.wantACAO {
				t.Errorf("Access-Control-Allow-Origin: got %q, want %q", got, tt.wantACAO)
			}
			if tt.wantACAO != "" && !strings.Contains(strings.Join(resp.Header.Values("Vary"), ","), "Origin") {
				t.Errorf("Vary: got %q, want Origin", resp.Header.Values("Vary"))
			}
			for k, v := range tt.wantHeader {
				if got := resp.Header.Get(k); !strings.Contains(got, v) {
					t.Errorf("%s: got %q, want it to contain %q", k, got, v)
				}
			}
		})
	}
}

func TestSSEConformanceRejects(t *testing.T) {
	secret := []byte("sse-secret")
	ts := startServer(t, func(c *Config) { c.JWTSecret = secret })
	tok := confToken(t, secret, "sse-user", &Permissions{Subscribe: []string{"chat:*"}})
	tests := []struct {
		name       string
		query      string
		header     http.Header
		wantStatus int
		wantCode   string
	}{
		{name: "allowed", query: "rooms=chat:a&token=" + tok, wantStatus: 200},
		{name: "token in header", query: "rooms=chat:a", header: confBearer(tok), wantStatus: 200},
		{name: "missing rooms", query: "token=" + tok, wantStatus: 400, wantCode: "bad_request"},
		{name: "empty rooms", query: "rooms=&token=" + tok, wantStatus: 400, wantCode: "bad_request"},
		{name: "bad room", query: "rooms=chat:a," + url.QueryEscape("chat:b c") + "&token=" + tok, wantStatus: 400, wantCode: "bad_room"},
		{name: "empty room name", query: "rooms=chat:a,,chat:b&token=" + tok, wantStatus: 400, wantCode: "bad_room"},
		{name: "room too long", query: "rooms=chat:" + strings.Repeat("x", 124) + "&token=" + tok, wantStatus: 400, wantCode: "bad_room"},
		{name: "room twice", query: "rooms=chat:a,chat:a&token=" + tok, wantStatus: 400, wantCode: "bad_request"},
		{name: "rooms list too long for a cursor", query: "rooms=" + sseTestLongRooms(20, 120) + "&token=" + tok, wantStatus: 400, wantCode: "bad_request"},
		{name: "forbidden room", query: "rooms=chat:a,news&token=" + tok, wantStatus: 403, wantCode: "forbidden"},
		{name: "no token", query: "rooms=chat:a", wantStatus: 401, wantCode: "unauthorized"},
		{name: "bad token", query: "rooms=chat:a&token=nope", wantStatus: 401, wantCode: "unauthorized"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := ts.url + "/v1/sse?" + tt.query
			if tt.wantStatus == 200 {
				s := sseTestOpen(t, u, tt.header)
				if _, w := s.start(); w["user"] != "sse-user" {
					t.Errorf("welcome user: got %v, want %v", w["user"], "sse-user")
				}
				return
			}
			sseTestErr(t, sseTestGet(t, http.MethodGet, u, tt.header), tt.wantStatus, tt.wantCode)
		})
	}
}

func TestSSEConformanceDrain(t *testing.T) {
	ts := startServer(t, nil)
	s := sseTestOpen(t, ts.url+"/v1/sse?rooms=feed", nil)
	s.start()

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- ts.srv.Shutdown(ctx)
	}()
	_, m := s.expect("reconnect")
	if m["reason"] != "draining" {
		t.Errorf("reconnect reason: got %v, want %v", m["reason"], "draining")
	}
	if after := confNum(t, m["after_ms"]); after > 200 {
		t.Errorf("reconnect after_ms: got %v, want within the drain window of 200", after)
	}
	s.expectEnd()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown: got %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return within 5s")
	}
}

// sseTestLongRooms lists n distinct chat: rooms of size bytes each.
func sseTestLongRooms(n, size int) string {
	rooms := make([]string, n)
	for i := range rooms {
		name := fmt.Sprintf("chat:%d:", i)
		rooms[i] = name + strings.Repeat("x", size-len(name))
	}
	return strings.Join(rooms, ",")
}
