package signaling

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
)

// testConn is a client connection as signaling sees it: the frames
// delivered to it, in order.
type testConn struct {
	id string

	mu     sync.Mutex
	frames []map[string]any
	closed bool
	wake   chan struct{}
}

func newConn(id string) *testConn { return &testConn{id: id, wake: make(chan struct{}, 1)} }

func (c *testConn) ID() string { return c.id }

func (c *testConn) Deliver(b []byte) bool {
	var f map[string]any
	if err := json.Unmarshal(b, &f); err != nil {
		panic(fmt.Sprintf("frame is not JSON: %q", b))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.frames = append(c.frames, f)
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return true
}

func (c *testConn) Answer(b []byte) bool { return c.Deliver(b) }

// close makes the connection refuse frames, as a closed session does.
func (c *testConn) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
}

// waitFor waits until a frame matches, and removes and returns the first
// that does; other frames stay for later calls.
func (c *testConn) waitFor(t *testing.T, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		for i, f := range c.frames {
			if match(f) {
				c.frames = append(c.frames[:i:i], c.frames[i+1:]...)
				c.mu.Unlock()
				return f
			}
		}
		c.mu.Unlock()
		select {
		case <-c.wake:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("%s: no %s within 10s; frames: %v", c.id, what, c.frames)
		}
	}
}

// none checks that no frame matches within d.
func (c *testConn) none(t *testing.T, what string, d time.Duration, match func(map[string]any) bool) {
	t.Helper()
	time.Sleep(d)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.frames {
		if match(f) {
			t.Fatalf("%s: got %s: %v", c.id, what, f)
		}
	}
}

func isPeer(event, session string) func(map[string]any) bool {
	return func(f map[string]any) bool {
		return f["type"] == "peer" && f["event"] == event && f["session"] == session
	}
}

func isSignal(from string) func(map[string]any) bool {
	return func(f map[string]any) bool { return f["type"] == "signal" && f["from"] == from }
}

// candidate is a valid candidate signal whose port numbers it: tests read
// the order back from it.
func candidate(n int) []byte {
	return fmt.Appendf(nil, `{"candidate":{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 %d typ host","sdpMid":"0","sdpMLineIndex":0}}`, 1000+n)
}

func candidatePort(f map[string]any) int {
	d, _ := f["data"].(map[string]any)
	c, _ := d["candidate"].(map[string]any)
	s, _ := c["candidate"].(string)
	var port int
	fields := strings.Fields(s)
	if len(fields) > 5 {
		fmt.Sscan(fields[5], &port)
	}
	return port - 1000
}

func newService(t *testing.T, bus fanout.Bus, node string, mod func(*Config)) *Service {
	t.Helper()
	cfg := Config{Bus: bus, NodeID: node, Grace: 2 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func newMemory(t *testing.T) fanout.Bus {
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	t.Cleanup(func() { bus.Close() })
	return bus
}

func join(t *testing.T, s *Service, c Conn, call, user, resume string) JoinResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := s.Join(ctx, c, JoinRequest{Call: call, User: user, Resume: resume})
	if err != nil {
		t.Fatalf("join %s as %s: %v", call, c.ID(), err)
	}
	return res
}

func signal(t *testing.T, s *Service, c Conn, call, to string, data []byte) {
	t.Helper()
	if err := s.Signal(context.Background(), c, call, to, data); err != nil {
		t.Fatalf("signal from %s to %s: %v", c.ID(), to, err)
	}
}

func TestCallTwoPeers(t *testing.T) {
	s := newService(t, newMemory(t), "n1", nil)
	a, b := newConn("aaaa"), newConn("bbbb")
	ra := join(t, s, a, "room1", "alice", "")
	if ra.Session != "aaaa" || len(ra.Peers) != 0 || ra.Resumed || ra.Resume == "" {
		t.Fatalf("first join: got %+v", ra)
	}
	rb := join(t, s, b, "room1", "bob", "")
	if len(rb.Peers) != 1 || rb.Peers[0].Session != "aaaa" || rb.Peers[0].User != "alice" {
		t.Fatalf("second join: peers %+v, want alice's aaaa", rb.Peers)
	}
	// Of the two, exactly one is polite: bbbb > aaaa.
	if !rb.Peers[0].Polite || !rb.Polite {
		t.Errorf("bbbb toward aaaa: polite %v (ack %v), want true", rb.Peers[0].Polite, rb.Polite)
	}
	ev := a.waitFor(t, "peer join of bbbb", isPeer("join", "bbbb"))
	if ev["polite"] != false || ev["user"] != "bob" || ev["call"] != "room1" {
		t.Errorf("aaaa's peer event: %v, want bob, polite false", ev)
	}
	for i := range 50 {
		signal(t, s, a, "room1", "bbbb", candidate(i))
	}
	for i := range 50 {
		f := b.waitFor(t, "signal", isSignal("aaaa"))
		if n := candidatePort(f); n != i {
			t.Fatalf("signal %d arrived as %d", i, n)
		}
	}
	if err := s.Leave(context.Background(), b, "room1"); err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, "peer leave of bbbb", isPeer("leave", "bbbb"))
	if err := s.Signal(context.Background(), a, "room1", "bbbb", candidate(0)); err == nil || err.Code != CodeNotFound {
		t.Errorf("signal to a peer that left: got %v, want not_found", err)
	}
}

func TestCallRefusals(t *testing.T) {
	s := newService(t, newMemory(t), "n1", func(c *Config) { c.MaxPeers = 3 })
	conns := []*testConn{newConn("p1"), newConn("p2"), newConn("p3"), newConn("p4")}
	for _, c := range conns[:3] {
		join(t, s, c, "full", "u", "")
	}
	ctx := context.Background()
	if _, err := s.Join(ctx, conns[3], JoinRequest{Call: "full", User: "u", Resume: ""}); err == nil || err.Code != CodeForbidden {
		t.Errorf("fourth peer of a call of 3: got %v, want forbidden", err)
	}
	if _, err := s.Join(ctx, conns[0], JoinRequest{Call: "full", User: "u", Resume: ""}); err == nil || err.Code != CodeBadRequest {
		t.Errorf("joining twice: got %v, want bad_request", err)
	}
	if err := s.Signal(ctx, conns[3], "full", "p1", candidate(1)); err == nil || err.Code != CodeNotFound {
		t.Errorf("signal from outside the call: got %v, want not_found", err)
	}
	join(t, s, conns[3], "other", "u", "")
	if err := s.Signal(ctx, conns[3], "other", "p1", candidate(1)); err == nil || err.Code != CodeNotFound {
		t.Errorf("signal to a peer of another call: got %v, want not_found", err)
	}
	if err := s.Signal(ctx, conns[0], "full", "p1", candidate(1)); err == nil || err.Code != CodeBadRequest {
		t.Errorf("signal to itself: got %v, want bad_request", err)
	}
	if err := s.Signal(ctx, conns[0], "full", "p2", []byte(`{"sdp":{"type":"offer","sdp":"garbage"}}`)); err == nil || err.Code != CodeBadRequest {
		t.Errorf("SDP garbage: got %v, want bad_request", err)
	}
	if err := s.Leave(ctx, conns[3], "full"); err == nil || err.Code != CodeNotFound {
		t.Errorf("leaving a call not joined: got %v, want not_found", err)
	}
	for _, tok := range []string{"x", "p1.zz", "p1." + strings.Repeat("g", 32), "../.." + strings.Repeat("0", 32)} {
		if _, err := s.Join(ctx, newConn("p9"), JoinRequest{Call: "full", User: "u", Resume: tok}); err == nil || err.Code != CodeBadRequest {
			t.Errorf("resume token %q: got %v, want bad_request", tok, err)
		}
	}
	// Nothing refused was relayed.
	conns[1].none(t, "a relayed signal", 50*time.Millisecond, isSignal("p1"))
}

func TestCallSignalRateLimit(t *testing.T) {
	s := newService(t, newMemory(t), "n1", func(c *Config) { c.SignalRate, c.SignalBurst = 1, 5 })
	a, b := newConn("a1"), newConn("b1")
	join(t, s, a, "c", "u", "")
	join(t, s, b, "c", "u", "")
	var limited int
	for i := range 10 {
		if err := s.Signal(context.Background(), a, "c", "b1", candidate(i)); err != nil {
			if err.Code != CodeRateLimited {
				t.Fatalf("signal %d: %v", i, err)
			}
			limited++
		}
	}
	if limited < 4 {
		t.Errorf("%d of 10 signals over a burst of 5 were refused, want at least 4", limited)
	}
}

// testResume runs a call of two peers on (possibly) two services: b's
// connection drops, signals are sent to it while it is away, and it
// rejoins on rejoinOn within the grace period.
func testResume(t *testing.T, sa, sb, rejoinOn *Service) {
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, sa, a, "call", "alice", "")
	rb := join(t, sb, b, "call", "bob", "")
	a.waitFor(t, "peer join of bbbb", isPeer("join", "bbbb"))

	b.close()
	sb.Disconnect(context.Background(), b)
	for i := range 20 {
		signal(t, sa, a, "call", "bbbb", candidate(i))
	}
	b2 := newConn("cccc")
	r2 := join(t, rejoinOn, b2, "call", "bob", rb.Resume)
	if !r2.Resumed || r2.Session != "bbbb" {
		t.Fatalf("rejoin: got %+v, want resumed as bbbb", r2)
	}
	if len(r2.Peers) != 1 || r2.Peers[0].Session != "aaaa" || r2.Peers[0].Polite != rb.Peers[0].Polite {
		t.Errorf("rejoin peers %+v, want aaaa with the same role as before (%+v)", r2.Peers, rb.Peers)
	}
	for i := range 20 {
		f := b2.waitFor(t, "held signal", isSignal("aaaa"))
		if n := candidatePort(f); n != i {
			t.Fatalf("held signal %d arrived as %d", i, n)
		}
	}
	signal(t, sa, a, "call", "bbbb", candidate(20))
	if n := candidatePort(b2.waitFor(t, "live signal", isSignal("aaaa"))); n != 20 {
		t.Fatalf("signal after the rejoin arrived as %d", n)
	}
	signal(t, rejoinOn, b2, "call", "aaaa", candidate(7))
	a.waitFor(t, "signal from the rejoined peer", isSignal("bbbb"))
	a.waitFor(t, "peer resume of bbbb", isPeer("resume", "bbbb"))
	// Past the grace period the old incarnation must not make a leave.
	a.none(t, "a leave of bbbb", 2500*time.Millisecond, isPeer("leave", "bbbb"))
}

func TestCallResumeSameNode(t *testing.T) {
	s := newService(t, newMemory(t), "n1", nil)
	testResume(t, s, s, s)
}

func TestCallGraceExpires(t *testing.T) {
	s := newService(t, newMemory(t), "n1", func(c *Config) { c.Grace = 300 * time.Millisecond })
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, s, a, "call", "alice", "")
	rb := join(t, s, b, "call", "bob", "")
	b.close()
	start := time.Now()
	s.Disconnect(context.Background(), b)
	a.none(t, "an early leave", 150*time.Millisecond, isPeer("leave", "bbbb"))
	a.waitFor(t, "peer leave after the grace period", isPeer("leave", "bbbb"))
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("leave came %v after the disconnect, grace 300ms", d)
	}
	r := join(t, s, newConn("dddd"), "call", "bob", rb.Resume)
	if r.Resumed || r.Session != "dddd" {
		t.Errorf("late rejoin: got %+v, want resumed false with a new session", r)
	}
	a.waitFor(t, "join of the fresh peer", isPeer("join", "dddd"))
}

func TestCallResumeOtherUser(t *testing.T) {
	s := newService(t, newMemory(t), "n1", nil)
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, s, a, "call", "alice", "")
	rb := join(t, s, b, "call", "bob", "")
	b.close()
	s.Disconnect(context.Background(), b)
	r := join(t, s, newConn("eeee"), "call", "mallory", rb.Resume)
	if r.Resumed || r.Session == "bbbb" {
		t.Errorf("another user's token: got %+v, want a fresh peer", r)
	}
}

func TestCallHeldBound(t *testing.T) {
	s := newService(t, newMemory(t), "n1", func(c *Config) { c.HeldSignals = 5 })
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, s, a, "call", "alice", "")
	join(t, s, b, "call", "bob", "")
	b.close()
	s.Disconnect(context.Background(), b)
	var err *Error
	deadline := time.Now().Add(5 * time.Second)
	sent := 0
	for err == nil && time.Now().Before(deadline) {
		err = s.Signal(context.Background(), a, "call", "bbbb", candidate(sent))
		sent++
	}
	if err == nil || err.Code != CodeRateLimited || !strings.Contains(err.Message, "away") {
		t.Fatalf("after %d signals to an away peer with 5 held: got %v, want rate_limited saying it is away", sent, err)
	}
}

func TestCallHideHostCandidates(t *testing.T) {
	s := newService(t, newMemory(t), "n1", func(c *Config) { c.HideHostCandidates = true })
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, s, a, "call", "alice", "")
	join(t, s, b, "call", "bob", "")
	signal(t, s, a, "call", "bbbb", candidate(1))
	signal(t, s, a, "call", "bbbb", []byte(`{"candidate":{"candidate":"candidate:2 1 udp 1686052607 203.0.113.7 4000 typ srflx raddr 0.0.0.0 rport 0","sdpMid":"0","sdpMLineIndex":0}}`))
	f := b.waitFor(t, "the srflx candidate", isSignal("aaaa"))
	if !strings.Contains(fmt.Sprint(f["data"]), "srflx") {
		t.Errorf("first signal delivered: %v, want the srflx one (the host one is hidden)", f)
	}
}

// Joins racing: of any two peers exactly one is polite, and every peer ends
// up knowing every other.
func TestCallConcurrentJoins(t *testing.T) {
	s := newService(t, newMemory(t), "n1", nil)
	conns := make([]*testConn, 6)
	results := make([]JoinResult, len(conns))
	var wg sync.WaitGroup
	for i := range conns {
		conns[i] = newConn(fmt.Sprintf("peer%02d", i))
		wg.Go(func() { results[i] = join(t, s, conns[i], "race", "u", "") })
	}
	wg.Wait()
	for i, c := range conns {
		known := map[string]bool{}
		for _, p := range results[i].Peers {
			known[p.Session] = true
			if p.Polite != (c.id > p.Session) {
				t.Errorf("%s toward %s: polite %v", c.id, p.Session, p.Polite)
			}
		}
		for j, o := range conns {
			if j == i || known[o.id] {
				continue
			}
			f := c.waitFor(t, "join of "+o.id, isPeer("join", o.id))
			if f["polite"] != (c.id > o.id) {
				t.Errorf("%s toward %s: polite %v", c.id, o.id, f["polite"])
			}
		}
	}
}

func TestCallGraceAfterResume(t *testing.T) {
	s := newService(t, newMemory(t), "n1", func(c *Config) { c.Grace = 300 * time.Millisecond })
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, s, a, "call", "alice", "")
	rb := join(t, s, b, "call", "bob", "")
	b.close()
	s.Disconnect(context.Background(), b)
	b2 := newConn("cccc")
	if r := join(t, s, b2, "call", "bob", rb.Resume); !r.Resumed {
		t.Fatalf("rejoin: %+v", r)
	}
	b2.close()
	s.Disconnect(context.Background(), b2)
	a.waitFor(t, "peer leave after the second drop", isPeer("leave", "bbbb"))
}
