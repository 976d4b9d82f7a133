package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout/redistest"
	"github.com/parley-rt/parley/gateway/client"
)

// The test in this file drains a node in the middle of a call: SIGTERM, as
// a rolling deploy sends, instead of the SIGKILL of
// TestClusterCallOutlivesNode.

// drainNotice is the first EventDraining a client saw: when, and the delay
// its `reconnect` frame asked for; and the first EventConnected after it.
type drainNotice struct {
	mu    sync.Mutex
	at    time.Time
	after time.Duration
	count int
	// The client's next connection. Its EventConnected comes once the
	// client has joined its calls again, and may reach Events after the
	// Call's CallRejoined.
	connectedAt time.Time
	node        string
}

func (d *drainNotice) get() (at time.Time, after time.Duration, count int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.at, d.after, d.count
}

func (d *drainNotice) reconnected() (at time.Time, node string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.connectedAt, d.node
}

// notice records a drain notice: the first one's time and delay, and how
// many came.
func (d *drainNotice) notice(at time.Time, after time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.count == 0 {
		d.at, d.after = at, after
	}
	d.count++
}

// connected records the client's first connection after a drain notice.
func (d *drainNotice) connected(at time.Time, node string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.count > 0 && d.connectedAt.IsZero() {
		d.connectedAt, d.node = at, node
	}
}

// joinCallSeeingDrain is joinCall, with reconnects, and the drain notices
// its client records.
func joinCallSeeingDrain(t *testing.T, name, call string, urls ...string) (*callPeer, *drainNotice) {
	t.Helper()
	p := joinCall(t, name, call, false, urls...)
	return p, &p.drain
}

// TestClusterCallSurvivesDrain: alice is on n1, bob on n2 with n3 to fail
// over to, and their data channel is open. n2 is drained with SIGTERM (the
// nodes' --drain is 500ms). Bob's client gets the drain notice, reconnects
// to n3 and rejoins the call as the same peer; alice sees him resume and,
// through the presence TTL and a sweep after n2 has exited, never leave; an
// ICE restart is negotiated through n3 and n1; the messages that stream
// each way all the while arrive, in order, none lost; and n2 exits with
// status 0 within its drain window and a few seconds.
func TestClusterCallSurvivesDrain(t *testing.T) {
	redis := redistest.Start(t)
	n1 := startClusterNode(t, redis.URL(), "n1")
	n2 := startClusterNode(t, redis.URL(), "n2")
	n3 := startClusterNode(t, redis.URL(), "n3")
	alice := joinCall(t, "alice", "standup", false, n1.ws)
	bob, notice := joinCallSeeingDrain(t, "bob", "standup", n2.ws, n3.ws)
	seePeers(t, alice, bob)
	alice.startRTC(t)
	bob.startRTC(t)
	idA, idB := alice.call.ID(), bob.call.ID()

	// Bob offers; alice answers.
	if err := bob.peer.Connect(idA); err != nil {
		t.Fatalf("bob: Connect: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, w := range []struct{ p, to *callPeer }{{alice, bob}, {bob, alice}} {
		if err := w.p.peer.WaitOpen(ctx, w.to.call.ID()); err != nil {
			t.Fatalf("%s: WaitOpen toward %s: %v", w.p.name, w.to.name, err)
		}
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
		t.Fatalf("ICE credentials before the drain: alice has local %q, remote %q; bob has local %q, remote %q; want each side's local the other's remote",
			aliceUfrag, aliceRemote, bobUfrag, bobRemote)
	}
	channelsBefore := alice.channelCount() + bob.channelCount()

	// Both sides stream numbered messages until the watch after n2's exit
	// is over; sent records when each one went.
	st := streamBothWays(alice, bob)
	defer st.stop()
	time.Sleep(200 * time.Millisecond)

	const drain = 500 * time.Millisecond // --drain of the test nodes
	const grace = 10 * time.Second       // --call-grace of the test nodes
	termed := time.Now()
	if err := n2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM to n2: %v", err)
	}
	var exited time.Time
	select {
	case <-n2.exited:
		exited = time.Now()
	case <-time.After(20 * time.Second):
		t.Fatalf("n2 has not exited 20s after SIGTERM (--drain %s)", drain)
	}
	exitTook := exited.Sub(termed)
	// The process exits within --drain plus a few seconds (OPERATIONS.md);
	// serve gives Shutdown --drain and 4s.
	if limit := drain + 4*time.Second; exitTook > limit {
		t.Errorf("n2 exited %s after SIGTERM, want within %s (--drain and a few seconds)", exitTook, limit)
	}
	if st := n2.cmd.ProcessState; st == nil || !st.Success() {
		t.Errorf("n2 exited with %v after SIGTERM, want status 0", st)
	}

	// The drain notice, then the rejoin on n3 as the same peer.
	waitUntil(t, 10*time.Second, "bob's drain notice", func() bool {
		_, _, n := notice.get()
		return n > 0
	})
	noticed, after, notices := notice.get()
	if after < 0 || after > drain {
		t.Errorf("bob's drain notice asked to reconnect after %s, want within the drain window (%s)", after, drain)
	}
	if notices != 1 {
		t.Errorf("bob's client saw %d drain notices, want 1", notices)
	}
	rejoined := bob.log.await(t, grace, "bob's CallRejoined", client.CallRejoined, "", termed)
	if !rejoined.ev.Resumed {
		t.Errorf("bob's CallRejoined: Resumed false, want true (peers %+v)", rejoined.ev.Peers)
	}
	if id := bob.call.ID(); id != idB {
		t.Errorf("bob's call ID after the rejoin: got %s, want %s", id, idB)
	}
	if !slices.ContainsFunc(rejoined.ev.Peers, func(cp client.CallPeer) bool { return cp.Session == idA }) {
		t.Errorf("bob's CallRejoined lists peers %+v, want alice (%s) among them", rejoined.ev.Peers, idA)
	}
	// The client's EventConnected follows its rejoins: wait for it.
	waitUntil(t, 5*time.Second, "bob's client to report its new connection", func() bool {
		at, _ := notice.reconnected()
		return !at.IsZero()
	})
	connected, node := notice.reconnected()
	if node != "n3" {
		t.Errorf("bob's client connected to node %q after the drain, want n3", node)
	}
	bob.mu.Lock()
	dropped := bob.dropped
	bob.mu.Unlock()
	if dropped.IsZero() {
		t.Errorf("bob's client never saw its connection to n2 end")
	}
	resumed := alice.log.await(t, grace, "alice's CallPeerResumed for bob", client.CallPeerResumed, idB, termed)

	// An ICE restart: each side has new local credentials, and each side's
	// new credentials are the ones the other side holds as the remote's,
	// which only a new offer and answer through the nodes can have carried.
	var restarted time.Time
	waitUntil(t, grace, "an ICE restart negotiated through the nodes", func() bool {
		aLocal, aRemote := ufrags(alice, bob)
		bLocal, bRemote := ufrags(bob, alice)
		if aLocal == "" || bLocal == "" || aLocal == aliceUfrag || bLocal == bobUfrag || aRemote != bLocal || bRemote != aLocal {
			return false
		}
		restarted = time.Now()
		return true
	})
	if channels := alice.channelCount() + bob.channelCount(); channels != channelsBefore {
		t.Errorf("%d data channels were made in all, %d before the drain: a PeerConnection was replaced", channels, channelsBefore)
	}

	// Bob's incarnation on n2 would lapse with n2's leases within the
	// presence TTL and a sweep (a third of it) after n2 exited: watch past
	// that, with the messages still streaming.
	if wait := clusterTTL*2 - time.Since(exited); wait > 0 {
		time.Sleep(wait)
	}
	if n := alice.log.count(client.CallPeerLeft, idB, termed); n > 0 {
		e, _ := alice.log.find(client.CallPeerLeft, idB, termed)
		t.Errorf("alice saw bob leave %d times after the SIGTERM (first %s after it, %s after n2 exited), want never",
			n, e.at.Sub(termed).Round(time.Millisecond), e.at.Sub(exited).Round(time.Millisecond))
	}
	if n := alice.log.count(client.CallPeerJoined, idB, termed); n > 0 {
		t.Errorf("alice saw bob join %d times after the SIGTERM, want never: he resumed", n)
	}
	if n := alice.log.count(client.CallPeerResumed, idB, termed); n != 1 {
		t.Errorf("alice saw bob resume %d times after the SIGTERM, want once", n)
	}
	if e, ok := bob.log.find(client.CallPeerLeft, idA, termed); ok {
		t.Errorf("bob saw alice leave %s after the SIGTERM", e.at.Sub(termed).Round(time.Millisecond))
	}

	st.stop()
	for i, p := range []*callPeer{bob, alice} {
		if st.err[i] != nil {
			t.Error(st.err[i])
		}
		total := 100 + len(st.sent[i])
		waitUntil(t, grace, fmt.Sprintf("%s to receive all %d messages", p.name, total), func() bool { return p.received() >= total })
		time.Sleep(50 * time.Millisecond) // anything beyond total would show
		got := p.messages()
		if err := checkNumbered(got, total); err != nil {
			t.Errorf("%s: %v", p.name, err)
			continue
		}
		afterTerm := slices.IndexFunc(st.sent[i], func(at time.Time) bool { return !at.Before(termed) })
		afterRestart := slices.IndexFunc(st.sent[i], func(at time.Time) bool { return !at.Before(restarted) })
		if afterTerm < 0 || afterRestart < 0 {
			t.Errorf("%s: no message was sent after the SIGTERM or after the restart", p.name)
			continue
		}
		first, firstRestarted := got[100+afterTerm], got[100+afterRestart]
		// The longest the data channel went quiet after the SIGTERM.
		var gap time.Duration
		var gapAt time.Time
		for j := 100 + afterTerm; j < len(got); j++ {
			if d := got[j].at.Sub(got[j-1].at); d > gap {
				gap, gapAt = d, got[j].at
			}
		}
		t.Logf("%s got %d messages; message %s, the first sent after the SIGTERM, %s after it; message %s, the first sent after the restart, %s after the SIGTERM; the longest pause between two arrivals was %s, ending %s after the SIGTERM",
			p.name, total, first.text, first.at.Sub(termed).Round(time.Millisecond), firstRestarted.text, firstRestarted.at.Sub(termed).Round(time.Millisecond),
			gap.Round(time.Millisecond), gapAt.Sub(termed).Round(time.Millisecond))
	}
	t.Logf("after the SIGTERM to n2: bob's drain notice (reconnect after %s) came %s after it, his connection dropped %s after it, he rejoined %s after it (his client reported the connection to %s %s after it); alice saw him resume %s after it; the ICE restart was seen %s after it; n2 exited %s after it (%v)",
		after, noticed.Sub(termed).Round(time.Millisecond), dropped.Sub(termed).Round(time.Millisecond),
		rejoined.at.Sub(termed).Round(time.Millisecond), node, connected.Sub(termed).Round(time.Millisecond), resumed.at.Sub(termed).Round(time.Millisecond),
		restarted.Sub(termed).Round(time.Millisecond), exitTook.Round(time.Millisecond), n2.cmd.ProcessState)
}
