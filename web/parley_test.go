package web_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// builtParley is the parley binary that the tests which need a whole node
// (TURN, Redis, the admin listener, a process to kill) run, built once.
var builtParley struct {
	once sync.Once
	path string
	err  error
}

// parleyBinary builds cmd/parley once per test run, into a directory that
// TestMain removes.
func parleyBinary(t *testing.T) string {
	t.Helper()
	builtParley.once.Do(func() {
		dir, err := os.MkdirTemp("", "parley-web-test")
		if err != nil {
			builtParley.err = err
			return
		}
		binDirs = append(binDirs, dir)
		builtParley.path = filepath.Join(dir, "parley")
		out, err := exec.Command("go", "build", "-o", builtParley.path, "../cmd/parley").CombinedOutput()
		if err != nil {
			builtParley.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if builtParley.err != nil {
		t.Fatal(builtParley.err)
	}
	return builtParley.path
}

// binDirs are the directories of built binaries, removed by TestMain.
var binDirs []string

// parleyProc is one `parley serve` process on 127.0.0.1.
type parleyProc struct {
	name  string
	base  string // http://127.0.0.1:port, or https:// with --tls-cert
	admin string // http://127.0.0.1:port, or "" with --admin-addr off
	turn  string // 127.0.0.1:port of STUN and TURN over UDP and TCP, or ""
	cmd   *exec.Cmd
	done  chan struct{}
	out   *lockedBuffer
	// client trusts the node's certificate, with --tls-cert.
	client *http.Client
}

var (
	listeningRE = regexp.MustCompile(`listening on (https?://[0-9.:]+)`)
	adminRE     = regexp.MustCompile(`admin=([0-9.:]+)`)
	turnRE      = regexp.MustCompile(`msg="turn server started".* udp=([0-9.:]+)`)
)

// startParley starts `parley serve` with its listeners on free loopback
// ports (the admin listener and STUN/TURN too, unless args turn them off)
// and args after the defaults, and waits until it answers /readyz. With
// --tls-cert in args the node serves HTTPS, and readiness is checked
// trusting that certificate. The process is stopped with SIGTERM at the end
// of the test; its output is logged when the test failed.
func startParley(t *testing.T, name string, args ...string) *parleyProc {
	t.Helper()
	all := append([]string{"serve", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--turn-addr", "127.0.0.1:0", "--node-id", name, "--drain", "1s"}, args...)
	p := &parleyProc{name: name, out: &lockedBuffer{}, done: make(chan struct{}), client: &http.Client{Timeout: 5 * time.Second}}
	if i := slices.Index(args, "--tls-cert"); i >= 0 && i+1 < len(args) {
		pemBytes, err := os.ReadFile(args[i+1])
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(pemBytes)
		p.client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	}
	t.Cleanup(p.client.CloseIdleConnections)
	p.cmd = exec.Command(parleyBinary(t), all...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("parley %s output:\n%s", name, p.out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := p.out.String()
		if m := listeningRE.FindStringSubmatch(s); m != nil {
			p.base = m[1]
			if m := adminRE.FindStringSubmatch(s); m != nil {
				p.admin = "http://" + m[1]
			}
			if m := turnRE.FindStringSubmatch(s); m != nil {
				p.turn = m[1]
			}
			break
		}
		select {
		case <-p.done:
			t.Fatalf("parley %s exited at start:\n%s", name, s)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("parley %s did not report its address:\n%s", name, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for !p.ready() {
		if time.Now().After(deadline) {
			t.Fatalf("parley %s not ready within 20s:\n%s", name, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// ready reports whether /readyz answers 200.
func (p *parleyProc) ready() bool {
	resp, err := p.client.Get(p.base + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// kill ends the process with SIGKILL, as a crash would.
func (p *parleyProc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// stop sends SIGTERM and waits for the drain, killing the process if it
// takes longer than 10 s.
func (p *parleyProc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
	}
}

// ws is the node's WebSocket URL.
func (p *parleyProc) ws() string { return "ws" + strings.TrimPrefix(p.base, "http") + "/v1/ws" }

// lockedBuffer is an output buffer that a process writes while a test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestStartParley checks the helper the whole-node tests stand on: the
// node's listeners are found, and it answers on each.
func TestStartParley(t *testing.T) {
	p := startParley(t, "helper")
	if p.admin == "" || p.turn == "" {
		t.Fatalf("admin %q, turn %q: want both", p.admin, p.turn)
	}
	resp, err := http.Get(p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
}

// screenshotDir is where a test writes its screenshots: under
// $PARLEY_SCREENSHOTS (make test sets test-output/screenshots), in a
// directory named after the test, or else the test's artifact directory.
func screenshotDir(t *testing.T) string {
	t.Helper()
	root := os.Getenv("PARLEY_SCREENSHOTS")
	if root == "" {
		return t.ArtifactDir()
	}
	dir := filepath.Join(root, strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
