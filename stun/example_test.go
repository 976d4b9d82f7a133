package stun_test

import (
	"log"
	"net"

	"github.com/parley-rt/parley/stun"
)

func ExampleServer_Serve() {
	s, err := stun.NewServer(stun.Config{Rate: 20, Burst: 40})
	if err != nil {
		log.Fatal(err)
	}
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(conn) }()

	// ... until shutdown:
	if err := s.Close(); err != nil {
		log.Fatal(err)
	}
	<-done // stun.ErrServerClosed
	// Output:
}
