package signaling

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/parley-rt/parley/fanout/redistest"
)

// stressSeedFlag sets the seed of TestCallStress; the environment variable
// PARLEY_STRESS_SEED does too, and the flag wins when both are set. Without
// either the seed is drawn at random, and the test prints it.
var stressSeedFlag = flag.Uint64("stress.seed", 0, "seed of TestCallStress (PARLEY_STRESS_SEED sets it too)")

// The bounds of TestCallStress. The calls run for stressRun; a slot that
// dropped its connection just before the end still makes its resume (at
// most stressLateResume later), then the test waits stressSettle, and the
// whole test stays well under 25 s.
const (
	stressCalls = 30
	stressSlots = 5 // clients per call, and Config.MaxPeers
	stressNodes = 3
	stressGrace = time.Second
	// stressTTL is the presence TTL that startRedisNode gives its bus.
	stressTTL = 2 * time.Second
	stressRun = 8 * time.Second
	// stressSettle is the grace period, the presence TTL and a third of
	// it, and a margin: every peer that is going to leave has left, and
	// every event about it has arrived.
	stressSettle = stressGrace + stressTTL + stressTTL/3 + 500*time.Millisecond
	// stressMaxActions bounds the actions of one slot, whatever the clock.
	stressMaxActions = 400
	// A resume "within the grace period" comes at most stressEarlyResume
	// after the drop; a late one between stressLateMin and
	// stressLateResume after it. Either may turn out either way when the
	// grace timer and the resume race under load: the test reads the
	// outcome from the ack's resumed flag, never from the timing.
	stressEarlyResume = 600 * time.Millisecond
	stressLateMin     = 1300 * time.Millisecond
	stressLateResume  = 1800 * time.Millisecond
)

// stressSeed returns the seed from -stress.seed, PARLEY_STRESS_SEED, or
// chance.
func stressSeed(t *testing.T) uint64 {
	if *stressSeedFlag != 0 {
		return *stressSeedFlag
	}
	if v := os.Getenv("PARLEY_STRESS_SEED"); v != "" {
		seed, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("PARLEY_STRESS_SEED=%q is not an unsigned integer: %v", v, err)
		}
		return seed
	}
	return rand.Uint64()
}

// stressConn is one connection of a client of the stress test, from its
// join (or resume) ack until the test drops it, or until the end.
type stressConn struct {
	c    *testConn
	node int
	sess *stressSession
	ack  JoinResult
	// framesAtAck is how many frames the connection had when its ack was
	// made: CALLS.md promises that nothing of the call comes before it.
	framesAtAck int
	acked       time.Duration // since the test's start
	// closed is when the test closed the connection and released when
	// Disconnect returned; both are zero while it is open.
	closed, released time.Duration
	// believed is who the client believes is in the call, with its role
	// toward each: the ack's peers, then the peer join and leave events
	// in the order they came. read is how many frames have been taken
	// into it.
	believed map[string]bool
	read     int
}

// update takes the frames that came since the last update into believed.
// Only the slot's goroutine calls it while the calls run.
func (sc *stressConn) update() {
	sc.c.mu.Lock()
	frames := sc.c.frames[sc.read:]
	sc.read = len(sc.c.frames)
	sc.c.mu.Unlock()
	for _, f := range frames {
		if f["type"] != "peer" {
			continue
		}
		id, _ := f["session"].(string)
		switch f["event"] {
		case "join":
			p, _ := f["polite"].(bool)
			sc.believed[id] = p
		case "leave":
			delete(sc.believed, id)
		}
	}
}

// stressSession is one peer of a call: an identity, from the join that made
// it, across every resume that kept it, until it left.
type stressSession struct {
	id    string
	slot  int
	conns []*stressConn
	// ended says how the peer left, or is empty while it is in the call:
	// "leave", "dropped" (no resume followed) or "late resume" (a resume
	// came too late and made a new peer).
	ended string
	// uncertain marks a peer whose fate the test cannot know (a join or
	// leave failed in a way no correct run produces); the failure is
	// reported, and the invariants leave the peer out.
	uncertain bool
}

// stressSent is one signal that a Signal call accepted.
type stressSent struct {
	n      int
	t0, t1 time.Duration // when the Signal call started and returned
}

// stressCall is what the test records of one call.
type stressCall struct {
	name string

	mu       sync.Mutex
	history  []string
	sessions []*stressSession
	next     map[[2]string]int                // the next signal number of (from, to)
	sent     map[[2]string]map[int]stressSent // accepted signals of (from, to), by number
	refused  map[[2]string]map[int]string     // refused ones, with the error code
	bursts   map[[2]string][]string           // each burst of signals, for the report
	failures []string                         // errors no correct run produces
}

type stressTest struct {
	t     *testing.T
	seed  uint64
	start time.Time
	nodes []*redisNode
	calls []*stressCall
}

func (st *stressTest) since() time.Duration { return time.Since(st.start) }

// logf adds a line to the call's history.
func (st *stressTest) logf(call *stressCall, format string, args ...any) {
	line := fmt.Sprintf("%7.3fs ", st.since().Seconds()) + fmt.Sprintf(format, args...)
	call.mu.Lock()
	call.history = append(call.history, line)
	call.mu.Unlock()
}

// fail records an error that no correct run produces.
func (st *stressTest) fail(call *stressCall, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	st.logf(call, "UNEXPECTED: %s", msg)
	call.mu.Lock()
	call.failures = append(call.failures, msg)
	call.mu.Unlock()
}

// TestCallStress runs 30 calls of up to 5 peers on three nodes that share
// one real redis-server, for 8 s of random joins, leaves, dropped
// connections, resumes on any node (within the grace period or after it)
// and signals between peers. Each client acts as a real one would: it
// signals only peers it believes are in the call, from its ack and peer
// events. Once everything has settled it checks what a user would notice:
//
//  1. Every peer still in its call believes exactly the call's other peers
//     are present: no ghost, and no peer missing.
//  2. Of every two such peers, exactly one is polite toward the other.
//  3. Signals arrive in order, without loss or duplicates. The test's
//     connections keep every frame delivered to them before they were
//     closed, so the loss CALLS.md allows for a frame "already queued or
//     written toward the connection before it noticed the drop" cannot
//     happen here, and the only losses tolerated are those of signals to
//     a peer that left: the end of the signals to a peer that sent leave,
//     or whose connection dropped with no resume within the grace period,
//     and whatever was held for it. Order is tolerated to break only as
//     CALLS.md allows: a signal sent to a peer before its dropped
//     connection's address was released (it reached the old connection's
//     node between the drop and the release, and was posted again) may
//     arrive on a later connection of that peer after a signal sent later.
//     What is checked, precisely:
//     a. On each connection, the signals of one sender sent while that
//     connection was live and not one of the exempt ones above arrive in
//     increasing order, and none is missing before the last that arrived.
//     b. A peer still in its call at the end got, on one of its
//     connections, every signal that any Signal call accepted for it:
//     those sent while it was away included, which CALLS.md says are held
//     and delivered after the resume.
//     c. No signal arrives twice, and no refused signal arrives at all.
//  4. No goroutine leaks: the test's own goroutines and those of its
//     nodes are gone once it has stopped them (and TestMain runs goleak
//     after a passing run).
//
// Each client runs in its own goroutine with its own random source, drawn
// from the test's seed; the seed fixes every choice a client makes, not the
// timing of the nodes, so a rerun with the same seed is the same workload
// but not the same interleaving.
func TestCallStress(t *testing.T) {
	seed := stressSeed(t)
	t.Logf("seed %d (rerun with PARLEY_STRESS_SEED=%d, or -args -stress.seed=%d)", seed, seed, seed)
	// goleak in TestMain looks for leaks only after a run whose tests all
	// passed. This looks at the goroutines this test started whatever the
	// other invariants found, once its nodes and Redis have stopped: the
	// cleanups run last registered first.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	srv := redistest.Start(t)
	st := &stressTest{t: t, seed: seed}
	for i := range stressNodes {
		st.nodes = append(st.nodes, startRedisNode(t, srv, fmt.Sprintf("n%d", i+1), func(c *Config) {
			c.Grace = stressGrace
			c.MaxPeers = stressSlots
		}))
	}
	st.start = time.Now()
	deadline := st.start.Add(stressRun)
	var wg sync.WaitGroup
	for ci := range stressCalls {
		call := &stressCall{
			name:    fmt.Sprintf("stress%02d", ci),
			next:    make(map[[2]string]int),
			sent:    make(map[[2]string]map[int]stressSent),
			refused: make(map[[2]string]map[int]string),
			bursts:  make(map[[2]string][]string),
		}
		st.calls = append(st.calls, call)
		for slot := range stressSlots {
			rng := rand.New(rand.NewPCG(seed, uint64(ci*stressSlots+slot)))
			wg.Go(func() { st.runSlot(call, slot, rng, deadline) })
		}
	}
	wg.Wait()
	ops := st.since()
	time.Sleep(stressSettle)
	t.Logf("the calls ran for %v, then settled for %v", ops.Round(time.Millisecond), stressSettle)
	st.check()
}

// runSlot is one client of a call: it joins, signals the peers it believes
// are there, leaves, and drops its connection and resumes, at random, until
// the deadline.
func (st *stressTest) runSlot(call *stressCall, slot int, rng *rand.Rand, deadline time.Time) {
	user := fmt.Sprintf("u%d", slot)
	var cur *stressConn // the client's live connection, nil when it is in no call
	sleep := func(lo, hi time.Duration) { time.Sleep(lo + time.Duration(rng.Int64N(int64(hi-lo)+1))) }
	sleep(0, 500*time.Millisecond)
	for range stressMaxActions {
		if !time.Now().Before(deadline) {
			return
		}
		if cur == nil {
			cur = st.join(call, slot, user, rng, "", nil)
			if cur == nil {
				sleep(100*time.Millisecond, 400*time.Millisecond)
			}
			continue
		}
		switch r := rng.IntN(100); {
		case r < 72:
			st.signalBurst(call, cur, rng)
			sleep(30*time.Millisecond, 200*time.Millisecond)
		case r < 84:
			sleep(50*time.Millisecond, 300*time.Millisecond)
		case r < 88:
			st.leave(call, cur)
			cur = nil
			sleep(50*time.Millisecond, 400*time.Millisecond)
		default:
			st.drop(call, cur)
			switch r := rng.IntN(100); {
			case r < 55:
				sleep(0, stressEarlyResume)
			case r < 85:
				sleep(stressLateMin, stressLateResume)
			default:
				// The client never comes back: the peer leaves at the
				// end of the grace period.
				cur.sess.ended = "dropped"
				st.logf(call, "slot%d %s: no resume after the drop", slot, cur.sess.id)
				cur = nil
				sleep(100*time.Millisecond, 500*time.Millisecond)
				continue
			}
			cur = st.join(call, slot, user, rng, cur.ack.Resume, cur.sess)
		}
	}
}

// join joins the call on a random node with a new connection: afresh, or,
// with a token, as a resume of old. It returns the new live connection, or
// nil when the client is in no call.
func (st *stressTest) join(call *stressCall, slot int, user string, rng *rand.Rand, token string, old *stressSession) *stressConn {
	node := rng.IntN(len(st.nodes))
	c := newConn(fmt.Sprintf("%016x", rng.Uint64()))
	sc := &stressConn{c: c, node: node, believed: make(map[string]bool)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := st.nodes[node].svc.Join(ctx, c, JoinRequest{Call: call.name, User: user, Resume: token, Ack: func(JoinResult) {
		c.mu.Lock()
		sc.framesAtAck = len(c.frames)
		c.mu.Unlock()
		sc.acked = st.since()
	}})
	what := "join"
	if old != nil {
		what = "resume of " + old.id
	}
	if err != nil {
		if old != nil {
			// A resume that fails is a late one whose fresh join was
			// refused: the old peer is gone.
			old.ended = "late resume"
		}
		if err.Code == CodeForbidden {
			st.logf(call, "slot%d %s on n%d with conn %s: refused: %v", slot, what, node+1, c.id, err)
			return nil
		}
		if old != nil {
			old.uncertain = true
		}
		st.fail(call, "slot%d %s on n%d with conn %s: %v", slot, what, node+1, c.id, err)
		return nil
	}
	sc.ack = res
	for _, p := range res.Peers {
		sc.believed[p.Session] = p.Polite
	}
	var peers []string
	for _, p := range res.Peers {
		peers = append(peers, fmt.Sprintf("%s(polite=%v)", p.Session, p.Polite))
	}
	call.mu.Lock()
	if old != nil && res.Resumed && res.Session == old.id {
		sc.sess = old
	} else {
		if old != nil {
			old.ended = "late resume"
		}
		sc.sess = &stressSession{id: res.Session, slot: slot}
		call.sessions = append(call.sessions, sc.sess)
	}
	sc.sess.conns = append(sc.sess.conns, sc)
	call.mu.Unlock()
	st.logf(call, "slot%d %s on n%d with conn %s: session %s resumed=%v acked at %.3fs peers [%s]",
		slot, what, node+1, c.id, res.Session, res.Resumed, sc.acked.Seconds(), strings.Join(peers, " "))
	if old != nil && !res.Resumed && res.Session == old.id {
		st.fail(call, "slot%d: a resume that was not honoured kept the old session %s", slot, old.id)
	}
	return sc
}

// leave makes the client's peer leave the call.
func (st *stressTest) leave(call *stressCall, sc *stressConn) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := st.nodes[sc.node].svc.Leave(ctx, sc.c, call.name)
	sc.sess.ended = "leave"
	if err != nil {
		sc.sess.uncertain = true
		st.fail(call, "slot%d %s leave on n%d: %v", sc.sess.slot, sc.sess.id, sc.node+1, err)
		return
	}
	st.logf(call, "slot%d %s leaves on n%d", sc.sess.slot, sc.sess.id, sc.node+1)
}

// drop closes the client's connection as a network failure would, and
// tells its node.
func (st *stressTest) drop(call *stressCall, sc *stressConn) {
	sc.c.close()
	sc.closed = st.since()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st.nodes[sc.node].svc.Disconnect(ctx, sc.c)
	sc.released = st.since()
	st.logf(call, "slot%d %s conn %s on n%d drops (closed at %.3fs, released at %.3fs)",
		sc.sess.slot, sc.sess.id, sc.c.id, sc.node+1, sc.closed.Seconds(), sc.released.Seconds())
}

// signalBurst sends one to eight candidates to a peer the client believes is
// in the call, each numbered by the pair's counter.
func (st *stressTest) signalBurst(call *stressCall, sc *stressConn, rng *rand.Rand) {
	sc.update()
	if len(sc.believed) == 0 {
		return
	}
	peers := make([]string, 0, len(sc.believed))
	for id := range sc.believed {
		peers = append(peers, id)
	}
	slices.Sort(peers)
	to := peers[rng.IntN(len(peers))]
	pair := [2]string{sc.sess.id, to}
	var notes []string
	for range 1 + rng.IntN(8) {
		call.mu.Lock()
		n := call.next[pair]
		call.next[pair]++
		call.mu.Unlock()
		t0 := st.since()
		err := st.nodes[sc.node].svc.Signal(context.Background(), sc.c, call.name, to, candidate(n))
		t1 := st.since()
		call.mu.Lock()
		if err == nil {
			if call.sent[pair] == nil {
				call.sent[pair] = make(map[int]stressSent)
			}
			call.sent[pair][n] = stressSent{n: n, t0: t0, t1: t1}
			notes = append(notes, fmt.Sprintf("#%d@%.3f-%.3fs ok", n, t0.Seconds(), t1.Seconds()))
		} else {
			if call.refused[pair] == nil {
				call.refused[pair] = make(map[int]string)
			}
			call.refused[pair][n] = err.Code
			notes = append(notes, fmt.Sprintf("#%d@%.3fs %s", n, t0.Seconds(), err.Code))
		}
		call.mu.Unlock()
		if err != nil && err.Code != CodeNotFound && err.Code != CodeRateLimited {
			st.fail(call, "signal #%d from %s to %s on n%d: %v", n, sc.sess.id, to, sc.node+1, err)
		}
		if err != nil {
			break
		}
	}
	call.mu.Lock()
	call.bursts[pair] = append(call.bursts[pair], fmt.Sprintf("conn %s on n%d: %s", sc.c.id, sc.node+1, strings.Join(notes, ", ")))
	call.mu.Unlock()
}

// received is one signal as a connection got it.
type received struct {
	from string
	n    int
}

// signalsOf returns the signals a connection received, in order.
func signalsOf(c *testConn) []received {
	var out []received
	for _, f := range c.snapshot() {
		if f["type"] == "signal" {
			from, _ := f["from"].(string)
			out = append(out, received{from, candidatePort(f)})
		}
	}
	return out
}

// check verifies the invariants on what every call recorded, and reports
// each broken one with the call's history.
func (st *stressTest) check() {
	t := st.t
	var broken, sessions, conns, signals, drops, resumes, lates, accepted, exempt int
	for _, call := range st.calls {
		var problems []string
		problems = append(problems, call.failures...)
		present := make(map[string]*stressSession)
		uncertain := make(map[string]bool)
		for _, s := range call.sessions {
			sessions++
			conns += len(s.conns)
			resumes += len(s.conns) - 1
			if s.ended == "late resume" {
				lates++
			}
			for _, sc := range s.conns {
				if sc.closed > 0 {
					drops++
				}
				sc.update()
				if sc.framesAtAck != 0 {
					problems = append(problems, fmt.Sprintf("conn %s of %s got %d frames before its join ack", sc.c.id, s.id, sc.framesAtAck))
				}
			}
			switch {
			case s.uncertain:
				uncertain[s.id] = true
			case s.ended == "":
				present[s.id] = s
			}
		}
		live := func(s *stressSession) *stressConn { return s.conns[len(s.conns)-1] }

		// 1. Every peer in the call believes the others are, and no one
		// else.
		for id, s := range present {
			sc := live(s)
			var ghosts, missing []string
			for other := range sc.believed {
				if present[other] == nil && !uncertain[other] {
					ghosts = append(ghosts, other)
				}
			}
			for other := range present {
				if _, ok := sc.believed[other]; other != id && !ok {
					missing = append(missing, other)
				}
			}
			slices.Sort(ghosts)
			slices.Sort(missing)
			if len(ghosts) > 0 {
				problems = append(problems, fmt.Sprintf("invariant 1: %s (slot%d, conn %s on n%d) believes gone peers %v are in the call", id, s.slot, sc.c.id, sc.node+1, ghosts))
			}
			if len(missing) > 0 {
				problems = append(problems, fmt.Sprintf("invariant 1: %s (slot%d, conn %s on n%d) does not know of peers %v in the call", id, s.slot, sc.c.id, sc.node+1, missing))
			}
		}

		// 2. Of two peers in the call, exactly one is polite toward the
		// other.
		for a, sa := range present {
			for b, sb := range present {
				if a >= b {
					continue
				}
				pa, oka := live(sa).believed[b]
				pb, okb := live(sb).believed[a]
				if oka && okb && pa == pb {
					problems = append(problems, fmt.Sprintf("invariant 2: %s and %s are both polite=%v toward each other", a, b, pa))
				}
			}
		}

		// 3. Signals.
		for _, sent := range call.sent {
			accepted += len(sent)
		}
		for _, s := range call.sessions {
			if s.uncertain {
				continue
			}
			// got says on which connection each signal arrived, by
			// sender and number.
			got := make(map[received]int)
			for k, sc := range s.conns {
				last := make(map[string]int) // the last in-order number per sender
				for _, r := range signalsOf(sc.c) {
					signals++
					pair := [2]string{r.from, s.id}
					if prev, dup := got[r]; dup {
						problems = append(problems, fmt.Sprintf("invariant 3c: signal #%d from %s to %s arrived twice (conn %d and conn %d of the peer)", r.n, r.from, s.id, prev+1, k+1))
						continue
					}
					got[r] = k
					if code, ok := call.refused[pair][r.n]; ok {
						problems = append(problems, fmt.Sprintf("invariant 3c: signal #%d from %s to %s was refused (%s) and arrived all the same", r.n, r.from, s.id, code))
						continue
					}
					sent, ok := call.sent[pair][r.n]
					if !ok {
						problems = append(problems, fmt.Sprintf("invariant 3c: signal #%d from %s to %s arrived and was never sent", r.n, r.from, s.id))
						continue
					}
					// A signal sent before an earlier connection of
					// the peer was released may come late.
					if k > 0 && sent.t0 < s.conns[k-1].released {
						exempt++
						continue
					}
					if l, ok := last[r.from]; ok && r.n <= l {
						problems = append(problems, fmt.Sprintf("invariant 3a: on conn %d (%s) of %s, signal #%d from %s (sent at %.3fs) arrived after #%d", k+1, sc.c.id, s.id, r.n, r.from, sent.t0.Seconds(), l))
					}
					last[r.from] = max(last[r.from], r.n)
				}
				// No gap: every signal sent while this connection was
				// live, below the last in-order one that arrived on it,
				// arrived on it.
				for from, l := range last {
					var gaps []int
					for n, sent := range call.sent[[2]string{from, s.id}] {
						if n >= l || sent.t0 < sc.acked || (k > 0 && sent.t0 < s.conns[k-1].released) {
							continue
						}
						if at, ok := got[received{from, n}]; !ok || at != k {
							gaps = append(gaps, n)
						}
					}
					if len(gaps) > 0 {
						slices.Sort(gaps)
						problems = append(problems, fmt.Sprintf("invariant 3a: on conn %d (%s) of %s, signals %v from %s, sent while it was live, did not arrive there although #%d, sent later, did", k+1, sc.c.id, s.id, gaps, from, l))
					}
				}
			}
			if s.ended != "" {
				continue
			}
			// A peer in the call at the end got everything sent to it.
			for pair, sent := range call.sent {
				if pair[1] != s.id {
					continue
				}
				var lost []string
				for n, x := range sent {
					if !hasReceived(got, pair[0], n) {
						lost = append(lost, fmt.Sprintf("#%d(sent %.3f-%.3fs)", n, x.t0.Seconds(), x.t1.Seconds()))
					}
				}
				if len(lost) > 0 {
					slices.Sort(lost)
					problems = append(problems, fmt.Sprintf("invariant 3b: %s, in the call to the end, never got signals %v from %s", s.id, lost, pair[0]))
				}
			}
		}
		if len(problems) == 0 {
			continue
		}
		broken++
		t.Errorf("seed %d: call %s broke an invariant:\n  %s\n%s", st.seed, call.name, strings.Join(problems, "\n  "), st.report(call, problems))
	}
	// A signal lost on its way shows in these counters: the bus drops a
	// payload that reaches a node for a session no longer registered
	// there, and signaling one that reaches a peer that has left.
	for i, n := range st.nodes {
		t.Logf("n%d: the bus dropped %d payloads; signaling dropped %v signals", i+1, n.bus.Stats().Dropped, counterValue(n.svc.metrics.dropped))
	}
	t.Logf("%d calls, %d peers (%d late resumes), %d connections, %d drops, %d resumes; %d signals accepted, %d received (%d on a later connection than the one live when sent, exempt from the order check); %d calls broke an invariant",
		len(st.calls), sessions, lates, conns, drops, resumes, accepted, signals, exempt, broken)
}

func hasReceived(got map[received]int, from string, n int) bool {
	_, ok := got[received{from, n}]
	return ok
}

// report is a call's history: what the clients did, then, for each
// connection, its ack and the peer events it received, and the bursts of
// the signal pairs named in problems.
func (st *stressTest) report(call *stressCall, problems []string) string {
	var b strings.Builder
	b.WriteString("  history:\n")
	for _, h := range call.history {
		b.WriteString("    " + h + "\n")
	}
	b.WriteString("  connections (ack peers, then peer events in order):\n")
	for _, s := range call.sessions {
		state := s.ended
		if state == "" {
			state = "in the call"
		}
		fmt.Fprintf(&b, "    session %s (slot%d, %s):\n", s.id, s.slot, state)
		for k, sc := range s.conns {
			var peers []string
			for _, p := range sc.ack.Peers {
				peers = append(peers, fmt.Sprintf("%s(polite=%v)", p.Session, p.Polite))
			}
			fmt.Fprintf(&b, "      conn %d %s on n%d: acked %.3fs resumed=%v peers [%s]", k+1, sc.c.id, sc.node+1, sc.acked.Seconds(), sc.ack.Resumed, strings.Join(peers, " "))
			if sc.closed > 0 {
				fmt.Fprintf(&b, ", closed %.3fs, released %.3fs", sc.closed.Seconds(), sc.released.Seconds())
			}
			b.WriteString("\n")
			var events []string
			var sig []string
			for _, f := range sc.c.snapshot() {
				switch f["type"] {
				case "peer":
					events = append(events, fmt.Sprintf("%s %v(polite=%v)", f["event"], f["session"], f["polite"]))
				case "signal":
					if from, _ := f["from"].(string); mentioned(problems, from, s.id) {
						sig = append(sig, fmt.Sprintf("%s#%d", from, candidatePort(f)))
					}
				}
			}
			fmt.Fprintf(&b, "        events: %s\n", strings.Join(events, ", "))
			if len(sig) > 0 {
				fmt.Fprintf(&b, "        signals in the order received: %s\n", strings.Join(sig, " "))
			}
		}
	}
	for pair, bursts := range call.bursts {
		if !mentioned(problems, pair[0], pair[1]) {
			continue
		}
		fmt.Fprintf(&b, "  signals sent from %s to %s:\n", pair[0], pair[1])
		for _, x := range bursts {
			b.WriteString("    " + x + "\n")
		}
	}
	return b.String()
}

// mentioned reports whether a problem of invariant 3 names both peers.
func mentioned(problems []string, a, b string) bool {
	for _, p := range problems {
		if strings.HasPrefix(p, "invariant 3") && strings.Contains(p, a) && strings.Contains(p, b) {
			return true
		}
	}
	return false
}
