package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// writeCert writes a self-signed certificate for 127.0.0.1, which is its
// own authority, and its key to dir; pool trusts it.
func writeCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	return writeCertFor(t, dir, "127.0.0.1")
}

// writeCertFor is writeCert for hosts, each an IP address or a DNS name
// (wildcards allowed): a certificate for names only is what a public CA
// issues for a node's domain.
func writeCertFor(t *testing.T, dir string, hosts ...string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "parley serve test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(leaf)
	return certFile, keyFile, pool
}

// TestServeTLSProtocols runs the serve command with --tls-cert: a client that
// offers h2 gets HTTP/2, one that offers only http/1.1 gets HTTP/1.1, and
// WebSocket works over HTTP/1.1 on the same listener.
func TestServeTLSProtocols(t *testing.T) {
	certFile, keyFile, pool := writeCert(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, logs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func() {}, []string{"--addr", "127.0.0.1:0", "--admin-addr", "off", "--turn-addr", "off", "--drain", "100ms",
			"--tls-cert", certFile, "--tls-key", keyFile}, env(), nil, &out, &logs)
	}()
	var base string
	waitFor := time.Now().Add(20 * time.Second)
	for base == "" {
		if m := regexp.MustCompile(`listening on (https://[0-9.:]+)`).FindStringSubmatch(out.String()); m != nil {
			base = m[1]
		} else if time.Now().After(waitFor) {
			t.Fatalf("node did not report an https address; output:\n%s\nlogs:\n%s", out.String(), logs.String())
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}

	tests := []struct {
		name  string
		alpn  []string
		major int
	}{
		{name: "h2 offered", alpn: []string{"h2", "http/1.1"}, major: 2},
		{name: "http/1.1 only", alpn: []string{"http/1.1"}, major: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, NextProtos: tt.alpn}, ForceAttemptHTTP2: tt.major == 2}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Get(base + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != tt.major {
				t.Errorf("GET /healthz: got %v over %s, want %v over HTTP/%d", resp.StatusCode, resp.Proto, http.StatusOK, tt.major)
			}
		})
	}

	t.Run("websocket", func(t *testing.T) {
		dialer := &tls.Dialer{Config: &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}}}
		tr := &http.Transport{DialTLSContext: dialer.DialContext}
		defer tr.CloseIdleConnections()
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		defer dcancel()
		c, _, err := websocket.Dial(dctx, "wss"+strings.TrimPrefix(base, "https")+"/v1/ws", &websocket.DialOptions{
			HTTPClient: &http.Client{Transport: tr}, Subprotocols: []string{"parley.v1"},
		})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.CloseNow()
		_, b, err := c.Read(dctx)
		if err != nil || !strings.Contains(string(b), `"type":"welcome"`) {
			t.Errorf("first frame: got %q (%v), want a welcome", b, err)
		}
		c.Close(websocket.StatusNormalClosure, "")
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v, logs:\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
}
