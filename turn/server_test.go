package turn

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestCloseEndsConnectionsAndAllocations closes a server with a live TCP
// allocation and a live UDP one: Close returns, the TCP client sees its
// connection end, and goleak (TestMain) sees no goroutine left.
func TestCloseEndsConnectionsAndAllocations(t *testing.T) {
	ts := startServer(t, Config{})
	for _, network := range []string{"tcp", "udp"} {
		addr := ts.UDPAddr()
		if network == "tcp" {
			addr = ts.TCPAddr()
		}
		c := dialRaw(t, network, addr)
		c.username, c.password = ts.creds("alice-"+network, time.Hour)
		if _, code := c.allocate(); code != 0 {
			t.Fatalf("%s allocate: %v", network, code)
		}
	}
	tcp := dialRaw(t, "tcp", ts.TCPAddr()) // a connection with no allocation
	waitFor(t, "two active allocations", 5*time.Second, func() bool {
		return ts.metric(t, "parley_turn_allocations_active", map[string]string{"transport": "udp"}) == 1 &&
			ts.metric(t, "parley_turn_allocations_active", map[string]string{"transport": "tcp"}) == 1
	})
	if got := ts.AllocationCount(); got != 2 {
		t.Fatalf("got %d allocations, want 2", got)
	}

	done := make(chan error, 1)
	go func() { done <- ts.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("close did not return")
	}
	if _, err := tcp.readRaw(5 * time.Second); !errors.Is(err, io.EOF) {
		var ne net.Error
		if !errors.As(err, &ne) || ne.Timeout() {
			t.Errorf("got %v from a client after close, want the connection ended", err)
		}
	}
	if err := ts.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}
