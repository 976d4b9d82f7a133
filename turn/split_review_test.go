package turn

import (
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pionstun "github.com/pion/stun/v3"
)

// TestReviewSplitLosesNoConnectionOnClose races clients of every kind
// against the closing of the two child listeners, in both orders and with
// TLSSplit.Close, and checks that every connection the base listener took
// is either handed to a consumer or closed: no client is left with a
// connection that nobody will ever close.
func TestReviewSplitLosesNoConnectionOnClose(t *testing.T) {
	orders := []struct {
		name  string
		close func(s *TLSSplit)
	}{
		{name: "http then turn", close: func(s *TLSSplit) {
			s.HTTP().Close()
			time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			s.TURN().Close()
		}},
		{name: "turn then http", close: func(s *TLSSplit) {
			s.TURN().Close()
			time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			s.HTTP().Close()
		}},
		{name: "split close", close: func(s *TLSSplit) { s.Close() }},
		{name: "both at once", close: func(s *TLSSplit) {
			var wg sync.WaitGroup
			wg.Go(func() { s.HTTP().Close() })
			wg.Go(func() { s.TURN().Close() })
			wg.Wait()
		}},
	}
	for _, o := range orders {
		t.Run(o.name, func(t *testing.T) {
			for round := range 5 {
				reviewSplitRound(t, round, o.close)
			}
		})
	}
}

func reviewSplitRound(t *testing.T, round int, closeSplit func(*TLSSplit)) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	split, err := SplitTLS(ln, SplitConfig{TLSConfig: &tls.Config{Certificates: []tls.Certificate{testCert}}, HandshakeTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer split.Close()
	var consumed atomic.Int64
	var consumers sync.WaitGroup
	for _, l := range []net.Listener{split.HTTP(), split.TURN()} {
		consumers.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					if !errors.Is(err, net.ErrClosed) {
						t.Errorf("accept: %v", err)
					}
					return
				}
				consumed.Add(1)
				c.Close()
			}
		})
	}
	stun := pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest).Raw
	const clients = 40
	var wg sync.WaitGroup
	var stuck atomic.Int64
	for i := range clients {
		wg.Go(func() {
			var alpn []string
			switch i % 4 {
			case 0:
				alpn = []string{"h2"}
			case 1:
				alpn = []string{alpnSTUNTURN}
			}
			d := &net.Dialer{Timeout: 2 * time.Second}
			c, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: alpn})
			if err != nil {
				return // refused, or closed during the handshake
			}
			defer c.Close()
			switch i % 4 {
			case 2:
				c.Write(stun)
			case 3:
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			}
			_ = c.SetReadDeadline(time.Now().Add(8 * time.Second))
			_, err = io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				stuck.Add(1)
			}
		})
	}
	time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
	closeSplit(split)
	wg.Wait()
	consumers.Wait()
	if n := stuck.Load(); n > 0 {
		t.Errorf("round %d: %d of %d connections still open 8s on, neither handed to a listener nor closed (%d consumed)", round, n, clients, consumed.Load())
	}
}

// TestReviewSplitChildAcceptAfterClose checks that Accept on a closed
// child returns net.ErrClosed at once, even while connections wait in its
// queue, and that closing one child leaves the other serving.
func TestReviewSplitChildAcceptAfterClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	split, err := SplitTLS(ln, SplitConfig{TLSConfig: &tls.Config{Certificates: []tls.Certificate{testCert}}})
	if err != nil {
		t.Fatal(err)
	}
	defer split.Close()
	// Two connections queue for HTTP, nobody accepts them yet.
	var queued []*tls.Conn
	for range 2 {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		queued = append(queued, c)
	}
	waitFor(t, "two queued", 5*time.Second, func() bool { return len(split.http.ch) == 2 })
	split.HTTP().Close()
	if _, err := split.HTTP().Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after close: got %v, want net.ErrClosed", err)
	}
	for i, c := range queued {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("queued connection %d: got %v after its listener closed, want it closed", i, err)
		}
	}
	// TURN still takes connections.
	got := make(chan net.Conn, 1)
	go func() {
		c, err := split.TURN().Accept()
		if err == nil {
			got <- c
		}
		close(got)
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpnSTUNTURN}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case tc, ok := <-got:
		if !ok {
			t.Fatal("TURN Accept failed after the HTTP child closed")
		}
		tc.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("TURN child took no connection after the HTTP child closed")
	}
}
