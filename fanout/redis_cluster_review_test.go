package fanout

// A reviewer's tests of the Redis bus on a Redis Cluster (redis+cluster://),
// against real redis-server processes (redistest.StartCluster). Each test
// states the contract it checks; one that fails shows a bug in the bus.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/parley-rt/parley/fanout/redistest"
)

// crOwners returns, for each slot, the index in c.Nodes of the master that
// serves it, as c's first live node tells.
func crOwners(t *testing.T, c *redistest.Cluster) []int {
	t.Helper()
	addrs := c.Addrs()
	for _, addr := range addrs {
		cl := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
		slots, err := cl.ClusterSlots(context.Background()).Result()
		cl.Close()
		if err != nil {
			continue
		}
		owners := make([]int, slotCount)
		for i := range owners {
			owners[i] = -1
		}
		for _, s := range slots {
			idx := -1
			for i, a := range addrs {
				if len(s.Nodes) > 0 && a == s.Nodes[0].Addr {
					idx = i
				}
			}
			for sl := s.Start; sl <= s.End; sl++ {
				owners[sl] = idx
			}
		}
		return owners
	}
	t.Fatal("no node of the cluster answers CLUSTER SLOTS")
	return nil
}

// crRoomsOn returns n room names, starting with prefix, whose channels are
// in slots of master m (by owners).
func crRoomsOn(owners []int, m, n int, prefix string) []string {
	var rooms []string
	for i := 0; len(rooms) < n; i++ {
		room := prefix + strconv.Itoa(i)
		if owners[keySlot(roomChannel(room))] == m {
			rooms = append(rooms, room)
		}
	}
	return rooms
}

// crNodeID returns the id of c's node at index i (CLUSTER MYID).
func crNodeID(t *testing.T, c *redistest.Cluster, i int) string {
	t.Helper()
	return strings.TrimSpace(c.Nodes[i].Command("CLUSTER", "MYID"))
}

// Subscribe to a room of a master that the bus holds no connection to yet
// starts a shard for it. Subscribes that come while that shard makes its
// first connection must not fail: the bus is Ready, and nothing is down.
func TestClusterReviewSubscribeWhileShardStarts(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	url := clusterURL(c, 3)
	owners := crOwners(t, c)
	ctx := context.Background()
	var failed []string
	for trial := range 10 {
		bus := newTestRedis(t, RedisConfig{URL: url, NodeID: "sws" + strconv.Itoa(trial)})
		target := (owners[keySlot(bus.nodeTopic)] + 1) % 3
		rooms := crRoomsOn(owners, target, 24, fmt.Sprintf("sws%d-", trial))
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i, room := range rooms {
			wg.Go(func() {
				// Staggered, so that some come while the shard connects.
				time.Sleep(time.Duration(i) * 150 * time.Microsecond)
				if err := bus.Subscribe(ctx, room, &recorder{}); err != nil {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("trial %d room %d: %v (Ready %v)", trial, i, err, bus.Ready()))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		bus.Close()
	}
	if len(failed) > 0 {
		t.Errorf("%d of 240 Subscribes failed on a healthy cluster, e.g.:\n%s", len(failed), strings.Join(failed[:min(5, len(failed))], "\n"))
	}
}

// crMigrateSlot moves slot from master src to master dst the way redis-cli
// --cluster reshard does: IMPORTING and MIGRATING, MIGRATE of its keys,
// then SETSLOT NODE on every master (dst first, then src).
func crMigrateSlot(t *testing.T, c *redistest.Cluster, slot, src, dst int, masters int) {
	t.Helper()
	s := strconv.Itoa(slot)
	srcID, dstID := crNodeID(t, c, src), crNodeID(t, c, dst)
	check := func(what, out string) {
		t.Helper()
		if !strings.HasPrefix(strings.TrimSpace(out), "OK") && !strings.HasPrefix(strings.TrimSpace(out), "NOKEY") {
			t.Fatalf("%s: %q", what, out)
		}
	}
	check("IMPORTING", c.Nodes[dst].Command("CLUSTER", "SETSLOT", s, "IMPORTING", srcID))
	check("MIGRATING", c.Nodes[src].Command("CLUSTER", "SETSLOT", s, "MIGRATING", dstID))
	host, port, _ := strings.Cut(c.Addrs()[dst], ":")
	for {
		out := strings.TrimSpace(c.Nodes[src].Command("CLUSTER", "GETKEYSINSLOT", s, "1000"))
		if out == "" {
			break
		}
		keys := strings.Split(out, "\n")
		check("MIGRATE", c.Nodes[src].Command(append([]string{"MIGRATE", host, port, "", "0", "5000", "KEYS"}, keys...)...))
	}
	check("SETSLOT NODE on dst", c.Nodes[dst].Command("CLUSTER", "SETSLOT", s, "NODE", dstID))
	check("SETSLOT NODE on src", c.Nodes[src].Command("CLUSTER", "SETSLOT", s, "NODE", dstID))
	for i := range masters {
		if i != src && i != dst {
			check("SETSLOT NODE", c.Nodes[i].Command("CLUSTER", "SETSLOT", s, "NODE", dstID))
		}
	}
}

// crPublish publishes data(n) to room, retrying while the bus's slot map
// catches up with the cluster's, and returns the offset.
func crPublish(t *testing.T, bus Bus, room string, n int) uint64 {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		res, err := bus.Publish(ctx, room, Publication{Data: data(n)})
		cancel()
		if err == nil {
			return res.Offset
		}
		if time.Now().After(deadline) {
			t.Fatalf("Publish(%s): %v", room, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A slot that holds a subscribed room migrates to another master (a
// resharding): once to a master the node already has a live shard on (its
// channel's), once to one it has none on. The source master drops the
// room's sharded subscription (SUNSUBSCRIBE); the bus subscribes it on the
// new master, tells the handler to resync, and the room goes on receiving
// live. A room of the same master whose slot stays keeps receiving too.
func TestClusterReviewSlotMigration(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	url := clusterURL(c, 3)
	owners := crOwners(t, c)
	pub := newTestRedis(t, RedisConfig{URL: url, NodeID: "mig-pub"})
	sub := newTestRedis(t, RedisConfig{URL: url, NodeID: "mig-sub"})
	nodeMaster := owners[keySlot(sub.nodeTopic)]
	// Rooms of a master other than the node topic's, so that only rooms
	// are on the slots that move.
	src := (nodeMaster + 1) % 3
	rooms := crRoomsOn(owners, src, 3, "mig")
	staying := rooms[2]
	recStaying := &recorder{}
	subscribe(t, sub, staying, recStaying)
	for i, dst := range []int{nodeMaster, (nodeMaster + 2) % 3} {
		moving := rooms[i]
		if keySlot(roomChannel(moving)) == keySlot(roomChannel(staying)) {
			t.Fatal("rooms in one slot")
		}
		recMoving := &recorder{}
		subscribe(t, sub, moving, recMoving)
		for n := range 3 {
			crPublish(t, pub, moving, n)
		}
		recMoving.waitMessages(t, 3)

		crMigrateSlot(t, c, keySlot(roomChannel(moving)), src, dst, 3)
		if got := crOwners(t, c)[keySlot(roomChannel(moving))]; got != dst {
			t.Fatalf("slot not migrated: owner %d, want %d", got, dst)
		}

		var last, lastStaying uint64
		deadline := time.Now().Add(waitTimeout)
		for n := 3; ; n++ {
			last = crPublish(t, pub, moving, n)
			lastStaying = crPublish(t, pub, staying, n)
			m := recMoving.messages()
			if len(m) > 0 && m[len(m)-1].Offset == last {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("migration %d: the migrated room receives nothing live any more: last delivered %v of %d; resyncs %d; shards %+v",
					i, offsets(m[max(0, len(m)-3):]), last, recMoving.resyncs.Load(), sub.Stats().Shards)
			}
			time.Sleep(20 * time.Millisecond)
		}
		waitFor(t, "the staying room's last message", func() bool {
			m := recStaying.messages()
			return len(m) > 0 && m[len(m)-1].Offset == lastStaying
		})
		if recMoving.resyncs.Load() == 0 && len(recMoving.messages()) != int(last) {
			t.Errorf("migration %d: messages of the migrated room lost without HandleResync", i)
		}
		t.Logf("migration %d: migrated room: %d of %d delivered, %d resyncs; staying room: %d resyncs; shards %+v",
			i, len(recMoving.messages()), last, recMoving.resyncs.Load(), recStaying.resyncs.Load(), sub.Stats().Shards)
		recMoving.check(t)
	}
	if !sub.Ready() {
		t.Errorf("subscriber not ready after the migrations")
	}
}

// crReplicaOf returns the index in c.Nodes of a replica of master m.
func crReplicaOf(t *testing.T, c *redistest.Cluster, m int) int {
	t.Helper()
	_, port, _ := strings.Cut(c.Addrs()[m], ":")
	for j, n := range c.Nodes {
		if j != m && strings.Contains(n.Command("INFO", "replication"), "master_port:"+port+"\r") {
			return j
		}
	}
	t.Fatalf("master %d has no replica", m)
	return -1
}

// A manual failover (CLUSTER FAILOVER on a replica: the master hands its
// slots over and becomes a replica) keeps the rooms of that master live on
// a subscribed node, and the node Ready.
func TestClusterReviewManualFailover(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	url := clusterURL(c, 3)
	owners := crOwners(t, c)
	pub := newTestRedis(t, RedisConfig{URL: url, NodeID: "mf-pub"})
	sub := newTestRedis(t, RedisConfig{URL: url, NodeID: "mf-sub"})
	m := (owners[keySlot(sub.nodeTopic)] + 1) % 3
	room := crRoomsOn(owners, m, 1, "mf")[0]
	rec := &recorder{}
	subscribe(t, sub, room, rec)
	crPublish(t, pub, room, 0)
	rec.waitMessages(t, 1)

	rep := crReplicaOf(t, c, m)
	c.ManualFailover(rep, 20*time.Second)
	reviewWait(t, "the replica to take the slot", 20*time.Second, func() bool { return crOwners(t, c)[keySlot(roomChannel(room))] == rep })
	c.WaitHealthy(waitTimeout)

	deadline := time.Now().Add(waitTimeout)
	for n := 1; ; n++ {
		last := crPublish(t, pub, room, n)
		time.Sleep(20 * time.Millisecond)
		if ms := rec.messages(); ms[len(ms)-1].Offset == last && sub.Ready() {
			break
		}
		if time.Now().After(deadline) {
			ms := rec.messages()
			t.Fatalf("after a manual failover the room receives nothing live: last delivered %d of %d, %d resyncs, Ready %v, shards %+v",
				ms[len(ms)-1].Offset, last, rec.resyncs.Load(), sub.Ready(), sub.Stats().Shards)
		}
	}
	t.Logf("%d resyncs; shards %+v", rec.resyncs.Load(), sub.Stats().Shards)
}

// A node whose channel is on a master that fails over is back in reach
// once it is Ready again: Send and Post to a session it holds reach the
// session (not ErrNoSession, not the mailbox).
func TestClusterReviewSendAfterNodeChannelFailover(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	url := clusterURL(c, 3)
	owners := crOwners(t, c)
	a := newTestRedis(t, RedisConfig{URL: url, NodeID: "sf-a"})
	b := newTestRedis(t, RedisConfig{URL: url, NodeID: "sf-b"})
	victim := owners[keySlot(a.nodeTopic)]
	// A session whose address is on another master, so that only the
	// node's channel is on the one that fails.
	var session string
	for i := 0; ; i++ {
		session = "sf-s" + strconv.Itoa(i)
		if owners[keySlot(sessionKey(session))] != victim {
			break
		}
	}
	in := &inbox{}
	if err := a.Register(context.Background(), session, in.deliver); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(context.Background(), session, []byte(`"before"`)); err != nil {
		t.Fatalf("Send before the failover: %v", err)
	}
	reviewWait(t, "the payload sent before the failover", 2*time.Second, func() bool { return len(in.all()) == 1 })
	c.Nodes[victim].Kill()
	c.WaitFailover(victim, 30*time.Second)
	waitFor(t, "a Ready again", a.Ready)
	var err error
	deadline := time.Now().Add(waitTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = b.Send(ctx, session, []byte(`"after"`))
		cancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Send after the failover, a Ready: %v", err)
	}
	if err := b.Post(context.Background(), session, []byte(`"posted"`), 10, time.Minute); err != nil {
		t.Fatalf("Post after the failover: %v", err)
	}
	dl := time.Now().Add(5 * time.Second)
	for len(in.all()) < 3 && time.Now().Before(dl) {
		time.Sleep(5 * time.Millisecond)
	}
	if len(in.all()) < 3 {
		t.Fatalf("a Post after the failover did not reach the live session: delivered %q; mailbox %q; a's shards %+v; a registered %v",
			in.all(), c.Command("LRANGE", mailboxKey(session), "0", "-1"), a.Stats().Shards, a.Stats().Sessions)
	}
	t.Logf("delivered %q", in.all())
}

// The members of a node that died leave, with leave events, within the
// presence TTL (Bus.Join), in a room nobody touches, on a node whose rooms
// come and go on another master: each time that master's shard retires and
// starts again, its first connection must not put off the reaping of every
// room (Redis.reapFrom is for connections made again, after which Redis may
// have lost leases).
func TestClusterReviewShardChurnStarvesReaping(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	url := clusterURL(c, 3)
	owners := crOwners(t, c)
	// Renewals every 2s; the shard below starts about once a second.
	const ttl = 6 * time.Second
	s := newTestRedis(t, RedisConfig{URL: url, NodeID: "reap-s", PresenceTTL: ttl})
	d := newTestRedis(t, RedisConfig{URL: url, NodeID: "reap-d", PresenceTTL: ttl})
	nodeMaster := owners[keySlot(s.nodeTopic)]
	room := crRoomsOn(owners, (nodeMaster+1)%3, 1, "reap-room")[0]
	churnMaster := (nodeMaster + 2) % 3
	churnRoom := crRoomsOn(owners, churnMaster, 1, "reap-churn")[0]
	churnAddr := c.Addrs()[churnMaster]
	ctx := context.Background()

	rec := &recorder{}
	subscribe(t, s, room, rec)
	if err := d.Join(ctx, room, Member{User: "u", Session: "dead-1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the join event", func() bool { return len(rec.presence()) == 1 })

	stop := make(chan struct{})
	churned := make(chan int)
	go func() {
		n := 0
		defer func() { churned <- n }()
		hasShard := func() bool {
			for _, sh := range s.Stats().Shards {
				if sh.Addr == churnAddr {
					return true
				}
			}
			return false
		}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := s.Subscribe(ctx, churnRoom, &recorder{}); err == nil {
				n++
			}
			s.Unsubscribe(ctx, churnRoom)
			for hasShard() {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
		}
	}()

	died := time.Now()
	d.Close()
	limit := 2 * ttl // ttl + ttl/3 without the bug
	deadline := died.Add(limit)
	left := false
	for time.Now().Before(deadline) && !left {
		for _, e := range rec.presence() {
			if !e.Join {
				left = true
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	n := <-churned
	if !left {
		t.Errorf("the dead node's member has not left after %v (presence TTL %v) while the shard of another master started %d times", limit, ttl, n)
	} else {
		t.Logf("left after %v; the shard started %d times", time.Since(died).Round(time.Millisecond), n)
	}
}

// A cluster bus closed with shards on every master, leases to renew, and
// one master dead (its shard retrying), leaves no goroutine behind, and no
// connection open on the live masters.
func TestClusterReviewCloseNoLeak(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	url := clusterURL(c, 3)
	owners := crOwners(t, c)
	ignore := []goleak.Option{goleak.IgnoreCurrent(), goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial")}
	bus, err := NewRedis(RedisConfig{URL: url, NodeID: "leak", PresenceTTL: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	reviewWait(t, "ready", waitTimeout, bus.Ready)
	ctx := context.Background()
	var rooms []string
	for m := range 3 {
		rooms = append(rooms, crRoomsOn(owners, m, 3, "leak")...)
	}
	for _, room := range rooms {
		subscribe(t, bus, room, &recorder{})
		if err := bus.Join(ctx, room, Member{User: "u", Session: "s-" + room}); err != nil {
			t.Fatal(err)
		}
	}
	if err := bus.Register(ctx, "leak-sess", func([]byte) {}); err != nil {
		t.Fatal(err)
	}
	victim := (owners[keySlot(bus.nodeTopic)] + 1) % 3
	c.Nodes[victim].Kill()
	reviewWait(t, "parley_redis_connected 0", waitTimeout, func() bool { return metricValue(t, bus.metrics.connected) == 0 })
	time.Sleep(1500 * time.Millisecond) // reconnect attempts, renewals
	bus.Close()
	if err := goleak.Find(ignore...); err != nil {
		t.Errorf("goroutines left after Close: %v", err)
	}
	for i, n := range c.Nodes {
		if i == victim {
			continue
		}
		for _, line := range strings.Split(n.Command("CLIENT", "LIST"), "\n") {
			if strings.Contains(line, "ssub=") && !strings.Contains(line, "ssub=0 ") {
				t.Errorf("master %d: a sharded pub/sub connection is left after Close: %s", i, line)
			}
		}
	}
}

// After a resharding that moved a slot the node holds no room of, the
// node's slot map is stale until a command fails. A Subscribe to a room of
// that slot must not cost the other rooms of the slot's former master
// their delivery: the rooms there that did not move see no resync and no
// gap.
func TestClusterReviewStaleSlotSubscribeDisruptsShard(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	url := clusterURL(c, 3)
	owners := crOwners(t, c)
	pub := newTestRedis(t, RedisConfig{URL: url, NodeID: "stale-pub"})
	sub := newTestRedis(t, RedisConfig{URL: url, NodeID: "stale-sub"})
	src := (owners[keySlot(sub.nodeTopic)] + 1) % 3
	dst := (src + 1) % 3
	rooms := crRoomsOn(owners, src, 2, "stale")
	staying, moved := rooms[0], rooms[1]
	if keySlot(roomChannel(staying)) == keySlot(roomChannel(moved)) {
		t.Fatal("rooms in one slot")
	}
	rec := &recorder{}
	subscribe(t, sub, staying, rec)
	crPublish(t, pub, staying, 0)
	rec.waitMessages(t, 1)

	// The slot of a room nobody has used yet moves; sub has nothing there.
	crMigrateSlot(t, c, keySlot(roomChannel(moved)), src, dst, 3)

	stop := make(chan struct{})
	done := make(chan uint64)
	go func() {
		var last uint64
		for n := 1; ; n++ {
			select {
			case <-stop:
				done <- last
				return
			default:
			}
			if res, err := pub.Publish(context.Background(), staying, Publication{Data: data(n)}); err == nil {
				last = res.Offset
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(100 * time.Millisecond)
	movedRec := &recorder{}
	start := time.Now()
	err := sub.Subscribe(context.Background(), moved, movedRec)
	t.Logf("Subscribe to the room of the moved slot: %v after %v", err, time.Since(start).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond)
	close(stop)
	last := <-done
	waitFor(t, "the staying room's last message", func() bool {
		m := rec.messages()
		return len(m) > 0 && m[len(m)-1].Offset == last
	})
	if err == nil {
		crPublish(t, pub, moved, 0)
		movedRec.waitMessages(t, 1)
	}
	if n, g := rec.resyncs.Load(), rec.gaps.Load(); n != 0 || g != 0 || len(rec.messages()) != int(last) {
		t.Errorf("a room of the former master that did not move: %d resyncs, %d gaps, %d of %d delivered live", n, g, len(rec.messages()), last)
	}
}

// Rooms on every master are subscribed and unsubscribed from many
// goroutines while a master fails over (shards reconnect, hand their rooms
// over, retire and start). Afterwards the bus is Ready, holds no shard for
// the dead master, no handler ran after its Unsubscribe returned, and a
// final Subscribe of each room delivers what is published next.
func TestClusterReviewChurnDuringFailover(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	url := clusterURL(c, 3)
	owners := crOwners(t, c)
	pub := newTestRedis(t, RedisConfig{URL: url, NodeID: "cf-pub"})
	sub := newTestRedis(t, RedisConfig{URL: url, NodeID: "cf-sub"})
	ctx := context.Background()
	var rooms []string
	for m := range 3 {
		rooms = append(rooms, crRoomsOn(owners, m, 8, "cf")...)
	}
	victim := owners[keySlot(roomChannel(rooms[0]))]

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var late []string
	for g := range 6 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Each goroutine has rooms of its own, on every master.
				room := rooms[(i%4)*6+g]
				rec := &recorder{delay: 100 * time.Microsecond}
				if err := sub.Subscribe(ctx, room, rec); err != nil {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				time.Sleep(time.Duration(i%5) * time.Millisecond)
				if err := sub.Unsubscribe(ctx, room); err != nil {
					continue
				}
				rec.stopped.Store(true)
				time.Sleep(2 * time.Millisecond)
				if n := rec.late.Load(); n != 0 {
					mu.Lock()
					late = append(late, fmt.Sprintf("%s: %d calls", room, n))
					mu.Unlock()
				}
			}
		})
	}
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			pub.Publish(pctx, rooms[i%len(rooms)], Publication{Data: data(i)})
			cancel()
		}
	})
	time.Sleep(500 * time.Millisecond)
	c.Nodes[victim].Kill()
	c.WaitFailover(victim, 30*time.Second)
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()

	reviewWait(t, "sub Ready", waitTimeout, sub.Ready)
	for _, l := range late {
		t.Errorf("handler called after Unsubscribe returned: %s", l)
	}
	dead := c.Addrs()[victim]
	reviewWait(t, "no shard for the dead master", waitTimeout, func() bool {
		for _, sh := range sub.Stats().Shards {
			if sh.Addr == dead {
				return false
			}
		}
		return true
	})
	recs := make([]*recorder, len(rooms))
	for i, room := range rooms {
		recs[i] = &recorder{}
		subscribe(t, sub, room, recs[i])
	}
	for i, room := range rooms {
		off := crPublish(t, pub, room, i)
		waitFor(t, "delivery to "+room, func() bool {
			m := recs[i].messages()
			return len(m) > 0 && m[len(m)-1].Offset == off
		})
	}
	// Shards count their channels right: every room plus the node's.
	total := 0
	for _, sh := range sub.Stats().Shards {
		total += sh.Channels
		if !sh.Connected {
			t.Errorf("shard %s not connected", sh.Addr)
		}
	}
	if total != len(rooms)+1 {
		t.Errorf("shards hold %d channels, want %d: %+v", total, len(rooms)+1, sub.Stats().Shards)
	}
}

// The two-step Send and Post of a cluster: to a session whose node is gone,
// Send says ErrNoSession and Post holds, for the next Claim; with one node
// posting while another claims from a live holder, every payload lands
// exactly once (at the old holder, in the claim, or at the new holder), and
// each node's share is in order.
func TestClusterReviewSendPostClaim(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	url := clusterURL(c, 3)
	ctx := context.Background()
	a := newTestRedis(t, RedisConfig{URL: url, NodeID: "spc-a"})
	b := newTestRedis(t, RedisConfig{URL: url, NodeID: "spc-b"})
	p := newTestRedis(t, RedisConfig{URL: url, NodeID: "spc-p"})

	// A gone holder.
	gone, err := NewRedis(RedisConfig{URL: url, NodeID: "spc-gone"})
	if err != nil {
		t.Fatal(err)
	}
	reviewWait(t, "ready", waitTimeout, gone.Ready)
	if err := gone.Register(ctx, "spc-s1", func([]byte) {}); err != nil {
		t.Fatal(err)
	}
	gone.Close()
	if err := p.Send(ctx, "spc-s1", []byte(`1`)); err != ErrNoSession {
		t.Errorf("Send to a session of a closed node: %v, want ErrNoSession", err)
	}
	if err := p.Send(ctx, "spc-never", []byte(`1`)); err != ErrNoSession {
		t.Errorf("Send to a session nobody registered: %v, want ErrNoSession", err)
	}
	for i := range 3 {
		if err := p.Post(ctx, "spc-s1", []byte(strconv.Itoa(i)), 10, time.Minute); err != nil {
			t.Fatalf("Post to a session of a closed node: %v", err)
		}
	}
	if held := claim(t, b, "spc-s1", func([]byte) {}); strings.Join(held, ",") != "0,1,2" {
		t.Errorf("Claim after Posts to a gone node: %q, want 0,1,2", held)
	}

	// Posts while the session moves from a live a to b.
	for round := range 5 {
		s := fmt.Sprintf("spc-m%d", round)
		inA, inB := &inbox{}, &inbox{}
		if err := a.Register(ctx, s, inA.deliver); err != nil {
			t.Fatal(err)
		}
		const n = 300
		half := make(chan struct{})
		errc := make(chan error, 1)
		go func() {
			for i := range n {
				if i == n/3 {
					close(half)
				}
				if err := p.Post(ctx, s, []byte(strconv.Itoa(i)), n, time.Minute); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		<-half
		held := claim(t, b, s, inB.deliver)
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		waitFor(t, "every payload", func() bool { return len(inA.all())+len(held)+len(inB.all()) >= n })
		time.Sleep(50 * time.Millisecond)
		seen := make(map[string]int)
		for _, part := range [][]string{inA.all(), held, inB.all()} {
			prev := -1
			for _, d := range part {
				seen[d]++
				v, _ := strconv.Atoi(d)
				if v <= prev {
					t.Errorf("round %d: out of order: %d after %d", round, v, prev)
				}
				prev = v
			}
		}
		for i := range n {
			if k := seen[strconv.Itoa(i)]; k != 1 {
				t.Errorf("round %d: payload %d landed %d times", round, i, k)
			}
		}
		t.Logf("round %d: %d at a, %d held, %d at b", round, len(inA.all()), len(held), len(inB.all()))
	}
}

// A cluster bus whose seeds do not answer is not Ready, fails Subscribe
// fast, and closes without leaving a goroutine behind.
func TestClusterReviewNoSeedAnswers(t *testing.T) {
	ignore := []goleak.Option{goleak.IgnoreCurrent(), goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial")}
	bus, err := NewRedis(RedisConfig{URL: "redis+cluster://127.0.0.1:1,127.0.0.1:2", NodeID: "noseed"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if bus.Ready() {
		t.Error("Ready with no seed answering")
	}
	start := time.Now()
	if err := bus.Subscribe(context.Background(), "r", &recorder{}); err == nil || time.Since(start) > time.Second {
		t.Errorf("Subscribe with no seed answering: %v after %v", err, time.Since(start))
	}
	bus.Close()
	if err := goleak.Find(ignore...); err != nil {
		t.Errorf("goroutines left after Close: %v", err)
	}
}
