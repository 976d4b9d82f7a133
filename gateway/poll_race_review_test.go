package gateway

import (
	"bufio"
	"context"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
)

// When the node closes a session whose reader is running (here a drain:
// the writer's conn.Close after the close frame), coder/websocket's Close
// reads the client's frames itself (waitCloseHandshake, through the same
// bufio.Reader, under its read lock), while readBurst, between two Reads,
// asks that reader how much it holds (pollState.buffered): the two
// goroutines touch the bufio.Reader without a common lock. Run with -race.
func TestPollerReviewBufferedRacesCloseHandshake(t *testing.T) {
	requirePoller(t)
	ts, _ := startPolled(t, nil)
	var clients []net.Conn
	for range 4 {
		c, br, err := reviewRawDial(ts)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
		go io.Copy(io.Discard, br)
		// A client that keeps sending: its reader is always running.
		go func() {
			f := maskedFrame(true, 1, []byte(`{"type":"pong"}`))
			batch := make([]byte, 0, 64*len(f))
			for range 64 {
				batch = append(batch, f...)
			}
			for {
				c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(batch); err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	// The clients never answer the close frame: they hang up a little
	// after the drain begins, which ends the node's wait for their answer.
	time.AfterFunc(500*time.Millisecond, func() {
		for _, c := range clients {
			c.Close()
		}
	})
	// Under -race four flooding clients load two cores so much that the
	// drain takes seconds with or without the poller: its duration is not
	// what this test checks, the race detector is.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Logf("Shutdown: %v", err)
	}
}

// newReviewBus is a Memory bus closed when the test ends.
func newReviewBus(t *testing.T) *fanout.Memory {
	b := fanout.NewMemory(fanout.MemoryConfig{})
	t.Cleanup(func() { b.Close() })
	return b
}

// reviewPoller wraps the server's poller and counts how often each session
// is forgotten, which finishPolled does once per finish.
type reviewPoller struct {
	poller
	mu      sync.Mutex
	forgets map[*session]int
}

func (p *reviewPoller) forget(s *session) {
	p.mu.Lock()
	p.forgets[s]++
	p.mu.Unlock()
	p.poller.forget(s)
}

func (p *reviewPoller) count(s *session) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.forgets[s]
}

// A connection that closes while startReading runs, after it has set
// pollConn's onClose and before it sets the reader state, is finished twice:
// readerClosed finds the state at its zero value (readerPolled) and finishes
// the session, then startReading stores readerPolled again, arm fails on the
// closed connection, and the CAS that follows finishes it a second time
// (srv.goroutines.Done twice, releaseIP twice). In the server the close
// comes from the session's writer (its welcome written to a client that has
// reset the connection), a drain, or the hub. The test drives startReading
// and the close as handleWS does, many times, with the close timed around
// startReading.
func TestPollerReviewStartReadingCloseFinishesTwice(t *testing.T) {
	requirePoller(t)
	srv, err := New(Config{Bus: newReviewBus(t), NodeID: "review", DrainTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	rp := &reviewPoller{poller: srv.poller, forgets: make(map[*session]int)}
	srv.poller = rp
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	const iterations = 10000
	// A second finish calls srv.goroutines.Done once too often: a reserve
	// keeps the count from going negative, and is taken back at the end.
	srv.goroutines.Add(iterations)
	var sessions []*session
	var spins []int
	var delay atomic.Int64
	for i := range iterations {
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		tcp := sc.(*net.TCPConn)
		pc := &pollConn{Conn: tcp}
		ps := &pollState{tcp: tcp, br: bufio.NewReaderSize(pc, smallBuf)}
		s := newSession(srv, identity{user: "u"}, transportWS, "192.0.2.1")
		s.netConn = pc
		if !srv.register(s) {
			t.Fatal("register refused")
		}
		var start atomic.Bool
		ready := make(chan struct{})
		closed := make(chan struct{})
		d := int(i % 100) // spin a little longer each time, to sweep the window
		go func() {
			close(ready)
			for !start.Load() {
			}
			for j := 0; j < d; j++ {
				delay.Add(1)
			}
			pc.Close()
			close(closed)
		}()
		<-ready
		start.Store(true)
		s.startReading(ps)
		<-closed
		deadline := time.Now().Add(5 * time.Second)
		for rp.count(s) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("iteration %d: the session was never finished", i)
			}
			runtime.Gosched()
		}
		client.Close()
		sessions = append(sessions, s)
		spins = append(spins, d)
	}
	// The finishes that run in goroutines may still come.
	time.Sleep(200 * time.Millisecond)
	twice, extra := 0, 0
	for i, s := range sessions {
		if n := rp.count(s); n > 1 {
			twice++
			extra += n - 1
			if twice <= 10 {
				t.Logf("session %d (closer spun %d) finished %d times", i, spins[i], n)
			}
		}
	}
	srv.goroutines.Add(-(iterations - extra))
	if twice > 0 {
		t.Errorf("%d of %d sessions closed during startReading were finished twice, want each once", twice, iterations)
	}
}
