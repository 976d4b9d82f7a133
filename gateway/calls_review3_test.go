package gateway

// A third review of calls, from the gateway's side: what a session's
// commands and its end hand to signaling, and with which context. Each test
// here fails on the code it was written against; the comment above it says
// what a user notices.

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
)

// review3Bus is a Memory bus with two faults a Redis bus shows when Redis
// is slow: once armed, a Claim of a call peer's address answers only when
// its caller's context ends (go-redis runs with ContextTimeoutEnabled, so a
// command that outlives its context fails with the context's error), and a
// presence Leave of a room (not a call) does the same. It counts Posts.
type review3Bus struct {
	*fanout.Memory
	stallClaim     atomic.Bool
	stallRoomLeave atomic.Bool
	posts          atomic.Int64
}

func (b *review3Bus) Claim(ctx context.Context, session string, deliver func([]byte)) ([][]byte, error) {
	if b.stallClaim.Load() && strings.HasPrefix(session, "c:") {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return b.Memory.Claim(ctx, session, deliver)
}

func (b *review3Bus) Leave(ctx context.Context, room string, m fanout.Member) error {
	if b.stallRoomLeave.Load() && !strings.HasPrefix(room, "call/") {
		<-ctx.Done()
		return ctx.Err()
	}
	return b.Memory.Leave(ctx, room, m)
}

func (b *review3Bus) Post(ctx context.Context, session string, data []byte, max int, ttl time.Duration) error {
	b.posts.Add(1)
	return b.Memory.Post(ctx, session, data, max, ttl)
}

// review3Server is startServer on bus.
func review3Server(t *testing.T, bus *review3Bus, mod func(*Config)) *testServer {
	t.Helper()
	cfg := Config{Bus: bus, NodeID: "test-node", DrainTimeout: 200 * time.Millisecond, APIKey: testAPIKey}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Config = srv.http
	hs.Start()
	ts := &testServer{srv: srv, bus: bus.Memory, http: hs, url: hs.URL, ws: "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ws"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if !srv.draining.Load() {
			srv.Shutdown(ctx)
		}
		hs.Close()
		bus.Close()
	})
	return ts
}

// Bob joins a call while the bus is slow: his join enters the call, then
// its claim of his address outlives the command's 10 s deadline, and he
// gets `internal` ("join failed: the message bus is unavailable"), as
// CALLS.md says. What a user notices: bob stays in the call anyway, for
// good. Alice got a `peer` `join` for him and never gets a `leave`, not
// when his connection closes, not after the grace period; the call counts
// him against --call-max-peers, so in a call of two nobody can join any
// more, and every later joiner is told of him in its ack. On Redis the same
// holds for as long as the node lives: the node goes on renewing his lease.
//
// Cause: handle runs every command under ctx = WithTimeout(srv.ctx,
// commandTimeout) (ws.go:295), and signaling undoes a half-made join with
// that same context (join.go:177 s.leave(ctx, p), join.go:356 Unregister):
// once it has ended, the undo fails before it starts (Memory: lockedFor
// checks ctx; Redis.Leave returns at r.check(ctx), fanout/redis.go:467,
// before it stops renewing the member). hub.unsubscribe does its undo under
// context.WithoutCancel for exactly this reason; Join does not. Shutdown's
// srv.cancel() ends the same context for a join in flight.
func TestReview3FailedJoinLeavesGhostPeer(t *testing.T) {
	bus := &review3Bus{Memory: fanout.NewMemory(fanout.MemoryConfig{})}
	ts := review3Server(t, bus, func(c *Config) {
		c.Calls.Grace = time.Second
		c.Calls.MaxPeers = 2
	})
	alice, bob := dialCall(t, ts, ""), dialCall(t, ts, "")
	alice.join("c", "")

	bus.stallClaim.Store(true)
	bob.send(map[string]any{"type": "join", "id": "j", "call": "c"})
	r, ok := bob.wait(30*time.Second, func(m map[string]any) bool { return m["id"] == "j" })
	bus.stallClaim.Store(false)
	if !ok || r["type"] != "error" || r["code"] != "internal" {
		t.Fatalf("bob's join on a slow bus: %v (got a reply: %v), want error internal", r, ok)
	}
	ev, ok := alice.wait(5*time.Second, func(m map[string]any) bool { return m["type"] == "peer" && m["event"] == "join" })
	if !ok {
		t.Fatal("alice saw no peer join for bob's refused join (the test expects the join to have entered the call before it failed)")
	}
	ghost := ev["session"].(string)

	// Bob's client gives up on the call and closes its connection.
	bob.c.CloseNow()
	if _, left := alice.wait(5*time.Second, peerEvent("leave", ghost)); !left {
		page, _ := bus.Presence(context.Background(), "call/c", fanout.PresenceQuery{})
		t.Errorf("bob's join was refused with internal and his connection closed, grace 1s: 5s later alice has had no peer leave for %s; the call's members: %v", ghost, page.Members)
	}
	carol := dialCall(t, ts, "")
	if r := carol.command(map[string]any{"type": "join", "call": "c"}); r["type"] != "ack" {
		t.Errorf("alice is alone in call c (max 2 peers), carol's join: %v", r)
	}
}

// Bob's connection drops while he is in a call and subscribed to a
// presence room, at a moment when the bus is slow to take presence leaves.
// Alice then sends him one ICE candidate and gets her ack. What a user
// notices: the node spins. The candidate goes round the signaling worker,
// deliver -> repost -> Post -> deliver, hundreds of thousands of bus Posts
// a second on the in-memory bus (on Redis, a publish round trip each), for
// as long as bob stays away (--call-grace, 10 s), and every signal sent to
// him meanwhile adds a loop of its own; none reaches his mailbox, so the
// 256-signal bound never refuses any.
//
// Cause: session.finish gives the room unsubscribes and calls.Disconnect
// one cleanup context of 5 s (server.go:326-332); each unsubscribe takes a
// fresh 5 s of its own (hub.go, WithoutCancel), so slow room leaves spend
// the whole budget and Disconnect runs with a context that has ended. Its
// releaseAddr cannot unregister bob's address (join.go:477, logged at
// debug only), and marks it released all the same (join.go:481): the bus
// still delivers to this node, which reposts what it gets for a released
// peer (relay.go:133-134) to the address it still holds.
func TestReview3DisconnectAfterSlowCleanupLoopsSignals(t *testing.T) {
	bus := &review3Bus{Memory: fanout.NewMemory(fanout.MemoryConfig{})}
	ts := review3Server(t, bus, func(c *Config) { c.Calls.Grace = 20 * time.Second })
	alice, bob := dialCall(t, ts, ""), dialCall(t, ts, "")
	a := alice.join("c", "")
	b := bob.join("c", "")
	bobID := b["session"].(string)
	alice.must("peer join", peerEvent("join", bobID))
	if r := bob.command(map[string]any{"type": "subscribe", "room": "lobby", "presence": true}); r["type"] != "ack" {
		t.Fatalf("subscribe: %v", r)
	}

	bus.stallRoomLeave.Store(true)
	bob.c.CloseNow()
	// finish waits out the stalled presence leave (5 s), then disconnects
	// bob from his call; his session is unregistered after that.
	deadline := time.Now().Add(20 * time.Second)
	for {
		ts.srv.sessMu.Lock()
		n := len(ts.srv.sessions)
		ts.srv.sessMu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("bob's session did not finish within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	bus.stallRoomLeave.Store(false)

	before := bus.posts.Load()
	cand := map[string]any{"candidate": map[string]any{"candidate": testCandidate, "sdpMid": "0", "sdpMLineIndex": 0}}
	if r := alice.command(map[string]any{"type": "signal", "call": "c", "to": bobID, "data": cand}); r["type"] != "ack" {
		t.Fatalf("signal to the away peer: %v", r)
	}
	time.Sleep(time.Second)
	posts := bus.posts.Load() - before

	// Bob comes back; that ends the loop, and the candidate reaches him.
	bob2 := dialCall(t, ts, "")
	if r := bob2.join("c", b["resume"].(string)); r["resumed"] != true {
		t.Errorf("resume: %v", r)
	}
	bob2.wait(5*time.Second, signalFrom(a["session"].(string)))

	if posts > 10 {
		t.Errorf("one signal to a peer that is away made %d bus Posts in a second, want 1 (held in its mailbox)", posts)
	}
}
