package gateway

// What a client reads when something is wrong: error frames and HTTP errors
// in the protocol's words, with the codes and shapes of PROTOCOL.md.

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// errTestGoWords are what a message in Go's words rather than the
// protocol's gives away.
var errTestGoWords = []string{"json:", "Go ", "Go value", "clientFrame", "struct", "unmarshal", "uint64", "int64", "main.", "fanout.", "gateway."}

// errTestNoGoWords fails the test when msg speaks of Go types.
func errTestNoGoWords(t testing.TB, msg string) {
	t.Helper()
	for _, w := range errTestGoWords {
		if strings.Contains(msg, w) {
			t.Errorf("message %q names %q, want the protocol's words", msg, w)
		}
	}
}

func TestErrorFrameMessages(t *testing.T) {
	ts := startServer(t, nil)
	long := strings.Repeat("i", 65)
	tests := []struct {
		name  string
		frame string
		id    string // the id the error carries; "" means none
		msg   string
	}{
		{name: "numeric id", frame: `{"type":"subscribe","id":12}`, id: "12", msg: "id must be a string of at most 64 bytes"},
		{name: "numeric id with a room", frame: `{"type":"subscribe","id":12,"room":"a"}`, id: "12", msg: "id must be a string of at most 64 bytes"},
		{name: "numeric id as written", frame: `{"type":"subscribe","id":1e2,"room":"a"}`, id: "1e2", msg: "id must be a string of at most 64 bytes"},
		{name: "boolean id", frame: `{"type":"subscribe","id":true,"room":"a"}`, msg: "id must be a string of at most 64 bytes"},
		{name: "id over 64 bytes", frame: `{"type":"subscribe","id":"` + long + `","room":"a"}`, msg: "id must be a string of at most 64 bytes"},
		{name: "since a number", frame: `{"type":"subscribe","id":"s1","room":"a","since":5}`, id: "s1", msg: `since must be {"epoch": string, "offset": number}`},
		{name: "since epoch a number", frame: `{"type":"subscribe","id":"s2","room":"a","since":{"epoch":5,"offset":1}}`, id: "s2", msg: `since must be {"epoch": string, "offset": number}`},
		{name: "since offset negative", frame: `{"type":"subscribe","id":"s3","room":"a","since":{"epoch":"e","offset":-1}}`, id: "s3", msg: `since must be {"epoch": string, "offset": number}`},
		{name: "since offset a string", frame: `{"type":"subscribe","id":"s4","room":"a","since":{"epoch":"e","offset":"1"}}`, id: "s4", msg: `since must be {"epoch": string, "offset": number}`},
		{name: "presence a string", frame: `{"type":"subscribe","id":"p1","room":"a","presence":"yes"}`, id: "p1", msg: "presence must be true or false"},
		{name: "limit a string", frame: `{"type":"presence","id":"l1","room":"a","limit":"10"}`, id: "l1", msg: "limit must be a number from 1 to 1000"},
		{name: "limit a fraction", frame: `{"type":"presence","id":"l2","room":"a","limit":1.5}`, id: "l2", msg: "limit must be a number from 1 to 1000"},
		{name: "limit 0", frame: `{"type":"presence","id":"l3","room":"a","limit":0}`, id: "l3", msg: "limit must be a number from 1 to 1000"},
		{name: "limit 1001", frame: `{"type":"presence","id":"l4","room":"a","limit":1001}`, id: "l4", msg: "limit must be a number from 1 to 1000"},
		{name: "room a number", frame: `{"type":"subscribe","id":"r1","room":7}`, id: "r1", msg: "room must be a string"},
		{name: "key a number", frame: `{"type":"publish","id":"k1","room":"a","data":1,"key":5}`, id: "k1", msg: "key must be a string of at most 64 bytes"},
		{name: "type a number", frame: `{"type":7,"id":"t1"}`, id: "t1", msg: "type must be a string"},
		{name: "cut short after the id", frame: `{"type":"subscribe","id":"m1",`, id: "m1", msg: "malformed JSON: the frame ends at byte 30 before its JSON value does"},
		{name: "missing comma before the id", frame: `{"type":"subscribe" "id":"m2"}`, msg: "malformed JSON at byte 21"},
		{name: "not JSON", frame: `hello`, msg: "malformed JSON at byte 1"},
		{name: "empty frame", frame: ``, msg: "empty frame: a frame is one JSON object"},
		{name: "an array", frame: `[{"type":"pong"}]`, msg: "a frame must be a JSON object"},
		{name: "null", frame: `null`, msg: "a frame must be a JSON object"},
		{name: "two objects", frame: `{"type":"pong"}` + "\n" + `{"type":"pong"}`, msg: "malformed JSON at byte 17: a frame is one JSON object with nothing after it"},
		{name: "trailing garbage after the id", frame: `{"type":"subscribe","id":"g1","room":"a"} x`, id: "g1", msg: "malformed JSON at byte 43: a frame is one JSON object with nothing after it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, _ := confDial(t, ts, nil)
			w.send([]byte(tt.frame))
			m := w.next()
			if m["type"] != "error" || m["code"] != codeBadRequest {
				t.Fatalf("got %v, want a bad_request error", m)
			}
			if id, ok := m["id"]; tt.id == "" && ok || tt.id != "" && id != tt.id {
				t.Errorf("error id: got %#v, want %q", m["id"], tt.id)
			}
			msg, _ := m["message"].(string)
			if msg != tt.msg {
				t.Errorf("message: got %q, want %q", msg, tt.msg)
			}
			errTestNoGoWords(t, msg)
			badExpectOpen(w)
		})
	}
}

// errTestRefused dials a WebSocket that must be refused at the handshake and
// returns the status and the JSON error of the answer.
func errTestRefused(t testing.TB, u string, header http.Header, subprotocols []string) (*http.Response, map[string]any) {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		Subprotocols: subprotocols, HTTPHeader: header, HTTPClient: &http.Client{Transport: tr},
	})
	if err == nil {
		c.CloseNow()
		t.Fatalf("dial %s: the handshake succeeded, want it refused", u)
	}
	if resp == nil {
		t.Fatalf("dial %s: %v, want an HTTP answer", u, err)
	}
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		m = map[string]any{"not JSON": string(b)}
	}
	return resp, m
}

// errTestUpgrade is the header of a valid WebSocket handshake request.
func errTestUpgrade() http.Header {
	return http.Header{
		"Connection":            {"Upgrade"},
		"Upgrade":               {"websocket"},
		"Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
	}
}

func TestHTTPErrorsAreJSON(t *testing.T) {
	ts := startServer(t, nil)
	foreign := http.Header{"Origin": {"https://evil.test"}}
	withUpgrade := func(h http.Header) http.Header {
		u := errTestUpgrade()
		for k, v := range h {
			u[k] = v
		}
		return u
	}
	tests := []struct {
		name   string
		method string
		path   string
		header http.Header
		status int
		code   string
		allow  string // the Allow header of a 405
	}{
		{name: "unknown path", method: "GET", path: "/v1/nope", status: 404, code: codeNotFound},
		{name: "the bare prefix", method: "GET", path: "/v1", status: 404, code: codeNotFound},
		{name: "the prefix with a slash", method: "GET", path: "/v1/", status: 404, code: codeNotFound},
		{name: "a room without an endpoint", method: "GET", path: "/v1/rooms/a", status: 404, code: codeNotFound},
		{name: "unknown path, another method", method: "DELETE", path: "/v1/rooms/a/everything", status: 404, code: codeNotFound},
		{name: "POST to the WebSocket", method: "POST", path: "/v1/ws", status: 405, code: codeBadRequest, allow: "GET, HEAD, OPTIONS"},
		{name: "DELETE on SSE", method: "DELETE", path: "/v1/sse", status: 405, code: codeBadRequest, allow: "GET, HEAD, OPTIONS"},
		{name: "GET on publish", method: "GET", path: "/v1/rooms/a/messages", status: 405, code: codeBadRequest, allow: "POST, OPTIONS"},
		{name: "PUT on history", method: "PUT", path: "/v1/rooms/a/history", status: 405, code: codeBadRequest, allow: "GET, HEAD, OPTIONS"},
		{name: "POST to presence", method: "POST", path: "/v1/rooms/a/presence", status: 405, code: codeBadRequest, allow: "GET, HEAD, OPTIONS"},
		{name: "POST to ICE servers", method: "POST", path: "/v1/ice-servers", status: 405, code: codeBadRequest, allow: "GET, HEAD, OPTIONS"},
		{name: "WebSocket endpoint without an upgrade", method: "GET", path: "/v1/ws", status: 426, code: codeBadRequest},
		{name: "WebSocket version 8", method: "GET", path: "/v1/ws", header: withUpgrade(http.Header{"Sec-Websocket-Version": {"8"}}), status: 400, code: codeBadRequest},
		{name: "WebSocket without a key", method: "GET", path: "/v1/ws", header: withUpgrade(http.Header{"Sec-Websocket-Key": {""}}), status: 400, code: codeBadRequest},
		{name: "WebSocket from a foreign origin", method: "GET", path: "/v1/ws", header: withUpgrade(foreign), status: 403, code: codeForbidden},
		{name: "SSE from a foreign origin", method: "GET", path: "/v1/sse?rooms=a", header: foreign, status: 403, code: codeForbidden},
		{name: "preflight from a foreign origin", method: "OPTIONS", path: "/v1/sse", header: foreign, status: 403, code: codeForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := apiTestDo(t, tt.method, ts.url+tt.path, "", tt.header, "")
			apiTestCheckError(t, resp, body, tt.status, tt.code)
			if got := resp.Header.Get("Allow"); got != tt.allow {
				t.Errorf("Allow: got %q, want %q", got, tt.allow)
			}
			e, _ := body["error"].(map[string]any)
			msg, _ := e["message"].(string)
			errTestNoGoWords(t, msg)
		})
	}

	// Outside /v1 the web app and the probes answer as they did.
	for _, tt := range []struct {
		path, ctype string
		status      int
	}{
		{path: "/healthz", ctype: "text/plain; charset=utf-8", status: 200},
		{path: "/", ctype: "text/html; charset=utf-8", status: 200},
		{path: "/nope.html", ctype: "text/plain; charset=utf-8", status: 404},
	} {
		resp, _ := apiTestDo(t, "GET", ts.url+tt.path, "", nil, "")
		if resp.StatusCode != tt.status || resp.Header.Get("Content-Type") != tt.ctype {
			t.Errorf("GET %s: got %v %q, want %v %q", tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), tt.status, tt.ctype)
		}
	}
}

func TestHTTPErrorConnsPerIP(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxConnsPerIP = 1 })
	w, _ := confDial(t, ts, nil)
	resp, body := errTestRefused(t, ts.ws, nil, []string{Subprotocol})
	apiTestCheckError(t, resp, body, http.StatusTooManyRequests, codeRateLimited)
	badExpectOpen(w)
}

func TestHTTPErrorWhileDraining(t *testing.T) {
	ts := startServer(t, nil)
	// A WebSocket client that does not read holds the drain open.
	held, _ := confDial(t, ts, nil)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- ts.srv.Shutdown(ctx)
	}()
	waitFor(t, "the drain to start", ts.srv.draining.Load)

	resp, body := errTestRefused(t, ts.ws, nil, []string{Subprotocol})
	apiTestCheckError(t, resp, body, http.StatusServiceUnavailable, "draining")
	resp, body = apiTestDo(t, "GET", ts.url+"/v1/sse?rooms=a", "", nil, "")
	apiTestCheckError(t, resp, body, http.StatusServiceUnavailable, "draining")
	held.expect("reconnect")
	if got := held.closeStatus(); got != websocket.StatusServiceRestart {
		t.Errorf("close status: got %v, want %v", got, websocket.StatusServiceRestart)
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestAuthErrorMessages(t *testing.T) {
	secret := []byte("s3cret-of-the-node")
	const apiKey = "k3y-of-the-backend"
	ts := startServer(t, func(c *Config) { c.JWTSecret, c.APIKey = secret, apiKey })
	k := newBadTokens(t, secret)
	now := time.Now()
	expiry := now.Add(-time.Minute).Truncate(time.Second)
	notBefore := now.Add(time.Hour).Truncate(time.Second)
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, badClaims("mallory", now.Add(time.Hour))).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	var (
		forged  = k.sign(t, jwt.SigningMethodHS256, []byte("not-the-secret"), badClaims("mallory", now.Add(time.Hour)))
		expired = k.sign(t, jwt.SigningMethodHS256, secret, badClaims("alice", expiry))
		early   = k.sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "alice", "exp": now.Add(2 * time.Hour).Unix(), "nbf": notBefore.Unix()})
		hs512   = k.sign(t, jwt.SigningMethodHS512, secret, badClaims("alice", now.Add(time.Hour)))
		rs256   = k.sign(t, jwt.SigningMethodRS256, k.rsa, badClaims("alice", now.Add(time.Hour)))
		noExp   = k.sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "alice"})
		noSub   = k.sign(t, jwt.SigningMethodHS256, secret, badClaims("", now.Add(time.Hour)))
		subNum  = k.sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": 5, "exp": now.Add(time.Hour).Unix()})
	)
	const (
		api = "api" // GET /v1/rooms/a/history
		ws  = "ws"
		sse = "sse"
	)
	tests := []struct {
		name      string
		transport string
		auth      string // the Authorization header
		query     string // the token query parameter
		msg       string
	}{
		{name: "a wrong API key", transport: api, auth: "Bearer not-the-key", msg: "the API key is not valid"},
		{name: "the API key in the URL", transport: api, query: apiKey, msg: "the API key goes in the Authorization header, not in the URL"},
		{name: "the API key without Bearer", transport: api, auth: apiKey, msg: "Authorization must be 'Bearer <token>'"},
		{name: "the API key as Basic", transport: api, auth: "Basic " + apiKey, msg: "Authorization must be 'Bearer <token>'"},
		{name: "Bearer and nothing", transport: api, auth: "Bearer ", msg: "Authorization must be 'Bearer <token>'"},
		{name: "a JWT that does not parse", transport: api, auth: "Bearer abc.def.ghi", msg: "token is malformed: its three parts must be base64url, its header and claims JSON objects, with sub a string and exp a number"},
		{name: "sub a number", transport: api, auth: "Bearer " + subNum, msg: "token is malformed: its three parts must be base64url, its header and claims JSON objects, with sub a string and exp a number"},
		{name: "no credential on the API", transport: api, msg: "missing credential: send Authorization: Bearer <token or API key>"},
		{name: "a forged token on the API", transport: api, auth: "Bearer " + forged, msg: "token signature is not valid"},
		{name: "an expired token", transport: ws, auth: "Bearer " + expired, msg: "token expired at " + expiry.UTC().Format(time.RFC3339)},
		{name: "an expired token in the URL", transport: ws, query: expired, msg: "token expired at " + expiry.UTC().Format(time.RFC3339)},
		{name: "a token not valid yet", transport: ws, auth: "Bearer " + early, msg: "token is not valid before " + notBefore.UTC().Format(time.RFC3339)},
		{name: "signed with another secret", transport: ws, auth: "Bearer " + forged, msg: "token signature is not valid"},
		{name: "HS512", transport: ws, auth: "Bearer " + hs512, msg: `token algorithm "HS512" is not accepted: this node takes HS256`},
		{name: "RS256", transport: ws, auth: "Bearer " + rs256, msg: `token algorithm "RS256" is not accepted: this node takes HS256`},
		{name: "alg none", transport: ws, auth: "Bearer " + none, msg: `token algorithm "none" is not accepted: this node takes HS256`},
		{name: "without exp", transport: ws, auth: "Bearer " + noExp, msg: "token has no exp claim"},
		{name: "without sub", transport: ws, auth: "Bearer " + noSub, msg: "token has no sub claim"},
		{name: "not a JWT", transport: ws, auth: "Bearer not-a-jwt", msg: "token is not a JWT: a JWT is three base64url parts separated by dots"},
		{name: "the API key on a session", transport: ws, auth: "Bearer " + apiKey, msg: "the API key is not accepted here: use a user's token"},
		{name: "no credential on a session", transport: ws, msg: "missing token: send Authorization: Bearer <token>, or ?token=<token> where a browser cannot set headers"},
		{name: "a Basic credential on SSE", transport: sse, auth: "Basic dXNlcjpwYXNz", msg: "Authorization must be 'Bearer <token>'"},
		{name: "an expired token on SSE", transport: sse, query: expired, msg: "token expired at " + expiry.UTC().Format(time.RFC3339)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			header := http.Header{}
			if tt.auth != "" {
				header.Set("Authorization", tt.auth)
			}
			q := ""
			if tt.query != "" {
				q = "token=" + url.QueryEscape(tt.query)
			}
			var msg string
			switch tt.transport {
			case ws:
				u := ts.ws
				if q != "" {
					u += "?" + q
				}
				w := dialWS(t, u, header)
				m := w.next()
				if m["type"] != "error" || m["code"] != codeUnauthorized {
					t.Fatalf("got %v, want an unauthorized error", m)
				}
				msg, _ = m["message"].(string)
				if got, want := w.closeStatus(), websocket.StatusPolicyViolation; got != want {
					t.Errorf("close status: got %v, want %v", got, want)
				}
			default:
				u := ts.url + "/v1/rooms/a/history?" + q
				if tt.transport == sse {
					u = ts.url + "/v1/sse?rooms=a&" + q
				}
				resp, body := apiTestDo(t, "GET", u, "", header, "")
				apiTestCheckError(t, resp, body, http.StatusUnauthorized, codeUnauthorized)
				e, _ := body["error"].(map[string]any)
				msg, _ = e["message"].(string)
			}
			if msg != tt.msg {
				t.Errorf("message: got %q, want %q", msg, tt.msg)
			}
			for _, s := range []string{string(secret), apiKey, strings.TrimPrefix(tt.auth, "Bearer "), tt.query} {
				if len(s) > 8 && strings.Contains(msg, s) {
					t.Errorf("message %q repeats a credential or the secret", msg)
				}
			}
		})
	}
}

func TestAuthErrorMessagesPublicKey(t *testing.T) {
	k := newBadTokens(t, nil)
	ts := startServer(t, func(c *Config) { c.JWTPublicKey = &k.rsa.PublicKey })
	der, err := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	now := time.Now()
	tests := []struct {
		name  string
		token string
		msg   string
	}{
		{name: "HS256 keyed with the public key", token: k.sign(t, jwt.SigningMethodHS256, pemKey, badClaims("mallory", now.Add(time.Hour))), msg: `token algorithm "HS256" is not accepted: this node takes RS256`},
		{name: "ES256", token: k.sign(t, jwt.SigningMethodES256, k.ec, badClaims("mallory", now.Add(time.Hour))), msg: `token algorithm "ES256" is not accepted: this node takes RS256`},
		{name: "RS256 by another key", token: k.sign(t, jwt.SigningMethodRS256, newBadTokens(t, nil).rsa, badClaims("mallory", now.Add(time.Hour))), msg: "token signature is not valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := dialWS(t, ts.ws, badBearer(tt.token))
			m := w.next()
			if m["type"] != "error" || m["code"] != codeUnauthorized || m["message"] != tt.msg {
				t.Errorf("got %v, want an unauthorized error %q", m, tt.msg)
			}
		})
	}
}

// errTestLog collects a server's log lines.
type errTestLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *errTestLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *errTestLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// errTestRejected reads parley_connections_rejected_total{reason} from reg;
// ok says whether the series exists.
func errTestRejected(t testing.TB, reg *prometheus.Registry, reason string) (v float64, ok bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "parley_connections_rejected_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

func TestWSSubprotocol(t *testing.T) {
	reg := prometheus.NewRegistry()
	logs := &errTestLog{}
	ts := startServer(t, func(c *Config) {
		c.Registerer = reg
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	if v, ok := errTestRejected(t, reg, "subprotocol"); !ok || v != 0 {
		t.Errorf("rejected{reason=subprotocol} at start: got %v (exists %v), want 0", v, ok)
	}

	t.Run("only an unsupported one is refused", func(t *testing.T) {
		resp, body := errTestRefused(t, ts.ws, nil, []string{"parley.v2"})
		apiTestCheckError(t, resp, body, http.StatusBadRequest, codeBadRequest)
		e, _ := body["error"].(map[string]any)
		if msg, _ := e["message"].(string); !strings.Contains(msg, Subprotocol) || !strings.Contains(msg, "parley.v2") {
			t.Errorf("message: got %q, want it to name %s, which the node speaks, and parley.v2", msg, Subprotocol)
		}
		if v, _ := errTestRejected(t, reg, "subprotocol"); v != 1 {
			t.Errorf("rejected{reason=subprotocol}: got %v, want 1", v)
		}
		waitFor(t, "a debug log line", func() bool {
			out := logs.String()
			return strings.Contains(out, "level=DEBUG") && strings.Contains(out, "reason=subprotocol") && strings.Contains(out, "parley.v2")
		})
	})

	for _, tt := range []struct {
		name   string
		offers []string
		want   string
	}{
		{name: "none offered is served without one", offers: nil, want: ""},
		{name: "parley.v1 among others is chosen", offers: []string{"parley.v2", Subprotocol}, want: Subprotocol},
		{name: "parley.v1 alone", offers: []string{Subprotocol}, want: Subprotocol},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, _, err := websocket.Dial(ctx, ts.ws, &websocket.DialOptions{Subprotocols: tt.offers})
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			t.Cleanup(func() { c.CloseNow() })
			if got := c.Subprotocol(); got != tt.want {
				t.Errorf("subprotocol: got %q, want %q", got, tt.want)
			}
			w := &wsConn{t: t, c: c}
			w.expect("welcome")
			badExpectOpen(w)
		})
	}
	if v, _ := errTestRejected(t, reg, "subprotocol"); v != 1 {
		t.Errorf("rejected{reason=subprotocol} after the served ones: got %v, want 1", v)
	}
}
