package main

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
)

// x25519PEM writes a PEM file with an X25519 public key: a key the gateway
// cannot verify tokens with.
func x25519PEM(t *testing.T) string {
	t.Helper()
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "x25519.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// codeWords are what a message about a setting must not show: Go
// identifiers and package prefixes, which name code, not what the user typed.
var codeWords = []string{"gateway:", "turn:", "tls:", "Config.", "netip", "strconv", "ParsePrefix", "PublicIP"}

// Every error about a setting names it as the user wrote it, --flag or
// PARLEY_VARIABLE, and states the rule in the words of the help.
func TestConfigErrorsNameTheSetting(t *testing.T) {
	x25519 := x25519PEM(t)
	tests := []struct {
		name string
		args []string
		env  func(string) string
		want string
	}{
		{"ping below the floor", []string{"--ping", "1ms"}, env(), "--ping 1ms: must be at least 10ms"},
		{"ping from the environment", nil, env("PARLEY_PING", "0"), "PARLEY_PING=0 (--ping): must be at least 10ms"},
		{"count from the environment", nil, env("PARLEY_MAX_NODE_ROOMS", "0"), "PARLEY_MAX_NODE_ROOMS=0 (--max-node-rooms): must be positive"},
		{"unparsable value from the environment", nil, env("PARLEY_HISTORY_TTL", "soon"), "PARLEY_HISTORY_TTL=soon (--history-ttl): not a duration"},
		{"allow-peers prefix length", []string{"--turn-allow-peers", "10.0.0.0/99"}, env(), `--turn-allow-peers: "10.0.0.0/99" is not a CIDR such as 10.0.0.0/8 or an IP address`},
		{"allow-peers from the environment", nil, env("PARLEY_TURN_ALLOW_PEERS", "10.0.0.0/8,nonsense"), `PARLEY_TURN_ALLOW_PEERS (--turn-allow-peers): "nonsense" is not a CIDR`},
		{"trusted proxies", []string{"--trusted-proxies", "nonsense"}, env(), `--trusted-proxies: "nonsense" is not a CIDR or an IP address`},
		{"port range", []string{"--turn-ports", "60000-50000"}, env(), "--turn-ports 60000-50000: 60000 is above 50000; want a port or a range such as 49152-65535"},
		{"port number", []string{"--turn-ports", "0-10"}, env(), "--turn-ports 0-10: 0 is not between 1 and 65535"},
		{"public IP from the environment", nil, env("PARLEY_TURN_PUBLIC_IP", "relay.example"), "PARLEY_TURN_PUBLIC_IP=relay.example (--turn-public-ip): not an IP address"},
		{"exclusive keys from the environment", []string{"--jwt-public-key", x25519}, env("PARLEY_JWT_SECRET", "s"), "PARLEY_JWT_SECRET (--jwt-secret) and --jwt-public-key are exclusive"},
		{"unsupported key type", []string{"--jwt-public-key", x25519}, env(), "--jwt-public-key " + x25519 + ": holds a Diffie-Hellman (X25519 or ECDH) key: want an RSA, ECDSA or Ed25519 public key"},
		{"not a key", []string{"--jwt-public-key", "serve_test.go"}, env(), "--jwt-public-key serve_test.go: not a PEM public key"},
		{"missing certificate", []string{"--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"}, env(), "--tls-cert and --tls-key: cannot read /nonexistent/c.pem: no such file or directory"},
		{"redis URL not shown", nil, env("PARLEY_REDIS", "redis://:hunter2@127.0.0.1:bad/0"), "PARLEY_REDIS (--redis): not a Redis URL"},
		{"redis scheme", []string{"--redis", "http://127.0.0.1:6379"}, env(), "--redis: not a Redis URL (malformed, or an unknown scheme or option): want redis://"},
		{"redis cluster database", []string{"--redis", "redis+cluster://10.0.0.1:7000,10.0.0.2:7000/3"}, env(), "--redis: not a Redis URL (a Redis Cluster has only database 0): want redis://[user:password@]host:port/db, rediss://... or unix:///path/to/socket for one server, redis+cluster://"},
		{"redis cluster without seeds", []string{"--redis", "rediss+cluster://:s3cret@/"}, env(), "--redis: not a Redis URL (a cluster URL names no seed address)"},
		{"several addresses without +cluster", []string{"--redis", "redis://10.0.0.1:7000,10.0.0.2:7000"}, env(), "--redis: not a Redis URL (several addresses: the URL of a Redis Cluster is redis+cluster://"},
		{"presence TTL", []string{"--presence-ttl", "10ms"}, env(), "--presence-ttl 10ms: want at least 1s"},
		{"one peer per call", []string{"--call-max-peers", "1"}, env(), "--call-max-peers 1: want 2 to 64"},
		{"a mesh too large", nil, env("PARLEY_CALL_MAX_PEERS", "65"), "PARLEY_CALL_MAX_PEERS=65 (--call-max-peers): want 2 to 64"},
		{"call grace", []string{"--call-grace", "500ms"}, env(), "--call-grace 500ms: want at least 1s"},
		{"signal rate", []string{"--call-signal-rate", "0"}, env(), "--call-signal-rate 0: want a positive number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), func() {}, tt.args, tt.env, nil, &out, &out)
			if err == nil {
				t.Fatalf("got no error, want %q", tt.want)
			}
			var printed bytes.Buffer
			exitCode(err, &printed)
			if !strings.Contains(printed.String(), "parley: "+tt.want) {
				t.Errorf("got\n%s\nwant a line starting parley: %s", printed.String(), tt.want)
			}
			for _, w := range append(codeWords, "hunter2") {
				if strings.Contains(printed.String(), w) {
					t.Errorf("message shows %q:\n%s", w, printed.String())
				}
			}
		})
	}
}

// The help of a flag with a floor states it.
func TestHelpStatesFloors(t *testing.T) {
	var out bytes.Buffer
	run(context.Background(), func() {}, []string{"serve", "--help"}, env(), nil, &out, io.Discard)
	for _, want := range []string{"heartbeat interval, at least 10ms", "at least 131072 (128 KiB)"} {
		if !strings.Contains(strings.Join(strings.Fields(out.String()), " "), want) {
			t.Errorf("serve --help does not say %q:\n%s", want, out.String())
		}
	}
}

// A value the gateway, the bus or the TURN server would refuse is reported
// before any socket opens: with --addr busy, the error is about the value.
func TestConfigCheckedBeforeListening(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.Addr().String()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"ping below the gateway's floor", []string{"--ping", "5ms"}, "--ping 5ms: must be at least 10ms"},
		{"publish rate not a number", []string{"--publish-rate", "NaN"}, "--publish-rate NaN: must be a number above 0"},
		{"publish rate infinite", []string{"--publish-rate", "Inf"}, "--publish-rate Inf: must be a number above 0"},
		{"bad origin pattern", []string{"--origins", "[a-"}, `--origins: "[a-" is not a valid pattern`},
		{"unsupported JWT key", []string{"--jwt-public-key", x25519PEM(t)}, "holds a Diffie-Hellman"},
		{"TURN on every address without a public IP", []string{"--turn-addr", "0.0.0.0:0"}, "--turn-addr 0.0.0.0:0 listens on every address: set --turn-public-ip"},
		{"TURN on IPv4 with an IPv6 public IP", []string{"--turn-addr", "127.0.0.1:0", "--turn-public-ip", "2001:db8::1"}, "are not of one address family"},
		{"multicast public IP", []string{"--turn-addr", "127.0.0.1:0", "--turn-public-ip", "224.0.0.1"}, "--turn-public-ip 224.0.0.1: cannot be a relay address"},
		{"TURNS with TURN off", []string{"--turn-addr", "off", "--turn-tls-addr", "127.0.0.1:0", "--tls-cert", "c.pem", "--tls-key", "k.pem"}, "--turn-tls-addr needs TURN on"},
		{"bad TURNS address", []string{"--turn-tls-addr", "5349"}, "--turn-tls-addr 5349: want host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), func() {}, append([]string{"--addr", addr}, tt.args...), env(), nil, &out, &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "in use") {
				t.Errorf("the busy --addr was tried: %v", err)
			}
		})
	}
	// The busy port itself is reported by the flag that names it.
	err = run(context.Background(), func() {}, []string{"--addr", addr, "--turn-addr", "off"}, env(), nil, io.Discard, io.Discard)
	if want := "--addr " + addr + ": address already in use (another program holds it: move this listener with --addr or PARLEY_ADDR)"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
}

// What parseServe accepts, the gateway and the TURN server accept too: a
// refusal after the sockets open would be a check parseServe lacks.
func TestAcceptedConfigIsAcceptedByGatewayAndTURN(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"defaults", nil},
		{"floors", []string{"--ping", "10ms", "--queue-limit", "131072", "--publish-rate", "0.1", "--max-rooms", "1", "--replay-limit", "1"}},
		{"origins", []string{"--origins", "app.example.com,*.example.com,https://app.example.com,http://localhost:*,localhost:3000,https://*.[ab].example.com"}},
		{"proxies and presence", []string{"--trusted-proxies", "10.0.0.0/8,::1", "--presence-rooms", "lobby,chat:*,*"}},
		{"TURN with a public IP", []string{"--turn-addr", "127.0.0.1:0", "--turn-public-ip", "127.0.0.2", "--turn-ports", "40000", "--turn-allow-peers", "10.0.0.0/8,192.0.2.1"}},
		{"TURN on localhost", []string{"--turn-addr", "localhost:0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// TURN on a port of its own; a row's --turn-addr comes later and wins.
			c, err := parseServe(append([]string{"--turn-addr", "127.0.0.1:0"}, tt.args...), env(), nil, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			bus := fanout.NewMemory(fanout.MemoryConfig{})
			defer bus.Close()
			gw, err := gateway.New(gatewayConfig(c, nil, nil, bus))
			if err != nil {
				t.Fatalf("gateway refuses what parseServe accepts: %v", err)
			}
			gw.Shutdown(context.Background())
			relay, err := startTURN(context.Background(), c, nil, nil)
			if err != nil {
				t.Fatalf("TURN refuses what parseServe accepts: %v", err)
			}
			if relay != nil {
				relay.Close()
			}
		})
	}
}

// Flags that would break every client are refused with the reason.
func TestUnusableFlagsRefused(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"queue below the largest message", []string{"--queue-limit", "10"}, "--queue-limit 10: must be at least 131072 (128 KiB): room messages, presence events and heartbeats count against it, one message can carry 64 KiB of data"},
		{"queue one byte short", []string{"--queue-limit", "131071"}, "--queue-limit 131071: must be at least 131072"},
		{"origin with a space", []string{"--origins", "http://a b"}, `--origins: "http://a b" has a space or a control character; want host patterns such as app.example.com`},
		{"origin with a path", []string{"--origins", "https://app.example.com/chat"}, `--origins: "https://app.example.com/chat" has a path or a user part`},
		{"origin without a scheme", []string{"--origins", "://app.example.com"}, `"://app.example.com" has no valid scheme`},
		{"origin without a host", []string{"--origins", "https://"}, `"https://" has no host`},
		{"origin that is no URL", []string{"--origins", "app.example.com:port"}, `"app.example.com:port" is not an origin`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), func() {}, tt.args, env(), nil, &out, &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}
