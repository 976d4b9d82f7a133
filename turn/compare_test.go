package turn

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pionstun "github.com/pion/stun/v3"
)

var compareFlag = flag.Bool("turn.compare", false, "run TestCompareCoturn, the benchmark of this TURN server against coturn (about two minutes; needs coturn)")

var compareCases = flag.String("turn.compare.cases", "alloc,heavy,light", "the cases of TestCompareCoturn to run: alloc, heavy (relay with messages in flight), light (turnutils_uclient at one message per ms per allocation)")

const benchSecret = "bench-secret"

// TestCompareCoturn measures this server and coturn on the same machine in
// the same run, each in its own process, with the same load from this
// process: allocations per second, and relayed throughput of 100-byte
// messages sent as ChannelData to an echo peer (coturn's turnutils_peer)
// with a fixed number of messages in flight. Server CPU comes from
// /proc/PID/stat. A third case, light flows, has coturn's turnutils_uclient
// send one message per millisecond on each of 20 allocations (benchLight).
// It prints a table for docs/TURN.md. Run it with
//
//	go test ./turn -run TestCompareCoturn -turn.compare -v
func TestCompareCoturn(t *testing.T) {
	if !*compareFlag {
		t.Skip("benchmark; run with -turn.compare")
	}
	coturn := coturnBinary(t, "turnserver")
	peerBin := coturnBinary(t, "turnutils_peer")
	peerPort := startEchoPeer(t, peerBin)

	ours := startOurProcess(t)
	theirs := &benchServer{name: "coturn"}
	theirs.addr = startCoturn(t, coturn, benchSecret, 55000, 5000, "--allow-loopback-peers", "--no-tcp", "--no-tcp-relay",
		"--log-file=/dev/null", "--user-quota=0", "--total-quota=0")
	theirs.pid = pidListening(t, theirs.addr.Port)

	cases := strings.Split(*compareCases, ",")
	type row struct{ name, ours, coturn string }
	var rows []row
	if slices.Contains(cases, "alloc") {
		for _, s := range []*benchServer{ours, theirs} {
			s.allocRate, s.allocCPU, s.allocFailed = benchAllocations(t, s, 3000, 32)
		}
		if ours.allocFailed > 0 {
			t.Errorf("%d of our allocations failed", ours.allocFailed)
		}
		rows = append(rows, row{"allocations/s (UDP, 3000 allocate + delete, 32 at a time)",
			fmt.Sprintf("%.0f/s, %.0f µs server CPU each, %d failed", ours.allocRate, ours.allocCPU, ours.allocFailed),
			fmt.Sprintf("%.0f/s, %.0f µs server CPU each, %d failed", theirs.allocRate, theirs.allocCPU, theirs.allocFailed)})
	}
	if slices.Contains(cases, "heavy") {
		for _, load := range []struct{ allocations, window int }{{4, 8}, {16, 32}} {
			var cells [2]string
			for i, s := range []*benchServer{ours, theirs} {
				cells[i] = benchRelay(t, s, peerPort, load.allocations, load.window, 5*time.Second).String()
			}
			rows = append(rows, row{fmt.Sprintf("relay, %d allocations × %d messages in flight, 5 s", load.allocations, load.window), cells[0], cells[1]})
		}
	}
	if slices.Contains(cases, "light") {
		uclient := coturnBinary(t, "turnutils_uclient")
		var cells [2]string
		for i, s := range []*benchServer{ours, theirs} {
			cells[i] = benchLight(t, s, uclient, peerPort).String()
		}
		rows = append(rows, row{"light flows: turnutils_uclient, 20 allocations × 1 message of 100 bytes per ms, 10,000 each", cells[0], cells[1]})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| measure | parley turn | coturn |\n|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", r.name, r.ours, r.coturn)
	}
	t.Log(b.String())
}

type benchServer struct {
	name        string
	addr        *net.UDPAddr
	pid         int
	allocRate   float64
	allocCPU    float64
	allocFailed int64
}

// cpu returns the process's user+system CPU time.
func (s *benchServer) cpu(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// TestBenchServerProcess is the child process of TestCompareCoturn that
// runs our server; it does nothing in a normal run. With
// PARLEY_TURN_BENCH_CPUPROFILE=file it writes a CPU profile of our server;
// with PARLEY_TURN_BENCH_NOFAST=1 it relays through pion's own path only.
func TestBenchServerProcess(t *testing.T) {
	if os.Getenv("PARLEY_TURN_BENCH_CHILD") != "1" {
		t.Skip("helper process of TestCompareCoturn")
	}
	udp, tcp, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	allow, _ := ParseAllowPeers("127.0.0.0/8")
	s, err := NewServer(Config{
		Secret: benchSecret, UDPConns: udp, TCPListener: tcp,
		RelayPortMin: 50000, RelayPortMax: 54999, AllowPeers: allow,
		UserQuota: 100000, MaxAllocations: 100000,
		// All the load comes from 127.0.0.1: lift the per-source limit.
		SourceRate: 1e6, SourceBurst: 1e6,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.fast.disabled = os.Getenv("PARLEY_TURN_BENCH_NOFAST") == "1"
	if path := os.Getenv("PARLEY_TURN_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Printf("READY %s\n", s.UDPAddr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := s.Close(); err != nil {
		t.Error(err)
	}
}

func startOurProcess(t *testing.T) *benchServer {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBenchServerProcess$")
	cmd.Env = append(os.Environ(), "PARLEY_TURN_BENCH_CHILD=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
			ua, err := net.ResolveUDPAddr("udp4", addr)
			if err != nil {
				t.Fatal(err)
			}
			go func() { _, _ = io.Copy(io.Discard, stdout) }()
			return &benchServer{name: "parley", addr: ua, pid: cmd.Process.Pid}
		}
	}
	t.Fatal("our server process did not start")
	return nil
}

// pidListening finds the process listening on a UDP port of 127.0.0.1.
func pidListening(t *testing.T, port int) int {
	t.Helper()
	out, err := exec.Command("ss", "-Hulnp", fmt.Sprintf("sport = :%d", port)).Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	m := regexp.MustCompile(`pid=(\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no process on udp port %d: %s", port, out)
	}
	pid, _ := strconv.Atoi(string(m[1]))
	return pid
}

// startEchoPeer runs turnutils_peer on a random port of 127.0.0.1.
func startEchoPeer(t *testing.T, bin string) int {
	t.Helper()
	for range 5 {
		port := 30000 + rand.IntN(10000) //nolint:gosec
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, bin, "-L", "127.0.0.1", "-p", strconv.Itoa(port))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		exited := make(chan struct{})
		var waitErr error
		go func() {
			waitErr = cmd.Wait()
			close(exited)
		}()
		stop := func() {
			cancel()
			<-exited
		}
		if echoes(port, exited) {
			t.Cleanup(stop)
			return port
		}
		stop()
		t.Logf("turnutils_peer on port %d: %v %s", port, waitErr, out.String())
	}
	t.Fatal("turnutils_peer did not start")
	return 0
}

func echoes(port int, exited <-chan struct{}) bool {
	conn, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		return false
	}
	defer conn.Close()
	buf := make([]byte, 64)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		case <-time.After(10 * time.Millisecond):
		}
		_, _ = conn.Write([]byte(strings.Repeat("ping", 10)))
		_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := conn.Read(buf); err == nil && string(buf[:n]) == strings.Repeat("ping", 10) {
			return true
		}
	}
	return false
}

// benchAllocations makes total allocations (each deleted right after) with
// the given concurrency and returns successful allocations per second, the
// server's CPU time per allocation in µs and the number that failed (no
// answer within 3 s, or an error).
func benchAllocations(t *testing.T, s *benchServer, total, workers int) (rate, cpuMicros float64, failed int64) {
	t.Helper()
	var next, fails atomic.Int64
	cpu0 := s.cpu(t)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(total); i = next.Add(1) {
				if err := allocateOnce(s.addr, fmt.Sprintf("u%d-%d", w, i)); err != nil {
					fails.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := s.cpu(t) - cpu0
	failed = fails.Load()
	ok := float64(int64(total) - failed)
	return ok / elapsed.Seconds(), float64(cpu.Microseconds()) / ok, failed
}

// allocateOnce allocates over a fresh socket, with the 401 round trip, and
// deletes the allocation.
func allocateOnce(server *net.UDPAddr, user string) error {
	conn, err := net.DialUDP("udp4", nil, server)
	if err != nil {
		return err
	}
	defer conn.Close()
	username, pass := Credentials(benchSecret, user, time.Hour, time.Now())
	rt := func(setters ...pionstun.Setter) (*pionstun.Message, error) { return benchRoundTrip(conn, setters...) }
	allocType := pionstun.NewType(pionstun.MethodAllocate, pionstun.ClassRequest)
	resp, err := rt(allocType, transportUDPAttr)
	if err != nil {
		return err
	}
	var realm pionstun.Realm
	var nonce pionstun.Nonce
	if err := realm.GetFrom(resp); err != nil {
		return err
	}
	if err := nonce.GetFrom(resp); err != nil {
		return err
	}
	auth := []pionstun.Setter{pionstun.NewUsername(username), realm, nonce,
		pionstun.NewLongTermIntegrity(username, realm.String(), pass), pionstun.Fingerprint}
	resp, err = rt(append([]pionstun.Setter{allocType, transportUDPAttr}, auth...)...)
	if err != nil {
		return err
	}
	if resp.Type.Class != pionstun.ClassSuccessResponse {
		return fmt.Errorf("allocate: %v", resp.Type)
	}
	resp, err = rt(append([]pionstun.Setter{pionstun.NewType(pionstun.MethodRefresh, pionstun.ClassRequest), lifetimeAttr(0)}, auth...)...)
	if err != nil {
		return err
	}
	if resp.Type.Class != pionstun.ClassSuccessResponse {
		return fmt.Errorf("refresh: %v", resp.Type)
	}
	return nil
}

type relayResult struct {
	sent, received int64
	seconds        float64
	cpu            time.Duration
	bytes          int
}

func (r relayResult) String() string {
	lost := 100 * float64(r.sent-r.received) / float64(r.sent)
	pps := float64(r.received) / r.seconds
	mbit := float64(r.received*int64(r.bytes)*8) / r.seconds / 1e6
	perDatagram := float64(r.cpu.Microseconds()) / float64(r.sent+r.received)
	return fmt.Sprintf("%.1f k msg/s echoed = %.1f k datagrams/s relayed, %.1f Mbit/s each way, %.2f %% lost, %.1f µs server CPU per relayed datagram",
		pps/1000, 2*pps/1000, mbit, lost, perDatagram)
}

// benchRelay allocates on s, binds a channel to the echo peer on each
// allocation, and for d keeps window 100-byte messages in flight per
// allocation: each echo that comes back lets the next message go (a lost
// one is replaced after 50 ms). It returns what went through.
func benchRelay(t *testing.T, s *benchServer, peerPort, allocations, window int, d time.Duration) relayResult {
	t.Helper()
	peer := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: peerPort}
	conns := make([]*net.UDPConn, allocations)
	for i := range conns {
		c, err := channelTo(s.addr, peer, fmt.Sprintf("blast%d", i))
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		defer c.Close()
		conns[i] = c
	}
	var sent, received atomic.Int64
	cpu0 := s.cpu(t)
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, 104)
			msg[0], msg[1], msg[2], msg[3] = 0x40, 0x00, 0, 100 // channel 0x4000, 100 bytes
			burst := func(n int) {
				for range n {
					if _, err := c.Write(msg); err == nil {
						sent.Add(1)
					}
				}
			}
			burst(window)
			buf := make([]byte, 1500)
			for time.Now().Before(end) {
				_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				if _, err := c.Read(buf); err != nil {
					burst(window)
					continue
				}
				received.Add(1)
				burst(1)
			}
		}()
	}
	wg.Wait()
	r := relayResult{
		sent: sent.Load(), received: received.Load(), seconds: time.Since(start).Seconds(),
		cpu: s.cpu(t) - cpu0, bytes: 100,
	}
	t.Logf("%s, %d allocations × %d in flight: %s", s.name, allocations, window, r)
	return r
}

// channelTo allocates on server over a fresh socket and binds channel
// 0x4000 to peer.
func channelTo(server, peer *net.UDPAddr, user string) (*net.UDPConn, error) {
	username, pass := Credentials(benchSecret, user, time.Hour, time.Now())
	return channelToWith(server, peer, username, pass)
}

func channelToWith(server, peer *net.UDPAddr, username, pass string) (*net.UDPConn, error) {
	conn, err := net.DialUDP("udp4", nil, server)
	if err != nil {
		return nil, err
	}
	rt := func(setters ...pionstun.Setter) (*pionstun.Message, error) { return benchRoundTrip(conn, setters...) }
	allocType := pionstun.NewType(pionstun.MethodAllocate, pionstun.ClassRequest)
	resp, err := rt(allocType, transportUDPAttr)
	if err != nil {
		conn.Close()
		return nil, err
	}
	var realm pionstun.Realm
	var nonce pionstun.Nonce
	_ = realm.GetFrom(resp)
	_ = nonce.GetFrom(resp)
	auth := []pionstun.Setter{pionstun.NewUsername(username), realm, nonce,
		pionstun.NewLongTermIntegrity(username, realm.String(), pass), pionstun.Fingerprint}
	for _, req := range [][]pionstun.Setter{
		{allocType, transportUDPAttr},
		{pionstun.NewType(pionstun.MethodChannelBind, pionstun.ClassRequest), channelAttr(0x4000), peerAttr(peer.IP, peer.Port)},
	} {
		resp, err := rt(append(req, auth...)...)
		if err == nil && resp.Type.Class != pionstun.ClassSuccessResponse {
			err = fmt.Errorf("%v", resp.Type)
		}
		if err != nil {
			conn.Close()
			return nil, err
		}
	}
	_ = conn.SetReadDeadline(time.Time{})
	return conn, nil
}

// benchRoundTrip sends one STUN request built from setters on conn and reads
// and decodes the answer, waiting at most 3 s.
func benchRoundTrip(conn net.Conn, setters ...pionstun.Setter) (*pionstun.Message, error) {
	req, err := pionstun.Build(append([]pionstun.Setter{pionstun.TransactionID}, setters...)...)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(req.Raw); err != nil {
		return nil, err
	}
	buf := make([]byte, 1500)
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		return nil, err
	}
	m := &pionstun.Message{Raw: buf[:n]}
	return m, m.Decode()
}

// benchLight is the light load: coturn's turnutils_uclient with 20
// allocations over UDP, each binding a channel to the echo peer and sending
// one 100-byte message per millisecond, 10,000 in all, as ChannelData
// (about 10 s). Server CPU is counted over the whole uclient run, its 20
// allocations and channel binds included; the datagrams relayed are those
// uclient sent and got back, as it reports them.
func benchLight(t *testing.T, s *benchServer, uclient string, peerPort int) relayResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, uclient, "-W", benchSecret, "-u", "bench", "-c",
		"-m", "20", "-n", "10000", "-z", "1", "-l", "100",
		"-e", "127.0.0.1", "-r", strconv.Itoa(peerPort), "-p", strconv.Itoa(s.addr.Port), "127.0.0.1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cpu0 := s.cpu(t)
	start := time.Now()
	err := cmd.Run()
	r := relayResult{seconds: time.Since(start).Seconds(), cpu: s.cpu(t) - cpu0, bytes: 100}
	m := totalsRe.FindStringSubmatch(out.String())
	if err != nil || m == nil {
		t.Fatalf("%s: uclient: %v\n%s", s.name, err, out.String())
	}
	r.sent, _ = strconv.ParseInt(m[1], 10, 64)
	r.received, _ = strconv.ParseInt(m[2], 10, 64)
	t.Logf("%s, light flows: %s", s.name, r)
	return r
}
