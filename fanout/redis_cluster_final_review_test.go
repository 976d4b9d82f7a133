package fanout

// A final reviewer's tests of the Redis bus on a Redis Cluster, against real
// redis-server processes (redistest.StartCluster). Each test states the
// contract it checks; one that fails shows a bug in the bus.

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout/redistest"
)

// frShardSubscribers returns PUBSUB SHARDNUMSUB of channel on node i of c:
// how many connections have it subscribed there.
func frShardSubscribers(t *testing.T, c *redistest.Cluster, i int, channel string) int {
	t.Helper()
	out := strings.Fields(c.Nodes[i].Command("PUBSUB", "SHARDNUMSUB", channel))
	if len(out) != 2 {
		t.Fatalf("PUBSUB SHARDNUMSUB on node %d: %q", i, out)
	}
	n, err := strconv.Atoi(out[1])
	if err != nil {
		t.Fatalf("PUBSUB SHARDNUMSUB on node %d: %q", i, out)
	}
	return n
}

// A room is unsubscribed, and before the shard's run goroutine has written
// the SUNSUBSCRIBE (it is queued, dirty), the room's master lets go of the
// slot (a resharding: its own sunsubscribe). The slot comes back to the
// same master, and the room is subscribed again. Subscribe must not return
// before Redis delivers the room again: "a message published after it
// returns reaches h" (or, at the least, the handler must get HandleResync).
//
// The test makes the Unsubscribe with r.drop, which is all of Unsubscribe
// but its kickRun: that is the state of a bus whose shard goroutine has not
// synced yet (it sleeps syncWindow after a recent sync, or is writing an
// earlier batch), held open so that the master's sunsubscribe comes in it.
func TestClusterFinalReviewResubscribeAfterMasterLetGo(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	url := clusterURL(c, 3)
	owners := crOwners(t, c)
	pub := newTestRedis(t, RedisConfig{URL: url, NodeID: "frl-pub"})
	sub := newTestRedis(t, RedisConfig{URL: url, NodeID: "frl-sub"})
	ctx := context.Background()

	src := (owners[keySlot(sub.nodeTopic)] + 1) % 3
	dst := (src + 1) % 3
	room := crRoomsOn(owners, src, 1, "frl")[0]
	ch := roomChannel(room)
	slot := keySlot(ch)

	rec := &recorder{}
	subscribe(t, sub, room, rec)
	crPublish(t, pub, room, 0)
	rec.waitMessages(t, 1)

	// Unsubscribe, its SUNSUBSCRIBE not yet written.
	sub.mu.Lock()
	s := sub.subs[ch]
	sub.drop(s)
	sub.mu.Unlock()

	// The master lets go of the slot: it drops the subscription itself.
	crMigrateSlot(t, c, slot, src, dst, 3)
	waitFor(t, "the source master to drop the subscription", func() bool {
		return frShardSubscribers(t, c, src, ch) == 0
	})
	time.Sleep(200 * time.Millisecond) // the bus reads the sunsubscribe
	// ... and gets it back (the resharding undone, or rebalanced back).
	crMigrateSlot(t, c, slot, dst, src, 3)

	rec2 := &recorder{}
	if err := sub.Subscribe(ctx, room, rec2); err != nil {
		t.Fatalf("Subscribe again: %v", err)
	}
	t.Logf("Subscribe returned; subscribers of the room's channel on its master: %d", frShardSubscribers(t, c, src, ch))

	var last uint64
	deadline := time.Now().Add(8 * time.Second) // beyond slotsRefresh
	for {
		last = crPublish(t, pub, room, 1)
		if len(rec2.messages()) > 0 || rec2.resyncs.Load() > 0 {
			break
		}
		if time.Now().After(deadline) {
			sub.mu.Lock()
			st := struct {
				wanted, confirmed, sent bool
				pendSub, pendUnsub      int
				shard                   string
			}{s.wanted, s.confirmed, s.sent, s.pendSub, s.pendUnsub, s.shard.addr}
			sub.mu.Unlock()
			t.Fatalf("Subscribe returned, but nothing published after it reached the handler in 8 s (offsets up to %d), and no HandleResync: Redis has %d subscriber(s) of the channel on its master; the bus's subscription: %+v",
				last, frShardSubscribers(t, c, src, ch), st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	rec2.check(t)
}
