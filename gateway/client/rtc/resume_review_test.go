package rtc_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/gateway/client/rtc"
)

// startMeteredNode is startNode with the gateway's metrics kept: it returns
// the node's WebSocket URL and a function that reads how many WebSocket
// sessions the node holds. The gauge drops only once the node has let a
// closed session's call peers go away (gateway's session.finish calls
// signaling's Disconnect before it unregisters the session), so a signal
// sent after it drops waits in the away peer's mailbox.
func startMeteredNode(t *testing.T) (url string, wsSessions func() int) {
	t.Helper()
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	t.Cleanup(func() { bus.Close() })
	reg := prometheus.NewRegistry()
	srv, err := gateway.New(gateway.Config{Bus: bus, Registerer: reg, NodeID: "node-" + t.Name(), DrainTimeout: 100 * time.Millisecond})
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
	wsSessions = func() int {
		mfs, err := reg.Gather()
		if err != nil {
			t.Errorf("gathering metrics: %v", err)
			return -1
		}
		for _, mf := range mfs {
			if mf.GetName() != "parley_connections" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "transport" && lp.GetValue() == "ws" {
						return int(m.GetGauge().GetValue())
					}
				}
			}
		}
		return 0
	}
	return "ws://" + ln.Addr().String() + "/v1/ws", wsSessions
}

// agreed reports whether a and b have finished negotiating on one new ICE
// session: both stable, each one's remote ICE credentials the other's local
// ones, both unlike before (was), and ICE connected. It also describes what
// it saw.
func agreed(a, b *testPeer, was [2]iceView) (bool, string) {
	idA, idB := a.call.ID(), b.call.ID()
	la, ra := rtc.LocalUfrag(a.Peer, idB), rtc.RemoteUfrag(a.Peer, idB)
	lb, rb := rtc.LocalUfrag(b.Peer, idA), rtc.RemoteUfrag(b.Peer, idA)
	sa, ia := rtc.States(a.Peer, idB)
	sb, ib := rtc.States(b.Peer, idA)
	connected := func(s webrtc.ICEConnectionState) bool {
		return s == webrtc.ICEConnectionStateConnected || s == webrtc.ICEConnectionStateCompleted
	}
	ok := sa == webrtc.SignalingStateStable && sb == webrtc.SignalingStateStable &&
		la == rb && lb == ra && la != was[0].ufrag && lb != was[1].ufrag &&
		connected(ia) && connected(ib)
	return ok, fmt.Sprintf("impolite: %s, ICE %s, local ufrag %q, remote ufrag %q; polite: %s, ICE %s, local ufrag %q, remote ufrag %q",
		sa, ia, la, ra, sb, ib, lb, rb)
}

// An impolite peer restarts ICE while its polite peer is away: the node
// holds the offer. When the polite peer resumes, the impolite one sends its
// pending offer again (its copy may be all that arrives) and wants another
// ICE restart, which it makes as soon as the first answer comes. The polite
// peer answers both the held offer and the copy; the copy's answer, with
// the credentials of the first ICE restart, arrives while the second
// restart's offer is pending and must not be taken as its answer. The two
// peers must end on one ICE session, with matching credentials, connected,
// and the data channel must carry messages again, without waiting for ICE
// to fail and restart once more.
func TestReviewResumeWithOfferInFlightThenRestart(t *testing.T) {
	url, wsSessions := startMeteredNode(t)
	g1, g2 := startCutter(t, url), startCutter(t, url)
	c1 := join(t, g1.url, "call")
	c2 := join(t, g2.url, "call")
	waitFor(t, "the peers to see each other", func() bool { return len(c1.Peers()) == 1 && len(c2.Peers()) == 1 })
	// Roles follow the peers' identities: the test finds out which is which.
	impCall, polCall, impGate, polGate := c1, c2, g1, g2
	if c1.Peers()[0].Polite {
		impCall, polCall, impGate, polGate = c2, c1, g2, g1
	}
	imp, pol := startPeer(t, impCall), startPeer(t, polCall)
	idImp, idPol := impCall.ID(), polCall.ID()
	connectPair(t, imp, pol, idImp, idPol)
	was := iceOf(t, imp, pol)

	// The polite peer goes away, and stays away until the node has let it
	// go: what is sent to it from then on is held for it.
	polGate.refusing.Store(true)
	polGate.cut()
	waitFor(t, "the node to see the polite peer away", func() bool { return wsSessions() == 1 })

	// The impolite peer restarts ICE meanwhile; the node takes the offer.
	sent := rtc.Sent(imp.Peer, idPol)
	imp.RestartICE(idPol)
	waitFor(t, "the restart offer to reach the node", func() bool {
		s, _ := rtc.States(imp.Peer, idPol)
		return s == webrtc.SignalingStateHaveLocalOffer && rtc.Sent(imp.Peer, idPol) > sent
	})

	// The polite peer resumes. The wait is over once it has answered the
	// held offer, its copy and the second restart (so the copy's answer has
	// come to the impolite peer) and the peers agree.
	impGate.answers.Store(0)
	polGate.refusing.Store(false)
	deadline := time.Now().Add(waitTimeout)
	for {
		ok, seen := agreed(imp, pol, was)
		n := impGate.answers.Load()
		if ok && n >= 3 {
			t.Logf("%d answers, agreed: %s", n, seen)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the resume, the peers did not agree on one connected ICE session within %v (%d answers came to the impolite peer, want 3: the held offer's, its copy's and the second restart's): %s",
				waitTimeout, n, seen)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if polCall.ID() != idPol {
		t.Errorf("polite peer's ID after the reconnect: got %q, want %q", polCall.ID(), idPol)
	}
	exchange(t, imp, pol, 11, 10)
}
