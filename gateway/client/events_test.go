package client_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/gateway/client"
)

// next returns the next event of c, failing the test if none comes within
// waitTimeout.
func next(t *testing.T, c *client.Client) client.Event {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	select {
	case e, ok := <-c.Events():
		if !ok {
			t.Fatalf("Events closed")
		}
		return e
	case <-timer.C:
	}
	t.Fatalf("no event within %v", waitTimeout)
	return client.Event{}
}

// nextMessages reads events of c until n messages have come and returns
// them with every other event read meanwhile.
func nextMessages(t *testing.T, c *client.Client, n int) (msgs []client.Message, others []client.Event) {
	t.Helper()
	for len(msgs) < n {
		e := next(t, c)
		if e.Kind == client.EventMessage {
			msgs = append(msgs, e.Message)
		} else {
			others = append(others, e)
		}
	}
	return msgs, others
}

// checkBodies checks that msgs are offsets from..to once each, in order,
// each with the body publishBus gives it.
func checkBodies(t *testing.T, msgs []client.Message, from, to uint64) {
	t.Helper()
	if got, want := offsets(msgs), seq(from, to); !slices.Equal(got, want) {
		t.Fatalf("offsets: got %v, want %d..%d once each, in order", got, from, to)
	}
	for _, m := range msgs {
		if want := fmt.Sprintf(`{"n":%d}`, m.Offset); string(m.Data) != want {
			t.Errorf("message %d: got %s, want %s", m.Offset, m.Data, want)
		}
	}
}

// An application that publishes from the goroutine that reads Events, each
// publish waiting for its ack, and so reads nothing while its own messages
// come back, goes on: the read loop keeps taking acks while the queue is
// full, and the messages the queue had no room for come again from history.
func TestPublishFromEventsLoop(t *testing.T) {
	const buffer = 16
	const n = 3 * buffer
	bus := newBus(t, fanout.MemoryConfig{})
	node := startNode(t, bus, nil)
	c := dialQuiet(t, node.url, func(o *client.Options) { o.EventBuffer = buffer })
	ctx := ctxT(t)
	if _, err := c.Subscribe(ctx, "room", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	publishBus(t, bus, "room", 1, 1)

	type result struct {
		msgs []client.Message
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var msgs []client.Message
		for e := range c.Events() {
			if e.Kind != client.EventMessage {
				continue
			}
			msgs = append(msgs, e.Message)
			if len(msgs) == 1 {
				// Offsets 2..n+1, with bodies to match.
				for i := 2; i <= n+1; i++ {
					if _, err := c.Publish(ctx, "room", []byte(fmt.Sprintf(`{"n":%d}`, i)), ""); err != nil {
						done <- result{msgs, fmt.Errorf("Publish %d of %d: %w", i-1, n, err)}
						return
					}
				}
			}
			if len(msgs) == n+1 {
				done <- result{msgs, nil}
				return
			}
		}
		done <- result{msgs, errors.New("Events closed")}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(2 * waitTimeout):
		t.Fatalf("the application is stuck")
	}
	if r.err != nil {
		t.Fatalf("after %d messages: %v", len(r.msgs), r.err)
	}
	checkBodies(t, r.msgs, 1, n+1)
	// Nothing else is on its way: the next message is the next offset.
	publishBus(t, bus, "room", n+2, n+2)
	msgs, _ := nextMessages(t, c, 1)
	checkBodies(t, msgs, n+2, n+2)
}

// An application that stops reading Events during a burst in two rooms gets
// every message once and in order when it reads again, and a presence sync
// for the room whose presence it watches. Meanwhile its commands complete
// and the client holds at most EventBuffer events.
func TestSlowReaderBurst(t *testing.T) {
	const buffer = 16
	const burst = 10 * buffer
	bus := newBus(t, fanout.MemoryConfig{})
	node := startNode(t, bus, nil)
	c := dialQuiet(t, node.url, func(o *client.Options) { o.EventBuffer = buffer })
	ctx := ctxT(t)
	if _, err := c.Subscribe(ctx, "a", client.SubscribeOptions{Presence: true}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	if _, err := c.Subscribe(ctx, "b", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}

	// The application reads nothing while the burst comes.
	for i := 1; i <= burst; i++ {
		publishBus(t, bus, "a", i, i)
		publishBus(t, bus, "b", i, i)
	}
	waitFor(t, "a full queue", func() bool { return client.QueueLen(c) >= buffer })
	start := time.Now()
	pa, err := c.Publish(ctx, "b", body(burst+1), "")
	if err != nil || pa.Offset != burst+1 {
		t.Fatalf("Publish while the application does not read: got %+v %v, want offset %d", pa, err, burst+1)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Publish while the application does not read took %v", took)
	}
	// Paused, the room stays subscribed on the node (it keeps its place
	// among the session's rooms); the client drops its events as they come.
	waitFor(t, "room a paused", func() bool { return client.Paused(c, "a") })
	if page, err := c.Presence(ctx, "a", client.PresenceOptions{}); err != nil || page.Total != 1 {
		t.Fatalf("Presence while the application does not read: got %+v, %v; want this session, still a member", page, err)
	}
	// At most EventBuffer events, and the EventConnected of the dial.
	if got := client.QueueLen(c); got > buffer+1 {
		t.Errorf("queued events: got %d, want at most %d", got, buffer+1)
	}

	var a, b []client.Message
	var syncs int
	for len(a) < burst || len(b) < burst+1 {
		e := next(t, c)
		switch {
		case e.Kind == client.EventMessage && e.Message.Room == "a":
			a = append(a, e.Message)
		case e.Kind == client.EventMessage && e.Message.Room == "b":
			b = append(b, e.Message)
		case e.Kind == client.EventPresence && e.Presence == client.Presence{Room: "a", Event: "sync"}:
			syncs++
		case e.Kind == client.EventConnected:
		default:
			t.Errorf("unexpected event %+v", e)
		}
		if got := client.QueueLen(c); got > buffer+1 {
			t.Fatalf("queued events: got %d, want at most %d", got, buffer+1)
		}
	}
	checkBodies(t, a, 1, burst)
	checkBodies(t, b, 1, burst+1)
	if syncs == 0 {
		t.Errorf("got no presence sync for room a")
	}
	if pos, ok := c.Position("a"); !ok || pos.Offset != burst {
		t.Errorf("Position(a): got %v %v, want offset %d", pos, ok, burst)
	}
	members, err := c.AllMembers(ctx, "a")
	if err != nil || len(members) != 1 || members[0].Session != c.Welcome().Session {
		t.Errorf("AllMembers(a) after the pause: got %+v %v, want this session", members, err)
	}
}

// When the node's history no longer holds what a paused room missed, the
// room goes on from the node's current position after EventLost, as after a
// reconnect.
func TestSlowReaderLost(t *testing.T) {
	const buffer = 8
	bus := newBus(t, fanout.MemoryConfig{HistorySize: 20})
	node := startNode(t, bus, nil)
	c := dialQuiet(t, node.url, func(o *client.Options) { o.EventBuffer = buffer })
	ctx := ctxT(t)
	ack, err := c.Subscribe(ctx, "room", client.SubscribeOptions{})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	publishBus(t, bus, "room", 1, 100)
	waitFor(t, "the room paused", func() bool { return client.Paused(c, "room") })

	var msgs []client.Message
	var lost *client.Event
	for lost == nil {
		switch e := next(t, c); e.Kind {
		case client.EventMessage:
			msgs = append(msgs, e.Message)
		case client.EventLost:
			lost = &e
		}
	}
	if len(msgs) == 0 || len(msgs) > buffer {
		t.Fatalf("messages before EventLost: got %d (%v), want 1 to %d; lost %+v", len(msgs), offsets(msgs), buffer, lost)
	}
	checkBodies(t, msgs, 1, uint64(len(msgs)))
	if want := (client.Position{Epoch: ack.Epoch, Offset: 100}); lost.Room != "room" || lost.Position != want {
		t.Errorf("EventLost: got room %q position %v, want room %v", lost.Room, lost.Position, want)
	}
	if pos, _ := c.Position("room"); pos.Offset != 100 {
		t.Errorf("Position after EventLost: got %v, want offset 100", pos)
	}
	publishBus(t, bus, "room", 101, 101)
	msgs, _ = nextMessages(t, c, 1)
	checkBodies(t, msgs, 101, 101)
}

// Close returns when called from the goroutine that reads Events, with
// events still queued.
func TestCloseFromEventsLoop(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	node := startNode(t, bus, nil)
	c := dialQuiet(t, node.url, func(o *client.Options) { o.EventBuffer = 4 })
	if _, err := c.Subscribe(ctxT(t), "room", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	publishBus(t, bus, "room", 1, 50)
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		for e := range c.Events() {
			if e.Kind == client.EventMessage {
				c.Close()
			}
		}
	}()
	select {
	case <-closed:
	case <-time.After(waitTimeout):
		t.Fatalf("Close from the Events loop did not return")
	}
	if _, err := c.Publish(context.Background(), "room", 1, ""); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Publish after Close: got %v, want %v", err, client.ErrClosed)
	}
}

// A node that limits how fast a session subscribes and unsubscribes refuses
// some of the client's pauses and resumes; the client tries them again, and
// no message is lost.
func TestSlowReaderRateLimited(t *testing.T) {
	const buffer = 4
	const burst = 60
	bus := newBus(t, fanout.MemoryConfig{})
	node := startNode(t, bus, func(cfg *gateway.Config) {
		// Two subscribes or unsubscribes per heartbeat tick of 10ms.
		cfg.MaxRoomsPerSession = 1
		cfg.PingInterval = 40 * time.Millisecond
	})
	c := dialQuiet(t, node.url, func(o *client.Options) { o.EventBuffer = buffer })
	if _, err := c.Subscribe(ctxT(t), "room", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	publishBus(t, bus, "room", 1, burst)
	msgs, _ := nextMessages(t, c, burst)
	checkBodies(t, msgs, 1, burst)
}
