package rtc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
	"go.uber.org/goleak"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/gateway/client"
	"github.com/parley-rt/parley/gateway/client/rtc"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for something the network does.
const waitTimeout = 15 * time.Second

// waitFor polls cond until it holds or waitTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// startNode starts a gateway on 127.0.0.1:0 with an in-memory bus and
// returns its WebSocket URL; both are shut down when the test ends.
func startNode(t *testing.T) string {
	t.Helper()
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	t.Cleanup(func() { bus.Close() })
	srv, err := gateway.New(gateway.Config{Bus: bus, NodeID: "node-" + t.Name(), DrainTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return "ws://" + ln.Addr().String() + "/v1/ws"
}

// join dials url and joins call; the client is closed when the test ends.
func join(t *testing.T, url, call string) *client.Call {
	t.Helper()
	ctx := ctxT(t)
	c, err := client.Dial(ctx, client.Options{URL: url, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	cl, err := c.Join(ctx, call)
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	return cl
}

// loopback is a SettingEngine for peers on one host: UDP over IPv4
// loopback only, no mDNS.
func loopback() *webrtc.SettingEngine {
	var se webrtc.SettingEngine
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	return &se
}

// received keeps the data channel messages a peer got, by sender.
type received struct {
	mu   sync.Mutex
	msgs map[string][]string
}

func (r *received) add(from, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.msgs == nil {
		r.msgs = make(map[string][]string)
	}
	r.msgs[from] = append(r.msgs[from], msg)
}

func (r *received) from(remote string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs[remote])
}

// testPeer is an rtc.Peer whose Run goes on until the test ends, with the
// messages it receives.
type testPeer struct {
	*rtc.Peer
	call    *client.Call
	got     *received
	release func() // lets Run read call events
	ran     chan error
}

// startPeer makes a Peer over call on loopback and runs it, holding its
// call events until release.
func startPeer(t *testing.T, call *client.Call) *testPeer {
	t.Helper()
	tp := &testPeer{call: call, got: &received{}, ran: make(chan error, 1)}
	tp.Peer = rtc.New(call, rtc.Options{
		SettingEngine: loopback(),
		OnChannel: func(remote string, dc *webrtc.DataChannel) {
			dc.OnMessage(func(m webrtc.DataChannelMessage) { tp.got.add(remote, string(m.Data)) })
		},
	})
	tp.release = rtc.Hold(tp.Peer)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { tp.ran <- tp.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-tp.ran; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	return tp
}

// exchange sends n numbered messages each way between a and b, from first
// on, and checks that each side got every message so far in order.
func exchange(t *testing.T, a, b *testPeer, first, n int) {
	t.Helper()
	for _, side := range []struct{ from, to *testPeer }{{a, b}, {b, a}} {
		dc := side.from.Channel(side.to.call.ID())
		if dc == nil {
			t.Fatal("no data channel")
		}
		for i := first; i < first+n; i++ {
			if err := dc.SendText(strconv.Itoa(i)); err != nil {
				t.Fatalf("SendText: %v", err)
			}
		}
	}
	var want []string
	for i := 1; i < first+n; i++ {
		want = append(want, strconv.Itoa(i))
	}
	for _, side := range []struct{ from, to *testPeer }{{a, b}, {b, a}} {
		waitFor(t, fmt.Sprintf("%d messages", len(want)), func() bool { return len(side.to.got.from(side.from.call.ID())) >= len(want) })
		if got := side.to.got.from(side.from.call.ID()); !slices.Equal(got, want) {
			t.Errorf("messages: got %v, want 1..%d in order", got, len(want))
		}
	}
}

// iceView is what an ICE restart changes on one side: the local ICE
// username fragment and the local address of the selected pair.
type iceView struct {
	ufrag, addr string
}

// iceOf returns the ICE views of a toward b and of b toward a.
func iceOf(t *testing.T, a, b *testPeer) [2]iceView {
	t.Helper()
	var out [2]iceView
	for i, w := range []struct{ p, to *testPeer }{{a, b}, {b, a}} {
		pair, _ := w.p.SelectedPair(w.to.call.ID())
		out[i] = iceView{rtc.LocalUfrag(w.p.Peer, w.to.call.ID()), pair.LocalAddress}
	}
	return out
}

// waitRestarted waits until ICE has restarted on both sides (new
// credentials, a new selected pair) and is connected, with no negotiation
// under way.
func waitRestarted(t *testing.T, a, b *testPeer, was [2]iceView) {
	t.Helper()
	waitFor(t, "the ICE restart", func() bool {
		now := iceOf(t, a, b)
		for i, w := range []struct{ p, to *testPeer }{{a, b}, {b, a}} {
			sig, ice := rtc.States(w.p.Peer, w.to.call.ID())
			if sig != webrtc.SignalingStateStable || ice != webrtc.ICEConnectionStateConnected && ice != webrtc.ICEConnectionStateCompleted ||
				now[i].ufrag == was[i].ufrag || now[i].addr == "" || now[i].addr == was[i].addr {
				return false
			}
		}
		return true
	})
}

// Two peers connect to each other at the same moment: their offers cross,
// the polite one rolls its own back and the impolite one ignores the
// other's, and the data channel opens; messages go each way in order. An
// ICE restart from one side then completes (new credentials and ports on
// both sides) and messages flow on; so do restarts from both sides at once,
// whose offers cross. A peer that leaves has its PeerConnection closed on
// the other side.
func TestGlareDataChannelAndRestart(t *testing.T) {
	url := startNode(t)
	ca := join(t, url, "call")
	cb := join(t, url, "call")
	waitFor(t, "the peers to see each other", func() bool { return len(ca.Peers()) == 1 && len(cb.Peers()) == 1 })
	a, b := startPeer(t, ca), startPeer(t, cb)
	idA, idB := ca.ID(), cb.ID()

	// Each makes its offer, and the gateway takes it, before either can
	// read the other's. (An offer still in the outbox when the polite peer
	// rolls back is dropped with the PeerConnection it was made on, and the
	// impolite peer would then have none to ignore.)
	if err := a.Connect(idB); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	if err := b.Connect(idA); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	waitFor(t, "both offers sent", func() bool {
		sa, _ := rtc.States(a.Peer, idB)
		sb, _ := rtc.States(b.Peer, idA)
		return sa == webrtc.SignalingStateHaveLocalOffer && sb == webrtc.SignalingStateHaveLocalOffer &&
			rtc.Sent(a.Peer, idB) > 0 && rtc.Sent(b.Peer, idA) > 0
	})
	a.release()
	b.release()
	ctx := ctxT(t)
	for _, w := range []struct {
		p      *testPeer
		remote string
	}{{a, idB}, {b, idA}} {
		if err := w.p.WaitOpen(ctx, w.remote); err != nil {
			t.Fatalf("WaitOpen: %v", err)
		}
	}
	polite, impolite, politeRemote, impoliteRemote := a, b, idB, idA
	if !ca.Peers()[0].Polite {
		polite, impolite, politeRemote, impoliteRemote = b, a, idA, idB
	}
	if r, i := rtc.Collisions(polite.Peer, politeRemote); r != 1 || i != 0 {
		t.Errorf("polite peer: got %d rollbacks and %d ignored offers, want 1 and 0", r, i)
	}
	if r, i := rtc.Collisions(impolite.Peer, impoliteRemote); r != 0 || i != 1 {
		t.Errorf("impolite peer: got %d rollbacks and %d ignored offers, want 0 and 1", r, i)
	}
	exchange(t, a, b, 1, 100)

	for _, w := range []struct {
		p      *testPeer
		remote string
	}{{a, idB}, {b, idA}} {
		pair, ok := w.p.SelectedPair(w.remote)
		if !ok || pair.Local != webrtc.ICECandidateTypeHost || pair.RTT < 0 {
			t.Errorf("selected pair: got %+v %v, want a host candidate and an RTT", pair, ok)
		}
	}

	// One side restarts ICE.
	was := iceOf(t, a, b)
	a.RestartICE(idB)
	waitRestarted(t, a, b, was)
	exchange(t, a, b, 101, 100)

	// Both restart at once: the restart offers cross, and perfect
	// negotiation keeps the impolite peer's.
	was = iceOf(t, a, b)
	releaseA, releaseB := rtc.Hold(a.Peer), rtc.Hold(b.Peer)
	a.RestartICE(idB)
	b.RestartICE(idA)
	waitFor(t, "both restart offers made", func() bool {
		sa, _ := rtc.States(a.Peer, idB)
		sb, _ := rtc.States(b.Peer, idA)
		return sa == webrtc.SignalingStateHaveLocalOffer && sb == webrtc.SignalingStateHaveLocalOffer
	})
	releaseA()
	releaseB()
	waitRestarted(t, a, b, was)
	if r, i := rtc.Collisions(polite.Peer, politeRemote); r != 2 || i != 0 {
		t.Errorf("polite peer after crossing restarts: got %d rollbacks and %d ignored offers, want 2 and 0", r, i)
	}
	if r, i := rtc.Collisions(impolite.Peer, impoliteRemote); r != 0 || i != 2 {
		t.Errorf("impolite peer after crossing restarts: got %d rollbacks and %d ignored offers, want 0 and 2", r, i)
	}
	exchange(t, a, b, 201, 100)

	if err := cb.Leave(ctx); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	select {
	case err := <-b.ran:
		b.ran <- err // for the cleanup
		if err != nil {
			t.Errorf("Run after Leave: got %v, want nil", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return after Leave")
	}
	waitFor(t, "the PeerConnection toward the peer that left to close", func() bool { return a.Channel(idB) == nil })
}

// cutter is a TCP proxy on 127.0.0.1:0 in front of a node. The test can
// cut its connections, make it refuse new ones (a client behind it stays
// away from the node), and read how many answers the node sent through it.
type cutter struct {
	ln  net.Listener
	url string

	refusing atomic.Bool
	answers  atomic.Int32

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startCutter(t *testing.T, nodeURL string) *cutter {
	t.Helper()
	target := strings.TrimSuffix(strings.TrimPrefix(nodeURL, "ws://"), "/v1/ws")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	c := &cutter{ln: ln, url: "ws://" + ln.Addr().String() + "/v1/ws"}
	c.wg.Go(func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			if c.refusing.Load() {
				down.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				down.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, down, up)
			c.mu.Unlock()
			c.wg.Go(func() { io.Copy(up, down); up.Close() })
			c.wg.Go(func() { c.relayDown(down, up); down.Close() })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		c.cut()
		c.wg.Wait()
	})
	return c
}

// answerMark is how a session description of type answer reads in the
// node's signal frames (JSON, uncompressed: the gateway turns WebSocket
// compression off).
var answerMark = []byte(`"type":"answer"`)

// relayDown copies what the node sends to the client, counting the answers
// in it, a mark split between two reads included.
func (c *cutter) relayDown(down, up net.Conn) {
	buf := make([]byte, 32<<10)
	var tail []byte
	for {
		n, err := up.Read(buf)
		if n > 0 {
			if _, werr := down.Write(buf[:n]); werr != nil {
				return
			}
			seen := append(tail, buf[:n]...)
			c.answers.Add(int32(bytes.Count(seen, answerMark)))
			// The tail is shorter than a mark, so it holds no mark counted
			// already, only the start of one the next read may complete.
			keep := min(len(answerMark)-1, len(seen))
			tail = append([]byte(nil), seen[len(seen)-keep:]...)
		}
		if err != nil {
			return
		}
	}
}

// cut closes every connection through the proxy.
func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
}

// A peer whose client reconnects rejoins its call as itself; the impolite
// peer of the pair restarts ICE (on its CallRejoined or on the other's
// CallPeerResumed), and the data channel goes on.
func TestRestartAfterResume(t *testing.T) {
	url := startNode(t)
	px := startCutter(t, url)
	ca := join(t, px.url, "call")
	cb := join(t, url, "call")
	waitFor(t, "the peers to see each other", func() bool { return len(ca.Peers()) == 1 && len(cb.Peers()) == 1 })
	a, b := startPeer(t, ca), startPeer(t, cb)
	idA, idB := ca.ID(), cb.ID()
	connectPair(t, a, b, idA, idB)

	was := iceOf(t, a, b)
	px.cut()
	waitRestarted(t, a, b, was)
	if ca.ID() != idA {
		t.Errorf("ID after the reconnect: got %q, want %q", ca.ID(), idA)
	}
	exchange(t, a, b, 11, 10)
}

// connectPair connects a to b (idA and idB their peers' IDs in the call),
// waits until the data channel is open on both sides, and checks that 10
// messages go each way.
func connectPair(t *testing.T, a, b *testPeer, idA, idB string) {
	t.Helper()
	a.release()
	b.release()
	if err := a.Connect(idB); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	ctx := ctxT(t)
	for _, w := range []struct {
		p      *testPeer
		remote string
	}{{a, idB}, {b, idA}} {
		if err := w.p.WaitOpen(ctx, w.remote); err != nil {
			t.Fatalf("WaitOpen: %v", err)
		}
	}
	exchange(t, a, b, 1, 10)
}
