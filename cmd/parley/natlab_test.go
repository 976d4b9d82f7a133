package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/parley-rt/parley/gateway"
)

// The NAT lab: two clients, each behind its own NAT router, call each other
// through a gateway on a "public" segment, all in network namespaces that
// the test makes and removes. Nothing in the lab is connected to the host's
// namespace or to any real network:
//
//	                 pub (203.0.113.0/24, TEST-NET-3, on bridge br0)
//	   gateway 203.0.113.1 (WSS and TURNS on 443, STUN/TURN on 3478)
//	   gateway 203.0.113.2 (no TURN: STUN only, the negative control)
//	        |                                   |
//	  r1 wan 203.0.113.11                 r2 wan 203.0.113.12
//	  r1 lan 10.0.1.1  (NAT)              r2 lan 10.0.2.1  (NAT)
//	        |                                   |
//	  c1 10.0.1.2                         c2 10.0.2.2
//
// Each router's behaviour is set per case with iptables (natRules), and its
// connection tracking is emptied between cases, so that no mapping outlives
// its case. The peers are this test binary run again in c1 and c2 (see
// natlab_peer_test.go).

// natMode is a router's behaviour.
type natMode string

const (
	// natCone maps endpoint-independently and filters nothing: a full cone
	// (the source port is kept, and any host may send to a mapping).
	natCone natMode = "cone"
	// natRestricted maps endpoint-independently and filters by address and
	// port: only a host:port the client sent to may answer (Linux
	// MASQUERADE, as most home routers).
	natRestricted natMode = "restricted"
	// natSymmetric maps each destination to a new random port
	// (MASQUERADE --random-fully): the STUN server sees another port than
	// the peer would.
	natSymmetric natMode = "symmetric"
	// natNoUDP lets only TCP out.
	natNoUDP natMode = "udp-blocked"
	// natOnly443 lets only TCP to port 443 out: the corporate firewall.
	natOnly443 natMode = "tcp-443-only"
)

// natRules are the iptables commands (arguments of iptables) that give a
// router mode m; wan and lan name its interfaces, pub its public address and
// client its client's address.
func natRules(m natMode, pub, client string) [][]string {
	return append([][]string{routerFirewall}, natModeRules(m, pub, client)...)
}

// routerFirewall is every router's own firewall: what reaches the router
// itself from outside, unasked, is dropped, as home routers do. Without it
// the kernel answers with an ICMP error, and the conntrack entry the packet
// leaves behind takes the very mapping that the client's answer to the same
// peer would get: the router's MASQUERADE then picks another port, a
// restricted NAT behaves as a symmetric one for that peer, and hole
// punching fails. (A dropped packet's entry is never confirmed.)
var routerFirewall = []string{"-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP"}

func natModeRules(m natMode, pub, client string) [][]string {
	masq := []string{"-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"}
	switch m {
	case natCone:
		return [][]string{
			{"-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "SNAT", "--to-source", pub},
			// Whatever reaches the public address over UDP goes to the
			// client, on the port it came to: endpoint-independent
			// filtering.
			{"-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "udp", "-j", "DNAT", "--to-destination", client},
		}
	case natRestricted:
		return [][]string{masq}
	case natSymmetric:
		return [][]string{{"-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE", "--random-fully"}}
	case natNoUDP:
		return [][]string{masq,
			{"-A", "FORWARD", "-i", "lan", "-p", "udp", "-j", "DROP"},
		}
	case natOnly443:
		return [][]string{masq,
			{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
			{"-A", "FORWARD", "-i", "lan", "-p", "tcp", "--dport", "443", "-j", "ACCEPT"},
			{"-A", "FORWARD", "-i", "lan", "-j", "DROP"},
		}
	}
	panic("unknown NAT mode " + string(m))
}

// natLab is a lab made by startNATLab; its namespaces are removed when the
// test ends.
type natLab struct {
	t      *testing.T
	ns     map[string]string // role (pub, r1, c1, r2, c2) -> namespace name
	bin    string            // the parley binary
	dir    string
	caFile string // the gateway certificate's authority, for SSL_CERT_FILE
	secret string // the gateways' JWT secret
}

// The lab's gateways' public addresses. labCloud is the public address of
// a gateway in a cloud network: it listens on 0.0.0.0 in a private range,
// behind a 1:1 NAT, with --turn-public-ip, as docs/TURN.md says to deploy
// on a cloud VM.
const (
	labGateway = "203.0.113.1"
	labNoTURN  = "203.0.113.2"
	labCloud   = "203.0.113.3"
	// labCloudPrivate is the cloud gateway's own address.
	labCloudPrivate = "172.16.0.3"
)

// labRoles are the lab's namespaces: the public segment, the two routers
// and their clients, the cloud's NAT (edge) and the cloud gateway's host.
var labRoles = []string{"pub", "r1", "c1", "r2", "c2", "edge", "cloud"}

// requireNATLab skips the test where the lab cannot run (not Linux, not
// root, no ip or iptables), except under CI=true, where it fails.
func requireNATLab(t *testing.T) {
	t.Helper()
	var missing []string
	if runtime.GOOS != "linux" {
		missing = append(missing, "Linux")
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range []string{"ip", "iptables", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "the NAT lab needs " + strings.Join(missing, ", ") + " (make deps installs the tools; the lab runs as root on Linux)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// sweepNATLabs removes the labs of test processes that are gone: a run
// killed, or ended by go test's -timeout, runs no cleanup. Its processes
// died with it (labProcAttr); its namespaces stay until this sweep.
func sweepNATLabs(t *testing.T) {
	t.Helper()
	list, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	for line := range strings.Lines(string(list)) {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, "plab")
		if !ok {
			continue
		}
		pidText, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			continue // its run is still going
		}
		pids, _ := exec.Command("ip", "netns", "pids", name).Output()
		for f := range strings.FieldsSeq(string(pids)) {
			if p, err := strconv.Atoi(f); err == nil {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Logf("removing the stale lab namespace %s: %v %s", name, err, out)
		} else {
			t.Logf("removed the stale lab namespace %s", name)
		}
	}
}

// run runs a command and fails the test if it fails.
func (l *natLab) run(args ...string) {
	l.t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// in runs a command inside the namespace of role.
func (l *natLab) in(role string, args ...string) {
	l.t.Helper()
	l.run(append([]string{"ip", "netns", "exec", l.ns[role]}, args...)...)
}

// startNATLab builds the lab and starts its two gateways.
func startNATLab(t *testing.T) *natLab {
	t.Helper()
	requireNATLab(t)
	l := &natLab{t: t, ns: make(map[string]string), bin: parleyBinary(t), dir: t.TempDir(), secret: "natlab-" + randSuffix()}
	sweepNATLabs(t)
	// Names unique to this process: another run's lab is never touched,
	// and one left over by a run that was killed is swept by the next.
	prefix := fmt.Sprintf("plab%d-", os.Getpid())
	for _, role := range labRoles {
		l.ns[role] = prefix + role
	}
	t.Cleanup(func() {
		for _, ns := range l.ns {
			exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	for _, role := range labRoles {
		l.run("ip", "netns", "add", l.ns[role])
		l.run("ip", "-n", l.ns[role], "link", "set", "lo", "up")
		// IPv4 only: no IPv6 link-local candidates to wait on.
		l.in(role, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	pub := l.ns["pub"]
	l.run("ip", "-n", pub, "link", "add", "br0", "type", "bridge")
	l.run("ip", "-n", pub, "addr", "add", labGateway+"/24", "dev", "br0")
	l.run("ip", "-n", pub, "addr", "add", labNoTURN+"/24", "dev", "br0")
	l.run("ip", "-n", pub, "link", "set", "br0", "up")
	for i := 1; i <= 2; i++ {
		r, c := l.ns[fmt.Sprintf("r%d", i)], l.ns[fmt.Sprintf("c%d", i)]
		port := fmt.Sprintf("p%d", i)
		l.run("ip", "link", "add", "name", "wan", "netns", r, "type", "veth", "peer", "name", port, "netns", pub)
		l.run("ip", "-n", pub, "link", "set", port, "master", "br0")
		l.run("ip", "-n", pub, "link", "set", port, "up")
		l.run("ip", "-n", r, "addr", "add", fmt.Sprintf("203.0.113.1%d/24", i), "dev", "wan")
		l.run("ip", "-n", r, "link", "set", "wan", "up")
		l.run("ip", "link", "add", "name", "lan", "netns", r, "type", "veth", "peer", "name", "eth0", "netns", c)
		l.run("ip", "-n", r, "addr", "add", fmt.Sprintf("10.0.%d.1/24", i), "dev", "lan")
		l.run("ip", "-n", r, "link", "set", "lan", "up")
		l.run("ip", "-n", c, "addr", "add", fmt.Sprintf("10.0.%d.2/24", i), "dev", "eth0")
		l.run("ip", "-n", c, "link", "set", "eth0", "up")
		l.run("ip", "-n", c, "route", "add", "default", "via", fmt.Sprintf("10.0.%d.1", i))
		l.in(fmt.Sprintf("r%d", i), "sysctl", "-qw", "net.ipv4.ip_forward=1")
	}

	// The cloud: the gateway's host has only a private address; the edge
	// maps the public one to it, both ways, port for port (1:1 NAT).
	edge, cloud := l.ns["edge"], l.ns["cloud"]
	l.run("ip", "link", "add", "name", "wan", "netns", edge, "type", "veth", "peer", "name", "p3", "netns", pub)
	l.run("ip", "-n", pub, "link", "set", "p3", "master", "br0")
	l.run("ip", "-n", pub, "link", "set", "p3", "up")
	l.run("ip", "-n", edge, "addr", "add", labCloud+"/24", "dev", "wan")
	l.run("ip", "-n", edge, "link", "set", "wan", "up")
	l.run("ip", "link", "add", "name", "lan", "netns", edge, "type", "veth", "peer", "name", "eth0", "netns", cloud)
	l.run("ip", "-n", edge, "addr", "add", "172.16.0.1/24", "dev", "lan")
	l.run("ip", "-n", edge, "link", "set", "lan", "up")
	l.run("ip", "-n", cloud, "addr", "add", labCloudPrivate+"/24", "dev", "eth0")
	l.run("ip", "-n", cloud, "link", "set", "eth0", "up")
	l.run("ip", "-n", cloud, "route", "add", "default", "via", "172.16.0.1")
	l.in("edge", "sysctl", "-qw", "net.ipv4.ip_forward=1")
	l.in("edge", "iptables", "-t", "nat", "-A", "PREROUTING", "-i", "wan", "-d", labCloud, "-j", "DNAT", "--to-destination", labCloudPrivate)
	l.in("edge", "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-s", labCloudPrivate, "-j", "SNAT", "--to-source", labCloud)

	// One certificate for the gateways' addresses, its own authority: the
	// peers trust it through SSL_CERT_FILE.
	certFile, keyFile, _ := writeCertFor(t, l.dir, labGateway, labNoTURN, labCloud)
	l.caFile = certFile
	common := []string{"serve", "--admin-addr", "off", "--jwt-secret", l.secret,
		"--tls-cert", certFile, "--tls-key", keyFile, "--log-level", "debug"}
	l.startGateway("pub", "gateway", append(common,
		"--addr", labGateway+":443",
		"--turn-addr", labGateway+":3478",
		"--turn-tls-addr", labGateway+":443",
		"--turn-ports", "50000-50999",
		// The lab's public segment is TEST-NET-3, which the relay refuses
		// as a peer unless told.
		"--turn-allow-peers", "203.0.113.0/24"))
	l.startGateway("cloud", "cloud gateway", append(common,
		"--addr", "0.0.0.0:443",
		"--turn-addr", "0.0.0.0:3478",
		"--turn-tls-addr", "0.0.0.0:443",
		"--turn-public-ip", labCloud,
		"--turn-ports", "50000-50999",
		"--turn-allow-peers", "203.0.113.0/24"))
	l.startGateway("pub", "gateway without TURN", append(common,
		"--addr", labNoTURN+":443",
		"--turn-addr", "off",
		"--stun-addr", labNoTURN+":3478"))
	return l
}

// startGateway runs parley serve in the namespace of role until the test
// ends, and waits for its listener.
func (l *natLab) startGateway(role, name string, args []string) {
	t := l.t
	t.Helper()
	logs := &syncBuffer{}
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.ns[role], l.bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logs, logs
	// Only the flags configure the gateway: no PARLEY_ variable of the
	// test's environment leaks in.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	cmd.SysProcAttr = labProcAttr()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("%s's log:\n%s", name, logs.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "parley node started") {
		select {
		case <-exited:
			t.Fatalf("%s exited:\n%s", name, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start:\n%s", name, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// setNAT gives router i (1 or 2) mode m, in place of its former rules, and
// empties its connection tracking.
func (l *natLab) setNAT(i int, m natMode) {
	l.t.Helper()
	r := fmt.Sprintf("r%d", i)
	for _, table := range []string{"filter", "nat"} {
		l.in(r, "iptables", "-t", table, "-F")
	}
	for _, rule := range natRules(m, fmt.Sprintf("203.0.113.1%d", i), fmt.Sprintf("10.0.%d.2", i)) {
		l.in(r, append([]string{"iptables"}, rule...)...)
	}
	// conntrack -F exits 1 on an empty table with some versions: not an
	// error here.
	exec.Command("ip", "netns", "exec", l.ns[r], "conntrack", "-F").Run()
}

// token mints a token for user.
func (l *natLab) token(user string) string {
	l.t.Helper()
	now := time.Now()
	tok, err := gateway.Claims{RegisteredClaims: jwt.RegisteredClaims{
		Subject: user, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
	}}.Sign([]byte(l.secret))
	if err != nil {
		l.t.Fatal(err)
	}
	return tok
}

// labPeer is a running peer process.
type labPeer struct {
	name   string
	cmd    *exec.Cmd
	lines  chan string
	stderr *syncBuffer
	done   chan struct{}
}

// startPeer runs a peer in client namespace role.
func (l *natLab) startPeer(role, gw, call, peerRole string, timeout time.Duration) *labPeer {
	return l.startPeerWith(role, gw, call, peerRole, "", timeout)
}

// startPeerWith is startPeer with stunURL as the peer's only ICE server,
// when set.
func (l *natLab) startPeerWith(role, gw, call, peerRole, stunURL string, timeout time.Duration) *labPeer {
	l.t.Helper()
	self, err := os.Executable()
	if err != nil {
		l.t.Fatal(err)
	}
	p := &labPeer{name: role, lines: make(chan string, 16), stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command("ip", "netns", "exec", l.ns[role], self)
	p.cmd.Env = append(os.Environ(),
		"PARLEY_LAB_PEER=1",
		"PARLEY_LAB_URL=wss://"+gw+":443/v1/ws",
		"PARLEY_LAB_TOKEN="+l.token(role),
		"PARLEY_LAB_CALL="+call,
		"PARLEY_LAB_ROLE="+peerRole,
		"PARLEY_LAB_TIMEOUT="+timeout.String(),
		"SSL_CERT_FILE="+l.caFile,
		"PARLEY_LAB_STUN="+stunURL,
	)
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	p.cmd.Stderr = p.stderr
	p.cmd.SysProcAttr = labProcAttr()
	if err := p.cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.cmd.Wait()
	}()
	l.t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// next returns the peer's next line of output, or fails the test.
func (p *labPeer) next(t *testing.T, d time.Duration) string {
	t.Helper()
	select {
	case line, ok := <-p.lines:
		if !ok {
			t.Fatalf("peer in %s exited without a result:\n%s", p.name, p.stderr.String())
		}
		return line
	case <-time.After(d):
		t.Fatalf("peer in %s said nothing for %v:\n%s", p.name, d, p.stderr.String())
	}
	return ""
}

// result waits for the peer's result.
func (p *labPeer) result(t *testing.T, d time.Duration) labResult {
	t.Helper()
	line := p.next(t, d)
	var r labResult
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("peer in %s: %q is not a result: %v\n%s", p.name, line, err, p.stderr.String())
	}
	return r
}

// labCall runs one call between c1 (offering) and c2 through gateway gw and
// returns both results.
func (l *natLab) labCall(call, gw string, timeout time.Duration) (c1, c2 labResult) {
	return l.labCallWith(call, gw, "", timeout)
}

// labCallWith is labCall with stunURL as the peers' only ICE server, when
// set.
func (l *natLab) labCallWith(call, gw, stunURL string, timeout time.Duration) (c1, c2 labResult) {
	l.t.Helper()
	answer := l.startPeerWith("c2", gw, call, "answer", stunURL, timeout)
	if line := answer.next(l.t, 20*time.Second); !strings.Contains(line, `"joined"`) {
		var r labResult
		json.Unmarshal([]byte(line), &r)
		l.t.Fatalf("answering peer did not join: %s\n%s", line, answer.stderr.String())
	}
	offer := l.startPeerWith("c1", gw, call, "offer", stunURL, timeout)
	c1 = offer.result(l.t, timeout+30*time.Second)
	c2 = answer.result(l.t, timeout+30*time.Second)
	if os.Getenv("PARLEY_LAB_DEBUG") != "" {
		<-offer.done
		<-answer.done
		l.t.Logf("c1's log:\n%s\nc2's log:\n%s", offer.stderr.String(), answer.stderr.String())
	}
	return c1, c2
}

// labMaxStop bounds how long a peer may take to stop after its call. It is
// usually under a millisecond; behind a firewall that drops UDP, pion now
// and then waits out its own 5 s STUN timeout before its gathering ends
// (seen at 4.4 s). A TCP dial to a dropped TURN port once held it up for
// the kernel's whole connect timeout, over two minutes.
const labMaxStop = 6 * time.Second

// labAttempts bounds the calls TestNATLab makes for one run of a case whose
// call connects on another kind of pair than the case wants.
const labAttempts = 3

// natCase is one pair of router modes and what the call must use.
type natCase struct {
	r1, r2 natMode
	// check says what is wrong with the two peers' selected pairs, if
	// anything.
	check func(c1, c2 labResult) string
}

// direct wants a path through the NAT mappings: no relay on either end,
// and the remote end a server- or peer-reflexive address (the other
// client's private address does not reach it). The local end is the
// client's own address or its mapping, as its agent learnt it.
func direct(c1, c2 labResult) string {
	for _, r := range []labResult{c1, c2} {
		if r.Local == "relay" || (r.Remote != "srflx" && r.Remote != "prflx") {
			return fmt.Sprintf("pair %s -> %s, want a path through the NAT mappings: no relay, and a server- or peer-reflexive remote", r.Local, r.Remote)
		}
	}
	return ""
}

// relayed wants the media through the TURN relay: a relay candidate on at
// least one end of each side's pair. Which of a client's relay candidates
// (over UDP, TCP or TLS) carries it is the first that works once relays may
// be taken; the summary reports it.
func relayed(c1, c2 labResult) string {
	for _, r := range []labResult{c1, c2} {
		if r.Local != "relay" && r.Remote != "relay" {
			return fmt.Sprintf("pair %s -> %s, want a relay candidate", r.Local, r.Remote)
		}
	}
	return ""
}

// relayedOver wants c1's own candidate to be a relay reached over proto.
func relayedOver(proto string) func(c1, c2 labResult) string {
	return func(c1, c2 labResult) string {
		if c1.Local != "relay" || c1.RelayProtocol != proto {
			return fmt.Sprintf("c1's pair %s (relay protocol %q) -> %s, want its own relay candidate over %s", c1.Local, c1.RelayProtocol, c1.Remote, proto)
		}
		return ""
	}
}

// natCases are the lab's calls, in the order of the fallback they prove:
// through NAT mappings, then TURN over UDP, TCP and TLS on 443.
var natCases = []natCase{
	{natCone, natCone, direct},
	{natRestricted, natRestricted, direct},
	{natCone, natSymmetric, direct},
	{natRestricted, natSymmetric, relayed},
	{natSymmetric, natSymmetric, relayed},
	{natNoUDP, natCone, relayedOver("tcp")},
	{natOnly443, natCone, relayedOver("tls")},
}

// pairText is a peer's selected pair: local -> remote candidate type, with
// the relay protocol of a local relay.
func pairText(r labResult) string {
	local := r.Local
	if r.RelayProtocol != "" {
		local += "/" + r.RelayProtocol
	}
	return local + "->" + r.Remote
}

// countPairs says how often each pair was selected.
func countPairs(pairs []string) string {
	n := make(map[string]int)
	for _, p := range pairs {
		n[p]++
	}
	var out []string
	for p, k := range n {
		out = append(out, fmt.Sprintf("%s ×%d", p, k))
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// TestNATLab makes a call for each pair of router modes, asserts the
// candidate pair each must use and that 20 data-channel messages go each
// way, and logs the setup times (join to data channel open) that
// docs/BENCHMARKS.md records. PARLEY_LAB_RUNS sets the calls per case (1 by
// default).
func TestNATLab(t *testing.T) {
	l := startNATLab(t)
	runs := 1
	if v := os.Getenv("PARLEY_LAB_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("PARLEY_LAB_RUNS=%q: want a positive whole number", v)
		}
		runs = n
	}
	var summary bytes.Buffer
	for _, tc := range natCases {
		name := string(tc.r1) + "/" + string(tc.r2)
		t.Run(name, func(t *testing.T) {
			l.t = t
			defer func() { l.t = nil }()
			var setups []float64
			var pairs []string
			retried := 0
			for run := range runs {
				for attempt := 1; ; attempt++ {
					l.setNAT(1, tc.r1)
					l.setNAT(2, tc.r2)
					c1, c2 := l.labCall(fmt.Sprintf("lab-%s-%s-%d-%d", tc.r1, tc.r2, run, attempt), labGateway, 15*time.Second)
					for _, r := range []labResult{c1, c2} {
						if r.Error != "" {
							t.Fatalf("run %d: c1 %+v\nc2 %+v", run, c1, c2)
						}
					}
					for _, r := range []labResult{c1, c2} {
						if r.StopMS > labMaxStop.Seconds()*1000 {
							t.Errorf("run %d: a peer took %.0f ms to stop after the call, want under %v", run, r.StopMS, labMaxStop)
						}
					}
					problem := tc.check(c1, c2)
					if problem == "" {
						setups = append(setups, c1.SetupMS)
						pairs = append(pairs, pairText(c1)+" | "+pairText(c2))
						break
					}
					// Which working pair is taken depends on timing: a
					// direct pair whose checks a starved CPU delays past
					// the relay's wait loses to the relay. A call that
					// connected on the wrong kind of pair is made again,
					// at most labAttempts times in all; one whose NAT
					// traversal is broken fails every time.
					if attempt == labAttempts {
						t.Fatalf("run %d, attempt %d of %d: %s\nc1 %+v\nc2 %+v", run, attempt, labAttempts, problem, c1, c2)
					}
					retried++
					t.Logf("run %d, attempt %d: %s; calling again", run, attempt, problem)
				}
			}
			if retried > 0 {
				name += fmt.Sprintf(" (%d calls made again)", retried)
			}
			slices.Sort(setups)
			line := fmt.Sprintf("%-26s runs %3d  setup p50 %5.0f ms  max %5.0f ms  pairs (c1 | c2): %s", name, runs, setups[len(setups)/2], setups[len(setups)-1], countPairs(pairs))
			t.Log(line)
			fmt.Fprintln(&summary, line)
		})
	}
	l.t = t
	t.Logf("setup times (join to data channel open):\n%s", summary.String())
}

// TestNATLabCloudNAT calls through a gateway deployed as docs/TURN.md says
// for a cloud VM: it listens on 0.0.0.0 with a private address only,
// behind a 1:1 NAT, with --turn-public-ip set to the public address, and
// serves TURNS on its HTTPS port. Relays over UDP and over TLS on 443 work
// through it.
func TestNATLabCloudNAT(t *testing.T) {
	l := startNATLab(t)
	for _, tc := range []natCase{
		{natSymmetric, natSymmetric, relayed},
		{natOnly443, natCone, relayedOver("tls")},
	} {
		t.Run(string(tc.r1)+"/"+string(tc.r2), func(t *testing.T) {
			l.t = t
			defer func() { l.t = nil }()
			l.setNAT(1, tc.r1)
			l.setNAT(2, tc.r2)
			c1, c2 := l.labCall(fmt.Sprintf("lab-cloud-%s-%s", tc.r1, tc.r2), labCloud, 15*time.Second)
			for _, r := range []labResult{c1, c2} {
				if r.Error != "" {
					t.Fatalf("c1 %+v\nc2 %+v", c1, c2)
				}
			}
			if problem := tc.check(c1, c2); problem != "" {
				t.Fatalf("%s\nc1 %+v\nc2 %+v", problem, c1, c2)
			}
			for _, r := range []labResult{c1, c2} {
				if r.StopMS > labMaxStop.Seconds()*1000 {
					t.Errorf("a peer took %.0f ms to stop after the call, want under %v", r.StopMS, labMaxStop)
				}
				for _, addr := range []string{r.LocalAddress, r.RemoteAddress} {
					if strings.HasPrefix(addr, "172.16.") {
						t.Errorf("a candidate carries the cloud's private address %s: --turn-public-ip was not applied", addr)
					}
				}
			}
			t.Logf("setup %.0f ms, pairs (c1 | c2): %s | %s; stopped in %.0f and %.0f ms", c1.SetupMS, pairText(c1), pairText(c2), c1.StopMS, c2.StopMS)
		})
	}
	l.t = t
}

// TestNATLabNoTURN is the negative control: without TURN (STUN only, from
// a gateway with --turn-addr off and a STUN listener), two clients behind
// symmetric NATs cannot connect, which shows that the lab's NATs are real.
func TestNATLabNoTURN(t *testing.T) {
	l := startNATLab(t)
	l.setNAT(1, natSymmetric)
	l.setNAT(2, natSymmetric)
	// The gateway without TURN lists no ICE servers in its acks: the peers
	// use its STUN-only listener, as a client configured with STUN alone.
	c1, c2 := l.labCallWith("lab-no-turn", labNoTURN, "stun:"+labNoTURN+":3478", 8*time.Second)
	if c1.Error == "" || c2.Error == "" {
		t.Fatalf("symmetric/symmetric without TURN connected:\nc1 %+v\nc2 %+v", c1, c2)
	}
	// The call must fail for the reason the lab makes: both peers joined
	// and gathered their mappings through STUN, and no pair of them works.
	for _, r := range []labResult{c1, c2} {
		if !strings.Contains(r.Error, "not open after") {
			t.Errorf("the call failed before ICE could: %s", r.Error)
		}
		srflx := false
		for _, c := range r.Candidates {
			if strings.HasPrefix(c, "relay") {
				t.Errorf("a relay candidate without TURN: %v", r.Candidates)
			}
			srflx = srflx || strings.HasPrefix(c, "srflx")
		}
		if !srflx {
			t.Errorf("no server-reflexive candidate (STUN did not answer): %v", r.Candidates)
		}
	}
	t.Logf("as it must, the call failed: c1: %s; c2: %s", c1.Error, c2.Error)
}
