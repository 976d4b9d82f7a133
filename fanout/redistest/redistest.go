// Package redistest runs real redis-server processes for tests. Each listens
// on a Unix socket in the test's temporary directory, so no port is raced
// for, and can be killed and started again on the same socket: empty, or,
// for a server started with StartPersistent, with the data it had.
//
// StartCluster runs a Redis Cluster of such servers (each also on a TCP port
// of 127.0.0.1, which cluster nodes need), made with `redis-cli --cluster
// create`, with replicas that can take over from a killed master.
//
// redis-server comes from Debian's redis-server package (redis-cli with it),
// which `make test` installs when it is missing. Without it a test is skipped, or fails when CI
// is "true".
package redistest

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Server is one redis-server process owned by a test.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	sock string
	args []string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Start starts a redis-server with the extra args (such as "--maxmemory",
// "10mb") and stops it when the test ends.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		missing(t, "redis-server is missing; `make test` installs it (Debian's redis-server package)")
	}
	// Unix socket paths are short (108 bytes): t.TempDir's can be longer.
	dir, err := os.MkdirTemp("", "redistest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{t: t, bin: bin, dir: dir, sock: filepath.Join(dir, "redis.sock"), args: args}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// missing skips the test for a tool that is not installed, or fails it
// when CI is "true".
func missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// StartPersistent is Start for a server that writes every change to its
// append-only file before answering, so that RestartKeepingData finds all
// that it acknowledged, even after Kill.
func StartPersistent(t testing.TB, args ...string) *Server {
	t.Helper()
	return Start(t, append([]string{"--appendonly", "yes", "--appendfsync", "always"}, args...)...)
}

// URL returns the server's address as a Redis URL (unix://path), the form
// `parley serve --redis` and go-redis's ParseURL take.
func (s *Server) URL() string { return "unix://" + s.sock }

func (s *Server) start() {
	s.t.Helper()
	args := append([]string{
		"--port", "0",
		"--unixsocket", s.sock,
		"--unixsocketperm", "700",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}, s.args...)
	cmd := exec.Command(s.bin, args...)
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server: %v", err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	done := s.done
	go func() {
		cmd.Wait()
		close(done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !s.ping() {
		select {
		case <-done:
			s.t.Fatalf("redis-server exited at start: %s", s.log())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server did not answer within 10s: %s", s.log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ping reports whether the server answers PING on its socket.
func (s *Server) ping() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", s.sock)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && line == "+PONG\r\n"
}

func (s *Server) log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	return string(b)
}

// Kill ends the server with SIGKILL, as a crash would, and waits for it.
func (s *Server) Kill() {
	s.t.Helper()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
	s.cmd = nil
	os.Remove(s.sock)
}

// Restart starts the server again on the same socket, empty; it kills the
// running one first, if any.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	for _, name := range []string{"appendonlydir", "dump.rdb"} {
		if err := os.RemoveAll(filepath.Join(s.dir, name)); err != nil {
			s.t.Fatalf("emptying the data of redis-server: %v", err)
		}
	}
	s.start()
}

// RestartKeepingData starts the server again on the same socket with the
// data it had (all of it for a server from StartPersistent); it kills the
// running one first, if any.
func (s *Server) RestartKeepingData() {
	s.t.Helper()
	s.Kill()
	s.start()
}

// Freeze stops the server with SIGSTOP: its connections stay open and
// nothing answers, as on a host that hangs or a network that drops
// everything. Thaw undoes it; Stop and Kill end a frozen server too.
func (s *Server) Freeze() {
	s.t.Helper()
	if s.cmd != nil {
		s.cmd.Process.Signal(syscall.SIGSTOP)
	}
}

// Thaw resumes a server that Freeze stopped.
func (s *Server) Thaw() {
	s.t.Helper()
	if s.cmd != nil {
		s.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// Stop ends the server, if it runs.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	s.cmd.Process.Signal(syscall.SIGCONT)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.done
	}
	s.cmd = nil
}
