package rtc

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
)

// firstByteServer accepts one connection on network/addr at a time and
// reports the first byte each sends (0 and false when it sends nothing
// within a second), then closes it.
func firstByteServer(t *testing.T, network, addr string) (port string, first <-chan int) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		// A machine without IPv6 loopback cannot run the IPv6 case; CI's
		// has it, and there the case must run.
		if os.Getenv("CI") == "true" {
			t.Fatalf("listen %s %s: %v", network, addr, err)
		}
		t.Skipf("listen %s %s: %v", network, addr, err)
	}
	ch := make(chan int, 4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			b := make([]byte, 1)
			if n, _ := c.Read(b); n == 1 {
				ch <- int(b[0])
			} else {
				ch <- -1
			}
			c.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return port, ch
}

// TestReviewTURNDialerSpeaksTLSToTURNSServers checks that the proxy dialer
// starts TLS (a handshake record, 0x16, is the first byte on the wire) for
// the server of a turns: URL, for every form of host. pion (ice v4.4.8
// gather.go, gatherCandidatesRelay) hands the dialer
// net.JoinHostPort(url.Host, port), which brackets an IPv6 host.
func TestReviewTURNDialerSpeaksTLSToTURNSServers(t *testing.T) {
	tests := []struct {
		name    string
		network string // pion's network type for the dial
		listen  string
		host    string // the URL's host as pion's stun.URI has it
		url     func(port string) string
	}{
		{
			name: "IPv4", network: "tcp4", listen: "127.0.0.1:0", host: "127.0.0.1",
			url: func(port string) string { return "turns:127.0.0.1:" + port + "?transport=tcp" },
		},
		{
			name: "IPv6", network: "tcp6", listen: "[::1]:0", host: "::1",
			url: func(port string) string { return "turns:[::1]:" + port + "?transport=tcp" },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port, first := firstByteServer(t, "tcp", tt.listen)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p := &Peer{
				iceServers: []webrtc.ICEServer{{URLs: []string{tt.url(port)}}},
				dialCtx:    ctx,
				dialCancel: cancel,
			}
			// What pion passes to a proxy dialer (gather.go:1077).
			addr := net.JoinHostPort(tt.host, port)
			conn, err := turnDialer{p}.Dial(tt.network, addr)
			if err == nil {
				defer conn.Close()
			}
			select {
			case b := <-first:
				if b != 0x16 {
					t.Errorf("dial %s for %s: first byte on the wire %d (err %v, conn %T), want 0x16, a TLS handshake: the turns: server got plaintext STUN", addr, tt.url(port), b, err, conn)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the server saw no connection")
			}
			if _, ok := p.turnsHost(addr); !ok {
				t.Errorf("turnsHost(%q) with ICE server %s: got false, want true", addr, tt.url(port))
			}
		})
	}
}

// TestReviewTURNDialerEndsWithDialCtx checks that a TLS handshake to a
// turns: server that never answers ends as soon as dialCtx is cancelled
// (what Run's end and Close do), well before turnDialTimeout.
func TestReviewTURNDialerEndsWithDialCtx(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			held <- c // accepted, never answered
		}
		close(held)
	}()
	defer func() {
		ln.Close()
		for c := range held {
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	p := &Peer{iceServers: []webrtc.ICEServer{{URLs: []string{"turns:127.0.0.1:" + port}}}, dialCtx: ctx, dialCancel: cancel}
	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		c, err := turnDialer{p}.Dial("tcp4", ln.Addr().String())
		if c != nil {
			c.Close()
		}
		errc <- err
	}()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if err == nil {
			t.Error("got a conn from a server that never answered TLS, want an error")
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("dial ended %v after it started, want soon after the cancel at 200ms", el)
		}
	case <-time.After(turnDialTimeout + time.Second):
		t.Fatal("dial did not end")
	}
}
