package gateway

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

type reviewLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *reviewLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *reviewLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// A token offered as a subprotocol (a browser work-around some clients use:
// new WebSocket(url, ["access_token", jwt])) is refused, and neither the log
// nor the answer holds it.
func TestSubprotocolTokenNotLogged(t *testing.T) {
	secret := []byte("review-secret")
	logs := &reviewLog{}
	ts := startServer(t, func(c *Config) {
		c.JWTSecret = secret
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	tok, err := MintToken(secret, "alice", time.Hour, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sig := tok[strings.LastIndex(tok, ".")+1:]

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, ts.ws, &websocket.DialOptions{
		Subprotocols: []string{"access_token", tok}, HTTPClient: &http.Client{Transport: tr},
	})
	if err == nil {
		c.CloseNow()
		t.Fatal("handshake succeeded, want it refused (no parley.v1)")
	}
	if resp == nil {
		t.Fatalf("dial: %v, want an HTTP answer", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("status %d body %s", resp.StatusCode, body)

	waitFor(t, "the refusal's debug log line", func() bool { return strings.Contains(logs.String(), "websocket handshake refused") })
	if out := logs.String(); strings.Contains(out, sig) {
		t.Errorf("the log holds the JWT offered as a subprotocol (its signature %s):\n%s", sig, out)
	}
	if strings.Contains(string(body), tok[:100]) {
		t.Errorf("the response echoes the first 100 bytes of the JWT: %s", body)
	}
}
