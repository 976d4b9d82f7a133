package loadtest

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/turn"
)

const testTURNSecret = "loadtest-turn-secret"

// turnNode is a gateway and the project's TURN server, both on 127.0.0.1,
// wired as parley serve wires them: the gateway hands out credentials for
// the relay's turn: URLs, minted with the relay's secret.
type turnNode struct {
	relay *turn.Server
	url   string // the gateway's WebSocket endpoint
}

// turnNodeConfig varies a turnNode: ice says what the gateway is told of
// the relay (nil: nothing, and /v1/ice-servers answers 404), and jwtSecret
// makes the gateway ask for tokens.
type turnNodeConfig struct {
	ice       func(relay *turn.Server) *gateway.ICE
	jwtSecret string
}

// relayICE tells the gateway of the relay's turn: URLs, over UDP and TCP,
// and its secret, as parley serve does.
func relayICE(relay *turn.Server) *gateway.ICE {
	return &gateway.ICE{
		TURN:   []string{"turn:" + relay.UDPAddr().String() + "?transport=udp", "turn:" + relay.TCPAddr().String() + "?transport=tcp"},
		Secret: testTURNSecret,
	}
}

// relayTCPICE is relayICE with the turn: URL over TCP only.
func relayTCPICE(relay *turn.Server) *gateway.ICE {
	ice := relayICE(relay)
	ice.TURN = ice.TURN[1:]
	return ice
}

// startTURNNode starts a TURN server and a gateway for the test.
func startTURNNode(t *testing.T, nc turnNodeConfig) *turnNode {
	t.Helper()
	udp, tcp, err := turn.Listen(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	relay, err := turn.NewServer(turn.Config{Secret: testTURNSecret, UDPConns: udp, TCPListener: tcp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := relay.Close(); err != nil {
			t.Errorf("turn close: %v", err)
		}
	})
	// The relay's addresses are its listener's: loopback, which its
	// peer-address policy denies except as its own relay addresses. That is
	// what lets two of its allocations relay to each other here.
	if ip := relay.UDPAddr().(*net.UDPAddr).IP; !ip.IsLoopback() {
		t.Fatalf("got relay address %v, want a loopback address", ip)
	}
	var gcfg gateway.Config
	if nc.ice != nil {
		gcfg.ICE = nc.ice(relay)
	}
	if nc.jwtSecret != "" {
		gcfg.JWTSecret = []byte(nc.jwtSecret)
	}
	return &turnNode{relay: relay, url: serveGateway(t, gcfg, nil)}
}

func TestTURN(t *testing.T) {
	tests := []struct {
		name   string
		ice    func(*turn.Server) *gateway.ICE
		allocs int
		dur    time.Duration
		server string
	}{
		{"udp", relayICE, 10, 2 * time.Second, "?transport=udp"},
		{"tcp", relayTCPICE, 4, time.Second, "?transport=tcp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := startTURNNode(t, turnNodeConfig{ice: tt.ice})
			rep, err := Run(context.Background(), Config{URL: node.url, Scenario: "turn", Allocations: tt.allocs, Rate: 50, Duration: tt.dur})
			if err != nil {
				t.Fatal(err)
			}
			tr := rep.TURN
			if tr == nil {
				t.Fatal("no TURN report")
			}
			t.Log("\n" + rep.String())
			if !strings.HasSuffix(tr.Server, tt.server) {
				t.Errorf("got server %s, want a URL ending in %s", tr.Server, tt.server)
			}
			if tr.Asked != tt.allocs || tr.Made != tt.allocs || tr.Failed != 0 || len(tr.Failures) != 0 {
				t.Errorf("got %d asked, %d made, %d failed (%v), want %d made", tr.Asked, tr.Made, tr.Failed, tr.Failures, tt.allocs)
			}
			if tr.Allocation.Count != int64(tt.allocs) || tr.Allocation.P50 <= 0 || tr.PerSecond <= 0 {
				t.Errorf("got allocation %v at %.1f a second, want %d samples", tr.Allocation, tr.PerSecond, tt.allocs)
			}
			for _, ip := range tr.RelayIPs {
				if !net.ParseIP(ip).IsLoopback() {
					t.Errorf("got relay address %s, want loopback", ip)
				}
			}
			pairs := tt.allocs / 2
			if tr.Pairs != pairs {
				t.Errorf("got %d pairs, want %d", tr.Pairs, pairs)
			}
			// Both sides of every pair send 100 a second: with nothing lost,
			// both directions got through.
			if want := int64(float64(pairs*2*100) * tt.dur.Seconds() * 0.7); tr.Sent < want {
				t.Errorf("sent %d packets, want at least %d", tr.Sent, want)
			}
			if tr.Lost != 0 || tr.Received != tr.Sent {
				t.Errorf("sent %d, received %d, lost %d; want no loss on loopback", tr.Sent, tr.Received, tr.Lost)
			}
			if tr.BytesPerSecond <= 0 || tr.Mbps <= 0 {
				t.Errorf("got %.0f B/s, %.3f Mbit/s, want throughput", tr.BytesPerSecond, tr.Mbps)
			}
			if tr.Latency.Count != tr.Received || tr.Latency.P50 <= 0 {
				t.Errorf("got relay latency %v, want %d samples", tr.Latency, tr.Received)
			}
			if len(rep.Distributions) != 2 || rep.Distributions[0].Name != "allocation" || rep.Distributions[1].Name != "relay latency" {
				t.Errorf("got distributions %v, want allocation and relay latency", rep.Distributions)
			}
			// Every allocation was released on the way out.
			deadline := time.Now().Add(5 * time.Second)
			for node.relay.AllocationCount() != 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if n := node.relay.AllocationCount(); n != 0 {
				t.Errorf("the relay still has %d allocations, want 0", n)
			}
		})
	}
}

// With a token, every allocation is the token's user, and the relay's
// per-user quota (10 by default) refuses those past it with 486, which the
// report gives as the reason.
func TestTURNUserQuota(t *testing.T) {
	node := startTURNNode(t, turnNodeConfig{ice: relayICE, jwtSecret: "jwt-secret"})
	tok, err := gateway.MintToken([]byte("jwt-secret"), "alice", time.Hour, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), Config{URL: node.url, Scenario: "turn", Token: tok, Allocations: 12, Rate: 100, Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	tr := rep.TURN
	if tr.Made != turn.DefaultUserQuota || tr.Failed != 12-turn.DefaultUserQuota {
		t.Errorf("got %d made, %d failed, want %d and %d", tr.Made, tr.Failed, turn.DefaultUserQuota, 12-turn.DefaultUserQuota)
	}
	var quota int
	for reason, n := range tr.Failures {
		if strings.HasPrefix(reason, "486 Allocation Quota Reached") && strings.Contains(reason, "--turn-user-quota") {
			quota += n
		}
	}
	if quota != tr.Failed {
		t.Errorf("got failures %v, want all of them the quota's", tr.Failures)
	}
	if !strings.Contains(rep.String(), "486 Allocation Quota Reached") {
		t.Errorf("the report does not say why:\n%s", rep)
	}
	if tr.Pairs != turn.DefaultUserQuota/2 || tr.Received == 0 {
		t.Errorf("got %d pairs, %d packets received, want %d pairs relaying", tr.Pairs, tr.Received, turn.DefaultUserQuota/2)
	}
}

// A node that cannot relay, or whose credentials do not work, stops the run
// at once, saying why.
func TestTURNRefusals(t *testing.T) {
	tests := []struct {
		name  string
		nc    turnNodeConfig
		token string
		want  []string
	}{
		{"no TURN", turnNodeConfig{}, "", []string{"404", "no TURN relay"}},
		{"STUN only", turnNodeConfig{ice: func(*turn.Server) *gateway.ICE {
			return &gateway.ICE{STUN: []string{"stun:127.0.0.1:3478"}}
		}}, "", []string{"no turn: URL"}},
		{"remote relay", turnNodeConfig{ice: func(*turn.Server) *gateway.ICE {
			return &gateway.ICE{TURN: []string{"turn:192.0.2.1:3478"}, Secret: testTURNSecret}
		}}, "", []string{"not on a loopback address"}},
		{"bad token", turnNodeConfig{ice: relayICE, jwtSecret: "jwt-secret"}, "not-a-token", []string{"401", "token"}},
		{"missing token", turnNodeConfig{ice: relayICE, jwtSecret: "jwt-secret"}, "", []string{"401", "missing token", "--token"}},
		{"credential of another secret", turnNodeConfig{ice: func(relay *turn.Server) *gateway.ICE {
			ice := relayICE(relay)
			ice.Secret = "not-the-relay-secret"
			return ice
		}}, "", []string{"no TURN allocation", "succeeded", "401 Unauthorized", "credential"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := startTURNNode(t, tt.nc)
			start := time.Now()
			_, err := Run(context.Background(), Config{URL: node.url, Scenario: "turn", Token: tt.token, Allocations: 30, Rate: 100, Duration: 10 * time.Second})
			if err == nil {
				t.Fatal("got no error")
			}
			t.Log(err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got %q, want it to mention %q", err, w)
				}
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("took %v to give up, want a few tries", took)
			}
			if n := node.relay.AllocationCount(); n != 0 {
				t.Errorf("the relay has %d allocations, want 0", n)
			}
		})
	}
}

func TestTURNSize(t *testing.T) {
	for _, size := range []int{8, 1501} {
		_, err := Run(context.Background(), Config{URL: "ws://127.0.0.1:1/v1/ws", Scenario: "turn", Size: size})
		if err == nil || !strings.Contains(err.Error(), "16 to 1500 bytes") {
			t.Errorf("size %d: got %v, want an error giving the sizes allowed", size, err)
		}
	}
}

func TestParseTURNURL(t *testing.T) {
	tests := []struct {
		url  string
		addr string
		tcp  bool
		ok   bool
	}{
		{"turn:127.0.0.1:3478?transport=udp", "127.0.0.1:3478", false, true},
		{"turn:127.0.0.1:3478", "127.0.0.1:3478", false, true},
		{"turn:127.0.0.1:3479?transport=tcp", "127.0.0.1:3479", true, true},
		{"turn:localhost", "localhost:3478", false, true},
		{"turn:[::1]:3478", "[::1]:3478", false, true},
		{"turn:[::1]", "[::1]:3478", false, true},
		{"turns:127.0.0.1:5349?transport=tcp", "", false, false},
		{"stun:127.0.0.1:3478", "", false, false},
		{"turn:127.0.0.1:3478?transport=sctp", "", false, false},
		{"turn:", "", false, false},
	}
	for _, tt := range tests {
		c, ok := parseTURNURL(tt.url)
		if ok != tt.ok || (ok && (c.addr != tt.addr || c.tcp != tt.tcp)) {
			t.Errorf("%s: got %q tcp %v ok %v, want %q tcp %v ok %v", tt.url, c.addr, c.tcp, ok, tt.addr, tt.tcp, tt.ok)
		}
	}
}

func TestICEEndpoint(t *testing.T) {
	tests := []struct {
		url, want string
	}{
		{"ws://127.0.0.1:8080/v1/ws", "http://127.0.0.1:8080/v1/ice-servers"},
		{"wss://localhost/v1/ws?x=1", "https://localhost/v1/ice-servers"},
		{"ws://127.0.0.1:8080/v1/socket", ""},
	}
	for _, tt := range tests {
		got, err := iceEndpoint(tt.url)
		if (err != nil) != (tt.want == "") || got != tt.want {
			t.Errorf("%s: got %q, %v; want %q", tt.url, got, err, tt.want)
		}
	}
}
