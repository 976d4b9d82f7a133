package client_test

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/gateway/client"
)

// A paused room keeps its slot under --max-rooms: a Subscribe the node
// refuses when no room is paused (the client holds max-rooms rooms) is
// refused while one is, and the paused room, taken back, loses nothing.
func TestPausedRoomKeepsItsSlot(t *testing.T) {
	const buffer = 4
	bus := newBus(t, fanout.MemoryConfig{})
	node := startNode(t, bus, func(cfg *gateway.Config) { cfg.MaxRoomsPerSession = 3 })
	c := dialQuiet(t, node.url, func(o *client.Options) { o.EventBuffer = buffer })
	ctx := ctxT(t)
	for _, room := range []string{"a", "b", "c"} {
		if _, err := c.Subscribe(ctx, room, client.SubscribeOptions{Presence: room == "a"}); err != nil {
			t.Fatalf("Subscribe(%s): %v", room, err)
		}
	}
	// The application does not read while room a gets a burst.
	publishBus(t, bus, "a", 1, 20)
	waitFor(t, "room a paused", func() bool { return client.Paused(c, "a") })
	// The client holds three rooms, the node's limit: a fourth must be
	// refused, as it is when no room is paused.
	_, subErr := c.Subscribe(ctx, "d", client.SubscribeOptions{})

	var msgs []client.Message
	var roomErr error
	deadline := time.After(3 * time.Second)
loop:
	for len(msgs) < 20 {
		select {
		case e := <-c.Events():
			switch {
			case e.Kind == client.EventMessage && e.Message.Room == "a":
				msgs = append(msgs, e.Message)
			case e.Kind == client.EventError && e.Room == "a":
				roomErr = e.Err
				break loop
			}
		case <-deadline:
			break loop
		}
	}
	var serr *client.ServerError
	if errors.As(subErr, &serr) && serr.Code == "forbidden" && len(msgs) == 20 {
		return
	}
	t.Fatalf("Subscribe(d) at the room limit while a is paused: got err %v (want forbidden); "+
		"room a: got %d of 20 messages %v, room error %v", subErr, len(msgs), offsets(msgs), roomErr)
}

// An application that leaves and joins a room again (Unsubscribe, then
// Subscribe) just as the client pauses it keeps a subscription that the node
// has dropped: resync unsubscribes the paused room from a list it made
// before the application's calls, without checking that the subscription is
// still the one it paused, so its unsubscribe lands after the new subscribe.
// The new subscription is not paused, so nothing subscribes it again: its
// messages never come.
func TestRejoinWhilePausedKeepsSubscription(t *testing.T) {
	const buffer = 8
	const rooms = 60
	bus := newBus(t, fanout.MemoryConfig{})
	node := startNode(t, bus, func(cfg *gateway.Config) {
		cfg.MaxRoomsPerSession = 4 * rooms
		cfg.PresenceRooms = []string{"*"} // every subscriber is a member
	})
	c := dialQuiet(t, node.url, func(o *client.Options) { o.EventBuffer = buffer })
	ctx := ctxT(t)
	name := func(i int) string { return fmt.Sprintf("r%d", i) }
	for i := range rooms {
		if _, err := c.Subscribe(ctx, name(i), client.SubscribeOptions{}); err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	}
	if _, err := c.Subscribe(ctx, "fill", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	publishBus(t, bus, "fill", 1, buffer)
	waitFor(t, "a full queue", func() bool { return client.QueueLen(c) >= buffer })

	// Each room is left and joined again as soon as it is paused.
	var wg sync.WaitGroup
	errs := make(chan error, rooms)
	for i := range rooms {
		wg.Go(func() {
			for !client.Paused(c, name(i)) {
				runtime.Gosched()
			}
			if err := c.Unsubscribe(ctx, name(i)); err != nil {
				errs <- fmt.Errorf("Unsubscribe(%s): %w", name(i), err)
				return
			}
			if _, err := c.Subscribe(ctx, name(i), client.SubscribeOptions{}); err != nil {
				errs <- fmt.Errorf("Subscribe(%s) again: %w", name(i), err)
			}
		})
	}
	for i := range rooms {
		publishBus(t, bus, name(i), 1, 1)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// The application reads again; once the queue has drained, one message
	// per room, fewer than the buffer holds at a time as it is read.
	rec := record(c)
	t.Cleanup(func() { c.Close(); <-rec.done })
	waitFor(t, "the queue drained", func() bool { return client.QueueLen(c) == 0 && !client.Paused(c, "fill") })
	time.Sleep(50 * time.Millisecond) // let resync finish what it does
	for i := range rooms {
		publishBus(t, bus, name(i), 2, 2)
	}
	deadline := time.Now().Add(time.Second)
	var missing []string
	for {
		missing = missing[:0]
		for i := range rooms {
			got := false
			for _, m := range rec.messages(name(i)) {
				got = got || m.Offset == 2
			}
			if !got {
				missing = append(missing, name(i))
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(missing) > 0 {
		page, _ := c.Presence(ctx, missing[0], client.PresenceOptions{})
		_, subscribed := c.Position(missing[0])
		paused := client.Paused(c, missing[0])
		unsubErr := c.Unsubscribe(ctx, missing[0])
		t.Fatalf("%d of %d rooms subscribed again got no message: %v; %s: client subscribed %v, paused %v; node members %d; Unsubscribe: %v",
			len(missing), rooms, missing, missing[0], subscribed, paused, page.Total, unsubErr)
	}
}
