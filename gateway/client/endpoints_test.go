package client_test

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/gateway/client"
)

// cluster is one Memory bus shared by several nodes, as one Redis is. A
// Memory holds one handler per room, so two nodes subscribed to it directly
// would take each other's place (a node leaving a room would cut the other
// off); each node gets a view (node) instead, whose handlers the cluster
// calls in turn for every delivery of the Memory.
type cluster struct {
	mem *fanout.Memory
	// ops serialises Subscribe and Unsubscribe, Memory calls included.
	ops sync.Mutex
	// mu guards handlers; a delivery holds it for reading while it calls
	// them, so that a view's Unsubscribe waits it out.
	mu       sync.RWMutex
	handlers map[string]map[*clusterNode]fanout.Handler
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	return &cluster{mem: newBus(t, fanout.MemoryConfig{}), handlers: make(map[string]map[*clusterNode]fanout.Handler)}
}

// node returns a view of the cluster's bus for one node.
func (c *cluster) node() *clusterNode { return &clusterNode{Memory: c.mem, c: c} }

// clusterNode is one node's view of a cluster: the Memory, but for
// Subscribe and Unsubscribe, which add and remove this node's handler.
type clusterNode struct {
	*fanout.Memory
	c *cluster
}

var _ fanout.Bus = (*clusterNode)(nil)

// Subscribe implements fanout.Bus.
func (n *clusterNode) Subscribe(ctx context.Context, room string, h fanout.Handler) error {
	c := n.c
	c.ops.Lock()
	defer c.ops.Unlock()
	if err := c.mem.Subscribe(ctx, room, clusterRoom{c, room}); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.handlers[room] == nil {
		c.handlers[room] = make(map[*clusterNode]fanout.Handler)
	}
	c.handlers[room][n] = h
	return nil
}

// Unsubscribe implements fanout.Bus.
func (n *clusterNode) Unsubscribe(ctx context.Context, room string) error {
	c := n.c
	c.ops.Lock()
	defer c.ops.Unlock()
	c.mu.Lock()
	delete(c.handlers[room], n)
	last := len(c.handlers[room]) == 0
	c.mu.Unlock()
	if !last {
		return nil
	}
	return c.mem.Unsubscribe(ctx, room)
}

// clusterRoom is the Memory's handler of a room: it calls every node's.
type clusterRoom struct {
	c    *cluster
	room string
}

func (r clusterRoom) each(f func(fanout.Handler)) {
	r.c.mu.RLock()
	defer r.c.mu.RUnlock()
	for _, h := range r.c.handlers[r.room] {
		f(h)
	}
}

func (r clusterRoom) HandleMessage(m *fanout.Message) {
	r.each(func(h fanout.Handler) { h.HandleMessage(m) })
}

func (r clusterRoom) HandlePresence(e fanout.PresenceEvent) {
	r.each(func(h fanout.Handler) { h.HandlePresence(e) })
}

func (r clusterRoom) HandleResync(room string) {
	r.each(func(h fanout.Handler) { h.HandleResync(room) })
}

// TestEndpointsFailOver: a client given every node of a cluster connects to
// one that answers, and when its node goes away it resumes on the next, with
// no message lost or repeated.
func TestEndpointsFailOver(t *testing.T) {
	cl := newCluster(t)
	bus := cl.mem
	first := startNode(t, cl.node(), func(c *gateway.Config) { c.NodeID = "first" })
	second := startNode(t, cl.node(), func(c *gateway.Config) { c.NodeID = "second" })
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
