package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// onlySession returns the server's one session.
func onlySession(t *testing.T, ts *testServer) *session {
	t.Helper()
	ts.srv.sessMu.Lock()
	defer ts.srv.sessMu.Unlock()
	if len(ts.srv.sessions) != 1 {
		t.Fatalf("got %d sessions, want 1", len(ts.srv.sessions))
	}
	for s := range ts.srv.sessions {
		return s
	}
	return nil
}

// wireMessage is what these tests read of a message frame.
type wireMessage struct {
	Type   string          `json:"type"`
	Offset uint64          `json:"offset"`
	Data   json.RawMessage `json:"data"`
}

// wireSizes are the data sizes the fast room cycles through: frames with
// each of the three WebSocket length encodings, smaller and larger than
// the connection's buffers.
var wireSizes = []int{20, 130, 600, 3000, 20000, 70000}

// wireData is the data of the message at offset: a JSON string whose length
// tells which offset it belongs to.
func wireData(offset uint64) string {
	return `"` + strings.Repeat("x", wireSizes[int(offset-1)%len(wireSizes)]) + `"`
}

// A client that sends WebSocket pings without pause while it receives a fast
// room gets every frame whole: the pongs coder/websocket writes from the
// session's reader never land inside a message frame the session's writer
// writes. The server's socket buffer is small, so that message frames are
// written in several pieces while pongs wait.
func TestWirePingsNeverSplitAFrame(t *testing.T) {
	ts := startServer(t, nil)
	w, _ := confDial(t, ts, nil)
	confSubscribe(w, "s", "wire:pings", false)
	if len(w.pending) != 0 {
		t.Fatalf("frames left after the ack: %q", w.pending)
	}
	s := onlySession(t, ts)
	if tc, ok := s.wire.conn.(*net.TCPConn); ok {
		tc.SetWriteBuffer(16 << 10)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const wantPongs = 300
	var pongs atomic.Int64
	pingerDone := make(chan error, 1)
	stopPings := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopPings:
				pingerDone <- nil
				return
			default:
			}
			if err := w.c.Ping(ctx); err != nil {
				pingerDone <- err
				return
			}
			pongs.Add(1)
		}
	}()

	// The publisher keeps at most 8 messages (560 KiB) ahead of the reader,
	// within the session's queue bound, and goes on until enough pings have
	// been answered during the stream; its last message says so.
	const end = `{"end":true}`
	window := make(chan struct{}, 8)
	pubErr := make(chan error, 1)
	go func() {
		for n := uint64(1); ; n++ {
			select {
			case window <- struct{}{}:
			case <-ctx.Done():
				pubErr <- ctx.Err()
				return
			}
			data := wireData(n)
			if n > 300 && pongs.Load() >= wantPongs {
				data = end
			}
			if _, err := ts.bus.Publish(ctx, "wire:pings", fanout.Publication{Data: json.RawMessage(data)}); err != nil || data == end {
				pubErr <- err
				return
			}
		}
	}()

	var received, messages int64
	for done := false; !done; {
		_, b, err := w.c.Read(ctx)
		if err != nil {
			t.Fatalf("read after %d messages (%d pongs): %v", received, pongs.Load(), err)
		}
		messages++
		for line := range bytes.SplitSeq(b, []byte("\n")) {
			var m wireMessage
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatalf("message %d: %d bytes that are not a frame (%v): %.80q", received+1, len(line), err, line)
			}
			received++
			if m.Type != "message" || m.Offset != uint64(received) {
				t.Fatalf("got %s at offset %d, want the message at offset %d", m.Type, m.Offset, received)
			}
			if string(m.Data) == end {
				done = true
				break
			}
			if want := wireData(m.Offset); string(m.Data) != want {
				t.Fatalf("message %d: got %d bytes of data, want %d", m.Offset, len(m.Data), len(want))
			}
			<-window
		}
	}
	if err := <-pubErr; err != nil {
		t.Fatalf("publish: %v", err)
	}
	close(stopPings)
	// The last ping waits for its pong, which only a read takes in.
	go w.c.Read(ctx)
	if err := <-pingerDone; err != nil {
		t.Fatalf("ping: %v", err)
	}
	t.Logf("%d messages in %d WebSocket messages, %d pings answered meanwhile", received-1, messages, pongs.Load())
}

// Frames that pile up while the session's writer is busy go out together
// as one WebSocket message, newline-separated and in order, whether their
// WebSocket frame was built once for every session (messages) or not (a
// reply).
func TestWireBatchIsOneMessage(t *testing.T) {
	ts := startServer(t, nil)
	w, _ := confDial(t, ts, nil)
	confSubscribe(w, "s", "wire:batch", false)
	s := onlySession(t, ts)
	publish := func(data string) {
		t.Helper()
		if _, err := ts.bus.Publish(context.Background(), "wire:batch", fanout.Publication{Data: json.RawMessage(data)}); err != nil {
			t.Fatal(err)
		}
	}

	// The writer takes the first message and waits for the wire, which the
	// test holds, while the rest pile up in the queue.
	s.wire.mu.Lock()
	publish(`1`)
	waitFor(t, "the writer to take the first message", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.queue) == 0
	})
	publish(`"` + strings.Repeat("b", 100) + `"`)
	s.reply(&frame{kind: kindControl, b: mustJSON(ackFrame{Type: "ack", ID: "between"})})
	publish(`"` + strings.Repeat("c", 300) + `"`)
	s.wire.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	read := func() [][]byte {
		t.Helper()
		typ, b, err := w.c.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if typ != websocket.MessageText {
			t.Fatalf("got a %v message, want text", typ)
		}
		return bytes.Split(b, []byte("\n"))
	}
	if first := read(); len(first) != 1 || !bytes.Contains(first[0], []byte(`"offset":1,`)) {
		t.Fatalf("first message: got %q, want the message at offset 1 alone", first)
	}
	batch := read()
	if len(batch) != 3 {
		t.Fatalf("second message: got %d frames %q, want 3", len(batch), batch)
	}
	want := []string{`"offset":2,`, `"id":"between"`, `"offset":3,`}
	for i, part := range batch {
		if !json.Valid(part) || !bytes.Contains(part, []byte(want[i])) {
			t.Errorf("frame %d of the batch: got %q, want a JSON frame with %s", i, part, want[i])
		}
	}
}

// recordingConn is a connection that records writes and write deadlines.
type recordingConn struct {
	net.Conn
	writes    [][]byte
	deadlines []time.Time
	fail      error
}

func (c *recordingConn) Write(p []byte) (int, error) {
	if c.fail != nil {
		return 0, c.fail
	}
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func (c *recordingConn) SetWriteDeadline(t time.Time) error {
	c.deadlines = append(c.deadlines, t)
	return nil
}

// The wire arms the write deadline before a write only when less than nine
// tenths of WriteTimeout is left of it, for the session's writes and
// coder/websocket's alike.
func TestWireDeadline(t *testing.T) {
	const timeout = 10 * time.Second
	t0 := time.Unix(1_000_000, 0)
	now := t0
	c := &recordingConn{}
	w := &wsWire{conn: c, timeout: timeout, now: func() time.Time { return now }}
	wire := wsTextFrame([]byte(`{}`))
	steps := []struct {
		name   string
		at     time.Duration
		coder  bool
		armed  bool
		expect time.Duration // the deadline from t0 after the write
	}{
		{name: "first write", at: 0, armed: true, expect: timeout},
		{name: "soon after", at: timeout / 20, armed: false, expect: timeout},
		{name: "pong soon after", at: timeout / 20, coder: true, armed: false, expect: timeout},
		{name: "a fifth later", at: timeout / 5, armed: true, expect: timeout + timeout/5},
		{name: "pong long after", at: 3 * timeout, coder: true, armed: true, expect: 4 * timeout},
		{name: "write long after", at: 10 * timeout, armed: true, expect: 11 * timeout},
	}
	for _, st := range steps {
		now = t0.Add(st.at)
		before := len(c.deadlines)
		var err error
		if st.coder {
			_, err = w.Write([]byte{0x8a, 0}) // a pong
		} else {
			err = w.writeFrame(wire, now)
		}
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if armed := len(c.deadlines) > before; armed != st.armed {
			t.Errorf("%s: armed %v, want %v", st.name, armed, st.armed)
		}
		if got := c.deadlines[len(c.deadlines)-1]; !got.Equal(t0.Add(st.expect)) {
			t.Errorf("%s: deadline %v after t0, want %v", st.name, got.Sub(t0), st.expect)
		}
	}
	if len(c.writes) != len(steps) {
		t.Errorf("got %d writes, want %d", len(c.writes), len(steps))
	}
}

// Nothing follows a close frame, nor a write that failed (the frame it
// wrote may be cut short): the session's writes fail from then on.
func TestWireStopsAfterCloseOrFailure(t *testing.T) {
	wire := wsTextFrame([]byte(`{}`))
	tests := []struct {
		name  string
		setup func(*wsWire, *recordingConn)
		want  error
	}{
		{name: "close frame sent", want: errCloseSent, setup: func(w *wsWire, _ *recordingConn) {
			if _, err := w.Write([]byte{0x88, 2, 0x03, 0xe8}); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "write failed", want: net.ErrClosed, setup: func(w *wsWire, c *recordingConn) {
			c.fail = net.ErrClosed
			if err := w.writeFrame(wire, time.Now()); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("got %v, want %v", err, net.ErrClosed)
			}
			c.fail = nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &recordingConn{}
			w := &wsWire{conn: c, timeout: time.Second, now: time.Now}
			tt.setup(w, c)
			before := len(c.writes)
			if err := w.writeFrame(wire, time.Now()); !errors.Is(err, tt.want) {
				t.Errorf("write: got %v, want %v", err, tt.want)
			}
			if len(c.writes) != before {
				t.Errorf("got %d more writes on the connection, want none", len(c.writes)-before)
			}
		})
	}
}

// appendWSHeader frames a payload of any length with the shortest of the
// three length encodings of RFC 6455 (coder/websocket reads all three in
// TestWirePingsNeverSplitAFrame).
func TestWireHeader(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 200000} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			b := wsTextFrame(bytes.Repeat([]byte("a"), n))
			if b[0] != 0x81 {
				t.Fatalf("first byte: got %#x, want FIN and text (0x81)", b[0])
			}
			var got, hdr int
			switch l := int(b[1]); {
			case l&0x80 != 0:
				t.Fatalf("the frame is masked")
			case l <= 125:
				got, hdr = l, 2
			case l == 126:
				got, hdr = int(b[2])<<8|int(b[3]), 4
			default:
				for _, c := range b[2:10] {
					got = got<<8 | int(c)
				}
				hdr = 10
			}
			wantHdr := 10
			if n <= 125 {
				wantHdr = 2
			} else if n <= 65535 {
				wantHdr = 4
			}
			if got != n || hdr != wantHdr || len(b) != hdr+n {
				t.Errorf("got length %d in a %d-byte header of a %d-byte frame, want %d in %d bytes", got, hdr, len(b), n, wantHdr)
			}
		})
	}
}
