package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	pionstun "github.com/pion/stun/v3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv("PARLEY_LAB_PEER") != "" {
		// A NAT lab peer, run by natlab_test.go in a client's namespace.
		os.Exit(labPeerMain())
	}
	code := m.Run()
	if clusterBinary.dir != "" {
		os.RemoveAll(clusterBinary.dir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  func(string) string
		want string
	}{
		{"dev mode on a public address", []string{"--addr", "0.0.0.0:8080"}, env(), "not a loopback address"},
		{"both JWT keys", []string{"--jwt-secret", "s", "--jwt-public-key", "k.pem"}, env(), "exclusive"},
		{"bad duration flag", []string{"--ping", "soon"}, env(), "--ping soon: not a duration such as 25s"},
		{"bad duration env", nil, env("PARLEY_PING", "soon"), "PARLEY_PING"},
		{"bad bool env", nil, env("PARLEY_ALLOW_ANONYMOUS", "maybe"), "PARLEY_ALLOW_ANONYMOUS"},
		{"bad bool flag", []string{"--allow-anonymous=maybe"}, env(), "--allow-anonymous maybe: not true or false"},
		{"negative history", []string{"--history-size", "0"}, env(), "--history-size 0: must be positive"},
		{"bad addr", []string{"--addr", "8080"}, env(), "--addr"},
		{"bad log level", []string{"--log-level", "loud"}, env(), "--log-level"},
		{"unknown flag", []string{"--nope"}, env(), "unknown flag --nope"},
		{"flag without its value", []string{"--ping"}, env(), "--ping needs a value: a duration such as 25s or 1h"},
		{"stray argument", []string{"extra"}, env(), "unknown command"},
		{"malformed allow-peers CIDR", []string{"--turn-allow-peers", "10.0.0.0/33"}, env(), "--turn-allow-peers"},
		{"bad relay port range", []string{"--turn-ports", "60000-50000"}, env(), "--turn-ports"},
		{"bad public IP", []string{"--turn-public-ip", "relay.example"}, env(), "--turn-public-ip"},
		{"TURNS without a certificate", []string{"--turn-tls-addr", "127.0.0.1:5349"}, env(), "--turn-tls-addr"},
		{"cert without key", []string{"--tls-cert", "c.pem"}, env(), "go together"},
		{"bad STUN address", []string{"--stun-addr", "19302"}, env(), "--stun-addr"},
		{"bad redis URL", nil, env("PARLEY_REDIS", "mysql://127.0.0.1:6379/0"), "--redis"},
		{"zero replay limit", []string{"--replay-limit", "0"}, env(), "--replay-limit 0: must be positive"},
		{"zero node rooms", nil, env("PARLEY_MAX_NODE_ROOMS", "0"), "PARLEY_MAX_NODE_ROOMS=0 (--max-node-rooms): must be positive"},
		{"negative history bytes", []string{"--history-bytes", "-1"}, env(), "--history-bytes -1: must be positive"},
		{"zero room history bytes", []string{"--room-history-bytes", "0"}, env(), "--room-history-bytes 0: must be positive"},
		{"bad presence room pattern", []string{"--presence-rooms", "lobby,chat:*:x*,bad room"}, env(), `--presence-rooms: "bad room"`},
		{"missing public key file", []string{"--jwt-public-key", "/nonexistent.pem", "--admin-addr", "off", "--turn-addr", "off"}, env(), "--jwt-public-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), func() {}, tt.args, tt.env, nil, &out, &out)
			if err == nil || !strings.Contains(err.Error()+out.String(), tt.want) {
				t.Fatalf("got %v (output %q), want an error mentioning %q", err, out.String(), tt.want)
			}
		})
	}
}

// Every bad value is reported at once, and no secret from the environment
// reaches the output.
func TestConfigErrorsAllAtOnceWithoutSecrets(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), func() {}, []string{"--adress", ":1"},
		env("PARLEY_JWT_SECRET", "s3cr3t-jwt", "PARLEY_API_KEY", "s3cr3t-key", "PARLEY_PING", "soon", "PARLEY_DRAIN", "x"), nil, &out, &out)
	if err == nil {
		t.Fatal("got no error")
	}
	all := err.Error() + out.String()
	for _, want := range []string{"PARLEY_PING", "PARLEY_DRAIN", "adress"} {
		if !strings.Contains(all, want) {
			t.Errorf("error %q does not name %s", all, want)
		}
	}
	for _, secret := range []string{"s3cr3t-jwt", "s3cr3t-key"} {
		if strings.Contains(all, secret) {
			t.Errorf("output shows a secret: %q", all)
		}
	}
	out.Reset()
	run(context.Background(), func() {}, []string{"--help"}, env("PARLEY_JWT_SECRET", "s3cr3t-jwt"), nil, &out, &out)
	run(context.Background(), func() {}, []string{"serve", "--help"}, env("PARLEY_JWT_SECRET", "s3cr3t-jwt"), nil, &out, &out)
	if strings.Contains(out.String(), "s3cr3t-jwt") {
		t.Errorf("--help shows the secret")
	}
	if !strings.Contains(out.String(), "parley token") {
		t.Errorf("parley --help does not list the commands:\n%s", out.String())
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), func() {}, []string{"serve", "--help"}, env(), nil, &out, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("got %v, want flag.ErrHelp", err)
	}
	for _, f := range []string{"-addr", "-admin-addr", "-jwt-secret", "-drain", "-history-size", "PARLEY_"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("--help does not mention %s:\n%s", f, out.String())
		}
	}
}

func TestTokenCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	err := run(context.Background(), func() {}, []string{"token", "--user", "alice", "--subscribe", "chat:*", "--ttl", "10m"}, env("PARLEY_JWT_SECRET", "s3cret"), nil, &out, &errOut)
	if err != nil {
		t.Fatalf("token: %v (%s)", err, errOut.String())
	}
	tok := strings.TrimSpace(out.String())
	var claims struct {
		jwt.RegisteredClaims
		Rooms map[string][]string `json:"rooms"`
	}
	if _, err := jwt.ParseWithClaims(tok, &claims, func(*jwt.Token) (any, error) { return []byte("s3cret"), nil }, jwt.WithValidMethods([]string{"HS256"})); err != nil {
		t.Fatalf("minted token does not verify: %v", err)
	}
	if claims.Subject != "alice" || len(claims.Rooms["subscribe"]) != 1 {
		t.Fatalf("got claims %+v, want sub alice and one subscribe pattern", claims)
	}
	if err := run(context.Background(), func() {}, []string{"token", "--user", "bob"}, env(), nil, io.Discard, io.Discard); err == nil {
		t.Fatal("token without a secret succeeded, want an error")
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var listenRE = regexp.MustCompile(`listening on (http://[0-9.:]+)`)

// waitListening polls output for the node's address.
func waitListening(t *testing.T, out *syncBuffer) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if m := listenRE.FindStringSubmatch(out.String()); m != nil {
			return m[1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("node did not report its address; output:\n%s", out.String())
	return ""
}

// TestServeInProcess runs the serve command in this process, checks the
// endpoints answer, then cancels it and expects a clean return.
func TestServeInProcess(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out, logs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func() {}, []string{"--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--turn-addr", "off", "--stun-addr", "127.0.0.1:0", "--drain", "100ms"}, env(), nil, &out, &logs)
	}()
	base := waitListening(t, &out)
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s: got %d, want 200", path, resp.StatusCode)
		}
	}
	m := regexp.MustCompile(`metrics +(http://\S+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no metrics address in output:\n%s", out.String())
	}
	resp, err := http.Get(m[1])
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"parley_connections", "parley_rooms_held", "parley_history_bytes",
		`parley_history_evicted_total{bound="node"}`, `parley_history_evicted_total{bound="room"}`, "parley_rooms_refused_total", "parley_replay_refused_total"} {
		if !strings.Contains(string(body), name) {
			t.Errorf("metrics lack %s", name)
		}
	}
	// The STUN-only listener answers a binding request with the client's
	// address.
	sm := regexp.MustCompile(`STUN +(\S+) \(UDP\)`).FindStringSubmatch(out.String())
	if sm == nil {
		t.Fatalf("no STUN address in output:\n%s", out.String())
	}
	conn, err := net.Dial("udp", sm[1])
	if err != nil {
		t.Fatal(err)
	}
	req := pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest)
	conn.Write(req.Raw)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	conn.Close()
	if err != nil {
		t.Fatalf("STUN binding: %v", err)
	}
	sresp := &pionstun.Message{Raw: buf[:n]}
	var mapped pionstun.XORMappedAddress
	if err := sresp.Decode(); err != nil || mapped.GetFrom(sresp) != nil || mapped.Port != conn.LocalAddr().(*net.UDPAddr).Port {
		t.Errorf("STUN binding answer: got %v (%v), want our mapped address", sresp, err)
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
	http.DefaultClient.CloseIdleConnections()
}

// buildBinary builds the parley command once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "parley")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	return bin
}

// TestDrainOnSIGTERM starts a real parley process with 500 WebSocket clients,
// sends SIGTERM, and checks that every client is told to reconnect and closed
// with 1012, and that the process exits within --drain + 5s.
func TestDrainOnSIGTERM(t *testing.T) {
	const clients = 500
	const drain = 2 * time.Second
	bin := buildBinary(t)
	var out, logs syncBuffer
	cmd := exec.Command(bin, "serve", "--addr", "127.0.0.1:0", "--admin-addr", "off", "--turn-addr", "off", "--drain", drain.String())
	cmd.Stdout, cmd.Stderr = &out, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	base := waitListening(t, &out)
	wsURL := "ws" + strings.TrimPrefix(base, "http") + "/v1/ws"

	type result struct {
		reconnect bool
		afterMS   float64
		status    websocket.StatusCode
		err       error
	}
	conns := make([]*websocket.Conn, clients)
	for i := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{Subprotocols: []string{"parley.v1"}})
		if err != nil {
			cancel()
			t.Fatalf("client %d: %v", i, err)
		}
		if _, b, err := c.Read(ctx); err != nil || !bytes.Contains(b, []byte(`"welcome"`)) {
			cancel()
			t.Fatalf("client %d: no welcome (%v)", i, err)
		}
		cancel()
		conns[i] = c
	}
	results := make(chan result, clients)
	for _, c := range conns {
		go func() {
			defer c.CloseNow()
			var r result
			ctx, cancel := context.WithTimeout(context.Background(), drain+10*time.Second)
			defer cancel()
			for {
				_, b, err := c.Read(ctx)
				if err != nil {
					r.status, r.err = websocket.CloseStatus(err), err
					results <- r
					return
				}
				for line := range bytes.SplitSeq(b, []byte("\n")) {
					var f map[string]any
					if json.Unmarshal(line, &f) == nil && f["type"] == "reconnect" {
						r.reconnect = true
						r.afterMS, _ = f["after_ms"].(float64)
					}
				}
			}
		}()
	}

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("parley exited with %v; logs:\n%s", err, logs.String())
		}
		exited <- err
	case <-time.After(drain + 5*time.Second):
		t.Fatalf("parley still running %s after SIGTERM; logs:\n%s", drain+5*time.Second, logs.String())
	}
	took := time.Since(start)

	var maxAfter float64
	for i := 0; i < clients; i++ {
		r := <-results
		if !r.reconnect {
			t.Errorf("a client got no reconnect frame (closed with %v: %v)", r.status, r.err)
		}
		if r.status != websocket.StatusServiceRestart {
			t.Errorf("a client was closed with %v, want 1012 (%v)", r.status, r.err)
		}
		if r.afterMS < 0 || r.afterMS > float64(drain.Milliseconds()) {
			t.Errorf("after_ms %v outside [0, %d]", r.afterMS, drain.Milliseconds())
		}
		maxAfter = max(maxAfter, r.afterMS)
	}
	if maxAfter < float64(drain.Milliseconds())/4 {
		t.Errorf("reconnect delays all under %vms: they are not spread over the %s window", maxAfter, drain)
	}
	t.Logf("drained %d clients in %s (latest after_ms %.0f)", clients, took.Round(time.Millisecond), maxAfter)
}

// environ lists variables as os.Environ does.
func environ(kv ...string) func() []string {
	return func() []string {
		var out []string
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, kv[i]+"="+kv[i+1])
		}
		return out
	}
}

// A PARLEY_* variable that no flag reads is warned about on stderr, with the
// closest name when it looks like a typo, and without its value.
func TestUnknownEnvWarning(t *testing.T) {
	vars := []string{"PARLEY_JWT_SECRT", "hunter2-secret", "PARLEY_PINGG", "5s", "PARLEY_UNRELATED_THING", "x", "PARLEY_PING", "20s", "HOME", "/root"}

	// A node that starts logs the warning through slog.
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the node starts, then stops at once
	var out, logs bytes.Buffer
	err := run(ctx, func() {}, []string{"--addr", "127.0.0.1:0", "--admin-addr", "off", "--turn-addr", "off", "--drain", "10ms"}, env(vars...), environ(vars...), &out, &logs)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name=PARLEY_JWT_SECRT did_you_mean=PARLEY_JWT_SECRET", "name=PARLEY_PINGG did_you_mean=PARLEY_PING", `name=PARLEY_UNRELATED_THING did_you_mean=""`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
	if strings.Contains(logs.String(), "name=PARLEY_PING ") || strings.Contains(logs.String(), "HOME") || strings.Contains(logs.String(), "hunter2") {
		t.Errorf("logs warn of a known or unrelated variable, or show a value:\n%s", logs.String())
	}

	// A node that cannot start prints it before the errors.
	var errOut bytes.Buffer
	err = run(context.Background(), func() {}, []string{"--ping", "1ms"}, env(vars...), environ(vars...), io.Discard, &errOut)
	if err == nil {
		t.Fatal("got no error for --ping 1ms")
	}
	want := "parley: warning: PARLEY_JWT_SECRT is set but is not a setting of parley serve, and is ignored: did you mean PARLEY_JWT_SECRET?"
	if !strings.Contains(errOut.String(), want) || strings.Contains(errOut.String(), "hunter2") {
		t.Errorf("got\n%s\nwant %q and no value", errOut.String(), want)
	}
}

func TestEditDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{{"", "", 0}, {"PING", "PING", 0}, {"SECRT", "SECRET", 1}, {"PNIG", "PING", 2}, {"abc", "", 3}, {"kitten", "sitting", 3}} {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q): got %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

// Every command's help goes to standard output, so `| less` shows it, and
// the process exits 0.
func TestHelpGoesToStdout(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"}, {"help", "--help"}, {"help", "serve"}, {"help", "token"},
		{"serve", "--help"}, {"--addr", ":1", "-h"}, {"token", "--help"}, {"loadtest", "--help"}, {"loadtest", "-h"},
		{"turn-credentials", "--help"}, {"version", "--help"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), func() {}, args, env("PARLEY_JWT_SECRET", "s3cr3t"), nil, &out, &errOut)
			if out.Len() == 0 || errOut.Len() != 0 {
				t.Errorf("got %d bytes on stdout and %q on stderr, want the help on stdout only", out.Len(), errOut.String())
			}
			if code := exitCode(err, &errOut); code != 0 {
				t.Errorf("got exit status %d (%v), want 0", code, err)
			}
			if strings.Contains(out.String(), "s3cr3t") {
				t.Errorf("help shows the secret")
			}
		})
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		var out bytes.Buffer
		err := run(context.Background(), func() {}, args, env(), nil, &out, io.Discard)
		if err != nil || !strings.HasPrefix(out.String(), "parley ") {
			t.Errorf("%v: got %q (%v), want the version", args, out.String(), err)
		}
	}
}

// The loadtest help names only the variables of loadtest's own flags.
func TestLoadtestHelpNamesItsOwnFlags(t *testing.T) {
	var out bytes.Buffer
	run(context.Background(), func() {}, []string{"loadtest", "--help"}, env(), nil, &out, io.Discard)
	own := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(out.String(), -1) {
		own[envName(m[1])] = true
	}
	if !own["PARLEY_URL"] {
		t.Fatalf("help lists no --url:\n%s", out.String())
	}
	for _, v := range regexp.MustCompile(`PARLEY_[A-Z_]+`).FindAllString(out.String(), -1) {
		if !own[v] {
			t.Errorf("loadtest help names %s, which no loadtest flag reads", v)
		}
	}
	if strings.Contains(out.String(), "jwt-secret") {
		t.Errorf("loadtest help names --jwt-secret:\n%s", out.String())
	}
}

// parley token refuses patterns that can never match a room, and says what
// a room name is.
func TestTokenRefusesBadRoomPatterns(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"space", []string{"--subscribe", "chat:*,bad room"}, `--subscribe: "bad room" is not a room pattern: want a room name, a room name's prefix followed by *, or * alone; a room name is 1 to 128 characters of A-Z a-z 0-9 _ . : @ -`},
		{"inner wildcard", []string{"--publish", "chat:*:x"}, `--publish: "chat:*:x" is not a room pattern`},
		{"too long", []string{"--call", strings.Repeat("a", 129)}, `--call: "aaaa`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), func() {}, append([]string{"token", "--user", "alice"}, tt.args...), env("PARLEY_JWT_SECRET", "s"), nil, &out, &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v (output %q), want an error mentioning %q", err, out.String(), tt.want)
			}
			if out.Len() != 0 {
				t.Errorf("a token was printed: %q", out.String())
			}
		})
	}
	var out bytes.Buffer
	if err := run(context.Background(), func() {}, []string{"token", "--user", "alice", "--subscribe", "*", "--publish", "chat:*,lobby", "--call", "c@1"}, env("PARLEY_JWT_SECRET", "s"), nil, &out, io.Discard); err != nil {
		t.Fatalf("good patterns refused: %v", err)
	}
}

// Each error starts its own `parley:` line; only the pointer to --help
// follows them.
func TestErrorsEachOnTheirLine(t *testing.T) {
	err := run(context.Background(), func() {}, []string{"--ping", "1ms", "--queue-limit", "10"}, env("PARLEY_MAX_NODE_ROOMS", "0"), nil, io.Discard, io.Discard)
	var out bytes.Buffer
	if code := exitCode(err, &out); code != 2 {
		t.Errorf("got exit status %d, want 2", code)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines, want 3 errors and the pointer to --help:\n%s", len(lines), out.String())
	}
	for _, l := range lines[:3] {
		if !strings.HasPrefix(l, "parley: ") {
			t.Errorf("line %q does not start with parley:", l)
		}
	}
	if want := "(run 'parley serve --help' for the flags)"; lines[3] != want {
		t.Errorf("got last line %q, want %q", lines[3], want)
	}
}
