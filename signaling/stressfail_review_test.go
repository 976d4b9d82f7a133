package signaling

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
)

// lateReleaseBus is a bus whose next Unregister of a peer address, once
// armed, answers only as its context runs out: the release of an away
// peer's address that succeeded at the end of its time, as it does on a
// loaded node whose release first waited for the call's other work.
type lateReleaseBus struct {
	fanout.Bus
	armed atomic.Bool
}

func (b *lateReleaseBus) Unregister(ctx context.Context, session string) error {
	err := b.Bus.Unregister(ctx, session)
	if strings.HasPrefix(session, "c:") && b.armed.CompareAndSwap(true, false) {
		<-ctx.Done()
	}
	return err
}

// TestStressFailStraysOfSlowRelease is the second loss TestCallStress
// showed under heavy load (invariant 3b: "33108d9337bd3aaf, in the call to
// the end, never got signals #0..#6"; its connection had closed at 4.691 s
// and its Disconnect returned at 9.876 s). A peer's connection drops;
// Disconnect's release of its address waits for the call's ops (another
// join or resume of the call holds them), and what the other peers send
// meanwhile reaches the away peer on this node and is kept as strays. The
// release succeeds at the end of Disconnect's context, and the strays are
// then posted to the mailbox with that same, spent context: every Post
// fails, and the signals, which Signal had accepted, are dropped. The peer
// resumes within its grace period and never gets them.
func TestStressFailStraysOfSlowRelease(t *testing.T) {
	bus := &lateReleaseBus{Bus: newMemory(t)}
	s := newService(t, bus, "n1", func(c *Config) { c.Grace = time.Minute })
	ctx := context.Background()
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, s, a, "call", "alice", "")
	rb := join(t, s, b, "call", "bob", "")
	a.waitFor(t, "peer join of bbbb", isPeer("join", "bbbb"))

	// Something else holds the call's ops (a join or resume in progress).
	s.mu.Lock()
	cst := s.calls["call"]
	s.mu.Unlock()
	cst.ops.Lock()
	b.close()
	released := make(chan struct{})
	go func() {
		s.Disconnect(ctx, b)
		close(released)
	}()
	waitUntil(t, "bbbb to be away", 5*time.Second, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.conns[b] == nil
	})
	const n = 5
	for i := range n {
		signal(t, s, a, "call", "bbbb", candidate(i))
	}
	bus.armed.Store(true)
	cst.ops.Unlock()
	select {
	case <-released:
	case <-time.After(2 * taskTimeout):
		t.Fatal("Disconnect did not return")
	}

	b2 := newConn("b2b2")
	res := join(t, s, b2, "call", "bob", rb.Resume)
	if !res.Resumed {
		t.Fatalf("resume within the grace period: got %+v", res)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		var got []int
		for _, f := range b2.snapshot() {
			if isSignal("aaaa")(f) {
				got = append(got, candidatePort(f))
			}
		}
		if len(got) == n {
			for i, v := range got {
				if v != i {
					t.Fatalf("signals after the resume: got %v, want 0..%d in order", got, n-1)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("signals accepted while bbbb was away, before its address was released: got %v after its resume, want 0..%d (signaling dropped %v)",
				got, n-1, counterValue(s.metrics.dropped))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
