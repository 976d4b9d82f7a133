package main

import (
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestReviewTURNSURLVerifiesAgainstServedCertificate runs a shared-port
// node as docs/TURN.md deploys one: HTTPS on a name with a certificate for
// that name. The turns: URL the node hands out must be one a client can
// verify the same certificate against (browsers, pion and package rtc all
// check the certificate against the URL's host).
func TestReviewTURNSURLVerifiesAgainstServedCertificate(t *testing.T) {
	certFile, keyFile, pool := writeCertFor(t, t.TempDir(), "localhost")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	n, err := runSharedPortNode(t, "localhost:"+port, certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(n.base + "/v1/ice-servers")
	if err != nil {
		t.Fatalf("HTTPS on %s with its certificate: %v", n.base, err)
	}
	defer resp.Body.Close()
	var ans struct {
		ICEServers []struct {
			URLs []string `json:"urls"`
		} `json:"iceServers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		t.Fatal(err)
	}
	var turns string
	for _, s := range ans.ICEServers {
		for _, u := range s.URLs {
			if strings.HasPrefix(u, "turns:") {
				turns = u
			}
		}
	}
	if turns == "" {
		t.Fatalf("no turns: URL in %+v", ans.ICEServers)
	}
	hostPort, _, _ := strings.Cut(strings.TrimPrefix(turns, "turns:"), "?")
	conn, err := tls.Dial("tcp", hostPort, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatalf("TLS to %s, verified against the URL's host as clients do: %v", turns, err)
	}
	conn.Close()
}

// TestReviewTURNSOnAddrWrittenOtherwise runs serve with --turn-tls-addr
// naming --addr's port with the host written another way (the docs' ":443"
// next to "0.0.0.0:443", or a name next to its address): the two are not
// shared, the second listen fails, and the error should say why and how to
// share the port.
func TestReviewTURNSOnAddrWrittenOtherwise(t *testing.T) {
	certFile, keyFile, _ := writeCert(t, t.TempDir())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	var out strings.Builder
	err = run(t.Context(), func() {}, []string{"--addr", "127.0.0.1:" + port, "--turn-tls-addr", "localhost:" + port,
		"--turn-addr", "127.0.0.1:0", "--admin-addr", "off", "--tls-cert", certFile, "--tls-key", keyFile}, env(), nil, &out, &out)
	if err == nil {
		t.Fatal("serve started with two listeners on one port")
	}
	if !strings.Contains(err.Error(), "--addr") {
		t.Errorf("got %q, want an error that names --addr (the port is --addr's; write the host as --addr does to share it)", err)
	}
}
