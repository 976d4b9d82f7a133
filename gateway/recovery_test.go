package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// recMessage is a message frame reduced to what ordering checks compare.
type recMessage struct {
	offset uint64
	epoch  string
	data   string // the data, re-encoded as compact JSON
}

func recNum(t testing.TB, v any) uint64 {
	t.Helper()
	f, ok := v.(float64)
	if !ok || f < 0 {
		t.Fatalf("got %v (%T), want a non-negative number", v, v)
	}
	return uint64(f)
}

func recToMessage(t testing.TB, m map[string]any) recMessage {
	t.Helper()
	if m["type"] != "message" {
		t.Fatalf("got frame %v, want a message", m)
	}
	data, err := json.Marshal(m["data"])
	if err != nil {
		t.Fatal(err)
	}
	epoch, _ := m["epoch"].(string)
	return recMessage{offset: recNum(t, m["offset"]), epoch: epoch, data: string(data)}
}

// recNextMessage reads the next frame, which must be a message.
func recNextMessage(w *wsConn) recMessage {
	w.t.Helper()
	return recToMessage(w.t, w.next())
}

// recSubscribe sends a subscribe and returns its ack, which must be the very
// next frame: the ack comes before any message of the room.
func recSubscribe(w *wsConn, id, room string, since *fanout.Position) map[string]any {
	w.t.Helper()
	f := map[string]any{"type": "subscribe", "id": id, "room": room}
	if since != nil {
		f["since"] = since
	}
	w.send(f)
	ack := w.next()
	if ack["type"] != "ack" || ack["id"] != id {
		w.t.Fatalf("got frame %v, want the ack of %q first", ack, id)
	}
	return ack
}

// recCheckAck checks a subscribe ack's position and recovered flag.
func recCheckAck(t testing.TB, ack map[string]any, epoch string, offset uint64, recovered bool) {
	t.Helper()
	if got := ack["epoch"]; got != epoch {
		t.Errorf("ack epoch: got %v, want %v", got, epoch)
	}
	if got := recNum(t, ack["offset"]); got != offset {
		t.Errorf("ack offset: got %v, want %v", got, offset)
	}
	if got := ack["recovered"]; got != recovered {
		t.Errorf("ack recovered: got %v, want %v", got, recovered)
	}
}

// recPublishAPI publishes data to room over the HTTP API.
func recPublishAPI(t testing.TB, ts *testServer, room, data string) fanout.Position {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.url+"/v1/rooms/"+room+"/messages", strings.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+ts.srv.cfg.APIKey)
	resp, err := ts.http.Client().Do(req)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	defer resp.Body.Close()
	var pr publishResponse
	if err := json.NewDecoder(resp.Body).Decode(&pr); err != nil {
		t.Fatalf("publish response: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("publish status: got %v, want %v", resp.StatusCode, http.StatusOK)
	}
	return fanout.Position{Epoch: pr.Epoch, Offset: pr.Offset}
}

// recPublishBus publishes data to room on the server's bus, as the HTTP API
// does, without a round trip.
func recPublishBus(t testing.TB, ts *testServer, room, data string) fanout.Position {
	t.Helper()
	res, err := ts.bus.Publish(context.Background(), room, fanout.Publication{Data: json.RawMessage(data)})
	if err != nil {
		t.Fatalf("bus publish: %v", err)
	}
	return res.Position
}

// recExpectRun reads n messages and checks they are offsets from+1 to from+n
// of epoch, with data {"n":offset}.
func recExpectRun(w *wsConn, epoch string, from uint64, n int) {
	w.t.Helper()
	for i := 1; i <= n; i++ {
		m := recNextMessage(w)
		want := recMessage{offset: from + uint64(i), epoch: epoch, data: fmt.Sprintf(`{"n":%d}`, from+uint64(i))}
		if m != want {
			w.t.Fatalf("message %d of %d: got %+v, want %+v", i, n, m, want)
		}
	}
}

func TestRecoveryWebSocket(t *testing.T) {
	ts := startServer(t, nil)
	const room = "rec:ws"

	// A client subscribes, sees a few messages and remembers the last one.
	a := dialWS(t, ts.ws, nil)
	a.expect("welcome")
	ack := recSubscribe(a, "s1", room, nil)
	epoch, _ := ack["epoch"].(string)
	if epoch == "" {
		t.Fatalf("got ack %v, want an epoch", ack)
	}
	for i := 1; i <= 3; i++ {
		recPublishAPI(t, ts, room, fmt.Sprintf(`{"n":%d}`, i))
	}
	recExpectRun(a, epoch, 0, 3)
	last := fanout.Position{Epoch: epoch, Offset: 3}
	a.c.Close(websocket.StatusNormalClosure, "")

	// 200 messages are published while it is away.
	for i := 4; i <= 203; i++ {
		recPublishAPI(t, ts, room, fmt.Sprintf(`{"n":%d}`, i))
	}

	// It comes back with since: the ack first, then exactly the 200 it missed.
	b := dialWS(t, ts.ws, nil)
	b.expect("welcome")
	recCheckAck(t, recSubscribe(b, "s2", room, &last), epoch, 203, true)
	recExpectRun(b, epoch, 3, 200)

	// Live messages follow without a gap or a duplicate.
	for i := 204; i <= 210; i++ {
		recPublishAPI(t, ts, room, fmt.Sprintf(`{"n":%d}`, i))
	}
	recExpectRun(b, epoch, 203, 7)
}

func TestRecoveryBoundaries(t *testing.T) {
	// History keeps 10 messages: after 51, offsets 42 to 51.
	ts := startServerWith(t, fanout.MemoryConfig{HistorySize: 10}, nil)
	tests := []struct {
		name      string
		since     func(epoch string) fanout.Position
		recovered bool
		replay    uint64 // the first offset replayed; the run ends at 51
	}{
		{name: "oldest kept message is next", since: func(e string) fanout.Position { return fanout.Position{Epoch: e, Offset: 41} }, recovered: true, replay: 42},
		{name: "inside history", since: func(e string) fanout.Position { return fanout.Position{Epoch: e, Offset: 47} }, recovered: true, replay: 48},
		{name: "at the top", since: func(e string) fanout.Position { return fanout.Position{Epoch: e, Offset: 51} }, recovered: true, replay: 52},
		{name: "one message beyond history", since: func(e string) fanout.Position { return fanout.Position{Epoch: e, Offset: 40} }, recovered: false},
		{name: "far beyond history", since: func(e string) fanout.Position { return fanout.Position{Epoch: e, Offset: 1} }, recovered: false},
		{name: "from the start", since: func(e string) fanout.Position { return fanout.Position{Epoch: e, Offset: 0} }, recovered: false},
		{name: "offset in the future", since: func(e string) fanout.Position { return fanout.Position{Epoch: e, Offset: 52} }, recovered: false},
		{name: "wrong epoch", since: func(string) fanout.Position { return fanout.Position{Epoch: "another-epoch", Offset: 47} }, recovered: false},
		{name: "empty epoch", since: func(string) fanout.Position { return fanout.Position{Offset: 47} }, recovered: false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			room := fmt.Sprintf("rec:bound:%d", i)
			var epoch string
			for n := 1; n <= 51; n++ {
				epoch = recPublishBus(t, ts, room, fmt.Sprintf(`{"n":%d}`, n)).Epoch
			}
			w := dialWS(t, ts.ws, nil)
			w.expect("welcome")
			since := tt.since(epoch)
			recCheckAck(t, recSubscribe(w, "s", room, &since), epoch, 51, tt.recovered)
			if tt.recovered {
				recExpectRun(w, epoch, tt.replay-1, int(52-tt.replay))
			}
			// Nothing else was replayed: the next frame is the next live
			// message.
			recPublishBus(t, ts, room, `{"n":52}`)
			recExpectRun(w, epoch, 51, 1)
		})
	}
}

func TestRecoverySubscribeDuringPublish(t *testing.T) {
	ts := startServerWith(t, fanout.MemoryConfig{HistorySize: 100000}, func(c *Config) { c.QueueLimit = 32 << 20 })
	const room = "rec:race"
	const subscribers = 6
	epoch := recPublishBus(t, ts, room, `{"n":1}`).Epoch

	clients := make([]*wsConn, subscribers)
	for i := range clients {
		clients[i] = dialWS(t, ts.ws, nil)
		clients[i].expect("welcome")
	}

	// The flood publishes as fast as the bus takes it until told to stop.
	var top atomic.Uint64
	top.Store(1)
	stop := make(chan struct{})
	flood := make(chan error, 1)
	go func() {
		for n := uint64(2); n <= 20000; n++ {
			select {
			case <-stop:
				flood <- nil
				return
			default:
			}
			res, err := ts.bus.Publish(context.Background(), room, fanout.Publication{Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))})
			if err != nil {
				flood <- err
				return
			}
			if res.Offset != n {
				flood <- fmt.Errorf("publish %d: got offset %v, want %v", n, res.Offset, n)
				return
			}
			top.Store(n)
			// Let the subscribers' goroutines in between publishes, so the
			// flood does not starve them on one core.
			runtime.Gosched()
		}
		flood <- nil
	}()
	stopFlood := sync.OnceFunc(func() { close(stop) })
	defer stopFlood()

	// Subscribe while the flood runs: one client from the start, one live
	// only, the others from a point a little behind the top. The flood goes
	// on until every ack is in.
	from := make([]uint64, subscribers) // the last offset before the first one it must get
	acks := make([]map[string]any, subscribers)
	ackErrs := make(chan error, subscribers)
	var readers sync.WaitGroup
	for i, w := range clients {
		recPoll(t, 5*time.Second, func() bool { return top.Load() >= uint64(100*(i+1)) })
		f := map[string]any{"type": "subscribe", "id": fmt.Sprint(i), "room": room}
		switch i {
		case 0:
			f["since"] = fanout.Position{Epoch: epoch, Offset: 0}
		case 1:
		default:
			from[i] = top.Load() - 40
			f["since"] = fanout.Position{Epoch: epoch, Offset: from[i]}
		}
		w.send(f)
		readers.Add(1)
		go func() {
			defer readers.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, b, err := w.c.Read(ctx)
			if err != nil {
				ackErrs <- fmt.Errorf("subscriber %d: %w", i, err)
				return
			}
			lines := bytes.Split(b, []byte("\n"))
			if err := json.Unmarshal(lines[0], &acks[i]); err != nil {
				ackErrs <- fmt.Errorf("subscriber %d: frame %q: %w", i, lines[0], err)
				return
			}
			w.pending = lines[1:]
		}()
	}
	readers.Wait()
	stopFlood()
	close(ackErrs)
	for err := range ackErrs {
		t.Fatal(err)
	}
	if err := <-flood; err != nil {
		t.Fatal(err)
	}
	final := top.Load()

	tops := make([]uint64, subscribers)
	for i, ack := range acks {
		if ack["type"] != "ack" || ack["id"] != fmt.Sprint(i) {
			t.Fatalf("subscriber %d: got frame %v, want its ack first", i, ack)
		}
		if want := i != 1; ack["recovered"] != want {
			t.Fatalf("subscriber %d: got ack %v, want recovered %v", i, ack, want)
		}
		tops[i] = recNum(t, ack["offset"])
		if i == 1 {
			from[i] = tops[i]
		}
	}
	during := 0
	for _, top := range tops {
		if top < final {
			during++
		}
	}
	t.Logf("flood published %d messages; %d of %d subscribed while it ran (acks at %v)", final, during, subscribers, tops)
	if during == 0 {
		t.Fatalf("no subscription overlapped the flood (acks at %v, last offset %d)", tops, final)
	}
	for i, w := range clients {
		recExpectRun(w, epoch, from[i], int(final-from[i]))
	}
}

func TestRecoveryRacingPublishers(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.PublishRate, c.PublishBurst = 1e6, 1e6 })
	const room = "rec:order"
	const perPublisher = 200

	var subs []*wsConn
	for i := range 3 {
		w := dialWS(t, ts.ws, nil)
		w.expect("welcome")
		recSubscribe(w, fmt.Sprintf("s%d", i), room, nil)
		subs = append(subs, w)
	}
	pubs := []*wsConn{dialWS(t, ts.ws, nil), dialWS(t, ts.ws, nil)}
	for _, p := range pubs {
		p.expect("welcome")
	}

	// Both publishers send every frame at once, without waiting for acks.
	var wg sync.WaitGroup
	errs := make(chan error, len(pubs))
	for pi, p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perPublisher {
				b := fmt.Appendf(nil, `{"type":"publish","id":"%d","room":%q,"data":"p%d-%d"}`, i, room, pi, i)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := p.c.Write(ctx, websocket.MessageText, b)
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("publisher write: %v", err)
	}

	// Each publisher's acks say where its messages landed.
	offsetOf := make(map[string]uint64) // data -> offset
	for pi, p := range pubs {
		var prev uint64
		for i := range perPublisher {
			ack := p.expect("ack")
			if ack["id"] != fmt.Sprint(i) {
				t.Fatalf("publisher %d: got ack %v, want id %d", pi, ack, i)
			}
			off := recNum(t, ack["offset"])
			if off <= prev {
				t.Fatalf("publisher %d: ack offset %d after %d, want rising offsets", pi, off, prev)
			}
			prev = off
			offsetOf[fmt.Sprintf(`"p%d-%d"`, pi, i)] = off
		}
	}

	// Every subscriber sees offsets 1 to 400, each with the data its
	// publisher's ack named: one order for all.
	total := len(pubs) * perPublisher
	var first []recMessage
	for si, w := range subs {
		got := make([]recMessage, 0, total)
		for range total {
			got = append(got, recNextMessage(w))
		}
		for i, m := range got {
			if m.offset != uint64(i+1) {
				t.Fatalf("subscriber %d, message %d: got offset %d, want %d", si, i, m.offset, i+1)
			}
			if want, ok := offsetOf[m.data]; !ok || want != m.offset {
				t.Fatalf("subscriber %d: got %s at offset %d, want it at %v", si, m.data, m.offset, want)
			}
		}
		if si == 0 {
			first = got
			continue
		}
		for i := range got {
			if got[i] != first[i] {
				t.Fatalf("subscriber %d, position %d: got %+v, want %+v (subscriber 0)", si, i, got[i], first[i])
			}
		}
	}
}

// recEvent is one Server-Sent Event.
type recEvent struct {
	event, data, id, retry string
}

// recSSE reads an SSE stream in the background.
type recSSE struct {
	t      testing.TB
	events chan recEvent
}

// recOpenSSE opens /v1/sse?rooms=rooms, resuming from lastID if set. The
// stream is closed when the test ends.
func recOpenSSE(t testing.TB, ts *testServer, rooms, lastID string) *recSSE {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ts.url+"/v1/sse?rooms="+rooms, nil)
	if err != nil {
		t.Fatal(err)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := ts.http.Client().Do(req)
	if err != nil {
		cancel()
		t.Fatalf("sse: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		t.Fatalf("sse status: got %v, want %v", resp.StatusCode, http.StatusOK)
	}
	s := &recSSE{t: t, events: make(chan recEvent, 64)}
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	go func() {
		defer close(done)
		defer close(s.events)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		var ev recEvent
		for sc.Scan() {
			line := sc.Text()
			if line == "" {
				if ev != (recEvent{}) {
					select {
					case s.events <- ev:
					case <-ctx.Done():
						return
					}
				}
				ev = recEvent{}
				continue
			}
			if strings.HasPrefix(line, ":") {
				continue
			}
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "event":
				ev.event = value
			case "data":
				ev.data = value
			case "id":
				ev.id = value
			case "retry":
				ev.retry = value
			}
		}
	}()
	return s
}

func (s *recSSE) next() recEvent {
	s.t.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			s.t.Fatal("sse stream ended")
		}
		return ev
	case <-time.After(5 * time.Second):
		s.t.Fatal("no sse event within 5s")
	}
	return recEvent{}
}

// open reads the stream's first event, which sets the retry delay.
func (s *recSSE) open() {
	s.t.Helper()
	if ev := s.next(); ev.retry != "3000" {
		s.t.Fatalf("got first event %+v, want retry 3000", ev)
	}
}

// message reads the next event, which must be a message, and returns it with
// its id.
func (s *recSSE) message() (recMessage, string) {
	s.t.Helper()
	ev := s.next()
	if ev.event != "message" {
		s.t.Fatalf("got event %+v, want a message", ev)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(ev.data), &m); err != nil {
		s.t.Fatalf("message data %q: %v", ev.data, err)
	}
	m["type"] = "message"
	return recToMessage(s.t, m), ev.id
}

// expectRun reads n message events, offsets from+1 to from+n with data
// {"n":offset}, and returns the last id.
func (s *recSSE) expectRun(epoch string, from uint64, n int) string {
	s.t.Helper()
	var id string
	for i := 1; i <= n; i++ {
		var m recMessage
		m, id = s.message()
		want := recMessage{offset: from + uint64(i), epoch: epoch, data: fmt.Sprintf(`{"n":%d}`, from+uint64(i))}
		if m != want {
			s.t.Fatalf("sse message %d of %d: got %+v, want %+v", i, n, m, want)
		}
	}
	return id
}

// welcome reads the next event, which must be the welcome, and returns it
// with its decoded id.
func (s *recSSE) welcome() (sseWelcome, cursor) {
	s.t.Helper()
	ev := s.next()
	if ev.event != "welcome" {
		s.t.Fatalf("got event %+v, want the welcome", ev)
	}
	var w sseWelcome
	if err := json.Unmarshal([]byte(ev.data), &w); err != nil {
		s.t.Fatalf("welcome %q: %v", ev.data, err)
	}
	c, err := decodeCursor(ev.id)
	if err != nil {
		s.t.Fatalf("welcome id %q: %v", ev.id, err)
	}
	return w, c
}

// welcomeRoom reads the welcome and returns what it says of room, checking
// that its id stands at pos in that room.
func (s *recSSE) welcomeRoom(room string, pos fanout.Position) sseRoomInfo {
	s.t.Helper()
	w, c := s.welcome()
	if got := c[room]; got != pos {
		s.t.Errorf("welcome id: got %v in %s, want %v", got, room, pos)
	}
	info, ok := w.Rooms[room]
	if !ok {
		s.t.Fatalf("got welcome %+v, want room %q in it", w, room)
	}
	return info
}

func TestRecoverySSE(t *testing.T) {
	ts := startServer(t, nil)
	const room = "rec:sse"
	epoch := recPublishAPI(t, ts, room, `{"n":1}`).Epoch

	a := recOpenSSE(t, ts, room, "")
	a.open()
	if got, want := a.welcomeRoom(room, fanout.Position{Epoch: epoch, Offset: 1}), (sseRoomInfo{Epoch: epoch, Offset: 1}); got != want {
		t.Fatalf("welcome: got %+v, want %+v", got, want)
	}
	recPublishAPI(t, ts, room, `{"n":2}`)
	recPublishAPI(t, ts, room, `{"n":3}`)
	lastID := a.expectRun(epoch, 1, 2)

	// The browser goes away (the next open is a separate stream); 200
	// messages are published meanwhile.
	for i := 4; i <= 203; i++ {
		recPublishAPI(t, ts, room, fmt.Sprintf(`{"n":%d}`, i))
	}

	// It reconnects with Last-Event-ID: the welcome says it recovered, from
	// where it was, and exactly what it missed follows.
	b := recOpenSSE(t, ts, room, lastID)
	b.open()
	if got, want := b.welcomeRoom(room, fanout.Position{Epoch: epoch, Offset: 3}), (sseRoomInfo{Epoch: epoch, Offset: 203, Recovered: true}); got != want {
		t.Fatalf("welcome: got %+v, want %+v", got, want)
	}
	b.expectRun(epoch, 3, 200)
	// Live messages continue without a gap or a duplicate, and the id names
	// the position of the last one.
	for i := 204; i <= 206; i++ {
		recPublishAPI(t, ts, room, fmt.Sprintf(`{"n":%d}`, i))
	}
	id := b.expectRun(epoch, 203, 3)
	c, err := decodeCursor(id)
	if err != nil {
		t.Fatalf("decodeCursor(%q): %v", id, err)
	}
	if got, want := c[room], (fanout.Position{Epoch: epoch, Offset: 206}); got != want || len(c) != 1 {
		t.Fatalf("cursor: got %v, want only %v", c, want)
	}
}

func TestRecoverySSEMultipleRooms(t *testing.T) {
	ts := startServer(t, nil)
	e1 := recPublishBus(t, ts, "rec:m1", `{"n":1}`).Epoch
	e2 := recPublishBus(t, ts, "rec:m2", `{"n":1}`).Epoch

	a := recOpenSSE(t, ts, "rec:m1,rec:m2", "")
	a.open()
	a.welcome()
	recPublishBus(t, ts, "rec:m1", `{"n":2}`)
	recPublishBus(t, ts, "rec:m2", `{"n":2}`)
	a.expectRun(e1, 1, 1)
	lastID := a.expectRun(e2, 1, 1)

	for i := 3; i <= 12; i++ {
		recPublishBus(t, ts, "rec:m1", fmt.Sprintf(`{"n":%d}`, i))
	}
	for i := 3; i <= 5; i++ {
		recPublishBus(t, ts, "rec:m2", fmt.Sprintf(`{"n":%d}`, i))
	}
	b := recOpenSSE(t, ts, "rec:m1,rec:m2", lastID)
	b.open()
	w, c := b.welcome()
	for _, r := range []struct {
		room  string
		epoch string
		top   uint64
	}{{"rec:m1", e1, 12}, {"rec:m2", e2, 5}} {
		if got, want := w.Rooms[r.room], (sseRoomInfo{Epoch: r.epoch, Offset: r.top, Recovered: true}); got != want {
			t.Errorf("welcome for %s: got %+v, want %+v", r.room, got, want)
		}
		if got, want := c[r.room], (fanout.Position{Epoch: r.epoch, Offset: 2}); got != want {
			t.Errorf("welcome id for %s: got %v, want %v", r.room, got, want)
		}
	}
	b.expectRun(e1, 2, 10)
	b.expectRun(e2, 2, 3)
}

func TestRecoverySSEBeyondHistory(t *testing.T) {
	ts := startServerWith(t, fanout.MemoryConfig{HistorySize: 10}, nil)
	tests := []struct {
		name   string
		cursor func(room, epoch, lastID string) string
	}{
		{name: "beyond history", cursor: func(_, _, lastID string) string { return lastID }},
		{name: "wrong epoch", cursor: func(room, _, _ string) string {
			return cursor{room: {Epoch: "another-epoch", Offset: 45}}.encode()
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			room := fmt.Sprintf("rec:sse-gone:%d", i)
			epoch := recPublishBus(t, ts, room, `{"n":1}`).Epoch
			a := recOpenSSE(t, ts, room, "")
			a.open()
			a.welcome()
			recPublishBus(t, ts, room, `{"n":2}`)
			lastID := a.expectRun(epoch, 1, 1)
			for n := 3; n <= 51; n++ {
				recPublishBus(t, ts, room, fmt.Sprintf(`{"n":%d}`, n))
			}

			b := recOpenSSE(t, ts, room, tt.cursor(room, epoch, lastID))
			b.open()
			if got, want := b.welcomeRoom(room, fanout.Position{Epoch: epoch, Offset: 51}), (sseRoomInfo{Epoch: epoch, Offset: 51}); got != want {
				t.Fatalf("welcome: got %+v, want %+v", got, want)
			}
			// Nothing was replayed: the next event is the next live message.
			recPublishBus(t, ts, room, `{"n":52}`)
			b.expectRun(epoch, 51, 1)
		})
	}
}

// recPoll polls cond until it holds or timeout passes.
func recPoll(t testing.TB, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
