package turn_test

import (
	"crypto/tls"
	"log"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/parley-rt/parley/turn"
)

// HTTPS and TURN over TLS on port 443, for clients whose firewall lets only
// TCP to 443 out.
func ExampleSplitTLS() {
	cert, err := tls.LoadX509KeyPair("cert.pem", "key.pem")
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", ":443")
	if err != nil {
		log.Fatal(err)
	}
	split, err := turn.SplitTLS(ln, turn.SplitConfig{TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}})
	if err != nil {
		ln.Close()
		log.Fatal(err)
	}
	defer split.Close()

	relay, err := turn.NewServer(turn.Config{
		Secret:     "shared secret",
		TLSStreams: split.TURN(),
		PublicIP:   netip.MustParseAddr("203.0.113.7"),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer relay.Close()

	// Serve, not ServeTLS: the split has terminated TLS, and http.Server
	// serves HTTP/2 to the connections that negotiated h2.
	srv := &http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(split.HTTP())
	defer srv.Close()

	// Clients get turns:203.0.113.7:443?transport=tcp with a credential
	// pair from turn.Credentials.
}
