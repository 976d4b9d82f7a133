package signaling

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
)

// claimHookBus is a bus that runs hook before the first Claim of a peer
// address, for the tests that need something to happen between a peer's
// entering a call and its node claiming its address.
type claimHookBus struct {
	fanout.Bus
	once sync.Once
	hook func(addr string)
}

func (b *claimHookBus) Claim(ctx context.Context, session string, deliver func([]byte)) ([][]byte, error) {
	if strings.HasPrefix(session, "c:") {
		b.once.Do(func() { b.hook(session) })
	}
	return b.Bus.Claim(ctx, session, deliver)
}

// TestCallSignalBeforeClaim: a peer that sees a newcomer enter may signal it
// before the newcomer's node has claimed its address; the signal waits in
// the mailbox, and the newcomer gets it after its ack, not dropped as if
// it were on its way to an earlier peer of the same identity.
func TestCallSignalBeforeClaim(t *testing.T) {
	hooked := &claimHookBus{Bus: newMemory(t)}
	s := newService(t, hooked, "n1", nil)
	a, b := newConn("aaaa"), newConn("bbbb")
	hooked.once.Do(func() {}) // not aaaa's claim
	join(t, s, a, "room1", "alice", "")
	hooked.once = sync.Once{}
	hooked.hook = func(string) {
		a.waitFor(t, "peer join of bbbb", isPeer("join", "bbbb"))
		signal(t, s, a, "room1", "bbbb", candidate(7))
	}
	join(t, s, b, "room1", "bob", "")
	f := b.waitFor(t, "signal sent before bbbb's address was claimed", isSignal("aaaa"))
	if n := candidatePort(f); n != 7 {
		t.Errorf("got candidate %d, want 7", n)
	}
}

// TestCallEarlierPeerSignalDropped: what a peer's mailbox holds for an
// earlier peer of the same identity (the connection left the call and
// joins again) is not delivered to the new peer.
func TestCallEarlierPeerSignalDropped(t *testing.T) {
	s := newService(t, newMemory(t), "n1", nil)
	a, b := newConn("aaaa"), newConn("bbbb")
	join(t, s, a, "room1", "alice", "")
	join(t, s, b, "room1", "bob", "")
	a.waitFor(t, "peer join of bbbb", isPeer("join", "bbbb"))
	// bbbb's connection drops: its peer is away, and what is sent to it
	// is held for its resume.
	b.close()
	s.Disconnect(context.Background(), b)
	signal(t, s, a, "room1", "bbbb", candidate(3))
	// The same connection id joins afresh (no resume token) once the old
	// peer is gone.
	a.waitFor(t, "peer leave of bbbb", isPeer("leave", "bbbb"))
	b2 := newConn("bbbb")
	res := join(t, s, b2, "room1", "bob", "")
	if res.Resumed {
		t.Fatalf("a fresh join resumed: %+v", res)
	}
	b2.none(t, "the earlier peer's signal", time.Second, isSignal("aaaa"))
}
