package turn_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/parley-rt/parley/turn"
)

func ExampleCredentials() {
	username, credential := turn.Credentials("secret", "alice", time.Hour, time.Unix(1_700_000_000, 0))
	fmt.Println(username)
	fmt.Println(credential)
	// Output:
	// 1700003600:alice
	// LLPLO4qjdVL2qZhwr3eImhn7J20=
}

func ExampleParseAllowPeers() {
	allow, err := turn.ParseAllowPeers("127.0.0.0/8, ::1/128, 10.1.2.3")
	fmt.Println(allow, err)
	_, err = turn.ParseAllowPeers("10.0.0.0/33")
	fmt.Println(err != nil)
	// Output:
	// [127.0.0.0/8 ::1/128 10.1.2.3/32] <nil>
	// true
}

func ExampleNewServer() {
	ctx := context.Background()
	udp, tcp, err := turn.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	s, err := turn.NewServer(turn.Config{
		Secret:      "shared secret",
		UDPConns:    udp,
		TCPListener: tcp,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	// Hand clients turn:HOST:PORT with a credential pair.
	username, credential := turn.Credentials("shared secret", "alice", time.Hour, time.Now())
	_, _ = username, credential
	fmt.Println(s.UDPAddr() != nil, s.TCPAddr() != nil)
	// Output: true true
}
