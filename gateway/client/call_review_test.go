package client_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/gateway/client"
	"github.com/parley-rt/parley/gateway/client/rtc"
)

// loopbackEngine is a SettingEngine for peers on one host: UDP over IPv4
// loopback only, no mDNS.
func loopbackEngine() *webrtc.SettingEngine {
	var se webrtc.SettingEngine
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	return &se
}

// rtcPeer is an rtc.Peer over a call, run until the test ends (or its call
// ends), with the call events it handed to OnEvent.
type rtcPeer struct {
	*rtc.Peer
	mu     sync.Mutex
	events []client.CallEvent
	ran    chan error
}

func runPeer(t *testing.T, cl *client.Call) *rtcPeer {
	t.Helper()
	p := &rtcPeer{ran: make(chan error, 1)}
	p.Peer = rtc.New(cl, rtc.Options{
		SettingEngine: loopbackEngine(),
		OnEvent: func(ev client.CallEvent) {
			p.mu.Lock()
			p.events = append(p.events, ev)
			p.mu.Unlock()
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { p.ran <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-p.ran; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	return p
}

func (p *rtcPeer) seen(kind client.CallEventKind) []client.CallEvent {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []client.CallEvent
	for _, e := range p.events {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// Alice and bob are connected by package rtc (data channel open). Alice's
// connection to the node drops; while she is away bob leaves the call; she
// rejoins within the grace period, resumed, and her CallRejoined lists no
// bob. rtc's doc: "A remote peer that leaves has its PeerConnection
// closed". What a user notices: alice's Peer keeps its PeerConnection (and
// Channel) toward bob for good: she never hears that he left (no
// CallPeerLeft: the node does not replay the peer events of her time away,
// and the client does not make them up from the ack), rtc even restarts
// ICE toward him on the rejoin (offers refused: not_found), and a video
// tile of bob stays frozen in her app.
func TestReviewRTCKeepsPeerThatLeftWhileAway(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, func(c *gateway.Config) { c.Calls.Grace = 10 * time.Second })
	px := startProxy(t, n.addr)
	ca, recConnA := dial(t, px.url, nil)
	cb, _ := dial(t, n.url, nil)
	ctx := ctxT(t)
	a, err := ca.Join(ctx, "call")
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	b, err := cb.Join(ctx, "call")
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	waitFor(t, "the peers to see each other", func() bool { return len(a.Peers()) == 1 && len(b.Peers()) == 1 })
	pa, pb := runPeer(t, a), runPeer(t, b)
	bobID := b.ID()
	if err := pa.Connect(bobID); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	if err := pa.WaitOpen(ctx, bobID); err != nil {
		t.Fatalf("WaitOpen toward bob: %v", err)
	}
	if err := pb.WaitOpen(ctx, a.ID()); err != nil {
		t.Fatalf("WaitOpen toward alice: %v", err)
	}

	px.setRefuse(true)
	px.cut()
	recConnA.waitKind(t, client.EventDisconnected, 1)
	if err := b.Leave(ctx); err != nil {
		t.Fatalf("bob's Leave: %v", err)
	}
	px.setRefuse(false)

	waitFor(t, "alice's CallRejoined", func() bool { return len(pa.seen(client.CallRejoined)) == 1 })
	rj := pa.seen(client.CallRejoined)[0]
	if !rj.Resumed || slices.ContainsFunc(rj.Peers, func(p client.CallPeer) bool { return p.Session == bobID }) {
		t.Fatalf("alice's rejoin: %+v, want resumed without bob", rj)
	}
	time.Sleep(3 * time.Second)
	if pa.Channel(bobID) != nil {
		t.Fatalf("bob left while alice was away; 3s after her resumed rejoin (peers %v) her Peer still has a PeerConnection toward him (data channel %v), CallPeerLeft events: %d",
			a.Peers(), pa.Channel(bobID).ReadyState(), len(pa.seen(client.CallPeerLeft)))
	}
}

// A node runs with a low --call-signal-rate (1 a second: bursts of 4, and
// a join takes the whole burst). A client is in two calls on it (its second
// Join is refused rate_limited until the bucket refills, which the
// application retries). Its connection drops. What a user notices: the
// client never gets back: on each new connection it resumes the first call,
// the second rejoin is refused rate_limited, which the client takes for a
// passing refusal, so it closes the connection and reconnects, and the new
// connection's budget is spent the same way. Call.Signal and Leave wait
// forever for a connection that never becomes ready, and the other peer of
// the first call gets a `resume` (and restarts ICE) on every round.
func TestReviewRejoinOfTwoCallsLoopsOnLowSignalRate(t *testing.T) {
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, func(c *gateway.Config) { c.Calls.SignalRate = 1 })
	px := startProxy(t, n.addr)
	ca, recConnA := dial(t, px.url, nil)
	cb, _ := dial(t, n.url, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var calls []*client.Call
	var recs []*callRecorder
	for _, name := range []string{"one", "two"} {
		for {
			cl, err := ca.Join(ctx, name)
			var serr *client.ServerError
			if errors.As(err, &serr) && serr.Code == "rate_limited" && ctx.Err() == nil {
				time.Sleep(250 * time.Millisecond)
				continue
			}
			if err != nil {
				t.Fatalf("Join(%s): %v", name, err)
			}
			calls, recs = append(calls, cl), append(recs, recordCall(t, cl))
			break
		}
	}
	bcall, recB := join(t, cb, "one")

	px.cut()
	recConnA.waitKind(t, client.EventDisconnected, 1)
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	defer scancel()
	err := calls[0].Signal(sctx, bcall.ID(), candidate(1))
	if err != nil {
		t.Fatalf("20s after the connection dropped, a Signal in call one: %v; the client reconnected %d times, call one was rejoined %d times and call two %d times, and the other peer of call one saw it resume %d times",
			err, recConnA.count(client.EventDisconnected), len(recs[0].kind(client.CallRejoined)), len(recs[1].kind(client.CallRejoined)), len(recB.kind(client.CallPeerResumed)))
	}
}
