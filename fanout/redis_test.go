package fanout

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/parley-rt/parley/fanout/redistest"
)

// newTestRedis returns a Redis bus for cfg, ready, closed when the test
// ends. An empty NodeID gets a fresh one.
func newTestRedis(t testing.TB, cfg RedisConfig) *Redis {
	t.Helper()
	if cfg.NodeID == "" {
		cfg.NodeID = "node-" + NewEpoch()
	}
	r, err := NewRedis(cfg)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	deadline := time.Now().Add(waitTimeout)
	for !r.Ready() {
		if time.Now().After(deadline) {
			t.Fatalf("bus not ready after %v", waitTimeout)
		}
		time.Sleep(time.Millisecond)
	}
	return r
}

// rawClient returns a plain client of srv, for what the tests look at or do
// behind the bus's back.
func rawClient(t *testing.T, srv *redistest.Server) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	newBus := func(t *testing.T) Bus {
		return newTestRedis(t, RedisConfig{URL: srv.URL(), HistorySize: suiteHistory})
	}
	testBus(t, newBus, func(t *testing.T, _ Bus) Bus { return newBus(t) })
}

func TestRedisConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     RedisConfig
		wantErr string
	}{
		{"empty node id", RedisConfig{URL: "redis://localhost:6379"}, "NodeID"},
		{"bad scheme", RedisConfig{URL: "http://localhost:6379", NodeID: "n"}, "URL"},
		{"empty url", RedisConfig{NodeID: "n"}, "URL"},
		{"negative history size", RedisConfig{URL: "redis://localhost", NodeID: "n", HistorySize: -1}, "HistorySize"},
		{"negative history ttl", RedisConfig{URL: "redis://localhost", NodeID: "n", HistoryTTL: -time.Second}, "HistoryTTL"},
		{"negative presence ttl", RedisConfig{URL: "redis://localhost", NodeID: "n", PresenceTTL: -time.Second}, "PresenceTTL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRedis(tt.cfg)
			if err == nil {
				r.Close()
				t.Fatalf("got no error, want one naming %s", tt.wantErr)
			}
			if !regexp.MustCompile(tt.wantErr).MatchString(err.Error()) {
				t.Errorf("got %q, want it to name %s", err, tt.wantErr)
			}
		})
	}

	r, err := NewRedis(RedisConfig{URL: "redis://localhost:6379/2", NodeID: "n"})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	defer r.Close()
	for _, tt := range []struct {
		name      string
		got, want any
	}{
		{"HistorySize", r.cfg.HistorySize, 1000},
		{"HistoryTTL", r.cfg.HistoryTTL, 24 * time.Hour},
		{"PresenceTTL", r.cfg.PresenceTTL, 30 * time.Second},
		{"meta TTL", time.Duration(r.metaMs) * time.Millisecond, 7 * 24 * time.Hour},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

// A node starts while Redis is down: it is not ready, its calls fail at
// once with ErrRedisUnavailable, and it connects when Redis comes.
func TestRedisStartsWithoutRedis(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	r, err := NewRedis(RedisConfig{URL: srv.URL(), NodeID: "n"})
	if err != nil {
		t.Fatalf("NewRedis with Redis down: %v", err)
	}
	defer r.Close()
	if r.Ready() {
		t.Errorf("Ready with Redis down: got true, want false")
	}
	ctx := context.Background()
	start := time.Now()
	if _, err := r.Publish(ctx, "room", Publication{Data: data(1)}); !errors.Is(err, ErrRedisUnavailable) {
		t.Errorf("Publish with Redis down: got %v, want %v", err, ErrRedisUnavailable)
	}
	if err := r.Subscribe(ctx, "room", &recorder{}); !errors.Is(err, ErrRedisUnavailable) {
		t.Errorf("Subscribe with Redis down: got %v, want %v", err, ErrRedisUnavailable)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("calls with Redis down took %v, want errors at once", d)
	}
	srv.Restart()
	waitFor(t, "the bus to connect", r.Ready)
	if _, err := r.Publish(ctx, "room", Publication{Data: data(1)}); err != nil {
		t.Errorf("Publish once connected: %v", err)
	}
}

// Two nodes on one Redis: messages, Send and presence cross between them.
func TestRedisTwoNodes(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a"})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	ctx := context.Background()
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, b, room, rec)

	t.Run("messages", func(t *testing.T) {
		const n = 100
		res := publishN(t, a, room, n)
		msgs := rec.waitMessages(t, n)
		if got, want := offsets(msgs), seq(1, n); !slices.Equal(got, want) {
			t.Fatalf("offsets on b: got %v, want %v", got, want)
		}
		for i, m := range msgs {
			if string(m.Data) != string(data(i+1)) || m.From != "alice" || m.Epoch != res[i].Epoch || m.Room != room {
				t.Errorf("message %d on b: got %+v", i+1, m)
			}
		}
		rec.check(t)
	})

	t.Run("send", func(t *testing.T) {
		in := &inbox{}
		s := roomName(t, "session")
		if err := b.Register(ctx, s, in.deliver); err != nil {
			t.Fatalf("Register on b: %v", err)
		}
		const n = 100
		var want []string
		for i := range n {
			want = append(want, fmt.Sprintf(`{"n":%d}`, i))
			if err := a.Send(ctx, s, []byte(want[i])); err != nil {
				t.Fatalf("Send from a: %v", err)
			}
		}
		waitFor(t, "every payload on b", func() bool { return len(in.all()) >= n })
		if got := in.all(); !slices.Equal(got, want) {
			t.Errorf("payloads on b: got %d, first %q; want %d in order", len(got), got[:min(3, len(got))], n)
		}
		if err := b.Unregister(ctx, s); err != nil {
			t.Fatalf("Unregister: %v", err)
		}
		if err := a.Send(ctx, s, []byte(`{}`)); !errors.Is(err, ErrNoSession) {
			t.Errorf("Send after Unregister on b: got %v, want %v", err, ErrNoSession)
		}
	})

	t.Run("presence", func(t *testing.T) {
		alice := Member{User: "alice", Session: "s1", Node: "a"}
		bob := Member{User: "bob", Session: "s2", Node: "b"}
		if err := a.Join(ctx, room, alice); err != nil {
			t.Fatalf("Join on a: %v", err)
		}
		if got := allMembers(t, b, room, 0); !slices.Equal(got, []Member{alice}) {
			t.Errorf("presence on b: got %v, want %v", got, []Member{alice})
		}
		others, err := b.Enter(ctx, room, bob, 2)
		if err != nil || !slices.Equal(others, []Member{alice}) {
			t.Errorf("Enter on b: got %v, %v; want %v", others, err, []Member{alice})
		}
		if _, err := a.Enter(ctx, room, Member{User: "carol", Session: "s3"}, 2); !errors.Is(err, ErrFull) {
			t.Errorf("Enter past max on a: got %v, want %v", err, ErrFull)
		}
		if err := a.Leave(ctx, room, alice); err != nil {
			t.Fatalf("Leave on a: %v", err)
		}
		want := []PresenceEvent{{Room: room, Join: true, Member: alice}, {Room: room, Join: true, Member: bob}, {Room: room, Member: alice}}
		waitFor(t, "3 presence events on b", func() bool { return len(rec.presence()) >= len(want) })
		if got := rec.presence(); !slices.Equal(got, want) {
			t.Errorf("presence events on b: got %+v, want %+v", got, want)
		}
	})
}

// A node that dies (stops renewing without leaving) loses its members, with
// leave events on the other nodes, and its sessions within the presence TTL.
func TestRedisLeaseExpiry(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = time.Second
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a", PresenceTTL: ttl})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b", PresenceTTL: ttl})
	ctx := context.Background()
	room, quiet := roomName(t, "room"), roomName(t, "quiet")
	rec := &recorder{}
	subscribe(t, b, room, rec)
	members := []Member{{User: "u1", Session: "s1", Node: "a"}, {User: "u2", Session: "s2", Node: "a"}}
	for _, m := range members {
		if err := a.Join(ctx, room, m); err != nil {
			t.Fatalf("Join: %v", err)
		}
	}
	stay := Member{User: "u3", Session: "s3", Node: "b"}
	if err := b.Join(ctx, quiet, stay); err != nil {
		t.Fatalf("Join on b: %v", err)
	}
	session := roomName(t, "session")
	if err := a.Register(ctx, session, func([]byte) {}); err != nil {
		t.Fatalf("Register: %v", err)
	}
	waitFor(t, "2 joins on b", func() bool { return len(rec.presence()) == 2 })

	// Leases renewed for several TTLs are still there.
	time.Sleep(3 * ttl)
	if got := allMembers(t, b, room, 0); len(got) != 2 {
		t.Fatalf("members of a live node after 3 TTLs: got %v, want 2", got)
	}
	if err := b.Send(ctx, session, []byte(`{}`)); err != nil {
		t.Fatalf("Send to a live node's session: %v", err)
	}

	died := time.Now()
	a.Close() // a dies: it stops renewing and leaves nothing
	waitFor(t, "2 leaves on b", func() bool { return len(rec.presence()) == 4 })
	if d := time.Since(died); d > ttl+ttl/3+500*time.Millisecond {
		t.Errorf("leave events came %v after the node died, want within the TTL (%v) and a renewal period", d, ttl)
	}
	for i, e := range rec.presence()[2:] {
		if e.Join || e.Member != members[i] && e.Member != members[1-i] {
			t.Errorf("event %d on b: got %+v, want a leave of a's members", i+2, e)
		}
	}
	if got := allMembers(t, b, room, 0); len(got) != 0 {
		t.Errorf("presence on b after a died: got %v, want none", got)
	}
	waitFor(t, "Send to a's session to fail", func() bool {
		return errors.Is(b.Send(ctx, session, []byte(`{}`)), ErrNoSession)
	})
	if d := time.Since(died); d > ttl+500*time.Millisecond {
		t.Errorf("a's session was addressable %v after it died, want within the TTL (%v)", d, ttl)
	}
	// b's own member, in a room nobody touched, kept its lease.
	if got := allMembers(t, b, quiet, 0); !slices.Equal(got, []Member{stay}) {
		t.Errorf("b's member: got %v, want %v", got, []Member{stay})
	}
	if st := b.Stats(); st.Members != 1 || st.Rooms != 1 {
		t.Errorf("b's stats: got %+v, want 1 member and 1 room", st)
	}
}

// Redis killed and restarted with its data: the bus goes unready, fails
// publishes quickly meanwhile, reconnects, resyncs its rooms, and history
// and epochs carry on.
func TestRedisRestart(t *testing.T) {
	srv := redistest.StartPersistent(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL()})
	other := newTestRedis(t, RedisConfig{URL: srv.URL()})
	ctx := context.Background()
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, bus, room, rec)
	epoch := publishN(t, other, room, 3)[0].Epoch
	rec.waitMessages(t, 3)

	srv.Kill()
	waitFor(t, "the bus to be unready", func() bool { return !bus.Ready() })
	for i := range 3 {
		start := time.Now()
		_, err := other.Publish(ctx, room, Publication{Data: data(99)})
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("publish %d with Redis down took %v, want an error within 3s", i, d)
		}
		if !errors.Is(err, ErrRedisUnavailable) {
			t.Errorf("publish %d with Redis down: got %v, want %v", i, err, ErrRedisUnavailable)
		}
	}

	srv.RestartKeepingData()
	waitFor(t, "the bus to be ready again", bus.Ready)
	waitFor(t, "HandleResync", func() bool { return rec.resyncs.Load() == 1 })
	waitFor(t, "the publishing bus to be ready again", other.Ready)
	res := publish(t, other, room, Publication{Data: data(4), From: "alice"})
	if res.Epoch != epoch || res.Offset != 4 {
		t.Errorf("publish after the restart: got %v, want offset 4 in epoch %q", res.Position, epoch)
	}
	if got := offsets(rec.waitMessages(t, 4)); !slices.Equal(got, seq(1, 4)) {
		t.Errorf("delivered: got %v, want %v", got, seq(1, 4))
	}
	h := history(t, bus, room, HistoryQuery{Since: &Position{Epoch: epoch, Offset: 1}})
	if got := offsets(h.Messages); !h.Recovered || !slices.Equal(got, seq(2, 4)) || h.Top.Epoch != epoch {
		t.Errorf("history after the restart: got recovered %v offsets %v top %v, want true %v in epoch %q", h.Recovered, got, h.Top, seq(2, 4), epoch)
	}
	if st := bus.Stats(); st.Reconnects != 1 || !st.Connected {
		t.Errorf("stats: got %+v, want 1 reconnect, connected", st)
	}
	rec.check(t)
}

// Redis restarted empty: a new epoch, offsets from 1, positions of the old
// epoch not recovered; presence comes back from the leases.
func TestRedisRestartEmpty(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL(), PresenceTTL: time.Second})
	ctx := context.Background()
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, bus, room, rec)
	alice := Member{User: "alice", Session: "s1", Node: "n"}
	if err := bus.Join(ctx, room, alice); err != nil {
		t.Fatalf("Join: %v", err)
	}
	old := publishN(t, bus, room, 3)[2].Position

	srv.Restart()
	waitFor(t, "the bus to reconnect", func() bool { return bus.Stats().Reconnects == 1 && bus.Ready() })
	waitFor(t, "HandleResync", func() bool { return rec.resyncs.Load() == 1 })
	h := history(t, bus, room, HistoryQuery{Since: &old})
	if h.Recovered || h.Top.Epoch == old.Epoch || h.Top.Epoch == "" || h.Top.Offset != 0 || len(h.Messages) != 0 {
		t.Errorf("history since %v after an empty restart: got recovered %v top %v, %d messages; want false, offset 0 in a new epoch, none",
			old, h.Recovered, h.Top, len(h.Messages))
	}
	res := publish(t, bus, room, Publication{Data: data(1)})
	if res.Offset != 1 || res.Epoch != h.Top.Epoch {
		t.Errorf("publish after an empty restart: got %v, want offset 1 in epoch %q", res.Position, h.Top.Epoch)
	}
	waitFor(t, "the member to be back", func() bool {
		page, err := bus.Presence(ctx, room, PresenceQuery{})
		return err == nil && slices.Equal(page.Members, []Member{alice})
	})
}

// Subscriptions changed while Redis is away are what the bus subscribes to
// when it is back: a room unsubscribed meanwhile stays so, a room whose
// handler was replaced delivers to the new one, after HandleResync.
func TestRedisSubscriptionsAcrossOutage(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL()})
	ctx := context.Background()
	keep, gone := roomName(t, "keep"), roomName(t, "gone")
	old, renewed, left := &recorder{}, &recorder{}, &recorder{}
	subscribe(t, bus, keep, old)
	subscribe(t, bus, gone, left)

	srv.Kill()
	waitFor(t, "the bus to be unready", func() bool { return !bus.Ready() })
	if err := bus.Unsubscribe(ctx, gone); err != nil {
		t.Errorf("Unsubscribe with Redis down: %v", err)
	}
	left.stopped.Store(true)
	if err := bus.Subscribe(ctx, keep, renewed); err != nil {
		t.Errorf("Subscribe of a subscribed room with Redis down: %v", err)
	}
	if err := bus.Subscribe(ctx, roomName(t, "new"), &recorder{}); !errors.Is(err, ErrRedisUnavailable) {
		t.Errorf("Subscribe of a new room with Redis down: got %v, want %v", err, ErrRedisUnavailable)
	}

	srv.Restart()
	waitFor(t, "the bus to be ready again", bus.Ready)
	waitFor(t, "HandleResync on the new handler", func() bool { return renewed.resyncs.Load() == 1 })
	publish(t, bus, keep, Publication{Data: data(1)})
	publish(t, bus, gone, Publication{Data: data(1)})
	renewed.waitMessages(t, 1)
	barrier(t, bus)
	if n := len(old.messages()) + int(old.resyncs.Load()); n != 0 {
		t.Errorf("the replaced handler got %d calls, want 0", n)
	}
	if n := len(left.messages()); n != 0 {
		t.Errorf("the room unsubscribed during the outage got %d messages, want 0", n)
	}
	left.check(t)
	if st := bus.Stats(); st.Rooms != 1 {
		t.Errorf("stats: got %d rooms, want 1", st.Rooms)
	}
}

// A Redis that stops answering with its connections open (a hung host) is
// noticed within a few seconds, not at the next write.
func TestRedisHalfDeadConnection(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL()})
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, bus, room, rec)

	srv.Freeze()
	frozen := time.Now()
	waitFor(t, "the bus to be unready", func() bool { return !bus.Ready() })
	if d := time.Since(frozen); d > pingTimeout+2*pingInterval {
		t.Errorf("a silent connection was noticed after %v, want within %v", d, pingTimeout+2*pingInterval)
	}
	start := time.Now()
	if _, err := bus.Publish(context.Background(), room, Publication{Data: data(1)}); !errors.Is(err, ErrRedisUnavailable) {
		t.Errorf("Publish to a hung Redis: got %v, want %v", err, ErrRedisUnavailable)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Publish to a hung Redis took %v, want an error within 3s", d)
	}
	srv.Thaw()
	waitFor(t, "the bus to be ready again", bus.Ready)
	waitFor(t, "HandleResync", func() bool { return rec.resyncs.Load() == 1 })
	n := len(rec.messages())
	publish(t, bus, room, Publication{Data: data(2)})
	rec.waitMessages(t, n+1)
}

// An idempotency key is one publication whichever node it comes through.
func TestRedisIdempotencyAcrossNodes(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a"})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, b, room, rec)
	first := publish(t, a, room, Publication{Data: data(1), Key: "k"})
	again := publish(t, b, room, Publication{Data: data(2), Key: "k"})
	if want := (PublishResult{Position: first.Position, Duplicate: true}); first.Duplicate || again != want {
		t.Errorf("publishes with one key: got %+v then %+v, want a publication then %+v", first, again, want)
	}
	barrier(t, b)
	if got := rec.messages(); len(got) != 1 || string(got[0].Data) != string(data(1)) {
		t.Errorf("delivered: got %d messages, want the first publication only", len(got))
	}
	if h := history(t, a, room, HistoryQuery{Limit: 10}); len(h.Messages) != 1 || h.Top.Offset != 1 {
		t.Errorf("history: got %d messages, top %v; want 1, offset 1", len(h.Messages), h.Top)
	}
}

// commandCalls returns how many times srv has run cmd ("script|load" for a
// subcommand) since its stats were reset.
func commandCalls(t *testing.T, c *redis.Client, cmd string) int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	m := regexp.MustCompile(`cmdstat_` + regexp.QuoteMeta(cmd) + `:calls=(\d+)`).FindStringSubmatch(info)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// Subscriptions asked for at once go out as few commands, and complete
// promptly.
func TestRedisSubscribeBatching(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL()})
	c := rawClient(t, srv)
	ctx := context.Background()
	if err := c.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	const n = 2000
	rooms := make([]string, n)
	recs := make([]*recorder, n)
	for i := range rooms {
		rooms[i], recs[i] = roomName(t, "room"), &recorder{}
	}
	// each makes the n calls at once, from n goroutines started beforehand.
	each := func(call func(i int) error) time.Duration {
		var wg sync.WaitGroup
		errs := make([]error, n)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				errs[i] = call(i)
			})
		}
		began := time.Now()
		close(start)
		wg.Wait()
		took := time.Since(began)
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		return took
	}
	took := each(func(i int) error { return bus.Subscribe(ctx, rooms[i], recs[i]) })
	if took > 2*time.Second {
		t.Errorf("%d concurrent subscribes took %v, want them prompt", n, took)
	}
	calls := commandCalls(t, c, "subscribe")
	t.Logf("%d subscribes: %v, %d SUBSCRIBE commands", n, took, calls)
	if calls > n/20 {
		t.Errorf("%d subscribes went out as %d SUBSCRIBE commands, want at most %d", n, calls, n/20)
	}
	for _, i := range []int{0, n / 2, n - 1} {
		publish(t, bus, rooms[i], Publication{Data: data(i)})
		recs[i].waitMessages(t, 1)
	}
	if st := bus.Stats(); st.Rooms != n {
		t.Errorf("stats: got %d rooms, want %d", st.Rooms, n)
	}

	each(func(i int) error { return bus.Unsubscribe(ctx, rooms[i]) })
	waitFor(t, "every unsubscription to be confirmed", func() bool {
		bus.mu.Lock()
		defer bus.mu.Unlock()
		return len(bus.subs) == 1
	})
	calls = commandCalls(t, c, "unsubscribe")
	t.Logf("%d unsubscribes: %d UNSUBSCRIBE commands", n, calls)
	if calls > n/20 {
		t.Errorf("%d unsubscribes went out as %d UNSUBSCRIBE commands, want at most %d", n, calls, n/20)
	}
}

// The metrics follow the connection, deliveries, drops and failures.
func TestRedisMetrics(t *testing.T) {
	srv := redistest.Start(t)
	reg := prometheus.NewRegistry()
	bus := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "n", Registerer: reg})
	if _, err := NewRedis(RedisConfig{URL: srv.URL(), NodeID: "m", Registerer: reg}); err == nil {
		t.Errorf("a second bus on the same registry: got no error, want the metrics refused")
	}
	c := rawClient(t, srv)
	ctx := context.Background()
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, bus, room, rec)
	publishN(t, bus, room, 3)
	rec.waitMessages(t, 3)
	// Payloads that go nowhere: undecodable, and for a session not here.
	c.Publish(ctx, roomChannel(room), "m:garbage")
	c.Publish(ctx, bus.nodeTopic, string(encodeSend("gone", []byte(`{}`))))
	waitFor(t, "2 drops", func() bool { return bus.Stats().Dropped == 2 })

	for _, tt := range []struct {
		name string
		m    prometheus.Metric
		want float64
	}{
		{"connected", bus.metrics.connected, 1},
		{"dropped", bus.metrics.dropped, 2},
		{"errors", bus.metrics.errors, 0},
		{"lag observations", bus.metrics.lag, 3},
	} {
		if got := metricValue(t, tt.m); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
	srv.Kill()
	waitFor(t, "connected to drop to 0", func() bool { return metricValue(t, bus.metrics.connected) == 0 })
	if _, err := bus.Publish(ctx, room, Publication{Data: data(1)}); err == nil {
		t.Fatal("Publish with Redis down: got no error")
	}
	if got := metricValue(t, bus.metrics.errors); got != 1 {
		t.Errorf("errors after a failed publish: got %v, want 1", got)
	}
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 6 {
		t.Errorf("metrics registered: got %d, %v; want 6", len(mfs), err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "parley_redis_shards" {
			continue
		}
		for _, m := range mf.GetMetric() {
			want := map[string]float64{"connected": 0, "down": 1}[m.GetLabel()[0].GetValue()]
			if got := m.GetGauge().GetValue(); got != want {
				t.Errorf("parley_redis_shards{state=%q} with Redis down: got %v, want %v", m.GetLabel()[0].GetValue(), got, want)
			}
		}
	}
	bus.Close()
	if mfs, err := reg.Gather(); err != nil || len(mfs) != 0 {
		t.Errorf("metrics after Close: got %d, %v; want none registered", len(mfs), err)
	}
}

// metricValue returns a gauge's or counter's value, or a histogram's count.
func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Histogram != nil:
		return float64(d.Histogram.GetSampleCount())
	}
	t.Fatalf("metric %v has no value", m.Desc())
	return 0
}

// benchPublishDeliver publishes b.N messages on pub, one after another when
// perCPU is 0, else from perCPU goroutines per CPU, and waits for sub's
// handler to have them all.
func benchPublishDeliver(b *testing.B, pub, sub Bus, perCPU int) {
	room := "bench-" + NewEpoch()
	h := &countHandler{done: make(chan struct{})}
	h.want.Store(int64(b.N))
	if err := sub.Subscribe(context.Background(), room, h); err != nil {
		b.Fatal(err)
	}
	msg := Publication{Data: []byte(`{"text":"hello, room"}`), From: "alice"}
	b.ResetTimer()
	if perCPU > 0 {
		b.SetParallelism(perCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := pub.Publish(context.Background(), room, msg); err != nil {
					b.Error(err)
					return
				}
			}
		})
	} else {
		for range b.N {
			if _, err := pub.Publish(context.Background(), room, msg); err != nil {
				b.Fatal(err)
			}
		}
	}
	select {
	case <-h.done:
	case <-time.After(waitTimeout):
		b.Fatalf("delivered %d of %d", h.got.Load(), b.N)
	}
}

// publishBenchmarks are the shapes of load of the publish benchmarks: one
// publisher waiting for each acknowledgement (the round trip), 8 per CPU,
// and 64 in all (throughput under many concurrent callers).
var publishBenchmarks = []struct {
	name   string
	perCPU int
}{
	{"sequential", 0},
	{"parallel", 8},
	{"parallel64", max(1, 64/runtime.GOMAXPROCS(0))},
}

type countHandler struct {
	got, want atomic.Int64
	done      chan struct{}
}

func (h *countHandler) HandleMessage(*Message) {
	if h.got.Add(1) == h.want.Load() {
		close(h.done)
	}
}
func (h *countHandler) HandlePresence(PresenceEvent) {}
func (h *countHandler) HandleResync(string)          {}

// BenchmarkRedisPublishDeliver publishes on one node and delivers on
// another, through a local Redis: sequentially (each publish waits for its
// acknowledgement: the round trip) and from many goroutines (throughput).
func BenchmarkRedisPublishDeliver(b *testing.B) {
	for _, bb := range publishBenchmarks {
		b.Run(bb.name, func(b *testing.B) {
			srv := redistest.Start(b)
			pub := newTestRedis(b, RedisConfig{URL: srv.URL()})
			sub := newTestRedis(b, RedisConfig{URL: srv.URL()})
			benchPublishDeliver(b, pub, sub, bb.perCPU)
		})
	}
}

// BenchmarkMemoryPublishDeliver is the same on the in-memory bus, for
// comparison.
func BenchmarkMemoryPublishDeliver(b *testing.B) {
	for _, bb := range publishBenchmarks {
		b.Run(bb.name, func(b *testing.B) {
			m := NewMemory(MemoryConfig{})
			b.Cleanup(func() { m.Close() })
			benchPublishDeliver(b, m, m, bb.perCPU)
		})
	}
}

// The payloads the bus stores and publishes decode to what was encoded, and
// anything else is refused, never a panic.
func FuzzRedisPayloads(f *testing.F) {
	f.Add("alice", "s1", "node-a", "1764500000123456000:5:alice{}")
	f.Add("", "", "", "")
	f.Add("u:1", "s:2", "n:3", "epoch:3:99:2:ab{\"x\":1}")
	f.Add("ü", "1:", "", "E:18446744073709551616:1:0:")
	f.Fuzz(func(t *testing.T, user, session, node, payload string) {
		m := Member{User: user, Session: session, Node: node}
		if got, ok := decodeMember(encodeMember(m)); !ok || got != m {
			t.Errorf("member %+v: decoded %+v, %v", m, got, ok)
		}
		if s, d, ok := decodeSend(string(encodeSend(session, []byte(payload)))); !ok || s != session || string(d) != payload {
			t.Errorf("send to %q of %q: decoded %q, %q, %v", session, payload, s, d, ok)
		}
		addr := sessionAddr(node, payload)
		if got, ok := addrNode(addr); !ok || got != node {
			t.Errorf("address %q: node %q, %v; want %q", addr, got, ok, node)
		}
		if s, a, r, ok := decodeReplaced(replacedPrefix(session, addr) + user); !ok || s != session || a != addr || r != user {
			t.Errorf("replaced %q by %q for %q: decoded %q, %q, %q, %v", user, addr, session, s, a, r, ok)
		}
		decodeMember(payload)
		decodeSend(payload)
		decodeReplaced(payload)
		addrNode(payload)
		if msg, ok := decodeMessage("room", payload); ok && (msg.Epoch == "" || msg.Room != "room") {
			t.Errorf("message %q: decoded %+v", payload, msg)
		}
	})
}

// A registration replaced elsewhere and then made again here is not dropped
// by the word of the first replacement arriving late: it names the older
// registration.
func TestRedisSessionMovesBack(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a"})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	c := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "c"})
	raw := rawClient(t, srv)
	ctx := context.Background()
	s := roomName(t, "session")
	first, onB, second := &inbox{}, &inbox{}, &inbox{}
	if err := a.Register(ctx, s, first.deliver); err != nil {
		t.Fatal(err)
	}
	firstAddr, err := raw.Get(ctx, sessionKey(s)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Register(ctx, s, onB.deliver); err != nil {
		t.Fatal(err)
	}
	bAddr, err := raw.Get(ctx, sessionKey(s)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Register(ctx, s, second.deliver); err != nil { // and back to a
		t.Fatal(err)
	}
	// b's word to a, as if it came only now.
	if err := raw.Publish(ctx, a.nodeTopic, replacedPrefix(s, bAddr)+firstAddr).Err(); err != nil {
		t.Fatal(err)
	}
	barrier(t, a)
	for _, from := range []*Redis{a, b, c} {
		if err := from.Send(ctx, s, []byte(strconv.Quote(from.cfg.NodeID))); err != nil {
			t.Fatalf("Send from %s: %v", from.cfg.NodeID, err)
		}
	}
	waitFor(t, "3 payloads on a's second registration", func() bool { return len(second.all()) >= 3 })
	barrier(t, a)
	barrier(t, b)
	got := second.all()
	slices.Sort(got)
	if want := []string{`"a"`, `"b"`, `"c"`}; !slices.Equal(got, want) {
		t.Errorf("payloads on a's second registration: got %q, want %q", got, want)
	}
	if n := len(first.all()) + len(onB.all()); n != 0 {
		t.Errorf("payloads on replaced registrations: got %d, want 0", n)
	}
	if st := b.Stats(); st.Sessions != 0 {
		t.Errorf("b's sessions: got %d, want 0", st.Sessions)
	}
}

// A node that missed the word that its registration was replaced drops it
// at its next renewal, and its Sends then go to the new one.
func TestRedisRenewalDropsReplacedRegistration(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a", PresenceTTL: ttl})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b", PresenceTTL: ttl})
	raw := rawClient(t, srv)
	ctx := context.Background()
	s := roomName(t, "session")
	onA, onB := &inbox{}, &inbox{}
	if err := a.Register(ctx, s, onA.deliver); err != nil {
		t.Fatal(err)
	}
	// b registers s, and a does not hear of it.
	addr := sessionAddr(b.life, "test")
	b.smu.Lock()
	b.sessions[s] = &sessionEntry{deliver: onB.deliver, addr: addr}
	b.smu.Unlock()
	if err := raw.Set(ctx, sessionKey(s), addr, ttl).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to drop its registration", func() bool { return a.Stats().Sessions == 0 })
	if err := a.Send(ctx, s, []byte(`"from a"`)); err != nil {
		t.Fatalf("Send from a: %v", err)
	}
	waitFor(t, "the payload on b", func() bool { return len(onB.all()) == 1 })
	if got := onA.all(); len(got) != 0 {
		t.Errorf("payloads on a: got %q, want none", got)
	}
	if got, err := raw.Get(ctx, sessionKey(s)).Result(); err != nil || got != addr {
		t.Errorf("address: got %q, %v; want b's %q", got, err, addr)
	}
}

// An address released elsewhere (the session moved, then ended) is not
// taken back by a node that missed the move; one that Redis lost is.
func TestRedisRenewalAddressReleasedOrLost(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a", PresenceTTL: ttl})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b", PresenceTTL: ttl})
	raw := rawClient(t, srv)
	ctx := context.Background()
	released, lost := roomName(t, "released"), roomName(t, "lost")
	in := &inbox{}
	for _, s := range []string{released, lost} {
		if err := a.Register(ctx, s, in.deliver); err != nil {
			t.Fatal(err)
		}
	}
	lostAddr, err := raw.Get(ctx, sessionKey(lost)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Set(ctx, sessionKey(released), "", ttl).Err(); err != nil {
		t.Fatal(err)
	}
	if err := raw.Del(ctx, sessionKey(lost)).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to drop the released session", func() bool { return a.Stats().Sessions == 1 })
	if err := b.Send(ctx, released, []byte(`{}`)); !errors.Is(err, ErrNoSession) {
		t.Errorf("Send to the released session: got %v, want %v", err, ErrNoSession)
	}
	if err := a.Send(ctx, released, []byte(`{}`)); !errors.Is(err, ErrNoSession) {
		t.Errorf("Send from a to the released session: got %v, want %v", err, ErrNoSession)
	}
	waitFor(t, "the lost address to be back", func() bool {
		got, err := raw.Get(ctx, sessionKey(lost)).Result()
		return err == nil && got == lostAddr
	})
	if err := b.Send(ctx, lost, []byte(`{}`)); err != nil {
		t.Errorf("Send to the session whose address was lost: %v", err)
	}
	waitFor(t, "the payload on a", func() bool { return len(in.all()) == 1 })
}

// Register does not wait for a node that held the session and is gone.
func TestRedisRegisterAfterOwnerGone(t *testing.T) {
	srv := redistest.Start(t)
	a, err := NewRedis(RedisConfig{URL: srv.URL(), NodeID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ready", a.Ready)
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	raw := rawClient(t, srv)
	ctx := context.Background()
	s := roomName(t, "session")
	if err := a.Register(ctx, s, func([]byte) {}); err != nil {
		t.Fatal(err)
	}
	a.Close()
	waitFor(t, "a's channel to have no subscriber", func() bool {
		n, err := raw.PubSubNumSub(ctx, a.nodeTopic).Result()
		return err == nil && n[a.nodeTopic] == 0
	})
	in := &inbox{}
	start := time.Now()
	if err := b.Register(ctx, s, in.deliver); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > handoffTimeout/2 {
		t.Errorf("Register replacing a gone node's registration took %v, want no wait for it", took)
	}
	if err := b.Send(ctx, s, []byte(`{}`)); err != nil {
		t.Fatalf("Send on b: %v", err)
	}
	waitFor(t, "the payload sent on b", func() bool { return len(in.all()) == 1 })
}

// A node that dies without unregistering leaves the address of its session
// naming it until the lease lapses. Send to the session meanwhile reaches
// nobody and says so; Post holds the payload in the session's mailbox, and
// the node that claims the session next gets it.
func TestRedisPostToGoneNode(t *testing.T) {
	srv := redistest.Start(t)
	a, err := NewRedis(RedisConfig{URL: srv.URL(), NodeID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	waitFor(t, "a ready", a.Ready)
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	raw := rawClient(t, srv)
	ctx := context.Background()
	s := roomName(t, "session")
	onA := &inbox{}
	if err := a.Register(ctx, s, onA.deliver); err != nil {
		t.Fatal(err)
	}
	a.Close()
	waitFor(t, "a's channel to have no subscriber", func() bool {
		n, err := raw.PubSubNumSub(ctx, a.nodeTopic).Result()
		return err == nil && n[a.nodeTopic] == 0
	})
	if addr, err := raw.Get(ctx, sessionKey(s)).Result(); err != nil {
		t.Fatalf("a's address: %v", err)
	} else if node, _ := addrNode(addr); node != a.life {
		t.Fatalf("address of the session: got node %q, want a's until the lease lapses", node)
	}

	if err := b.Send(ctx, s, []byte(`"sent"`)); !errors.Is(err, ErrNoSession) {
		t.Errorf("Send to a gone node's session: got %v, want %v", err, ErrNoSession)
	}
	if err := b.Post(ctx, s, []byte(`"posted"`), 10, time.Minute); err != nil {
		t.Fatalf("Post to a gone node's session: %v", err)
	}
	if n, err := raw.LLen(ctx, mailboxKey(s)).Result(); err != nil || n != 1 {
		t.Errorf("mailbox length: got %d, %v; want 1", n, err)
	}
	if ttl, err := raw.PTTL(ctx, mailboxKey(s)).Result(); err != nil || ttl <= 0 || ttl > time.Minute {
		t.Errorf("mailbox TTL: got %v, %v; want at most the minute posted with", ttl, err)
	}

	in := &inbox{}
	start := time.Now()
	if got, want := claim(t, b, s, in.deliver), []string{`"posted"`}; !slices.Equal(got, want) {
		t.Errorf("Claim on b: got %q, want %q", got, want)
	}
	if took := time.Since(start); took > handoffTimeout/2 {
		t.Errorf("Claim replacing a gone node's registration took %v, want no wait for it", took)
	}
	if n, err := raw.Exists(ctx, mailboxKey(s)).Result(); err != nil || n != 0 {
		t.Errorf("mailbox after Claim: got %d keys, %v; want none", n, err)
	}
	if err := b.Send(ctx, s, []byte(`"sent after"`)); err != nil {
		t.Errorf("Send after Claim: %v", err)
	}
	waitFor(t, "the payload sent after Claim", func() bool { return len(in.all()) > 0 })
	if got, want := in.all(), []string{`"sent after"`}; !slices.Equal(got, want) {
		t.Errorf("payloads on b: got %q, want %q", got, want)
	}
	if got := onA.all(); len(got) != 0 {
		t.Errorf("payloads on the gone node: got %q, want none", got)
	}
}

// A renewal renews the node's own members before it reaps: a member whose
// lease lapsed while the node could not renew it (Redis kept its data) is
// renewed, with no leave and join.
func TestRedisRenewBeforeReap(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	bus := newTestRedis(t, RedisConfig{URL: srv.URL(), PresenceTTL: ttl})
	raw := rawClient(t, srv)
	ctx := context.Background()
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, bus, room, rec)
	m := Member{User: "u", Session: "s1", Node: "n"}
	if err := bus.Join(ctx, room, m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the join", func() bool { return len(rec.presence()) == 1 })
	time.Sleep(ttl / 2) // past the reaping grace after connecting
	pe := presenceKeys(room)[1]
	if err := raw.ZAdd(ctx, pe, redis.Z{Score: 1, Member: m.Session}).Err(); err != nil { // lapsed long ago
		t.Fatal(err)
	}
	waitFor(t, "the lease to be renewed", func() bool {
		score, err := raw.ZScore(ctx, pe, m.Session).Result()
		return err == nil && score > 1
	})
	barrier(t, bus)
	if got := rec.presence(); len(got) != 1 {
		t.Errorf("presence events: got %+v, want the first join only", got)
	}
	if got := allMembers(t, bus, room, 0); !slices.Equal(got, []Member{m}) {
		t.Errorf("members: got %v, want %v", got, []Member{m})
	}
}

// Presence is paid only by rooms that have it: subscribed rooms without
// presence cost renewals nothing; a room where the node saw presence, or
// read it, is reaped, with leave events, when a node dies.
func TestRedisPresenceCost(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	bus := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "obs", PresenceTTL: ttl})
	c := rawClient(t, srv)
	ctx := context.Background()
	const n = 50
	rooms := make([]string, n)
	recs := make([]*recorder, n)
	for i := range n {
		rooms[i], recs[i] = roomName(t, "room"), &recorder{}
		subscribe(t, bus, rooms[i], recs[i])
	}
	if err := c.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * ttl / 3) // 5 renewals
	if calls := commandCalls(t, c, "evalsha"); calls != 0 {
		t.Errorf("renewals of %d rooms without presence: %d scripts, want 0", n, calls)
	}

	// Another node joins in room 0, which the bus sees, and in room 1
	// before the bus is subscribed there: it reads room 1's presence.
	dying, err := NewRedis(RedisConfig{URL: srv.URL(), NodeID: "dying", PresenceTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	defer dying.Close()
	waitFor(t, "the dying node ready", dying.Ready)
	late := roomName(t, "late")
	for _, room := range []string{rooms[0], late} {
		if err := dying.Join(ctx, room, Member{User: "u", Session: "s-" + room, Node: "dying"}); err != nil {
			t.Fatal(err)
		}
	}
	lateRec := &recorder{}
	subscribe(t, bus, late, lateRec)
	if page, err := bus.Presence(ctx, late, PresenceQuery{}); err != nil || page.Total != 1 {
		t.Fatalf("Presence of the late room: got %+v, %v; want 1 member", page, err)
	}
	waitFor(t, "the join in room 0", func() bool { return len(recs[0].presence()) == 1 })
	if err := c.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * ttl / 3)
	// The dying node renews 2 rooms, the bus reaps 2, 5 times each.
	if calls := commandCalls(t, c, "evalsha"); calls > 4*7 {
		t.Errorf("renewals with presence in 2 of %d rooms: %d scripts, want about 20", n+1, calls)
	}
	dying.Close()
	for _, rec := range []*recorder{recs[0], lateRec} {
		waitFor(t, "a leave event", func() bool {
			p := rec.presence()
			return len(p) > 0 && !p[len(p)-1].Join
		})
	}
}

// pipelineCounter is a go-redis hook that counts the pipelines of EVALSHA
// calls that a client sends, and the calls in them.
type pipelineCounter struct {
	pipelines, cmds atomic.Int64
}

func (c *pipelineCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (c *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		n := 0
		for _, cmd := range cmds {
			if cmd.Name() == "evalsha" {
				n++
			}
		}
		if n > 0 {
			c.pipelines.Add(1)
			c.cmds.Add(int64(n))
		}
		return next(ctx, cmds)
	}
}

// countPipelines makes c count bus's pipelines from now on.
func countPipelines(bus *Redis) *pipelineCounter {
	c := &pipelineCounter{}
	bus.client.AddHook(c)
	return c
}

// publishConcurrently publishes n messages in room from each of callers
// goroutines at once, and returns the results.
func publishConcurrently(t *testing.T, bus Bus, room string, callers, n int) []PublishResult {
	t.Helper()
	res := make([]PublishResult, callers*n)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range callers {
		wg.Go(func() {
			<-start
			for i := range n {
				r, err := bus.Publish(context.Background(), room, Publication{Data: data(g*n + i)})
				if err != nil {
					errs[g] = err
					return
				}
				res[g*n+i] = r
			}
		})
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return res
}

// checkPublished checks that res, the publishes of one room, took each
// offset from 1 once, in one epoch, and that each caller's (per in a row in
// res) came in the order it made them; and that history and delivery to rec
// agree.
func checkPublished(t *testing.T, bus Bus, room string, rec *recorder, res []PublishResult, per int) {
	t.Helper()
	n := len(res)
	seen := make(map[uint64]bool, n)
	for i, r := range res {
		if r.Epoch != res[0].Epoch || r.Offset < 1 || r.Offset > uint64(n) || seen[r.Offset] || r.Duplicate {
			t.Fatalf("publish %d: got %+v, want a new offset in 1..%d, epoch %q", i, r, n, res[0].Epoch)
		}
		seen[r.Offset] = true
		if i%per > 0 && r.Offset <= res[i-1].Offset {
			t.Errorf("caller %d: offset %d after %d, want its publishes in order", i/per, r.Offset, res[i-1].Offset)
		}
	}
	msgs := rec.waitMessages(t, n)
	if got, want := offsets(msgs), seq(1, uint64(n)); !slices.Equal(got, want) {
		t.Errorf("delivered offsets: got %d, not 1..%d in order", len(got), n)
	}
	byOffset := make(map[uint64]string, n)
	for _, m := range msgs {
		byOffset[m.Offset] = string(m.Data)
	}
	h := history(t, bus, room, HistoryQuery{Limit: n})
	if got := offsets(h.Messages); !slices.Equal(got, seq(1, uint64(n))) || h.Top.Epoch != res[0].Epoch {
		t.Fatalf("history: got %d messages, top %v; want 1..%d in epoch %q", len(got), h.Top, n, res[0].Epoch)
	}
	for _, m := range h.Messages {
		if byOffset[m.Offset] != string(m.Data) {
			t.Errorf("offset %d: history has %s, delivery had %s", m.Offset, m.Data, byOffset[m.Offset])
		}
	}
	rec.check(t)
}

// Concurrent publishes go to Redis in few pipelines, and each gets its own
// offset: offsets, history and delivery agree, and each caller's publishes
// keep their order.
func TestRedisPublishBatching(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL(), HistorySize: 10000})
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, bus, room, rec)
	warm := roomName(t, "warm")
	publish(t, bus, warm, Publication{Data: data(0)}) // Redis has the script
	counter := countPipelines(bus)
	const callers, each = 64, 40
	res := publishConcurrently(t, bus, room, callers, each)
	pipelines, cmds := counter.pipelines.Load(), counter.cmds.Load()
	t.Logf("%d publishes from %d callers: %d pipelines", callers*each, callers, pipelines)
	if cmds != callers*each {
		t.Errorf("commands pipelined: got %d, want %d", cmds, callers*each)
	}
	if pipelines > callers*each/4 {
		t.Errorf("%d concurrent publishes went out as %d pipelines, want at most %d", callers*each, pipelines, callers*each/4)
	}
	checkPublished(t, bus, room, rec, res, each)

	// A lone publish goes out at once, alone.
	before := counter.pipelines.Load()
	publish(t, bus, warm, Publication{Data: data(0)})
	if got := counter.pipelines.Load() - before; got != 1 {
		t.Errorf("pipelines of a lone publish: got %d, want 1", got)
	}
}

// Redis that lost its scripts (SCRIPT FLUSH, as after a restart) answers
// NOSCRIPT: the bus loads the script and sends those publishes again, and
// each is published once.
func TestRedisPublishNoScript(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL(), HistorySize: 10000})
	raw := rawClient(t, srv)
	ctx := context.Background()
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, bus, room, rec)
	if err := raw.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	counter := countPipelines(bus)
	const callers, each = 32, 10
	var res []PublishResult
	for range 3 {
		if err := raw.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		res = append(res, publishConcurrently(t, bus, room, callers, each)...)
	}
	if loads := commandCalls(t, raw, "script|load"); loads < 3 {
		t.Errorf("SCRIPT LOAD calls after 3 flushes: got %d, want at least 3", loads)
	}
	if sent := counter.cmds.Load(); sent <= int64(len(res)) {
		t.Errorf("publishes sent: got %d for %d publications, want those refused with NOSCRIPT sent again", sent, len(res))
	}
	checkPublished(t, bus, room, rec, res, each)
}

// hangPublishers freezes srv and makes every publisher of bus wait on it:
// one publish in room each, whose errors come on the channel returned.
func hangPublishers(t *testing.T, srv *redistest.Server, bus *Redis, room string) <-chan error {
	t.Helper()
	counter := countPipelines(bus)
	publish(t, bus, room, Publication{Data: data(0)}) // Redis has the script
	base := counter.pipelines.Load()
	srv.Freeze()
	t.Cleanup(srv.Thaw)
	errs := make(chan error, publishers)
	for i := range publishers {
		go func() {
			_, err := bus.Publish(context.Background(), room, Publication{Data: []byte(`"hung"`)})
			errs <- err
		}()
		waitFor(t, "a batch in flight", func() bool { return counter.pipelines.Load() == base+int64(1+i) })
	}
	return errs
}

// A caller whose context ends while its publish waits gets the context's
// error at once, and a publish whose caller has left before it was sent is
// not sent.
func TestRedisPublishContext(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL() + "?read_timeout=1s"})
	room := roomName(t, "room")
	hung := hangPublishers(t, srv, bus, room)
	counter := countPipelines(bus)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := bus.Publish(ctx, room, Publication{Data: []byte(`"abandoned"`)})
	if took := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || took > 500*time.Millisecond {
		t.Errorf("Publish with a 100ms deadline behind hung batches: got %v after %v, want %v within about 100ms", err, took, context.DeadlineExceeded)
	}
	for range publishers {
		if err := <-hung; !errors.Is(err, ErrRedisUnavailable) {
			t.Errorf("hung publish: got %v, want %v", err, ErrRedisUnavailable)
		}
	}
	srv.Thaw()
	publish(t, bus, room, Publication{Data: []byte(`"after"`)})
	if got := counter.cmds.Load(); got != 1 {
		t.Errorf("publishes sent since the hung ones: got %d, want 1 (the abandoned one not sent)", got)
	}
	for _, m := range history(t, bus, room, HistoryQuery{Limit: 10}).Messages {
		if string(m.Data) == `"abandoned"` {
			t.Errorf("the abandoned publish is in history at offset %d", m.Offset)
		}
	}
}

// A publish that waited behind batches that Redis does not answer fails
// within the read timeout of its call, not that after its batch is sent,
// and is not sent when it has too little of that time left.
func TestRedisPublishQueuedDeadline(t *testing.T) {
	srv := redistest.Start(t)
	const timeout = 500 * time.Millisecond
	bus := newTestRedis(t, RedisConfig{URL: srv.URL() + "?read_timeout=" + timeout.String()})
	room := roomName(t, "room")
	hung := hangPublishers(t, srv, bus, room)
	counter := countPipelines(bus)
	start := time.Now()
	_, err := bus.Publish(context.Background(), room, Publication{Data: data(1)})
	took := time.Since(start)
	t.Logf("queued publish failed after %v: %v", took, err)
	if !errors.Is(err, ErrRedisUnavailable) {
		t.Errorf("Publish queued behind hung batches: got %v, want %v", err, ErrRedisUnavailable)
	}
	if took > timeout+timeout*3/4 {
		t.Errorf("Publish queued behind hung batches took %v, want about the read timeout (%v)", took, timeout)
	}
	if sent := counter.cmds.Load(); sent != 0 {
		t.Errorf("publishes sent after the hung ones: got %d, want 0", sent)
	}
	for range publishers {
		<-hung
	}
}

// Close answers every publish waiting, queued or in flight, with ErrClosed,
// at once. (Close itself waits for the batches in flight, up to the read
// timeout, as for a lease renewal in flight.)
func TestRedisPublishClose(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL()})
	room := roomName(t, "room")
	hung := hangPublishers(t, srv, bus, room)
	const queued = 10
	errs := make(chan error, queued)
	for range queued {
		go func() {
			_, err := bus.Publish(context.Background(), room, Publication{Data: data(1)})
			errs <- err
		}()
	}
	waitFor(t, "publishes queued", func() bool { return len(bus.publishQueue) == queued })
	start := time.Now()
	closed := make(chan struct{})
	go func() {
		bus.Close()
		close(closed)
	}()
	for range queued + publishers {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("queued publish at Close: got %v, want %v", err, ErrClosed)
			}
		case err := <-hung:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("publish in flight at Close: got %v, want %v", err, ErrClosed)
			}
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("publishes answered %v after Close, want at once", took)
	}
	if _, err := bus.Publish(context.Background(), room, Publication{Data: data(1)}); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close: got %v, want %v", err, ErrClosed)
	}
	<-closed
}
