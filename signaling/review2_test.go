package signaling

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/fanout/redistest"
)

// sockProxy is a Unix-socket proxy in front of a redis-server: one node's
// whole path to Redis (its pub/sub connection and its commands), which the
// test can cut while the other nodes stay connected, as a network fault
// between one node and Redis would.
type sockProxy struct {
	ln     net.Listener
	path   string
	target string

	mu     sync.Mutex
	refuse bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func startSockProxy(t *testing.T, srv *redistest.Server) *sockProxy {
	t.Helper()
	dir, err := os.MkdirTemp("", "rp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &sockProxy{path: filepath.Join(dir, "p.sock"), target: strings.TrimPrefix(srv.URL(), "unix://"), conns: make(map[net.Conn]struct{})}
	p.ln, err = net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		p.ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *sockProxy) url() string { return "unix://" + p.path }

func (p *sockProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse
		if !refuse {
			p.conns[c] = struct{}{}
		}
		p.mu.Unlock()
		if refuse {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go p.pipe(c)
	}
}

func (p *sockProxy) pipe(c net.Conn) {
	defer p.wg.Done()
	up, err := net.Dial("unix", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[up] = struct{}{}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(up, c)
		up.Close()
		c.Close()
	}()
	io.Copy(c, up)
	c.Close()
	up.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// cut closes every connection through the proxy.
func (p *sockProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (p *sockProxy) setRefuse(refuse bool) {
	p.mu.Lock()
	p.refuse = refuse
	p.mu.Unlock()
}

// startNodeAt is startRedisNode on a Redis URL of the test's choosing, with
// the service's bus wrapped by wrap (when not nil).
func startNodeAt(t *testing.T, url, name string, wrap func(fanout.Bus) fanout.Bus, mod func(*Config)) *redisNode {
	t.Helper()
	bus, err := fanout.NewRedis(fanout.RedisConfig{URL: url, NodeID: name + "-" + fanout.NewEpoch(), PresenceTTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Close() })
	waitUntil(t, "the bus of "+name+" to be ready", 10*time.Second, bus.Ready)
	var b fanout.Bus = bus
	if wrap != nil {
		b = wrap(bus)
	}
	return &redisNode{bus: bus, svc: newService(t, b, name, mod)}
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// members returns the sessions of the call's bus members.
func members(t *testing.T, bus fanout.Bus, call string) []string {
	t.Helper()
	page, err := bus.Presence(context.Background(), callRoom(call), fanout.PresenceQuery{Limit: fanout.MaxPresenceLimit})
	if err != nil {
		t.Fatalf("presence: %v", err)
	}
	var out []string
	for _, m := range page.Members {
		out = append(out, m.Session)
	}
	return out
}

// snapshot returns a copy of the frames c has received and not yet taken.
func (c *testConn) snapshot() []map[string]any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]map[string]any(nil), c.frames...)
}

// A client's connection X on node 1 is in a call as bob; the client opens a
// second connection Y on node 2 and resumes bob there with its token (a
// second tab, or a reconnect before node 1 saw X drop): Y takes bob over,
// and node 1, which held no other peer of the call, forgets the call. Then
// X joins the call again. CALLS.md promises "If that old connection joins
// the call again, it joins as a new peer with an identity of its own". What
// a user notices: X gets bob's own identity back and steals bob's address:
// the signals the others send to bob go to X, and Y, the connection that
// resumed bob, receives nothing more; the others see no new peer join.
func TestReview2OldConnectionRejoinEvictsResumedPeer(t *testing.T) {
	srv := redistest.Start(t)
	n1, n2, n3 := startRedisNode(t, srv, "n1", nil), startRedisNode(t, srv, "n2", nil), startRedisNode(t, srv, "n3", nil)
	a, x, y := newConn("aaaa"), newConn("bbbb"), newConn("cccc")
	join(t, n3.svc, a, "call", "alice", "")
	rx := join(t, n1.svc, x, "call", "bob", "")
	a.waitFor(t, "peer join of bob", isPeer("join", "bbbb"))

	ry := join(t, n2.svc, y, "call", "bob", rx.Resume)
	if !ry.Resumed || ry.Session != "bbbb" {
		t.Fatalf("Y's resume: %+v, want bob resumed", ry)
	}
	waitUntil(t, "node 1 to let go of bob's old incarnation", 10*time.Second, func() bool {
		n1.svc.mu.Lock()
		defer n1.svc.mu.Unlock()
		return n1.svc.calls["call"] == nil
	})

	rx2 := join(t, n1.svc, x, "call", "bob", "")
	signal(t, n3.svc, a, "call", "bbbb", candidate(1))
	got := false
	deadline := time.Now().Add(5 * time.Second)
	for !got && time.Now().Before(deadline) {
		for _, f := range y.snapshot() {
			if isSignal("aaaa")(f) {
				got = true
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	var toX int
	for _, f := range x.snapshot() {
		if isSignal("aaaa")(f) {
			toX++
		}
	}
	if rx2.Session == "bbbb" || !got {
		t.Fatalf("X joined again as %q (bob, who lives on as Y, is bbbb); alice's signal to bbbb reached Y: %v, reached X: %d times; members: %v",
			rx2.Session, got, toX, members(t, n3.bus, "call"))
	}
}

// Node 1 (alice) loses its connection to Redis for a moment; meanwhile bob,
// whose connection dropped on node 2, resumes on node 3, so his incarnation
// on node 2 leaves and a new one joins: node 1 misses both events. Its
// resync after the reconnect adds the new incarnation but never drops the
// old one (bob is present, so the delayed resync leaves him alone). What a
// user notices: when bob later leaves the call, alice never gets `peer`
// leave: she keeps a ghost bob for good, her signals to him are still
// acknowledged (held in a mailbox nobody claims), and her app waits for
// him forever.
func TestReview2ResyncKeepsStaleIncarnation(t *testing.T) {
	srv := redistest.Start(t)
	px := startSockProxy(t, srv)
	n1 := startNodeAt(t, px.url(), "n1", nil, func(c *Config) { c.ResyncDelay = 500 * time.Millisecond })
	n2, n3 := startRedisNode(t, srv, "n2", nil), startRedisNode(t, srv, "n3", nil)
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, n1.svc, a, "call", "alice", "")
	rb := join(t, n2.svc, b, "call", "bob", "")
	a.waitFor(t, "peer join of bob", isPeer("join", "bbbb"))

	px.setRefuse(true)
	px.cut()
	waitUntil(t, "node 1 to lose Redis", 10*time.Second, func() bool { return !n1.bus.Ready() })
	b.close()
	n2.svc.Disconnect(context.Background(), b)
	b2 := newConn("b2b2")
	if r := join(t, n3.svc, b2, "call", "bob", rb.Resume); !r.Resumed {
		t.Fatalf("bob's resume on node 3: %+v", r)
	}
	waitUntil(t, "bob's old incarnation to leave", 10*time.Second, func() bool { return len(members(t, n3.bus, "call")) == 2 })
	px.setRefuse(false)
	waitUntil(t, "node 1 to reconnect", 15*time.Second, n1.bus.Ready)
	time.Sleep(2 * time.Second) // both resyncs have run

	if err := n3.svc.Leave(context.Background(), b2, "call"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		for _, f := range a.snapshot() {
			if isPeer("leave", "bbbb")(f) {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	n1.svc.mu.Lock()
	v := n1.svc.calls["call"].view["bbbb"]
	var incs []string
	if v != nil {
		for inc := range v.incs {
			incs = append(incs, inc)
		}
	}
	n1.svc.mu.Unlock()
	err := n1.svc.Signal(context.Background(), a, "call", "bbbb", candidate(1))
	t.Fatalf("bob left the call 6s ago and alice got no peer leave (members now %v; node 1 still counts bob's incarnations %v; alice's signal to him: %v)",
		members(t, n3.bus, "call"), incs, err)
}

// hookBus is a bus whose Presence answers run hook (when set) after the
// bus has read the members and before the caller gets them: the time a
// reply takes to come back, during which presence events may arrive on the
// node's pub/sub connection first.
type hookBus struct {
	fanout.Bus
	calls atomic.Int32
	hook  atomic.Pointer[func(n int32)]
}

func (b *hookBus) Presence(ctx context.Context, room string, q fanout.PresenceQuery) (fanout.PresencePage, error) {
	page, err := b.Bus.Presence(ctx, room, q)
	n := b.calls.Add(1)
	if h := b.hook.Load(); h != nil {
		(*h)(n)
	}
	return page, err
}

func (b *hookBus) setHook(h func(n int32)) {
	b.calls.Store(0)
	b.hook.Store(&h)
}

// seen waits up to d for a frame of c that matches, without taking it.
func seen(c *testConn, d time.Duration, match func(map[string]any) bool) bool {
	deadline := time.Now().Add(d)
	for {
		for _, f := range c.snapshot() {
			if match(f) {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// blip cuts node 1's path to Redis and restores it at once: its pub/sub
// connection is made again and every call it holds gets HandleResync.
func blip(t *testing.T, px *sockProxy, bus *fanout.Redis) {
	t.Helper()
	px.setRefuse(true)
	px.cut()
	waitUntil(t, "node 1 to lose Redis", 10*time.Second, func() bool { return !bus.Ready() })
	px.setRefuse(false)
	waitUntil(t, "node 1 to reconnect", 15*time.Second, bus.Ready)
}

// Node 1 (alice) reconnects to Redis and reads the call's members again
// (the resync at once after HandleResync); carol, on node 2, leaves the
// call while that read is on its way back. What a user notices: alice gets
// carol's `peer` leave and then a `peer` join of carol, who is gone: a
// ghost tile, signals to her acknowledged and held for nobody, until the
// delayed resync (11 s by default) removes her again with a second leave.
func TestReview2ResyncBringsBackPeerThatLeft(t *testing.T) {
	srv := redistest.Start(t)
	px := startSockProxy(t, srv)
	var hb *hookBus
	n1 := startNodeAt(t, px.url(), "n1", func(b fanout.Bus) fanout.Bus { hb = &hookBus{Bus: b}; return hb },
		func(c *Config) { c.ResyncDelay = 20 * time.Second })
	n2 := startRedisNode(t, srv, "n2", nil)
	a, c := newConn("aaaa"), newConn("cccc")
	join(t, n1.svc, a, "call", "alice", "")
	join(t, n2.svc, c, "call", "carol", "")
	a.waitFor(t, "peer join of carol", isPeer("join", "cccc"))

	left := make(chan bool, 1)
	hb.setHook(func(n int32) {
		if n != 1 {
			return
		}
		// The members are read; carol leaves before the answer is used.
		err := n2.svc.Leave(context.Background(), c, "call")
		left <- err == nil && seen(a, 5*time.Second, isPeer("leave", "cccc"))
	})
	blip(t, px, n1.bus)
	select {
	case ok := <-left:
		if !ok {
			t.Fatal("carol's leave did not reach alice")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no resync read the call's members within 15s of the reconnect")
	}
	if seen(a, 2*time.Second, isPeer("join", "cccc")) {
		err := n1.svc.Signal(context.Background(), a, "call", "cccc", candidate(1))
		t.Fatalf("carol left, alice got her leave, then a join of carol, who is gone (members %v); alice's signal to her: %v",
			members(t, n2.bus, "call"), err)
	}
}

// Node 1 (alice) reconnects to Redis; its delayed resync, the one that
// drops the peers missing from the call's members, reads them just before
// carol joins on node 2. What a user notices: alice gets carol's `peer`
// join and, at once, a `peer` leave of carol, who is in the call: alice
// tears down her connection to carol, her signals to carol are refused
// with not_found ("no peer ... in call"), while carol sees alice and keeps
// offering. Nothing brings carol back for alice.
func TestReview2DelayedResyncDropsPeerThatJustJoined(t *testing.T) {
	srv := redistest.Start(t)
	px := startSockProxy(t, srv)
	var hb *hookBus
	n1 := startNodeAt(t, px.url(), "n1", func(b fanout.Bus) fanout.Bus { hb = &hookBus{Bus: b}; return hb },
		func(c *Config) { c.ResyncDelay = time.Second })
	n2 := startRedisNode(t, srv, "n2", nil)
	a, c := newConn("aaaa"), newConn("cccc")
	join(t, n1.svc, a, "call", "alice", "")

	joined := make(chan bool, 1)
	hb.setHook(func(n int32) {
		if n != 2 {
			return
		}
		// The delayed resync has read the members; carol joins before
		// the answer is used.
		_, err := n2.svc.Join(context.Background(), c, JoinRequest{Call: "call", User: "carol"})
		joined <- err == nil && seen(a, 5*time.Second, isPeer("join", "cccc"))
	})
	blip(t, px, n1.bus)
	select {
	case ok := <-joined:
		if !ok {
			t.Fatal("carol's join did not reach alice")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no delayed resync within 15s of the reconnect")
	}
	if seen(a, 2*time.Second, isPeer("leave", "cccc")) {
		err := n1.svc.Signal(context.Background(), a, "call", "cccc", candidate(1))
		t.Fatalf("carol joined and is in the call (members %v), yet alice got a peer leave of her; alice's signal to carol: %v",
			members(t, n2.bus, "call"), err)
	}
}

// Bob's connection to node 2 drops; his client resumes on node 1 just as
// his grace period ends: node 1 finds his incarnation in the call, and it
// leaves (the grace period is over) before node 1 enters the new one. The
// resume then fails, as it should (resumed false, a fresh peer), but only
// after the new incarnation has entered and left the call. What a user
// notices: alice sees bob leave, then join again, then leave again, then
// the fresh peer join: a ghost bob that her app starts connecting to (she
// is told she is the polite or impolite side toward him) and tears down at
// once. CALLS.md: "the others got leave for the old peer and now get join
// for the new one".
func TestReview2FailedResumeFlapsOldPeer(t *testing.T) {
	srv := redistest.Start(t)
	var hb *hookBus
	n1 := startNodeAt(t, srv.URL(), "n1", func(b fanout.Bus) fanout.Bus { hb = &hookBus{Bus: b}; return hb }, nil)
	n2 := startRedisNode(t, srv, "n2", func(c *Config) { c.Grace = time.Second })
	n3 := startRedisNode(t, srv, "n3", nil)
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, n3.svc, a, "call", "alice", "")
	rb := join(t, n2.svc, b, "call", "bob", "")
	a.waitFor(t, "peer join of bob", isPeer("join", "bbbb"))

	hb.setHook(func(n int32) {
		if n != 1 {
			return
		}
		// Node 1 has found bob's incarnation; his grace period ends
		// before it enters the new one.
		seen(a, 5*time.Second, isPeer("leave", "bbbb"))
	})
	b.close()
	n2.svc.Disconnect(context.Background(), b)
	r := join(t, n1.svc, newConn("dddd"), "call", "bob", rb.Resume)
	if r.Resumed {
		t.Fatalf("a resume after the grace period ended: %+v", r)
	}
	a.waitFor(t, "the fresh peer's join", isPeer("join", "dddd"))
	var events []string
	for _, f := range a.snapshot() {
		if f["type"] == "peer" {
			events = append(events, fmt.Sprint(f["event"], " ", f["session"]))
		}
	}
	if joinAfterLeave(a.snapshot(), "bbbb") {
		t.Fatalf("alice's peer events after bob's late resume: %v (before the join of dddd): bob came back after his leave", events)
	}
}

// Bob's client has his resume token in two places (two tabs restoring the
// same call, or a reconnect that raced a retry) and both rejoin at once,
// through two nodes, while his old connection is still held on a third.
// CALLS.md: a rejoin takes the peer over and "the old connection is no
// longer in the call": one connection is bob, the other is out. What a
// user notices: both get resumed:true and both stay bob, each sending as
// him, while the signals for bob reach only one of them; the other's
// PeerConnections never complete. Bob counts twice in the call's members
// (and against --call-max-peers) for as long as both live.
func TestReview2TwoResumesWithOneTokenBothKeepThePeer(t *testing.T) {
	srv := redistest.Start(t)
	n1, n2 := startRedisNode(t, srv, "n1", nil), startRedisNode(t, srv, "n2", nil)
	n3, n4 := startRedisNode(t, srv, "n3", nil), startRedisNode(t, srv, "n4", nil)
	const calls = 10
	var both []string
	for i := range calls {
		call := fmt.Sprintf("two%d", i)
		a, b := newConn(fmt.Sprintf("a%04x", i)), newConn(fmt.Sprintf("b%04x", i))
		join(t, n1.svc, a, call, "alice", "")
		rb := join(t, n2.svc, b, call, "bob", "")
		a.waitFor(t, "peer join of bob", isPeer("join", b.id))
		y3, y4 := newConn(fmt.Sprintf("c%04x", i)), newConn(fmt.Sprintf("d%04x", i))
		var r3, r4 JoinResult
		var wg sync.WaitGroup
		wg.Go(func() { r3 = join(t, n3.svc, y3, call, "bob", rb.Resume) })
		wg.Go(func() { r4 = join(t, n4.svc, y4, call, "bob", rb.Resume) })
		wg.Wait()
		time.Sleep(time.Second) // every takeover has been let go of
		signal(t, n1.svc, a, call, b.id, candidate(i))
		e3 := n3.svc.Signal(context.Background(), y3, call, a.id, candidate(1))
		e4 := n4.svc.Signal(context.Background(), y4, call, a.id, candidate(1))
		if e3 == nil && e4 == nil {
			got3, got4 := seen(y3, 2*time.Second, isSignal(a.id)), seen(y4, 0, isSignal(a.id))
			both = append(both, fmt.Sprintf("%s: resumed %v and %v, both still in the call as %s; alice's signal to him reached the first: %v, the second: %v; members %v",
				call, r3.Resumed, r4.Resumed, b.id, got3, got4, members(t, n1.bus, call)))
		}
	}
	if len(both) > 0 {
		t.Fatalf("%d of %d pairs of simultaneous resumes with one token left two connections in the call as the same peer:\n%s", len(both), calls, strings.Join(both, "\n"))
	}
}
