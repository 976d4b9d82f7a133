package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-rt/parley/fanout"
)

// faultAction is what faultBus does with one delivery of a message.
type faultAction uint8

const (
	deliverOnce  faultAction = iota
	dropIt                   // never delivered
	deliverTwice             // delivered, then again
	deliverLate              // delivered after the room's next message
)

// errInjected is the error of the calls faultBus fails.
var errInjected = errors.New("faultbus: injected failure")

// faultBus is a real fanout.Memory with faults between it and the hub, as a
// bus of many nodes has them. Deliveries reach the handler from one
// goroutine, in the order the Memory made them, as a Redis bus's pub/sub
// connection delivers: asynchronously, after Publish has returned. Each
// delivery of a message goes through fault, which may drop it, repeat it or
// hold it back behind the next. A test may also call HandleResync, make
// History or Unsubscribe fail, or restart the bus empty: a fresh Memory under
// the same subscriptions, so that every room has a new epoch and no history,
// as when Redis restarts without its data.
type faultBus struct {
	mc fanout.MemoryConfig

	mu       sync.Mutex
	mem      *fanout.Memory
	old      []*fanout.Memory
	handlers map[string]fanout.Handler // the subscribed rooms' handler
	late     map[string]*fanout.Message
	fault    func(m *fanout.Message) faultAction
	// history, when set, answers every History call in place of read,
	// which reads the Memory: it may fail, wait, or read and then wait.
	history func(ctx context.Context, room string, q fanout.HistoryQuery, read func() (fanout.History, error)) (fanout.History, error)
	// unsubFails is how many Unsubscribe calls fail from now; unsubFirst
	// makes them unsubscribe before failing.
	unsubFails int
	unsubFirst bool

	// dmu is held while the handler runs, so that Unsubscribe can wait out
	// a call in progress.
	dmu    sync.Mutex
	qmu    sync.Mutex
	queue  []faultEvent
	wake   chan struct{}
	stop   chan struct{}
	done   chan struct{}
	closed bool
}

// faultEvent is one call for the handler: a message, a presence event, or a
// resync.
type faultEvent struct {
	room     string
	msg      *fanout.Message
	presence *fanout.PresenceEvent
}

var _ fanout.Bus = (*faultBus)(nil)

func newFaultBus(mc fanout.MemoryConfig) *faultBus {
	b := &faultBus{
		mc:       mc,
		mem:      fanout.NewMemory(mc),
		handlers: make(map[string]fanout.Handler),
		late:     make(map[string]*fanout.Message),
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go b.run()
	return b
}

func (b *faultBus) memory() *fanout.Memory {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mem
}

// setFault sets what happens to each delivery from now; nil delivers all.
func (b *faultBus) setFault(f func(m *fanout.Message) faultAction) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fault = f
}

// setHistory sets the hook of History calls; nil removes it.
func (b *faultBus) setHistory(f func(ctx context.Context, room string, q fanout.HistoryQuery, read func() (fanout.History, error)) (fanout.History, error)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.history = f
}

// failUnsubscribe makes the next n Unsubscribe calls fail; after says
// whether they unsubscribe first.
func (b *faultBus) failUnsubscribe(n int, after bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unsubFails, b.unsubFirst = n, after
}

// resync has the handler of room told that messages may have been missed,
// in order with the deliveries queued before it.
func (b *faultBus) resync(room string) {
	b.enqueue(faultEvent{room: room})
}

// restart replaces the Memory with an empty one and subscribes every
// subscribed room on it again, as a Redis bus does after reconnecting to a
// Redis that lost its data; with resync it then tells each room's handler,
// as that bus does.
func (b *faultBus) restart(resync bool) {
	b.mu.Lock()
	b.old = append(b.old, b.mem)
	b.mem = fanout.NewMemory(b.mc)
	mem := b.mem
	var rooms []string
	for room := range b.handlers {
		rooms = append(rooms, room)
	}
	b.mu.Unlock()
	for _, room := range rooms {
		mem.Subscribe(context.Background(), room, faultHandler{b})
		if resync {
			b.resync(room)
		}
	}
}

// faultHandler is the handler faultBus gives its Memory: it applies the
// faults and queues what is left for the delivery goroutine.
type faultHandler struct{ b *faultBus }

func (fh faultHandler) HandleMessage(m *fanout.Message) {
	b := fh.b
	b.mu.Lock()
	action := deliverOnce
	if b.fault != nil {
		action = b.fault(m)
	}
	held := b.late[m.Room]
	delete(b.late, m.Room)
	if action == deliverLate {
		b.late[m.Room] = m
	}
	b.mu.Unlock()
	switch action {
	case deliverOnce:
		b.enqueue(faultEvent{room: m.Room, msg: m})
	case deliverTwice:
		b.enqueue(faultEvent{room: m.Room, msg: m})
		b.enqueue(faultEvent{room: m.Room, msg: m})
	}
	if held != nil {
		b.enqueue(faultEvent{room: m.Room, msg: held})
	}
}

func (fh faultHandler) HandlePresence(e fanout.PresenceEvent) {
	fh.b.enqueue(faultEvent{room: e.Room, presence: &e})
}

func (fh faultHandler) HandleResync(room string) { fh.b.resync(room) }

func (b *faultBus) enqueue(ev faultEvent) {
	b.qmu.Lock()
	b.queue = append(b.queue, ev)
	b.qmu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// run is the delivery goroutine: it hands queued events to the room's
// handler, one at a time, while the room is subscribed.
func (b *faultBus) run() {
	defer close(b.done)
	for {
		b.qmu.Lock()
		evs := b.queue
		b.queue = nil
		b.qmu.Unlock()
		if len(evs) == 0 {
			select {
			case <-b.wake:
				continue
			case <-b.stop:
				return
			}
		}
		for _, ev := range evs {
			b.dmu.Lock()
			b.mu.Lock()
			h := b.handlers[ev.room]
			b.mu.Unlock()
			switch {
			case h == nil:
			case ev.msg != nil:
				h.HandleMessage(ev.msg)
			case ev.presence != nil:
				h.HandlePresence(*ev.presence)
			default:
				h.HandleResync(ev.room)
			}
			b.dmu.Unlock()
		}
	}
}

func (b *faultBus) Publish(ctx context.Context, room string, p fanout.Publication) (fanout.PublishResult, error) {
	return b.memory().Publish(ctx, room, p)
}

func (b *faultBus) Subscribe(ctx context.Context, room string, h fanout.Handler) error {
	mem := b.memory()
	if err := mem.Subscribe(ctx, room, faultHandler{b}); err != nil {
		return err
	}
	b.mu.Lock()
	b.handlers[room] = h
	b.mu.Unlock()
	return nil
}

func (b *faultBus) Unsubscribe(ctx context.Context, room string) error {
	b.mu.Lock()
	fail := b.unsubFails > 0
	if fail {
		b.unsubFails--
	}
	first := b.unsubFirst
	b.mu.Unlock()
	if fail && !first {
		return errInjected
	}
	b.mu.Lock()
	delete(b.handlers, room)
	b.mu.Unlock()
	err := b.memory().Unsubscribe(ctx, room)
	// No call reaches the handler once Unsubscribe returns.
	b.dmu.Lock()
	b.dmu.Unlock()
	if fail {
		return errInjected
	}
	return err
}

func (b *faultBus) History(ctx context.Context, room string, q fanout.HistoryQuery) (fanout.History, error) {
	b.mu.Lock()
	hook := b.history
	b.mu.Unlock()
	read := func() (fanout.History, error) { return b.memory().History(ctx, room, q) }
	if hook != nil {
		return hook(ctx, room, q, read)
	}
	return read()
}

func (b *faultBus) Join(ctx context.Context, room string, m fanout.Member) error {
	return b.memory().Join(ctx, room, m)
}

func (b *faultBus) EnterAfter(ctx context.Context, room string, m fanout.Member, prefix string) ([]fanout.Member, error) {
	return b.memory().EnterAfter(ctx, room, m, prefix)
}

func (b *faultBus) Enter(ctx context.Context, room string, m fanout.Member, max int) ([]fanout.Member, error) {
	return b.memory().Enter(ctx, room, m, max)
}

func (b *faultBus) Leave(ctx context.Context, room string, m fanout.Member) error {
	return b.memory().Leave(ctx, room, m)
}

func (b *faultBus) Presence(ctx context.Context, room string, q fanout.PresenceQuery) (fanout.PresencePage, error) {
	return b.memory().Presence(ctx, room, q)
}

func (b *faultBus) Register(ctx context.Context, session string, deliver func(data []byte)) error {
	return b.memory().Register(ctx, session, deliver)
}

func (b *faultBus) Unregister(ctx context.Context, session string) error {
	return b.memory().Unregister(ctx, session)
}

func (b *faultBus) Send(ctx context.Context, session string, data []byte) error {
	return b.memory().Send(ctx, session, data)
}

func (b *faultBus) Post(ctx context.Context, session string, data []byte, max int, ttl time.Duration) error {
	return b.memory().Post(ctx, session, data, max, ttl)
}

func (b *faultBus) Claim(ctx context.Context, session string, deliver func(data []byte)) ([][]byte, error) {
	return b.memory().Claim(ctx, session, deliver)
}

func (b *faultBus) Ready() bool { return b.memory().Ready() }

// Close stops the delivery goroutine and closes every Memory the bus used.
func (b *faultBus) Close() error {
	b.qmu.Lock()
	closed := b.closed
	b.closed = true
	b.qmu.Unlock()
	if closed {
		return nil
	}
	close(b.stop)
	<-b.done
	b.mu.Lock()
	mems := append(b.old, b.mem)
	b.mu.Unlock()
	for _, m := range mems {
		m.Close()
	}
	return nil
}

// publish publishes data to room on the bus and returns its position.
func (b *faultBus) publish(t testing.TB, room, data string) fanout.Position {
	t.Helper()
	res, err := b.Publish(context.Background(), room, fanout.Publication{Data: json.RawMessage(data)})
	if err != nil {
		t.Fatalf("bus publish: %v", err)
	}
	return res.Position
}

// startFaultServer starts a gateway on 127.0.0.1:0 over a faultBus around a
// Memory built from mc, with its metrics in reg; it is shut down when the
// test ends. The testServer's Memory is nil: publish through the faultBus or
// the HTTP API.
func startFaultServer(t testing.TB, mc fanout.MemoryConfig, mod func(*Config)) (*testServer, *faultBus, *prometheus.Registry) {
	t.Helper()
	bus := newFaultBus(mc)
	reg := prometheus.NewRegistry()
	cfg := Config{Bus: bus, NodeID: "test-node", DrainTimeout: 200 * time.Millisecond, APIKey: testAPIKey, Registerer: reg}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		bus.Close()
		t.Fatalf("New: %v", err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Config = srv.http
	hs.Start()
	ts := &testServer{srv: srv, http: hs, url: hs.URL, ws: "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ws"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if !srv.draining.Load() {
			srv.Shutdown(ctx)
		}
		hs.Close()
		bus.Close()
	})
	return ts, bus, reg
}

// counterValue returns the value of the counter called name in reg.
func counterValue(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}
