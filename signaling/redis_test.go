package signaling

import (
	"context"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/fanout/redistest"
)

// redisNode is one node of a cluster on a real redis-server: its bus and
// its calls.
type redisNode struct {
	bus *fanout.Redis
	svc *Service
}

func startRedisNode(t *testing.T, srv *redistest.Server, name string, mod func(*Config)) *redisNode {
	t.Helper()
	bus, err := fanout.NewRedis(fanout.RedisConfig{URL: srv.URL(), NodeID: name + "-" + fanout.NewEpoch(), PresenceTTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for !bus.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("bus not ready after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return &redisNode{bus: bus, svc: newService(t, bus, name, mod)}
}

// kill stops the node as a crash would: nothing leaves, its bus stops
// answering and renewing.
func (n *redisNode) kill() {
	n.svc.Close()
	n.bus.Close()
}

func TestCallAcrossNodes(t *testing.T) {
	srv := redistest.Start(t)
	n1, n2 := startRedisNode(t, srv, "n1", nil), startRedisNode(t, srv, "n2", nil)
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, n1.svc, a, "call", "alice", "")
	rb := join(t, n2.svc, b, "call", "bob", "")
	if len(rb.Peers) != 1 || rb.Peers[0].Session != "aaaa" {
		t.Fatalf("bob on node 2 sees %+v, want alice", rb.Peers)
	}
	a.waitFor(t, "peer join from the other node", isPeer("join", "bbbb"))
	for i := range 100 {
		signal(t, n1.svc, a, "call", "bbbb", candidate(i))
	}
	for i := range 100 {
		if n := candidatePort(b.waitFor(t, "signal", isSignal("aaaa"))); n != i {
			t.Fatalf("signal %d arrived as %d", i, n)
		}
	}
	signal(t, n2.svc, b, "call", "aaaa", candidate(1))
	a.waitFor(t, "signal back", isSignal("bbbb"))
	if err := n2.svc.Leave(context.Background(), b, "call"); err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, "peer leave from the other node", isPeer("leave", "bbbb"))
}

func TestCallResumeOnAnotherNode(t *testing.T) {
	srv := redistest.Start(t)
	n1, n2 := startRedisNode(t, srv, "n1", nil), startRedisNode(t, srv, "n2", nil)
	// Alice stays on node 1; bob drops from node 2 and rejoins on node 1.
	testResume(t, n1.svc, n2.svc, n1.svc)
}

func TestCallResumeAfterNodeDeath(t *testing.T) {
	srv := redistest.Start(t)
	n1, n2, n3 := startRedisNode(t, srv, "n1", nil), startRedisNode(t, srv, "n2", nil), startRedisNode(t, srv, "n3", nil)
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, n1.svc, a, "call", "alice", "")
	rb := join(t, n2.svc, b, "call", "bob", "")
	a.waitFor(t, "peer join", isPeer("join", "bbbb"))

	n2.kill()
	// Signals sent while bob's node is dead are held, not lost.
	for i := range 10 {
		signal(t, n1.svc, a, "call", "bbbb", candidate(i))
	}
	b2 := newConn("cccc")
	r := join(t, n3.svc, b2, "call", "bob", rb.Resume)
	if !r.Resumed || r.Session != "bbbb" {
		t.Fatalf("rejoin after node death: %+v", r)
	}
	for i := range 10 {
		if n := candidatePort(b2.waitFor(t, "held signal", isSignal("aaaa"))); n != i {
			t.Fatalf("held signal %d arrived as %d", i, n)
		}
	}
	a.waitFor(t, "peer resume", isPeer("resume", "bbbb"))
	// The dead node's incarnation is gone, and its lease (2s) lapses
	// without a leave: the peer lives on node 3.
	a.none(t, "a leave of bbbb", 3*time.Second, isPeer("leave", "bbbb"))
}

func TestCallPeerOfDeadNodeLeaves(t *testing.T) {
	srv := redistest.Start(t)
	n1, n2 := startRedisNode(t, srv, "n1", nil), startRedisNode(t, srv, "n2", nil)
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, n1.svc, a, "call", "alice", "")
	join(t, n2.svc, b, "call", "bob", "")
	a.waitFor(t, "peer join", isPeer("join", "bbbb"))
	start := time.Now()
	n2.kill()
	a.waitFor(t, "leave of the dead node's peer", isPeer("leave", "bbbb"))
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("leave came %v after the node died; presence TTL 2s", d)
	}
}

// Two peers join at once on two nodes: exactly one sees the other in its
// ack, the other gets an event, and their roles are opposite.
func TestCallConcurrentJoinsAcrossNodes(t *testing.T) {
	srv := redistest.Start(t)
	n1, n2 := startRedisNode(t, srv, "n1", nil), startRedisNode(t, srv, "n2", nil)
	for i := range 10 {
		call := "race" + string(rune('a'+i))
		a, b := newConn("aaaa"), newConn("bbbb")
		done := make(chan JoinResult)
		go func() { done <- join(t, n1.svc, a, call, "alice", "") }()
		rb := join(t, n2.svc, b, call, "bob", "")
		ra := <-done
		if len(ra.Peers)+len(rb.Peers) != 1 {
			t.Fatalf("%s: alice saw %v and bob saw %v, want exactly one to see the other", call, ra.Peers, rb.Peers)
		}
		var aRole, bRole bool
		if len(ra.Peers) == 1 {
			aRole = ra.Peers[0].Polite
			bRole = b.waitFor(t, "join event", isPeer("join", "aaaa"))["polite"].(bool)
		} else {
			bRole = rb.Peers[0].Polite
			aRole = a.waitFor(t, "join event", isPeer("join", "bbbb"))["polite"].(bool)
		}
		if aRole == bRole {
			t.Fatalf("%s: both peers polite=%v", call, aRole)
		}
	}
}
