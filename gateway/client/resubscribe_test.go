package client_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/fanout/fanouttest"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/gateway/client"
)

// roomErrors returns the codes of the EventErrors of room.
func (r *recorder) roomErrors(room string) []string {
	var codes []string
	for _, e := range r.all() {
		if e.Kind != client.EventError || e.Room != room {
			continue
		}
		var serr *client.ServerError
		if errors.As(e.Err, &serr) {
			codes = append(codes, serr.Code)
		} else {
			codes = append(codes, e.Err.Error())
		}
	}
	return codes
}

// checkRoom checks that room got offsets 1..n once each, in order, each with
// the body publishBus gave it.
func checkRoom(t *testing.T, rec *recorder, room string, n int) {
	t.Helper()
	msgs := rec.waitMessages(t, room, n)
	if got, want := offsets(msgs), seq(1, uint64(n)); !slices.Equal(got, want) {
		t.Errorf("%s: got offsets %v, want 1..%d once each, in order", room, got, n)
	}
	for _, m := range msgs {
		if want := string(body(int(m.Offset))); string(m.Data) != want {
			t.Errorf("%s message %d: got %s, want %s", room, m.Offset, m.Data, want)
		}
	}
}

// watchSubscribed polls Position(room) until the test ends and reports
// whether the room was ever missing from the client's subscriptions.
func watchSubscribed(t *testing.T, c *client.Client, room string) (dropped func() bool) {
	t.Helper()
	var gone atomic.Bool
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, ok := c.Position(room); !ok {
				gone.Store(true) // for good: nothing subscribes it again
			}
			time.Sleep(time.Millisecond)
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return gone.Load
}

// TestResubscribeTransientKeepsRoom: after a reconnect the node answers the
// resubscribe of a room with internal (its bus is unavailable), twice. The
// client keeps the room at its position, reports each refusal, reconnects
// with backoff, and ends subscribed, with every message published before,
// during and after the refusals delivered once, in order.
func TestResubscribeTransientKeepsRoom(t *testing.T) {
	bus := &fanouttest.FlakyHistory{Bus: newBus(t, fanout.MemoryConfig{})}
	n := startNode(t, bus, nil)
	px := startProxy(t, n.addr)
	c, rec := dial(t, px.url, nil)
	ctx := ctxT(t)
	for _, room := range []string{"room", "other"} {
		if _, err := c.Subscribe(ctx, room, client.SubscribeOptions{Presence: room == "room"}); err != nil {
			t.Fatalf("Subscribe(%s): %v", room, err)
		}
	}
	dropped := watchSubscribed(t, c, "room")
	publishBus(t, bus, "room", 1, 5)
	publishBus(t, bus, "other", 1, 2)
	rec.waitMessages(t, "room", 5)
	rec.waitMessages(t, "other", 2)

	// The node refuses the next two subscribes of room; each refusal comes
	// right after two more messages of the room are published (11, 12 and
	// 13, 14), so some are published while the client is refused.
	var publishErrs []error
	var perrMu sync.Mutex
	bus.FailHistory("room", 2, func(n int) {
		for i := 9 + 2*n; i <= 10+2*n; i++ {
			if _, err := bus.Bus.Publish(context.Background(), "room", fanout.Publication{Data: body(i)}); err != nil {
				perrMu.Lock()
				publishErrs = append(publishErrs, err)
				perrMu.Unlock()
			}
		}
	})
	// The connection drops, and messages are published while the client
	// cannot come back.
	px.setRefuse(true)
	px.cut()
	rec.waitKind(t, client.EventDisconnected, 1)
	publishBus(t, bus, "room", 6, 10)
	publishBus(t, bus, "other", 3, 4)
	px.setRefuse(false)

	rec.waitKind(t, client.EventConnected, 2)
	if got := bus.Failures(); got != 2 {
		t.Fatalf("the node refused %d subscribes of room, want 2", got)
	}
	publishBus(t, bus, "room", 15, 20)
	publishBus(t, bus, "other", 5, 5)
	checkRoom(t, rec, "room", 20)
	checkRoom(t, rec, "other", 5)
	perrMu.Lock()
	if len(publishErrs) > 0 {
		t.Errorf("publishing during the refusals: %v", publishErrs)
	}
	perrMu.Unlock()

	if got, want := rec.roomErrors("room"), []string{"internal", "internal"}; !slices.Equal(got, want) {
		t.Errorf("EventErrors of room: got %v, want %v", got, want)
	}
	if got := rec.roomErrors("other"); len(got) > 0 {
		t.Errorf("EventErrors of other: got %v, want none", got)
	}
	// The cut, then one close per refusal.
	if got := rec.count(client.EventDisconnected); got != 3 {
		t.Errorf("EventDisconnected: got %d, want 3", got)
	}
	for _, e := range rec.all() {
		if e.Kind == client.EventDisconnected && e.Err == nil {
			t.Errorf("EventDisconnected without a reason")
		}
	}
	if got := rec.count(client.EventLost); got != 0 {
		t.Errorf("EventLost: got %d, want 0", got)
	}
	if dropped() {
		t.Errorf("room was dropped from the client's subscriptions during the refusals")
	}
	if pos, ok := c.Position("room"); !ok || pos.Offset != 20 {
		t.Errorf("Position(room): got %v, %v; want offset 20, true", pos, ok)
	}
	// The connection is usable.
	if _, err := c.Publish(ctx, "room", 21, ""); err != nil {
		t.Errorf("Publish: %v", err)
	}
	rec.waitMessages(t, "room", 21)
}

// TestSubscribeTransientFailsToCaller: the first subscribe of a room is not
// retried: Subscribe returns the node's internal error and the room is not
// subscribed, with no reconnect; the application may call it again.
func TestSubscribeTransientFailsToCaller(t *testing.T) {
	bus := &fanouttest.FlakyHistory{Bus: newBus(t, fanout.MemoryConfig{})}
	n := startNode(t, bus, nil)
	c, rec := dial(t, n.url, nil)
	ctx := ctxT(t)
	bus.FailHistory("room", 1, nil)
	_, err := c.Subscribe(ctx, "room", client.SubscribeOptions{})
	var serr *client.ServerError
	if !errors.As(err, &serr) || serr.Code != "internal" {
		t.Fatalf("Subscribe: got %v, want a ServerError with code internal", err)
	}
	if _, ok := c.Position("room"); ok {
		t.Errorf("a room whose first subscribe failed is subscribed")
	}
	if _, err := c.Subscribe(ctx, "room", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe again: %v", err)
	}
	publishBus(t, bus, "room", 1, 1)
	rec.waitMessages(t, "room", 1)
	if got := rec.count(client.EventDisconnected); got != 0 {
		t.Errorf("EventDisconnected: got %d, want 0", got)
	}
	if got := rec.roomErrors("room"); len(got) > 0 {
		t.Errorf("EventErrors of room: got %v, want none (Subscribe returned the error)", got)
	}
}

// TestResubscribeTransientMovesNode: in a cluster, a node that refuses a
// room's resubscribe for now is left for the next endpoint, where every room
// resumes.
func TestResubscribeTransientMovesNode(t *testing.T) {
	cl := newCluster(t)
	mem := cl.mem
	flaky := &fanouttest.FlakyHistory{Bus: cl.node()}
	good := startNode(t, cl.node(), func(cfg *gateway.Config) { cfg.NodeID = "good" })
	bad := startNode(t, flaky, func(cfg *gateway.Config) { cfg.NodeID = "bad" })
	px := startProxy(t, good.addr)
	// After a drop the client goes to the next endpoint: bad, then good.
	c, rec := dial(t, px.url, func(o *client.Options) { o.URLs = []string{bad.url} })
	if got := c.Welcome().Node; got != "good" {
		t.Fatalf("connected to %q, want good", got)
	}
	if _, err := c.Subscribe(ctxT(t), "room", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	publishBus(t, mem, "room", 1, 3)
	rec.waitMessages(t, "room", 3)

	flaky.FailHistory("room", 1000, nil)
	px.cut()
	rec.waitKind(t, client.EventConnected, 2)
	if got := c.Welcome().Node; got != "good" {
		t.Errorf("connected to %q, want good", got)
	}
	if got := flaky.Failures(); got != 1 {
		t.Errorf("the bad node refused %d subscribes, want 1", got)
	}
	if got, want := rec.roomErrors("room"), []string{"internal"}; !slices.Equal(got, want) {
		t.Errorf("EventErrors of room: got %v, want %v", got, want)
	}
	publishBus(t, mem, "room", 4, 6)
	checkRoom(t, rec, "room", 6)
}
