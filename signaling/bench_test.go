package signaling

import (
	"context"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/fanout/redistest"
)

// benchConn counts what is delivered to it and wakes the benchmark.
type benchConn struct {
	id  string
	got chan struct{}
}

func (c *benchConn) ID() string { return c.id }

func (c *benchConn) Answer(b []byte) bool { return c.Deliver(b) }

func (c *benchConn) Deliver([]byte) bool {
	c.got <- struct{}{}
	return true
}

// benchRelay measures a signal from one peer to another, sent and
// delivered: validation, encoding, the bus, and the recipient's delivery.
func benchRelay(b *testing.B, from, to *Service) {
	a := &benchConn{id: "aaaa", got: make(chan struct{}, 1024)}
	c := &benchConn{id: "bbbb", got: make(chan struct{}, 1024)}
	ctx := context.Background()
	if _, err := from.Join(ctx, a, JoinRequest{Call: "bench", User: "a"}); err != nil {
		b.Fatal(err)
	}
	if _, err := to.Join(ctx, c, JoinRequest{Call: "bench", User: "b"}); err != nil {
		b.Fatal(err)
	}
	data := candidate(1)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := from.Signal(ctx, a, "bench", "bbbb", data); err != nil {
			b.Fatal(err)
		}
		<-c.got
	}
}

func BenchmarkSignalMemory(b *testing.B) {
	s, err := New(Config{Bus: newBenchMemory(b), NodeID: "n1", SignalRate: 1e9, SignalBurst: 1e9})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchRelay(b, s, s)
}

func BenchmarkSignalRedisTwoNodes(b *testing.B) {
	srv := redistest.Start(b)
	n1 := newBenchRedis(b, srv, "n1")
	n2 := newBenchRedis(b, srv, "n2")
	benchRelay(b, n1, n2)
}

func newBenchMemory(b *testing.B) *fanout.Memory {
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	b.Cleanup(func() { bus.Close() })
	return bus
}

func newBenchRedis(b *testing.B, srv *redistest.Server, name string) *Service {
	bus, err := fanout.NewRedis(fanout.RedisConfig{URL: srv.URL(), NodeID: name + "-" + fanout.NewEpoch()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bus.Close() })
	for !bus.Ready() {
		time.Sleep(5 * time.Millisecond)
	}
	s, err := New(Config{Bus: bus, NodeID: name, SignalRate: 1e9, SignalBurst: 1e9})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.Close)
	return s
}
