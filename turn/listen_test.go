package turn

import (
	"net"
	"runtime"
	"testing"
)

func TestListen(t *testing.T) {
	udp, tcp, err := Listen(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	for _, c := range udp {
		defer c.Close()
	}
	if want := runtime.NumCPU(); len(udp) != want {
		t.Errorf("got %d UDP sockets, want one per CPU (%d)", len(udp), want)
	}
	port := udp[0].LocalAddr().(*net.UDPAddr).Port
	for i, c := range udp {
		if got := c.LocalAddr().(*net.UDPAddr).Port; got != port {
			t.Errorf("socket %d: got port %d, want %d", i, got, port)
		}
	}
	if got := tcp.Addr().(*net.TCPAddr).Port; got != port {
		t.Errorf("got TCP port %d, want the UDP port %d", got, port)
	}
}

func TestListenBadAddress(t *testing.T) {
	if _, _, err := Listen(t.Context(), "not an address"); err == nil {
		t.Fatal("got no error")
	}
}
