package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/parley-rt/parley/fanout"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testAPIKey is the API key of test servers unless a test sets another:
// backends' bulk publishes are not rate limited.
const testAPIKey = "test-api-key"

// testServer is a gateway on 127.0.0.1:0 with a Memory bus.
type testServer struct {
	srv  *Server
	bus  *fanout.Memory
	http *httptest.Server
	url  string // http://127.0.0.1:port
	ws   string // ws://127.0.0.1:port/v1/ws
}

// startServer starts a gateway whose config mod may change; it is shut down
// when the test ends.
func startServer(t testing.TB, mod func(*Config)) *testServer {
	t.Helper()
	return startServerWith(t, fanout.MemoryConfig{}, mod)
}

// startServerWith is startServer with the Memory bus built from mc, for tests
// that need, say, a small HistorySize.
func startServerWith(t testing.TB, mc fanout.MemoryConfig, mod func(*Config)) *testServer {
	t.Helper()
	bus := fanout.NewMemory(mc)
	cfg := Config{Bus: bus, NodeID: "test-node", DrainTimeout: 200 * time.Millisecond, APIKey: testAPIKey}
	// PARLEY_NOPOLLER=1 runs the suite with a reader goroutine per
	// WebSocket session instead of the poller (make test runs both).
	cfg.NoPoller = os.Getenv("PARLEY_NOPOLLER") != ""
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Config = srv.http
	hs.Start()
	ts := &testServer{srv: srv, bus: bus, http: hs, url: hs.URL, ws: "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ws"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if !srv.draining.Load() {
			srv.Shutdown(ctx)
		}
		hs.Close()
		bus.Close()
	})
	return ts
}

// wsConn is a raw protocol client for conformance tests.
type wsConn struct {
	t       testing.TB
	c       *websocket.Conn
	pending [][]byte
}

func dialWS(t testing.TB, url string, header http.Header) *wsConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{Subprotocol}, HTTPHeader: header})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c.SetReadLimit(8 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return &wsConn{t: t, c: c}
}

func (w *wsConn) send(v any) {
	w.t.Helper()
	b, ok := v.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(v); err != nil {
			w.t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.c.Write(ctx, websocket.MessageText, b); err != nil {
		w.t.Fatalf("write: %v", err)
	}
}

// next returns the next server frame (one JSON object of a batch).
func (w *wsConn) next() map[string]any {
	w.t.Helper()
	m, err := w.nextErr(5 * time.Second)
	if err != nil {
		w.t.Fatalf("read: %v", err)
	}
	return m
}

func (w *wsConn) nextErr(timeout time.Duration) (map[string]any, error) {
	for len(w.pending) == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		_, b, err := w.c.Read(ctx)
		cancel()
		if err != nil {
			return nil, err
		}
		w.pending = bytes.Split(b, []byte("\n"))
	}
	line := w.pending[0]
	w.pending = w.pending[1:]
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		w.t.Fatalf("server frame %q is not JSON: %v", line, err)
	}
	return m, nil
}

// nextAnswering returns the next server frame that is not a heartbeat ping,
// answering the pings before it as a client does.
func (w *wsConn) nextAnswering() map[string]any {
	w.t.Helper()
	for {
		m := w.next()
		if m["type"] != "ping" {
			return m
		}
		w.send(map[string]any{"type": "pong"})
	}
}

// expect reads the next frame and checks its type.
func (w *wsConn) expect(typ string) map[string]any {
	w.t.Helper()
	m := w.next()
	if m["type"] != typ {
		w.t.Fatalf("got frame %v, want type %q", m, typ)
	}
	return m
}

// closeStatus reads until the connection closes and returns its close code.
func (w *wsConn) closeStatus() websocket.StatusCode {
	w.t.Helper()
	for {
		_, err := w.nextErr(10 * time.Second)
		if err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

// waitFor polls cond until it holds, failing the test after 5 seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 5s for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
