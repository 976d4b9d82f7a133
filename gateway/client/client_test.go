package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/gateway/client"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for something the network does.
const waitTimeout = 10 * time.Second

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

// newBus returns a Memory bus closed when the test ends (after the nodes
// using it, which are started later and so shut down first).
func newBus(t *testing.T, cfg fanout.MemoryConfig) *fanout.Memory {
	t.Helper()
	bus := fanout.NewMemory(cfg)
	t.Cleanup(func() { bus.Close() })
	return bus
}

// node is a gateway serving on 127.0.0.1:0.
type node struct {
	srv  *gateway.Server
	addr string // 127.0.0.1:port
	url  string // ws://127.0.0.1:port/v1/ws

	once   sync.Once
	served chan error
}

// startNode starts a gateway on bus; mod may change its config. It is shut
// down when the test ends, unless the test did.
func startNode(t *testing.T, bus fanout.Bus, mod func(*gateway.Config)) *node {
	t.Helper()
	cfg := gateway.Config{Bus: bus, NodeID: "node-" + t.Name(), DrainTimeout: 100 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := gateway.New(cfg)
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	n := &node{srv: srv, addr: ln.Addr().String(), served: make(chan error, 1)}
	n.url = "ws://" + n.addr + "/v1/ws"
	go func() { n.served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		n.shutdown(ctx)
	})
	return n
}

// shutdown drains the node once and waits for Serve to return.
func (n *node) shutdown(ctx context.Context) error {
	var err error
	n.once.Do(func() {
		err = n.srv.Shutdown(ctx)
		if serr := <-n.served; !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = serr
		}
	})
	return err
}

// proxy is a TCP proxy on 127.0.0.1:0 in front of a node: a real network
// path the test can cut, refuse, or point at another node.
type proxy struct {
	ln  net.Listener
	url string // ws://127.0.0.1:port/v1/ws

	mu     sync.Mutex
	target string
	refuse bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	p := &proxy{ln: ln, url: "ws://" + ln.Addr().String() + "/v1/ws", target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target, refuse := p.target, p.refuse
		if !refuse {
			p.conns[c] = struct{}{}
		}
		p.mu.Unlock()
		if refuse {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go p.pipe(c, target)
	}
}

// pipe copies between c and a new connection to target until either ends.
func (p *proxy) pipe(c net.Conn, target string) {
	defer p.wg.Done()
	defer p.forget(c)
	up, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[up] = struct{}{}
	p.mu.Unlock()
	defer p.forget(up)
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(up, c)
		up.Close()
		c.Close()
	}()
	io.Copy(c, up)
	c.Close()
	up.Close()
	<-done
}

func (p *proxy) forget(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

// cut closes every connection through the proxy.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// setRefuse makes the proxy close new connections at once (or stop doing so).
func (p *proxy) setRefuse(refuse bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = refuse
}

// setTarget points new connections at another address.
func (p *proxy) setTarget(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = addr
}

// stamped is an event and when the test saw it.
type stamped struct {
	client.Event
	at time.Time
}

// recorder keeps every event of a client, read as they come.
type recorder struct {
	mu     sync.Mutex
	events []stamped
	done   chan struct{} // closed when Events is closed
}

func record(c *client.Client) *recorder {
	r := &recorder{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for e := range c.Events() {
			r.mu.Lock()
			r.events = append(r.events, stamped{Event: e, at: time.Now()})
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *recorder) all() []stamped {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *recorder) count(kind client.EventKind) int {
	n := 0
	for _, e := range r.all() {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

func (r *recorder) messages(room string) []client.Message {
	var out []client.Message
	for _, e := range r.all() {
		if e.Kind == client.EventMessage && e.Message.Room == room {
			out = append(out, e.Message)
		}
	}
	return out
}

func (r *recorder) waitKind(t *testing.T, kind client.EventKind, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d events of kind %d", n, kind), func() bool { return r.count(kind) >= n })
}

func (r *recorder) waitMessages(t *testing.T, room string, n int) []client.Message {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d messages in %s", n, room), func() bool { return len(r.messages(room)) >= n })
	return r.messages(room)
}

// dial connects a client to url with quick reconnects and records its
// events; mod may change the options. The client is closed when the test
// ends, before the nodes.
func dial(t *testing.T, url string, mod func(*client.Options)) (*client.Client, *recorder) {
	t.Helper()
	c := dialQuiet(t, url, mod)
	rec := record(c)
	t.Cleanup(func() {
		c.Close()
		<-rec.done
	})
	return c, rec
}

// dialQuiet is dial for a test that reads Events itself.
func dialQuiet(t *testing.T, url string, mod func(*client.Options)) *client.Client {
	t.Helper()
	opts := client.Options{URL: url, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	if mod != nil {
		mod(&opts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := client.Dial(ctx, opts)
	if err != nil {
		t.Fatalf("Dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// publishBus publishes {"n":from}..{"n":to} to room on the bus, as another
// node or the HTTP API would.
func publishBus(t *testing.T, bus fanout.Bus, room string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if _, err := bus.Publish(context.Background(), room, fanout.Publication{Data: body(i)}); err != nil {
			t.Fatalf("bus.Publish: %v", err)
		}
	}
}

func body(n int) json.RawMessage { return json.RawMessage(fmt.Sprintf(`{"n":%d}`, n)) }

func offsets(msgs []client.Message) []uint64 {
	out := make([]uint64, len(msgs))
	for i, m := range msgs {
		out[i] = m.Offset
	}
	return out
}

func seq(from, to uint64) []uint64 {
	var out []uint64
	for o := from; o <= to; o++ {
		out = append(out, o)
	}
	return out
}

func TestDialSubscribePublish(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	c, rec := dial(t, n.url, nil)
	other, _ := dial(t, n.url, nil)
	ctx := ctxT(t)

	rec.waitKind(t, client.EventConnected, 1)
	w := c.Welcome()
	if w.Session == "" || w.User == "" || w.Node != n.srv.NodeID() || w.PingMS != 25000 {
		t.Errorf("welcome: got %+v, want a session, a user, node %q and ping_ms 25000", w, n.srv.NodeID())
	}
	ack, err := c.Subscribe(ctx, "chat", client.SubscribeOptions{})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	if ack.Offset != 0 || ack.Epoch == "" || ack.Recovered {
		t.Errorf("subscribe ack: got %+v, want offset 0, an epoch, not recovered", ack)
	}

	tests := []struct {
		name          string
		from          *client.Client
		data          any
		key           string
		wantOffset    uint64
		wantDuplicate bool
	}{
		{name: "another client", from: other, data: map[string]int{"n": 1}, wantOffset: 1},
		{name: "raw JSON", from: other, data: json.RawMessage(`{"n": 2}`), wantOffset: 2},
		{name: "the subscriber itself", from: c, data: map[string]int{"n": 3}, wantOffset: 3},
		{name: "with a key", from: other, data: map[string]int{"n": 4}, key: "k", wantOffset: 4},
		{name: "the key again", from: other, data: map[string]int{"n": 99}, key: "k", wantOffset: 4, wantDuplicate: true},
		{name: "after the repeat", from: c, data: map[string]int{"n": 5}, wantOffset: 5},
	}
	for _, tt := range tests {
		pa, err := tt.from.Publish(ctx, "chat", tt.data, tt.key)
		if err != nil {
			t.Fatalf("%s: Publish: %v", tt.name, err)
		}
		if pa.Offset != tt.wantOffset || pa.Duplicate != tt.wantDuplicate || pa.Epoch != ack.Epoch {
			t.Errorf("%s: got ack %+v, want offset %d duplicate %v epoch %q", tt.name, pa, tt.wantOffset, tt.wantDuplicate, ack.Epoch)
		}
	}

	msgs := rec.waitMessages(t, "chat", 5)
	publishBus(t, bus, "chat", 6, 6) // a barrier: nothing else is on its way
	msgs = rec.waitMessages(t, "chat", 6)
	if got, want := offsets(msgs), seq(1, 6); !slices.Equal(got, want) {
		t.Fatalf("offsets: got %v, want %v", got, want)
	}
	for i, m := range msgs {
		if want := fmt.Sprintf(`{"n":%d}`, i+1); string(m.Data) != want || m.Epoch != ack.Epoch || m.TS == 0 {
			t.Errorf("message %d: got data %s epoch %q ts %d, want %s %q and a time", m.Offset, m.Data, m.Epoch, m.TS, want, ack.Epoch)
		}
	}
	if got, want := msgs[2].From, c.Welcome().User; got != want {
		t.Errorf("from: got %q, want %q", got, want)
	}
	if pos, ok := c.Position("chat"); !ok || pos != (client.Position{Epoch: ack.Epoch, Offset: 6}) {
		t.Errorf("Position: got %v %v, want %v true", pos, ok, client.Position{Epoch: ack.Epoch, Offset: 6})
	}

	if err := c.Unsubscribe(ctx, "chat"); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	if _, ok := c.Position("chat"); ok {
		t.Errorf("Position after Unsubscribe: got true, want false")
	}
}

// Subscribe takes presence and a starting position together: a session that
// resumes a room also gets its members.
func TestSubscribeOptions(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	tests := []struct {
		name          string
		presence      bool
		since         uint64 // 0: no Since
		wantRecovered bool
		wantOffsets   []uint64 // the messages that follow the ack
	}{
		{name: "zero value"},
		{name: "presence", presence: true},
		{name: "since", since: 4, wantRecovered: true, wantOffsets: seq(5, 10)},
		{name: "since and presence", presence: true, since: 7, wantRecovered: true, wantOffsets: seq(8, 10)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			room := fmt.Sprintf("room%d", i)
			publishBus(t, bus, room, 1, 10)
			top, err := bus.History(context.Background(), room, fanout.HistoryQuery{})
			if err != nil {
				t.Fatal(err)
			}
			epoch := top.Top.Epoch
			opts := client.SubscribeOptions{Presence: tt.presence}
			if tt.since != 0 {
				opts.Since = &client.Position{Epoch: epoch, Offset: tt.since}
			}
			c, rec := dial(t, n.url, nil)
			ack, err := c.Subscribe(ctxT(t), room, opts)
			if err != nil {
				t.Fatalf("Subscribe: %v", err)
			}
			if ack.Recovered != tt.wantRecovered || ack.Offset != 10 || ack.Epoch != epoch {
				t.Errorf("ack: got %+v, want recovered %v at %s/10", ack, tt.wantRecovered, epoch)
			}
			me := c.Welcome().Session
			listed := len(ack.Members) == 1 && ack.Members[0].Session == me && ack.MembersTotal == 1 && ack.MembersNext == ""
			if listed != tt.presence || (!tt.presence && len(ack.Members) != 0) {
				t.Errorf("members: got %+v (total %d, next %q), want this session alone: %v", ack.Members, ack.MembersTotal, ack.MembersNext, tt.presence)
			}
			// A barrier: nothing else is on its way once 11 has come.
			publishBus(t, bus, room, 11, 11)
			rec.waitMessages(t, room, len(tt.wantOffsets)+1)
			if got, want := offsets(rec.messages(room)), append(slices.Clone(tt.wantOffsets), 11); !slices.Equal(got, want) {
				t.Errorf("offsets: got %v, want %v", got, want)
			}
			if pos, ok := c.Position(room); !ok || pos != (client.Position{Epoch: epoch, Offset: 11}) {
				t.Errorf("Position: got %v %v, want %s/11 true", pos, ok, epoch)
			}
		})
	}
}

// Publish takes []byte as JSON, as it takes json.RawMessage, and sends
// nothing when the data is not JSON.
func TestPublishData(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	sub, rec := dial(t, n.url, nil)
	pub, _ := dial(t, n.url, nil)
	ctx := ctxT(t)
	if _, err := sub.Subscribe(ctx, "room", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	tests := []struct {
		name    string
		data    any
		want    string // the message's data; empty when Publish fails
		wantErr error  // nil: any error
	}{
		{name: "bytes", data: []byte(`{"a":1}`), want: `{"a":1}`},
		{name: "bytes with spaces", data: []byte(` {"a": [1, 2]} `), want: `{"a":[1,2]}`},
		{name: "bytes of a string", data: []byte(`"hi"`), want: `"hi"`},
		{name: "raw message", data: json.RawMessage(`[true,null]`), want: `[true,null]`},
		{name: "a string", data: `{"a":1}`, want: `"{\"a\":1}"`},
		{name: "a struct", data: struct{ N int }{7}, want: `{"N":7}`},
		{name: "bytes not JSON", data: []byte(`{"a":`), wantErr: client.ErrInvalidJSON},
		{name: "empty bytes", data: []byte{}, wantErr: client.ErrInvalidJSON},
		{name: "raw message not JSON", data: json.RawMessage(`nope`), wantErr: client.ErrInvalidJSON},
		{name: "a value JSON cannot encode", data: func() {}},
	}
	var want []string
	for _, tt := range tests {
		_, err := pub.Publish(ctx, "room", tt.data, "")
		switch {
		case tt.want != "":
			if err != nil {
				t.Errorf("%s: Publish: %v", tt.name, err)
			}
			want = append(want, tt.want)
		case err == nil:
			t.Errorf("%s: Publish: got no error, want one", tt.name)
		case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
			t.Errorf("%s: Publish: got %v, want %v", tt.name, err, tt.wantErr)
		}
	}
	if got, want := client.ErrInvalidJSON.Error(), "client: data is not valid JSON"; got != want {
		t.Errorf("ErrInvalidJSON: got %q, want %q", got, want)
	}
	// A barrier: the refused publishes sent nothing, so the subscriber
	// gets the accepted ones and then this.
	publishBus(t, bus, "room", 0, 0)
	want = append(want, `{"n":0}`)
	msgs := rec.waitMessages(t, "room", len(want))
	var got []string
	for _, m := range msgs {
		got = append(got, string(m.Data))
	}
	if !slices.Equal(got, want) {
		t.Errorf("data: got %v, want %v", got, want)
	}
}

func TestPresenceEvents(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	ctx := ctxT(t)
	watcher, rec := dial(t, n.url, nil)
	ack, err := watcher.Subscribe(ctx, "room", client.SubscribeOptions{Presence: true})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	if len(ack.Members) != 1 || ack.Members[0].Session != watcher.Welcome().Session || ack.MembersTotal != 1 || ack.MembersNext != "" {
		t.Errorf("members: got %+v, total %d, next %q; want the watcher alone, total 1, no next page", ack.Members, ack.MembersTotal, ack.MembersNext)
	}
	// A subscriber without presence is not a member and causes no event.
	quiet, _ := dial(t, n.url, nil)
	if _, err := quiet.Subscribe(ctx, "room", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	joiner, _ := dial(t, n.url, nil)
	if _, err := joiner.Subscribe(ctx, "room", client.SubscribeOptions{Presence: true}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	// The watcher's own join is in its ack; it hears the joiner's.
	rec.waitKind(t, client.EventPresence, 1)
	var got []client.Presence
	for _, e := range rec.all() {
		if e.Kind == client.EventPresence {
			got = append(got, e.Presence)
		}
	}
	want := []client.Presence{{Room: "room", Event: "join", User: joiner.Welcome().User, Session: joiner.Welcome().Session}}
	if !slices.Equal(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if err := joiner.Unsubscribe(ctx, "room"); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	rec.waitKind(t, client.EventPresence, 2)
	if e := rec.all()[len(rec.all())-1]; e.Kind != client.EventPresence || e.Presence.Event != "leave" || e.Presence.Session != joiner.Welcome().Session {
		t.Errorf("got %+v, want the joiner's leave", e.Event)
	}
}

func TestCommandErrors(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	c, _ := dial(t, n.url, nil)
	ctx := ctxT(t)
	if _, err := c.Subscribe(ctx, "taken", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	tests := []struct {
		name     string
		do       func() error
		wantCode string // a server error code; empty for an error of the client
	}{
		{"subscribe to a bad room", func() error { _, err := c.Subscribe(ctx, "no spaces", client.SubscribeOptions{}); return err }, "bad_room"},
		{"subscribe twice", func() error { _, err := c.Subscribe(ctx, "taken", client.SubscribeOptions{}); return err }, ""},
		{"publish to a bad room", func() error { _, err := c.Publish(ctx, "no spaces", 1, ""); return err }, "bad_room"},
		{"unsubscribe from a room not subscribed", func() error { return c.Unsubscribe(ctx, "elsewhere") }, "not_found"},
	}
	for _, tt := range tests {
		err := tt.do()
		if err == nil {
			t.Errorf("%s: got no error, want one", tt.name)
			continue
		}
		var serr *client.ServerError
		gotCode := ""
		if errors.As(err, &serr) {
			gotCode = serr.Code
		}
		if gotCode != tt.wantCode {
			t.Errorf("%s: got %v, want code %q", tt.name, err, tt.wantCode)
		}
	}
	if _, ok := c.Position("no spaces"); ok {
		t.Errorf("a refused subscription is kept")
	}
	// The first subscription survived the second attempt.
	publishBus(t, bus, "taken", 1, 1)
	if _, ok := c.Position("taken"); !ok {
		t.Errorf("Position(taken): got false, want true")
	}
}

func TestReconnectResumes(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	px := startProxy(t, n.addr)
	c, rec := dial(t, px.url, nil)
	if _, err := c.Subscribe(ctxT(t), "room", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	publishBus(t, bus, "room", 1, 5)
	rec.waitMessages(t, "room", 5)

	// Away: the connection drops and the client cannot get back while 200
	// messages are published.
	px.setRefuse(true)
	px.cut()
	rec.waitKind(t, client.EventDisconnected, 1)
	publishBus(t, bus, "room", 6, 205)
	px.setRefuse(false)

	rec.waitKind(t, client.EventConnected, 2)
	rec.waitMessages(t, "room", 205)
	publishBus(t, bus, "room", 206, 206)
	msgs := rec.waitMessages(t, "room", 206)
	if got, want := offsets(msgs), seq(1, 206); !slices.Equal(got, want) {
		t.Errorf("offsets: got %v, want 1..206 once each, in order", got)
	}
	for _, m := range msgs {
		if want := fmt.Sprintf(`{"n":%d}`, m.Offset); string(m.Data) != want {
			t.Errorf("message %d: got %s, want %s", m.Offset, m.Data, want)
		}
	}
	if got := rec.count(client.EventLost); got != 0 {
		t.Errorf("EventLost: got %d, want 0", got)
	}
}

func TestReconnectWhilePublishing(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	px := startProxy(t, n.addr)
	c, rec := dial(t, px.url, nil)
	if _, err := c.Subscribe(ctxT(t), "room", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}

	// Messages keep coming while the connection is cut three times, so some
	// are in flight at each cut.
	const total, cuts = 400, 3
	stop := make(chan struct{})
	published := make(chan error, 1)
	go func() {
		tick := time.NewTicker(500 * time.Microsecond)
		defer tick.Stop()
		for i := 1; i <= total; i++ {
			select {
			case <-stop:
				published <- nil
				return
			case <-tick.C:
			}
			if _, err := bus.Publish(context.Background(), "room", fanout.Publication{Data: body(i)}); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()
	defer close(stop)
	for i := 1; i <= cuts; i++ {
		rec.waitMessages(t, "room", i*total/(cuts+1))
		px.cut()
		rec.waitKind(t, client.EventConnected, i+1)
	}
	if err := <-published; err != nil {
		t.Fatalf("Publish: %v", err)
	}
	msgs := rec.waitMessages(t, "room", total)
	publishBus(t, bus, "room", total+1, total+1)
	msgs = rec.waitMessages(t, "room", total+1)
	if got, want := offsets(msgs), seq(1, total+1); !slices.Equal(got, want) {
		t.Errorf("offsets: got %v, want 1..%d once each, in order", got, total+1)
	}
	if got := rec.count(client.EventDisconnected); got != cuts {
		t.Errorf("EventDisconnected: got %d, want %d", got, cuts)
	}
}

func TestReconnectLost(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{HistorySize: 10})
	n := startNode(t, bus, nil)
	px := startProxy(t, n.addr)
	c, rec := dial(t, px.url, nil)
	ack, err := c.Subscribe(ctxT(t), "room", client.SubscribeOptions{})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	publishBus(t, bus, "room", 1, 1)
	rec.waitMessages(t, "room", 1)

	px.setRefuse(true)
	px.cut()
	rec.waitKind(t, client.EventDisconnected, 1)
	publishBus(t, bus, "room", 2, 51) // history keeps 42..51 only
	px.setRefuse(false)
	rec.waitKind(t, client.EventLost, 1)
	publishBus(t, bus, "room", 52, 52)
	rec.waitMessages(t, "room", 2)

	var lost, live int
	for i, e := range rec.all() {
		switch {
		case e.Kind == client.EventLost:
			lost = i
			want := client.Position{Epoch: ack.Epoch, Offset: 51}
			if e.Room != "room" || e.Position != want {
				t.Errorf("EventLost: got room %q position %v, want room %v", e.Room, e.Position, want)
			}
		case e.Kind == client.EventMessage && e.Message.Offset == 52:
			live = i
		}
	}
	if lost > live {
		t.Errorf("EventLost came after the live message that follows it")
	}
	if got, want := offsets(rec.messages("room")), []uint64{1, 52}; !slices.Equal(got, want) {
		t.Errorf("offsets: got %v, want %v", got, want)
	}
	if pos, _ := c.Position("room"); pos.Offset != 52 {
		t.Errorf("Position: got %v, want offset 52", pos)
	}
}

func TestResubscribeRefused(t *testing.T) {
	a := startNode(t, newBus(t, fanout.MemoryConfig{}), nil)
	b := startNode(t, newBus(t, fanout.MemoryConfig{}), func(cfg *gateway.Config) { cfg.MaxRoomsPerSession = 1 })
	px := startProxy(t, a.addr)
	c, rec := dial(t, px.url, nil)
	ctx := ctxT(t)
	for _, room := range []string{"one", "two"} {
		if _, err := c.Subscribe(ctx, room, client.SubscribeOptions{}); err != nil {
			t.Fatalf("Subscribe(%s): %v", room, err)
		}
	}
	// The client comes back to a node that takes only one room per session.
	px.setTarget(b.addr)
	px.cut()
	rec.waitKind(t, client.EventConnected, 2)

	var refused []string
	for _, e := range rec.all() {
		var serr *client.ServerError
		if e.Kind == client.EventError && errors.As(e.Err, &serr) && serr.Code == "forbidden" {
			refused = append(refused, e.Room)
		}
	}
	if len(refused) != 1 {
		t.Fatalf("rooms refused: got %v, want one of one, two", refused)
	}
	kept := map[string]string{"one": "two", "two": "one"}[refused[0]]
	if _, ok := c.Position(refused[0]); ok {
		t.Errorf("refused room %s is still subscribed", refused[0])
	}
	if _, ok := c.Position(kept); !ok {
		t.Errorf("room %s is not subscribed", kept)
	}
	// The connection is usable: commands do not wait forever.
	if _, err := c.Publish(ctx, kept, 1, ""); err != nil {
		t.Errorf("Publish after the refusal: %v", err)
	}
	// A refusal for good drops the room and keeps the connection: no
	// reconnect to try again.
	if got := rec.count(client.EventDisconnected); got != 1 {
		t.Errorf("EventDisconnected: got %d, want 1 (the cut)", got)
	}
}

func TestDrainReconnectsAfterNotice(t *testing.T) {
	const clients = 6
	const drain = 2 * time.Second
	busA := newBus(t, fanout.MemoryConfig{})
	a := startNode(t, busA, func(cfg *gateway.Config) { cfg.DrainTimeout = drain })
	// The node that takes over has a bus of its own: a single in-memory node
	// restarted, so the clients come back to a new epoch.
	busB := newBus(t, fanout.MemoryConfig{})
	b := startNode(t, busB, nil)
	px := startProxy(t, a.addr)
	ctx := ctxT(t)

	recs := make([]*recorder, clients)
	for i := range recs {
		var c *client.Client
		c, recs[i] = dial(t, px.url, nil)
		if _, err := c.Subscribe(ctx, "room", client.SubscribeOptions{}); err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	}
	publishBus(t, busA, "room", 1, 1)
	for _, rec := range recs {
		rec.waitMessages(t, "room", 1)
	}

	px.setTarget(b.addr)
	shutdownErr := make(chan error, 1)
	go func() { shutdownErr <- a.shutdown(ctx) }()
	for _, rec := range recs {
		rec.waitKind(t, client.EventConnected, 2)
	}
	if err := <-shutdownErr; err != nil {
		t.Errorf("Shutdown: %v", err)
	}

	for i, rec := range recs {
		var notice, closed, back stamped
		for _, e := range rec.all() {
			switch {
			case e.Kind == client.EventDraining && notice.at.IsZero():
				notice = e
			case e.Kind == client.EventDisconnected && closed.at.IsZero():
				closed = e
			case e.Kind == client.EventConnected && !closed.at.IsZero() && back.at.IsZero():
				back = e
			}
		}
		if notice.at.IsZero() || back.at.IsZero() {
			t.Errorf("client %d: got no drain notice or no reconnect: %+v", i, rec.all())
			continue
		}
		if notice.After < 0 || notice.After > drain {
			t.Errorf("client %d: after: got %v, want within the drain window %v", i, notice.After, drain)
		}
		if got := websocket.CloseStatus(closed.Err); got != websocket.StatusServiceRestart {
			t.Errorf("client %d: close status: got %v, want %v", i, got, websocket.StatusServiceRestart)
		}
		// The client comes back about After after the notice: not before,
		// and not After again once the node has closed the connection.
		took := back.at.Sub(notice.at)
		if took < notice.After-50*time.Millisecond || took > notice.After+750*time.Millisecond {
			t.Errorf("client %d: reconnected %v after the notice, want about %v", i, took, notice.After)
		}
		if rec.count(client.EventLost) != 1 {
			t.Errorf("client %d: EventLost: got %d, want 1 (a new epoch)", i, rec.count(client.EventLost))
		}
	}

	publishBus(t, busB, "room", 1, 1)
	for i, rec := range recs {
		msgs := rec.waitMessages(t, "room", 2)
		if msgs[1].Epoch == msgs[0].Epoch || msgs[1].Offset != 1 {
			t.Errorf("client %d: got %+v after the drain, want offset 1 of a new epoch", i, msgs[1])
		}
	}
}

func TestAnswersPings(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, func(cfg *gateway.Config) {
		cfg.PingInterval = 40 * time.Millisecond
		cfg.PongTimeout = 100 * time.Millisecond
	})
	_, rec := dial(t, n.url, nil)
	// An unanswered ping closes the session after 140ms; several rounds
	// pass in this window.
	window := time.NewTimer(600 * time.Millisecond)
	defer window.Stop()
	<-window.C
	if got := rec.count(client.EventDisconnected); got != 0 {
		t.Errorf("disconnects: got %d, want 0: %+v", got, rec.all())
	}
}

func TestClose(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	px := startProxy(t, n.addr)
	tests := []struct {
		name    string
		opts    func(*client.Options)
		prepare func(t *testing.T, rec *recorder)
	}{
		{name: "connected", prepare: func(*testing.T, *recorder) {}},
		{name: "while reconnecting", prepare: func(t *testing.T, rec *recorder) {
			px.setRefuse(true)
			t.Cleanup(func() { px.setRefuse(false) })
			px.cut()
			rec.waitKind(t, client.EventDisconnected, 1)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, rec := dial(t, px.url, nil)
			ctx := ctxT(t)
			if _, err := c.Subscribe(ctx, "room", client.SubscribeOptions{}); err != nil {
				t.Fatalf("Subscribe: %v", err)
			}
			tt.prepare(t, rec)
			closed := make(chan error, 1)
			go func() { closed <- c.Close() }()
			select {
			case err := <-closed:
				if err != nil {
					t.Errorf("Close: %v", err)
				}
			case <-time.After(waitTimeout):
				t.Fatalf("Close did not return")
			}
			<-rec.done // Events is closed
			if _, err := c.Publish(ctx, "room", 1, ""); !errors.Is(err, client.ErrClosed) {
				t.Errorf("Publish after Close: got %v, want %v", err, client.ErrClosed)
			}
			if _, err := c.Subscribe(ctx, "other", client.SubscribeOptions{}); !errors.Is(err, client.ErrClosed) {
				t.Errorf("Subscribe after Close: got %v, want %v", err, client.ErrClosed)
			}
			if err := c.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
	}
}

func TestNoReconnect(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	px := startProxy(t, n.addr)
	c, rec := dial(t, px.url, func(o *client.Options) { o.NoReconnect = true })
	px.cut()
	<-rec.done // Events is closed after the disconnect
	if got := rec.count(client.EventDisconnected); got != 1 {
		t.Errorf("EventDisconnected: got %d, want 1", got)
	}
	if _, err := c.Publish(ctxT(t), "room", 1, ""); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Publish after the disconnect: got %v, want %v", err, client.ErrClosed)
	}
}

// TestScriptedServer checks client logic that a real gateway cannot be made
// to exercise on demand: a server that sends offsets the client has already
// delivered, and a live message in the same frame as the subscribe ack. The
// server here speaks the protocol from a script.
func TestScriptedServer(t *testing.T) {
	var conns atomic.Int32
	resumedFrom := make(chan uint64, 1)
	msg := func(off uint64) string {
		return fmt.Sprintf(`{"type":"message","room":"r","offset":%d,"epoch":"e","data":{"n":%d},"ts":1}`, off, off)
	}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{gateway.Subprotocol}})
		if err != nil {
			return
		}
		defer conn.CloseNow()
		ctx := r.Context()
		conn.Write(ctx, websocket.MessageText, []byte(`{"type":"welcome","session":"s","node":"n","user":"u","ping_ms":25000}`))
		_, b, err := conn.Read(ctx)
		if err != nil {
			return
		}
		var sub struct {
			ID    string           `json:"id"`
			Since *client.Position `json:"since"`
		}
		json.Unmarshal(b, &sub)
		ack := func(off uint64, recovered bool) string {
			return fmt.Sprintf(`{"type":"ack","id":%q,"epoch":"e","offset":%d,"recovered":%v}`, sub.ID, off, recovered)
		}
		if conns.Add(1) == 1 {
			// The ack, a live message right behind it, a repeat of that
			// message and an older one; then the connection drops.
			frame := strings.Join([]string{ack(5, false), msg(6), msg(6), msg(4)}, "\n")
			conn.Write(ctx, websocket.MessageText, []byte(frame))
			conn.Close(websocket.StatusServiceRestart, "")
			return
		}
		if sub.Since == nil {
			resumedFrom <- 0
			return
		}
		resumedFrom <- sub.Since.Offset
		// Replay what follows since, as the gateway does, then repeat the
		// last message.
		lines := []string{ack(7, true)}
		for off := sub.Since.Offset + 1; off <= 7; off++ {
			lines = append(lines, msg(off))
		}
		lines = append(lines, msg(7))
		conn.Write(ctx, websocket.MessageText, []byte(strings.Join(lines, "\n")))
		conn.Write(ctx, websocket.MessageText, []byte(msg(8)))
		for {
			if _, _, err := conn.Read(ctx); err != nil {
				return
			}
		}
	}))
	t.Cleanup(hs.Close)

	c, rec := dial(t, "ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	if _, err := c.Subscribe(ctxT(t), "r", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	select {
	case got := <-resumedFrom:
		if got != 6 {
			t.Errorf("resumed since offset %d, want 6: the message after the ack moved the position", got)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("the client did not reconnect")
	}
	rec.waitMessages(t, "r", 3)
	if got, want := offsets(rec.messages("r")), []uint64{6, 7, 8}; !slices.Equal(got, want) {
		t.Errorf("offsets: got %v, want %v", got, want)
	}
}

// When the node ends the session because the token expired (here the
// refresh is refused: each token is for another user), the client reconnects
// with a fresh token from TokenSource and resumes.
func TestTokenSourceAfterExpiry(t *testing.T) {
	secret := []byte("client-secret")
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, func(c *gateway.Config) {
		c.JWTSecret = secret
		c.PingInterval = 400 * time.Millisecond // a heartbeat tick every 100ms
	})
	var minted atomic.Int32
	source := func(context.Context) (string, error) {
		n := minted.Add(1)
		// Valid for about a second, the node's 5 s leeway included.
		return gateway.MintToken(secret, fmt.Sprintf("renewed-%d", n), -4*time.Second, nil, time.Now())
	}
	c, rec := dial(t, n.url, func(o *client.Options) { o.TokenSource = source })
	if _, err := c.Subscribe(ctxT(t), "room", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	publishBus(t, bus, "room", 1, 3)
	rec.waitMessages(t, "room", 3)
	rec.waitKind(t, client.EventConnected, 2)
	if got := minted.Load(); got < 2 {
		t.Fatalf("got %d tokens minted, want a fresh one for the reconnect", got)
	}
	publishBus(t, bus, "room", 4, 5)
	if got := offsets(rec.waitMessages(t, "room", 5)); !slices.Equal(got, seq(1, 5)) {
		t.Errorf("offsets: got %v, want 1..5", got)
	}
}

// With a TokenSource of short-lived tokens, the client refreshes the token on
// the live connection: it stays connected past the first token's expiry and
// receives every message throughout.
func TestTokenSourceRefreshesLiveSession(t *testing.T) {
	secret := []byte("client-secret")
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, func(c *gateway.Config) {
		c.JWTSecret = secret
		c.PingInterval = 400 * time.Millisecond // a heartbeat tick every 100ms
	})
	var minted atomic.Int32
	source := func(context.Context) (string, error) {
		minted.Add(1)
		// Accepted for 2 to 3 s, the node's 5 s leeway included.
		return gateway.MintToken(secret, "steady", -2*time.Second, nil, time.Now())
	}
	c, rec := dial(t, n.url, func(o *client.Options) { o.TokenSource = source })
	if _, err := c.Subscribe(ctxT(t), "room", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	// 5 s of messages: past the first token's expiry, and the second's.
	const total = 50
	for i := 1; i <= total; i++ {
		publishBus(t, bus, "room", i, i)
		time.Sleep(100 * time.Millisecond)
	}
	if got := offsets(rec.waitMessages(t, "room", total)); !slices.Equal(got, seq(1, total)) {
		t.Errorf("offsets: got %v, want 1..%d", got, total)
	}
	if got := rec.count(client.EventDisconnected); got != 0 {
		t.Errorf("EventDisconnected: got %d, want none: the token is refreshed on the live connection", got)
	}
	if got := rec.count(client.EventConnected); got != 1 {
		t.Errorf("EventConnected: got %d, want 1", got)
	}
	if got := minted.Load(); got < 3 {
		t.Errorf("got %d tokens minted, want the first and at least two refreshes", got)
	}
}

// The client refreshes a token at 80% of its remaining lifetime, at least 5 s
// before its exp when it lives that long, and never within a second.
func TestRefreshDelay(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	tests := []struct {
		name string
		left time.Duration
		want time.Duration
	}{
		{name: "an hour", left: time.Hour, want: 48 * time.Minute},
		{name: "a minute", left: time.Minute, want: 48 * time.Second},
		{name: "20 s: 5 s before exp", left: 20 * time.Second, want: 15 * time.Second},
		{name: "4 s: 80%", left: 4 * time.Second, want: 3200 * time.Millisecond},
		{name: "1 s: not within a second", left: time.Second, want: time.Second},
		{name: "already past", left: -time.Minute, want: time.Second},
	}
	for _, tt := range tests {
		if got := client.RefreshDelay(now, now.Add(tt.left)); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

// The client reads a JWT's exp without verifying it, and no other string's.
func TestTokenExpiry(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	tok, err := gateway.MintToken([]byte("any"), "u", time.Minute, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		tok  string
		want time.Time
	}{
		{name: "a JWT", tok: tok, want: now.Add(time.Minute)},
		{name: "not a JWT", tok: "opaque", want: time.Time{}},
		{name: "no exp", tok: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln", want: time.Time{}},
		{name: "claims not base64", tok: "a.!!.c", want: time.Time{}},
	}
	for _, tt := range tests {
		if got := client.TokenExpiry(tt.tok); !got.Equal(tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}
