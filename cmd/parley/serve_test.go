package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestTrustedProxiesFlag(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  func(string) string
		want []string
	}{
		{"default none", nil, env(), nil},
		{"flag", []string{"--trusted-proxies", "10.0.0.0/8, 192.0.2.7,2001:db8::/32,::1"}, env(), []string{"10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128"}},
		{"environment", nil, env("PARLEY_TRUSTED_PROXIES", "172.16.0.0/12"), []string{"172.16.0.0/12"}},
		{"flag over environment", []string{"--trusted-proxies", "10.1.0.0/16"}, env("PARLEY_TRUSTED_PROXIES", "172.16.0.0/12"), []string{"10.1.0.0/16"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseServe(tt.args, tt.env, nil, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range c.trustedProxies {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTrustedProxiesFlagErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  func(string) string
		want string
	}{
		{"not a CIDR", []string{"--trusted-proxies", "10.0.0.0/33"}, env(), `--trusted-proxies: "10.0.0.0/33" is not a CIDR`},
		{"a host name", []string{"--trusted-proxies", "10.0.0.0/8,lb.internal"}, env(), `--trusted-proxies: "lb.internal" is not a CIDR or an IP address`},
		{"bits past the mask", nil, env("PARLEY_TRUSTED_PROXIES", "10.0.0.1/8"), "PARLEY_TRUSTED_PROXIES (--trusted-proxies): 10.0.0.1/8 has bits set past the /8 mask: write 10.0.0.0/8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), func() {}, tt.args, tt.env, nil, &out, &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

// TestServeTrustedProxies runs a node with --trusted-proxies and checks that
// --max-conns-per-ip counts the forwarded clients, not the proxy.
func TestServeTrustedProxies(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out, logs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func() {}, []string{"--addr", "127.0.0.1:0", "--admin-addr", "off", "--turn-addr", "off", "--drain", "100ms", "--max-conns-per-ip", "1"},
			env("PARLEY_TRUSTED_PROXIES", "127.0.0.1"), nil, &out, &logs)
	}()
	wsURL := "ws" + strings.TrimPrefix(waitListening(t, &out), "http") + "/v1/ws"

	var conns []*websocket.Conn
	for i, tc := range []struct {
		xff  string
		want int
	}{
		{"203.0.113.1", http.StatusSwitchingProtocols},
		{"203.0.113.2", http.StatusSwitchingProtocols},
		{"203.0.113.1", http.StatusTooManyRequests},
	} {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, resp, err := websocket.Dial(dctx, wsURL, &websocket.DialOptions{
			Subprotocols: []string{"parley.v1"},
			HTTPHeader:   http.Header{"X-Forwarded-For": {tc.xff}},
		})
		dcancel()
		if resp == nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		if c != nil {
			conns = append(conns, c)
		}
		if resp.StatusCode != tc.want {
			t.Errorf("connection %d (X-Forwarded-For %s): got %v, want %v", i+1, tc.xff, resp.StatusCode, tc.want)
		}
	}
	for _, c := range conns {
		c.CloseNow()
	}

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
