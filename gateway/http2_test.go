package gateway

// HTTP/2: SSE, the API and the pages over one h2 connection (HTTPS by ALPN,
// and h2c on a plain listener); WebSocket over HTTP/1.1 on the same TLS
// listener, and a clear refusal of a WebSocket request over HTTP/2.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// testCert is a self-signed certificate for 127.0.0.1 and the pool that
// trusts it.
func testCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "parley gateway test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// tlsTestServer is a gateway served with ServeTLS on 127.0.0.1:0.
type tlsTestServer struct {
	srv  *Server
	bus  *fanout.Memory
	url  string // https://127.0.0.1:port
	pool *x509.CertPool
}

// startTLSServer starts a gateway over TLS; it is shut down when the test ends.
func startTLSServer(t testing.TB) *tlsTestServer {
	t.Helper()
	cert, pool := testCert(t)
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	srv, err := New(Config{Bus: bus, NodeID: "test-node", DrainTimeout: 200 * time.Millisecond, APIKey: testAPIKey})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, conf) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("ServeTLS: got %v, want %v", err, http.ErrServerClosed)
		}
		bus.Close()
	})
	if conf.NextProtos != nil {
		t.Errorf("ServeTLS changed the caller's NextProtos to %v", conf.NextProtos)
	}
	return &tlsTestServer{srv: srv, bus: bus, url: "https://" + ln.Addr().String(), pool: pool}
}

// countingDialer counts the TCP connections a client opens.
type countingDialer struct {
	mu    sync.Mutex
	dials int
}

func (d *countingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.dials++
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func (d *countingDialer) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dials
}

// http2Client is a client that speaks only HTTP/2: over TLS when tlsConf is
// set, else h2c with prior knowledge. Its idle connections close when the
// test ends.
func http2Client(t testing.TB, tlsConf *tls.Config) (*http.Client, *countingDialer) {
	t.Helper()
	var p http.Protocols
	if tlsConf != nil {
		p.SetHTTP2(true)
	} else {
		p.SetUnencryptedHTTP2(true)
	}
	d := &countingDialer{}
	tr := &http.Transport{Protocols: &p, TLSClientConfig: tlsConf, DialContext: d.DialContext, MaxConnsPerHost: 1}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}, d
}

// connTracker records the connection of every request made with its context.
type connTracker struct {
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func (c *connTracker) context() context.Context {
	return httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.conns == nil {
				c.conns = map[net.Conn]bool{}
			}
			c.conns[info.Conn] = true
		},
	})
}

func (c *connTracker) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.conns)
}

// sseOpenWith opens an event stream with client, which must answer 200 over
// HTTP/2.
func sseOpenWith(t testing.TB, ctx context.Context, client *http.Client, u string) *sseTestStream {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		resp.Body.Close()
		t.Fatalf("GET %s: got %v over %s, want %v over HTTP/2.0", u, resp.StatusCode, resp.Proto, http.StatusOK)
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

// apiPublish publishes data to room through the HTTP API with client, over
// HTTP/2.
func apiPublish(t testing.TB, ctx context.Context, client *http.Client, base, room, data string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/rooms/"+room+"/messages", strings.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Fatalf("publish: got %v over %s, want %v over HTTP/2.0", resp.StatusCode, resp.Proto, http.StatusOK)
	}
}

// checkStreamsOneConn opens n event streams on room, far past a browser's six
// HTTP/1.1 connections per origin, publishes through the API, and checks
// that every stream gets every message and that all of it went over one
// connection.
func checkStreamsOneConn(t *testing.T, client *http.Client, dialer *countingDialer, base string, n int) {
	const room, messages = "live", 5
	var tracker connTracker
	ctx := tracker.context()
	streams := make([]*sseTestStream, n)
	for i := range streams {
		streams[i] = sseOpenWith(t, ctx, client, base+"/v1/sse?rooms="+room)
		streams[i].start()
	}
	for i := range messages {
		apiPublish(t, ctx, client, base, room, fmt.Sprintf(`{"n":%d}`, i))
	}
	for i, s := range streams {
		for j := range messages {
			_, m := s.expect("message")
			data, _ := m["data"].(map[string]any)
			if m["room"] != room || data["n"] != float64(j) {
				t.Fatalf("stream %d, message %d: got %v, want data {\"n\":%d} in %s", i, j, m, j, room)
			}
		}
	}
	if got := tracker.count(); got != 1 {
		t.Errorf("connections used: got %d, want 1", got)
	}
	if got := dialer.count(); got != 1 {
		t.Errorf("connections dialed: got %d, want 1", got)
	}
}

func TestHTTP2SSEStreamsShareOneConnection(t *testing.T) {
	ts := startTLSServer(t)
	client, dialer := http2Client(t, &tls.Config{RootCAs: ts.pool})
	checkStreamsOneConn(t, client, dialer, ts.url, 20)
}

func TestH2CSSEStreamsShareOneConnection(t *testing.T) {
	ts := startServer(t, nil)
	client, dialer := http2Client(t, nil)
	checkStreamsOneConn(t, client, dialer, ts.url, 20)

	// An HTTP/1.1 client on the same listener is served as before.
	resp, err := http.Get(ts.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 {
		t.Errorf("GET /healthz: got %v over %s, want %v over HTTP/1.1", resp.StatusCode, resp.Proto, http.StatusOK)
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestHTTP2WebSocketOverTLS(t *testing.T) {
	ts := startTLSServer(t)
	tests := []struct {
		name string
		alpn []string
		want string // the protocol ALPN settles on
	}{
		// What a browser offers when it opens a WebSocket connection.
		{name: "http/1.1 by ALPN", alpn: []string{"http/1.1"}, want: "http/1.1"},
		// Go's own client offers nothing for an upgrade request.
		{name: "no ALPN", alpn: nil, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var negotiated []string
			dialer := &tls.Dialer{Config: &tls.Config{RootCAs: ts.pool, NextProtos: tt.alpn}}
			tr := &http.Transport{DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := dialer.DialContext(ctx, network, addr)
				if err == nil {
					mu.Lock()
					negotiated = append(negotiated, c.(*tls.Conn).ConnectionState().NegotiatedProtocol)
					mu.Unlock()
				}
				return c, err
			}}
			defer tr.CloseIdleConnections()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, resp, err := websocket.Dial(ctx, "wss"+strings.TrimPrefix(ts.url, "https")+"/v1/ws", &websocket.DialOptions{
				HTTPClient:   &http.Client{Transport: tr},
				Subprotocols: []string{Subprotocol},
			})
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.CloseNow()
			mu.Lock()
			if len(negotiated) != 1 || negotiated[0] != tt.want || resp.ProtoMajor != 1 {
				t.Errorf("handshake: got ALPN %q and %s, want [%q] and HTTP/1.1", negotiated, resp.Proto, tt.want)
			}
			mu.Unlock()
			w := &wsConn{t: t, c: c}
			w.expect("welcome")
			confSubscribe(w, "1", "chat", false)
			sseTestPublish(t, &testServer{bus: ts.bus}, "chat", `"over tls"`)
			if m := w.expect("message"); m["data"] != "over tls" {
				t.Errorf("message: got %v, want data %q", m, "over tls")
			}
			c.Close(websocket.StatusNormalClosure, "")
		})
	}
}

func TestHTTP2WebSocketRequestRefused(t *testing.T) {
	tlsServer := startTLSServer(t)
	plain := startServer(t, nil)
	tests := []struct {
		name    string
		base    string
		tlsConf *tls.Config
	}{
		{name: "h2", base: tlsServer.url, tlsConf: &tls.Config{RootCAs: tlsServer.pool}},
		{name: "h2c", base: plain.url},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, _ := http2Client(t, tt.tlsConf)
			// What a client can send of a handshake over HTTP/2, which has
			// no Connection and Upgrade headers.
			req, err := http.NewRequest(http.MethodGet, tt.base+"/v1/ws", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			req.Header.Set("Sec-WebSocket-Protocol", Subprotocol)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("GET /v1/ws: %v", err)
			}
			defer resp.Body.Close()
			if resp.ProtoMajor != 2 {
				t.Fatalf("GET /v1/ws: got %s, want HTTP/2.0", resp.Proto)
			}
			sseTestErr(t, resp, http.StatusHTTPVersionNotSupported, codeBadRequest)
			// HTTP/2 has no Connection and Upgrade headers; browsers take
			// a response with them for a protocol error.
			if c, u := resp.Header.Get("Connection"), resp.Header.Get("Upgrade"); c != "" || u != "" {
				t.Errorf("Connection and Upgrade: got %q and %q, want neither", c, u)
			}

			// The connection serves on.
			resp, err = client.Get(tt.base + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("GET /healthz after the refusal: got %v, want %v", resp.StatusCode, http.StatusOK)
			}
		})
	}
}
