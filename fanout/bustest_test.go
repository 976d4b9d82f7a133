package fanout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// This file is the behavioural suite every Bus implementation must pass.
// memory_test.go runs it against Memory; the Redis bus runs it unchanged.

// suiteHistory is how many messages per room the buses handed to testBus must
// keep: newBus has to configure its history size to this.
const suiteHistory = 16

// waitTimeout bounds every wait for an asynchronous delivery.
const waitTimeout = 10 * time.Second

// testBus runs the behavioural suite against buses made by newBus. newBus
// returns a fresh, open bus whose rooms keep suiteHistory messages and a
// history TTL long enough not to matter; it registers the bus's Close with
// t.Cleanup. Room names are unique per test, so buses sharing a store (one
// Redis) do not see each other's rooms. newPeer returns another node of
// bus's cluster, as newBus makes them: a bus sharing its store, or bus
// itself for a bus that is a cluster of one node.
func testBus(t *testing.T, newBus func(t *testing.T) Bus, newPeer func(t *testing.T, bus Bus) Bus) {
	tests := []struct {
		name string
		run  func(t *testing.T, newBus func(t *testing.T) Bus)
	}{
		{"offsets per room", testOffsets},
		{"epoch stable", testEpochStable},
		{"delivery in offset order", testDeliveryOrder},
		{"no delivery after unsubscribe", testNoDeliveryAfterUnsubscribe},
		{"no delivery to unsubscribed rooms", testNoDeliveryToOtherRooms},
		{"subscribe twice", testSubscribeTwice},
		{"unsubscribe is idempotent", testUnsubscribeIdempotent},
		{"history", testHistory},
		{"history of an empty room", testHistoryEmptyRoom},
		{"idempotency key", testIdempotencyKey},
		{"idempotency keys are per room", testIdempotencyKeyPerRoom},
		{"presence", testPresence},
		{"presence events", testPresenceEvents},
		{"presence pages", testPresencePages},
		{"presence cursor", testPresenceBadCursor},
		{"enter", testEnter},
		{"enter at once", testEnterConcurrent},
		{"enter after", testEnterAfter},
		{"send", testSend},
		{"send in order", testSendOrder},
		{"post limits", testPostLimits},
		{"concurrent publishers", testConcurrentPublishers},
		{"close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newBus) })
	}
	// These take two nodes of one cluster.
	peerTests := []struct {
		name string
		run  func(t *testing.T, newBus func(t *testing.T) Bus, newPeer func(t *testing.T, bus Bus) Bus)
	}{
		{"post", testPost},
		{"claim moves delivery", testClaimMoves},
		{"post while claiming", testPostWhileClaiming},
	}
	for _, tt := range peerTests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newBus, newPeer) })
	}
}

// roomName returns a room name no other test uses.
func roomName(t *testing.T, base string) string {
	t.Helper()
	return base + "-" + NewEpoch()
}

// data is the JSON body of the n-th test message.
func data(n int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))
}

func publish(t *testing.T, bus Bus, room string, p Publication) PublishResult {
	t.Helper()
	res, err := bus.Publish(context.Background(), room, p)
	if err != nil {
		t.Fatalf("Publish(%s): %v", room, err)
	}
	return res
}

// publishN publishes data(1)..data(n) to room and returns the results.
func publishN(t *testing.T, bus Bus, room string, n int) []PublishResult {
	t.Helper()
	out := make([]PublishResult, n)
	for i := range out {
		out[i] = publish(t, bus, room, Publication{Data: data(i + 1), From: "alice"})
	}
	return out
}

func history(t *testing.T, bus Bus, room string, q HistoryQuery) History {
	t.Helper()
	h, err := bus.History(context.Background(), room, q)
	if err != nil {
		t.Fatalf("History(%s): %v", room, err)
	}
	return h
}

func subscribe(t *testing.T, bus Bus, room string, h Handler) {
	t.Helper()
	if err := bus.Subscribe(context.Background(), room, h); err != nil {
		t.Fatalf("Subscribe(%s): %v", room, err)
	}
}

// waitFor polls cond until it holds or waitTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// offsets returns the offsets of msgs.
func offsets(msgs []*Message) []uint64 {
	out := make([]uint64, len(msgs))
	for i, m := range msgs {
		out[i] = m.Offset
	}
	return out
}

// seq returns from, from+1, ..., to (nil when to < from).
func seq(from, to uint64) []uint64 {
	var out []uint64
	for o := from; o <= to; o++ {
		out = append(out, o)
	}
	return out
}

// recorder is a Handler that records what it gets and checks the Handler
// contract: calls never overlap, offsets rise by exactly 1, and nothing comes
// after stop.
type recorder struct {
	mu     sync.Mutex
	msgs   []*Message
	events []PresenceEvent

	inCall  atomic.Int32
	overlap atomic.Bool
	gaps    atomic.Int32 // messages whose offset is not the previous + 1
	stopped atomic.Bool  // set once the test has unsubscribed
	late    atomic.Int32 // calls running after stopped
	resyncs atomic.Int32

	// delay makes each call take this long, widening the window in which
	// a call could still run when Unsubscribe returns.
	delay time.Duration
}

func (r *recorder) enter() {
	if r.inCall.Add(1) > 1 {
		r.overlap.Store(true)
	}
	if r.stopped.Load() {
		r.late.Add(1)
	}
	if r.delay > 0 {
		time.Sleep(r.delay)
	}
}

// exit counts a call still running once the test has unsubscribed: stopped is
// set only after Unsubscribe returned.
func (r *recorder) exit() {
	if r.stopped.Load() {
		r.late.Add(1)
	}
	r.inCall.Add(-1)
}

func (r *recorder) HandleMessage(m *Message) {
	r.enter()
	defer r.exit()
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := len(r.msgs); n > 0 && m.Offset != r.msgs[n-1].Offset+1 {
		r.gaps.Add(1)
	}
	r.msgs = append(r.msgs, m)
}

func (r *recorder) HandlePresence(e PresenceEvent) {
	r.enter()
	defer r.exit()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) HandleResync(room string) {
	r.enter()
	defer r.exit()
	r.resyncs.Add(1)
}

func (r *recorder) messages() []*Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

func (r *recorder) presence() []PresenceEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// waitMessages waits until r has at least n messages and returns them.
func (r *recorder) waitMessages(t *testing.T, n int) []*Message {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d messages", n), func() bool { return len(r.messages()) >= n })
	return r.messages()
}

// check fails the test if r saw the Handler contract broken.
func (r *recorder) check(t *testing.T) {
	t.Helper()
	if r.overlap.Load() {
		t.Errorf("handler calls overlapped")
	}
	if n := r.gaps.Load(); n != 0 {
		t.Errorf("got %d offset gaps or reorders, want 0", n)
	}
	if n := r.late.Load(); n != 0 {
		t.Errorf("got %d handler calls after Unsubscribe returned, want 0", n)
	}
}

func testOffsets(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	a, b := roomName(t, "a"), roomName(t, "b")
	// Interleave the rooms: each counts on its own.
	var gotA, gotB []uint64
	for i := range 5 {
		gotA = append(gotA, publish(t, bus, a, Publication{Data: data(i)}).Offset)
		if i%2 == 0 {
			gotB = append(gotB, publish(t, bus, b, Publication{Data: data(i)}).Offset)
		}
	}
	if want := seq(1, 5); !slices.Equal(gotA, want) {
		t.Errorf("room a offsets: got %v, want %v", gotA, want)
	}
	if want := seq(1, 3); !slices.Equal(gotB, want) {
		t.Errorf("room b offsets: got %v, want %v", gotB, want)
	}
	for _, tt := range []struct {
		name string
		room string
		want uint64
	}{
		{"a", a, 5},
		{"b", b, 3},
	} {
		if got := history(t, bus, tt.room, HistoryQuery{}).Top.Offset; got != tt.want {
			t.Errorf("room %s top: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func testEpochStable(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	room, other := roomName(t, "room"), roomName(t, "other")
	rec := &recorder{}
	subscribe(t, bus, room, rec)
	res := publishN(t, bus, room, 5)
	epoch := res[0].Epoch
	if epoch == "" {
		t.Fatalf("got empty epoch")
	}
	for i, r := range res {
		if r.Epoch != epoch {
			t.Errorf("publish %d epoch: got %q, want %q", i+1, r.Epoch, epoch)
		}
	}
	for _, m := range rec.waitMessages(t, 5) {
		if m.Epoch != epoch {
			t.Errorf("message %d epoch: got %q, want %q", m.Offset, m.Epoch, epoch)
		}
	}
	h := history(t, bus, room, HistoryQuery{Limit: 10})
	if h.Top.Epoch != epoch {
		t.Errorf("history top epoch: got %q, want %q", h.Top.Epoch, epoch)
	}
	for _, m := range h.Messages {
		if m.Epoch != epoch {
			t.Errorf("history message %d epoch: got %q, want %q", m.Offset, m.Epoch, epoch)
		}
	}
	// Another room's activity does not move this room's epoch.
	publishN(t, bus, other, 3)
	if got := history(t, bus, room, HistoryQuery{}).Top.Epoch; got != epoch {
		t.Errorf("epoch after publishing elsewhere: got %q, want %q", got, epoch)
	}
}

func testDeliveryOrder(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, bus, room, rec)
	const n = 50
	res := publishN(t, bus, room, n)
	msgs := rec.waitMessages(t, n)
	if got, want := offsets(msgs), seq(1, n); !slices.Equal(got, want) {
		t.Fatalf("delivered offsets: got %v, want %v", got, want)
	}
	for i, m := range msgs {
		if m.Room != room || string(m.Data) != string(data(i+1)) || m.From != "alice" || m.Epoch != res[i].Epoch {
			t.Errorf("message %d: got room %q data %s from %q epoch %q, want %q %s %q %q",
				i+1, m.Room, m.Data, m.From, m.Epoch, room, data(i+1), "alice", res[i].Epoch)
		}
		if m.Time == 0 {
			t.Errorf("message %d: got Time 0, want when the bus accepted it", i+1)
		}
	}
	rec.check(t)
}

func testNoDeliveryAfterUnsubscribe(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	for round := range 5 {
		room := roomName(t, "room")
		rec := &recorder{delay: 200 * time.Microsecond}
		subscribe(t, bus, room, rec)

		// Publish continuously from a few goroutines while unsubscribing, so
		// that Unsubscribe races deliveries in progress.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var published atomic.Int64
		var pubErr atomic.Value
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := bus.Publish(context.Background(), room, Publication{Data: data(i)}); err != nil {
						pubErr.Store(err)
						return
					}
					published.Add(1)
				}
			}()
		}
		rec.waitMessages(t, 5)
		if err := bus.Unsubscribe(context.Background(), room); err != nil {
			t.Fatalf("Unsubscribe: %v", err)
		}
		rec.stopped.Store(true)
		after := published.Load()
		waitFor(t, "20 publishes after Unsubscribe", func() bool { return published.Load() >= after+20 || pubErr.Load() != nil })
		close(stop)
		wg.Wait()
		if err := pubErr.Load(); err != nil {
			t.Fatalf("Publish: %v", err)
		}

		// A delivery in a room published to later marks when everything
		// published before it would have arrived.
		barrier(t, bus)
		if n := rec.late.Load(); n != 0 {
			t.Fatalf("round %d: got %d handler calls running after Unsubscribe returned, want 0", round, n)
		}
		rec.check(t)
		if got := rec.messages(); len(got) == 0 || got[0].Offset != 1 {
			t.Errorf("round %d: got first offset %v, want 1", round, offsets(got))
		}
	}
}

// barrier publishes to a fresh room and waits for its delivery, so that a
// bus delivering asynchronously has delivered what was published before.
func barrier(t *testing.T, bus Bus) {
	t.Helper()
	room := roomName(t, "barrier")
	rec := &recorder{}
	subscribe(t, bus, room, rec)
	publish(t, bus, room, Publication{Data: data(0)})
	rec.waitMessages(t, 1)
	if err := bus.Unsubscribe(context.Background(), room); err != nil {
		t.Fatalf("Unsubscribe(barrier): %v", err)
	}
}

func testNoDeliveryToOtherRooms(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	subscribed, other := roomName(t, "subscribed"), roomName(t, "other")
	rec := &recorder{}
	subscribe(t, bus, subscribed, rec)
	publishN(t, bus, other, 3)
	publish(t, bus, subscribed, Publication{Data: data(1)})
	publishN(t, bus, other, 3)
	rec.waitMessages(t, 1)
	barrier(t, bus)
	got := rec.messages()
	if len(got) != 1 || got[0].Room != subscribed {
		rooms := make([]string, len(got))
		for i, m := range got {
			rooms[i] = m.Room
		}
		t.Errorf("got messages of rooms %v, want one of %s", rooms, subscribed)
	}
}

func testSubscribeTwice(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	room := roomName(t, "room")
	first, second, third := &recorder{}, &recorder{}, &recorder{}
	subscribe(t, bus, room, first)
	publish(t, bus, room, Publication{Data: data(1)})
	first.waitMessages(t, 1)
	// Subscribing again replaces the handler.
	subscribe(t, bus, room, second)
	publish(t, bus, room, Publication{Data: data(2)})
	second.waitMessages(t, 1)
	if err := bus.Unsubscribe(context.Background(), room); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	// After Unsubscribe the room can be subscribed again.
	subscribe(t, bus, room, third)
	publish(t, bus, room, Publication{Data: data(3)})
	third.waitMessages(t, 1)
	barrier(t, bus)
	for _, tt := range []struct {
		name string
		rec  *recorder
		want []uint64
	}{{"first", first, []uint64{1}}, {"second", second, []uint64{2}}, {"third", third, []uint64{3}}} {
		if got := offsets(tt.rec.messages()); !slices.Equal(got, tt.want) {
			t.Errorf("%s handler offsets: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func testUnsubscribeIdempotent(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	ctx := context.Background()
	room := roomName(t, "room")
	if err := bus.Unsubscribe(ctx, room); err != nil {
		t.Fatalf("Unsubscribe of a room never subscribed: %v", err)
	}
	rec := &recorder{}
	subscribe(t, bus, room, rec)
	for i := range 2 {
		if err := bus.Unsubscribe(ctx, room); err != nil {
			t.Fatalf("Unsubscribe #%d: %v", i+1, err)
		}
	}
	rec.stopped.Store(true)
	publish(t, bus, room, Publication{Data: data(1)})
	barrier(t, bus)
	if got := rec.messages(); len(got) != 0 {
		t.Errorf("got %d messages after Unsubscribe, want 0", len(got))
	}
	rec.check(t)
}

func testHistory(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	room := roomName(t, "room")
	const published = suiteHistory + 4 // offsets 1..4 have left history
	const oldest = published - suiteHistory + 1
	epoch := publishN(t, bus, room, published)[0].Epoch
	at := func(off uint64) *Position { return &Position{Epoch: epoch, Offset: off} }

	tests := []struct {
		name          string
		q             HistoryQuery
		wantOffsets   []uint64
		wantRecovered bool
	}{
		{name: "no since, no limit", q: HistoryQuery{}},
		{name: "newest 3", q: HistoryQuery{Limit: 3}, wantOffsets: seq(published-2, published)},
		{name: "limit above what is kept", q: HistoryQuery{Limit: 1000}, wantOffsets: seq(oldest, published)},
		{name: "since within history", q: HistoryQuery{Since: at(10)}, wantOffsets: seq(11, published), wantRecovered: true},
		{name: "since within history, limited", q: HistoryQuery{Since: at(10), Limit: 2}, wantOffsets: seq(11, 12), wantRecovered: true},
		{name: "since just before the oldest kept", q: HistoryQuery{Since: at(oldest - 1)}, wantOffsets: seq(oldest, published), wantRecovered: true},
		{name: "since beyond kept history", q: HistoryQuery{Since: at(oldest - 2)}},
		{name: "since 0 after history moved on", q: HistoryQuery{Since: at(0)}},
		{name: "since top", q: HistoryQuery{Since: at(published)}, wantRecovered: true},
		{name: "since above top", q: HistoryQuery{Since: at(published + 1)}},
		{name: "wrong epoch", q: HistoryQuery{Since: &Position{Epoch: "not-" + epoch, Offset: 10}}},
		{name: "empty epoch", q: HistoryQuery{Since: &Position{Offset: 10}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := history(t, bus, room, tt.q)
			if want := (Position{Epoch: epoch, Offset: published}); h.Top != want {
				t.Errorf("top: got %v, want %v", h.Top, want)
			}
			if got := offsets(h.Messages); !slices.Equal(got, tt.wantOffsets) {
				t.Errorf("offsets: got %v, want %v", got, tt.wantOffsets)
			}
			if h.Recovered != tt.wantRecovered {
				t.Errorf("recovered: got %v, want %v", h.Recovered, tt.wantRecovered)
			}
			for _, m := range h.Messages {
				if m.Room != room || m.Epoch != epoch || string(m.Data) != string(data(int(m.Offset))) {
					t.Errorf("message %d: got room %q epoch %q data %s, want %q %q %s",
						m.Offset, m.Room, m.Epoch, m.Data, room, epoch, data(int(m.Offset)))
				}
			}
		})
	}
}

func testHistoryEmptyRoom(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	room := roomName(t, "room")
	h := history(t, bus, room, HistoryQuery{Limit: 10})
	if h.Top.Offset != 0 || h.Top.Epoch == "" || len(h.Messages) != 0 {
		t.Fatalf("empty room: got top %v and %d messages, want offset 0, an epoch and none", h.Top, len(h.Messages))
	}
	empty := h.Top
	h = history(t, bus, room, HistoryQuery{Since: &empty})
	if !h.Recovered || len(h.Messages) != 0 || h.Top != empty {
		t.Errorf("since the empty position: got recovered %v, %d messages, top %v; want true, 0, %v",
			h.Recovered, len(h.Messages), h.Top, empty)
	}
	// A client that saw the room empty resumes from there once it has
	// messages: the epoch did not change with the first publish.
	res := publishN(t, bus, room, 2)
	if res[0].Epoch != empty.Epoch {
		t.Errorf("epoch after the first publish: got %q, want %q", res[0].Epoch, empty.Epoch)
	}
	h = history(t, bus, room, HistoryQuery{Since: &empty})
	if got, want := offsets(h.Messages), seq(1, 2); !h.Recovered || !slices.Equal(got, want) {
		t.Errorf("since the empty position after 2 publishes: got recovered %v offsets %v, want true %v", h.Recovered, got, want)
	}
}

func testIdempotencyKey(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, bus, room, rec)

	first := publish(t, bus, room, Publication{Data: data(1), Key: "k1"})
	if first.Duplicate || first.Offset != 1 {
		t.Fatalf("first publish: got %+v, want offset 1, not duplicate", first)
	}
	again := publish(t, bus, room, Publication{Data: data(99), Key: "k1"})
	if want := (PublishResult{Position: first.Position, Duplicate: true}); again != want {
		t.Errorf("repeat: got %+v, want %+v", again, want)
	}
	other := publish(t, bus, room, Publication{Data: data(2), Key: "k2"})
	if other.Duplicate || other.Offset != 2 {
		t.Errorf("another key: got %+v, want offset 2, not duplicate", other)
	}
	plain := publish(t, bus, room, Publication{Data: data(3)})
	if plain.Duplicate || plain.Offset != 3 {
		t.Errorf("no key: got %+v, want offset 3, not duplicate", plain)
	}

	rec.waitMessages(t, 3)
	barrier(t, bus)
	msgs := rec.messages()
	if got, want := offsets(msgs), seq(1, 3); !slices.Equal(got, want) {
		t.Fatalf("delivered offsets: got %v, want %v", got, want)
	}
	if string(msgs[0].Data) != string(data(1)) {
		t.Errorf("delivered data: got %s, want the first publication's %s", msgs[0].Data, data(1))
	}
	h := history(t, bus, room, HistoryQuery{Limit: 100})
	if got, want := offsets(h.Messages), seq(1, 3); !slices.Equal(got, want) {
		t.Errorf("history offsets: got %v, want %v", got, want)
	}
	rec.check(t)
}

func testIdempotencyKeyPerRoom(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	a, b := roomName(t, "a"), roomName(t, "b")
	publishN(t, bus, a, 2)
	ra := publish(t, bus, a, Publication{Data: data(3), Key: "same"})
	rb := publish(t, bus, b, Publication{Data: data(1), Key: "same"})
	if ra.Duplicate || rb.Duplicate || ra.Offset != 3 || rb.Offset != 1 {
		t.Errorf("same key in two rooms: got %+v and %+v, want offsets 3 and 1, neither duplicate", ra, rb)
	}
}

// sortedMembers returns ms ordered by session, so that presence lists compare
// whatever order a bus keeps them in.
func sortedMembers(ms []Member) []Member {
	ms = slices.Clone(ms)
	sort.Slice(ms, func(i, j int) bool { return ms[i].Session < ms[j].Session })
	return ms
}

func testPresence(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	ctx := context.Background()
	room, other := roomName(t, "room"), roomName(t, "other")
	alice := Member{User: "alice", Session: "s1", Node: "n1"}
	bob := Member{User: "bob", Session: "s2", Node: "n2"}
	alice2 := Member{User: "alice", Session: "s3", Node: "n2"}

	tests := []struct {
		name string
		do   func() error
		want []Member
	}{
		{"nobody yet", func() error { return nil }, nil},
		{"alice joins", func() error { return bus.Join(ctx, room, alice) }, []Member{alice}},
		{"bob joins", func() error { return bus.Join(ctx, room, bob) }, []Member{alice, bob}},
		{"alice joins again from another session", func() error { return bus.Join(ctx, room, alice2) }, []Member{alice, bob, alice2}},
		{"a join repeated is one member", func() error { return bus.Join(ctx, room, bob) }, []Member{alice, bob, alice2}},
		{"someone joins another room", func() error { return bus.Join(ctx, other, Member{User: "carol", Session: "s9"}) }, []Member{alice, bob, alice2}},
		{"alice leaves one session", func() error { return bus.Leave(ctx, room, alice) }, []Member{bob, alice2}},
		{"leaving twice is harmless", func() error { return bus.Leave(ctx, room, alice) }, []Member{bob, alice2}},
		{"everyone leaves", func() error {
			return errors.Join(bus.Leave(ctx, room, bob), bus.Leave(ctx, room, alice2))
		}, nil},
	}
	for _, tt := range tests {
		if err := tt.do(); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		got := allMembers(t, bus, room, 0)
		if got, want := sortedMembers(got), sortedMembers(tt.want); !slices.Equal(got, want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, want)
		}
	}
	page, err := bus.Presence(ctx, roomName(t, "never-used"), PresenceQuery{})
	if err != nil || len(page.Members) != 0 || page.Total != 0 || page.Next != "" {
		t.Errorf("presence of an unused room: got %+v, %v; want an empty last page, nil", page, err)
	}
}

// allMembers pages through a room's presence with pages of limit, checking
// that every page reports the same total and that the pages add up to it.
func allMembers(t *testing.T, bus Bus, room string, limit int) []Member {
	t.Helper()
	var all []Member
	q := PresenceQuery{Limit: limit}
	for pages := 0; ; pages++ {
		if pages > 10000 {
			t.Fatalf("presence of %s: paging does not end", room)
		}
		page, err := bus.Presence(context.Background(), room, q)
		if err != nil {
			t.Fatalf("Presence(%s, %+v): %v", room, q, err)
		}
		all = append(all, page.Members...)
		if page.Next == "" {
			if page.Total != len(all) {
				t.Fatalf("presence of %s: total %d, pages held %d", room, page.Total, len(all))
			}
			return all
		}
		if len(page.Members) == 0 {
			t.Fatalf("presence of %s: an empty page with a next cursor", room)
		}
		q.Cursor = page.Next
	}
}

func testPresencePages(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	ctx := context.Background()
	room := roomName(t, "room")
	const n = 250
	var want []Member
	for i := range n {
		m := Member{User: fmt.Sprintf("u%d", i%7), Session: fmt.Sprintf("s%04d", (i*37)%n), Node: "n1"}
		if err := bus.Join(ctx, room, m); err != nil {
			t.Fatalf("Join: %v", err)
		}
		want = append(want, m)
	}
	want = sortedMembers(want)

	first, err := bus.Presence(ctx, room, PresenceQuery{})
	if err != nil {
		t.Fatalf("Presence: %v", err)
	}
	if len(first.Members) != DefaultPresenceLimit || first.Total != n || first.Next == "" {
		t.Errorf("first page: got %d members, total %d, next %q; want %d, %d, a cursor",
			len(first.Members), first.Total, first.Next, DefaultPresenceLimit, n)
	}
	for _, limit := range []int{1, 7, 100, n, MaxPresenceLimit} {
		got := allMembers(t, bus, room, limit)
		if !slices.Equal(sortedMembers(got), want) {
			t.Errorf("pages of %d: got %d members, want each of %d once", limit, len(got), n)
		}
	}

	// A member present throughout is on exactly one page, whoever joins or
	// leaves between pages.
	page, err := bus.Presence(ctx, room, PresenceQuery{Limit: 100})
	if err != nil {
		t.Fatalf("Presence: %v", err)
	}
	if err := errors.Join(bus.Leave(ctx, room, page.Members[0]), bus.Join(ctx, room, Member{User: "late", Session: "s0000a"})); err != nil {
		t.Fatalf("Join/Leave: %v", err)
	}
	seen := map[string]int{}
	for _, m := range page.Members {
		seen[m.Session]++
	}
	for q := (PresenceQuery{Limit: 100, Cursor: page.Next}); q.Cursor != ""; {
		p, err := bus.Presence(ctx, room, q)
		if err != nil {
			t.Fatalf("Presence: %v", err)
		}
		for _, m := range p.Members {
			seen[m.Session]++
		}
		q.Cursor = p.Next
	}
	for _, m := range want {
		if seen[m.Session] != 1 {
			t.Errorf("member %s seen %d times across pages, want once", m.Session, seen[m.Session])
		}
	}
}

func testPresenceBadCursor(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	room := roomName(t, "room")
	for _, c := range []string{"not base64 at all!", "%%%", "junk", "c2Vzcy0x"} {
		if _, err := bus.Presence(context.Background(), room, PresenceQuery{Cursor: c}); !errors.Is(err, ErrBadCursor) {
			t.Errorf("cursor %q: got %v, want %v", c, err, ErrBadCursor)
		}
	}
}

func testPresenceEvents(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	ctx := context.Background()
	room, other := roomName(t, "room"), roomName(t, "other")
	alice := Member{User: "alice", Session: "s1", Node: "n1"}
	bob := Member{User: "bob", Session: "s2", Node: "n1"}
	rec := &recorder{}
	subscribe(t, bus, room, rec)

	steps := []error{
		bus.Join(ctx, room, alice),
		bus.Join(ctx, other, bob), // not this room
		bus.Leave(ctx, room, alice),
		bus.Leave(ctx, room, alice), // not a member: no event
		bus.Join(ctx, room, bob),
	}
	if err := errors.Join(steps...); err != nil {
		t.Fatalf("Join/Leave: %v", err)
	}
	want := []PresenceEvent{
		{Room: room, Join: true, Member: alice},
		{Room: room, Join: false, Member: alice},
		{Room: room, Join: true, Member: bob},
	}
	waitFor(t, "3 presence events", func() bool { return len(rec.presence()) >= len(want) })
	barrier(t, bus)
	if got := rec.presence(); !slices.Equal(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	rec.check(t)
}

func testEnter(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	ctx := context.Background()
	room := roomName(t, "call")
	alice := Member{User: "alice", Session: "s1", Node: "n1"}
	bob := Member{User: "bob", Session: "s2", Node: "n1"}
	carol := Member{User: "carol", Session: "s3", Node: "n2"}
	rec := &recorder{}
	subscribe(t, bus, room, rec)

	tests := []struct {
		name    string
		m       Member
		max     int
		want    []Member
		wantErr error
	}{
		{"the first finds nobody", alice, 2, []Member{}, nil},
		{"the second finds the first", bob, 2, []Member{alice}, nil},
		{"a third past max is refused", carol, 2, nil, ErrFull},
		{"entering again finds the others only", alice, 2, []Member{bob}, nil},
		{"no max takes anyone", carol, 0, []Member{alice, bob}, nil},
	}
	for _, tt := range tests {
		got, err := bus.Enter(ctx, room, tt.m, tt.max)
		if !errors.Is(err, tt.wantErr) {
			t.Fatalf("%s: got error %v, want %v", tt.name, err, tt.wantErr)
		}
		if err == nil && !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
	// One join event per member: entering again is no news.
	want := []PresenceEvent{{Room: room, Join: true, Member: alice}, {Room: room, Join: true, Member: bob}, {Room: room, Join: true, Member: carol}}
	waitFor(t, "3 presence events", func() bool { return len(rec.presence()) >= len(want) })
	barrier(t, bus)
	if got := rec.presence(); !slices.Equal(got, want) {
		t.Errorf("presence events: got %+v, want %+v", got, want)
	}
	if got := allMembers(t, bus, room, 0); !slices.Equal(got, []Member{alice, bob, carol}) {
		t.Errorf("members: got %v", got)
	}
}

// testEnterConcurrent enters members at once: of any two, exactly one sees
// the other, and max holds.
// testEnterAfter: a member that succeeds another enters only while one
// with the prefix is there, and a refused one changes nothing (no event).
func testEnterAfter(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	ctx := context.Background()
	room := roomName(t, "call")
	old := Member{User: "bob", Session: "p1.k.a", Node: "n1"}
	other := Member{User: "alice", Session: "p0.k.x", Node: "n1"}
	for _, m := range []Member{other, old} {
		if _, err := bus.Enter(ctx, room, m, 0); err != nil {
			t.Fatal(err)
		}
	}
	rec := &recorder{}
	subscribe(t, bus, room, rec)
	next := Member{User: "bob", Session: "p1.k.b", Node: "n2"}
	got, err := bus.EnterAfter(ctx, room, next, "p1.k.")
	if err != nil || !slices.Equal(got, []Member{other, old}) {
		t.Fatalf("entering after a present member: got %v, %v; want %v", got, err, []Member{other, old})
	}
	for _, m := range []Member{old, next} {
		if err := bus.Leave(ctx, room, m); err != nil {
			t.Fatal(err)
		}
	}
	late := Member{User: "bob", Session: "p1.k.c", Node: "n2"}
	if _, err := bus.EnterAfter(ctx, room, late, "p1.k."); !errors.Is(err, ErrNoSession) {
		t.Fatalf("entering after a member that left: got %v, want ErrNoSession", err)
	}
	if _, err := bus.EnterAfter(ctx, room, late, "p0.z."); !errors.Is(err, ErrNoSession) {
		t.Fatalf("a prefix no member has (one sorts after it): got %v, want ErrNoSession", err)
	}
	page, err := bus.Presence(ctx, room, PresenceQuery{})
	if err != nil || !slices.Equal(page.Members, []Member{other}) {
		t.Fatalf("members after refused entries: %v, %v; want only %v", page.Members, err, other)
	}
	waitFor(t, "the join and the two leaves", func() bool { return len(rec.presence()) >= 3 })
	time.Sleep(50 * time.Millisecond)
	if n := len(rec.presence()); n != 3 {
		t.Errorf("presence events: got %d, want 3 (a join and two leaves; a refused entry makes none)", n)
	}
}

func testEnterConcurrent(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	room := roomName(t, "call")
	const n, max = 12, 8
	saw := make([][]Member, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			saw[i], errs[i] = bus.Enter(context.Background(), room, Member{User: "u", Session: fmt.Sprintf("s%02d", i)}, max)
		})
	}
	wg.Wait()
	var in []int
	for i, err := range errs {
		switch {
		case err == nil:
			in = append(in, i)
		case !errors.Is(err, ErrFull):
			t.Fatalf("Enter s%02d: %v", i, err)
		}
	}
	if len(in) != max {
		t.Fatalf("%d members entered, want %d (max)", len(in), max)
	}
	sees := func(i, j int) bool {
		return slices.ContainsFunc(saw[i], func(m Member) bool { return m.Session == fmt.Sprintf("s%02d", j) })
	}
	for _, i := range in {
		for _, j := range in {
			if i < j && sees(i, j) == sees(j, i) {
				t.Errorf("s%02d sees s%02d: %v, and s%02d sees s%02d: %v; want exactly one", i, j, sees(i, j), j, i, sees(j, i))
			}
		}
	}
}

// inbox collects what Send delivers to one session.
type inbox struct {
	mu  sync.Mutex
	got []string
}

func (b *inbox) deliver(data []byte) {
	b.mu.Lock()
	b.got = append(b.got, string(data))
	b.mu.Unlock()
}

func (b *inbox) all() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.got)
}

func testSend(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	ctx := context.Background()
	s1, s2 := roomName(t, "s1"), roomName(t, "s2")
	a, b := &inbox{}, &inbox{}
	if err := errors.Join(bus.Register(ctx, s1, a.deliver), bus.Register(ctx, s2, b.deliver)); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if err := bus.Send(ctx, s1, []byte(`{"to":"s1"}`)); err != nil {
		t.Fatalf("Send: %v", err)
	}
	waitFor(t, "the payload", func() bool { return len(a.all()) == 1 })
	if got := a.all(); got[0] != `{"to":"s1"}` {
		t.Errorf("got %q", got)
	}
	if err := bus.Send(ctx, roomName(t, "nobody"), []byte(`{}`)); !errors.Is(err, ErrNoSession) {
		t.Errorf("Send to an unknown session: got %v, want %v", err, ErrNoSession)
	}
	if err := bus.Unregister(ctx, s1); err != nil {
		t.Fatalf("Unregister: %v", err)
	}
	if err := bus.Send(ctx, s1, []byte(`{}`)); !errors.Is(err, ErrNoSession) {
		t.Errorf("Send after Unregister: got %v, want %v", err, ErrNoSession)
	}
	if err := bus.Unregister(ctx, s1); err != nil {
		t.Errorf("Unregister twice: %v", err)
	}
	// Nothing sent is kept in any room's history.
	h := history(t, bus, s1, HistoryQuery{Limit: 10})
	if len(h.Messages) != 0 || h.Top.Offset != 0 {
		t.Errorf("history of a session's name: %+v, want empty", h)
	}
	if got := b.all(); len(got) != 0 {
		t.Errorf("the other session got %q", got)
	}
}

func testSendOrder(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	ctx := context.Background()
	s := roomName(t, "s")
	in := &inbox{}
	if err := bus.Register(ctx, s, in.deliver); err != nil {
		t.Fatalf("Register: %v", err)
	}
	const n = 200
	want := make([]string, n)
	for i := range n {
		want[i] = fmt.Sprintf(`{"n":%d}`, i)
		if err := bus.Send(ctx, s, []byte(want[i])); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	waitFor(t, "every payload", func() bool { return len(in.all()) >= n })
	if got := in.all(); !slices.Equal(got, want) {
		t.Errorf("payloads out of order or repeated: got %d, first %q", len(got), got[:min(5, len(got))])
	}
}

// post posts data to session from bus, with a mailbox of max payloads
// kept for a minute.
func post(t *testing.T, bus Bus, session, data string, max int) {
	t.Helper()
	if err := bus.Post(context.Background(), session, []byte(data), max, time.Minute); err != nil {
		t.Fatalf("Post(%s, %s): %v", session, data, err)
	}
}

// claim claims session on bus for deliver and returns what it held, as
// strings.
func claim(t *testing.T, bus Bus, session string, deliver func([]byte)) []string {
	t.Helper()
	held, err := bus.Claim(context.Background(), session, deliver)
	if err != nil {
		t.Fatalf("Claim(%s): %v", session, err)
	}
	return strs(held)
}

func strs(bs [][]byte) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = string(b)
	}
	return out
}

// testPost posts to a registered session, which gets the payloads, and to
// one that is not, whose mailbox holds them for Claim; posts after the
// claim go to its deliver.
func testPost(t *testing.T, newBus func(t *testing.T) Bus, newPeer func(t *testing.T, bus Bus) Bus) {
	a := newBus(t)
	b := newPeer(t, a)
	ctx := context.Background()
	registered, held := roomName(t, "registered"), roomName(t, "held")
	const max = 10

	in := &inbox{}
	if err := a.Register(ctx, registered, in.deliver); err != nil {
		t.Fatalf("Register: %v", err)
	}
	post(t, a, registered, `"from a"`, max)
	post(t, b, registered, `"from b"`, max)
	waitFor(t, "2 payloads", func() bool { return len(in.all()) >= 2 })
	if got, want := in.all(), []string{`"from a"`, `"from b"`}; !slices.Equal(got, want) {
		t.Errorf("payloads of a registered session: got %q, want %q", got, want)
	}
	if got := claim(t, a, registered, in.deliver); len(got) != 0 {
		t.Errorf("Claim of a registered session: got %q held, want none", got)
	}

	var want []string
	for i := range 4 {
		want = append(want, fmt.Sprintf(`{"n":%d}`, i))
		post(t, []Bus{a, b}[i%2], held, want[i], max)
	}
	if err := a.Send(ctx, held, []byte(`{}`)); !errors.Is(err, ErrNoSession) {
		t.Errorf("Send to a session with a mailbox: got %v, want %v", err, ErrNoSession)
	}
	out := &inbox{}
	if got := claim(t, a, held, out.deliver); !slices.Equal(got, want) {
		t.Errorf("Claim: got %q, want %q", got, want)
	}
	post(t, b, held, `"after"`, max)
	waitFor(t, "the payload posted after Claim", func() bool { return len(out.all()) >= 1 })
	if got := claim(t, a, held, out.deliver); len(got) != 0 {
		t.Errorf("Claim again: got %q held, want none", got)
	}
	if got, want := out.all(), []string{`"after"`}; !slices.Equal(got, want) {
		t.Errorf("payloads after Claim: got %q, want %q", got, want)
	}

	// Once unregistered, the session's payloads are held again.
	if err := a.Unregister(ctx, held); err != nil {
		t.Fatalf("Unregister: %v", err)
	}
	post(t, b, held, `"later"`, max)
	if got, want := claim(t, b, held, out.deliver), []string{`"later"`}; !slices.Equal(got, want) {
		t.Errorf("Claim after Unregister: got %q, want %q", got, want)
	}
	if got, want := out.all(), []string{`"after"`}; !slices.Equal(got, want) {
		t.Errorf("payloads delivered by the end: got %q, want only %q", got, want)
	}
	// Nothing posted is kept in any room's history.
	if h := history(t, a, held, HistoryQuery{Limit: 10}); len(h.Messages) != 0 || h.Top.Offset != 0 {
		t.Errorf("history of a session's name: %+v, want empty", h)
	}
}

// testPostLimits fills a mailbox to max, which then refuses more until its
// ttl has passed since the last payload it took, and then is gone.
func testPostLimits(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	ctx := context.Background()
	s := roomName(t, "s")
	const max, ttl = 3, 200 * time.Millisecond
	var last time.Time
	for i := range max {
		last = time.Now()
		if err := bus.Post(ctx, s, []byte(strconv.Itoa(i)), max, ttl); err != nil {
			t.Fatalf("Post %d: %v", i, err)
		}
	}
	if err := bus.Post(ctx, s, []byte(`"one too many"`), max, ttl); !errors.Is(err, ErrFull) {
		t.Fatalf("Post past max: got %v, want %v", err, ErrFull)
	}
	// Refused posts do not keep the mailbox: it goes ttl after the last one
	// it took, and the post that then succeeds starts a new one.
	waitFor(t, "the mailbox to expire", func() bool {
		err := bus.Post(ctx, s, []byte(`"fresh"`), max, ttl)
		if err != nil && !errors.Is(err, ErrFull) {
			t.Fatalf("Post: %v", err)
		}
		return err == nil
	})
	if took := time.Since(last); took < ttl {
		t.Errorf("mailbox gone %v after its last payload, want after its ttl (%v)", took, ttl)
	}
	if got, want := claim(t, bus, s, func([]byte) {}), []string{`"fresh"`}; !slices.Equal(got, want) {
		t.Errorf("Claim after the ttl: got %q, want %q", got, want)
	}

	for _, tt := range []struct {
		name string
		max  int
		ttl  time.Duration
	}{
		{"max 0", 0, time.Minute},
		{"ttl 0", max, 0},
	} {
		if err := bus.Post(ctx, roomName(t, "s"), []byte(`{}`), tt.max, tt.ttl); !errors.Is(err, ErrFull) {
			t.Errorf("Post with %s: got %v, want %v", tt.name, err, ErrFull)
		}
	}
}

// testClaimMoves claims on one node a session registered on another: what
// is posted after Claim returns goes to the claiming node's deliver only.
func testClaimMoves(t *testing.T, newBus func(t *testing.T) Bus, newPeer func(t *testing.T, bus Bus) Bus) {
	a := newBus(t)
	b := newPeer(t, a)
	ctx := context.Background()
	s := roomName(t, "s")
	onA, onB := &inbox{}, &inbox{}
	if err := a.Register(ctx, s, onA.deliver); err != nil {
		t.Fatalf("Register: %v", err)
	}
	post(t, b, s, `"before"`, 10)
	waitFor(t, "the payload on a", func() bool { return len(onA.all()) >= 1 })
	if got := claim(t, b, s, onB.deliver); len(got) != 0 {
		t.Errorf("Claim of a session registered elsewhere: got %q held, want none", got)
	}
	post(t, a, s, `"after from a"`, 10)
	post(t, b, s, `"after from b"`, 10)
	if err := a.Send(ctx, s, []byte(`"sent from a"`)); err != nil {
		t.Fatalf("Send: %v", err)
	}
	waitFor(t, "3 payloads on b", func() bool { return len(onB.all()) >= 3 })
	got := onB.all()
	slices.Sort(got)
	if want := []string{`"after from a"`, `"after from b"`, `"sent from a"`}; !slices.Equal(got, want) {
		t.Errorf("payloads on b: got %q, want %q", got, want)
	}
	if got, want := onA.all(), []string{`"before"`}; !slices.Equal(got, want) {
		t.Errorf("payloads on a: got %q, want %q", got, want)
	}
}

// testPostWhileClaiming claims a session on one node while a caller posts
// to it from another: every payload is returned by Claim or delivered after
// it, once, in the order posted.
func testPostWhileClaiming(t *testing.T, newBus func(t *testing.T) Bus, newPeer func(t *testing.T, bus Bus) Bus) {
	a := newBus(t)
	b := newPeer(t, a)
	s := roomName(t, "s")
	const n = 200
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf(`{"n":%d}`, i)
	}
	// Half the payloads are posted before Claim is called, and the rest
	// while and after it runs.
	half, claiming := make(chan struct{}), make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		for i := range n {
			if i == n/2 {
				close(half)
				<-claiming
			}
			if err := a.Post(context.Background(), s, []byte(want[i]), n, time.Minute); err != nil {
				errc <- fmt.Errorf("Post %d: %w", i, err)
				return
			}
		}
		errc <- nil
	}()
	<-half
	in := &inbox{}
	close(claiming)
	held := claim(t, b, s, in.deliver)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every payload", func() bool { return len(held)+len(in.all()) >= n })
	barrier(t, b)
	t.Logf("%d held, %d delivered", len(held), len(in.all()))
	if got := append(held, in.all()...); !slices.Equal(got, want) {
		t.Errorf("held then delivered: got %d payloads, first %q; want %d in order, once each", len(got), got[:min(5, len(got))], n)
	}
}

func testConcurrentPublishers(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	room := roomName(t, "room")
	rec := &recorder{}
	subscribe(t, bus, room, rec)

	const publishers, each = 8, 50
	acked := make([][]uint64, publishers)
	errs := make([]error, publishers)
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				res, err := bus.Publish(context.Background(), room, Publication{Data: data(p*each + i)})
				if err != nil {
					errs[p] = err
					return
				}
				acked[p] = append(acked[p], res.Offset)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	const total = publishers * each
	var all []uint64
	for p, offs := range acked {
		// One publisher's messages land in the order it sent them.
		if !slices.IsSorted(offs) {
			t.Errorf("publisher %d acks: got %v, want increasing", p, offs)
		}
		all = append(all, offs...)
	}
	slices.Sort(all)
	if want := seq(1, total); !slices.Equal(all, want) {
		t.Errorf("acked offsets: got %v, want 1..%d each once", all, total)
	}
	msgs := rec.waitMessages(t, total)
	if got, want := offsets(msgs), seq(1, total); !slices.Equal(got, want) {
		t.Errorf("delivered offsets: got %v, want 1..%d in order", got, total)
	}
	rec.check(t)
}

func testClose(t *testing.T, newBus func(t *testing.T) Bus) {
	bus := newBus(t)
	ctx := context.Background()
	room := roomName(t, "room")
	if !bus.Ready() {
		t.Fatalf("Ready before Close: got false, want true")
	}
	subscribe(t, bus, room, &recorder{})
	publish(t, bus, room, Publication{Data: data(1)})
	if err := bus.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if bus.Ready() {
		t.Errorf("Ready after Close: got true, want false")
	}
	m := Member{User: "u", Session: "s"}
	tests := []struct {
		name string
		call func() error
	}{
		{"Publish", func() error { _, err := bus.Publish(ctx, room, Publication{Data: data(2)}); return err }},
		{"Subscribe", func() error { return bus.Subscribe(ctx, roomName(t, "new"), &recorder{}) }},
		{"Unsubscribe", func() error { return bus.Unsubscribe(ctx, room) }},
		{"History", func() error { _, err := bus.History(ctx, room, HistoryQuery{Limit: 1}); return err }},
		{"Join", func() error { return bus.Join(ctx, room, m) }},
		{"Leave", func() error { return bus.Leave(ctx, room, m) }},
		{"Presence", func() error { _, err := bus.Presence(ctx, room, PresenceQuery{}); return err }},
		{"Enter", func() error { _, err := bus.Enter(ctx, room, m, 0); return err }},
		{"Register", func() error { return bus.Register(ctx, "s", func([]byte) {}) }},
		{"Send", func() error { return bus.Send(ctx, "s", []byte(`{}`)) }},
		{"Post", func() error { return bus.Post(ctx, "s", []byte(`{}`), 1, time.Minute) }},
		{"Claim", func() error { _, err := bus.Claim(ctx, "s", func([]byte) {}); return err }},
	}
	for _, tt := range tests {
		if err := tt.call(); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: got %v, want %v", tt.name, err, ErrClosed)
		}
	}
}
