package fanout

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout/redistest"
)

// nodesTTL is the PresenceTTL of the buses of the list tests: they announce
// themselves every second, and lapse 3 s after their last announcement.
const nodesTTL = 3 * time.Second

// nodes returns bus's list of live nodes, failing the test on an error.
func nodes(t *testing.T, bus interface {
	Nodes(context.Context) ([]NodeInfo, error)
}) []NodeInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	ns, err := bus.Nodes(ctx)
	if err != nil {
		t.Fatalf("Nodes: %v", err)
	}
	return ns
}

// nodeIDs are the IDs of ns, in their order.
func nodeIDs(ns []NodeInfo) []string {
	ids := make([]string, len(ns))
	for i, n := range ns {
		ids[i] = n.ID
	}
	return ids
}

// waitNodes polls bus's list until its IDs are want, and returns it.
func waitNodes(t *testing.T, bus *Redis, d time.Duration, want ...string) []NodeInfo {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ns := nodes(t, bus)
		if slices.Equal(nodeIDs(ns), want) {
			return ns
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s lists %v after %v, want %v", bus.cfg.NodeID, nodeIDs(ns), d, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedisNodes: three nodes on one Redis list each other, with their
// URLs and start times; a node that closes is off every list at once, and
// one that dies without a word (its announcements stop) stays listed until
// its entry lapses, then is gone, its entry removed from Redis too.
func TestRedisNodes(t *testing.T) {
	srv := redistest.Start(t)
	before := time.Now()
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a", PresenceTTL: nodesTTL})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b", PresenceTTL: nodesTTL})
	c := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "c", PresenceTTL: nodesTTL})
	a.SetPublicURL("http://10.0.0.1:8080")
	b.SetPublicURL("https://b.example")
	for _, bus := range []*Redis{a, b, c} {
		waitNodes(t, bus, waitTimeout, "a", "b", "c")
	}
	// Each URL is there once its node has announced it.
	var ns []NodeInfo
	waitFor(t, "the URLs announced", func() bool {
		ns = nodes(t, c)
		return ns[0].URL != "" && ns[1].URL != ""
	})
	after := time.Now()
	want := []struct {
		id, url, life string
		self          bool
	}{
		{"a", "http://10.0.0.1:8080", a.life, false},
		{"b", "https://b.example", b.life, false},
		{"c", "", c.life, true},
	}
	for i, w := range want {
		n := ns[i]
		if n.ID != w.id || n.URL != w.url || n.Life != w.life || n.Self != w.self {
			t.Errorf("node %d: got %+v, want id %s, url %q, life %s, self %v", i, n, w.id, w.url, w.life, w.self)
		}
		// Times come from Redis's clock, converted to this one: within the
		// test's span, give or take a few milliseconds.
		slack := 50 * time.Millisecond
		if n.Started.Before(before.Add(-slack)) || n.Started.After(after) {
			t.Errorf("node %s started %v, want between %v and %v", n.ID, n.Started, before, after)
		}
		if n.LastSeen.Before(n.Started) || n.LastSeen.After(after.Add(slack)) {
			t.Errorf("node %s last seen %v, want after its start %v and before %v", n.ID, n.LastSeen, n.Started, after)
		}
	}

	// Closed: gone at once.
	c.Close()
	for _, bus := range []*Redis{a, b} {
		if got := nodeIDs(nodes(t, bus)); !slices.Equal(got, []string{"a", "b"}) {
			t.Errorf("right after c closed, %s lists %v, want [a b]", bus.cfg.NodeID, got)
		}
	}

	// Dead: b stops announcing, and is listed until its entry lapses.
	b.stopAnnouncing()
	stopped := time.Now()
	if got := nodeIDs(nodes(t, a)); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("right after b died, a lists %v, want [a b] until b's entry lapses", got)
	}
	waitNodes(t, a, b.ann.lapse+waitTimeout, "a")
	if gone := time.Since(stopped); gone > b.ann.lapse+3*time.Second {
		t.Errorf("b left a's list %v after it died, want within its lapse %v and a few seconds of polling", gone, b.ann.lapse)
	}
	// The next announcement of a removes b's entry from Redis.
	raw := rawClient(t, srv)
	waitFor(t, "b's entry removed", func() bool {
		lives, err := raw.HKeys(context.Background(), nodesKey).Result()
		return err == nil && slices.Equal(lives, []string{a.life})
	})
	if ttl := raw.PTTL(context.Background(), nodesKey).Val(); ttl <= 0 || ttl > a.ann.lapse {
		t.Errorf("the list's TTL %v, want above zero and at most the lapse %v", ttl, a.ann.lapse)
	}
}

// TestRedisNodesRestart: a node that restarts under the same ID is another
// life, listed beside the one that died until that one lapses; a Redis that
// comes back empty has each node listed again at once, and no node tries
// to announce itself while Redis is away.
func TestRedisNodesRestart(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a", PresenceTTL: nodesTTL})
	old := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b", PresenceTTL: nodesTTL})
	waitNodes(t, a, waitTimeout, "a", "b")
	old.stopAnnouncing()
	again := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b", PresenceTTL: nodesTTL})
	ns := waitNodes(t, a, waitTimeout, "a", "b", "b")
	if ns[1].Life != old.life || ns[2].Life != again.life || !ns[1].Started.Before(ns[2].Started) {
		t.Errorf("two lives of b: got %+v and %+v, want the old one first, then the new one", ns[1], ns[2])
	}
	waitNodes(t, a, old.ann.lapse+waitTimeout, "a", "b")
	old.Close()

	var logs syncBuffer
	c := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "c", PresenceTTL: nodesTTL, Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	waitNodes(t, c, waitTimeout, "a", "b", "c")
	srv.Kill()
	waitFor(t, "c to see Redis gone", func() bool { return !c.Ready() })
	// Several announcement periods with Redis away: the bus tries none.
	time.Sleep(3 * c.ann.every)
	if strings.Contains(logs.String(), "announcing the node failed") {
		t.Errorf("the log has failed announcements while Redis was known to be away:\n%s", logs.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := c.Nodes(ctx); !errors.Is(err, ErrRedisUnavailable) {
		t.Errorf("Nodes with Redis away: got %v, want %v", err, ErrRedisUnavailable)
	}
	srv.Restart()
	for _, bus := range []*Redis{a, again, c} {
		waitFor(t, "the bus back", bus.Ready)
	}
	// Well within a lapse: each node announces itself once connected again.
	deadline := time.Now().Add(c.ann.lapse)
	for {
		ns = nodes(t, c)
		announced := !slices.ContainsFunc(ns, func(n NodeInfo) bool { return n.LastSeen.IsZero() })
		if slices.Equal(nodeIDs(ns), []string{"a", "b", "c"}) && announced {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v after Redis came back, c lists %+v; want a, b and c, each announced", c.ann.lapse, ns)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedisNodesACL: the Redis user that docs/OPERATIONS.md gives Parley
// may keep the list: a node announces itself, and leaves on Close.
func TestRedisNodesACL(t *testing.T) {
	srv := redistest.Start(t)
	args := append([]string{"ACL", "SETUSER", "parley", "on", ">s3cret"}, strings.Fields(redisACL)...)
	if out := srv.Command(args...); !strings.Contains(out, "OK") {
		t.Fatalf("ACL SETUSER: %s", out)
	}
	url := strings.Replace(srv.URL(), "unix://", "unix://parley:s3cret@", 1)
	bus := newTestRedis(t, RedisConfig{URL: url, NodeID: "acl", PresenceTTL: nodesTTL})
	waitFor(t, "the node announced", func() bool { return !nodes(t, bus)[0].LastSeen.IsZero() })
	bus.Close()
	if n := rawClient(t, srv).HLen(context.Background(), nodesKey).Val(); n != 0 {
		t.Errorf("after Close the list holds %d entries, want none", n)
	}
}

// TestRedisNodesBound: the list holds at most maxNodes nodes. A node that
// would be one more is not listed (and logs it once), yet still finds
// itself and the others in Nodes.
func TestRedisNodesBound(t *testing.T) {
	srv := redistest.Start(t)
	raw := rawClient(t, srv)
	ctx := context.Background()
	now, err := raw.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	// maxNodes nodes seen just now, with a day of life left.
	fields := make([]any, 0, 2*maxNodes)
	for i := range maxNodes {
		seen := now.Add(24 * time.Hour).UnixMilli()
		fields = append(fields, "x"+strconv.Itoa(i)+"#e", encodeNodeEntry(seen, now.UnixMilli(), "x"+strconv.Itoa(i), ""))
	}
	if err := raw.HSet(ctx, nodesKey, fields...).Err(); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	bus := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "late", PresenceTTL: nodesTTL, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	waitFor(t, "the warning", func() bool { return strings.Contains(logs.String(), "list of live nodes is full") })
	time.Sleep(2 * bus.ann.every)
	if n := strings.Count(logs.String(), "list of live nodes is full"); n != 1 {
		t.Errorf("the warning logged %d times, want once", n)
	}
	if n := raw.HLen(ctx, nodesKey).Val(); n != maxNodes {
		t.Errorf("the list holds %d entries, want %d", n, maxNodes)
	}
	ns := nodes(t, bus)
	if len(ns) != maxNodes+1 {
		t.Fatalf("Nodes: got %d, want %d", len(ns), maxNodes+1)
	}
	i := slices.IndexFunc(ns, func(n NodeInfo) bool { return n.Self })
	if i < 0 || ns[i].ID != "late" || !ns[i].LastSeen.IsZero() {
		t.Errorf("Nodes lists itself as %+v, want late, never seen", ns[i])
	}
}

// TestRedisClusterNodes: on a Redis Cluster, the list lives in one slot,
// and the nodes see each other as on a single Redis, whichever master
// serves the slot of each node's own channel.
func TestRedisClusterNodes(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	url := clusterURL(c, 3)
	var buses []*Redis
	for _, id := range []string{"a", "b", "c"} {
		buses = append(buses, newTestRedis(t, RedisConfig{URL: url, NodeID: id, PresenceTTL: nodesTTL}))
	}
	buses[1].SetPublicURL("http://b.example:8080")
	for _, bus := range buses {
		waitNodes(t, bus, waitTimeout, "a", "b", "c")
	}
	waitFor(t, "b's URL", func() bool { return nodes(t, buses[0])[1].URL == "http://b.example:8080" })
	master := c.Nodes[c.MasterOf(nodesKey)]
	if out := master.Command("HLEN", nodesKey); strings.TrimSpace(out) != "3" {
		t.Errorf("HLEN %s on the master of its slot: %q, want 3", nodesKey, out)
	}
	buses[2].Close()
	for _, bus := range buses[:2] {
		if got := nodeIDs(nodes(t, bus)); !slices.Equal(got, []string{"a", "b"}) {
			t.Errorf("right after c closed, %s lists %v, want [a b]", bus.cfg.NodeID, got)
		}
	}
}

// TestMemoryNodes: the in-memory bus lists its own node alone.
func TestMemoryNodes(t *testing.T) {
	start := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	var clock atomic.Pointer[time.Time]
	clock.Store(&start)
	m := NewMemory(MemoryConfig{Now: func() time.Time { return *clock.Load() }})
	later := start.Add(time.Minute)
	clock.Store(&later)
	ns := nodes(t, m)
	if want := []NodeInfo{{Started: start, LastSeen: later, Self: true}}; !slices.Equal(ns, want) {
		t.Errorf("got %+v, want %+v", ns, want)
	}
	m.Close()
	if _, err := m.Nodes(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Nodes after Close: got %v, want %v", err, ErrClosed)
	}
}

// TestNodeEntryEncoding: entries read back as written; anything else in
// the hash is not an entry (and lapses).
func TestNodeEntryEncoding(t *testing.T) {
	want := nodeEntry{seen: 1700000001234, started: 1700000000000, id: "gw:1", url: "http://h:1/x?a=b:c"}
	got, ok := decodeNodeEntry(encodeNodeEntry(want.seen, want.started, want.id, want.url))
	if !ok || got != want {
		t.Errorf("round trip: got %+v, %v; want %+v", got, ok, want)
	}
	for _, bad := range []string{"", "1:2:", "1:2:1:a", "1:2:1:a0:x", "x:2:1:a0:", "1:2:1:a1:", "99999999999999999999:2:1:a0:"} {
		if e, ok := decodeNodeEntry(bad); ok {
			t.Errorf("decode %q: got %+v, want no entry", bad, e)
		}
	}
}
