package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
)

// startRelayURLs parses serve's flags as serve does, starts the relay they
// configure and returns the STUN and TURN URLs that clients would get.
func startRelayURLs(t *testing.T, args []string, getenv func(string) string) []string {
	t.Helper()
	c, err := parseServe(args, getenv, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	relay, err := startTURN(context.Background(), c, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	if err := c.checkTURNSHostOf(relay); err != nil {
		t.Fatal(err)
	}
	ice := iceConfig(c, relay)
	return append(ice.STUN, ice.TURN...)
}

// The turns: URL names a host the certificate is valid for, chosen by
// --turn-tls-host or by default; stun: and turn: URLs keep the address.
func TestTURNSHost(t *testing.T) {
	tests := []struct {
		name     string
		hosts    []string // the certificate's
		args     []string
		env      func(string) string
		wantHost string // of the turns: URL
	}{
		{name: "IP in the certificate", hosts: []string{"gw.example.com", "127.0.0.1"}, wantHost: "127.0.0.1"},
		{name: "name only", hosts: []string{"gw.example.com", "turn.example.com"}, wantHost: "gw.example.com"},
		{name: "wildcard first", hosts: []string{"*.example.com", "gw.example.com"}, wantHost: "gw.example.com"},
		{name: "public IP in the certificate", hosts: []string{"gw.example.com", "203.0.113.7"}, args: []string{"--turn-public-ip", "203.0.113.7"}, wantHost: "203.0.113.7"},
		{name: "public IP not in the certificate", hosts: []string{"127.0.0.1", "gw.example.com"}, args: []string{"--turn-public-ip", "203.0.113.7"}, wantHost: "gw.example.com"},
		{name: "flag", hosts: []string{"gw.example.com", "turn.example.com", "127.0.0.1"}, args: []string{"--turn-tls-host", "turn.example.com"}, wantHost: "turn.example.com"},
		{name: "flag under a wildcard", hosts: []string{"*.example.com"}, args: []string{"--turn-tls-host", "turn.example.com"}, wantHost: "turn.example.com"},
		{name: "flag with an IP", hosts: []string{"gw.example.com", "127.0.0.1"}, args: []string{"--turn-tls-host", "127.0.0.1"}, wantHost: "127.0.0.1"},
		{name: "environment", hosts: []string{"gw.example.com", "turn.example.com"}, env: env("PARLEY_TURN_TLS_HOST", "turn.example.com"), wantHost: "turn.example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certFile, keyFile, _ := writeCertFor(t, t.TempDir(), tt.hosts...)
			getenv := tt.env
			if getenv == nil {
				getenv = env()
			}
			args := append([]string{"--turn-addr", "127.0.0.1:0", "--turn-tls-addr", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile}, tt.args...)
			urls := startRelayURLs(t, args, getenv)
			ip := "127.0.0.1"
			if strings.Contains(strings.Join(tt.args, " "), "--turn-public-ip 203.0.113.7") {
				ip = "203.0.113.7"
			}
			var turns int
			for _, u := range urls {
				scheme, rest, _ := strings.Cut(u, ":")
				hostPort, _, _ := strings.Cut(rest, "?")
				host, _, err := net.SplitHostPort(hostPort)
				if err != nil {
					t.Fatalf("%s: %v", u, err)
				}
				want := ip
				if scheme == "turns" {
					turns++
					want = tt.wantHost
				}
				if host != want {
					t.Errorf("%s: got host %s, want %s", u, host, want)
				}
			}
			if turns != 1 {
				t.Errorf("got %d turns: URLs in %v, want 1", turns, urls)
			}
		})
	}
}

// A turns: URL that no client could verify the certificate against is
// refused before any socket opens, in words that name the flag to set.
func TestTURNSHostRefused(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	tests := []struct {
		name  string
		hosts []string
		args  []string
		env   func(string) string
		want  string
	}{
		{name: "flag not in the certificate", hosts: []string{"gw.example.com"}, args: []string{"--turn-tls-host", "gw.example.org"},
			want: "--turn-tls-host gw.example.org: the certificate of --tls-cert is not valid for it (it is for gw.example.com)"},
		{name: "environment not in the certificate", hosts: []string{"gw.example.com", "127.0.0.1"}, env: env("PARLEY_TURN_TLS_HOST", "127.0.0.2"),
			want: "PARLEY_TURN_TLS_HOST=127.0.0.2 (--turn-tls-host): the certificate of --tls-cert is not valid for it (it is for gw.example.com, 127.0.0.1)"},
		{name: "flag below a wildcard's level", hosts: []string{"*.example.com"}, args: []string{"--turn-tls-host", "a.b.example.com"},
			want: "--turn-tls-host a.b.example.com: the certificate of --tls-cert is not valid for it (it is for *.example.com)"},
		{name: "flag with a port", hosts: []string{"gw.example.com"}, args: []string{"--turn-tls-host", "gw.example.com:443"},
			want: "--turn-tls-host gw.example.com:443: want a host name or an IP address, without a port"},
		{name: "wildcard only", hosts: []string{"*.example.com"},
			want: "--tls-cert: the certificate is not valid for 127.0.0.1 (the address of --turn-addr), the host that turns: URLs would name, and has no DNS name without a wildcard to name instead (it is for *.example.com): set --turn-tls-host to a name it is valid for"},
		{name: "other IP only", hosts: []string{"127.0.0.2"}, args: []string{"--turn-public-ip", "203.0.113.7"},
			want: "--tls-cert: the certificate is not valid for 203.0.113.7 (--turn-public-ip), the host that turns: URLs would name"},
		{name: "flag without TURNS", hosts: []string{"gw.example.com"}, args: []string{"--turn-tls-addr", "", "--turn-tls-host", "gw.example.com"},
			want: "--turn-tls-host needs --turn-tls-addr: it names the host of turns: URLs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certFile, keyFile, _ := writeCertFor(t, t.TempDir(), tt.hosts...)
			getenv := tt.env
			if getenv == nil {
				getenv = env()
			}
			args := append([]string{"--addr", busy.Addr().String(), "--turn-addr", "127.0.0.1:0", "--turn-tls-addr", "127.0.0.1:0",
				"--tls-cert", certFile, "--tls-key", keyFile}, tt.args...)
			var out bytes.Buffer
			err := run(context.Background(), func() {}, args, getenv, nil, &out, &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error with %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "in use") {
				t.Errorf("the busy --addr was tried: %v", err)
			}
		})
	}
}

// When --turn-addr names a host, its address is known once TURN listens:
// serve checks it then against a certificate without a DNS name.
func TestTURNSHostCheckedOnceListening(t *testing.T) {
	certFile, keyFile, _ := writeCertFor(t, t.TempDir(), "127.0.0.1")
	c, err := parseServe([]string{"--turn-addr", "127.0.0.1:0", "--turn-tls-addr", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile}, env(), nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// As if --turn-addr had named a host that resolved to 127.0.0.1, with a
	// certificate for another address.
	otherCert, otherKey, _ := writeCertFor(t, t.TempDir(), "127.0.0.2")
	cert, err := tls.LoadX509KeyPair(otherCert, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	c.tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	relay, err := startTURN(context.Background(), c, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	err = c.checkTURNSHostOf(relay)
	want := "--tls-cert: the certificate is not valid for 127.0.0.1, the address of --turn-addr 127.0.0.1:0 that turns: URLs would name (it is for 127.0.0.2): set --turn-tls-host to a name it is valid for"
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
}

// --turn-tls-addr with --addr's port and the host written otherwise would
// clash with --addr rather than share its port: refused before any socket
// opens, with how to share it. Two distinct addresses may take one port.
func TestTURNSOnAddrWrittenOtherwiseRefused(t *testing.T) {
	certFile, keyFile, _ := writeCert(t, t.TempDir())
	tests := []struct {
		name, addr, tlsAddr string
		want                string // empty: accepted
	}{
		{name: "name next to its address", addr: "127.0.0.1:8443", tlsAddr: "localhost:8443",
			want: "--turn-tls-addr localhost:8443 has the port of --addr 127.0.0.1:8443: write its host as --addr does to share the port with HTTPS"},
		{name: "every address written two ways", addr: "0.0.0.0:443", tlsAddr: ":443",
			want: "--turn-tls-addr :443 has the port of --addr 0.0.0.0:443: write its host as --addr does"},
		{name: "IPv4 every address next to IPv6's", addr: "[::]:443", tlsAddr: "0.0.0.0:443", want: "has the port of --addr [::]:443"},
		{name: "every address next to one", addr: ":443", tlsAddr: "127.0.0.1:443", want: "has the port of --addr :443"},
		{name: "mapped address", addr: "127.0.0.1:443", tlsAddr: "[::ffff:127.0.0.1]:443", want: "has the port of --addr 127.0.0.1:443"},
		{name: "two addresses", addr: "127.0.0.1:443", tlsAddr: "127.0.0.2:443"},
		{name: "shared", addr: "127.0.0.1:443", tlsAddr: "127.0.0.1:443"},
		{name: "port 0", addr: "127.0.0.1:0", tlsAddr: "localhost:0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"--addr", tt.addr, "--turn-tls-addr", tt.tlsAddr, "--turn-addr", "127.0.0.1:0", "--turn-public-ip", "127.0.0.1",
				"--jwt-secret", "s", "--tls-cert", certFile, "--tls-key", keyFile}
			_, err := parseServe(args, env(), nil, io.Discard)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want no error", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error with %q", err, tt.want)
			}
			if err != nil && strings.Count(err.Error(), "--turn-tls-addr") != 1 {
				t.Errorf("got %v, want --turn-tls-addr reported once", err)
			}
		})
	}
}
