package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"

	"github.com/parley-rt/parley/fanout/redistest"
	"github.com/parley-rt/parley/gateway/client"
	"github.com/parley-rt/parley/gateway/client/rtc"
)

// The tests in this file run WebRTC calls across `parley serve --redis`
// processes: peers on different nodes negotiate through the gateway with
// package rtc, exchange data channel messages peer to peer on loopback, and
// live through the death of a node.

// clusterTTL is the --presence-ttl that startClusterNode gives the nodes.
const clusterTTL = 2 * time.Second

// timedEvent is a call event and when the test saw it.
type timedEvent struct {
	at time.Time
	ev client.CallEvent
}

// eventLog records the call events of one peer.
type eventLog struct {
	mu  sync.Mutex
	evs []timedEvent
}

func (l *eventLog) add(ev client.CallEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, timedEvent{at: time.Now(), ev: ev})
}

// find returns the first event of kind (about the peer session, when it is
// not empty) seen at or after since.
func (l *eventLog) find(kind client.CallEventKind, session string, since time.Time) (timedEvent, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.evs {
		if e.ev.Kind == kind && (session == "" || e.ev.Peer.Session == session) && !e.at.Before(since) {
			return e, true
		}
	}
	return timedEvent{}, false
}

// count returns how many events of kind about the peer session were seen
// at or after since.
func (l *eventLog) count(kind client.CallEventKind, session string, since time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.evs {
		if e.ev.Kind == kind && e.ev.Peer.Session == session && !e.at.Before(since) {
			n++
		}
	}
	return n
}

// await waits up to d for the first event of kind about session seen at or
// after since.
func (l *eventLog) await(t *testing.T, d time.Duration, what string, kind client.CallEventKind, session string, since time.Time) timedEvent {
	t.Helper()
	var e timedEvent
	waitUntil(t, d, what, func() bool {
		var ok bool
		e, ok = l.find(kind, session, since)
		return ok
	})
	return e
}

// timedMessage is a data channel message and when it arrived.
type timedMessage struct {
	at   time.Time
	text string
}

// callPeer is one peer of a call in these tests: a client on the nodes it
// was given, its Call, and, once started, an rtc.Peer that runs over the
// call until the test ends. It records the call events (through
// rtc.Options.OnEvent once the rtc.Peer runs, since Run reads them), the
// data channel messages it receives, and the client's and rtc's logs, which
// a failed test prints.
type callPeer struct {
	name string
	c    *client.Client
	call *client.Call
	peer *rtc.Peer
	logs *syncBuffer
	slog *slog.Logger // writes to logs
	log  eventLog

	mu       sync.Mutex
	got      []timedMessage
	channels int       // data channels OnChannel was given
	dropped  time.Time // the client's first EventDisconnected
	node     string    // the node of the client's last EventConnected
	drain    drainNotice
}

// joinCall dials the first of urls (the others are failover endpoints) and
// joins call. The client is closed when the test ends.
func joinCall(t *testing.T, name, call string, noReconnect bool, urls ...string) *callPeer {
	t.Helper()
	p := &callPeer{name: name, logs: &syncBuffer{}}
	p.slog = slog.New(slog.NewTextHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("peer", name)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Options{
		URL: urls[0], URLs: urls[1:], MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		NoReconnect: noReconnect, Logger: p.slog,
	})
	if err != nil {
		t.Fatalf("%s: Dial %s: %v", name, urls[0], err)
	}
	p.c = c
	p.node = c.Welcome().Node
	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		for ev := range c.Events() {
			now := time.Now()
			p.mu.Lock()
			switch ev.Kind {
			case client.EventDisconnected:
				if p.dropped.IsZero() {
					p.dropped = now
				}
			case client.EventConnected:
				p.node = ev.Welcome.Node
				p.drain.connected(now, ev.Welcome.Node)
			case client.EventDraining:
				p.drain.notice(now, ev.After)
			}
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-clientDone
		if t.Failed() {
			t.Logf("%s's client and rtc logs:\n%s", name, p.logs.String())
		}
	})
	if p.call, err = c.Join(ctx, call); err != nil {
		t.Fatalf("%s: Join %s: %v", name, call, err)
	}
	return p
}

// watch records the call's events itself, for a peer without an rtc.Peer.
func (p *callPeer) watch(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range p.call.Events() {
			p.log.add(ev)
		}
	}()
	t.Cleanup(func() {
		p.c.Close()
		<-done
	})
}

// streams are numbered data channel messages sent both ways between two
// peers, one every 10 ms each way, from 101 on, until stop.
type streams struct {
	// sent records when each message went: by the first peer, by the
	// second; index i is message 101+i. err is why a sender stopped early.
	sent [2][]time.Time
	err  [2]error
	// stop stops the senders and waits for them; it may be called again.
	stop func()
}

// streamBothWays starts streaming between a and b, whose data channel is
// open.
func streamBothWays(a, b *callPeer) *streams {
	st := &streams{}
	done := make(chan struct{})
	var senders sync.WaitGroup
	for i, w := range []struct{ p, to *callPeer }{{a, b}, {b, a}} {
		dc := w.p.peer.Channel(w.to.call.ID())
		senders.Go(func() {
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for n := 101; ; n++ {
				select {
				case <-done:
					return
				case <-tick.C:
				}
				st.sent[i] = append(st.sent[i], time.Now())
				if err := dc.SendText(strconv.Itoa(n)); err != nil {
					st.err[i] = fmt.Errorf("%s: SendText %d: %w", w.p.name, n, err)
					return
				}
			}
		})
	}
	st.stop = sync.OnceFunc(func() {
		close(done)
		senders.Wait()
	})
	return st
}

// startRTC makes the peer's rtc.Peer on loopback and runs it until the test
// ends.
func (p *callPeer) startRTC(t *testing.T) {
	t.Helper()
	p.peer = rtc.New(p.call, rtc.Options{
		SettingEngine: loopbackICE(),
		Logger:        p.slog,
		OnChannel: func(remote string, dc *webrtc.DataChannel) {
			p.mu.Lock()
			p.channels++
			p.mu.Unlock()
			dc.OnMessage(func(m webrtc.DataChannelMessage) {
				p.mu.Lock()
				p.got = append(p.got, timedMessage{at: time.Now(), text: string(m.Data)})
				p.mu.Unlock()
			})
		},
		OnEvent: p.log.add,
	})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- p.peer.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("%s: Run: %v", p.name, err)
		}
	})
}

// loopbackICE is a SettingEngine for peers on one host, as package rtc's
// tests use: UDP over IPv4 loopback only, no mDNS.
func loopbackICE() *webrtc.SettingEngine {
	var se webrtc.SettingEngine
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	return &se
}

// gate is a TCP proxy on 127.0.0.1:0 in front of a node that can hold back
// what the node sends to the client, as a slow network would, while what the
// client sends goes through and is counted.
type gate struct {
	ln  net.Listener
	url string
	up  atomic.Int64 // bytes from the client to the node

	mu    sync.Mutex
	held  chan struct{} // while not nil, the node's bytes wait for it to close
	conns []net.Conn
	wg    sync.WaitGroup
}

func startGate(t *testing.T, nodeURL string) *gate {
	t.Helper()
	target := strings.TrimSuffix(strings.TrimPrefix(nodeURL, "ws://"), "/v1/ws")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	g := &gate{ln: ln, url: "ws://" + ln.Addr().String() + "/v1/ws"}
	g.wg.Go(func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				down.Close()
				continue
			}
			g.mu.Lock()
			g.conns = append(g.conns, down, up)
			g.mu.Unlock()
			g.wg.Go(func() {
				io.Copy(up, countingReader{down, &g.up})
				up.Close()
			})
			g.wg.Go(func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := up.Read(buf)
					if n > 0 {
						g.wait()
						if _, err := down.Write(buf[:n]); err != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				down.Close()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		g.release()
		g.mu.Lock()
		for _, c := range g.conns {
			c.Close()
		}
		g.mu.Unlock()
		g.wg.Wait()
	})
	return g
}

// countingReader adds what it reads to n.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// hold holds back what the node sends until release.
func (g *gate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held == nil {
		g.held = make(chan struct{})
	}
}

// release lets what the node sends through again.
func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held != nil {
		close(g.held)
		g.held = nil
	}
}

func (g *gate) wait() {
	g.mu.Lock()
	held := g.held
	g.mu.Unlock()
	if held != nil {
		<-held
	}
}

func (p *callPeer) messages() []timedMessage {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.got)
}

func (p *callPeer) received() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.got)
}

func (p *callPeer) channelCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.channels
}

// seePeers waits until each of a and b lists the other among its call's
// peers, which Connect needs.
func seePeers(t *testing.T, a, b *callPeer) {
	t.Helper()
	for _, w := range []struct{ p, other *callPeer }{{a, b}, {b, a}} {
		waitUntil(t, 10*time.Second, w.p.name+" to see "+w.other.name+" in the call", func() bool {
			return slices.ContainsFunc(w.p.call.Peers(), func(cp client.CallPeer) bool { return cp.Session == w.other.call.ID() })
		})
	}
}

// connectAtOnce has a and b Connect toward each other at the same moment,
// from two goroutines that one channel close releases, and waits until the
// data channel is open on both sides. So that their offers cross whatever
// the scheduling, ga and gb, the gates in front of a's and b's nodes, hold
// back what the nodes send to them until each client has sent something
// the size of an offer: each peer then has its own offer out when it gets
// the other's. It reports whether the offers did cross: the polite peer
// then replaced its first PeerConnection (pion cannot roll an offer back),
// and OnChannel saw a second data channel.
func connectAtOnce(t *testing.T, a, b *callPeer, ga, gb *gate) (crossed bool) {
	t.Helper()
	// The signal frame of an offer with a data channel is about 600
	// bytes; while the node's side is held, a client sends nothing else
	// (its candidates wait for the offer's ack).
	const offerBytes = 400
	ga.hold()
	gb.hold()
	sentA, sentB := ga.up.Load(), gb.up.Load()
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, w := range []struct{ p, to *callPeer }{{a, b}, {b, a}} {
		wg.Go(func() {
			<-start
			errs[i] = w.p.peer.Connect(w.to.call.ID())
		})
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("Connect: %v", err)
		}
	}
	waitUntil(t, 10*time.Second, "both offers to go out", func() bool {
		return ga.up.Load()-sentA >= offerBytes && gb.up.Load()-sentB >= offerBytes
	})
	// Each offer crosses the cluster to the other peer's held connection.
	time.Sleep(200 * time.Millisecond)
	ga.release()
	gb.release()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, w := range []struct{ p, to *callPeer }{{a, b}, {b, a}} {
		if err := w.p.peer.WaitOpen(ctx, w.to.call.ID()); err != nil {
			t.Fatalf("%s: WaitOpen toward %s: %v", w.p.name, w.to.name, err)
		}
	}
	polite := a
	if !slices.ContainsFunc(a.call.Peers(), func(cp client.CallPeer) bool { return cp.Session == b.call.ID() && cp.Polite }) {
		polite = b
	}
	return polite.channelCount() > 1
}

// send sends the numbered messages first..last from p to its data channel
// toward to.
func send(t *testing.T, p, to *callPeer, first, last int) {
	t.Helper()
	dc := p.peer.Channel(to.call.ID())
	if dc == nil {
		t.Fatalf("%s: no data channel toward %s", p.name, to.name)
	}
	for i := first; i <= last; i++ {
		if err := dc.SendText(strconv.Itoa(i)); err != nil {
			t.Fatalf("%s: SendText %d: %v", p.name, i, err)
		}
	}
}

// checkNumbered reports how msgs differ from the texts "1".."n" in order.
func checkNumbered(msgs []timedMessage, n int) error {
	if len(msgs) != n {
		return fmt.Errorf("got %d messages, want %d", len(msgs), n)
	}
	for i, m := range msgs {
		if m.text != strconv.Itoa(i+1) {
			return fmt.Errorf("message #%d is %q, want %q", i+1, m.text, strconv.Itoa(i+1))
		}
	}
	return nil
}

// awaitNumbered waits until p has received n messages and checks that they
// are "1".."n" in order.
func awaitNumbered(t *testing.T, p *callPeer, n int, d time.Duration) {
	t.Helper()
	waitUntil(t, d, fmt.Sprintf("%s to receive %d messages", p.name, n), func() bool { return p.received() >= n })
	time.Sleep(50 * time.Millisecond) // anything beyond n would show
	if err := checkNumbered(p.messages(), n); err != nil {
		t.Errorf("%s: %v", p.name, err)
	}
}

// ufrags returns the local and remote ICE username fragments of p's
// PeerConnection toward to, read through its data channel's transports;
// empty when there is none yet.
func ufrags(p, to *callPeer) (local, remote string) {
	dc := p.peer.Channel(to.call.ID())
	if dc == nil || dc.Transport() == nil || dc.Transport().Transport() == nil {
		return "", ""
	}
	it := dc.Transport().Transport().ICETransport()
	if it == nil {
		return "", ""
	}
	if lp, err := it.GetLocalParameters(); err == nil {
		local = lp.UsernameFragment
	}
	if rp, err := it.GetRemoteParameters(); err == nil {
		remote = rp.UsernameFragment
	}
	return local, remote
}

// TestClusterCallAcrossNodes: alice on n1 and bob on n2 join one call and
// connect toward each other at the same moment. Perfect negotiation, with
// the roles the nodes give, resolves the crossing offers through Redis; the
// data channel opens on both sides and carries 100 messages each way, in
// order.
func TestClusterCallAcrossNodes(t *testing.T) {
	redis := redistest.Start(t)
	n1 := startClusterNode(t, redis.URL(), "n1")
	n2 := startClusterNode(t, redis.URL(), "n2")
	g1, g2 := startGate(t, n1.ws), startGate(t, n2.ws)
	alice := joinCall(t, "alice", "standup", false, g1.url)
	bob := joinCall(t, "bob", "standup", false, g2.url)
	seePeers(t, alice, bob)
	alice.startRTC(t)
	bob.startRTC(t)

	if !connectAtOnce(t, alice, bob, g1, g2) {
		t.Errorf("the offers did not cross: the polite peer never replaced its PeerConnection")
	}
	send(t, alice, bob, 1, 100)
	send(t, bob, alice, 1, 100)
	awaitNumbered(t, alice, 100, 10*time.Second)
	awaitNumbered(t, bob, 100, 10*time.Second)
	for _, w := range []struct{ p, to *callPeer }{{alice, bob}, {bob, alice}} {
		pair, ok := w.p.peer.SelectedPair(w.to.call.ID())
		if !ok || pair.Local != webrtc.ICECandidateTypeHost || pair.Remote != webrtc.ICECandidateTypeHost {
			t.Errorf("%s: selected pair %+v (%v), want host candidates on loopback", w.p.name, pair, ok)
		}
	}
}

// TestClusterCallOutlivesNode: alice is on n1, bob on n2 with n3 to fail
// over to, and their data channel is open. n2 is killed with SIGKILL. Bob's
// client reconnects to n3 and rejoins the call as the same peer; alice sees
// him resume and never leave; an ICE restart is negotiated through n3 and
// n1 (both sides take new ICE credentials, each side's reaching the other);
// and the messages that stream each way all the while arrive, in order,
// none lost.
func TestClusterCallOutlivesNode(t *testing.T) {
	redis := redistest.Start(t)
	n1 := startClusterNode(t, redis.URL(), "n1")
	n2 := startClusterNode(t, redis.URL(), "n2")
	n3 := startClusterNode(t, redis.URL(), "n3")
	g1, g2 := startGate(t, n1.ws), startGate(t, n2.ws)
	alice := joinCall(t, "alice", "standup", false, g1.url)
	bob := joinCall(t, "bob", "standup", false, g2.url, n3.ws)
	seePeers(t, alice, bob)
	alice.startRTC(t)
	bob.startRTC(t)
	idA, idB := alice.call.ID(), bob.call.ID()

	if !connectAtOnce(t, alice, bob, g1, g2) {
		t.Errorf("the offers did not cross: the polite peer never replaced its PeerConnection")
	}
	send(t, alice, bob, 1, 100)
	send(t, bob, alice, 1, 100)
	awaitNumbered(t, alice, 100, 10*time.Second)
	awaitNumbered(t, bob, 100, 10*time.Second)
	if t.Failed() {
		return
	}
	aliceUfrag, aliceRemote := ufrags(alice, bob)
	bobUfrag, bobRemote := ufrags(bob, alice)
	if aliceUfrag == "" || bobUfrag == "" || aliceRemote != bobUfrag || bobRemote != aliceUfrag {
		t.Fatalf("ICE credentials before the kill: alice has local %q, remote %q; bob has local %q, remote %q; want each side's local the other's remote",
			aliceUfrag, aliceRemote, bobUfrag, bobRemote)
	}
	pairBefore, _ := bob.peer.SelectedPair(idA)

	// Both sides stream numbered messages until the test has seen the ICE
	// restart, and a little longer; sent records when each one went.
	st := streamBothWays(alice, bob)
	defer st.stop()
	time.Sleep(200 * time.Millisecond)

	killed := time.Now()
	n2.kill()
	const grace = 10 * time.Second // --call-grace of the test nodes

	rejoined := bob.log.await(t, grace, "bob's CallRejoined", client.CallRejoined, "", killed)
	if !rejoined.ev.Resumed {
		t.Errorf("bob's CallRejoined: Resumed false, want true (peers %+v)", rejoined.ev.Peers)
	}
	if id := bob.call.ID(); id != idB {
		t.Errorf("bob's call ID after the rejoin: got %s, want %s", id, idB)
	}
	// The client's EventConnected comes once its calls have rejoined, so
	// it can follow CallRejoined by a moment.
	var node string
	waitUntil(t, 5*time.Second, "bob's client to report its new node", func() bool {
		bob.mu.Lock()
		defer bob.mu.Unlock()
		node = bob.node
		return node != "n2"
	})
	bob.mu.Lock()
	dropped := bob.dropped
	bob.mu.Unlock()
	if node != "n3" {
		t.Errorf("bob's client is on node %q after the kill, want n3", node)
	}
	resumed := alice.log.await(t, grace, "alice's CallPeerResumed for bob", client.CallPeerResumed, idB, killed)

	// An ICE restart: each side has new local credentials, and each side's
	// new credentials are the ones the other side holds as the remote's,
	// which only a new offer and answer through the nodes can have carried.
	var restarted time.Time
	waitUntil(t, grace-time.Since(killed), "an ICE restart negotiated through the nodes", func() bool {
		aLocal, aRemote := ufrags(alice, bob)
		bLocal, bRemote := ufrags(bob, alice)
		if aLocal == "" || bLocal == "" || aLocal == aliceUfrag || bLocal == bobUfrag || aRemote != bLocal || bRemote != aLocal {
			return false
		}
		restarted = time.Now()
		return true
	})
	if channels := bob.channelCount() + alice.channelCount(); channels != 3 {
		t.Errorf("%d data channels were made in all, want 3 (one each, and the polite peer's second when the first offers crossed): a PeerConnection was replaced", channels)
	}

	// Messages sent after the restart arrive too; then the senders stop.
	time.Sleep(300 * time.Millisecond)
	st.stop()
	for i, p := range []*callPeer{bob, alice} {
		if st.err[i] != nil {
			t.Error(st.err[i])
		}
		total := 100 + len(st.sent[i])
		waitUntil(t, grace, fmt.Sprintf("%s to receive all %d messages", p.name, total), func() bool { return p.received() >= total })
		got := p.messages()
		if err := checkNumbered(got, total); err != nil {
			t.Errorf("%s: %v", p.name, err)
			continue
		}
		// The first message sent after the kill, and the first sent after
		// the restart was seen, and when each arrived.
		afterKill := slices.IndexFunc(st.sent[i], func(at time.Time) bool { return !at.Before(killed) })
		afterRestart := slices.IndexFunc(st.sent[i], func(at time.Time) bool { return !at.Before(restarted) })
		if afterKill < 0 || afterRestart < 0 {
			t.Errorf("%s: no message was sent after the kill or after the restart", p.name)
			continue
		}
		first, firstRestarted := got[100+afterKill], got[100+afterRestart]
		t.Logf("%s got message %s, the first sent after the kill, %s after the kill; message %s, the first sent after the restart, %s after the kill",
			p.name, first.text, first.at.Sub(killed).Round(time.Millisecond), firstRestarted.text, firstRestarted.at.Sub(killed).Round(time.Millisecond))
		if d := first.at.Sub(killed); d > grace {
			t.Errorf("%s: the first message sent after the kill arrived %s after it, want within the grace period (%s)", p.name, d, grace)
		}
	}
	pairAfter, _ := bob.peer.SelectedPair(idA)
	t.Logf("bob's client saw the drop %s after the kill, rejoined on %s %s after it; alice saw him resume %s after it; the ICE restart was seen %s after it (bob's selected pair %s -> %s)",
		dropped.Sub(killed).Round(time.Millisecond), node, rejoined.at.Sub(killed).Round(time.Millisecond),
		resumed.at.Sub(killed).Round(time.Millisecond), restarted.Sub(killed).Round(time.Millisecond),
		pairBefore.LocalAddress, pairAfter.LocalAddress)

	// Bob's old incarnation on n2 lapses with n2's leases, within the
	// presence TTL and a sweep: past that, alice has still seen him
	// neither leave nor join again.
	if wait := clusterTTL*2 - time.Since(killed); wait > 0 {
		time.Sleep(wait)
	}
	if n := alice.log.count(client.CallPeerLeft, idB, killed); n > 0 {
		t.Errorf("alice saw bob leave %d times after the kill, want never", n)
	}
	if n := alice.log.count(client.CallPeerJoined, idB, killed); n > 0 {
		t.Errorf("alice saw bob join %d times after the kill, want never: he resumed", n)
	}
	if e, ok := bob.log.find(client.CallPeerLeft, idA, killed); ok {
		t.Errorf("bob saw alice leave %s after the kill", e.at.Sub(killed))
	}
}

// TestClusterCallPeerLeavesWhenNodeDies: bob's node dies, and his client
// does not come back (NoReconnect). Nobody counts a grace period for him
// (--call-grace 2s on the nodes): alice sees him leave once his presence
// lease lapses, within the presence TTL and a sweep (a third of it).
func TestClusterCallPeerLeavesWhenNodeDies(t *testing.T) {
	redis := redistest.Start(t)
	n1 := startClusterNode(t, redis.URL(), "n1", "--call-grace", "2s")
	n2 := startClusterNode(t, redis.URL(), "n2", "--call-grace", "2s")
	alice := joinCall(t, "alice", "standup", false, n1.ws)
	bob := joinCall(t, "bob", "standup", true, n2.ws)
	alice.watch(t)
	bob.watch(t)
	seePeers(t, alice, bob)
	idB := bob.call.ID()

	killed := time.Now()
	n2.kill()
	left := alice.log.await(t, 15*time.Second, "alice to see bob leave", client.CallPeerLeft, idB, killed)
	took := left.at.Sub(killed)
	t.Logf("alice saw bob leave %s after his node was killed (presence TTL %s)", took.Round(time.Millisecond), clusterTTL)
	// n2 renewed bob's lease at most a third of the TTL before it died, so
	// the lease lapses no sooner than two thirds of the TTL after the kill.
	if took < clusterTTL*2/3 {
		t.Errorf("bob left %s after the kill, before his presence lease could have lapsed", took)
	}
	const limit = 6 * time.Second // the presence TTL, a sweep, and slack
	if took > limit {
		t.Errorf("bob left %s after the kill, want within %s (the presence TTL, a sweep, and slack)", took, limit)
	}
	bob.log.await(t, 5*time.Second, "bob's call to close", client.CallClosed, "", killed)
}

// TestClusterCallPeerLeavesAfterGrace: bob's client closes its connection
// without leaving the call while his node lives on. His node keeps him in
// the call, away, for the grace period (--call-grace 2s), then he leaves:
// alice sees it no sooner, and not much later.
func TestClusterCallPeerLeavesAfterGrace(t *testing.T) {
	redis := redistest.Start(t)
	n1 := startClusterNode(t, redis.URL(), "n1", "--call-grace", "2s")
	n2 := startClusterNode(t, redis.URL(), "n2", "--call-grace", "2s")
	alice := joinCall(t, "alice", "standup", false, n1.ws)
	bob := joinCall(t, "bob", "standup", true, n2.ws)
	alice.watch(t)
	seePeers(t, alice, bob)
	idB := bob.call.ID()

	const grace = 2 * time.Second
	closed := time.Now()
	bob.c.Close()
	left := alice.log.await(t, 15*time.Second, "alice to see bob leave", client.CallPeerLeft, idB, closed)
	took := left.at.Sub(closed)
	t.Logf("alice saw bob leave %s after his connection closed (grace %s)", took.Round(time.Millisecond), grace)
	if took < grace {
		t.Errorf("bob left %s after his connection closed, before the grace period (%s) was over", took, grace)
	}
	if limit := grace + 3*time.Second; took > limit {
		t.Errorf("bob left %s after his connection closed, want within %s", took, limit)
	}
}
