package turn

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pionstun "github.com/pion/stun/v3"
	pionturn "github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/parley-rt/parley/turn/internal/pionlog"
)

const testSecret = "test-secret-value"

// testClock is a settable clock for the gate; it starts at the real time.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// testServer is a Server on 127.0.0.1 with its registry, log and clock.
type testServer struct {
	*Server
	reg   *prometheus.Registry
	clock *testClock
	logs  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startServer starts a server with the given config, filling in sockets on
// 127.0.0.1 (UDP, TCP and TLS) and the secret when they are unset.
func startServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	ts := &testServer{reg: prometheus.NewRegistry(), clock: &testClock{}, logs: &syncBuffer{}}
	if cfg.Secret == "" {
		cfg.Secret = testSecret
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if cfg.Registerer == nil {
		cfg.Registerer = ts.reg
	}
	if len(cfg.UDPConns) == 0 && cfg.TCPListener == nil {
		udp, tcp, err := Listen(t.Context(), "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cfg.UDPConns, cfg.TCPListener = udp, tcp
	}
	if cfg.TLSListener == nil {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLSListener = ln
		cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{testCert}}
	}
	s, err := newServer(cfg, ts.clock.now)
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = s
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return ts
}

// metric returns the value of a counter or gauge with the given labels.
func (ts *testServer) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsMatch(m, labels) {
				if m.GetCounter() != nil {
					return m.GetCounter().GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func labelsMatch(m *dto.Metric, labels map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := labels[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(labels)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// creds mints a credential pair for user, valid for ttl from the server's
// clock.
// dialAs opens a raw UDP client to the server that authenticates with the
// given REST username and password.
func (ts *testServer) dialAs(t *testing.T, user, pass string) *rawClient {
	t.Helper()
	c := dialRaw(t, "udp", ts.UDPAddr())
	c.username, c.password = user, pass
	return c
}

func (ts *testServer) creds(user string, ttl time.Duration) (string, string) {
	return Credentials(testSecret, user, ttl, ts.clock.now())
}

// pionClient allocates through the server with pion/turn's client over UDP.
func pionClient(t *testing.T, server net.Addr, username, password string) (*pionturn.Client, net.PacketConn) {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := pionturn.NewClient(&pionturn.ClientConfig{
		STUNServerAddr: server.String(),
		TURNServerAddr: server.String(),
		Username:       username,
		Password:       password,
		Conn:           conn,
		LoggerFactory:  pionlog.Factory{Logger: slog.New(slog.DiscardHandler)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		conn.Close()
	})
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	return c, conn
}

// rawClient speaks STUN by hand to the server, for the cases no client
// library would produce.
type rawClient struct {
	t        *testing.T
	conn     net.Conn
	stream   bool
	username string
	password string
	realm    string
	nonce    string
}

func dialRaw(t *testing.T, network string, addr net.Addr) *rawClient {
	t.Helper()
	conn, err := net.Dial(network, addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, stream: network == "tcp"}
}

// dialRawFrom dials UDP from another loopback address, a source of its own.
func dialRawFrom(t *testing.T, local string, addr net.Addr) *rawClient {
	t.Helper()
	conn, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(local), 0)), addr.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn}
}

func (c *rawClient) send(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// read returns the next message from the server, or nil after timeout.
func (c *rawClient) read(timeout time.Duration) *pionstun.Message {
	c.t.Helper()
	b, err := c.readRaw(timeout)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		c.t.Fatal(err)
	}
	m := &pionstun.Message{Raw: b}
	if err := m.Decode(); err != nil {
		c.t.Fatalf("server sent malformed STUN: %v", err)
	}
	return m
}

func (c *rawClient) readRaw(timeout time.Duration) ([]byte, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	if !c.stream {
		buf := make([]byte, 1600)
		n, err := c.conn.Read(buf)
		return buf[:n], err
	}
	hdr := make([]byte, 20)
	if _, err := io.ReadFull(c.conn, hdr); err != nil {
		return nil, err
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[2:4]))
	if _, err := io.ReadFull(c.conn, body); err != nil {
		return nil, err
	}
	return append(hdr, body...), nil
}

// Attribute setters pion keeps internal.
type rawAttr struct {
	typ pionstun.AttrType
	val []byte
}

func (a rawAttr) AddTo(m *pionstun.Message) error {
	m.Add(a.typ, a.val)
	return nil
}

var transportUDPAttr = rawAttr{pionstun.AttrRequestedTransport, []byte{17, 0, 0, 0}}

func lifetimeAttr(secs uint32) rawAttr {
	v := make([]byte, 4)
	binary.BigEndian.PutUint32(v, secs)
	return rawAttr{pionstun.AttrLifetime, v}
}

func channelAttr(n uint16) rawAttr {
	return rawAttr{pionstun.AttrChannelNumber, []byte{byte(n >> 8), byte(n), 0, 0}}
}

func peerAttr(ip net.IP, port int) pionstun.Setter {
	return peerAddr{pionstun.XORMappedAddress{IP: ip, Port: port}}
}

type peerAddr struct{ a pionstun.XORMappedAddress }

func (p peerAddr) AddTo(m *pionstun.Message) error {
	return p.a.AddToAs(m, pionstun.AttrXORPeerAddress)
}

// request sends a request of method and returns the response. With auth it
// first learns REALM and NONCE from a 401 if it has none, and signs the
// request with the client's credentials.
func (c *rawClient) request(method pionstun.Method, auth bool, attrs ...pionstun.Setter) *pionstun.Message {
	c.t.Helper()
	if auth && c.nonce == "" {
		resp := c.roundTrip(method, nil, attrs...)
		if code := errorCode(resp); code != pionstun.CodeUnauthorized {
			c.t.Fatalf("got %v to an unauthenticated %v, want 401", code, method)
		}
		var realm pionstun.Realm
		var nonce pionstun.Nonce
		if realm.GetFrom(resp) != nil || nonce.GetFrom(resp) != nil {
			c.t.Fatal("401 without REALM or NONCE")
		}
		if c.realm == "" {
			c.realm = realm.String()
		}
		c.nonce = nonce.String()
	}
	var authAttrs []pionstun.Setter
	if auth {
		authAttrs = []pionstun.Setter{
			pionstun.NewUsername(c.username),
			pionstun.NewRealm(c.realm),
			pionstun.NewNonce(c.nonce),
			pionstun.NewLongTermIntegrity(c.username, c.realm, c.password),
			pionstun.Fingerprint,
		}
	}
	return c.roundTrip(method, authAttrs, attrs...)
}

func (c *rawClient) roundTrip(method pionstun.Method, auth []pionstun.Setter, attrs ...pionstun.Setter) *pionstun.Message {
	c.t.Helper()
	setters := append([]pionstun.Setter{pionstun.TransactionID, pionstun.NewType(method, pionstun.ClassRequest)}, attrs...)
	setters = append(setters, auth...)
	req, err := pionstun.Build(setters...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.send(req.Raw)
	for {
		resp := c.read(5 * time.Second)
		if resp == nil {
			c.t.Fatalf("no response to %v", method)
		}
		if resp.TransactionID == req.TransactionID {
			return resp
		}
	}
}

// errorCode returns the error code of a response, or 0 for a success.
func errorCode(m *pionstun.Message) pionstun.ErrorCode {
	if m.Type.Class == pionstun.ClassSuccessResponse {
		return 0
	}
	var ec pionstun.ErrorCodeAttribute
	if err := ec.GetFrom(m); err != nil {
		return -1
	}
	return ec.Code
}

// allocate makes an allocation with the client's credentials and returns
// its relayed address.
func (c *rawClient) allocate(attrs ...pionstun.Setter) (*pionstun.Message, pionstun.ErrorCode) {
	c.t.Helper()
	resp := c.request(pionstun.MethodAllocate, true, append([]pionstun.Setter{transportUDPAttr}, attrs...)...)
	return resp, errorCode(resp)
}

func lifetimeOf(t *testing.T, m *pionstun.Message) uint32 {
	t.Helper()
	v, err := m.Get(pionstun.AttrLifetime)
	if err != nil || len(v) != 4 {
		t.Fatalf("no LIFETIME in %v", m)
	}
	return binary.BigEndian.Uint32(v)
}
