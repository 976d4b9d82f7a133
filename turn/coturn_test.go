package turn

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	pionstun "github.com/pion/stun/v3"
)

// coturnBinary finds one of coturn's programs. Without it the test fails
// when CI=true and is skipped otherwise.
func coturnBinary(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found (Debian package coturn) and CI=true: %v", name, err)
	}
	t.Skipf("%s not found; install the Debian package coturn to run this test", name)
	return ""
}

// echoPeer is a UDP peer on 127.0.0.1 that sends every datagram back.
func echoPeer(t testing.TB) *net.UDPAddr {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	return conn.LocalAddr().(*net.UDPAddr)
}

// runTool runs a coturn tool to completion and returns its combined output.
func runTool(t testing.TB, timeout time.Duration, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

var lostRe = regexp.MustCompile(`Total lost packets (\d+)`)
var totalsRe = regexp.MustCompile(`start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`)

func TestCoturnUclientAgainstUs(t *testing.T) {
	bin := coturnBinary(t, "turnutils_uclient")
	ts := startServer(t, Config{AllowPeers: mustAllow(t, "127.0.0.0/8")})
	peer := echoPeer(t)
	tests := []struct {
		name      string
		flags     []string
		port      int
		transport string
	}{
		{name: "udp", port: addrPort(ts.UDPAddr()), transport: transportUDP},
		{name: "tcp", flags: []string{"-t"}, port: addrPort(ts.TCPAddr()), transport: transportTCP},
		{name: "tls", flags: []string{"-t", "-S"}, port: addrPort(ts.TLSAddr()), transport: transportTLS},
		{name: "udp send indications", flags: []string{"-s"}, port: addrPort(ts.UDPAddr()), transport: transportUDP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// -W makes uclient mint its own REST credential from the shared
			// secret, coturn's way.
			args := append([]string{}, tt.flags...)
			args = append(args, "-c", "-n", "30", "-m", "2", "-l", "120", "-z", "5",
				"-u", "uclient", "-W", testSecret,
				"-e", "127.0.0.1", "-r", strconv.Itoa(peer.Port),
				"-p", strconv.Itoa(tt.port), "127.0.0.1")
			out, err := runTool(t, 60*time.Second, bin, args...)
			if err != nil {
				t.Fatalf("uclient: %v\n%s", err, out)
			}
			m := lostRe.FindStringSubmatch(out)
			totals := totalsRe.FindStringSubmatch(out)
			if m == nil || totals == nil {
				t.Fatalf("uclient printed no totals:\n%s", out)
			}
			if lost, _ := strconv.Atoi(m[1]); lost != 0 {
				t.Errorf("uclient lost %d packets:\n%s", lost, out)
			}
			if totals[1] != "60" || totals[2] != "60" {
				t.Errorf("uclient sent %s and received %s messages, want 60 and 60:\n%s", totals[1], totals[2], out)
			}
			if got := ts.metric(t, "parley_turn_relayed_packets_total", map[string]string{"transport": tt.transport, "direction": dirFromPeer}); got == 0 {
				t.Errorf("nothing relayed over %s", tt.transport)
			}
		})
	}
}

func TestCoturnStunclientAgainstUs(t *testing.T) {
	bin := coturnBinary(t, "turnutils_stunclient")
	ts := startServer(t, Config{})
	out, err := runTool(t, 20*time.Second, bin, "-p", strconv.Itoa(addrPort(ts.UDPAddr())), "127.0.0.1")
	if err != nil {
		t.Fatalf("stunclient: %v\n%s", err, out)
	}
	if !strings.Contains(out, "UDP reflexive addr: 127.0.0.1:") {
		t.Errorf("stunclient found no reflexive address:\n%s", out)
	}
}

// TestCoturnAcceptsOurCredentials starts coturn's turnserver with
// use-auth-secret and allocates on it with credentials from Credentials.
func TestCoturnAcceptsOurCredentials(t *testing.T) {
	bin := coturnBinary(t, "turnserver")
	secret := "shared-with-coturn"
	addr := startCoturn(t, bin, secret, 40000+rand.IntN(100)*100, 100) //nolint:gosec

	user, pass := Credentials(secret, "alice", time.Hour, time.Now())
	c, _ := pionClient(t, addr, user, pass)
	relay, err := c.Allocate()
	if err != nil {
		t.Fatalf("coturn refused our credential: %v", err)
	}
	relay.Close()

	// And refuses a forged one, so the success above means something.
	forged := dialRaw(t, "udp", addr)
	forged.username, forged.password = user, password("not-the-secret", user)
	if _, code := forged.allocate(); code != pionstun.CodeUnauthorized {
		t.Errorf("coturn: got %v for a forged credential, want 401", code)
	}
}

// startCoturn runs turnserver on a random free-looking port of 127.0.0.1,
// retrying elsewhere if the port was taken, until it answers STUN. Relay
// ports come from [relayLo, relayLo+relayPorts).
func startCoturn(t testing.TB, bin, secret string, relayLo, relayPorts int, extra ...string) *net.UDPAddr {
	t.Helper()
	dir := t.TempDir()
	for range 5 {
		port := 20000 + rand.IntN(20000) //nolint:gosec
		args := append([]string{
			"-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
			"--listening-port=" + strconv.Itoa(port),
			"--min-port=" + strconv.Itoa(relayLo), "--max-port=" + strconv.Itoa(relayLo+relayPorts-1),
			"--use-auth-secret", "--static-auth-secret=" + secret, "--realm=parley",
			"--no-tls", "--no-dtls", "--no-cli", "--no-tcp-relay",
			"--pidfile=" + filepath.Join(dir, "turnserver.pid"),
			"--log-file=stdout", "--simple-log", "--no-stdout-log",
		}, extra...)
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, bin, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatalf("start turnserver: %v", err)
		}
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		stop := func() {
			cancel()
			<-exited
		}
		addr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
		if coturnReady(addr, exited) {
			t.Cleanup(stop)
			return addr
		}
		stop()
		t.Logf("turnserver on port %d did not come up, trying another:\n%s", port, out.String())
	}
	t.Fatal("turnserver did not start")
	return nil
}

// coturnReady polls addr with STUN binding requests until it answers, the
// process exits, or 10 seconds pass.
func coturnReady(addr *net.UDPAddr, exited <-chan struct{}) bool {
	conn, err := net.DialUDP("udp4", nil, addr)
	if err != nil {
		return false
	}
	defer conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		req := pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest)
		_, _ = conn.Write(req.Raw)
		_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := conn.Read(buf); err == nil && pionstun.IsMessage(buf[:n]) {
			return true
		}
	}
	return false
}

func mustAllow(t testing.TB, s string) []netip.Prefix {
	t.Helper()
	p, err := ParseAllowPeers(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func addrPort(a net.Addr) int {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.Port
	case *net.TCPAddr:
		return a.Port
	}
	panic(fmt.Sprintf("not an IP address: %v", a))
}
