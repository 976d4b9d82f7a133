package turn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	pionstun "github.com/pion/stun/v3"
	pionturn "github.com/pion/turn/v4"
	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-rt/parley/turn/internal/pionlog"
)

// splitFixture is one port on 127.0.0.1 split between an http.Server and
// a TURN server whose only socket is the split's TURN listener.
type splitFixture struct {
	*testServer
	split *TLSSplit
	http  *http.Server
	addr  string // host:port of the shared port
	pool  *x509.CertPool
}

// startSplit splits a listener on 127.0.0.1:0 with cfg (the test
// certificate when cfg has no TLSConfig) and serves HTTP and TURN on it.
// The HTTP handler answers "<proto> tls=<whether r.TLS is set>".
func startSplit(t *testing.T, cfg SplitConfig) *splitFixture {
	t.Helper()
	ts := &testServer{reg: prometheus.NewRegistry(), clock: &testClock{}, logs: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.TLSConfig == nil {
		cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{testCert}}
	}
	cfg.Logger, cfg.Registerer = log, ts.reg
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	split, err := SplitTLS(ln, cfg)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	srv, err := newServer(Config{
		Logger: log, Registerer: ts.reg, Secret: testSecret,
		TLSStreams: split.TURN(),
		AllowPeers: mustAllow(t, "127.0.0.0/8"),
	}, ts.clock.now)
	if err != nil {
		split.Close()
		t.Fatal(err)
	}
	ts.Server = srv
	hs := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s tls=%v", r.Proto, r.TLS != nil)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(split.HTTP()) }()
	leaf, err := x509.ParseCertificate(testCert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	f := &splitFixture{testServer: ts, split: split, http: hs, addr: ln.Addr().String(), pool: x509.NewCertPool()}
	f.pool.AddCert(leaf)
	t.Cleanup(func() {
		hs.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("http serve: got %v, want http.ErrServerClosed", err)
		}
		if err := srv.Close(); err != nil {
			t.Errorf("turn close: %v", err)
		}
		if err := split.Close(); err != nil {
			t.Errorf("split close: %v", err)
		}
		if t.Failed() {
			t.Logf("logs:\n%s", ts.logs.String())
		}
	})
	return f
}

// get fetches / over HTTPS through a client that offers alpn (none when
// nil) and returns the body.
func (f *splitFixture) get(t *testing.T, alpn []string) string {
	t.Helper()
	dialer := &tls.Dialer{Config: &tls.Config{RootCAs: f.pool, NextProtos: alpn}}
	tr := &http.Transport{DialTLSContext: dialer.DialContext, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+f.addr+"/", nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("GET with ALPN %q: %v", alpn, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET with ALPN %q: got %v %q (%v), want 200", alpn, resp.StatusCode, b, err)
	}
	return string(b)
}

// dialTURN opens TURN over TLS to the shared port, offering alpn, and
// checks what was negotiated.
func (f *splitFixture) dialTURN(t *testing.T, alpn []string) *tls.Conn {
	t.Helper()
	conn, err := tls.Dial("tcp", f.addr, &tls.Config{RootCAs: f.pool, NextProtos: alpn})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	want := ""
	if len(alpn) > 0 {
		want = alpnSTUNTURN
	}
	if got := conn.ConnectionState().NegotiatedProtocol; got != want {
		t.Fatalf("negotiated %q, want %q", got, want)
	}
	return conn
}

// allocateOver makes an allocation with pion/turn's client over conn and
// relays a datagram to peer and back.
func (f *splitFixture) allocateOver(t *testing.T, conn net.Conn, peer net.Addr) {
	t.Helper()
	user, pass := f.creds("alice", time.Hour)
	c, err := pionturn.NewClient(&pionturn.ClientConfig{
		STUNServerAddr: f.addr,
		TURNServerAddr: f.addr,
		Username:       user,
		Password:       pass,
		Conn:           pionturn.NewSTUNConn(conn),
		LoggerFactory:  pionlog.Factory{Logger: slog.New(slog.DiscardHandler)},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	relay, err := c.Allocate()
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	defer relay.Close()
	// pion's STUNConn waits for a ninth byte before it parses a frame, so
	// the payload is longer than the 4 bytes a ChannelData frame of 8 would
	// carry.
	const msg = "ping through the relay"
	if _, err := relay.WriteTo([]byte(msg), peer); err != nil {
		t.Fatalf("write to peer: %v", err)
	}
	buf := make([]byte, 64)
	_ = relay.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := relay.ReadFrom(buf)
	if err != nil || string(buf[:n]) != msg || from.String() != peer.String() {
		t.Fatalf("echo: got %q from %v (%v), want %q from %v", buf[:n], from, err, msg, peer)
	}
}

func TestSplitServesHTTPSAndTURNOnOnePort(t *testing.T) {
	f := startSplit(t, SplitConfig{})
	peer := echoPeer(t)

	https := []struct {
		name string
		alpn []string
		want string
	}{
		{name: "h2", alpn: []string{"h2", "http/1.1"}, want: "HTTP/2.0 tls=true"},
		{name: "http/1.1", alpn: []string{"http/1.1"}, want: "HTTP/1.1 tls=true"},
		// Sniffed and replayed: net/http takes r.TLS from the wrapper's
		// ConnectionState.
		{name: "no ALPN", want: "HTTP/1.1 tls=true"},
	}
	for _, tt := range https {
		t.Run("https "+tt.name, func(t *testing.T) {
			if got := f.get(t, tt.alpn); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
	turns := []struct {
		name string
		alpn []string
	}{
		{name: "no ALPN"},
		{name: "stun.turn", alpn: []string{alpnSTUNTURN}},
	}
	for _, tt := range turns {
		t.Run("turn "+tt.name, func(t *testing.T) {
			f.allocateOver(t, f.dialTURN(t, tt.alpn), peer)
		})
	}

	if got := f.metric(t, "parley_turn_allocations_created_total", map[string]string{"transport": transportTLS}); got != 2 {
		t.Errorf("got %v allocations counted as tls, want 2", got)
	}
	if got := f.metric(t, "parley_turn_relayed_packets_total", map[string]string{"transport": transportTLS, "direction": dirFromPeer}); got != 2 {
		t.Errorf("got %v packets relayed from the peer over tls, want 2", got)
	}
	for result, want := range map[string]float64{splitHTTP: 3, splitTURN: 2, splitFailed: 0, splitTimeout: 0} {
		if got := f.metric(t, "parley_turn_split_connections_total", map[string]string{"result": result}); got != want {
			t.Errorf("got %v connections with result %s, want %v", got, result, want)
		}
	}
	if f.TLSAddr().String() != f.addr || f.UDPAddr() != nil || f.TCPAddr() != nil {
		t.Errorf("got TLS %v, UDP %v, TCP %v; want TLS %s only", f.TLSAddr(), f.UDPAddr(), f.TCPAddr(), f.addr)
	}
}

// TestSplitWebRTCCall makes a pion/webrtc call relayed through the shared
// port: pion's TURNS client offers no ALPN, so its streams are sniffed.
func TestSplitWebRTCCall(t *testing.T) {
	f := startSplit(t, SplitConfig{})
	user, pass := f.creds("caller", time.Hour)
	call(t, []webrtc.ICEServer{{URLs: []string{"turns:" + f.addr + "?transport=tcp"}, Username: user, Credential: pass}})
	if got := f.metric(t, "parley_turn_allocations_created_total", map[string]string{"transport": transportTLS}); got < 2 {
		t.Errorf("got %v allocations over tls, want at least 2", got)
	}
	waitFor(t, "allocations to go", 10*time.Second, func() bool { return f.AllocationCount() == 0 })
}

// TestSplitStalledClients checks that connections which never handshake,
// or handshake and then send nothing, are closed after HandshakeTimeout
// and hold no one else up meanwhile.
func TestSplitStalledClients(t *testing.T) {
	const timeout = 2 * time.Second
	f := startSplit(t, SplitConfig{HandshakeTimeout: timeout})
	start := time.Now()
	var stalled []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		stalled = append(stalled, c)
	}
	quiet := f.dialTURN(t, nil) // handshakes, negotiates nothing, sends nothing
	stalled = append(stalled, quiet)
	waitFor(t, "four connections in their handshake", timeout/2, func() bool { return f.split.pendingCount() == 4 })

	if got := f.get(t, []string{"http/1.1"}); got != "HTTP/1.1 tls=true" {
		t.Errorf("got %q while others stall, want HTTP/1.1 over TLS", got)
	}
	if n := f.split.pendingCount(); n != 4 {
		t.Errorf("got %d stalled connections still held after the GET, want 4: the GET waited for them", n)
	}

	for i, c := range stalled {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if err == nil {
			t.Errorf("connection %d: read succeeded, want it closed", i)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("connection %d: still open after 5s, want it closed after %v", i, timeout)
		}
	}
	if el := time.Since(start); el < timeout {
		t.Errorf("stalled connections closed after %v, before the %v deadline", el, timeout)
	}
	waitFor(t, "four timeouts counted", 5*time.Second, func() bool {
		return f.metric(t, "parley_turn_split_connections_total", map[string]string{"result": splitTimeout}) == 4
	})
}

// TestSplitRefusesGarbage checks that what is not TLS is closed at once,
// and that plaintext HTTP gets net/http's 400.
func TestSplitRefusesGarbage(t *testing.T) {
	f := startSplit(t, SplitConfig{HandshakeTimeout: 5 * time.Second})
	tests := []struct {
		name  string
		send  string
		reply string
	}{
		{name: "random bytes", send: "\x00\x01\x02\x03 definitely not TLS\r\n\r\n"},
		{name: "plaintext STUN", send: string(pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest).Raw)},
		{name: "bad TLS record", send: "\x16\x03\x01\x00\x05hello"},
		{name: "plaintext HTTP", send: "GET / HTTP/1.1\r\nHost: x\r\n\r\n", reply: "HTTP/1.0 400 Bad Request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", f.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, tt.send); err != nil {
				t.Fatal(err)
			}
			// Well before the handshake timeout.
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			b, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("got %v, want the connection closed at once", err)
			}
			if !strings.HasPrefix(string(b), tt.reply) || (tt.reply == "" && len(b) > 0 && b[0] != 0x15) {
				t.Errorf("got %q, want %q or a TLS alert", b, tt.reply)
			}
		})
	}
	waitFor(t, "four failures counted", 5*time.Second, func() bool {
		return f.metric(t, "parley_turn_split_connections_total", map[string]string{"result": splitFailed}) == float64(len(tests))
	})
}

// TestSplitBoundsHandshakes checks that past MaxHandshakes new connections
// are closed at once and counted, and that the port serves again once the
// handshakes in progress are done.
func TestSplitBoundsHandshakes(t *testing.T) {
	f := startSplit(t, SplitConfig{HandshakeTimeout: 10 * time.Second, MaxHandshakes: 2})
	var stalled []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		stalled = append(stalled, c)
	}
	waitFor(t, "two connections in their handshake", 5*time.Second, func() bool { return f.split.pendingCount() == 2 })
	extra, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Errorf("connection past the bound: got %v, want it closed", err)
	}
	if got := f.metric(t, "parley_turn_split_connections_total", map[string]string{"result": splitOverloaded}); got != 1 {
		t.Errorf("got %v overloaded, want 1", got)
	}
	for _, c := range stalled {
		c.Close()
	}
	waitFor(t, "the stalled handshakes to end", 5*time.Second, func() bool { return f.split.pendingCount() == 0 && len(f.split.slots) == 0 })
	if got := f.get(t, []string{"h2"}); got != "HTTP/2.0 tls=true" {
		t.Errorf("got %q, want HTTP/2 over TLS", got)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// TestSplitCloses checks the lifetime of the split: TURN goes on after the
// HTTP listener is closed (as http.Server.Shutdown does), the base listener
// closes with the second child, and Accept then returns net.ErrClosed.
func TestSplitCloses(t *testing.T) {
	f := startSplit(t, SplitConfig{})
	peer := echoPeer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := f.http.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.split.HTTP().Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("HTTP Accept after close: got %v, want net.ErrClosed", err)
	}

	// HTTPS is refused now; TURN still serves.
	c, err := tls.Dial("tcp", f.addr, &tls.Config{RootCAs: f.pool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("HTTPS after the HTTP listener closed: got %v, want the connection closed", err)
	}
	c.Close()
	waitFor(t, "the dropped HTTPS connection counted", 5*time.Second, func() bool {
		return f.metric(t, "parley_turn_split_connections_total", map[string]string{"result": splitDropped}) == 1
	})
	f.allocateOver(t, f.dialTURN(t, nil), peer)

	if err := f.Server.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.split.TURN().Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("TURN Accept after close: got %v, want net.ErrClosed", err)
	}
	if c, err := net.DialTimeout("tcp", f.addr, time.Second); err == nil {
		c.Close()
		t.Error("the base listener still accepts after both children closed")
	}
	if err := f.split.Close(); err != nil {
		t.Errorf("Close after the children: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestSplitCloseEndsHandshakes checks that Close ends the handshakes in
// progress at once, not at their deadline.
func TestSplitCloseEndsHandshakes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	split, err := SplitTLS(ln, SplitConfig{TLSConfig: &tls.Config{Certificates: []tls.Certificate{testCert}}, HandshakeTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, "the connection in its handshake", 5*time.Second, func() bool { return split.pendingCount() == 1 })
	start := time.Now()
	if err := split.Close(); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Close took %v", el)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("connection in its handshake: got %v after Close, want it closed", err)
	}
	for _, l := range []net.Listener{split.HTTP(), split.TURN()} {
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: got %v, want net.ErrClosed", err)
		}
	}
}

func TestSplitConfigErrors(t *testing.T) {
	cert := []tls.Certificate{testCert}
	tests := []struct {
		name  string
		cfg   SplitConfig
		field string
	}{
		{name: "no tls config", cfg: SplitConfig{}, field: "TLSConfig"},
		{name: "no certificate", cfg: SplitConfig{TLSConfig: &tls.Config{}}, field: "TLSConfig"},
		{name: "old tls max", cfg: SplitConfig{TLSConfig: &tls.Config{Certificates: cert, MaxVersion: tls.VersionTLS11}}, field: "TLSConfig"},
		{name: "negative timeout", cfg: SplitConfig{TLSConfig: &tls.Config{Certificates: cert}, HandshakeTimeout: -time.Second}, field: "HandshakeTimeout"},
		{name: "negative bound", cfg: SplitConfig{TLSConfig: &tls.Config{Certificates: cert}, MaxHandshakes: -1}, field: "MaxHandshakes"},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := SplitTLS(ln, tt.cfg)
			if !errors.Is(err, errConfig) || !strings.Contains(err.Error(), tt.field+":") {
				t.Errorf("got %v, want a config error naming %s", err, tt.field)
			}
		})
	}
	// TLSStreams alone is a server.
	if err := (Config{Secret: "s", TLSStreams: ln}).withDefaults().validate(); err != nil {
		t.Errorf("TLSStreams alone: got %v, want it valid", err)
	}
}

// pendingCount is the number of connections being classified.
func (s *TLSSplit) pendingCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}
