package gateway

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
)

// flipCtx is a request context that is live for its first `live` Err calls
// and cancelled from then on: an SSE client that disconnects at one precise
// moment of its subscribe (after the node subscribed on the bus, before it
// read history).
type flipCtx struct {
	context.Context
	live  int32
	calls atomic.Int32
	once  sync.Once
	done  chan struct{}
}

func newFlipCtx(live int32) *flipCtx {
	return &flipCtx{Context: context.Background(), live: live, done: make(chan struct{})}
}

func (c *flipCtx) Err() error {
	if c.calls.Add(1) <= c.live {
		return nil
	}
	c.once.Do(func() { close(c.done) })
	return context.Canceled
}

func (c *flipCtx) Done() <-chan struct{} { return c.done }

// A client that leaves while its subscribe is under way (its context is
// cancelled between the bus subscribe and the history read) leaves the room
// usable: the next subscribe on the node works.
func TestLeavingMidSubscribeKeepsRoomUsable(t *testing.T) {
	ts := startServer(t, nil)
	room := "review:broken"

	// Memory.Subscribe's ctx check is the first Err call, History's the second.
	ctx := newFlipCtx(1)
	req := httptest.NewRequest(http.MethodGet, "/v1/sse?rooms="+room, nil).WithContext(ctx)
	req.RemoteAddr = "127.0.0.1:1234"
	rec := httptest.NewRecorder()
	ts.srv.handleSSE(rec, req)
	if ctx.calls.Load() < 2 {
		t.Fatalf("precondition: the request context was checked %d times, want the subscribe to reach History", ctx.calls.Load())
	}

	if ts.srv.hub.lookup(room) == nil {
		err := ts.bus.Subscribe(context.Background(), room, ts.srv.hub)
		t.Logf("hub holds no room %q; bus Subscribe for it now: %v", room, err)
	}
	// A later, healthy client subscribes to the same room.
	w, _ := confDial(t, ts, nil)
	w.send(map[string]any{"type": "subscribe", "id": "s1", "room": room})
	f := w.next()
	if f["type"] != "ack" || f["id"] != "s1" {
		t.Fatalf("subscribe after an SSE client left mid-subscribe: got %v, want its ack", f)
	}
}

// Reads of rooms nobody uses (presence, history) cannot fill the rooms a node
// holds: a subscriber to a new room is served while every room held is empty.
func TestReadsDoNotFillRoomLimit(t *testing.T) {
	const maxRooms = 4
	ts := startServerWith(t, fanout.MemoryConfig{MaxRooms: maxRooms}, nil)
	attacker, _ := confDial(t, ts, nil)
	// maxRooms rooms, then one more (the limit triggers reclaim, which lets
	// all of them go), then fill again right away.
	for i := range 2 * maxRooms {
		id := fmt.Sprint("p", i)
		attacker.send(map[string]any{"type": "presence", "id": id, "room": fmt.Sprint("nobody:", i)})
		confAck(attacker, id)
	}
	st := ts.bus.Stats()
	t.Logf("bus holds %d rooms, every one of them empty (history bytes %d)", st.Rooms, st.HistoryBytes)

	victim, _ := confDial(t, ts, nil)
	victim.send(map[string]any{"type": "subscribe", "id": "s1", "room": "chat:real"})
	if f := victim.next(); f["type"] != "ack" {
		t.Fatalf("subscribe to a new room while the node holds only rooms that hold nothing: got %v, want an ack", f)
	}
}

// The history byte bound holds for data that JSON encoders like to escape
// (<, >, &): the shared wire encoding does not grow it.
func TestHistoryBytesCountEscapedData(t *testing.T) {
	const bound = 2 << 20
	ts := startServerWith(t, fanout.MemoryConfig{MaxHistoryBytes: bound, MaxRoomHistoryBytes: bound}, func(c *Config) {
		c.QueueLimit = 256 << 20
	})
	room := "review:escape"
	w, _ := confDial(t, ts, nil)
	confSubscribe(w, "s1", room, false)
	go func() { // read everything, so the session is never slow
		for {
			if _, _, err := w.c.Read(context.Background()); err != nil {
				return
			}
		}
	}()

	data := `"` + strings.Repeat("<", 20<<10) + `"`
	for range 200 {
		if _, err := ts.bus.Publish(context.Background(), room, fanout.Publication{Data: []byte(data)}); err != nil {
			t.Fatal(err)
		}
	}
	h, err := ts.bus.History(context.Background(), room, fanout.HistoryQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var real int64
	for _, m := range h.Messages {
		sf, _ := m.Shared(func(*fanout.Message) any { t.Fatal("message in history was never encoded"); return nil }).(*sharedFrames)
		real += int64(len(m.Data) + len(sf.live.b))
	}
	st := ts.bus.Stats()
	t.Logf("%d messages in history: counted %d bytes, hold %d bytes (data + shared encoding), bound %d",
		len(h.Messages), st.HistoryBytes, real, bound)
	if real > bound {
		t.Errorf("history holds %.1f MiB, want at most MaxHistoryBytes %.1f MiB", float64(real)/(1<<20), float64(bound)/(1<<20))
	}
}

// A stream whose subscribe the node refuses for a node-wide bound gets an
// HTTP error with the code, not an empty 200.
func TestSSEOverCapacityIsAnHTTPError(t *testing.T) {
	ts := startServerWith(t, fanout.MemoryConfig{MaxRooms: 1}, nil)
	// A room with history: nothing reclaims it.
	if _, err := ts.bus.Publish(context.Background(), "held:0", fanout.Publication{Data: []byte(`1`)}); err != nil {
		t.Fatal(err)
	}
	resp := sseTestGet(t, http.MethodGet, ts.url+"/v1/sse?rooms=other", nil)
	done := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(resp.Body); done <- b }()
	var body []byte
	select {
	case body = <-done:
	case <-time.After(3 * time.Second):
		resp.Body.Close()
		body = <-done
	}
	t.Logf("status %d, body %q", resp.StatusCode, body)
	if resp.StatusCode == http.StatusOK && !strings.Contains(string(body), "event: error") {
		t.Fatalf("SSE subscribe refused for over_capacity: got status 200 and body %q, want an `event: error` with code over_capacity (or an HTTP error)", body)
	}
	if !strings.Contains(string(body), codeOverCapacity) {
		t.Fatalf("got status %d body %q, want code %s", resp.StatusCode, body, codeOverCapacity)
	}
}

// rawSSE opens an SSE stream on a raw TCP connection with a tiny receive
// buffer and never reads it.
func rawSSE(t *testing.T, ts *testServer, path string, header string) net.Conn {
	t.Helper()
	c, addr := dialRaw(t, ts)
	c.(*net.TCPConn).SetReadBuffer(4 << 10)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", path, addr, header)
	return c
}

// Shutdown keeps to its context when an SSE client has stopped reading: the
// write it is blocked in ends when the session is closed.
func TestShutdownEndsBlockedSSEWrites(t *testing.T) {
	const writeTimeout = 3 * time.Second
	ts := startServer(t, func(c *Config) { c.WriteTimeout = writeTimeout })
	rooms := []string{"big:0", "big:1", "big:2"}
	data := []byte(`"` + strings.Repeat("z", 60<<10) + `"`)
	cur := cursor{}
	for _, room := range rooms {
		var res fanout.PublishResult
		for range 50 { // 3 MiB of history per room, under ReplayLimit
			var err error
			if res, err = ts.bus.Publish(context.Background(), room, fanout.Publication{Data: data}); err != nil {
				t.Fatal(err)
			}
		}
		cur[room] = fanout.Position{Epoch: res.Epoch, Offset: 0}
	}
	rawSSE(t, ts, "/v1/sse?rooms="+strings.Join(rooms, ","), "Last-Event-ID: "+cur.encode()+"\r\n")
	time.Sleep(500 * time.Millisecond) // the handler fills the socket and blocks in a write

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	ts.srv.Shutdown(ctx)
	took := time.Since(start)
	t.Logf("Shutdown with a 200ms context took %v (WriteTimeout %v)", took.Round(time.Millisecond), writeTimeout)
	if took > time.Second+200*time.Millisecond+ts.srv.cfg.DrainTimeout {
		t.Errorf("Shutdown took %v with a 200ms context, want it to close what is left at once", took.Round(time.Millisecond))
	}
}

// SSE streams that resume many rooms and never read hold little of their
// own: replay shares the frames of history, and its total is bounded by the
// replay limit.
func TestSSEReplayHeapBounded(t *testing.T) {
	const (
		rooms   = 100
		perRoom = 1000
		streams = 4
	)
	t0 := time.Now()
	ts := startServer(t, func(c *Config) { c.WriteTimeout = 3 * time.Second })
	names := make([]string, rooms)
	cur := cursor{}
	for i := range names {
		names[i] = fmt.Sprint("r", i)
		var res fanout.PublishResult
		for range perRoom {
			var err error
			if res, err = ts.bus.Publish(context.Background(), names[i], fanout.Publication{Data: []byte(`1`)}); err != nil {
				t.Fatal(err)
			}
		}
		cur[names[i]] = fanout.Position{Epoch: res.Epoch, Offset: 0}
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	t.Logf("published in %v", time.Since(t0))
	// The shared frames of history exist before measuring: they are the
	// node's, built once, not the streams'.
	for _, name := range names {
		h, err := ts.bus.History(context.Background(), name, fanout.HistoryQuery{Limit: perRoom})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range h.Messages {
			ts.srv.hub.frames(m)
		}
	}
	before := heap()
	for range streams {
		rawSSE(t, ts, "/v1/sse?rooms="+strings.Join(names, ","), "Last-Event-ID: "+cur.encode()+"\r\n")
	}
	waitFor(t, "every stream", func() bool {
		ts.srv.sessMu.Lock()
		defer ts.srv.sessMu.Unlock()
		return len(ts.srv.sessions) == streams
	})
	// The least of a few readings: a stream's writer still rendering
	// events when one is taken allocates garbage that a collection made
	// meanwhile counts as live.
	growth := int64(math.MaxInt64)
	for range 5 {
		time.Sleep(200 * time.Millisecond)
		growth = min(growth, int64(heap())-int64(before))
	}
	t.Logf("measured at %v", time.Since(t0))
	st := ts.bus.Stats()
	t.Logf("%d SSE streams that do not read: heap grew %.1f MiB (%.2f MiB each); history counts %.1f MiB; QueueLimit %.1f MiB",
		streams, float64(growth)/(1<<20), float64(growth)/streams/(1<<20), float64(st.HistoryBytes)/(1<<20), float64(ts.srv.cfg.QueueLimit)/(1<<20))
	if per := growth / streams; per > int64(ts.srv.cfg.QueueLimit) && !raceEnabled {
		t.Errorf("each SSE stream that does not read holds %.1f MiB of its own, want at most QueueLimit (%.1f MiB)", float64(per)/(1<<20), float64(ts.srv.cfg.QueueLimit)/(1<<20))
	}
}

// A presence query gets bad_request for a cursor no page gave (junk that is
// still base64 included) and for a limit outside 1 to 1000, on WebSocket and
// the HTTP API alike.
func TestPresenceQueryBadInput(t *testing.T) {
	ts := startServer(t, nil)
	w, _ := confDial(t, ts, nil)
	for i, cmd := range []map[string]any{
		{"cursor": "junk"},
		{"cursor": "c2Vzcy0x"},
		{"limit": 0},
		{"limit": 1001},
		{"limit": -5},
	} {
		id := fmt.Sprint("q", i)
		f := map[string]any{"type": "presence", "id": id, "room": "lobby"}
		maps.Copy(f, cmd)
		w.send(f)
		confError(w, id, codeBadRequest)
	}
	for _, q := range []string{"cursor=junk", "cursor=c2Vzcy0x", "limit=0", "limit=1001"} {
		resp, body := apiTestDo(t, http.MethodGet, ts.url+"/v1/rooms/lobby/presence?"+q, testAPIKey, nil, "")
		apiTestCheckError(t, resp, body, http.StatusBadRequest, codeBadRequest)
	}
}
