package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// The replay amplification attack: clients that never read subscribe with a
// `since` that replays megabytes of history, unsubscribe, and again, as fast
// as the churn limit lets them. The node's heap must stay bounded: replay
// shares the bytes of history, and a session's unsent replay is bounded.
func TestReplayAttackHeapBounded(t *testing.T) {
	const (
		msgs      = 1000
		msgSize   = 60 << 10
		replayed  = 60 // messages per subscribe: 3.6 MiB, under the replay limit
		attackers = 2
		attack    = 2 * time.Second
	)
	ts := startServerWith(t, replayAttackBus, func(c *Config) {
		c.WriteTimeout = 30 * time.Second // the attack ends before any write times out
	})
	room := "replay:attack"
	data := []byte(`{"pad":"` + strings.Repeat("z", msgSize) + `"}`)
	var top fanout.PublishResult
	for range msgs {
		var err error
		if top, err = ts.bus.Publish(context.Background(), room, fanout.Publication{Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()

	sub, _ := json.Marshal(map[string]any{"type": "subscribe", "room": room,
		"since": fanout.Position{Epoch: top.Epoch, Offset: top.Offset - replayed}})
	unsub, _ := json.Marshal(map[string]any{"type": "unsubscribe", "room": room})
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		cycles int
	)
	stop := time.Now().Add(attack)
	for range attackers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, _, err := websocket.Dial(ctx, ts.ws, &websocket.DialOptions{Subprotocols: []string{Subprotocol}})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for time.Now().Before(stop) {
				// The client never reads: a node that stops reading it in
				// turn makes these writes block, which ends its attack.
				ctx, cancel := context.WithDeadline(context.Background(), stop)
				err := c.Write(ctx, websocket.MessageText, sub)
				if err == nil {
					err = c.Write(ctx, websocket.MessageText, unsub)
				}
				cancel()
				if err != nil {
					break
				}
				n++
			}
			mu.Lock()
			cycles += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	after := heap()
	growth := int64(after) - int64(before)
	t.Logf("%d subscribe cycles by %d clients that never read; heap grew %.1f MiB (history itself %.1f MiB)",
		cycles, attackers, float64(growth)/(1<<20), float64(msgs*msgSize)/(1<<20))
	if limit := int64(64 << 20); growth > limit {
		t.Errorf("heap grew %d MiB during the attack, want under %d MiB", growth>>20, limit>>20)
	}
}

// replayAttackBus keeps the whole attacked history: the room bounds would
// otherwise trim it and hide what replay costs.
var replayAttackBus = fanout.MemoryConfig{MaxRoomHistoryBytes: 256 << 20, MaxHistoryBytes: 1 << 30}

// A room with more members than one queue holds: the subscribe ack carries a
// first page and the count, the session stays open, and every member can be
// paged through, over WebSocket and the HTTP API, each exactly once.
func TestBigRoomPresence(t *testing.T) {
	const n = 15000
	ts := startServer(t, nil)
	room := "big:presence"
	for i := range n {
		m := fanout.Member{User: fmt.Sprintf("user-%d", i), Session: fmt.Sprintf("sess-%06d", i), Node: "elsewhere"}
		if err := ts.bus.Join(context.Background(), room, m); err != nil {
			t.Fatal(err)
		}
	}
	w, welcome := confDial(t, ts, nil)
	self := confStr(t, welcome, "session")
	ack := confSubscribe(w, "s1", room, true)
	members, _ := ack["members"].([]any)
	if len(members) != firstMembersPage || confNum(t, ack["members_total"]) != n+1 || ack["members_next"] == nil {
		t.Fatalf("subscribe ack: got %d members, members_total %v, members_next %v; want %d, %d, a cursor",
			len(members), ack["members_total"], ack["members_next"], firstMembersPage, n+1)
	}
	// The session is alive and subscribed.
	w.send(map[string]any{"type": "publish", "id": "p1", "room": room, "data": "still here"})
	for got := 0; got < 2; {
		f := confNextSkipping(w, self)
		if f["type"] == "message" || f["type"] == "ack" && f["id"] == "p1" {
			got++
			continue
		}
		t.Fatalf("got %v, want the message and its publish ack", f)
	}

	seen := map[string]bool{}
	collect := func(ms []any) {
		for _, raw := range ms {
			m, _ := raw.(map[string]any)
			s := fmt.Sprint(m["session"])
			if seen[s] {
				t.Fatalf("member %s on two pages", s)
			}
			seen[s] = true
		}
	}
	cursor := ""
	for page := 0; ; page++ {
		cmd := map[string]any{"type": "presence", "id": fmt.Sprint("p", page), "room": room, "limit": 1000}
		if cursor != "" {
			cmd["cursor"] = cursor
		}
		w.send(cmd)
		a := confAck(w, fmt.Sprint("p", page))
		ms, _ := a["members"].([]any)
		collect(ms)
		if confNum(t, a["members_total"]) != n+1 {
			t.Fatalf("page %d: members_total %v, want %d", page, a["members_total"], n+1)
		}
		next, _ := a["next"].(string)
		if next == "" {
			break
		}
		cursor = next
	}
	if len(seen) != n+1 || !seen[self] {
		t.Fatalf("paged through %d members (self included: %v), want %d", len(seen), seen[self], n+1)
	}

	clear(seen)
	u := ts.url + "/v1/rooms/" + room + "/presence?limit=1000"
	for next := ""; ; {
		resp, body := apiTestDo(t, http.MethodGet, u+"&cursor="+next, testAPIKey, nil, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET presence: got %d %v, want 200", resp.StatusCode, body)
		}
		ms, _ := body["members"].([]any)
		collect(ms)
		next, _ = body["next"].(string)
		if next == "" {
			break
		}
	}
	if len(seen) != n+1 {
		t.Fatalf("HTTP paging: got %d members, want %d", len(seen), n+1)
	}
}

// Replies never close a session for asking: a subscribe ack and a presence
// page far larger than the queue bound arrive, and the session stays open.
func TestRepliesDoNotCountAsSlowConsumer(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.QueueLimit = 8 << 10 })
	room := "big:replies"
	for i := range 2000 {
		m := fanout.Member{User: fmt.Sprintf("user-%d", i), Session: fmt.Sprintf("sess-%06d", i)}
		if err := ts.bus.Join(context.Background(), room, m); err != nil {
			t.Fatal(err)
		}
	}
	w, _ := confDial(t, ts, nil)
	confSubscribe(w, "s1", room, true)
	for i := range 5 {
		w.send(map[string]any{"type": "presence", "id": fmt.Sprint("p", i), "room": room, "limit": 1000})
	}
	for i := range 5 {
		if ms, _ := confAck(w, fmt.Sprint("p", i))["members"].([]any); len(ms) != 1000 {
			t.Fatalf("presence page %d: got %d members, want 1000", i, len(ms))
		}
	}
}

// Node-wide bounds answer with a clear error, never by growing: past the
// rooms a node may hold, a new room is refused with over_capacity (503 on
// the API), and the session that asked stays open.
func TestRoomLimitOverCapacity(t *testing.T) {
	ts := startServerWith(t, fanout.MemoryConfig{MaxRooms: 3}, nil)
	w, _ := confDial(t, ts, nil)
	for i := range 3 {
		confSubscribe(w, fmt.Sprint("s", i), fmt.Sprint("held:", i), false)
	}
	w.send(map[string]any{"type": "subscribe", "id": "s3", "room": "held:3"})
	confError(w, "s3", codeOverCapacity)
	w.send(map[string]any{"type": "publish", "id": "p1", "room": "held:4", "data": 1})
	confError(w, "p1", codeOverCapacity)
	resp, body := apiTestDo(t, http.MethodPost, ts.url+"/v1/rooms/held:5/messages", testAPIKey, nil, `{"n":1}`)
	apiTestCheckError(t, resp, body, http.StatusServiceUnavailable, codeOverCapacity)
	// Rooms already held go on working.
	w.send(map[string]any{"type": "publish", "id": "p2", "room": "held:0", "data": 2})
	for {
		if f := w.next(); f["type"] == "ack" && f["id"] == "p2" {
			break
		}
	}
}

// Sessions that Shutdown closes after its drain window still leave their
// rooms' presence before Shutdown returns, WebSocket and SSE alike: with a bus
// on the network, ghost members would stay behind.
func TestShutdownLeavesPresence(t *testing.T) {
	t.Parallel()
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	srv, err := New(Config{Bus: bus, DrainTimeout: time.Millisecond, PresenceRooms: []string{"ghosts"}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Config = srv.http
	hs.Start()
	t.Cleanup(func() {
		if !srv.draining.Load() {
			srv.Shutdown(context.Background())
		}
		hs.Close()
		bus.Close()
	})
	ws := "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ws"
	const each = 20
	for i := range each {
		w := dialWS(t, ws, nil)
		w.expect("welcome")
		// A presence room: the session is a member without asking for the
		// events, so nothing more is sent to it before the close.
		w.send(map[string]any{"type": "subscribe", "id": "s", "room": "ghosts"})
		if f := w.expect("ack"); f["id"] != "s" {
			t.Fatalf("session %d: got %v, want its subscribe ack", i, f)
		}
		go func() { // reads on, so that close handshakes complete
			for {
				if _, _, err := w.c.Read(context.Background()); err != nil {
					return
				}
			}
		}()
		// SSE streams that are never read.
		sseTestGet(t, http.MethodGet, hs.URL+"/v1/sse?rooms=ghosts", nil)
	}
	waitFor(t, "every session in presence", func() bool {
		page, err := bus.Presence(context.Background(), "ghosts", fanout.PresenceQuery{})
		return err == nil && page.Total == 2*each
	})
	// No drain window: Shutdown closes every session at once and cancels the
	// server's context, and sessions finish after that.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	srv.Shutdown(ctx)
	if page, err := bus.Presence(context.Background(), "ghosts", fanout.PresenceQuery{}); err != nil || page.Total != 0 {
		t.Fatalf("presence after shutdown: got %d members (%v), want none", page.Total, err)
	}
}

// blockingLog blocks the first log record with a given message until
// released, as a log pipe that is full would.
type blockingLog struct {
	match   string
	hit     chan struct{}
	release chan struct{}
	once    sync.Once
}

func (h *blockingLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *blockingLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *blockingLog) WithGroup(string) slog.Handler            { return h }
func (h *blockingLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.match {
		first := false
		h.once.Do(func() { first = true; close(h.hit) })
		if first {
			<-h.release
		}
	}
	return nil
}

// A slow consumer's log line is written with no room locked: a log sink that
// stalls does not stall the room's publishers.
func TestSlowConsumerLogOutsideRoomLock(t *testing.T) {
	t.Parallel()
	h := &blockingLog{match: "slow consumer closed", hit: make(chan struct{}), release: make(chan struct{})}
	var released sync.Once
	release := func() { released.Do(func() { close(h.release) }) }
	t.Cleanup(release)
	ts := startServer(t, func(c *Config) {
		c.Logger = slog.New(h)
		c.QueueLimit = 64 << 10
		c.WriteTimeout = 30 * time.Second
	})
	room := "hot:room"
	slow := dialWS(t, ts.ws, nil)
	slow.expect("welcome")
	slow.send(map[string]any{"type": "subscribe", "id": "s", "room": room})
	slow.expect("ack")
	// slow reads nothing more: loopback buffers fill, then its queue.

	data := []byte(`{"pad":"` + strings.Repeat("x", 60<<10) + `"}`)
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for range 2000 {
			select {
			case <-h.hit:
				return
			default:
			}
			ts.bus.Publish(context.Background(), room, fanout.Publication{Data: data})
		}
	}()
	select {
	case <-h.hit:
	case <-time.After(20 * time.Second):
		t.Fatal("the slow consumer was not closed")
	}
	done := make(chan error, 1)
	go func() {
		_, err := ts.bus.Publish(context.Background(), room, fanout.Publication{Data: []byte(`"next"`)})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Error("a publish to the room waited on the slow consumer's log line")
	}
	release()
	<-pubDone
}

// A session that finishes after the server's context is cancelled (as
// Shutdown cancels it before the last sessions are done) still leaves its
// rooms' presence on the bus.
func TestFinishAfterServerContextCancelled(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.PresenceRooms = []string{"ghosts"} })
	w, _ := confDial(t, ts, nil)
	confSubscribe(w, "s1", "ghosts", false)
	total := func() int {
		page, err := ts.bus.Presence(context.Background(), "ghosts", fanout.PresenceQuery{})
		if err != nil {
			t.Fatalf("presence: %v", err)
		}
		return page.Total
	}
	if got := total(); got != 1 {
		t.Fatalf("presence: got %d, want 1", got)
	}
	ts.srv.cancel()
	w.c.CloseNow()
	waitFor(t, "the closed session to leave presence", func() bool { return total() == 0 })
}
