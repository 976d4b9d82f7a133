package fanout

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout/redistest"
)

// clusterURL is the bus's URL of c's first masters masters.
func clusterURL(c *redistest.Cluster, masters int) string {
	return "redis+cluster://" + strings.Join(c.Addrs()[:masters], ",")
}

// TestRedisCluster runs the bus suite on a Redis Cluster of three masters.
func TestRedisCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	url := clusterURL(c, 3)
	newBus := func(t *testing.T) Bus {
		return newTestRedis(t, RedisConfig{URL: url, HistorySize: suiteHistory})
	}
	testBus(t, newBus, func(t *testing.T, _ Bus) Bus { return newBus(t) })
}

func TestRedisClusterURL(t *testing.T) {
	for _, tt := range []struct {
		url   string
		seeds []string
		user  string
		tls   bool
		bad   bool
	}{
		{url: "redis+cluster://10.0.0.1:7000", seeds: []string{"10.0.0.1:7000"}},
		{url: "redis+cluster://10.0.0.1:7000,10.0.0.2:7001, 10.0.0.3:7002/", seeds: []string{"10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002"}},
		{url: "rediss+cluster://u:p@a.example:6380,b.example:6380/0?dial_timeout=3s", seeds: []string{"a.example:6380", "b.example:6380"}, user: "u", tls: true},
		{url: "redis+cluster://10.0.0.1:7000/1", bad: true},
		{url: "redis+cluster:///", bad: true},
		{url: "redis+cluster://h:1?x=%zz", bad: true},
		{url: "redis://127.0.0.1:6379/2"},
		{url: "cluster://127.0.0.1:6379", bad: true},
	} {
		target, err := parseRedisURL(tt.url)
		if tt.bad {
			if err == nil {
				t.Errorf("%s: no error", tt.url)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.url, err)
			continue
		}
		if tt.seeds == nil {
			if target.single == nil {
				t.Errorf("%s: not a single server", tt.url)
			}
			continue
		}
		o := target.cluster
		if o == nil {
			t.Errorf("%s: not a cluster", tt.url)
			continue
		}
		if fmt.Sprint(o.Addrs) != fmt.Sprint(tt.seeds) || o.Username != tt.user || (o.TLSConfig != nil) != tt.tls {
			t.Errorf("%s: seeds %v user %q tls %v", tt.url, o.Addrs, o.Username, o.TLSConfig != nil)
		}
	}
}

// TestRedisClusterKeySlot: the bus's slots are Redis's.
func TestRedisClusterKeySlot(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	for _, key := range []string{"", "a", "parley:{room}", "parley:{room}:h", "parley:node:{n#1}", "{}x", "x{}{y}", "{a}{b}", "foo{bar", "ünïcødé", "parley:s:{s.k.1}:mb"} {
		want, err := strconv.Atoi(strings.TrimSpace(c.Nodes[0].Command("CLUSTER", "KEYSLOT", key)))
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT %q: %v", key, err)
		}
		if got := keySlot(key); got != want {
			t.Errorf("keySlot(%q) = %d, Redis says %d", key, got, want)
		}
	}
}

// TestRedisClusterOneConnectionPerMaster: rooms on every master take one
// sharded pub/sub connection per master, whatever their number.
func TestRedisClusterOneConnectionPerMaster(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	bus := newTestRedis(t, RedisConfig{URL: clusterURL(c, 3), NodeID: "conns"})
	ctx := context.Background()
	for i := range 200 {
		if err := bus.Subscribe(ctx, "r"+strconv.Itoa(i), &recorder{}); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range c.Nodes {
		subs := 0
		for _, line := range strings.Split(n.Command("CLIENT", "LIST"), "\n") {
			if strings.Contains(line, "ssub=") && !strings.Contains(line, "ssub=0") {
				subs++
			}
		}
		if subs != 1 {
			t.Errorf("master %d: %d sharded pub/sub connections, want 1\n%s", i, subs, n.Command("CLIENT", "LIST"))
		}
	}
	if got := len(bus.Stats().Shards); got != 3 {
		t.Errorf("%d shards, want 3", got)
	}
}

// TestRedisClusterFailover: a master is killed while rooms on every master
// are published to. Its replica takes over; the rooms of its slots get
// HandleResync and go on, the rooms of the other masters see nothing.
func TestRedisClusterFailover(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	// As docs/OPERATIONS.md says to: with Redis's default (yes) every
	// master refuses every command while one shard has no master.
	c.ConfigSet("cluster-require-full-coverage", "no")
	url := clusterURL(c, 3)
	pub := newTestRedis(t, RedisConfig{URL: url, NodeID: "pub"})
	sub := newTestRedis(t, RedisConfig{URL: url, NodeID: "sub"})
	ctx := context.Background()

	// Two rooms per master.
	masterOf := func(room string) int { return c.MasterOf(roomChannel(room)) }
	var rooms []string
	per := map[int]int{}
	for i := 0; len(rooms) < 6 && i < 1000; i++ {
		room := "fo" + strconv.Itoa(i)
		if m := masterOf(room); per[m] < 2 {
			per[m]++
			rooms = append(rooms, room)
		}
	}
	recs := make(map[string]*recorder)
	for _, room := range rooms {
		recs[room] = &recorder{}
		if err := sub.Subscribe(ctx, room, recs[room]); err != nil {
			t.Fatal(err)
		}
	}
	victim := masterOf(rooms[0])
	before := map[string]int{}
	for _, room := range rooms {
		before[room] = masterOf(room)
	}
	stop := make(chan struct{})
	done := make(chan map[string]int)
	// lastData is what the last acknowledged publication of each room
	// carried, read once done has been received.
	lastData := map[string]string{}
	go func() {
		sent := map[string]int{}
		for {
			select {
			case <-stop:
				done <- sent
				return
			default:
			}
			for _, room := range rooms {
				pctx, cancel := context.WithTimeout(ctx, time.Second)
				d := data(sent[room])
				if _, err := pub.Publish(pctx, room, Publication{Data: d}); err == nil {
					sent[room]++
					lastData[room] = string(d)
				}
				cancel()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)
	// A bus whose own channel is on another master stays Ready throughout:
	// a failed master takes out of a load balancer's pool only the nodes
	// whose channel it held.
	buses := map[string]*Redis{"pub": pub, "sub": sub}
	channelOn := map[string]int{"pub": c.MasterOf(pub.nodeTopic), "sub": c.MasterOf(sub.nodeTopic)}
	unready := map[string]*atomic.Int32{"pub": {}, "sub": {}}
	watching := make(chan struct{})
	var watchers sync.WaitGroup
	for name, bus := range buses {
		watchers.Go(func() {
			for {
				select {
				case <-watching:
					return
				case <-time.After(5 * time.Millisecond):
				}
				if !bus.Ready() {
					unready[name].Add(1)
				}
			}
		})
	}
	c.Nodes[victim].Kill()
	killed := time.Now()
	waitFor(t, "parley_redis_connected 0 on the subscribing bus", func() bool { return metricValue(t, sub.metrics.connected) == 0 })
	c.WaitFailover(victim, 30*time.Second)
	c.WaitMasterOf(roomChannel(rooms[0]), 30*time.Second)
	waitFor(t, "the bus ready again", func() bool { return pub.Ready() && sub.Ready() })
	waitFor(t, "every shard connected again", func() bool { return metricValue(t, sub.metrics.connected) == 1 })
	close(watching)
	watchers.Wait()
	for name := range buses {
		if channelOn[name] != victim && unready[name].Load() > 0 {
			t.Errorf("bus %s, whose channel is not on the killed master, was not Ready %d times", name, unready[name].Load())
		}
	}
	if sub.Stats().Reconnects == 0 {
		t.Errorf("the subscribing bus counted no reconnection after its rooms' master failed over")
	}
	t.Logf("failover after %v", time.Since(killed).Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond)
	close(stop)
	sent := <-done

	for _, room := range rooms {
		rec := recs[room]
		onVictim := before[room] == victim
		// The last acknowledged publication arrives live. Its offset is not
		// sent[room]: Redis replicates asynchronously, so the promoted
		// replica may lack the last publications the killed master
		// acknowledged, and counts on from where it stands. A publication
		// that timed out may still have landed after it.
		arrived := func() bool {
			return slices.ContainsFunc(rec.messages(), func(m *Message) bool { return string(m.Data) == lastData[room] })
		}
		for deadline := time.Now().Add(10 * time.Second); !arrived() && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if !arrived() {
			m := rec.messages()
			var got string
			if len(m) > 0 {
				got = fmt.Sprintf("%s at offset %d", m[len(m)-1].Data, m[len(m)-1].Offset)
			}
			t.Fatalf("room %s (on the killed master: %v): the last acknowledged publication, %s (%d acknowledged), never arrived; %d delivered, the last %s, %d resyncs", room, onVictim, lastData[room], sent[room], len(m), got, rec.resyncs.Load())
		}
		resyncs := rec.resyncs.Load()
		m := rec.messages()
		t.Logf("room %s on the killed master: %v; %d published, %d delivered live, the last at offset %d, %d resyncs, %d gaps", room, onVictim, sent[room], len(m), m[len(m)-1].Offset, resyncs, rec.gaps.Load())
		if onVictim {
			if resyncs == 0 {
				t.Errorf("room %s of the killed master: no resync", room)
			}
			continue
		}
		msgs := rec.messages()
		if last := msgs[len(msgs)-1].Offset; resyncs != 0 || rec.gaps.Load() != 0 || uint64(len(msgs)) != last {
			t.Errorf("room %s of a surviving master: %d resyncs, %d gaps, %d of %d delivered", room, resyncs, rec.gaps.Load(), len(msgs), last)
		}
	}
	st := sub.Stats()
	if len(st.Shards) != 3 {
		t.Errorf("shards after failover: %v", st.Shards)
	}
}

// BenchmarkRedisClusterPublishDeliver is BenchmarkRedisPublishDeliver on a
// Redis Cluster of three masters, each with a replica: one room, so one
// shard does the work.
func BenchmarkRedisClusterPublishDeliver(b *testing.B) {
	for _, bb := range publishBenchmarks {
		b.Run(bb.name, func(b *testing.B) {
			c := redistest.StartCluster(b, 3, 1)
			pub := newTestRedis(b, RedisConfig{URL: clusterURL(c, 3)})
			sub := newTestRedis(b, RedisConfig{URL: clusterURL(c, 3)})
			benchPublishDeliver(b, pub, sub, bb.perCPU)
		})
	}
}

// TestRedisClusterNodeAsSingle: a redis:// URL naming a node of a cluster
// works for that node's slots, and the bus says, at error level, what the
// URL should be.
func TestRedisClusterNodeAsSingle(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	var logs syncBuffer
	bus, err := NewRedis(RedisConfig{URL: "redis://" + c.Addrs()[0], NodeID: "single", Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	waitFor(t, "the error", func() bool { return strings.Contains(logs.String(), "redis+cluster://") })
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("logged %q, want an error", logs.String())
	}
	time.Sleep(200 * time.Millisecond)
	if bus.Ready() {
		t.Errorf("the bus of a single-server URL naming a cluster's node is Ready")
	}
}

// TestRedisClusterURLToSingle: a redis+cluster:// URL naming a Redis that is
// not a cluster's node: the bus stays unready and says why, at error level.
func TestRedisClusterURLToSingle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	redistest.Start(t, "--port", port, "--bind", "127.0.0.1")
	var logs syncBuffer
	bus, err := NewRedis(RedisConfig{URL: "redis+cluster://127.0.0.1:" + port, NodeID: "cl", Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	waitFor(t, "the error", func() bool { return strings.Contains(logs.String(), "not a cluster's node") })
	if !strings.Contains(logs.String(), "level=ERROR") || bus.Ready() {
		t.Errorf("Ready %v, logged %q; want unready, and an error", bus.Ready(), logs.String())
	}
}

// syncBuffer is a bytes.Buffer that a logger and a test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// FuzzParseRedisURL: whatever --redis holds, the bus's URL parser answers
// one server, a cluster with seeds, or an error, and does not panic.
func FuzzParseRedisURL(f *testing.F) {
	for _, u := range []string{
		"redis://127.0.0.1:6379/0", "rediss://u:p@h:6380/1?dial_timeout=3s", "unix:///tmp/redis.sock",
		"redis+cluster://10.0.0.1:7000,10.0.0.2:7001", "rediss+cluster://u:p@a:1,b:2/0?read_timeout=1s",
		"redis+cluster://", "redis+cluster://,,,", "redis+cluster://@@/", "redis+cluster://h:1/2",
		"redis+cluster://h:1?addr=x:2", "redis+cluster://[::1]:7000,[::1]:7001",
	} {
		f.Add(u)
	}
	f.Fuzz(func(t *testing.T, u string) {
		target, err := parseRedisURL(u)
		if err != nil {
			return
		}
		if (target.single == nil) == (target.cluster == nil) {
			t.Fatalf("%q: single %v, cluster %v", u, target.single != nil, target.cluster != nil)
		}
		if target.cluster != nil && len(target.cluster.Addrs) == 0 {
			t.Fatalf("%q: a cluster without seeds", u)
		}
	})
}

// TestRedisClusterMasterRestartedEmpty: a master without a replica comes
// back empty (no persistence). Its rooms are subscribed again, with
// HandleResync; the fill from what the node delivered finds the history
// lost and moves the room to a new epoch (Recovered false), which the next
// publication takes. A room of another master keeps its epoch and its
// history, and sees nothing.
func TestRedisClusterMasterRestartedEmpty(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	c.ConfigSet("cluster-require-full-coverage", "no")
	bus := newTestRedis(t, RedisConfig{URL: clusterURL(c, 3), NodeID: "empty"})
	owners := crOwners(t, c)
	// Not the master of the node's own channel: the bus stays Ready.
	victim := (owners[keySlot(bus.nodeTopic)] + 1) % 3
	lost := crRoomsOn(owners, victim, 1, "lost")[0]
	kept := crRoomsOn(owners, (victim+1)%3, 1, "kept")[0]
	lostRec, keptRec := &recorder{}, &recorder{}
	subscribe(t, bus, lost, lostRec)
	subscribe(t, bus, kept, keptRec)
	lostEpoch := publishN(t, bus, lost, 3)[0].Epoch
	keptEpoch := publishN(t, bus, kept, 3)[0].Epoch
	lostRec.waitMessages(t, 3)
	keptRec.waitMessages(t, 3)

	c.Nodes[victim].Restart()
	waitFor(t, "the lost room's resync", func() bool { return lostRec.resyncs.Load() > 0 })

	// The restarted master answers CLUSTERDOWN until it has rejoined the
	// cluster: the fill is tried again, as the gateway's is.
	delivered := Position{Epoch: lostEpoch, Offset: 3}
	var h History
	waitFor(t, "the fill of the lost room", func() bool {
		var err error
		h, err = bus.History(context.Background(), lost, HistoryQuery{Since: &delivered, Delivered: true})
		return err == nil
	})
	if h.Recovered || h.Top.Epoch == lostEpoch {
		t.Fatalf("the fill of the emptied master's room: recovered %v at %v, want not recovered, in a new epoch", h.Recovered, h.Top)
	}
	if res := publish(t, bus, lost, Publication{Data: data(4)}); res.Epoch != h.Top.Epoch || res.Offset != 1 {
		t.Errorf("publish after the restart: %v, want offset 1 of %s", res.Position, h.Top.Epoch)
	}
	lostRec.waitMessages(t, 4)

	k := history(t, bus, kept, HistoryQuery{Since: &Position{Epoch: keptEpoch, Offset: 3}, Delivered: true})
	if !k.Recovered || k.Top != (Position{Epoch: keptEpoch, Offset: 3}) {
		t.Errorf("the other master's room: recovered %v at %v, want recovered at offset 3 of %s", k.Recovered, k.Top, keptEpoch)
	}
	if n := keptRec.resyncs.Load(); n != 0 {
		t.Errorf("the other master's room got %d resyncs", n)
	}
}
