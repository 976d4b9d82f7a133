package fanout

// A reviewer's tests of what the bus gained for call signaling: Post and
// Claim, Send's ErrNoSession, EnterAfter, and the linger of an unregistered
// session on Redis. Each test states the contract it checks; one that fails
// shows a bug in the bus, not in the test.

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout/redistest"
)

// reviewCallsRestartedNode registers session on a node named id, closes that
// node without unregistering (a crash, or a restart), and starts the node's
// next life under the same id, as a deployment with a fixed --node-id
// (docs/OPERATIONS.md) does. It returns the new life, once ready.
func reviewCallsRestartedNode(t *testing.T, srv *redistest.Server, id, session string) *Redis {
	t.Helper()
	first, err := NewRedis(RedisConfig{URL: srv.URL(), NodeID: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Close() })
	waitFor(t, "the first life ready", first.Ready)
	if err := first.Register(context.Background(), session, func([]byte) {}); err != nil {
		t.Fatal(err)
	}
	first.Close()
	return newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: id})
}

// Post holds what no live node can take. A session whose node restarted
// (same NodeID) is held by no live node: the new life never registered it.
// Its address still names the node until the old lease lapses (PresenceTTL,
// 30 s by default), and Post publishes on the node's channel, which the new
// life subscribes to: the publication "reaches" a connection, Post returns
// nil, and the new life drops the payload (no such session here). The
// payload should be in the mailbox, for the session's next Claim (the peer
// reconnecting and resuming its call).
func TestReviewCallsPostToRestartedNodeIsHeld(t *testing.T) {
	srv := redistest.Start(t)
	s := roomName(t, "session")
	again := reviewCallsRestartedNode(t, srv, "gw-1", s)
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "gw-2"})
	ctx := context.Background()

	if err := b.Post(ctx, s, []byte(`"offer"`), 10, time.Minute); err != nil {
		t.Fatalf("Post: %v", err)
	}
	barrier(t, again)
	in := &inbox{}
	if got, want := claim(t, b, s, in.deliver), []string{`"offer"`}; !slices.Equal(got, want) {
		t.Errorf("Claim after the session's node restarted: got %q, want %q (the payload went to the node's new life, which dropped it: %d dropped)",
			got, want, again.Stats().Dropped)
	}
}

// Send's ErrNoSession says that no live node holds the session. After its
// node restarted under the same NodeID, none does; Send returns nil (the new
// life's connection counted as a receiver) and the payload is dropped.
// Signaling relies on this error to find an incarnation whose node is gone
// (signaling/join.go, resume: Send of envTaken, then Leave on ErrNoSession).
func TestReviewCallsSendToRestartedNodeNoSession(t *testing.T) {
	srv := redistest.Start(t)
	s := roomName(t, "session")
	again := reviewCallsRestartedNode(t, srv, "gw-1", s)
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "gw-2"})

	err := b.Send(context.Background(), s, []byte(`"taken"`))
	if !errors.Is(err, ErrNoSession) {
		barrier(t, again)
		t.Errorf("Send to a session whose node restarted: got %v, want %v (dropped by the new life: %d)", err, ErrNoSession, again.Stats().Dropped)
	}
}

// MaxRooms: a room the bus does not hold is made for a call that adds to
// it; one that only a read made is a shell, let go for another at the
// bound. EnterAfter refused with ErrNoSession adds nothing, yet it makes
// the room as a write does (memory.go presence: lockedFor(..., join)):
// the empty room then counts against MaxRooms until a sweep, and a
// Publish of another room fails with ErrRoomLimit.
func TestReviewCallsMemoryRefusedEnterAfterKeepsNoRoom(t *testing.T) {
	m := NewMemory(MemoryConfig{MaxRooms: 1, SweepInterval: time.Hour})
	t.Cleanup(func() { m.Close() })
	ctx := context.Background()
	gone := roomName(t, "call")
	if _, err := m.EnterAfter(ctx, gone, Member{User: "u", Session: "p1.k.b"}, "p1.k."); !errors.Is(err, ErrNoSession) {
		t.Fatalf("EnterAfter in an empty room: got %v, want %v", err, ErrNoSession)
	}
	if _, err := m.Publish(ctx, roomName(t, "room"), Publication{Data: data(1)}); err != nil {
		t.Errorf("Publish after a refused EnterAfter elsewhere: %v (rooms held: %d, for a room that holds nothing)", err, m.Stats().Rooms)
	}
}
