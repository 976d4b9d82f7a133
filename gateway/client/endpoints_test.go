package client_test

import (
	"context"
	"net"
	"slices"
	"testing"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/gateway/client"
)

// TestEndpointsFailOver: a client given every node of a cluster connects to
// one that answers, and when its node goes away it resumes on the next, with
// no message lost or repeated.
func TestEndpointsFailOver(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	first := startNode(t, bus, func(c *gateway.Config) { c.NodeID = "first" })
	second := startNode(t, bus, func(c *gateway.Config) { c.NodeID = "second" })
	// An endpoint where nothing listens any more.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "ws://" + ln.Addr().String() + "/v1/ws"
	ln.Close()

	c, rec := dial(t, dead, func(o *client.Options) { o.URLs = []string{first.url, second.url} })
	if got := c.Welcome().Node; got != "first" {
		t.Fatalf("connected to %q, want first (the dead endpoint is skipped)", got)
	}
	if _, err := c.Subscribe(ctxT(t), "room", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	publishBus(t, bus, "room", 1, 5)
	rec.waitMessages(t, "room", 5)

	if err := first.shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	waitFor(t, "a connection to the second node", func() bool { return c.Welcome().Node == "second" })
	rec.waitKind(t, client.EventConnected, 1)
	publishBus(t, bus, "room", 6, 10)
	got := offsets(rec.waitMessages(t, "room", 10))
	if want := seq(1, 10); !slices.Equal(got, want) {
		t.Errorf("got offsets %v, want %v", got, want)
	}
}
