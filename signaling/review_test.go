package signaling

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/fanout/redistest"
)

// A peer joins a call on a node just as the node's last other peer of that
// call leaves it. What a user notices: the peer that joined then never hears
// of anyone who joins after it (no `peer` join event) and its signals to
// them are refused with not_found ("no peer ... in call"), while they see it
// and can signal it: a one-sided call that never connects.
func TestReviewJoinRacingLastLeave(t *testing.T) {
	s := newService(t, newMemory(t), "n1", func(c *Config) { c.SignalRate, c.SignalBurst = 1e6, 1e6 })
	ctx := context.Background()
	var orphaned, deaf int
	for i := range 5000 {
		call := fmt.Sprintf("race%d", i)
		a, b, c := newConn(fmt.Sprintf("a%04x", i)), newConn(fmt.Sprintf("b%04x", i)), newConn(fmt.Sprintf("c%04x", i))
		join(t, s, a, call, "alice", "")
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := s.Leave(ctx, a, call); err != nil {
				t.Errorf("leave: %v", err)
			}
		})
		join(t, s, b, call, "bob", "")
		wg.Wait()
		join(t, s, c, call, "carol", "")
		if err := s.Signal(ctx, b, call, c.id, candidate(1)); err != nil {
			s.mu.Lock()
			live := s.calls[call] == s.conns[b].peers[call].call
			s.mu.Unlock()
			if live {
				deaf++
			} else {
				orphaned++
			}
			t.Logf("%s: bob's signal to carol, who joined after him: %v (bob's call state is the node's: %v)", call, err, live)
		}
		s.Leave(ctx, b, call)
		s.Leave(ctx, c, call)
	}
	if orphaned+deaf > 0 {
		t.Fatalf("of 5000 joins racing the last leave, %d left the joining peer in a call state the node had dropped, and %d in one whose bus subscription was removed: it never learns of later peers", orphaned, deaf)
	}
}

// A peer's connection drops and it resumes on the same node while the other
// peer keeps sending it ICE candidates (trickle ICE does exactly this). What
// a user notices: some candidates sent during the resume never arrive, on
// the old connection or the new one, although every Signal was acknowledged;
// the connection may then fail to establish until an ICE restart.
func TestReviewSignalsLostDuringResumeSameNode(t *testing.T) {
	s := newService(t, newMemory(t), "n1", func(c *Config) {
		c.SignalRate, c.SignalBurst, c.HeldSignals = 1e6, 1e6, 1e6
	})
	ctx := context.Background()
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, s, a, "call", "alice", "")
	rb := join(t, s, b, "call", "bob", "")

	stop := make(chan struct{})
	sent := make(chan int, 1)
	go func() {
		n := 0
		defer func() { sent <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := s.Signal(ctx, a, "call", "bbbb", candidate(n)); err != nil {
				t.Errorf("signal %d: %v", n, err)
				return
			}
			n++
		}
	}()
	conns := []*testConn{b}
	token := rb.Resume
	for i := range 600 {
		old := conns[len(conns)-1]
		old.close()
		s.Disconnect(ctx, old)
		nc := newConn(fmt.Sprintf("r%04x", i))
		r := join(t, s, nc, "call", "bob", token)
		if !r.Resumed {
			t.Fatalf("resume %d: %+v", i, r)
		}
		token = r.Resume
		conns = append(conns, nc)
	}
	close(stop)
	n := <-sent
	got := make(map[int]bool)
	deadline := time.Now().Add(3 * time.Second)
	for len(got) < n && time.Now().Before(deadline) {
		for _, c := range conns {
			c.mu.Lock()
			for _, f := range c.frames {
				if isSignal("aaaa")(f) {
					got[candidatePort(f)] = true
				}
			}
			c.mu.Unlock()
		}
		time.Sleep(20 * time.Millisecond)
	}
	var lost []int
	for i := range n {
		if !got[i] {
			lost = append(lost, i)
		}
	}
	if len(lost) > 0 {
		t.Fatalf("%d of %d acknowledged signals to a peer that resumed 600 times on the same node never reached any of its connections: %v (signals dropped by the node: %v)", len(lost), n, lost[:min(len(lost), 20)], counterValue(s.metrics.dropped))
	}
}

// counterValue reads a counter of the service's metrics.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}

// seenPeers is the set of peers a client believes are in the call: those
// of its join ack, plus the peer join events, less the peer leave events
// that it has received so far (frames stay in c).
func seenPeers(c *testConn, ack JoinResult) map[string]bool {
	in := make(map[string]bool)
	for _, p := range ack.Peers {
		in[p.Session] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.frames {
		if f["type"] != "peer" {
			continue
		}
		id, _ := f["session"].(string)
		switch f["event"] {
		case "join":
			in[id] = true
		case "leave":
			delete(in, id)
		}
	}
	return in
}

// A peer joins a call on one node while a peer on another node leaves it.
// What a user notices: the joining peer's ack (or a join event) lists the
// peer that left, and no `peer` leave for it ever comes: the client keeps a
// ghost tile for it and its offers to it are refused with not_found.
func TestReviewGhostPeerInJoinAck(t *testing.T) {
	srv := redistest.Start(t)
	n1, n2 := startRedisNode(t, srv, "n1", nil), startRedisNode(t, srv, "n2", nil)
	ctx := context.Background()
	type outcome struct {
		call string
		p    *testConn
		ack  JoinResult
	}
	var outs []outcome
	for i := range 200 {
		call := fmt.Sprintf("ghost%d", i)
		y, p := newConn(fmt.Sprintf("e%04x", i)), newConn(fmt.Sprintf("f%04x", i))
		join(t, n2.svc, y, call, "yves", "")
		var wg sync.WaitGroup
		wg.Go(func() {
			time.Sleep(time.Duration(i%16) * time.Millisecond / 4)
			if err := n2.svc.Leave(ctx, y, call); err != nil {
				t.Errorf("leave: %v", err)
			}
		})
		ack := join(t, n1.svc, p, call, "pat", "")
		wg.Wait()
		outs = append(outs, outcome{call, p, ack})
	}
	time.Sleep(2 * time.Second) // every leave event has long arrived
	var ghosts []string
	for _, o := range outs {
		if in := seenPeers(o.p, o.ack); len(in) > 0 {
			err := n1.svc.Signal(ctx, o.p, o.call, fmt.Sprint(keys(in)[0]), candidate(1))
			ghosts = append(ghosts, fmt.Sprintf("%s: %s believes %v are in the call (ack peers %v); a signal to it: %v", o.call, o.p.id, keys(in), o.ack.Peers, err))
		}
	}
	if len(ghosts) > 0 {
		t.Fatalf("%d of %d peers that joined while the other peer left on another node are left with a ghost peer:\n%s", len(ghosts), len(outs), strings.Join(ghosts, "\n"))
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// slowUnsubscribe is the Memory bus with an Unsubscribe that takes a while,
// as a bus's may (Redis's and Memory's both wait out a delivery in
// progress).
type slowUnsubscribe struct {
	fanout.Bus
	d time.Duration
}

func (b slowUnsubscribe) Unsubscribe(ctx context.Context, room string) error {
	time.Sleep(b.d)
	return b.Bus.Unsubscribe(ctx, room)
}

// The last peer of a call on a node leaves, and another peer joins the call
// on that node while the node is still unsubscribing from it. What a user
// notices: the peer that joined never hears of anyone who joins after it, or
// of anyone who leaves; its signals to later peers are refused with
// not_found.
func TestReviewJoinWhileLastLeaveUnsubscribes(t *testing.T) {
	s := newService(t, slowUnsubscribe{newMemory(t), 100 * time.Millisecond}, "n1", nil)
	ctx := context.Background()
	a, b, c := newConn("aaaa"), newConn("bbbb"), newConn("cccc")
	join(t, s, a, "call", "alice", "")
	left := make(chan struct{})
	go func() {
		defer close(left)
		if err := s.Leave(ctx, a, "call"); err != nil {
			t.Errorf("leave: %v", err)
		}
	}()
	// The node has forgotten the call (the leave is unsubscribing now).
	for {
		s.mu.Lock()
		gone := s.calls["call"] == nil
		s.mu.Unlock()
		if gone {
			break
		}
		time.Sleep(time.Millisecond)
	}
	join(t, s, b, "call", "bob", "")
	<-left
	rc := join(t, s, c, "call", "carol", "")
	if len(rc.Peers) != 1 || rc.Peers[0].Session != "bbbb" {
		t.Fatalf("carol's ack: %+v, want bob", rc.Peers)
	}
	deadline := time.Now().Add(3 * time.Second)
	for !seenPeers(b, JoinResult{})["cccc"] && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !seenPeers(b, JoinResult{})["cccc"] {
		t.Errorf("bob got no peer join of carol within 3s")
	}
}

// Redis restarts empty under a call of two peers on two nodes; neither peer
// goes anywhere. What a user notices: a `peer` leave of the other peer (its
// video tile goes, the app tears down the RTCPeerConnection), possibly
// followed by a join, although nobody left.
func TestReviewResyncAfterRedisRestart(t *testing.T) {
	srv := redistest.Start(t)
	n1, n2 := startRedisNode(t, srv, "n1", nil), startRedisNode(t, srv, "n2", nil)
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, n1.svc, a, "call", "alice", "")
	join(t, n2.svc, b, "call", "bob", "")
	a.waitFor(t, "peer join", isPeer("join", "bbbb"))
	srv.Restart()
	deadline := time.Now().Add(15 * time.Second)
	for !n1.bus.Ready() || !n2.bus.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("buses not ready 15s after the restart")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
	for _, x := range []struct {
		c     *testConn
		other string
	}{{a, "bbbb"}, {b, "aaaa"}} {
		x.c.mu.Lock()
		for _, f := range x.c.frames {
			if f["type"] == "peer" && f["session"] == x.other {
				t.Errorf("%s got %v after a Redis restart; %s never left", x.c.id, f, x.other)
			}
		}
		x.c.mu.Unlock()
	}
	if err := n1.svc.Signal(context.Background(), a, "call", "bbbb", candidate(1)); err != nil {
		t.Errorf("alice's signal to bob after the restart: %v", err)
	}
}

// A connection's signal rate limit lives in its connState, which Leave
// forgets when the connection is in no other call. What a user notices:
// nothing, but an abusive client relays as many signals as it likes to a
// peer (and joins as often as it likes) by leaving and joining again: each
// join starts a fresh, full bucket.
func TestReviewSignalRateLimitResetByLeave(t *testing.T) {
	s := newService(t, newMemory(t), "n1", func(c *Config) { c.SignalRate, c.SignalBurst = 1, 50 })
	ctx := context.Background()
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, s, b, "call", "bob", "")
	start := time.Now()
	relayed := 0
	for range 5 {
		if _, err := s.Join(ctx, a, JoinRequest{Call: "call", User: "mallory"}); err != nil {
			if err.Code != CodeRateLimited {
				t.Fatalf("join: %v", err)
			}
			break // the bucket is empty: joining is limited too
		}
		for s.Signal(ctx, a, "call", "bbbb", candidate(relayed)) == nil {
			relayed++
		}
		if err := s.Leave(ctx, a, "call"); err != nil {
			t.Fatal(err)
		}
	}
	el := time.Since(start)
	// 1 signal a second with a burst of 50 (a join counting as 10).
	if bound := 50 + int(el.Seconds()+1); relayed > bound {
		t.Errorf("a connection with a limit of 1 signal/s and a burst of 50 relayed %d signals in %v (at most %d)", relayed, el.Round(time.Millisecond), bound)
	}
}

// A peer's connection drops; the client reconnects and resumes, and that
// connection drops too before the join ack reaches it (the resume is done
// on the server). The client joins again with the only token it has, within
// the grace period. What a user notices: resumed false and a new identity
// (the app renegotiates from scratch), and the other peers see the old peer
// leave when the grace period ends and a new one join: exactly what resume
// is meant to spare them.
func TestReviewResumeAfterLostAck(t *testing.T) {
	s := newService(t, newMemory(t), "n1", nil)
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, s, a, "call", "alice", "")
	rb := join(t, s, b, "call", "bob", "")
	a.waitFor(t, "peer join", isPeer("join", "bbbb"))
	b.close()
	s.Disconnect(context.Background(), b)

	b2 := newConn("b2b2")
	join(t, s, b2, "call", "bob", rb.Resume) // the ack is lost with the connection
	b2.close()
	s.Disconnect(context.Background(), b2)

	b3 := newConn("b3b3")
	r := join(t, s, b3, "call", "bob", rb.Resume)
	if !r.Resumed || r.Session != "bbbb" {
		t.Errorf("second resume within the grace period with the client's token: %+v, want resumed as bbbb", r)
	}
	a.none(t, "a leave of bbbb", 2500*time.Millisecond, isPeer("leave", "bbbb"))
}

// A peer whose connection dropped resumes on another node just as its grace
// period ends on the old one. What a user notices: the rejoining client gets
// resumed true, yet the other peers saw it leave and join again (they tear
// down and rebuild the connection to it), which resume promises they won't.
func TestReviewResumeAtGraceEndFlaps(t *testing.T) {
	srv := redistest.Start(t)
	const grace = time.Second
	n1 := startRedisNode(t, srv, "n1", func(c *Config) { c.Grace = grace })
	n2 := startRedisNode(t, srv, "n2", func(c *Config) { c.Grace = grace })
	const calls = 100
	type peer struct {
		a, b *testConn
		tok  string
	}
	ps := make([]peer, calls)
	for i := range ps {
		call := fmt.Sprintf("edge%d", i)
		ps[i].a, ps[i].b = newConn(fmt.Sprintf("a%04x", i)), newConn(fmt.Sprintf("b%04x", i))
		join(t, n1.svc, ps[i].a, call, "alice", "")
		ps[i].tok = join(t, n2.svc, ps[i].b, call, "bob", "").Resume
		ps[i].a.waitFor(t, "peer join", isPeer("join", ps[i].b.id))
	}
	// Each peer drops 3ms after the one before (so that the node's worker
	// keeps up with the expiries), and resumes on the other node between
	// 2ms before and 6ms after its grace period ends, in 80µs steps.
	results := make([]JoinResult, calls)
	var wg sync.WaitGroup
	for i := range ps {
		time.Sleep(3 * time.Millisecond)
		dropped := time.Now()
		ps[i].b.close()
		n2.svc.Disconnect(context.Background(), ps[i].b)
		wg.Go(func() {
			time.Sleep(time.Until(dropped.Add(grace - 2*time.Millisecond + time.Duration(i)*80*time.Microsecond)))
			results[i] = join(t, n1.svc, newConn(fmt.Sprintf("c%04x", i)), fmt.Sprintf("edge%d", i), "bob", ps[i].tok)
		})
	}
	wg.Wait()
	time.Sleep(time.Second)
	var flaps []string
	resumed := 0
	for i, r := range results {
		if !r.Resumed {
			continue
		}
		resumed++
		ps[i].a.mu.Lock()
		for _, f := range ps[i].a.frames {
			if isPeer("leave", ps[i].b.id)(f) {
				flaps = append(flaps, fmt.Sprintf("call edge%d: %s resumed, and %s got %v (then a join: %v)", i, ps[i].b.id, ps[i].a.id, f, joinAfterLeave(ps[i].a.frames, ps[i].b.id)))
			}
		}
		ps[i].a.mu.Unlock()
	}
	t.Logf("%d of %d resumes around the end of the grace period kept the peer", resumed, calls)
	if len(flaps) > 0 {
		t.Fatalf("%d peers resumed while the others saw them leave:\n%s", len(flaps), strings.Join(flaps, "\n"))
	}
}

// joinAfterLeave reports whether frames hold a peer join of id after its
// first peer leave.
func joinAfterLeave(frames []map[string]any, id string) bool {
	left := false
	for _, f := range frames {
		switch {
		case isPeer("leave", id)(f):
			left = true
		case left && isPeer("join", id)(f):
			return true
		}
	}
	return false
}
