package loadtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"
	"github.com/pion/webrtc/v4"

	"github.com/parley-rt/parley/gateway/client"
	"github.com/parley-rt/parley/gateway/client/rtc"
)

// callBound bounds the setup of one call, from the dial of its first client
// to the message that arrives last: a call not set up within it has failed,
// as its user would have hung up. A healthy setup takes tens of
// milliseconds on a direct path and about 0.6 s through a relay (package
// rtc gives direct paths half a second first).
const callBound = 15 * time.Second

// callFailFast is how many calls must have failed the same way, with none
// set up, before the scenario stops and says why: a node that does not do
// what the run needs (no signaling, no TURN for --relay, a token that may
// not join calls) fails every call alike, and measuring that for the whole
// run tells nothing more.
const callFailFast = 3

// callReasons bounds the distinct failure reasons a report counts; the
// reasons past it are counted as "other". callFailuresKept is how many
// failures the report describes in full.
const (
	callReasons      = 20
	callFailuresKept = 5
)

// errCallBound is the cause of a call's context ending at callBound.
var errCallBound = errors.New("loadtest: call setup bound")

// callPairTypes are the candidate types a call's path is counted under, from
// the most direct to the least.
var callPairTypes = []string{"host", "prflx", "srflx", "relay"}

// CallsReport is what the calls scenario saw. Each call is two peers of
// their own, each with its own connection to a node, that join a call, open
// a WebRTC data channel between them through the node's signaling, and send
// one message each way over it.
type CallsReport struct {
	// Asked is how many calls the run was to set up, at Rate a second.
	Asked int     `json:"asked"`
	Rate  float64 `json:"rate"`
	// Relay says the calls were relay only, through the node's TURN
	// server.
	Relay bool `json:"relay"`
	// Started is how many calls were started: all of Asked, unless the
	// run's duration ran out first or the run stopped.
	Started int `json:"started"`
	// SetUp calls had their data channel open on both sides and one message
	// arrived each way within the per-call bound (15s); Failed calls did
	// not.
	SetUp  int `json:"set_up"`
	Failed int `json:"failed"`
	// Stopped calls were cut short, neither set up nor failed, because the
	// run stopped early.
	Stopped int `json:"stopped,omitempty"`
	// Failures counts the failed calls by reason: the step that failed and
	// a few words ("join: rate_limited", "timeout: ice", "not relay: host").
	Failures map[string]int `json:"failures,omitempty"`
	// FirstFailures describe the first few failures in full.
	FirstFailures []string `json:"first_failures,omitempty"`
	// SetupRate is calls set up a second: SetUp over the time from the
	// first call's start to the last setup completed, plus the one period
	// of Rate the last call's start takes. At most Rate, and less when
	// setups fall behind (or a few take long: Setup's tail says which).
	SetupRate float64 `json:"setups_per_second"`
	// Setup is the time from a call's first join to its second message
	// arriving.
	Setup Distribution `json:"setup"`
	// Pairs counts the calls set up by the type of their path: the less
	// direct of the two peers' local candidates in their selected pairs
	// (host, prflx, srflx, relay). A reflexive candidate at a peer's own
	// address (on loopback, the node's STUN server sees the peer's host
	// address) counts as host: no NAT is crossed.
	Pairs map[string]int `json:"pairs,omitempty"`
	// RTT is the median round-trip time of the selected pairs, from their
	// STUN checks; zero when none was measured.
	RTT time.Duration `json:"rtt_p50_ns,omitempty"`
	// Held is how long the calls were held, from the first call's start to
	// their hang-up.
	Held time.Duration `json:"held_ns"`
}

// String renders the calls figures for people.
func (c *CallsReport) String() string {
	var b strings.Builder
	relay := ""
	if c.Relay {
		relay = ", relay only"
	}
	fmt.Fprintf(&b, "calls: %d asked at %.1f a second%s: %d set up, %d failed", c.Asked, c.Rate, relay, c.SetUp, c.Failed)
	if c.SetupRate > 0 {
		fmt.Fprintf(&b, ", set up at %.1f a second", c.SetupRate)
	}
	if n := c.Asked - c.Started; n > 0 {
		fmt.Fprintf(&b, " (%d not started)", n)
	}
	if c.Stopped > 0 {
		fmt.Fprintf(&b, " (%d cut short)", c.Stopped)
	}
	fmt.Fprintf(&b, "; held %s\n", c.Held.Round(100*time.Millisecond))
	if c.Setup.Count > 0 {
		fmt.Fprintf(&b, "call setup: p50 %s  p90 %s  p99 %s  max %s\n", round(c.Setup.P50), round(c.Setup.P90), round(c.Setup.P99), round(c.Setup.Max))
	}
	if len(c.Pairs) > 0 {
		var pairs []string
		for _, t := range callPairTypes {
			if n := c.Pairs[t]; n > 0 {
				pairs = append(pairs, strconv.Itoa(n)+" "+t)
			}
		}
		fmt.Fprintf(&b, "pairs: %s", strings.Join(pairs, ", "))
		if c.RTT > 0 {
			fmt.Fprintf(&b, "; RTT p50 %s", round(c.RTT))
		}
		b.WriteByte('\n')
	}
	if len(c.Failures) > 0 {
		reasons := topReasons(c.Failures, len(c.Failures))
		for i, r := range reasons {
			reasons[i] = strconv.Itoa(c.Failures[r]) + " " + r
		}
		fmt.Fprintf(&b, "failures: %s\n", strings.Join(reasons, "; "))
		for _, f := range c.FirstFailures {
			fmt.Fprintf(&b, "  %s\n", f)
		}
	}
	return b.String()
}

// callsRun is the calls scenario's state, shared by the goroutines of its
// calls.
type callsRun struct {
	r     *run
	urls  []string
	local bool // every node is on loopback: peers use loopback only

	// net is the system's network, which the peers' sourceNets wrap; nil
	// when the run has no source addresses, or it could not be read.
	net *stdnet.Net
	// peers counts the peers made, which take the source addresses in
	// turn.
	peers atomic.Uint64

	setup, rtt *latencies
	finished   atomic.Int64 // setups that ended, set up or not

	mu          sync.Mutex // guards what follows
	rep         *CallsReport
	last        time.Time // when the last setup completed
	firstReason string    // the reason of the first failure
	firstDetail string    // and its detail
	stopErr     error     // why the run stops early
	stop        chan struct{}
}

// runCalls runs the calls scenario: Calls calls started at Rate a second,
// each set up through signaling, held until Duration after the first one
// started (or until every setup has ended, if later), then hung up.
func runCalls(ctx context.Context, r *run) error {
	cfg := r.cfg
	cr := &callsRun{
		r: r, urls: r.urls(), local: true,
		setup: newLatencies(), rtt: newLatencies(),
		rep:  &CallsReport{Asked: cfg.Calls, Rate: cfg.Rate, Relay: cfg.Relay, Failures: map[string]int{}, Pairs: map[string]int{}},
		stop: make(chan struct{}),
	}
	for _, u := range cr.urls {
		cr.local = cr.local && requireLoopback(u) == nil
	}
	if cr.local && len(r.srcs) > 0 {
		cr.net, _ = stdnet.NewNet()
	}
	r.rep.Calls = cr.rep

	// callsCtx ends the setups under way when the run stops early or ctx
	// ends; hangup ends the calls that are up.
	callsCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	hangup := make(chan struct{})
	var calls, setups sync.WaitGroup
	defer calls.Wait()
	hangupOnce := sync.OnceFunc(func() { close(hangup) })
	defer hangupOnce()

	r.measureStart(ctx)
	r.prog.begin("calling", int64(cfg.Calls), cr.finished.Load, func() string {
		cr.mu.Lock()
		defer cr.mu.Unlock()
		if n := cr.rep.Failed; n > 0 {
			return strconv.Itoa(n) + " failed"
		}
		return ""
	})
	start := time.Now()
	end := start.Add(cfg.Duration)
	period := time.Duration(float64(time.Second) / cfg.Rate)
	timer := time.NewTimer(0)
	defer timer.Stop()
launch:
	for i := 0; i < cfg.Calls; i++ {
		at := start.Add(time.Duration(i) * period)
		if !at.Before(end) {
			break // the rest could not be set up within the run
		}
		timer.Reset(time.Until(at))
		select {
		case <-ctx.Done():
			break launch
		case <-cr.stop:
			break launch
		case <-timer.C:
		}
		cr.mu.Lock()
		cr.rep.Started++
		cr.mu.Unlock()
		setups.Add(1)
		calls.Go(func() { cr.call(callsCtx, i, setups.Done, hangup) })
	}
	// Hold the calls until the end of the run, or until the setups under
	// way have ended, whichever comes later.
	setupsDone := make(chan struct{})
	go func() {
		setups.Wait()
		close(setupsDone)
	}()
	timer.Reset(time.Until(end))
	for waiting, done := true, setupsDone; waiting; {
		select {
		case <-ctx.Done():
			waiting = false
		case <-cr.stop:
			waiting = false
		case <-timer.C:
			waiting = false
		case <-done:
			done = nil
			r.prog.begin("holding", 0, nil, func() string {
				cr.mu.Lock()
				defer cr.mu.Unlock()
				return fmt.Sprintf("%d calls up, %d failed", cr.rep.SetUp, cr.rep.Failed)
			})
		}
	}
	if ctx.Err() != nil || cr.stopped() {
		cancel()
	}
	// Every setup ends within callBound of its start, so this is at most
	// callBound past the end of the run.
	<-setupsDone
	held := time.Since(start)
	r.prog.end()
	r.measureEnd(ctx, 0)
	hangupOnce()
	r.prog.begin("hanging up", 0, nil, nil)
	calls.Wait()
	r.prog.end()

	rep := cr.rep
	rep.Held = held
	r.rep.Duration = held
	rep.Setup = cr.setup.distribution("call setup")
	r.rep.Distributions = append(r.rep.Distributions, rep.Setup)
	if cr.rtt.count() > 0 {
		rep.RTT = cr.rtt.at(50)
	}
	// n calls started one period apart take n periods of the clock (the
	// last one's included), so the rate of calls that set up at once is
	// the rate asked.
	if span := cr.last.Sub(start) + time.Duration(float64(time.Second)/r.cfg.Rate); rep.SetUp > 0 && span > 0 {
		rep.SetupRate = float64(rep.SetUp) / span.Seconds()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return cr.stopErr
}

// stopped reports whether the run is stopping early.
func (cr *callsRun) stopped() bool {
	select {
	case <-cr.stop:
		return true
	default:
		return false
	}
}

// callSide is one peer of a call: its client, its membership of the call,
// and the rtc.Peer that runs over it.
type callSide struct {
	c    *client.Client
	call *client.Call
	peer *rtc.Peer
	// ran gets Run's result.
	ran chan error
	// got is signalled when a data channel message arrives.
	got chan struct{}
}

// callFailure is why a call was not set up: reason, a few words that
// failures are counted by, and detail, the whole story.
type callFailure struct {
	reason, detail string
}

// call sets up call number i and, once it is up, holds it until hangup.
// setupDone is called once the setup has ended, either way.
func (cr *callsRun) call(ctx context.Context, i int, setupDone func(), hangup <-chan struct{}) {
	var sides [2]*callSide
	var runs sync.WaitGroup
	defer func() {
		// Hang up: each peer leaves the call, so the node forgets it at
		// once, and its PeerConnection and client close.
		leaveCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for _, s := range sides {
			if s == nil {
				continue
			}
			if s.peer != nil {
				s.peer.Close()
			}
			if s.call != nil {
				s.call.Leave(leaveCtx)
			}
			s.c.Close()
		}
		runs.Wait()
	}()
	took, kind, rtts, fail := cr.setUp(ctx, i, &sides, &runs)
	if fail != nil {
		cr.failed(i, *fail)
		setupDone()
		return
	}
	cr.succeeded(took, kind, rtts)
	setupDone()
	<-hangup
}

// setUp dials the two peers of call number i, joins them to the call and
// connects them; it returns the setup time, the type of the call's path and
// the RTTs of the two selected pairs, or why it failed.
func (cr *callsRun) setUp(ctx context.Context, i int, sides *[2]*callSide, runs *sync.WaitGroup) (time.Duration, string, []time.Duration, *callFailure) {
	ctx, cancel := context.WithTimeoutCause(ctx, callBound, errCallBound)
	defer cancel()
	cfg := cr.r.cfg
	name := "load-call-" + strconv.Itoa(i)
	for k := range sides {
		url := cr.urls[(2*i+k)%len(cr.urls)]
		c, err := client.Dial(ctx, client.Options{
			URL: url, Token: cfg.Token, HTTPClient: cr.r.hc, EventBuffer: 16,
			// A call whose connection drops fails: the scenario measures
			// setups, not recovery.
			NoReconnect: true,
		})
		if err != nil {
			return 0, "", nil, cr.stepFailure(ctx, "dial", err)
		}
		sides[k] = &callSide{c: c, ran: make(chan error, 1), got: make(chan struct{}, 1)}
	}
	a, b := sides[0], sides[1]

	start := time.Now()
	for k, s := range sides {
		call, err := s.c.Join(ctx, name)
		if err != nil {
			return 0, "", nil, cr.stepFailure(ctx, "join", err)
		}
		s.call = call
		if k == 0 && cfg.Relay && !offersTURN(call.Ack()) {
			return 0, "", nil, &callFailure{"no TURN server",
				"relay asked, but the node's join ack names no TURN server: is TURN off on the node (--turn-addr off)?"}
		}
		s.peer = rtc.New(call, cr.peerOptions(s, k == 1))
		runs.Go(func() { s.ran <- s.peer.Run(context.WithoutCancel(ctx)) })
	}
	// The second peer connects toward the first, which answers. The first
	// is in its join ack, unless that came from another node that had not
	// heard of it yet; then the join event makes it connect (peerOptions).
	if err := b.peer.Connect(a.call.ID()); err != nil && !errors.Is(err, rtc.ErrUnknownPeer) {
		return 0, "", nil, &callFailure{"connect", err.Error()}
	}

	for _, s := range []struct{ at, to *callSide }{{a, b}, {b, a}} {
		if err := s.at.peer.WaitOpen(ctx, s.to.call.ID()); err != nil {
			return 0, "", nil, cr.openFailure(ctx, s.at, s.to, err)
		}
	}
	for _, s := range []struct{ at, to *callSide }{{a, b}, {b, a}} {
		dc := s.at.peer.Channel(s.to.call.ID())
		if dc == nil {
			return 0, "", nil, &callFailure{"send", "no data channel once open"}
		}
		if err := dc.SendText("hello " + name); err != nil {
			return 0, "", nil, &callFailure{"send", err.Error()}
		}
	}
	for _, s := range sides {
		select {
		case <-s.got:
		case <-ctx.Done():
			return 0, "", nil, cr.stepFailure(ctx, "message", context.Cause(ctx))
		}
	}
	took := time.Since(start)

	kind := "host"
	var rtts []time.Duration
	for _, s := range []struct{ at, to *callSide }{{a, b}, {b, a}} {
		pair, ok := s.at.peer.SelectedPair(s.to.call.ID())
		if !ok {
			return 0, "", nil, &callFailure{"no selected pair", "the data channel is open but the PeerConnection reports no selected pair"}
		}
		local := pathType(s.at.peer, s.to.call.ID(), pair)
		if cfg.Relay && pair.Local != webrtc.ICECandidateTypeRelay {
			return 0, "", nil, &callFailure{"not relay: " + local,
				fmt.Sprintf("relay asked, but a peer sends on a %s candidate (%s to %s %s)", local, pair.LocalAddress, pair.Remote, pair.RemoteAddress)}
		}
		if slices.Index(callPairTypes, local) > slices.Index(callPairTypes, kind) {
			kind = local
		}
		if pair.RTT > 0 {
			rtts = append(rtts, pair.RTT)
		}
	}
	return took, kind, rtts, nil
}

// peerOptions are the rtc.Options of side s of a call; the second side
// connects toward the first when it hears of it.
func (cr *callsRun) peerOptions(s *callSide, second bool) rtc.Options {
	opts := rtc.Options{
		SettingEngine: cr.settingEngine(),
		ForceRelay:    cr.r.cfg.Relay,
		OnChannel: func(_ string, dc *webrtc.DataChannel) {
			dc.OnMessage(func(webrtc.DataChannelMessage) {
				select {
				case s.got <- struct{}{}:
				default:
				}
			})
		},
	}
	if second {
		opts.OnEvent = func(ev client.CallEvent) {
			if ev.Kind == client.CallPeerJoined {
				s.peer.Connect(ev.Peer.Session)
			}
		}
	}
	return opts
}

// settingEngine configures a peer's pion stack: UDP over IPv4, no mDNS
// (every peer is in this process, and hundreds of mDNS sockets would cost
// more than the calls), and with nodes on loopback, loopback addresses only,
// so that candidates, and relay allocations, use the path to the node. Where
// the run has source addresses (see sourceAddrs), each peer takes the next
// of peerSources as its only address.
func (cr *callsRun) settingEngine() *webrtc.SettingEngine {
	var se webrtc.SettingEngine
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	if cr.local {
		se.SetIncludeLoopbackCandidate(true)
		se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	}
	if srcs := cr.peerSources(); len(srcs) > 0 && cr.net != nil {
		src := srcs[(cr.peers.Add(1)-1)%uint64(len(srcs))]
		se.SetNet(newSourceNet(cr.net, src))
	}
	return &se
}

// peerSources are the source addresses the peers take in turn: the run's
// but the first, 127.0.0.1, which package rtc dials TURN over TCP from for
// every peer. Its requests take that address's share of the TURN server's
// per-source limit, and a peer's UDP requests from there would wait for
// them.
func (cr *callsRun) peerSources() []netip.Addr {
	if len(cr.r.srcs) < 2 {
		return nil
	}
	return cr.r.srcs[1:]
}

// sourceNet is pion's network for one peer of a run on loopback: the
// system's, but with one interface, loopback, whose one address is the
// peer's source address. The peer's UDP sockets (its host candidates, and
// its requests to the node's STUN and TURN server) are bound to that
// address, so the TURN server, which limits unauthenticated requests per
// source address (20 a second by default), sees the peers as the many
// clients they stand for, as the node sees the WebSocket connections.
// TURN over TCP is dialled by package rtc, from the system's address
// (127.0.0.1).
type sourceNet struct {
	*stdnet.Net
	lo *transport.Interface
}

// newSourceNet returns the network of a peer with source address src.
func newSourceNet(base *stdnet.Net, src netip.Addr) *sourceNet {
	lo := transport.NewInterface(net.Interface{Index: 1, MTU: 65536, Name: "lo", Flags: net.FlagUp | net.FlagLoopback})
	lo.AddAddress(&net.IPNet{IP: src.AsSlice(), Mask: net.CIDRMask(8, 32)})
	return &sourceNet{Net: base, lo: lo}
}

func (n *sourceNet) Interfaces() ([]*transport.Interface, error) {
	return []*transport.Interface{n.lo}, nil
}

func (n *sourceNet) InterfaceByIndex(index int) (*transport.Interface, error) {
	if index != n.lo.Index {
		return nil, fmt.Errorf("loadtest: no interface %d", index)
	}
	return n.lo, nil
}

func (n *sourceNet) InterfaceByName(name string) (*transport.Interface, error) {
	if name != n.lo.Name {
		return nil, fmt.Errorf("loadtest: no interface %s", name)
	}
	return n.lo, nil
}

// offersTURN reports whether a join ack names a TURN server.
func offersTURN(ack client.JoinAck) bool {
	for _, s := range ack.ICEServers {
		for _, u := range s.URLs {
			if strings.HasPrefix(u, "turn:") || strings.HasPrefix(u, "turns:") {
				return true
			}
		}
	}
	return false
}

// stepFailure is the failure of step (dial, join, message) with err, or a
// timeout when the call's bound passed, or "stopped" when the run stopped.
func (cr *callsRun) stepFailure(ctx context.Context, step string, err error) *callFailure {
	switch {
	case errors.Is(context.Cause(ctx), errCallBound):
		return &callFailure{"timeout: " + step, fmt.Sprintf("%s not done within %s", step, callBound)}
	case ctx.Err() != nil:
		return &callFailure{"stopped", step + ": the run stopped"}
	}
	reason := err.Error()
	var se *client.ServerError
	var oe *net.OpError
	switch {
	case errors.As(err, &se):
		reason = se.Code
	case errors.As(err, &oe):
		// Without the addresses, which differ from one call to the next.
		reason = oe.Err.Error()
	}
	return &callFailure{step + ": " + reason, step + ": " + err.Error()}
}

// openFailure says why the data channel of at toward to did not open: the
// peer's Run ended, or the call's bound passed with the offer not through
// signaling, ICE not connected (or, relay only, no relay candidate
// gathered), or the DTLS and SCTP handshakes not done.
func (cr *callsRun) openFailure(ctx context.Context, at, to *callSide, err error) *callFailure {
	if errors.Is(err, rtc.ErrClosed) {
		runErr := <-at.ran
		return &callFailure{"call ended", fmt.Sprintf("the peer stopped before its data channel opened: %v", runErr)}
	}
	if !errors.Is(context.Cause(ctx), errCallBound) {
		return cr.stepFailure(ctx, "open", err)
	}
	stage, detail := "data channel", "ICE connected, but the data channel did not open (DTLS or SCTP)"
	switch {
	case at.peer.Channel(to.call.ID()) == nil:
		stage, detail = "signaling", "no offer arrived through the node"
	case !hasSelectedPair(at.peer, to.call.ID()):
		stage, detail = "ice", "ICE found no working candidate pair"
		if cr.r.cfg.Relay && !hasRelayCandidate(at.peer, to.call.ID()) {
			stage, detail = "no relay candidate", "the peer got no relay candidate from the node's TURN server (refused, over quota, or unreachable)"
		}
	}
	return &callFailure{"timeout: " + stage, fmt.Sprintf("%s within %s", detail, callBound)}
}

// pathType is the type of the path pair takes from p toward remote: the
// type of its local candidate, but host for a server- or peer-reflexive
// candidate at the IP address of one of p's host candidates. Such a
// candidate goes through no NAT, as on loopback, where the node's STUN
// server sees a peer at its own address: ICE may select it or a host
// candidate alike.
func pathType(p *rtc.Peer, remote string, pair rtc.Pair) string {
	local := pair.Local.String()
	if pair.Local != webrtc.ICECandidateTypeSrflx && pair.Local != webrtc.ICECandidateTypePrflx {
		return local
	}
	stats, _ := p.Stats(remote)
	for _, s := range stats {
		c, ok := s.(webrtc.ICECandidateStats)
		if ok && c.Type == webrtc.StatsTypeLocalCandidate && c.CandidateType == webrtc.ICECandidateTypeHost &&
			strings.HasPrefix(pair.LocalAddress, c.IP+":") {
			return "host"
		}
	}
	return local
}

// hasSelectedPair reports whether p's PeerConnection toward remote has a
// selected candidate pair.
func hasSelectedPair(p *rtc.Peer, remote string) bool {
	_, ok := p.SelectedPair(remote)
	return ok
}

// hasRelayCandidate reports whether p gathered a relay candidate for its
// PeerConnection toward remote.
func hasRelayCandidate(p *rtc.Peer, remote string) bool {
	stats, ok := p.Stats(remote)
	if !ok {
		return false
	}
	for _, s := range stats {
		if c, ok := s.(webrtc.ICECandidateStats); ok && c.Type == webrtc.StatsTypeLocalCandidate && c.CandidateType == webrtc.ICECandidateTypeRelay {
			return true
		}
	}
	return false
}

// succeeded counts a call set up in took, on a path of type kind.
func (cr *callsRun) succeeded(took time.Duration, kind string, rtts []time.Duration) {
	cr.setup.record(took)
	for _, d := range rtts {
		cr.rtt.record(d)
	}
	now := time.Now()
	cr.mu.Lock()
	cr.rep.SetUp++
	cr.rep.Pairs[kind]++
	cr.last = now
	cr.mu.Unlock()
	cr.finished.Add(1)
}

// failed counts call number i as failed, or as stopped when the run
// stopped under it. When the first calls have all failed alike and none was
// set up, it stops the run with an error that says why.
func (cr *callsRun) failed(i int, f callFailure) {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	rep := cr.rep
	cr.finished.Add(1)
	if f.reason == "stopped" {
		rep.Stopped++
		return
	}
	rep.Failed++
	countReason(rep.Failures, f.reason, callReasons)
	if len(rep.FirstFailures) < callFailuresKept {
		rep.FirstFailures = append(rep.FirstFailures, fmt.Sprintf("call %d: %s", i, f.detail))
	}
	if cr.firstReason == "" {
		cr.firstReason, cr.firstDetail = f.reason, f.detail
	}
	if cr.stopErr != nil || rep.SetUp > 0 || rep.Failed < min(callFailFast, rep.Asked) || rep.Failures[cr.firstReason] != rep.Failed {
		return
	}
	cr.stopErr = fmt.Errorf("loadtest: the first %d calls on %s all failed (%s), none was set up: %s",
		rep.Failed, strings.Join(cr.urls, ", "), cr.firstReason, cr.firstDetail)
	close(cr.stop)
}
