package loadtest

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/turn"
)

// callNode says what startCallNode serves.
type callNode struct {
	// turn runs a TURN server whose STUN and TURN URLs and credentials go
	// out in join acks, as `parley serve` wires them.
	turn bool
	// jwtSecret takes the node out of dev mode.
	jwtSecret string
}

// startCallNode serves a gateway on 127.0.0.1:0 for the test, with, as n
// asks, a TURN server on 127.0.0.1:0. Two relay-only peers reach each other
// through the relay's own address, which the relay allows on loopback too.
func startCallNode(t *testing.T, n callNode) string {
	t.Helper()
	// Sessions whose clients are still closing when the test ends are not
	// drained over the default 10s.
	cfg := gateway.Config{DrainTimeout: 100 * time.Millisecond}
	if n.jwtSecret != "" {
		cfg.JWTSecret = []byte(n.jwtSecret)
	}
	if n.turn {
		const secret = "loadtest-secret"
		udp, tcp, err := turn.Listen(t.Context(), "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		relay, err := turn.NewServer(turn.Config{Secret: secret, UDPConns: udp, TCPListener: tcp})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { relay.Close() })
		_, port, _ := net.SplitHostPort(relay.UDPAddr().String())
		_, tport, _ := net.SplitHostPort(relay.TCPAddr().String())
		cfg.ICE = &gateway.ICE{
			STUN:   []string{"stun:127.0.0.1:" + port},
			TURN:   []string{"turn:127.0.0.1:" + port + "?transport=udp", "turn:127.0.0.1:" + tport + "?transport=tcp"},
			Secret: secret,
		}
	}
	return serveGateway(t, cfg, nil)
}

// Calls set up at the rate asked connect peer to peer on loopback, over
// host candidates, and each setup is timed.
func TestCalls(t *testing.T) {
	url := startCallNode(t, callNode{turn: true})
	rep, err := Run(context.Background(), Config{URL: url, Scenario: "calls", Calls: 4, Rate: 4, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c := rep.Calls
	if c == nil {
		t.Fatal("no calls report")
	}
	if c.Started != 4 || c.SetUp != 4 || c.Failed != 0 {
		t.Fatalf("got %d started, %d set up, %d failed (%v), want 4, 4 and 0", c.Started, c.SetUp, c.Failed, c.FirstFailures)
	}
	if c.Pairs["host"] != 4 {
		t.Errorf("got pairs %v, want 4 host", c.Pairs)
	}
	d := c.Setup
	if d.Count != 4 || d.P50 <= 0 || d.Max < d.P50 || d.Max > callBound {
		t.Errorf("got setup %v, want 4 samples within %s", d, callBound)
	}
	if len(rep.Distributions) != 1 || rep.Distributions[0].Name != "call setup" {
		t.Errorf("got distributions %v, want the call setup", rep.Distributions)
	}
	// Four calls a quarter of a second apart, each set up in well under a
	// second.
	if c.SetupRate < 1 || c.SetupRate > 6 {
		t.Errorf("got %.1f setups a second, want about 4", c.SetupRate)
	}
	if c.Held < time.Second {
		t.Errorf("held %v, want at least the run's duration", c.Held)
	}
	s := rep.String()
	for _, want := range []string{"scenario calls", "calls: 4 asked at 4.0 a second: 4 set up, 0 failed", "call setup: p50", "pairs: 4 host"} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
}

// With Relay, both peers of every call send through the node's TURN relay.
func TestCallsRelay(t *testing.T) {
	url := startCallNode(t, callNode{turn: true})
	rep, err := Run(context.Background(), Config{URL: url, Scenario: "calls", Calls: 2, Rate: 4, Relay: true, Duration: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c := rep.Calls
	if c.SetUp != 2 || c.Failed != 0 {
		t.Fatalf("got %d set up, %d failed (%v), want 2 and 0", c.SetUp, c.Failed, c.FirstFailures)
	}
	if c.Pairs["relay"] != 2 || len(c.Pairs) != 1 {
		t.Errorf("got pairs %v, want 2 relay", c.Pairs)
	}
	if !strings.Contains(rep.String(), "relay only") {
		t.Errorf("report does not say relay only:\n%s", rep)
	}
}

// A node that cannot do what the run needs fails every call alike: the run
// stops after the first few and says why.
func TestCallsFailFast(t *testing.T) {
	const jwtSecret = "loadtest-jwt"
	// A token that may use every room but join no call.
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, gateway.Claims{
		RegisteredClaims: jwt.RegisteredClaims{Subject: "loader", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))},
		Rooms:            &gateway.Permissions{Subscribe: []string{"*"}, Publish: []string{"*"}},
	}).SignedString([]byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		node   callNode
		cfg    Config
		reason string
		want   []string
	}{
		{"relay without TURN", callNode{}, Config{Relay: true}, "no TURN server", []string{"no TURN server", "--turn-addr"}},
		{"joins refused", callNode{turn: true, jwtSecret: jwtSecret}, Config{Token: tok}, "join: forbidden", []string{"join: forbidden", "not allowed to join call load-call-0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.URL, cfg.Scenario, cfg.Calls, cfg.Rate, cfg.Duration = startCallNode(t, tt.node), "calls", 50, 20, 10*time.Second
			start := time.Now()
			rep, err := Run(context.Background(), cfg)
			if err == nil {
				t.Fatal("got no error, want the run to stop")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("got %q, want it to mention %q", err, want)
				}
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("took %v to give up, want a few calls", took)
			}
			if c := rep.Calls; c == nil || c.SetUp != 0 || c.Failed < callFailFast || c.Failures[tt.reason] != c.Failed {
				t.Errorf("got %+v, want only %q failures", rep.Calls, tt.reason)
			}
		})
	}
}
