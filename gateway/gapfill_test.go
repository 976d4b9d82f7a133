package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// gapSubscribers dials n WebSocket clients and subscribes each to room.
func gapSubscribers(t *testing.T, ts *testServer, room string, n int) []*wsConn {
	t.Helper()
	clients := make([]*wsConn, n)
	for i := range clients {
		clients[i] = dialWS(t, ts.ws, nil)
		clients[i].expect("welcome")
		recSubscribe(clients[i], fmt.Sprint("s", i), room, nil)
	}
	return clients
}

// gapFillDone waits until room's gap fill on the node, if any, is over.
func gapFillDone(t *testing.T, ts *testServer, room string) {
	t.Helper()
	waitFor(t, "the gap fill of "+room+" to end", func() bool {
		r := ts.srv.hub.lookup(room)
		if r == nil {
			return true
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		return !r.filling
	})
}

// gapEnded waits until the SSE stream has ended.
func (s *recSSE) gapEnded() {
	s.t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return
			}
			s.t.Fatalf("got event %+v, want the stream to end", ev)
		case <-timeout:
			s.t.Fatal("the sse stream did not end within 5s")
		}
	}
}

func TestGapFillDrops(t *testing.T) {
	ts, bus, reg := startFaultServer(t, fanout.MemoryConfig{}, nil)
	const room = "gap:drops"
	clients := gapSubscribers(t, ts, room, 3)
	sse := recOpenSSE(t, ts, room, "")
	sse.open()
	sse.welcome()

	// Every 7th delivery of the room is lost on its way to the node.
	var deliveries atomic.Int64
	bus.setFault(func(m *fanout.Message) faultAction {
		if m.Room == room && deliveries.Add(1)%7 == 0 {
			return dropIt
		}
		return deliverOnce
	})
	var epoch string
	for i := 1; i <= 200; i++ {
		epoch = bus.publish(t, room, fmt.Sprintf(`{"n":%d}`, i)).Epoch
	}
	// Each client sees 1 to 200, each once, in order.
	for _, w := range clients {
		recExpectRun(w, epoch, 0, 200)
	}
	sse.expectRun(epoch, 0, 200)

	// And nothing more: the next message is the next thing each one gets.
	bus.setFault(nil)
	bus.publish(t, room, `{"n":201}`)
	for _, w := range clients {
		recExpectRun(w, epoch, 200, 1)
	}
	sse.expectRun(epoch, 200, 1)

	if got := counterValue(t, reg, "parley_gap_fills_total"); got < 1 {
		t.Errorf("parley_gap_fills_total: got %v, want at least 1", got)
	}
	if got, want := counterValue(t, reg, "parley_gap_messages_total"), float64(200/7); got < want {
		t.Errorf("parley_gap_messages_total: got %v, want at least %v (the messages dropped)", got, want)
	}
	if got := counterValue(t, reg, "parley_continuity_breaks_total"); got != 0 {
		t.Errorf("parley_continuity_breaks_total: got %v, want 0", got)
	}
}

func TestGapFillDuplicatesAndResync(t *testing.T) {
	ts, bus, reg := startFaultServer(t, fanout.MemoryConfig{}, nil)
	const room = "gap:dups"
	clients := gapSubscribers(t, ts, room, 3)

	// Every third message comes twice, every fifth after the one that
	// follows it, and the bus says it resubscribed every tenth.
	bus.setFault(func(m *fanout.Message) faultAction {
		switch {
		case m.Room != room:
			return deliverOnce
		case m.Offset%3 == 0:
			return deliverTwice
		case m.Offset%5 == 0:
			return deliverLate
		}
		return deliverOnce
	})
	var epoch string
	for i := 1; i <= 100; i++ {
		epoch = bus.publish(t, room, fmt.Sprintf(`{"n":%d}`, i)).Epoch
		if i%10 == 0 {
			bus.resync(room)
		}
	}
	bus.setFault(nil)
	bus.publish(t, room, `{"n":101}`)
	for _, w := range clients {
		recExpectRun(w, epoch, 0, 101)
	}
	if got := counterValue(t, reg, "parley_duplicates_dropped_total"); got < 1 {
		t.Errorf("parley_duplicates_dropped_total: got %v, want at least 1", got)
	}

	// A resync when nothing was missed reads history and delivers nothing.
	gapFillDone(t, ts, room)
	fills := counterValue(t, reg, "parley_gap_fills_total")
	bus.resync(room)
	waitFor(t, "the resync's fill to start", func() bool { return counterValue(t, reg, "parley_gap_fills_total") > fills })
	gapFillDone(t, ts, room)
	bus.publish(t, room, `{"n":102}`)
	for _, w := range clients {
		recExpectRun(w, epoch, 101, 1)
	}
}

func TestGapFillHistoryFailing(t *testing.T) {
	ts, bus, reg := startFaultServer(t, fanout.MemoryConfig{}, nil)
	const stuck, other = "gap:stuck", "gap:other"
	a := gapSubscribers(t, ts, stuck, 1)[0]
	b := gapSubscribers(t, ts, other, 1)[0]
	epoch := bus.publish(t, stuck, `{"n":1}`).Epoch
	recExpectRun(a, epoch, 0, 1)

	// The room's history cannot be read three times; the third failure
	// waits until the test has seen the other room flow.
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	defer releaseOnce()
	var reads atomic.Int32
	bus.setHistory(func(ctx context.Context, room string, q fanout.HistoryQuery, read func() (fanout.History, error)) (fanout.History, error) {
		if room != stuck {
			return read()
		}
		switch reads.Add(1) {
		case 1, 2:
			return fanout.History{}, errInjected
		case 3:
			select {
			case <-release:
			case <-ctx.Done():
			}
			return fanout.History{}, errInjected
		}
		return read()
	})
	bus.setFault(func(m *fanout.Message) faultAction {
		if m.Room == stuck && m.Offset == 2 {
			return dropIt
		}
		return deliverOnce
	})
	bus.publish(t, stuck, `{"n":2}`)
	bus.publish(t, stuck, `{"n":3}`)
	waitFor(t, "the third history read of the fill", func() bool { return reads.Load() == 3 })

	// The other room's messages arrive while the fill is stuck.
	otherEpoch := bus.publish(t, other, `{"n":1}`).Epoch
	for i := 2; i <= 5; i++ {
		bus.publish(t, other, fmt.Sprintf(`{"n":%d}`, i))
	}
	recExpectRun(b, otherEpoch, 0, 5)
	if got := reads.Load(); got != 3 {
		t.Fatalf("history reads of the stuck room: got %d, want 3 (the fill still stuck)", got)
	}

	// Once history can be read, the gap is filled, in order, then live
	// messages follow.
	releaseOnce()
	recExpectRun(a, epoch, 1, 2)
	bus.publish(t, stuck, `{"n":4}`)
	recExpectRun(a, epoch, 3, 1)
	if got := reads.Load(); got != 4 {
		t.Errorf("history reads of the stuck room: got %d, want 4", got)
	}
	if got := counterValue(t, reg, "parley_gap_fills_total"); got != 1 {
		t.Errorf("parley_gap_fills_total: got %v, want 1 (one fill, retried)", got)
	}
}

func TestGapFillContinuityBroken(t *testing.T) {
	// emptied is the room's position once the bus has restarted empty and
	// had one message published.
	emptied := func(t *testing.T, bus *faultBus, room string) fanout.Position {
		t.Helper()
		bus.publish(t, room, `{"n":1}`)
		h, err := bus.History(context.Background(), room, fanout.HistoryQuery{})
		if err != nil {
			t.Fatal(err)
		}
		return h.Top
	}
	tests := []struct {
		name string
		// lose makes the node lose the room's continuity after offset 3
		// and returns the room's position afterwards.
		lose func(t *testing.T, ts *testServer, bus *faultBus, room string) fanout.Position
	}{
		{name: "the bus restarted empty and resynced", lose: func(t *testing.T, ts *testServer, bus *faultBus, room string) fanout.Position {
			bus.restart(true)
			return emptied(t, bus, room)
		}},
		{name: "the bus restarted empty, and the next message tells", lose: func(t *testing.T, ts *testServer, bus *faultBus, room string) fanout.Position {
			bus.restart(false)
			return emptied(t, bus, room)
		}},
		{name: "the bus restarted empty during a fill, and the next message tells", lose: func(t *testing.T, ts *testServer, bus *faultBus, room string) fanout.Position {
			hook, read, release := gapReadThenWait(func(q fanout.HistoryQuery) bool { return q.Since != nil })
			bus.setHistory(hook)
			releaseOnce := sync.OnceFunc(func() { close(release) })
			defer releaseOnce()
			bus.resync(room)
			<-read
			bus.restart(false)
			top := emptied(t, bus, room)
			waitFor(t, "the node to buffer the message", func() bool {
				r := ts.srv.hub.lookup(room)
				r.mu.Lock()
				defer r.mu.Unlock()
				return len(r.pending) == 1
			})
			return top
		}},
		{name: "the bus restarted empty, and a new subscription tells", lose: func(t *testing.T, ts *testServer, bus *faultBus, room string) fanout.Position {
			bus.restart(false)
			h, err := bus.History(context.Background(), room, fanout.HistoryQuery{})
			if err != nil {
				t.Fatal(err)
			}
			// The new client is in the room's new epoch, but the room on
			// the node is not: it too is told to come back.
			w := dialWS(t, ts.ws, nil)
			w.expect("welcome")
			recCheckAck(t, recSubscribe(w, "new", room, nil), h.Top.Epoch, 0, false)
			if m := w.expect("reconnect"); m["reason"] != reasonHistoryLost {
				t.Errorf("new client's reconnect reason: got %v, want %q", m["reason"], reasonHistoryLost)
			}
			return h.Top
		}},
		{name: "the gap aged out of history", lose: func(t *testing.T, ts *testServer, bus *faultBus, room string) fanout.Position {
			bus.setFault(func(m *fanout.Message) faultAction {
				if m.Room == room && m.Offset < 21 {
					return dropIt
				}
				return deliverOnce
			})
			var top fanout.Position
			for i := 4; i <= 21; i++ {
				top = bus.publish(t, room, fmt.Sprintf(`{"n":%d}`, i))
			}
			return top
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// History keeps 10 messages.
			ts, bus, reg := startFaultServer(t, fanout.MemoryConfig{HistorySize: 10}, nil)
			const room = "gap:lost"
			clients := gapSubscribers(t, ts, room, 4)
			sse := recOpenSSE(t, ts, room, "")
			sse.open()
			sse.welcome()
			var epoch string
			for i := 1; i <= 3; i++ {
				epoch = bus.publish(t, room, fmt.Sprintf(`{"n":%d}`, i)).Epoch
			}
			for _, w := range clients {
				recExpectRun(w, epoch, 0, 3)
			}
			lastID := sse.expectRun(epoch, 0, 3)
			seen := fanout.Position{Epoch: epoch, Offset: 3}

			top := tt.lose(t, ts, bus, room)

			// Every client is told to reconnect, at moments spread over a
			// couple of seconds, and closed as a drain closes it.
			afters := map[float64]bool{}
			for _, w := range clients {
				m := w.expect("reconnect")
				if m["reason"] != reasonHistoryLost {
					t.Errorf("reconnect reason: got %v, want %q", m["reason"], reasonHistoryLost)
				}
				after, ok := m["after_ms"].(float64)
				if !ok || after < 0 || after > float64(breakSpread.Milliseconds()) {
					t.Errorf("reconnect after_ms: got %v, want within 0 to %d", m["after_ms"], breakSpread.Milliseconds())
				}
				afters[after] = true
				if got := w.closeStatus(); got != websocket.StatusServiceRestart {
					t.Errorf("close status: got %v, want %v", got, websocket.StatusServiceRestart)
				}
			}
			if len(afters) < 2 {
				t.Errorf("after_ms of %d clients: got %v, want them spread", len(clients), afters)
			}
			ev := sse.next()
			var notice reconnectFrame
			if err := json.Unmarshal([]byte(ev.data), &notice); ev.event != "reconnect" || err != nil || notice.Reason != reasonHistoryLost {
				t.Fatalf("got sse event %+v, want a reconnect for history lost", ev)
			}
			sse.gapEnded()
			if got := counterValue(t, reg, "parley_continuity_breaks_total"); got != 1 {
				t.Errorf("parley_continuity_breaks_total: got %v, want 1", got)
			}

			// Resuming from where they were, clients learn that the room
			// could not be recovered, and where it stands now.
			w := dialWS(t, ts.ws, nil)
			w.expect("welcome")
			recCheckAck(t, recSubscribe(w, "again", room, &seen), top.Epoch, top.Offset, false)
			s := recOpenSSE(t, ts, room, lastID)
			s.open()
			if got, want := s.welcomeRoom(room, top), (sseRoomInfo{Epoch: top.Epoch, Offset: top.Offset}); got != want {
				t.Fatalf("sse welcome: got %+v, want %+v", got, want)
			}
			// And live messages come in the room's epoch.
			bus.setFault(nil)
			bus.publish(t, room, fmt.Sprintf(`{"n":%d}`, top.Offset+1))
			recExpectRun(w, top.Epoch, top.Offset, 1)
			s.expectRun(top.Epoch, top.Offset, 1)
		})
	}
}

func TestGapFillUnsubscribeFails(t *testing.T) {
	for _, tt := range []struct {
		name  string
		after bool // the failed Unsubscribe had unsubscribed the node
	}{
		{name: "failed while still subscribed", after: false},
		{name: "failed after unsubscribing", after: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts, bus, _ := startFaultServer(t, fanout.MemoryConfig{}, nil)
			const room = "gap:unsub"
			a := gapSubscribers(t, ts, room, 1)[0]
			epoch := bus.publish(t, room, `{"n":1}`).Epoch
			recExpectRun(a, epoch, 0, 1)

			// The last member leaves, and the bus fails to unsubscribe.
			bus.failUnsubscribe(1, tt.after)
			a.send(map[string]any{"type": "unsubscribe", "id": "u", "room": room})
			if ack := a.expect("ack"); ack["id"] != "u" {
				t.Fatalf("got %v, want the unsubscribe's ack", ack)
			}
			waitFor(t, "the room to be let go", func() bool { return ts.srv.hub.lookup(room) == nil })
			bus.publish(t, room, `{"n":2}`)

			// A new member of the room gets its live messages, and so does
			// the next one after the room is let go again.
			for round := range 2 {
				b := dialWS(t, ts.ws, nil)
				b.expect("welcome")
				top := uint64(2 + round)
				recCheckAck(t, recSubscribe(b, "s", room, nil), epoch, top, false)
				bus.publish(t, room, fmt.Sprintf(`{"n":%d}`, top+1))
				recExpectRun(b, epoch, top, 1)
				b.c.Close(websocket.StatusNormalClosure, "")
				waitFor(t, "the room to be let go", func() bool { return ts.srv.hub.lookup(room) == nil })
			}
		})
	}
}

func TestGapFillSubscribeDuringFill(t *testing.T) {
	ts, bus, _ := startFaultServer(t, fanout.MemoryConfig{}, nil)
	const room = "gap:join"
	a := gapSubscribers(t, ts, room, 1)[0]
	epoch := bus.publish(t, room, `{"n":1}`).Epoch
	bus.publish(t, room, `{"n":2}`)
	recExpectRun(a, epoch, 0, 2)

	// The fill's history read waits for the test, and so does the read of
	// a subscription resuming from 7 (held: the room delivers to it while
	// it subscribes).
	fillRead, held := make(chan struct{}), make(chan struct{})
	releaseFill, releaseHeld := make(chan struct{}), make(chan struct{})
	closeFill, closeHeld := sync.OnceFunc(func() { close(releaseFill) }), sync.OnceFunc(func() { close(releaseHeld) })
	defer closeFill()
	defer closeHeld()
	var fillArmed atomic.Bool
	fillArmed.Store(true)
	bus.setHistory(func(ctx context.Context, room string, q fanout.HistoryQuery, read func() (fanout.History, error)) (fanout.History, error) {
		var wait chan struct{}
		switch {
		case q.Since != nil && q.Since.Offset == 7:
			close(held)
			wait = releaseHeld
		case fillArmed.CompareAndSwap(true, false):
			close(fillRead)
			wait = releaseFill
		default:
			return read()
		}
		select {
		case <-wait:
		case <-ctx.Done():
		}
		return read()
	})
	bus.setFault(func(m *fanout.Message) faultAction {
		if m.Room == room && m.Offset == 3 {
			return dropIt
		}
		return deliverOnce
	})
	for i := 3; i <= 10; i++ {
		bus.publish(t, room, fmt.Sprintf(`{"n":%d}`, i))
	}
	<-fillRead

	// While the fill waits, clients subscribe: live only, and resuming.
	live := dialWS(t, ts.ws, nil)
	live.expect("welcome")
	recCheckAck(t, recSubscribe(live, "live", room, nil), epoch, 10, false)
	from5 := dialWS(t, ts.ws, nil)
	from5.expect("welcome")
	recCheckAck(t, recSubscribe(from5, "from5", room, &fanout.Position{Epoch: epoch, Offset: 5}), epoch, 10, true)
	from0 := dialWS(t, ts.ws, nil)
	from0.expect("welcome")
	recCheckAck(t, recSubscribe(from0, "from0", room, &fanout.Position{Epoch: epoch, Offset: 0}), epoch, 10, true)
	sse := recOpenSSE(t, ts, room, "")
	sse.open()
	if got, want := sse.welcomeRoom(room, fanout.Position{Epoch: epoch, Offset: 10}), (sseRoomInfo{Epoch: epoch, Offset: 10}); got != want {
		t.Fatalf("sse welcome: got %+v, want %+v", got, want)
	}
	// One more starts subscribing, and its history read waits.
	from7 := dialWS(t, ts.ws, nil)
	from7.expect("welcome")
	from7.send(map[string]any{"type": "subscribe", "id": "from7", "room": room, "since": fanout.Position{Epoch: epoch, Offset: 7}})
	<-held

	// The fill goes on: it delivers 3 to 10 while from7 is still
	// subscribing, then the subscription completes.
	closeFill()
	recExpectRun(a, epoch, 2, 8)
	gapFillDone(t, ts, room)
	closeHeld()
	recCheckAck(t, from7.expect("ack"), epoch, 10, true)

	for i := 11; i <= 15; i++ {
		bus.publish(t, room, fmt.Sprintf(`{"n":%d}`, i))
	}
	// Each client gets what follows its ack once, in order, and nothing
	// else.
	recExpectRun(a, epoch, 10, 5)
	recExpectRun(live, epoch, 10, 5)
	recExpectRun(from5, epoch, 5, 10)
	recExpectRun(from0, epoch, 0, 15)
	recExpectRun(from7, epoch, 7, 8)
	sse.expectRun(epoch, 10, 5)
	bus.publish(t, room, `{"n":16}`)
	for _, w := range []*wsConn{a, live, from5, from0, from7} {
		recExpectRun(w, epoch, 15, 1)
	}
	sse.expectRun(epoch, 15, 1)
}

// A room whose only member leaves while its fill waits for history lets the
// fill end: nothing is left to deliver to.
func TestGapFillEndsWithoutMembers(t *testing.T) {
	ts, bus, _ := startFaultServer(t, fanout.MemoryConfig{}, nil)
	const room = "gap:empty"
	a := gapSubscribers(t, ts, room, 1)[0]
	epoch := bus.publish(t, room, `{"n":1}`).Epoch
	recExpectRun(a, epoch, 0, 1)

	var reads atomic.Int32
	bus.setHistory(func(ctx context.Context, room string, q fanout.HistoryQuery, read func() (fanout.History, error)) (fanout.History, error) {
		reads.Add(1)
		return fanout.History{}, errInjected
	})
	bus.setFault(func(m *fanout.Message) faultAction {
		if m.Offset == 2 {
			return dropIt
		}
		return deliverOnce
	})
	bus.publish(t, room, `{"n":2}`)
	bus.publish(t, room, `{"n":3}`)
	waitFor(t, "the fill to retry", func() bool { return reads.Load() >= 2 })
	r := ts.srv.hub.lookup(room)
	a.c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "the room to be let go", func() bool { return ts.srv.hub.lookup(room) == nil })
	// The fill notices at its next try (goleak checks that it ended).
	waitFor(t, "the fill to end", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return !r.filling
	})
}

// gapReadThenWait returns a History hook that, for the first read it is
// armed for (match), reads history, says so on read, and answers only once
// release is closed: a read made before what happens meanwhile.
func gapReadThenWait(match func(q fanout.HistoryQuery) bool) (hook func(context.Context, string, fanout.HistoryQuery, func() (fanout.History, error)) (fanout.History, error), read, release chan struct{}) {
	read, release = make(chan struct{}), make(chan struct{})
	var armed atomic.Bool
	armed.Store(true)
	hook = func(ctx context.Context, room string, q fanout.HistoryQuery, readHistory func() (fanout.History, error)) (fanout.History, error) {
		if !match(q) || !armed.CompareAndSwap(true, false) {
			return readHistory()
		}
		h, err := readHistory()
		close(read)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return h, err
	}
	return hook, read, release
}

// A subscription whose history read is older than where the room's position
// started (another member's later read started it, and a message between
// the two was lost) reads again instead of leaving a gap.
func TestGapFillSubscribeReadBehindStart(t *testing.T) {
	ts, bus, _ := startFaultServer(t, fanout.MemoryConfig{}, nil)
	const room = "gap:behind"
	var epoch string
	for i := 1; i <= 10; i++ {
		epoch = bus.publish(t, room, fmt.Sprintf(`{"n":%d}`, i)).Epoch
	}
	hook, read, release := gapReadThenWait(func(q fanout.HistoryQuery) bool { return q.Since != nil && q.Since.Offset == 5 })
	bus.setHistory(hook)
	releaseOnce := sync.OnceFunc(func() { close(release) })
	defer releaseOnce()

	// The first member's read sees 10, and waits.
	first := dialWS(t, ts.ws, nil)
	first.expect("welcome")
	first.send(map[string]any{"type": "subscribe", "id": "first", "room": room, "since": fanout.Position{Epoch: epoch, Offset: 5}})
	<-read
	// 11 is lost on its way to the node; 12 arrives.
	bus.setFault(func(m *fanout.Message) faultAction {
		if m.Offset == 11 {
			return dropIt
		}
		return deliverOnce
	})
	bus.publish(t, room, `{"n":11}`)
	bus.publish(t, room, `{"n":12}`)
	// A second member's read, at 12, completes first and starts the room
	// there.
	second := dialWS(t, ts.ws, nil)
	second.expect("welcome")
	recCheckAck(t, recSubscribe(second, "second", room, nil), epoch, 12, false)

	// The first one's subscription completes without a gap.
	releaseOnce()
	recCheckAck(t, first.expect("ack"), epoch, 12, true)
	recExpectRun(first, epoch, 5, 7)
	bus.publish(t, room, `{"n":13}`)
	recExpectRun(first, epoch, 12, 1)
	recExpectRun(second, epoch, 12, 1)
}

// What the bus says while a fill reads history (a resync, or more live
// messages than the buffer holds) makes the fill read again: its read may
// predate what it says.
func TestGapFillRereads(t *testing.T) {
	for _, tt := range []struct {
		name string
		// meanwhile runs while the fill's read, made at offset 4, waits;
		// it returns the room's last offset. The fill started with 4 in
		// its buffer.
		meanwhile func(t *testing.T, bus *faultBus, room string) uint64
	}{
		{name: "a resync", meanwhile: func(t *testing.T, bus *faultBus, room string) uint64 {
			bus.setFault(func(m *fanout.Message) faultAction { return dropIt })
			bus.publish(t, room, `{"n":5}`)
			bus.resync(room)
			return 5
		}},
		{name: "a buffer overflow", meanwhile: func(t *testing.T, bus *faultBus, room string) uint64 {
			// The buffer fills up, and the last message, past it, drops it.
			last := uint64(4 + maxPendingFrames)
			for i := uint64(5); i <= last; i++ {
				bus.publish(t, room, fmt.Sprintf(`{"n":%d}`, i))
			}
			return last
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts, bus, _ := startFaultServer(t, fanout.MemoryConfig{HistorySize: 2 * maxPendingFrames}, nil)
			const room = "gap:reread"
			a := gapSubscribers(t, ts, room, 1)[0]
			epoch := bus.publish(t, room, `{"n":1}`).Epoch
			bus.publish(t, room, `{"n":2}`)
			recExpectRun(a, epoch, 0, 2)
			hook, read, release := gapReadThenWait(func(q fanout.HistoryQuery) bool { return q.Since != nil })
			bus.setHistory(hook)
			releaseOnce := sync.OnceFunc(func() { close(release) })
			defer releaseOnce()

			// 3 is lost; 4 starts a fill, whose read waits.
			bus.setFault(func(m *fanout.Message) faultAction {
				if m.Offset == 3 {
					return dropIt
				}
				return deliverOnce
			})
			bus.publish(t, room, `{"n":3}`)
			bus.publish(t, room, `{"n":4}`)
			<-read
			last := tt.meanwhile(t, bus, room)
			waitFor(t, "the node to take it in", func() bool {
				r := ts.srv.hub.lookup(room)
				r.mu.Lock()
				defer r.mu.Unlock()
				return r.reread
			})
			releaseOnce()
			recExpectRun(a, epoch, 2, int(last-2))
			bus.setFault(nil)
			bus.publish(t, room, fmt.Sprintf(`{"n":%d}`, last+1))
			recExpectRun(a, epoch, last, 1)
		})
	}
}

// What comes before the room's position starts (the first subscription's
// history read) is checked against it: a gap after it, or a resync before
// it, starts a fill at once.
func TestGapFillAtStart(t *testing.T) {
	for _, tt := range []struct {
		name string
		// meanwhile runs while the first read, at 2, waits, and 3 is
		// lost; taken says when the node has taken it in. last is the
		// room's last offset.
		meanwhile func(t *testing.T, bus *faultBus, room string)
		taken     func(r *hubRoom) bool
		last      uint64
	}{
		{name: "a gap in what came", meanwhile: func(t *testing.T, bus *faultBus, room string) {
			bus.publish(t, room, `{"n":3}`)
			bus.publish(t, room, `{"n":4}`)
		}, taken: func(r *hubRoom) bool { return len(r.pending) == 1 }, last: 4},
		{name: "a resync", meanwhile: func(t *testing.T, bus *faultBus, room string) {
			bus.publish(t, room, `{"n":3}`)
			bus.resync(room)
		}, taken: func(r *hubRoom) bool { return r.reread }, last: 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts, bus, _ := startFaultServer(t, fanout.MemoryConfig{}, nil)
			const room = "gap:start"
			bus.publish(t, room, `{"n":1}`)
			epoch := bus.publish(t, room, `{"n":2}`).Epoch
			hook, read, release := gapReadThenWait(func(q fanout.HistoryQuery) bool { return q.Since != nil && q.Since.Offset == 1 })
			bus.setHistory(hook)
			releaseOnce := sync.OnceFunc(func() { close(release) })
			defer releaseOnce()
			a := dialWS(t, ts.ws, nil)
			a.expect("welcome")
			a.send(map[string]any{"type": "subscribe", "id": "a", "room": room, "since": fanout.Position{Epoch: epoch, Offset: 1}})
			<-read

			bus.setFault(func(m *fanout.Message) faultAction {
				if m.Offset == 3 {
					return dropIt
				}
				return deliverOnce
			})
			tt.meanwhile(t, bus, room)
			waitFor(t, "the node to take it in", func() bool {
				r := ts.srv.hub.lookup(room)
				r.mu.Lock()
				defer r.mu.Unlock()
				return tt.taken(r)
			})
			releaseOnce()
			recCheckAck(t, a.expect("ack"), epoch, 2, true)
			recExpectRun(a, epoch, 1, int(tt.last-1))
		})
	}
}

// A subscription whose history read lags what the room has delivered (a
// history served by a replica behind the primary) reads again instead of
// leaving a gap.
func TestGapFillSubscribeLaggingHistory(t *testing.T) {
	ts, bus, _ := startFaultServer(t, fanout.MemoryConfig{}, nil)
	const room = "gap:lag"
	a := gapSubscribers(t, ts, room, 1)[0]
	var epoch string
	for i := 1; i <= 5; i++ {
		epoch = bus.publish(t, room, fmt.Sprintf(`{"n":%d}`, i)).Epoch
	}
	stale, err := bus.History(context.Background(), room, fanout.HistoryQuery{Since: &fanout.Position{Epoch: epoch, Offset: 3}})
	if err != nil {
		t.Fatal(err)
	}
	bus.publish(t, room, `{"n":6}`)
	bus.publish(t, room, `{"n":7}`)
	recExpectRun(a, epoch, 0, 7)

	// The first read answers as history stood at 5.
	var lagged atomic.Bool
	bus.setHistory(func(ctx context.Context, room string, q fanout.HistoryQuery, read func() (fanout.History, error)) (fanout.History, error) {
		if q.Since != nil && q.Since.Offset == 3 && lagged.CompareAndSwap(false, true) {
			return stale, nil
		}
		return read()
	})
	b := dialWS(t, ts.ws, nil)
	b.expect("welcome")
	recCheckAck(t, recSubscribe(b, "b", room, &fanout.Position{Epoch: epoch, Offset: 3}), epoch, 7, true)
	bus.publish(t, room, `{"n":8}`)
	recExpectRun(b, epoch, 3, 5)
	recExpectRun(a, epoch, 7, 1)
}
