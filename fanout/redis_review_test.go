package fanout

// A reviewer's tests of the Redis bus, each against real redis-server
// processes (redistest). Every test here states the contract it checks; the
// ones that fail show a bug in the bus, not in the test.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/parley-rt/parley/fanout/redistest"
)

// reviewWait polls cond until it holds or d passes.
func reviewWait(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// An Unsubscribe on the subscribing node, while messages from another node
// are being delivered to a slow handler, leaves no handler call running once
// it returns.
func TestReviewUnsubscribeMidDeliveryTwoNodes(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a"})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	ctx := context.Background()
	for round := range 5 {
		room := roomName(t, "room")
		rec := &recorder{delay: 300 * time.Microsecond}
		subscribe(t, b, room, rec)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := a.Publish(ctx, room, Publication{Data: data(i)}); err != nil {
						return
					}
				}
			})
		}
		rec.waitMessages(t, 20)
		if err := b.Unsubscribe(ctx, room); err != nil {
			t.Fatalf("Unsubscribe: %v", err)
		}
		rec.stopped.Store(true)
		time.Sleep(20 * time.Millisecond)
		close(stop)
		wg.Wait()
		barrier(t, b)
		if n := rec.late.Load(); n != 0 {
			t.Fatalf("round %d: %d handler calls after Unsubscribe returned, want 0", round, n)
		}
		rec.check(t)
	}
}

// Unsubscribing rooms while the bus is resyncing them after a Redis restart
// (HandleResync calls in progress on the receive goroutine) leaves no call
// running once Unsubscribe returns.
func TestReviewUnsubscribeDuringResync(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL()})
	ctx := context.Background()
	const n = 200
	rooms := make([]string, n)
	recs := make([]*recorder, n)
	for i := range n {
		rooms[i], recs[i] = roomName(t, "room"), &recorder{delay: 2 * time.Millisecond}
		subscribe(t, bus, rooms[i], recs[i])
	}
	srv.Restart()
	// Wait for the first resync, then unsubscribe every room, in an order
	// unrelated to the bus's.
	reviewWait(t, "a first HandleResync", waitTimeout, func() bool {
		for _, r := range recs {
			if r.resyncs.Load() > 0 {
				return true
			}
		}
		return false
	})
	for i := n - 1; i >= 0; i-- {
		if err := bus.Unsubscribe(ctx, rooms[i]); err != nil {
			t.Fatalf("Unsubscribe: %v", err)
		}
		recs[i].stopped.Store(true)
	}
	reviewWait(t, "the bus to be ready", waitTimeout, bus.Ready)
	barrier(t, bus)
	resynced := 0
	for i, r := range recs {
		if r.resyncs.Load() > 0 {
			resynced++
		}
		if n := r.late.Load(); n != 0 {
			t.Errorf("room %d: %d handler calls after Unsubscribe returned, want 0", i, n)
		}
		if r.overlap.Load() {
			t.Errorf("room %d: calls overlapped", i)
		}
	}
	t.Logf("%d of %d rooms were resynced before they were unsubscribed", resynced, n)
}

// Subscribe on one node, then a publish on another right after it returns:
// the message is delivered, for fresh rooms, for rooms subscribed again after
// an Unsubscribe, and right after the node reconnected.
func TestReviewSubscribeThenPublishOtherNode(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a"})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	ctx := context.Background()
	check := func(t *testing.T, phase string) {
		t.Helper()
		const n = 100
		recs := make([]*recorder, n)
		rooms := make([]string, n)
		for i := range n {
			rooms[i], recs[i] = roomName(t, "room"), &recorder{}
			if i%2 == 1 {
				// Subscribed, unsubscribed and subscribed again at once.
				subscribe(t, b, rooms[i], &recorder{})
				if err := b.Unsubscribe(ctx, rooms[i]); err != nil {
					t.Fatal(err)
				}
			}
			subscribe(t, b, rooms[i], recs[i])
			publish(t, a, rooms[i], Publication{Data: data(i)})
		}
		barrier(t, b)
		for i, r := range recs {
			if got := len(r.messages()); got != 1 {
				t.Errorf("%s: room %d (resubscribed %v): got %d messages, want 1", phase, i, i%2 == 1, got)
			}
		}
	}
	check(t, "connected")
	srv.Restart()
	reviewWait(t, "b to be ready again", waitTimeout, func() bool { return b.Stats().Reconnects == 1 && b.Ready() })
	reviewWait(t, "a to be ready again", waitTimeout, func() bool { return a.Stats().Reconnects == 1 && a.Ready() })
	check(t, "after a reconnect")
}

// Subscribe, Unsubscribe and Subscribe racing for one room from many
// goroutines leave the bus in a consistent state: a final Subscribe that
// returns delivers, and a final Unsubscribe frees the room.
func TestReviewSubscribeUnsubscribeRace(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL()})
	ctx := context.Background()
	for round := range 30 {
		room := roomName(t, "room")
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, 6)
		for g := range 6 {
			wg.Go(func() {
				<-start
				for i := range 20 {
					var err error
					if (g+i)%2 == 0 {
						err = bus.Subscribe(ctx, room, &recorder{})
					} else {
						err = bus.Unsubscribe(ctx, room)
					}
					if err != nil {
						errs[g] = err
						return
					}
				}
			})
		}
		close(start)
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		final := &recorder{}
		subscribe(t, bus, room, final)
		publish(t, bus, room, Publication{Data: data(1)})
		reviewWait(t, fmt.Sprintf("round %d: delivery after the final Subscribe", round), 5*time.Second, func() bool {
			return len(final.messages()) >= 1
		})
		if err := bus.Unsubscribe(ctx, room); err != nil {
			t.Fatal(err)
		}
	}
	reviewWait(t, "every room to be forgotten", 5*time.Second, func() bool {
		bus.mu.Lock()
		defer bus.mu.Unlock()
		return len(bus.subs) == 1
	})
}

// After a Redis restart every subscribed room's handler gets HandleResync
// exactly once.
func TestReviewResyncEveryRoom(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL()})
	const n = 300
	recs := make([]*recorder, n)
	for i := range n {
		recs[i] = &recorder{}
		subscribe(t, bus, roomName(t, "room"), recs[i])
	}
	srv.Restart()
	reviewWait(t, "every room resynced", waitTimeout, func() bool {
		for _, r := range recs {
			if r.resyncs.Load() == 0 {
				return false
			}
		}
		return true
	})
	barrier(t, bus)
	for i, r := range recs {
		if got := r.resyncs.Load(); got != 1 {
			t.Errorf("room %d: %d resyncs, want 1", i, got)
		}
	}
}

// A bus closed while Redis is down leaves no goroutine behind.
func TestReviewCloseDuringOutageNoLeak(t *testing.T) {
	srv := redistest.Start(t)
	ignore := goleak.IgnoreCurrent()
	bus, err := NewRedis(RedisConfig{URL: srv.URL(), NodeID: "n", PresenceTTL: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	reviewWait(t, "ready", waitTimeout, bus.Ready)
	ctx := context.Background()
	subscribe(t, bus, roomName(t, "room"), &recorder{})
	if err := bus.Join(ctx, roomName(t, "room"), Member{User: "u", Session: "s"}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Register(ctx, "sess", func([]byte) {}); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	reviewWait(t, "unready", waitTimeout, func() bool { return !bus.Ready() })
	time.Sleep(400 * time.Millisecond) // a renewal or two, and a reconnect attempt
	bus.Close()
	if err := goleak.Find(ignore); err != nil {
		t.Errorf("goroutines left after Close during an outage: %v", err)
	}
}

// A bus closed while Redis hangs (connections open, nothing answers) leaves
// no goroutine behind either.
func TestReviewCloseWhileRedisHangsNoLeak(t *testing.T) {
	srv := redistest.Start(t)
	ignore := goleak.IgnoreCurrent()
	bus, err := NewRedis(RedisConfig{URL: srv.URL(), NodeID: "n", PresenceTTL: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	reviewWait(t, "ready", waitTimeout, bus.Ready)
	ctx := context.Background()
	room := roomName(t, "room")
	subscribe(t, bus, room, &recorder{})
	if err := bus.Join(ctx, room, Member{User: "u", Session: "s"}); err != nil {
		t.Fatal(err)
	}
	srv.Freeze()
	time.Sleep(300 * time.Millisecond) // a renewal is waiting on the hung Redis
	start := time.Now()
	bus.Close()
	t.Logf("Close with Redis hung took %v", time.Since(start))
	srv.Thaw()
	if err := goleak.Find(ignore); err != nil {
		t.Errorf("goroutines left after Close with Redis hung: %v", err)
	}
}

// 2,000 members across 200 rooms, with a 1s presence TTL, on a bus that
// lives: none is ever reaped (no leave event on an observing node), and the
// presence total holds.
func TestReviewLiveLeasesDoNotLapse(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = time.Second
	live := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "live", PresenceTTL: ttl})
	obs := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "obs", PresenceTTL: ttl})
	ctx := context.Background()
	const rooms, per = 200, 10
	names := make([]string, rooms)
	recs := make([]*recorder, rooms)
	for i := range rooms {
		names[i], recs[i] = roomName(t, "room"), &recorder{}
		subscribe(t, obs, names[i], recs[i])
	}
	var wg sync.WaitGroup
	errs := make([]error, rooms)
	for i := range rooms {
		wg.Go(func() {
			for j := range per {
				if err := live.Join(ctx, names[i], Member{User: "u", Session: fmt.Sprintf("s%03d-%02d", i, j), Node: "live"}); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * ttl)
	leaves := 0
	for _, r := range recs {
		for _, e := range r.presence() {
			if !e.Join {
				leaves++
			}
		}
	}
	if leaves != 0 {
		t.Errorf("%d leave events for members of a live bus, want 0", leaves)
	}
	for i, name := range names {
		page, err := obs.Presence(ctx, name, PresenceQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if page.Total != per {
			t.Errorf("room %d: %d members, want %d", i, page.Total, per)
		}
	}
}

// A member that leaves while renewals run all the time is not brought back by
// one of them.
func TestReviewLeaveNotResurrected(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL(), PresenceTTL: 30 * time.Millisecond}) // a renewal every 10ms
	ctx := context.Background()
	room := roomName(t, "room")
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for g := range 8 {
		wg.Go(func() {
			m := Member{User: "u", Session: fmt.Sprintf("s%d", g), Node: "n"}
			for range 100 {
				if err := bus.Join(ctx, room, m); err != nil {
					errs[g] = err
					return
				}
				if err := bus.Leave(ctx, room, m); err != nil {
					errs[g] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // several renewals
	if got := allMembers(t, bus, room, 0); len(got) != 0 {
		t.Errorf("members after every one left: got %v, want none", got)
	}
	if st := bus.Stats(); st.Members != 0 {
		t.Errorf("leases held after every member left: got %d, want 0", st.Members)
	}
}

// History ages out by HistoryTTL: no messages, positions before the gap
// not recovered, the top still recovered, and new messages recovered from
// the old top.
func TestReviewHistoryTTL(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	bus := newTestRedis(t, RedisConfig{URL: srv.URL(), HistoryTTL: ttl})
	room := roomName(t, "room")
	res := publishN(t, bus, room, 3)
	epoch := res[0].Epoch
	at := func(o uint64) *Position { return &Position{Epoch: epoch, Offset: o} }
	if h := history(t, bus, room, HistoryQuery{Since: at(1)}); !h.Recovered || len(h.Messages) != 2 {
		t.Fatalf("before the TTL: got recovered %v, %d messages; want true, 2", h.Recovered, len(h.Messages))
	}
	time.Sleep(ttl + 200*time.Millisecond)
	for _, tt := range []struct {
		name          string
		q             HistoryQuery
		wantRecovered bool
	}{
		{"newest 10", HistoryQuery{Limit: 10}, false},
		{"since 0", HistoryQuery{Since: at(0)}, false},
		{"since 2", HistoryQuery{Since: at(2)}, false},
		{"since top", HistoryQuery{Since: at(3)}, true},
	} {
		h := history(t, bus, room, tt.q)
		if len(h.Messages) != 0 || h.Recovered != tt.wantRecovered || h.Top != *at(3) {
			t.Errorf("%s after the TTL: got recovered %v, offsets %v, top %v; want %v, none, %v",
				tt.name, h.Recovered, offsets(h.Messages), h.Top, tt.wantRecovered, *at(3))
		}
	}
	publish(t, bus, room, Publication{Data: data(4)})
	if h := history(t, bus, room, HistoryQuery{Since: at(3)}); !h.Recovered || !slices.Equal(offsets(h.Messages), []uint64{4}) {
		t.Errorf("since the old top after a new publish: got recovered %v, offsets %v; want true, [4]", h.Recovered, offsets(h.Messages))
	}
}

// The recovered flag at the edges, including a history stream that Redis
// lost while it kept the room's epoch and offset.
func TestReviewRecoveredEdges(t *testing.T) {
	srv := redistest.Start(t)
	const size = 5
	bus := newTestRedis(t, RedisConfig{URL: srv.URL(), HistorySize: size})
	c := rawClient(t, srv)
	ctx := context.Background()
	room := roomName(t, "room")
	epoch := publishN(t, bus, room, 12)[0].Epoch // offsets 8..12 kept
	at := func(o uint64) *Position { return &Position{Epoch: epoch, Offset: o} }
	for _, tt := range []struct {
		name          string
		q             HistoryQuery
		want          []uint64
		wantRecovered bool
	}{
		{"since top", HistoryQuery{Since: at(12)}, nil, true},
		{"since one below the oldest kept", HistoryQuery{Since: at(7)}, seq(8, 12), true},
		{"since two below the oldest kept", HistoryQuery{Since: at(6)}, nil, false},
		{"since a future offset", HistoryQuery{Since: at(13)}, nil, false},
		{"since a far future offset", HistoryQuery{Since: at(1 << 62)}, nil, false},
		{"since one below, limit 2", HistoryQuery{Since: at(7), Limit: 2}, seq(8, 9), true},
	} {
		h := history(t, bus, room, tt.q)
		if h.Recovered != tt.wantRecovered || !slices.Equal(offsets(h.Messages), tt.want) {
			t.Errorf("%s: got recovered %v, offsets %v; want %v, %v", tt.name, h.Recovered, offsets(h.Messages), tt.wantRecovered, tt.want)
		}
	}
	// Redis loses the stream, keeps meta.
	_, hist := roomKeys(room)
	if err := c.Del(ctx, hist).Err(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name          string
		q             HistoryQuery
		wantRecovered bool
	}{
		{"since top, stream lost", HistoryQuery{Since: at(12)}, true},
		{"since top-1, stream lost", HistoryQuery{Since: at(11)}, false},
	} {
		h := history(t, bus, room, tt.q)
		if h.Recovered != tt.wantRecovered || len(h.Messages) != 0 || h.Top != *at(12) {
			t.Errorf("%s: got recovered %v, offsets %v, top %v; want %v, none, %v", tt.name, h.Recovered, offsets(h.Messages), h.Top, tt.wantRecovered, *at(12))
		}
	}
	res := publish(t, bus, room, Publication{Data: data(13)})
	if res.Position != *at(13) {
		t.Errorf("publish after the stream was lost: got %v, want %v", res.Position, *at(13))
	}
	if h := history(t, bus, room, HistoryQuery{Since: at(12)}); !h.Recovered || !slices.Equal(offsets(h.Messages), []uint64{13}) {
		t.Errorf("since 12 after the stream was lost and 13 published: got %v %v, want true [13]", h.Recovered, offsets(h.Messages))
	}
}

// Idempotency keys: one publication whatever the key's characters and
// however many publishers race with it.
func TestReviewIdempotencyKeys(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a"})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	room := roomName(t, "room")
	for _, key := range []string{"k", "a:b", "{x}", "}{", "k:1", "ü 🎉", "0"} {
		var wg sync.WaitGroup
		const n = 10
		results := make([]PublishResult, n)
		errs := make([]error, n)
		for i := range n {
			bus := a
			if i%2 == 1 {
				bus = b
			}
			wg.Go(func() {
				results[i], errs[i] = bus.Publish(context.Background(), room, Publication{Data: data(i), Key: key})
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		firsts := 0
		for _, r := range results {
			if !r.Duplicate {
				firsts++
			}
		}
		if firsts != 1 {
			t.Errorf("key %q: %d first publications, want 1", key, firsts)
		}
		for _, r := range results {
			if r.Position != results[0].Position {
				t.Errorf("key %q: positions differ: %v and %v", key, r.Position, results[0].Position)
			}
		}
	}
}

// Presence pages while others join and leave: a member present throughout
// is on exactly one page, and no page repeats a member.
func TestReviewPresencePagingChurn(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a"})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	ctx := context.Background()
	room := roomName(t, "room")
	const stable = 300
	for i := range stable {
		if err := a.Join(ctx, room, Member{User: "u", Session: fmt.Sprintf("s%04d", i*3), Node: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m := Member{User: "c", Session: fmt.Sprintf("s%04d", (i%stable)*3+1), Node: "b"}
			b.Join(ctx, room, m)
			if i%3 == 0 {
				b.Leave(ctx, room, m)
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	for _, limit := range []int{1, 7, 64} {
		seen := map[string]int{}
		q := PresenceQuery{Limit: limit}
		for {
			p, err := a.Presence(ctx, room, q)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range p.Members {
				seen[m.Session]++
			}
			if p.Next == "" {
				break
			}
			q.Cursor = p.Next
		}
		for s, n := range seen {
			if n != 1 {
				t.Errorf("limit %d: %s seen %d times", limit, s, n)
			}
		}
		for i := range stable {
			if s := fmt.Sprintf("s%04d", i*3); seen[s] != 1 {
				t.Errorf("limit %d: stable member %s seen %d times, want 1", limit, s, seen[s])
			}
		}
	}
}

// Room names made of every allowed character, and names that look like the
// bus's key suffixes, are rooms of their own.
func TestReviewRoomNameCharacters(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a"})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	ctx := context.Background()
	base := "r" + NewEpoch()
	names := []string{
		"ABCXYZabcxyz0189_.:@-" + base,
		base,
		base + ":m",
		base + ":h",
		base + ":p",
		base + ":k:key",
		":" + base,
		"node:" + base,
		"s:" + base,
		"@-._:" + base,
	}
	recs := make([]*recorder, len(names))
	for i, name := range names {
		recs[i] = &recorder{}
		subscribe(t, b, name, recs[i])
	}
	for i, name := range names {
		for j := range i + 1 {
			publish(t, a, name, Publication{Data: data(j + 1), Key: fmt.Sprintf("key-%d", j)})
		}
		if err := a.Join(ctx, name, Member{User: "u", Session: fmt.Sprintf("s%d", i), Node: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	barrier(t, b)
	for i, name := range names {
		h := history(t, b, name, HistoryQuery{Limit: 100})
		if want := seq(1, uint64(i+1)); !slices.Equal(offsets(h.Messages), want) || h.Top.Offset != uint64(i+1) {
			t.Errorf("room %q: history %v top %v, want %v", name, offsets(h.Messages), h.Top, want)
		}
		if got := offsets(recs[i].messages()); !slices.Equal(got, seq(1, uint64(i+1))) {
			t.Errorf("room %q: delivered %v, want %v", name, got, seq(1, uint64(i+1)))
		}
		if got := allMembers(t, b, name, 0); len(got) != 1 || got[0].Session != fmt.Sprintf("s%d", i) {
			t.Errorf("room %q: members %v", name, got)
		}
		for _, m := range recs[i].messages() {
			if m.Room != name {
				t.Errorf("room %q: got a message of room %q", name, m.Room)
			}
		}
	}
}

// Enter from two buses at once: max holds, and of any two members exactly
// one saw the other.
func TestReviewEnterTwoBuses(t *testing.T) {
	srv := redistest.Start(t)
	buses := []*Redis{
		newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a"}),
		newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"}),
	}
	for round := range 10 {
		room := roomName(t, "call")
		const n, max = 24, 7
		saw := make([][]Member, n)
		errs := make([]error, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				saw[i], errs[i] = buses[i%2].Enter(context.Background(), room, Member{User: "u", Session: fmt.Sprintf("s%02d", i)}, max)
			})
		}
		close(start)
		wg.Wait()
		var in []int
		for i, err := range errs {
			switch {
			case err == nil:
				in = append(in, i)
			case !errors.Is(err, ErrFull):
				t.Fatalf("Enter: %v", err)
			}
		}
		if len(in) != max {
			t.Fatalf("round %d: %d entered, want %d", round, len(in), max)
		}
		sees := func(i, j int) bool {
			return slices.ContainsFunc(saw[i], func(m Member) bool { return m.Session == fmt.Sprintf("s%02d", j) })
		}
		for _, i := range in {
			if !slices.IsSortedFunc(saw[i], func(x, y Member) int {
				if x.Session < y.Session {
					return -1
				}
				if x.Session > y.Session {
					return 1
				}
				return 0
			}) {
				t.Errorf("s%02d saw members out of session order: %v", i, saw[i])
			}
			for _, j := range in {
				if i < j && sees(i, j) == sees(j, i) {
					t.Errorf("round %d: s%02d sees s%02d %v, and the reverse %v; want exactly one", round, i, j, sees(i, j), sees(j, i))
				}
			}
		}
	}
}

// A flood of Sends to a session that has gone is refused at once with
// ErrNoSession, and nothing reaches its old deliver.
func TestReviewSendFloodToGoneSession(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a"})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	ctx := context.Background()
	s := roomName(t, "session")
	in := &inbox{}
	if err := b.Register(ctx, s, in.deliver); err != nil {
		t.Fatal(err)
	}
	if err := b.Unregister(ctx, s); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range 5000 {
		if err := a.Send(ctx, s, []byte(`{}`)); !errors.Is(err, ErrNoSession) {
			t.Fatalf("Send %d to a gone session: got %v, want %v", i, err, ErrNoSession)
		}
	}
	t.Logf("5000 Sends to a gone session: %v", time.Since(start))
	barrier(t, b)
	if got := in.all(); len(got) != 0 {
		t.Errorf("the gone session got %d payloads", len(got))
	}
}

// 10,000 rooms on one bus: subscribed promptly, every one resynced after a
// restart, delivering, and unsubscribed down to nothing.
func TestReviewTenThousandRooms(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL()})
	ctx := context.Background()
	const n = 10000
	rooms := make([]string, n)
	recs := make([]*recorder, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		rooms[i], recs[i] = roomName(t, "room"), &recorder{}
	}
	start := time.Now()
	for i := range n {
		wg.Go(func() { errs[i] = bus.Subscribe(ctx, rooms[i], recs[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d subscribes: %v", n, time.Since(start))
	srv.Restart()
	start = time.Now()
	reviewWait(t, "every room resynced", waitTimeout, func() bool {
		for _, r := range recs {
			if r.resyncs.Load() == 0 {
				return false
			}
		}
		return true
	})
	t.Logf("resync of %d rooms: %v", n, time.Since(start))
	for _, i := range []int{0, n / 2, n - 1} {
		publish(t, bus, rooms[i], Publication{Data: data(i)})
		recs[i].waitMessages(t, 1)
	}
	for i := range n {
		wg.Go(func() { errs[i] = bus.Unsubscribe(ctx, rooms[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	reviewWait(t, "every room forgotten", waitTimeout, func() bool {
		bus.mu.Lock()
		defer bus.mu.Unlock()
		return len(bus.subs) == 1
	})
}

// A handler that is slow but never blocks long (20ms a call, 150 calls)
// costs no reconnect and no resync.
func TestReviewSlowHandler(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL()})
	room := roomName(t, "room")
	rec := &recorder{delay: 20 * time.Millisecond}
	subscribe(t, bus, room, rec)
	publishN(t, bus, room, 150)
	rec.waitMessages(t, 150)
	if st := bus.Stats(); st.Reconnects != 0 || rec.resyncs.Load() != 0 {
		t.Errorf("after a slow handler: %d reconnects, %d resyncs; want none", st.Reconnects, rec.resyncs.Load())
	}
	rec.check(t)
}

// Calls that change leases honour their context: while a renewal waits on
// a Redis that hangs, a Leave with a 200ms deadline returns within about
// that, not after the renewal's own timeout.
func TestReviewLeaseCallsHonourContext(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL(), PresenceTTL: 150 * time.Millisecond}) // a renewal every 50ms
	ctx := context.Background()
	room := roomName(t, "room")
	m := Member{User: "u", Session: "s1", Node: "n"}
	if err := bus.Join(ctx, room, m); err != nil {
		t.Fatal(err)
	}
	srv.Freeze()
	defer srv.Thaw()
	time.Sleep(200 * time.Millisecond) // a renewal is now waiting on the hung Redis
	// A call that takes no lease lock returns at its deadline: the hung
	// Redis alone does not make calls slow.
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	start := time.Now()
	_, err := bus.History(cctx, room, HistoryQuery{Limit: 1})
	cancel()
	if took := time.Since(start); err == nil || took > time.Second {
		t.Fatalf("control: History with a 200ms deadline took %v (err %v), want an error near 200ms", took, err)
	}
	for _, tt := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Leave", func(ctx context.Context) error { return bus.Leave(ctx, room, m) }},
		{"Unregister", func(ctx context.Context) error { return bus.Unregister(ctx, "s1") }},
	} {
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		start := time.Now()
		err := tt.call(cctx)
		took := time.Since(start)
		cancel()
		if err == nil {
			t.Errorf("%s with Redis hung: got no error", tt.name)
		}
		if took > time.Second {
			t.Errorf("%s with a 200ms deadline took %v (err %v), want it to return near its deadline", tt.name, took.Round(time.Millisecond), err)
		}
	}
}

// Register on a second node moves the session: a Send from the first node
// reaches the session where it registered last, as a Send from any other
// node does.
func TestReviewSendAfterSessionMoved(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a"})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	c := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "c"})
	ctx := context.Background()
	s := roomName(t, "session")
	onA, onB := &inbox{}, &inbox{}
	if err := a.Register(ctx, s, onA.deliver); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(ctx, s, onB.deliver); err != nil { // the session resumed on b
		t.Fatal(err)
	}
	if err := c.Send(ctx, s, []byte(`"from c"`)); err != nil {
		t.Fatal(err)
	}
	if err := a.Send(ctx, s, []byte(`"from a"`)); err != nil {
		t.Fatal(err)
	}
	reviewWait(t, "the payload from c on b", waitTimeout, func() bool { return len(onB.all()) >= 1 })
	barrier(t, b)
	if got, want := onB.all(), []string{`"from c"`, `"from a"`}; !slices.Equal(got, want) {
		t.Errorf("payloads on b, where the session registered last: got %q, want %q", got, want)
	}
	if got := onA.all(); len(got) != 0 {
		t.Errorf("payloads on a, which the session left: got %q, want none", got)
	}
}

// A Leave that fails (Redis is down) stops the bus renewing the member:
// once Redis is back the member is gone within the TTL, not renewed by this
// node for as long as it lives.
func TestReviewFailedLeaveStopsRenewing(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = 600 * time.Millisecond
	bus := newTestRedis(t, RedisConfig{URL: srv.URL(), PresenceTTL: ttl})
	ctx := context.Background()
	room := roomName(t, "room")
	m := Member{User: "u", Session: "s1", Node: "n"}
	if err := bus.Join(ctx, room, m); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	reviewWait(t, "unready", waitTimeout, func() bool { return !bus.Ready() })
	if err := bus.Leave(ctx, room, m); !errors.Is(err, ErrRedisUnavailable) {
		t.Fatalf("Leave with Redis down: got %v, want %v", err, ErrRedisUnavailable)
	}
	srv.Restart()
	reviewWait(t, "ready again", waitTimeout, bus.Ready)
	time.Sleep(2 * ttl)
	if got := allMembers(t, bus, room, 0); len(got) != 0 {
		t.Errorf("members %v after the TTL, of a member whose Leave failed: want none", got)
	}
	if st := bus.Stats(); st.Members != 0 {
		t.Errorf("leases renewed: got %d, want 0", st.Members)
	}
}

// A handler that falls far behind makes Redis drop the node's connection
// (its pub/sub output buffer limit): the bus reconnects, resyncs the room,
// and delivers again; nothing grows without bound meanwhile.
func TestReviewSlowHandlerOutputBufferLimit(t *testing.T) {
	srv := redistest.Start(t, "--client-output-buffer-limit", "pubsub 256kb 0 0")
	pub := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "pub"})
	sub := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "sub"})
	room := roomName(t, "room")
	rec := &recorder{delay: 5 * time.Millisecond}
	subscribe(t, sub, room, rec)
	pad := strings.Repeat("x", 1000)
	const n = 3000
	for i := range n {
		publish(t, pub, room, Publication{Data: []byte(fmt.Sprintf(`{"n":%d,"pad":%q}`, i, pad))})
	}
	reviewWait(t, "a resync after Redis dropped the slow node", waitTimeout, func() bool { return rec.resyncs.Load() >= 1 })
	reviewWait(t, "ready again", waitTimeout, sub.Ready)
	got := len(rec.messages())
	t.Logf("delivered %d of %d before the connection was dropped; %d reconnects", got, n, sub.Stats().Reconnects)
	if got >= n {
		t.Errorf("delivered all %d messages: the output buffer limit never applied, the test proves nothing", n)
	}
	// The connection may be dropped more than once (Ready can still be
	// true while the bus drains a connection that Redis has closed): a
	// message published then is lost, which at-most-once delivery allows
	// and HandleResync covers. Publish until one is delivered.
	deadline := time.Now().Add(waitTimeout)
	for delivered := false; !delivered; {
		if time.Now().After(deadline) {
			t.Fatalf("no delivery within %v after the slow node was dropped (%d reconnects)", waitTimeout, sub.Stats().Reconnects)
		}
		res := publish(t, pub, room, Publication{Data: data(1)})
		until := time.Now().Add(2 * time.Second)
		for !delivered && time.Now().Before(until) {
			delivered = slices.ContainsFunc(rec.messages(), func(m *Message) bool { return m.Offset == res.Offset })
			time.Sleep(time.Millisecond)
		}
	}
}

// Publishers on two nodes at once: a third node gets the room's messages in
// offset order, each once.
func TestReviewOrderTwoPublishingNodes(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "a"})
	b := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "b"})
	c := newTestRedis(t, RedisConfig{URL: srv.URL(), NodeID: "c"})
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, c, room, rec)
	const each = 200
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for g, bus := range []*Redis{a, b, a, b} {
		wg.Go(func() {
			for i := range each {
				if _, err := bus.Publish(context.Background(), room, Publication{Data: data(i)}); err != nil {
					errs[g] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	msgs := rec.waitMessages(t, 4*each)
	if got, want := offsets(msgs), seq(1, 4*each); !slices.Equal(got, want) {
		t.Errorf("delivered offsets: got %d, not 1..%d in order", len(got), 4*each)
	}
	rec.check(t)
}
