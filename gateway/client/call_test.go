package client_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/gateway/client"
)

// callRecorder keeps every event of a call, read as they come.
type callRecorder struct {
	mu     sync.Mutex
	events []client.CallEvent
	done   chan struct{} // closed when the call's Events is closed
}

func recordCall(t *testing.T, cl *client.Call) *callRecorder {
	t.Helper()
	r := &callRecorder{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for e := range cl.Events() {
			r.mu.Lock()
			r.events = append(r.events, e)
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cl.Leave(ctxT(t))
		<-r.done
	})
	return r
}

func (r *callRecorder) all() []client.CallEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *callRecorder) kind(kind client.CallEventKind) []client.CallEvent {
	var out []client.CallEvent
	for _, e := range r.all() {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

func (r *callRecorder) wait(t *testing.T, kind client.CallEventKind, n int) []client.CallEvent {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d call events of kind %d", n, kind), func() bool { return len(r.kind(kind)) >= n })
	return r.kind(kind)
}

// join joins call on c and records its events.
func join(t *testing.T, c *client.Client, call string) (*client.Call, *callRecorder) {
	t.Helper()
	cl, err := c.Join(ctxT(t), call)
	if err != nil {
		t.Fatalf("Join(%s): %v", call, err)
	}
	return cl, recordCall(t, cl)
}

// candidate is a signal carrying a host candidate whose port is 10000+n, so
// that the signals of a test can be told apart and put in order.
func candidate(n int) map[string]any {
	return map[string]any{"candidate": map[string]any{
		"candidate":     fmt.Sprintf("candidate:1 1 udp 2130706431 127.0.0.1 %d typ host", 10000+n),
		"sdpMid":        "0",
		"sdpMLineIndex": 0,
	}}
}

// candidateNumber returns the n of a signal made by candidate.
func candidateNumber(t *testing.T, data json.RawMessage) int {
	t.Helper()
	var d struct {
		Candidate struct {
			Candidate string `json:"candidate"`
		} `json:"candidate"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("signal data %s: %v", data, err)
	}
	var port int
	if _, err := fmt.Sscanf(d.Candidate.Candidate, "candidate:1 1 udp 2130706431 127.0.0.1 %d typ host", &port); err != nil {
		t.Fatalf("signal data %s: %v", data, err)
	}
	return port - 10000
}

// signalsFrom returns the numbers of the candidate signals rec got from
// peer, in the order they came.
func signalsFrom(t *testing.T, rec *callRecorder, peer string) []int {
	t.Helper()
	var out []int
	for _, e := range rec.kind(client.CallSignal) {
		if e.From == peer {
			out = append(out, candidateNumber(t, e.Data))
		}
	}
	return out
}

// gaugeValue returns the value of the gauge name whose label is value, or
// -1 when reg has none.
func gaugeValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

func ints(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

// Two peers join a call, see each other with opposite roles, signal each
// other 200 times at once with nothing lost or out of order, and the one
// that leaves is seen leaving.
func TestCallJoinSignalLeave(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	ca, _ := dial(t, n.url, nil)
	cb, _ := dial(t, n.url, nil)
	ctx := ctxT(t)

	a, recA := join(t, ca, "call")
	if a.ID() == "" || len(a.Peers()) != 0 || a.Name() != "call" {
		t.Fatalf("first peer: got ID %q, peers %v, name %q; want an ID, no peers, call", a.ID(), a.Peers(), a.Name())
	}
	if ack := a.Ack(); ack.Resume == "" || ack.Resumed || ack.Session != a.ID() {
		t.Errorf("join ack: got %+v, want a resume token, not resumed, session %q", ack, a.ID())
	}
	b, recB := join(t, cb, "call")
	peersB := b.Peers()
	if len(peersB) != 1 || peersB[0].Session != a.ID() || peersB[0].User != ca.Welcome().User {
		t.Fatalf("second peer's peers: got %+v, want the first peer, %s of %s", peersB, a.ID(), ca.Welcome().User)
	}
	joined := recA.wait(t, client.CallPeerJoined, 1)[0].Peer
	if joined.Session != b.ID() || joined.User != cb.Welcome().User {
		t.Errorf("PeerJoined: got %+v, want %s of %s", joined, b.ID(), cb.Welcome().User)
	}
	if joined.Polite == peersB[0].Polite {
		t.Errorf("roles: both peers polite %v toward each other, want exactly one polite", joined.Polite)
	}
	if got := a.Peers(); len(got) != 1 || got[0] != joined {
		t.Errorf("first peer's peers: got %+v, want %+v", got, joined)
	}

	const signals = 200
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, side := range []struct {
		from *client.Call
		to   string
	}{{a, b.ID()}, {b, a.ID()}} {
		wg.Go(func() {
			for i := 1; i <= signals; i++ {
				if err := side.from.Signal(ctx, side.to, candidate(i)); err != nil {
					errs <- fmt.Errorf("Signal %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	recA.wait(t, client.CallSignal, signals)
	recB.wait(t, client.CallSignal, signals)
	if got := signalsFrom(t, recA, b.ID()); !slices.Equal(got, ints(1, signals)) {
		t.Errorf("signals from the second peer: got %v, want 1..%d in order", got, signals)
	}
	if got := signalsFrom(t, recB, a.ID()); !slices.Equal(got, ints(1, signals)) {
		t.Errorf("signals from the first peer: got %v, want 1..%d in order", got, signals)
	}

	if err := b.Leave(ctx); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	select {
	case <-recB.done:
	case <-time.After(waitTimeout):
		t.Fatal("Events of a call left is not closed")
	}
	if err := b.Signal(ctx, a.ID(), candidate(0)); !errors.Is(err, client.ErrCallEnded) {
		t.Errorf("Signal after Leave: got %v, want ErrCallEnded", err)
	}
	left := recA.wait(t, client.CallPeerLeft, 1)[0].Peer
	if left.Session != b.ID() {
		t.Errorf("PeerLeft: got %+v, want %s", left, b.ID())
	}
	if got := a.Peers(); len(got) != 0 {
		t.Errorf("peers after the leave: got %+v, want none", got)
	}
	// The call can be joined again once left.
	if _, err := cb.Join(ctx, "call"); err != nil {
		t.Errorf("Join after Leave: %v", err)
	}
}

// A signal the node refuses comes back from Signal as a *ServerError, and
// data that is not JSON is refused before it is sent.
func TestCallSignalRefused(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	ca, _ := dial(t, n.url, nil)
	cb, _ := dial(t, n.url, nil)
	a, recA := join(t, ca, "call")
	b, _ := join(t, cb, "call")
	recA.wait(t, client.CallPeerJoined, 1)
	ctx := ctxT(t)

	tests := []struct {
		name     string
		to       string
		data     any
		wantCode string // empty: wantErr
		wantErr  error
	}{
		{name: "bad sdp", to: a.ID(), data: map[string]any{"sdp": map[string]any{"type": "offer", "sdp": "not sdp"}}, wantCode: "bad_request"},
		{name: "bad sdp type", to: a.ID(), data: map[string]any{"sdp": map[string]any{"type": "hello", "sdp": "v=0"}}, wantCode: "bad_request"},
		{name: "not a signal", to: a.ID(), data: map[string]any{"chat": "hi"}, wantCode: "bad_request"},
		{name: "bad candidate", to: a.ID(), data: map[string]any{"candidate": map[string]any{"candidate": "candidate:nonsense"}}, wantCode: "bad_request"},
		{name: "unknown peer", to: "0123456789abcdef", data: candidate(1), wantCode: "not_found"},
		{name: "bytes not JSON", to: a.ID(), data: []byte(`{"sdp":`), wantErr: client.ErrInvalidJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := b.Signal(ctx, tt.to, tt.data)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("got %v, want %v", err, tt.wantErr)
				}
				return
			}
			var serr *client.ServerError
			if !errors.As(err, &serr) || serr.Code != tt.wantCode {
				t.Errorf("got %v, want a *ServerError with code %s", err, tt.wantCode)
			}
		})
	}
	// Nothing refused was relayed: the first signal the peer gets is this.
	if err := b.Signal(ctx, a.ID(), candidate(7)); err != nil {
		t.Fatalf("Signal: %v", err)
	}
	recA.wait(t, client.CallSignal, 1)
	if got := signalsFrom(t, recA, b.ID()); !slices.Equal(got, []int{7}) {
		t.Errorf("signals relayed: got %v, want [7]", got)
	}
}

// A client whose connection is cut rejoins its call as the same peer: it
// keeps its ID, gets CallRejoined with Resumed, then the signals sent to it
// while it was away, in order (the node may send them before the join ack:
// the client puts them after CallRejoined); the other peer sees it resume
// and never leave.
func TestCallRejoinResumes(t *testing.T) {
	const grace = time.Second
	bus := newBus(t, fanout.MemoryConfig{})
	reg := prometheus.NewRegistry()
	n := startNode(t, bus, func(c *gateway.Config) {
		c.Calls.Grace = grace
		c.Registerer = reg
	})
	px := startProxy(t, n.addr)
	ca, recConnA := dial(t, px.url, nil)
	cb, _ := dial(t, n.url, nil)
	ctx := ctxT(t)
	a, recA := join(t, ca, "call")
	b, recB := join(t, cb, "call")
	recA.wait(t, client.CallPeerJoined, 1)
	id := a.ID()
	token := a.Ack().Resume

	px.setRefuse(true)
	px.cut()
	recConnA.waitKind(t, client.EventDisconnected, 1)
	// A signal sent before the node sees the connection go may be lost with
	// it (the reason for an ICE restart after a resume); one sent after is
	// held for the peer.
	waitFor(t, "the node to see the peer away", func() bool { return gaugeValue(t, reg, "parley_call_peers", "state", "away") == 1 })
	for i := 1; i <= 5; i++ {
		if err := b.Signal(ctx, id, candidate(i)); err != nil {
			t.Fatalf("Signal to the away peer: %v", err)
		}
	}
	px.setRefuse(false)

	rejoined := recA.wait(t, client.CallRejoined, 1)[0]
	if !rejoined.Resumed || len(rejoined.Peers) != 1 || rejoined.Peers[0].Session != b.ID() {
		t.Errorf("CallRejoined: got %+v, want resumed with the other peer", rejoined)
	}
	if a.ID() != id {
		t.Errorf("ID after the rejoin: got %q, want %q", a.ID(), id)
	}
	if ack := a.Ack(); !ack.Resumed || ack.Resume == "" {
		t.Errorf("ack after the rejoin: got %+v (first token %q), want resumed with a token", ack, token)
	}
	for i := 6; i <= 10; i++ {
		if err := b.Signal(ctx, id, candidate(i)); err != nil {
			t.Fatalf("Signal after the rejoin: %v", err)
		}
	}
	recA.wait(t, client.CallSignal, 10)
	if got := signalsFrom(t, recA, b.ID()); !slices.Equal(got, ints(1, 10)) {
		t.Errorf("signals: got %v, want 1..10 in order", got)
	}
	// Every signal came after CallRejoined.
	events := recA.all()
	at := slices.IndexFunc(events, func(e client.CallEvent) bool { return e.Kind == client.CallRejoined })
	if first := slices.IndexFunc(events, func(e client.CallEvent) bool { return e.Kind == client.CallSignal }); first < at {
		t.Errorf("a held signal came at %d, before CallRejoined at %d", first, at)
	}
	if got := recB.wait(t, client.CallPeerResumed, 1)[0].Peer; got.Session != id {
		t.Errorf("PeerResumed: got %+v, want %s", got, id)
	}
	// The rejoined peer signals as itself.
	if err := a.Signal(ctx, b.ID(), candidate(1)); err != nil {
		t.Fatalf("Signal from the rejoined peer: %v", err)
	}
	if got := recB.wait(t, client.CallSignal, 1)[0].From; got != id {
		t.Errorf("signal from the rejoined peer: got from %q, want %q", got, id)
	}
	// Past the grace period the other peer has still seen no leave: there
	// is no event to wait for.
	time.Sleep(grace + grace/2)
	if left := recB.kind(client.CallPeerLeft); len(left) != 0 {
		t.Errorf("the other peer saw the rejoined peer leave: %+v", left)
	}
	if got := b.Peers(); len(got) != 1 || got[0].Session != id {
		t.Errorf("the other peer's peers: got %+v, want %s", got, id)
	}
}

// A client that comes back after the grace period rejoins as a new peer:
// CallRejoined without Resumed, a new ID; the other peer sees the old one
// leave and the new one join.
func TestCallRejoinAfterGrace(t *testing.T) {
	const grace = 300 * time.Millisecond
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, func(c *gateway.Config) { c.Calls.Grace = grace })
	px := startProxy(t, n.addr)
	ca, recConnA := dial(t, px.url, nil)
	cb, _ := dial(t, n.url, nil)
	a, recA := join(t, ca, "call")
	b, recB := join(t, cb, "call")
	recA.wait(t, client.CallPeerJoined, 1)
	old := a.ID()

	px.setRefuse(true)
	px.cut()
	recConnA.waitKind(t, client.EventDisconnected, 1)
	left := recB.wait(t, client.CallPeerLeft, 1)[0]
	if left.Peer.Session != old {
		t.Errorf("PeerLeft: got %+v, want %s", left.Peer, old)
	}
	px.setRefuse(false)

	rejoined := recA.wait(t, client.CallRejoined, 1)[0]
	if rejoined.Resumed {
		t.Errorf("CallRejoined: got resumed, want a new peer")
	}
	if got := a.ID(); got == old || got == "" {
		t.Errorf("ID after the grace period: got %q, want a new one (old %q)", got, old)
	}
	if len(rejoined.Peers) != 1 || rejoined.Peers[0].Session != b.ID() {
		t.Errorf("CallRejoined peers: got %+v, want %s", rejoined.Peers, b.ID())
	}
	joined := recB.wait(t, client.CallPeerJoined, 1)[0]
	if joined.Peer.Session != a.ID() {
		t.Errorf("PeerJoined: got %+v, want %s", joined.Peer, a.ID())
	}
}

// The client never drops a call event: an application that does not read
// gets every signal, in order, once it does, however many there were.
func TestCallEventsNotDropped(t *testing.T) {
	const signals = 400 // more than Events holds
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, func(c *gateway.Config) { c.Calls.SignalRate = 10000 })
	ca, _ := dial(t, n.url, nil)
	cb, _ := dial(t, n.url, nil)
	ctx := ctxT(t)
	a, err := ca.Join(ctx, "call")
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	b, _ := join(t, cb, "call")
	for i := 1; i <= signals; i++ {
		if err := b.Signal(ctx, a.ID(), candidate(i)); err != nil {
			t.Fatalf("Signal %d: %v", i, err)
		}
	}
	waitFor(t, "a full Events", func() bool { return len(a.Events()) == cap(a.Events()) })
	var got []int
	for len(got) < signals {
		select {
		case e := <-a.Events():
			if e.Kind == client.CallSignal {
				got = append(got, candidateNumber(t, e.Data))
			}
		case <-ctx.Done():
			t.Fatalf("got %d of %d signals", len(got), signals)
		}
	}
	if !slices.Equal(got, ints(1, signals)) {
		t.Errorf("signals: got %v, want 1..%d in order", got, signals)
	}
	// The connection works on: commands complete.
	if err := a.Leave(ctx); err != nil {
		t.Errorf("Leave: %v", err)
	}
}

// A call ends with its client: after Close its Events is closed and Err is
// ErrClosed; with NoReconnect, a dropped connection ends it with
// CallClosed.
func TestCallEndsWithClient(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	ctx := ctxT(t)

	c := dialQuiet(t, n.url, nil)
	cl, err := c.Join(ctx, "call")
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	c.Close()
	for e := range cl.Events() {
		t.Errorf("event after Close: %+v", e)
	}
	if err := cl.Err(); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Err after Close: got %v, want ErrClosed", err)
	}
	if _, err := c.Join(ctx, "other"); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Join after Close: got %v, want ErrClosed", err)
	}

	px := startProxy(t, n.addr)
	c = dialQuiet(t, px.url, func(o *client.Options) { o.NoReconnect = true })
	cl, err = c.Join(ctx, "call")
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	px.cut()
	var last client.CallEvent
	for e := range cl.Events() {
		last = e
	}
	if last.Kind != client.CallClosed || !errors.Is(last.Err, client.ErrDisconnected) {
		t.Errorf("last event: got %+v, want CallClosed with ErrDisconnected", last)
	}
	if err := cl.Err(); !errors.Is(err, client.ErrDisconnected) {
		t.Errorf("Err: got %v, want ErrDisconnected", err)
	}
}
