package gateway

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/parley-rt/parley/fanout"
)

// badBystander is a well-behaved session that every bad-input test checks
// afterwards: it can still publish, and it receives its own message promptly.
type badBystander struct {
	c    *wsConn
	room string
	n    int
}

func badNewBystander(t testing.TB, ts *testServer, header http.Header) *badBystander {
	t.Helper()
	c := dialWS(t, ts.ws, header)
	c.expect("welcome")
	b := &badBystander{c: c, room: "bystander"}
	c.send(map[string]any{"type": "subscribe", "id": "by-sub", "room": b.room})
	if ack := c.expect("ack"); ack["id"] != "by-sub" {
		t.Fatalf("got %v, want the bystander's subscribe ack", ack)
	}
	return b
}

// check publishes one message and waits for its ack and its delivery back,
// within a second. Others' messages in the room are skipped.
func (b *badBystander) check(t testing.TB, after string) {
	t.Helper()
	b.n++
	id := fmt.Sprintf("by%d", b.n)
	want := fmt.Sprintf(`{"by":%d}`, b.n)
	start := time.Now()
	b.c.send(map[string]any{"type": "publish", "id": id, "room": b.room, "data": json.RawMessage(want)})
	acked, delivered := false, false
	for !acked || !delivered {
		m, err := b.c.nextErr(5 * time.Second)
		if err != nil {
			t.Fatalf("after %s: the bystander's read failed: %v", after, err)
		}
		switch m["type"] {
		case "ack":
			acked = acked || m["id"] == id
		case "message":
			data, _ := json.Marshal(m["data"])
			delivered = delivered || string(data) == want
		case "ping":
		default:
			t.Fatalf("after %s: the bystander got %v, want its ack and message", after, m)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("after %s: the bystander's round trip took %v, want under 1s", after, d)
	}
}

// badDial dials a WebSocket that is expected to be refused; its transport is
// closed when the test ends so that no idle connection outlives it.
func badDial(t testing.TB, url string, header http.Header) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		Subprotocols: []string{Subprotocol}, HTTPHeader: header, HTTPClient: &http.Client{Transport: tr},
	})
	if c != nil {
		t.Cleanup(func() { c.CloseNow() })
	}
	return c, resp, err
}

// badSession finds a session of the server by its id.
func badSession(ts *testServer, id string) *session {
	ts.srv.sessMu.Lock()
	defer ts.srv.sessMu.Unlock()
	for s := range ts.srv.sessions {
		if s.id == id {
			return s
		}
	}
	return nil
}

// badExpectOpen shows a connection survived an error: a later command works.
func badExpectOpen(w *wsConn) {
	w.t.Helper()
	w.send(map[string]any{"type": "subscribe", "id": "still-open", "room": "bad:still-open"})
	m := w.next()
	if m["type"] != "ack" || m["id"] != "still-open" {
		w.t.Fatalf("got %v, want the ack of a command after the error", m)
	}
}

func TestBadFrames(t *testing.T) {
	ts := startServer(t, nil)
	by := badNewBystander(t, ts, nil)
	long := strings.Repeat("i", 65)
	tests := []struct {
		name  string
		frame string
		code  string // "" means the frame is accepted and acked
		id    string // the id the reply carries; "" means none
	}{
		{name: "malformed JSON", frame: `{"type":"subscribe","id":"m1",`, code: codeBadRequest, id: "m1"},
		{name: "not JSON", frame: `hello`, code: codeBadRequest},
		{name: "empty frame", frame: ``, code: codeBadRequest},
		{name: "JSON array", frame: `[{"type":"pong"}]`, code: codeBadRequest},
		{name: "JSON null", frame: `null`, code: codeBadRequest},
		{name: "trailing garbage", frame: `{"type":"subscribe","id":"g1","room":"a"} x`, code: codeBadRequest, id: "g1"},
		{name: "two objects", frame: `{"type":"pong"}` + "\n" + `{"type":"pong"}`, code: codeBadRequest},
		{name: "unknown type", frame: `{"type":"dance","id":"u1"}`, code: codeBadRequest, id: "u1"},
		{name: "missing type", frame: `{"id":"u2","room":"a"}`, code: codeBadRequest, id: "u2"},
		{name: "type not a string", frame: `{"type":7,"id":"u3"}`, code: codeBadRequest, id: "u3"},
		{name: "since not an object", frame: `{"type":"subscribe","id":"u4","room":"a","since":5}`, code: codeBadRequest, id: "u4"},
		{name: "subscribe without room", frame: `{"type":"subscribe","id":"f1"}`, code: codeBadRequest, id: "f1"},
		{name: "subscribe with null room", frame: `{"type":"subscribe","id":"f2","room":null}`, code: codeBadRequest, id: "f2"},
		{name: "unsubscribe without room", frame: `{"type":"unsubscribe","id":"f3"}`, code: codeBadRequest, id: "f3"},
		{name: "publish without room", frame: `{"type":"publish","id":"f4","data":1}`, code: codeBadRequest, id: "f4"},
		{name: "publish without data", frame: `{"type":"publish","id":"f5","room":"a"}`, code: codeBadRequest, id: "f5"},
		{name: "publish key over 64 bytes", frame: `{"type":"publish","id":"f6","room":"a","data":1,"key":"` + strings.Repeat("k", 65) + `"}`, code: codeBadRequest, id: "f6"},
		{name: "id over 64 bytes", frame: `{"type":"subscribe","id":"` + long + `","room":"a"}`, code: codeBadRequest},
		{name: "id over 64 bytes with a bad field", frame: `{"type":"subscribe","id":"` + long + `","room":5}`, code: codeBadRequest},
		{name: "id over 64 bytes in malformed JSON", frame: `{"type":"subscribe","id":"` + long + `",`, code: codeBadRequest},
		{name: "id a number", frame: `{"type":"subscribe","id":5,"room":"a"}`, code: codeBadRequest, id: "5"},
		{name: "id neither a string nor a number", frame: `{"type":"subscribe","id":[5],"room":"a"}`, code: codeBadRequest},
		{name: "room too long", frame: `{"type":"subscribe","id":"r1","room":"` + strings.Repeat("r", 129) + `"}`, code: codeBadRoom, id: "r1"},
		{name: "room with a space", frame: `{"type":"subscribe","id":"r2","room":"a b"}`, code: codeBadRoom, id: "r2"},
		{name: "room with a slash", frame: `{"type":"subscribe","id":"r3","room":"a/b"}`, code: codeBadRoom, id: "r3"},
		{name: "room with a non-ASCII letter", frame: `{"type":"subscribe","id":"r4","room":"caf\u00e9"}`, code: codeBadRoom, id: "r4"},
		{name: "room with a NUL", frame: `{"type":"subscribe","id":"r5","room":"a\u0000b"}`, code: codeBadRoom, id: "r5"},
		{name: "room with a star", frame: `{"type":"subscribe","id":"r6","room":"chat:*"}`, code: codeBadRoom, id: "r6"},
		{name: "empty room on subscribe", frame: `{"type":"subscribe","id":"r7","room":""}`, code: codeBadRoom, id: "r7"},
		{name: "empty room on publish", frame: `{"type":"publish","id":"r8","room":"","data":1}`, code: codeBadRoom, id: "r8"},
		{name: "empty room on unsubscribe", frame: `{"type":"unsubscribe","id":"r9","room":""}`, code: codeBadRoom, id: "r9"},
		{name: "bad room on publish", frame: `{"type":"publish","id":"r10","room":"a#b","data":1}`, code: codeBadRoom, id: "r10"},
		{name: "id of 64 bytes is accepted", frame: `{"type":"subscribe","id":"` + long[:64] + `","room":"a"}`, id: long[:64]},
		{name: "room of 128 bytes is accepted", frame: `{"type":"subscribe","id":"ok2","room":"` + strings.Repeat("r", 128) + `"}`, id: "ok2"},
		{name: "room of every allowed character is accepted", frame: `{"type":"subscribe","id":"ok3","room":"azAZ09_.:@-"}`, id: "ok3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := dialWS(t, ts.ws, nil)
			w.expect("welcome")
			w.send([]byte(tt.frame))
			m := w.next()
			switch {
			case tt.code == "" && m["type"] != "ack":
				t.Fatalf("got %v, want an ack", m)
			case tt.code != "" && (m["type"] != "error" || m["code"] != tt.code):
				t.Fatalf("got %v, want an error %s", m, tt.code)
			}
			if got, _ := m["id"].(string); got != tt.id {
				t.Errorf("reply id: got %q, want %q", got, tt.id)
			}
			if msg, _ := m["message"].(string); tt.code != "" && msg == "" {
				t.Errorf("got error %v, want a message saying why", m)
			}
			badExpectOpen(w)
		})
		by.check(t, tt.name)
	}
}

func TestBadBinaryFrame(t *testing.T) {
	ts := startServer(t, nil)
	by := badNewBystander(t, ts, nil)
	w := dialWS(t, ts.ws, nil)
	w.expect("welcome")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.c.Write(ctx, websocket.MessageBinary, []byte(`{"type":"pong"}`)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if got, want := w.closeStatus(), websocket.StatusUnsupportedData; got != want {
		t.Errorf("close status: got %v, want %v", got, want)
	}
	by.check(t, "a binary frame")
}

// badPublishFrame is a publish frame of exactly size bytes.
func badPublishFrame(t testing.TB, size int) []byte {
	t.Helper()
	head := `{"type":"publish","id":"big","room":"bad:big","data":"`
	tail := `"}`
	pad := size - len(head) - len(tail)
	if pad < 0 {
		t.Fatalf("frame of %d bytes is too small to build", size)
	}
	return []byte(head + strings.Repeat("x", pad) + tail)
}

func TestBadFrameSize(t *testing.T) {
	// The default MaxFrameSize is the protocol's 64 KiB.
	ts := startServer(t, nil)
	by := badNewBystander(t, ts, nil)
	tests := []struct {
		name  string
		size  int
		close websocket.StatusCode // 0: accepted
	}{
		{name: "64 KiB is accepted", size: 64 << 10},
		{name: "64 KiB + 1 is closed with 1009", size: 64<<10 + 1, close: websocket.StatusMessageTooBig},
		{name: "64 KiB + 100 is closed with 1009", size: 64<<10 + 100, close: websocket.StatusMessageTooBig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := dialWS(t, ts.ws, nil)
			w.expect("welcome")
			w.send(badPublishFrame(t, tt.size))
			if tt.close == 0 {
				if ack := w.expect("ack"); ack["id"] != "big" {
					t.Fatalf("got %v, want the ack of the publish", ack)
				}
				badExpectOpen(w)
				return
			}
			if got := w.closeStatus(); got != tt.close {
				t.Errorf("close status: got %v, want %v", got, tt.close)
			}
		})
		by.check(t, tt.name)
	}

	// The HTTP API takes the same limit for a body.
	for _, tt := range []struct {
		name   string
		size   int
		status int
	}{
		{name: "API body of 64 KiB", size: 64 << 10, status: http.StatusOK},
		{name: "API body of 64 KiB + 1", size: 64<<10 + 1, status: http.StatusRequestEntityTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := `"` + strings.Repeat("x", tt.size-2) + `"`
			resp, err := ts.http.Client().Post(ts.url+"/v1/rooms/bad:big/messages", "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("status: got %v, want %v", resp.StatusCode, tt.status)
			}
		})
		by.check(t, tt.name)
	}
}

// badTokens signs tokens with every key the auth tests need.
type badTokens struct {
	secret []byte
	rsa    *rsa.PrivateKey
	ec     *ecdsa.PrivateKey
}

func newBadTokens(t testing.TB, secret []byte) *badTokens {
	t.Helper()
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &badTokens{secret: secret, rsa: rk, ec: ek}
}

func (k *badTokens) sign(t testing.TB, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatalf("signing %s: %v", m.Alg(), err)
	}
	return tok
}

func badClaims(user string, exp time.Time) jwt.MapClaims {
	c := jwt.MapClaims{"exp": exp.Unix()}
	if user != "" {
		c["sub"] = user
	}
	return c
}

func badBearer(tok string) http.Header {
	return http.Header{"Authorization": {"Bearer " + tok}}
}

// badExpectUnauthorized dials with a credential the gateway must refuse: the
// handshake completes, then an unauthorized error and a 1008 close follow.
func badExpectUnauthorized(t testing.TB, url string, header http.Header) {
	t.Helper()
	w := dialWS(t, url, header)
	m := w.next()
	if m["type"] != "error" || m["code"] != codeUnauthorized {
		t.Fatalf("got %v, want an unauthorized error before anything else", m)
	}
	if got, want := w.closeStatus(), websocket.StatusPolicyViolation; got != want {
		t.Errorf("close status: got %v, want %v", got, want)
	}
}

func TestBadAuthHS256(t *testing.T) {
	secret := []byte("the-real-secret")
	ts := startServer(t, func(c *Config) {
		c.JWTSecret = secret
		c.APIKey = "the-api-key"
	})
	k := newBadTokens(t, secret)
	now := time.Now()
	valid := k.sign(t, jwt.SigningMethodHS256, secret, badClaims("bystander", now.Add(time.Hour)))
	by := badNewBystander(t, ts, badBearer(valid))

	none := func() string {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodNone, badClaims("mallory", now.Add(time.Hour))).SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tampered := func() string {
		// A valid token of one user with the payload of another.
		parts := strings.Split(k.sign(t, jwt.SigningMethodHS256, secret, badClaims("alice", now.Add(time.Hour))), ".")
		other := strings.Split(k.sign(t, jwt.SigningMethodHS256, []byte("x"), badClaims("admin", now.Add(time.Hour))), ".")
		return parts[0] + "." + other[1] + "." + parts[2]
	}
	tests := []struct {
		name   string
		token  string
		query  bool // send it as ?token= instead of a header
		header http.Header
	}{
		{name: "forged with another secret", token: k.sign(t, jwt.SigningMethodHS256, []byte("not-the-secret"), badClaims("mallory", now.Add(time.Hour)))},
		{name: "forged, in the query", token: k.sign(t, jwt.SigningMethodHS256, []byte("not-the-secret"), badClaims("mallory", now.Add(time.Hour))), query: true},
		{name: "tampered payload", token: tampered()},
		{name: "expired", token: k.sign(t, jwt.SigningMethodHS256, secret, badClaims("alice", now.Add(-time.Minute)))},
		{name: "not valid yet", token: k.sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix(), "nbf": now.Add(time.Hour).Unix()})},
		{name: "HS512 with the right secret", token: k.sign(t, jwt.SigningMethodHS512, secret, badClaims("alice", now.Add(time.Hour)))},
		{name: "HS384 with the right secret", token: k.sign(t, jwt.SigningMethodHS384, secret, badClaims("alice", now.Add(time.Hour)))},
		{name: "alg none", token: none()},
		{name: "RS256 against an HS256 config", token: k.sign(t, jwt.SigningMethodRS256, k.rsa, badClaims("alice", now.Add(time.Hour)))},
		{name: "ES256 against an HS256 config", token: k.sign(t, jwt.SigningMethodES256, k.ec, badClaims("alice", now.Add(time.Hour)))},
		{name: "without sub", token: k.sign(t, jwt.SigningMethodHS256, secret, badClaims("", now.Add(time.Hour)))},
		{name: "empty sub", token: k.sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "", "exp": now.Add(time.Hour).Unix()})},
		{name: "without exp", token: k.sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "alice"})},
		{name: "not a JWT", token: "not-a-jwt"},
		{name: "the API key", token: "the-api-key"},
		{name: "no credential", header: http.Header{}},
		{name: "not a bearer credential", header: http.Header{"Authorization": {"Basic " + valid}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, header := ts.ws, tt.header
			switch {
			case tt.query:
				url += "?token=" + tt.token
			case header == nil:
				header = badBearer(tt.token)
			}
			badExpectUnauthorized(t, url, header)
		})
		by.check(t, tt.name)
	}
}

func TestBadAuthPublicKey(t *testing.T) {
	k := newBadTokens(t, nil)
	ts := startServer(t, func(c *Config) { c.JWTPublicKey = &k.rsa.PublicKey })
	now := time.Now()
	by := badNewBystander(t, ts, badBearer(k.sign(t, jwt.SigningMethodRS256, k.rsa, badClaims("bystander", now.Add(time.Hour)))))

	der, err := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		token string
	}{
		// The classic confusion: an HS256 token whose HMAC key is the
		// server's public key.
		{name: "HS256 keyed with the PEM public key", token: k.sign(t, jwt.SigningMethodHS256, pemKey, badClaims("mallory", now.Add(time.Hour)))},
		{name: "HS256 keyed with the DER public key", token: k.sign(t, jwt.SigningMethodHS256, der, badClaims("mallory", now.Add(time.Hour)))},
		{name: "RS256 by another key", token: k.sign(t, jwt.SigningMethodRS256, other, badClaims("mallory", now.Add(time.Hour)))},
		{name: "RS512 by the right key", token: k.sign(t, jwt.SigningMethodRS512, k.rsa, badClaims("mallory", now.Add(time.Hour)))},
		{name: "PS256 by the right key", token: k.sign(t, jwt.SigningMethodPS256, k.rsa, badClaims("mallory", now.Add(time.Hour)))},
		{name: "ES256", token: k.sign(t, jwt.SigningMethodES256, k.ec, badClaims("mallory", now.Add(time.Hour)))},
		{name: "expired RS256", token: k.sign(t, jwt.SigningMethodRS256, k.rsa, badClaims("mallory", now.Add(-time.Minute)))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			badExpectUnauthorized(t, ts.ws, badBearer(tt.token))
		})
		by.check(t, tt.name)
	}
}

func TestBadForbiddenRoom(t *testing.T) {
	secret := []byte("the-real-secret")
	ts := startServer(t, func(c *Config) { c.JWTSecret = secret })
	now := time.Now()
	mint := func(user string, p *Permissions) string {
		s, err := MintToken(secret, user, time.Hour, p, now)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tok := func(user string, p *Permissions) http.Header { return badBearer(mint(user, p)) }
	by := badNewBystander(t, ts, tok("bystander", nil))
	w := dialWS(t, ts.ws, tok("reader", &Permissions{Subscribe: []string{"chat:*", "bystander"}, Publish: []string{"chat:own"}}))
	w.expect("welcome")
	tests := []struct {
		name  string
		frame map[string]any
		code  string
	}{
		{name: "subscribe outside the pattern", frame: map[string]any{"type": "subscribe", "room": "news"}, code: codeForbidden},
		{name: "subscribe to the pattern's prefix", frame: map[string]any{"type": "subscribe", "room": "chat"}, code: codeForbidden},
		{name: "publish where it may only read", frame: map[string]any{"type": "publish", "room": "bystander", "data": 1}, code: codeForbidden},
		{name: "publish to another chat room", frame: map[string]any{"type": "publish", "room": "chat:other", "data": 1}, code: codeForbidden},
		{name: "subscribe inside the pattern", frame: map[string]any{"type": "subscribe", "room": "chat:a"}},
		{name: "publish where allowed", frame: map[string]any{"type": "publish", "room": "chat:own", "data": 1}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprint(i)
			tt.frame["id"] = id
			w.send(tt.frame)
			m := w.next()
			switch {
			case m["id"] != id:
				t.Fatalf("got %v, want the reply to %s", m, id)
			case tt.code == "" && m["type"] != "ack":
				t.Fatalf("got %v, want an ack", m)
			case tt.code != "" && (m["type"] != "error" || m["code"] != tt.code):
				t.Fatalf("got %v, want an error %s", m, tt.code)
			}
		})
		by.check(t, tt.name)
	}
	// Nothing forbidden was published.
	h, err := ts.bus.History(context.Background(), "bystander", fanout.HistoryQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range h.Messages {
		if m.From != "bystander" {
			t.Errorf("got a message from %q in the bystander's room, want none", m.From)
		}
	}

	// SSE refuses the room the same way.
	resp, err := ts.http.Client().Get(ts.url + "/v1/sse?rooms=chat:a,news&token=" + mint("reader", &Permissions{Subscribe: []string{"chat:*"}}))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("sse status: got %v, want %v", resp.StatusCode, http.StatusForbidden)
	}
	by.check(t, "sse")
}

func TestBadAPIWithoutKey(t *testing.T) {
	secret := []byte("the-real-secret")
	ts := startServer(t, func(c *Config) {
		c.JWTSecret = secret
		c.APIKey = "the-api-key"
	})
	userTok, err := MintToken(secret, "bystander", time.Hour, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	forged, err := MintToken([]byte("not-the-secret"), "mallory", time.Hour, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	by := badNewBystander(t, ts, badBearer(userTok))
	tests := []struct {
		name   string
		auth   string
		status int
	}{
		{name: "no Authorization", status: http.StatusUnauthorized},
		{name: "wrong key", auth: "Bearer not-the-key", status: http.StatusUnauthorized},
		{name: "key with a suffix", auth: "Bearer the-api-key2", status: http.StatusUnauthorized},
		{name: "key prefix", auth: "Bearer the-api", status: http.StatusUnauthorized},
		{name: "key without Bearer", auth: "the-api-key", status: http.StatusUnauthorized},
		{name: "key as Basic", auth: "Basic the-api-key", status: http.StatusUnauthorized},
		{name: "forged token", auth: "Bearer " + forged, status: http.StatusUnauthorized},
		{name: "the key", auth: "Bearer the-api-key", status: http.StatusOK},
		{name: "a user's token", auth: "Bearer " + userTok, status: http.StatusOK},
	}
	endpoints := []struct {
		method, path string
	}{
		{http.MethodPost, "/v1/rooms/bystander/messages"},
		{http.MethodGet, "/v1/rooms/bystander/history"},
		{http.MethodGet, "/v1/rooms/bystander/presence"},
	}
	for _, tt := range tests {
		for _, ep := range endpoints {
			t.Run(tt.name+" "+ep.method+" "+ep.path, func(t *testing.T) {
				req, err := http.NewRequest(ep.method, ts.url+ep.path, strings.NewReader(`{"api":true}`))
				if err != nil {
					t.Fatal(err)
				}
				if tt.auth != "" {
					req.Header.Set("Authorization", tt.auth)
				}
				resp, err := ts.http.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				var body struct {
					Error *protoError `json:"error"`
				}
				json.NewDecoder(resp.Body).Decode(&body)
				resp.Body.Close()
				if resp.StatusCode != tt.status {
					t.Fatalf("status: got %v, want %v", resp.StatusCode, tt.status)
				}
				if tt.status == http.StatusUnauthorized && (body.Error == nil || body.Error.Code != codeUnauthorized) {
					t.Errorf("body error: got %+v, want code %s", body.Error, codeUnauthorized)
				}
			})
		}
		by.check(t, tt.name)
	}
	// Only the two authorised publishes reached the room, besides the
	// bystander's own.
	h, err := ts.bus.History(context.Background(), "bystander", fanout.HistoryQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	api := 0
	for _, m := range h.Messages {
		if string(m.Data) == `{"api":true}` {
			api++
		}
	}
	if api != 2 {
		t.Errorf("API messages in history: got %v, want %v", api, 2)
	}
}

func TestBadPublishFlood(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.PublishRate, c.PublishBurst = 10, 5 })
	by := badNewBystander(t, ts, nil)
	w := dialWS(t, ts.ws, nil)
	w.expect("welcome")

	const flood = 40
	start := time.Now()
	for i := range flood {
		w.send(map[string]any{"type": "publish", "id": fmt.Sprint(i), "room": "bad:flood", "data": i})
	}
	acks, limited := 0, 0
	seen := make(map[string]bool)
	for range flood {
		m := w.next()
		id, _ := m["id"].(string)
		if seen[id] {
			t.Fatalf("got a second reply for %q: %v", id, m)
		}
		seen[id] = true
		switch {
		case m["type"] == "ack":
			acks++
		case m["type"] == "error" && m["code"] == codeRateLimited:
			limited++
		default:
			t.Fatalf("got %v, want an ack or a rate_limited error", m)
		}
	}
	elapsed := time.Since(start)
	// The burst passes, then about PublishRate per second.
	if most := 5 + int(10*elapsed.Seconds()) + 1; acks < 5 || acks > most {
		t.Errorf("acks: got %v, want 5 to %v in %v", acks, most, elapsed)
	}
	if limited != flood-acks {
		t.Errorf("rate_limited errors: got %v, want %v", limited, flood-acks)
	}
	// Only the acknowledged ones were published.
	h, err := ts.bus.History(context.Background(), "bad:flood", fanout.HistoryQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if h.Top.Offset != uint64(acks) {
		t.Errorf("published: got %v, want %v", h.Top.Offset, acks)
	}

	// The connection stays open, and the limiter refills.
	badExpectOpen(w)
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; ; i++ {
		id := fmt.Sprintf("again%d", i)
		w.send(map[string]any{"type": "publish", "id": id, "room": "bad:flood", "data": i})
		m := w.next()
		if m["type"] == "ack" && m["id"] == id {
			break
		}
		if m["code"] != codeRateLimited || time.Now().After(deadline) {
			t.Fatalf("got %v, want an ack once the limiter refilled", m)
		}
		time.Sleep(50 * time.Millisecond)
	}
	by.check(t, "a publish flood")
}

func TestBadSlowConsumer(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.QueueLimit = 64 << 10 })
	const room = "bad:slow"

	// The slow client has a small receive buffer, so the server's socket
	// fills soon after it stops reading. It is set before connect: shrunk
	// afterwards, the buffer could no longer hold the window the client had
	// already offered, the kernel would drop what the server sent into it,
	// and the server would resend only on its retransmission timer, which
	// backs off to seconds while the client does not read.
	var slowTCP *net.TCPConn
	dialer := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = setRcvbuf(fd, 4<<10)
		}); err != nil {
			return err
		}
		return serr
	}}
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			slowTCP = tc
		}
		return c, err
	}}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	sc, _, err := websocket.Dial(ctx, ts.ws, &websocket.DialOptions{Subprotocols: []string{Subprotocol}, HTTPClient: &http.Client{Transport: tr}})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.CloseNow() })
	sc.SetReadLimit(8 << 20)
	slow := &wsConn{t: t, c: sc}
	slowID, _ := slow.expect("welcome")["session"].(string)
	recSubscribe(slow, "s", room, nil)
	// From here on the slow client reads nothing.

	fast := badNewBystander(t, ts, nil)
	fast.c.send(map[string]any{"type": "subscribe", "id": "fast", "room": room})
	if ack := fast.c.expect("ack"); ack["id"] != "fast" {
		t.Fatalf("got %v, want the fast client's ack", ack)
	}

	s := badSession(ts, slowID)
	if s == nil {
		t.Fatal("the slow client's session is not on the server")
	}
	// The server's socket buffer for it is small too, so a few hundred KiB
	// rather than megabytes fill the path and the test stays fast.
	if tc, ok := s.netConn.(*net.TCPConn); ok {
		tc.SetWriteBuffer(16 << 10)
	}
	pad := strings.Repeat("x", 8<<10)
	var (
		published int
		sentAt    = map[int]time.Time{}
		worst     time.Duration
	)
	// Publish in bursts of 4 messages of 8 KiB (half the queue bound, which
	// binds the fast client too); the fast client must get each within a
	// second.
	const burstLen = 4
	burst := func() {
		for range burstLen {
			published++
			sentAt[published] = time.Now()
			recPublishBus(t, ts, room, fmt.Sprintf(`{"i":%d,"pad":%q}`, published, pad))
		}
		for i := published - burstLen + 1; i <= published; i++ {
			m := recToMessage(t, fast.c.next())
			if m.offset != uint64(i) {
				t.Fatalf("fast client: got offset %v, want %v", m.offset, i)
			}
			lat := time.Since(sentAt[i])
			worst = max(worst, lat)
			if lat > time.Second {
				t.Fatalf("fast client: message %d took %v, want under 1s", i, lat)
			}
		}
	}
	for !s.isClosed() {
		if published >= 2000 {
			t.Fatalf("the slow client is still open after %d messages of 8 KiB", published)
		}
		burst()
	}
	closedAfter := published
	for range 16 {
		burst()
	}
	t.Logf("slow client closed after %d messages; fast client's worst latency %v", closedAfter, worst)

	// The slow client, reading again (with a receive buffer that lets the
	// backlog drain quickly), finds it cut short by a 1013 close.
	if slowTCP == nil {
		t.Fatal("the slow client's TCP connection was not captured")
	}
	slowTCP.SetReadBuffer(4 << 20)
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if _, _, err = sc.Read(ctx); err != nil {
			break
		}
	}
	if got, want := websocket.CloseStatus(err), websocket.StatusTryAgainLater; got != want {
		t.Errorf("slow client close: got %v (%v), want %v", got, err, want)
	}
	recPoll(t, 5*time.Second, func() bool { return badSession(ts, slowID) == nil })
	fast.check(t, "a slow consumer")
}

func TestBadSlowloris(t *testing.T) {
	const timeout = 400 * time.Millisecond
	ts := startServer(t, func(c *Config) { c.HandshakeTimeout = timeout })
	by := badNewBystander(t, ts, nil)
	addr := ts.http.Listener.Addr().String()

	const n = 20
	type cut struct {
		after time.Duration
		data  string
	}
	cuts := make(chan cut, n)
	var conns []net.Conn
	start := time.Now()
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
		head := "GET /v1/ws HTTP/1.1\r\nHost: " + addr + "\r\n"
		if i%2 == 1 {
			head = "POST /v1/rooms/bad:loris/messages HTTP/1.1\r\n"
		}
		if _, err := io.WriteString(c, head); err != nil {
			t.Fatal(err)
		}
		go func() {
			b, _ := io.ReadAll(c) // until the server hangs up
			cuts <- cut{after: time.Since(start), data: string(b)}
		}()
	}
	// One header byte at a time, never finishing.
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for _, c := range conns {
				c.Write([]byte("X"))
			}
		}
	}()
	defer func() {
		close(stop)
		<-trickled
	}()

	// Others are served meanwhile: a new client connects, subscribes and
	// publishes, and the old one is undisturbed.
	fresh := dialWS(t, ts.ws, nil)
	fresh.expect("welcome")
	recSubscribe(fresh, "s", "bad:fresh", nil)
	fresh.send(map[string]any{"type": "publish", "id": "p", "room": "bad:fresh", "data": 1})
	recNextMessage(fresh)
	by.check(t, "slowloris connections opened")
	if served := time.Since(start); served >= timeout {
		t.Logf("the fresh client was served after %v, not within the handshake timeout", served)
	} else if len(cuts) > 0 {
		t.Errorf("a slowloris connection was cut before %v", served)
	}

	for range n {
		select {
		case c := <-cuts:
			if c.after < timeout-50*time.Millisecond || c.after > timeout+2*time.Second {
				t.Errorf("slowloris cut after %v, want about %v", c.after, timeout)
			}
			// net/http may say 400 before it hangs up; it must never have
			// reached the handler.
			if c.data != "" && !strings.HasPrefix(c.data, "HTTP/1.1 400 ") {
				t.Errorf("slowloris got %q, want the connection closed", c.data)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a slowloris connection is still open after 5s")
		}
	}
	by.check(t, "slowloris connections cut")

	// A request whose headers arrive but whose body trickles is cut as well.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /v1/rooms/bad:loris/messages HTTP/1.1\r\nHost: "+addr+"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n\"")
	bodyStart := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("slow body: %v", err)
	}
	resp.Body.Close()
	if took := time.Since(bodyStart); resp.StatusCode != http.StatusBadRequest || took > timeout+2*time.Second {
		t.Errorf("slow body: got status %v after %v, want %v after about %v", resp.StatusCode, took, http.StatusBadRequest, timeout)
	}
	by.check(t, "a slow body")
}

func TestBadConnsPerIP(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxConnsPerIP = 3 })
	by := badNewBystander(t, ts, nil)
	a := dialWS(t, ts.ws, nil)
	a.expect("welcome")
	b := dialWS(t, ts.ws, nil)
	b.expect("welcome")

	_, resp, err := badDial(t, ts.ws, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("fourth WebSocket: got response %v and error %v, want status %v", resp, err, http.StatusTooManyRequests)
	}
	sse, err := ts.http.Client().Get(ts.url + "/v1/sse?rooms=bad:ip")
	if err != nil {
		t.Fatal(err)
	}
	sse.Body.Close()
	if sse.StatusCode != http.StatusTooManyRequests {
		t.Errorf("fourth connection over SSE: got status %v, want %v", sse.StatusCode, http.StatusTooManyRequests)
	}
	by.check(t, "refused connections")

	// A slot frees when a connection ends.
	a.c.Close(websocket.StatusNormalClosure, "")
	recPoll(t, 5*time.Second, func() bool {
		c, _, err := badDial(t, ts.ws, nil)
		if err != nil {
			return false
		}
		c.CloseNow()
		return true
	})
	by.check(t, "a freed slot")
}

func TestBadRoomLimit(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxRoomsPerSession = 3 })
	by := badNewBystander(t, ts, nil)
	w := dialWS(t, ts.ws, nil)
	w.expect("welcome")
	for i := 1; i <= 3; i++ {
		recSubscribe(w, fmt.Sprint(i), fmt.Sprintf("bad:r%d", i), nil)
	}
	w.send(map[string]any{"type": "subscribe", "id": "4", "room": "bad:r4"})
	if m := w.next(); m["type"] != "error" || m["code"] != codeForbidden || m["id"] != "4" {
		t.Fatalf("got %v, want a forbidden error for the fourth room", m)
	}
	by.check(t, "the room limit")
	// Leaving a room makes space again.
	w.send(map[string]any{"type": "unsubscribe", "id": "u", "room": "bad:r1"})
	if m := w.expect("ack"); m["id"] != "u" {
		t.Fatalf("got %v, want the unsubscribe ack", m)
	}
	recSubscribe(w, "4again", "bad:r4", nil)

	// SSE takes at most as many rooms.
	resp, err := ts.http.Client().Get(ts.url + "/v1/sse?rooms=a,b,c,d")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("sse with 4 rooms: got status %v, want %v", resp.StatusCode, http.StatusForbidden)
	}
	by.check(t, "sse with too many rooms")
}

func TestBadConnectionChurn(t *testing.T) {
	ts := startServer(t, nil)
	by := badNewBystander(t, ts, nil)
	before := goleak.IgnoreCurrent()
	addr := ts.http.Listener.Addr().String()

	const workers, each = 4, 40
	errs := make(chan error, workers*each)
	var wg sync.WaitGroup
	for wi := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := badChurnOnce(ts, addr, (wi+i)%5); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Everything the churn opened is released: sessions, per-IP counts and
	// goroutines.
	recPoll(t, 5*time.Second, func() bool {
		ts.srv.sessMu.Lock()
		defer ts.srv.sessMu.Unlock()
		return len(ts.srv.sessions) == 1 && len(ts.srv.perIP) == 1 && ts.srv.perIP["127.0.0.1"] == 1
	})
	goleak.VerifyNone(t, before)
	by.check(t, "a connection churn")
}

// badChurnOnce opens one connection of the given kind and drops it.
func badChurnOnce(ts *testServer, addr string, kind int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	switch kind {
	case 0, 1, 2: // WebSocket: closed cleanly, dropped, or dropped mid-subscribe
		c, _, err := websocket.Dial(ctx, ts.ws, &websocket.DialOptions{Subprotocols: []string{Subprotocol}})
		if err != nil {
			return err
		}
		defer c.CloseNow()
		if _, _, err := c.Read(ctx); err != nil {
			return err
		}
		switch kind {
		case 0:
			return c.Close(websocket.StatusNormalClosure, "")
		case 2:
			return c.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","room":"bad:churn","presence":true}`))
		}
		return nil
	case 3: // SSE, dropped after the first bytes
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, ts.url+"/v1/sse?rooms=bad:churn", nil)
		if err != nil {
			return err
		}
		resp, err := ts.http.Client().Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = resp.Body.Read(make([]byte, 1))
		cancel()
		return err
	default: // a TCP connection that never sends a request
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
}
