package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/pion/logging"
	pionturn "github.com/pion/turn/v4"
)

// sharedPortNode is a node run in this process whose --turn-tls-addr is its
// --addr.
type sharedPortNode struct {
	addr string // the port HTTPS and TURNS share
	base string // https://addr
	out  *syncBuffer
	logs *syncBuffer
}

// startSharedPortNode runs serve with --addr and --turn-tls-addr on one
// port. The two flags must name the same port, so it cannot be 0: the test
// takes a free port, and takes another if some other process bound it
// before the node did.
func startSharedPortNode(t *testing.T, certFile, keyFile string) *sharedPortNode {
	t.Helper()
	for attempt := 1; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		n, err := runSharedPortNode(t, addr, certFile, keyFile)
		if err == nil {
			return n
		}
		if !strings.Contains(err.Error(), "address already in use") || attempt == 3 {
			t.Fatal(err)
		}
	}
}

// runSharedPortNode runs the node on addr until the test ends; it fails if the node
// returns before it listens.
func runSharedPortNode(t *testing.T, addr, certFile, keyFile string) (*sharedPortNode, error) {
	t.Helper()
	n := &sharedPortNode{addr: addr, base: "https://" + addr, out: &syncBuffer{}, logs: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func() {}, []string{"--addr", addr, "--turn-tls-addr", addr, "--turn-addr", "127.0.0.1:0",
			"--admin-addr", "off", "--drain", "100ms", "--tls-cert", certFile, "--tls-key", keyFile}, env(), nil, n.out, n.logs)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(n.out.String(), "listening on "+n.base) {
		select {
		case err := <-done:
			cancel()
			return nil, fmt.Errorf("serve returned %v before listening; output:\n%s\nlogs:\n%s", err, n.out.String(), n.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("node did not report %s; output:\n%s\nlogs:\n%s", n.base, n.out.String(), n.logs.String())
		}
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve returned %v, logs:\n%s", err, n.logs.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("serve did not return after cancel")
		}
	})
	return n, nil
}

// TestServeTURNSOnHTTPSPort runs a node whose --turn-tls-addr is its --addr:
// HTTPS (h2 and HTTP/1.1), WebSocket over wss and a TURN client over TLS
// share the one port, and the ICE servers handed out name it for turns:.
func TestServeTURNSOnHTTPSPort(t *testing.T) {
	certFile, keyFile, pool := writeCert(t, t.TempDir())
	n := startSharedPortNode(t, certFile, keyFile)
	if want := "TURNS      " + n.addr + " (shared with HTTPS)"; !strings.Contains(n.out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, n.out.String())
	}

	for _, tt := range []struct {
		name  string
		alpn  []string
		major int
	}{
		{name: "h2", alpn: []string{"h2", "http/1.1"}, major: 2},
		{name: "http/1.1", alpn: []string{"http/1.1"}, major: 1},
		{name: "no ALPN", major: 1},
	} {
		t.Run("healthz "+tt.name, func(t *testing.T) {
			dialer := &tls.Dialer{Config: &tls.Config{RootCAs: pool, NextProtos: tt.alpn}}
			tr := &http.Transport{DialTLSContext: dialer.DialContext, ForceAttemptHTTP2: true}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(n.base + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != tt.major || string(body) != "ok\n" {
				t.Errorf("GET /healthz: got %v %q over %s, want 200 over HTTP/%d", resp.StatusCode, body, resp.Proto, tt.major)
			}
		})
	}

	t.Run("websocket", func(t *testing.T) {
		dialer := &tls.Dialer{Config: &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}}}
		tr := &http.Transport{DialTLSContext: dialer.DialContext}
		defer tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, "wss://"+n.addr+"/v1/ws", &websocket.DialOptions{
			HTTPClient: &http.Client{Transport: tr}, Subprotocols: []string{"parley.v1"},
		})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.CloseNow()
		_, b, err := c.Read(ctx)
		if err != nil || !strings.Contains(string(b), `"type":"welcome"`) {
			t.Errorf("first frame: got %q (%v), want a welcome", b, err)
		}
		c.Close(websocket.StatusNormalClosure, "")
	})

	turns := "turns:" + n.addr + "?transport=tcp"
	user, pass := iceCredentials(t, n.base, pool, turns)
	peer := udpEchoForTURNS(t)
	for _, tt := range []struct {
		name string
		alpn []string
	}{
		{name: "turn client, no ALPN"},
		{name: "turn client, ALPN stun.turn", alpn: []string{"stun.turn"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", n.addr, &tls.Config{RootCAs: pool, NextProtos: tt.alpn})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			relayThroughTURNS(t, conn, n.addr, user, pass, peer)
		})
	}
}

// iceCredentials fetches /v1/ice-servers, checks that the TURN entry lists
// want, and returns its credentials.
func iceCredentials(t *testing.T, base string, pool *x509.CertPool, want string) (user, pass string) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(base + "/v1/ice-servers")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ans struct {
		ICEServers []struct {
			URLs       []string `json:"urls"`
			Username   string   `json:"username"`
			Credential string   `json:"credential"`
		} `json:"iceServers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/ice-servers: got %v (%v)", resp.Status, err)
	}
	for _, s := range ans.ICEServers {
		if slices.Contains(s.URLs, want) {
			return s.Username, s.Credential
		}
	}
	t.Fatalf("GET /v1/ice-servers: got %+v, want an entry with %s", ans.ICEServers, want)
	return "", ""
}

// udpEchoForTURNS is a UDP peer on 127.0.0.1 that sends every datagram back.
func udpEchoForTURNS(t *testing.T) net.Addr {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	return conn.LocalAddr()
}

// relayThroughTURNS allocates with pion/turn's client over conn, a TLS
// connection to server, and relays a datagram to peer and back.
func relayThroughTURNS(t *testing.T, conn net.Conn, server, user, pass string, peer net.Addr) {
	t.Helper()
	// Longer than 4 bytes: pion's STUNConn parses no frame under 9 bytes.
	relayEcho(t, pionturn.NewSTUNConn(conn), server, user, pass, peer, []byte("hello over port 443"), func(relay net.PacketConn) {
		if host, _, _ := net.SplitHostPort(relay.LocalAddr().String()); host != "127.0.0.1" {
			t.Errorf("relayed address %v, want one on 127.0.0.1", relay.LocalAddr())
		}
	}, nil)
}

// relayEcho allocates with pion/turn's client over conn on the TURN server
// at server, calls allocated with the relay, relays msg to peer (an echo)
// and checks that it comes back from peer, then calls during, if not nil,
// with the allocation still held.
func relayEcho(t *testing.T, conn net.PacketConn, server, user, pass string, peer net.Addr, msg []byte, allocated func(net.PacketConn), during func()) {
	t.Helper()
	lf := logging.NewDefaultLoggerFactory()
	lf.Writer = io.Discard
	c, err := pionturn.NewClient(&pionturn.ClientConfig{
		STUNServerAddr: server, TURNServerAddr: server,
		Username: user, Password: pass,
		Conn: conn, LoggerFactory: lf,
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
	if allocated != nil {
		allocated(relay)
	}
	if _, err := relay.WriteTo(msg, peer); err != nil {
		t.Fatalf("write to peer: %v", err)
	}
	buf := make([]byte, 64)
	_ = relay.SetReadDeadline(time.Now().Add(10 * time.Second))
	nr, from, err := relay.ReadFrom(buf)
	if err != nil || !bytes.Equal(buf[:nr], msg) || from.String() != peer.String() {
		t.Fatalf("echo: got %q from %v (%v), want %q from %v", buf[:nr], from, err, msg, peer)
	}
	if during != nil {
		during()
	}
}

// TestTURNSOnAddrNeedsCert checks that sharing --addr's port for TURNS
// without a certificate is refused before any socket opens, in words that
// say why.
func TestTURNSOnAddrNeedsCert(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), func() {}, []string{"--addr", "127.0.0.1:8443", "--turn-tls-addr", "127.0.0.1:8443"}, env(), nil, &out, &out)
	want := "--turn-tls-addr 127.0.0.1:8443 is also --addr: sharing the port with HTTPS needs --tls-cert and --tls-key"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want an error with %q", err, want)
	}
	if strings.Count(err.Error(), "--turn-tls-addr") != 1 {
		t.Errorf("got %v, want --turn-tls-addr reported once", err)
	}
}

func TestTURNSOnAddrComparesHostAndPort(t *testing.T) {
	tests := []struct {
		name, addr, tlsAddr string
		want                bool
	}{
		{name: "same host and port", addr: "127.0.0.1:443", tlsAddr: "127.0.0.1:443", want: true},
		{name: "every address", addr: ":443", tlsAddr: ":443", want: true},
		{name: "same name", addr: "localhost:8443", tlsAddr: "localhost:8443", want: true},
		{name: "other port", addr: ":443", tlsAddr: ":5349"},
		{name: "other host", addr: "127.0.0.1:443", tlsAddr: "127.0.0.2:443"},
		{name: "host written otherwise", addr: "0.0.0.0:443", tlsAddr: ":443"},
		{name: "port 0 picks two ports", addr: "127.0.0.1:0", tlsAddr: "127.0.0.1:0"},
		{name: "no TURNS", addr: ":443"},
		{name: "bad address", addr: "443", tlsAddr: "443"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &serveConfig{addr: tt.addr, turn: turnFlags{tlsAddr: tt.tlsAddr}}
			if got := c.turnsOnAddr(); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}
