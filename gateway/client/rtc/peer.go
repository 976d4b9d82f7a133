package rtc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/parley-rt/parley/gateway/client"
)

// Errors a Peer returns.
var (
	// ErrClosed is returned by WaitOpen once Run has returned, and by Run
	// after Close.
	ErrClosed = errors.New("rtc: peer closed")
	// ErrUnknownPeer is returned by Connect for a session that is not a
	// peer of the call.
	ErrUnknownPeer = errors.New("rtc: not a peer of the call")
)

// ChannelLabel is the label of the data channel each pair of peers shares.
// It is negotiated out of band (Negotiated, with ID 0), so both peers have
// it from the start, without OnDataChannel.
const ChannelLabel = "parley"

// Options configure a Peer. Zero values take the documented defaults.
type Options struct {
	// API makes the PeerConnections; nil means an API made with
	// SettingEngine.
	API *webrtc.API
	// SettingEngine configures the API made when API is nil; nil means
	// pion's defaults. When its LoggerFactory is nil, pion logs to Logger.
	// The Peer sets the candidate acceptance waits on its copy (a pair
	// through a NAT is taken after 50 ms of checks, a relay after 500 ms,
	// instead of pion's 0.5-2 s), and its ICE proxy dialer: TURN servers
	// over TCP and TLS are dialled with a 5 s deadline that Run's end cuts
	// short (pion's own dial has none). An application that wants other
	// waits, or a proxy of its own, passes an API.
	SettingEngine *webrtc.SettingEngine
	// ICEServers, when not nil, are used instead of the join ack's.
	ICEServers []webrtc.ICEServer
	// ForceRelay makes every PeerConnection use TURN relays only, as a join
	// ack with relay does.
	ForceRelay bool
	// Logger receives the peer's logs; nil discards them.
	Logger *slog.Logger
	// OnChannel, when set, is called with the data channel toward a remote
	// peer as soon as it is made, before it can open or receive anything,
	// so that the application can set its OnMessage. The Peer uses the
	// channel's OnOpen itself (WaitOpen tells when it is open). It runs on
	// Run's goroutine and must not block.
	OnChannel func(remote string, dc *webrtc.DataChannel)
	// OnEvent, when set, is called with each call event other than a
	// signal (a peer that joined, left or resumed, a rejoin, the end of
	// the call), after the Peer has handled it: an application calls
	// Connect toward the peers it wants. It runs on Run's goroutine and
	// must not block.
	OnEvent func(client.CallEvent)
}

// directAcceptanceWait and relayAcceptanceWait are how long ICE must have
// been checking before this peer, when it controls the ICE session, takes a
// working candidate pair through a NAT mapping (server- or peer-reflexive)
// or through a TURN relay. A pair of host candidates is taken at once. The
// relay's wait is the time direct paths get to work before a relay, which
// costs the operator bandwidth, is chosen; docs/BENCHMARKS.md has the setup
// times they give in the NAT lab.
const (
	directAcceptanceWait = 50 * time.Millisecond
	relayAcceptanceWait  = 500 * time.Millisecond
)

// iceRestartDelay is how long a PeerConnection's ICE may stay disconnected
// before the impolite peer of the pair restarts it; the polite one waits
// twice as long, so that the two rarely restart at once. A failed ICE is
// restarted at once by the impolite peer, after this delay by the polite.
const iceRestartDelay = 2 * time.Second

// Peer is this client's side of a WebRTC mesh over a call: one
// PeerConnection per remote peer, negotiated with the W3C's perfect
// negotiation pattern over the call's signals, each with a data channel.
// Run drives it; its other methods may be called from any goroutine.
type Peer struct {
	call *client.Call
	opts Options
	api  *webrtc.API
	log  *slog.Logger

	inbox mailbox
	out   outbox

	stop      chan struct{} // closed by Close
	closeOnce sync.Once
	done      chan struct{} // closed when Run has returned
	// hold, when set, keeps Run from reading call events until it is
	// closed; tests use it to make two offers cross. Run's goroutine owns
	// it once Run has started.
	hold chan struct{}

	mu      sync.Mutex
	links   map[string]*link
	changed chan struct{} // closed and replaced when a link comes, goes or opens
	running bool
	// iceServers and relay come from the last join ack, or Options.
	iceServers []webrtc.ICEServer
	relay      bool

	// dialCtx ends TURN dials in progress (turnDialer) when Run ends.
	dialCtx    context.Context
	dialCancel context.CancelFunc
}

// New returns a Peer for call. Nothing happens until Run.
func New(call *client.Call, opts Options) *Peer {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	log := opts.Logger.With("component", "rtc", "call", call.Name())
	p := &Peer{
		call:    call,
		opts:    opts,
		api:     opts.API,
		log:     log,
		inbox:   mailbox{wake: make(chan struct{}, 1)},
		out:     outbox{wake: make(chan struct{}, 1)},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		links:   make(map[string]*link),
		changed: make(chan struct{}),
	}
	p.dialCtx, p.dialCancel = context.WithCancel(context.Background())
	if p.api == nil {
		var se webrtc.SettingEngine
		if opts.SettingEngine != nil {
			se = *opts.SettingEngine
		}
		if se.LoggerFactory == nil {
			se.LoggerFactory = pionLogger{log}
		}
		se.SetICEProxyDialer(turnDialer{p})
		// pion waits 500 ms before it nominates a pair with a server-
		// reflexive candidate, 1 s for a peer-reflexive one and 2 s for a
		// relay: every call through a NAT took a second or more to open.
		// The waits below nominate a direct path as soon as it works, and
		// give direct paths half a second before a relay is taken.
		se.SetHostAcceptanceMinWait(0)
		se.SetSrflxAcceptanceMinWait(directAcceptanceWait)
		se.SetPrflxAcceptanceMinWait(directAcceptanceWait)
		se.SetRelayAcceptanceMinWait(relayAcceptanceWait)
		p.api = webrtc.NewAPI(webrtc.WithSettingEngine(se))
	}
	p.setICE(call.Ack())
	return p
}

// setICE takes the ICE servers and relay policy of a join ack, unless
// Options set them.
func (p *Peer) setICE(ack client.JoinAck) {
	servers := p.opts.ICEServers
	if servers == nil {
		for _, s := range ack.ICEServers {
			servers = append(servers, webrtc.ICEServer{URLs: slices.Clone(s.URLs), Username: s.Username, Credential: s.Credential})
		}
	}
	p.mu.Lock()
	p.iceServers, p.relay = servers, ack.Relay || p.opts.ForceRelay
	p.mu.Unlock()
}

// config is the configuration of a PeerConnection made now.
func (p *Peer) config() webrtc.Configuration {
	p.mu.Lock()
	defer p.mu.Unlock()
	cfg := webrtc.Configuration{ICEServers: slices.Clone(p.iceServers)}
	if p.relay {
		cfg.ICETransportPolicy = webrtc.ICETransportPolicyRelay
	}
	return cfg
}

// Run processes the call's events and the PeerConnections' own until ctx
// ends (it returns ctx.Err()), Close is called (nil), or the call ends (nil
// after Leave, else the call's error). Before it returns it closes every
// PeerConnection and waits for the goroutines it started. Run may be called
// once.
func (p *Peer) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.running {
		p.mu.Unlock()
		return errors.New("rtc: Run called twice")
	}
	p.running = true
	p.mu.Unlock()
	defer close(p.done)

	ctx, cancel := context.WithCancel(ctx)
	var senders sync.WaitGroup
	senders.Go(func() { p.sendLoop(ctx) })
	defer func() {
		cancel()
		senders.Wait()
		p.inbox.close()
		p.dialCancel()
		p.closeAll()
	}()

	events := p.call.Events()
	for {
		evs := events
		if p.hold != nil {
			evs = nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.stop:
			return nil
		case <-p.hold:
			p.hold = nil
		case ev, ok := <-evs:
			if !ok {
				if err := p.call.Err(); !errors.Is(err, client.ErrCallEnded) {
					return err
				}
				return nil
			}
			p.handleEvent(ev)
			if ev.Kind == client.CallClosed {
				return ev.Err
			}
		case <-p.inbox.wake:
			for _, f := range p.inbox.take() {
				f()
			}
		}
	}
}

// Close stops Run and waits for it to return. It may be called more than
// once, and before Run (which then returns at once), but not from OnChannel
// or OnEvent, which run on Run's goroutine.
func (p *Peer) Close() error {
	p.closeOnce.Do(func() {
		close(p.stop)
		p.dialCancel()
	})
	p.mu.Lock()
	running := p.running
	p.mu.Unlock()
	if running {
		<-p.done
	}
	return nil
}

// handleEvent handles a call event on Run's goroutine.
func (p *Peer) handleEvent(ev client.CallEvent) {
	switch ev.Kind {
	case client.CallSignal:
		p.onSignal(ev.From, ev.Data)
		return
	case client.CallPeerLeft:
		if l := p.link(ev.Peer.Session); l != nil {
			p.closeLink(l)
		}
	case client.CallPeerResumed:
		// Its signaling may have lost something in flight.
		if l := p.link(ev.Peer.Session); l != nil {
			p.resync(l)
		}
	case client.CallRejoined:
		ack := p.call.Ack()
		p.setICE(ack)
		for _, l := range p.allLinks() {
			if ev.Resumed && !slices.ContainsFunc(ev.Peers, func(cp client.CallPeer) bool { return cp.Session == l.remote }) {
				// It left while this peer was away.
				p.closeLink(l)
				continue
			}
			if !ev.Resumed {
				// This peer is a new one: the others drop the old one's
				// PeerConnections, and the application starts over.
				p.closeLink(l)
				continue
			}
			l.cfgMu.Lock()
			err := l.pc.SetConfiguration(p.configFor(l))
			l.cfgMu.Unlock()
			if err != nil {
				p.log.Debug("new ICE servers not taken", "peer", l.remote, "err", err)
			}
			p.resync(l)
		}
	case client.CallClosed:
		p.closeAll()
	}
	if p.opts.OnEvent != nil {
		p.opts.OnEvent(ev)
	}
}

// configFor is a new configuration for l's PeerConnection: the current ICE
// servers and policy, with what pion does not let change kept as it is.
func (p *Peer) configFor(l *link) webrtc.Configuration {
	cfg := l.pc.GetConfiguration()
	now := p.config()
	cfg.ICEServers, cfg.ICETransportPolicy = now.ICEServers, now.ICETransportPolicy
	return cfg
}

// link returns the link toward remote, or nil.
func (p *Peer) link(remote string) *link {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.links[remote]
}

func (p *Peer) allLinks() []*link {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*link, 0, len(p.links))
	for _, l := range p.links {
		out = append(out, l)
	}
	return out
}

// notifyLocked wakes WaitOpen. p.mu is held.
func (p *Peer) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// closeAll closes every link.
func (p *Peer) closeAll() {
	for _, l := range p.allLinks() {
		p.closeLink(l)
	}
}

// Connect starts a PeerConnection toward remote, a peer of the call, unless
// there is one: adding its data channel makes it negotiate. Both peers of a
// pair may call Connect at once; perfect negotiation resolves the crossing
// offers. A peer that does not call Connect answers the other's offer.
func (p *Peer) Connect(remote string) error {
	if !slices.ContainsFunc(p.call.Peers(), func(cp client.CallPeer) bool { return cp.Session == remote }) {
		return fmt.Errorf("%w: %s", ErrUnknownPeer, remote)
	}
	p.inbox.post(func() {
		if p.link(remote) != nil {
			return
		}
		if _, err := p.newLink(remote); err != nil {
			p.log.Warn("connect failed", "peer", remote, "err", err)
		}
	})
	return nil
}

// RestartICE restarts ICE toward remote: an offer with new ICE credentials,
// as soon as no other negotiation is under way. Either peer of a pair may
// restart; if both do at once, perfect negotiation keeps one.
func (p *Peer) RestartICE(remote string) {
	p.inbox.post(func() {
		if l := p.link(remote); l != nil {
			p.restartICE(l)
		}
	})
}

// Channel returns the data channel toward remote, or nil when there is no
// PeerConnection toward it.
func (p *Peer) Channel(remote string) *webrtc.DataChannel {
	if l := p.link(remote); l != nil {
		return l.dc
	}
	return nil
}

// WaitOpen waits until the data channel toward remote is open. It returns
// ctx's error when ctx ends first, and ErrClosed once Run has returned.
func (p *Peer) WaitOpen(ctx context.Context, remote string) error {
	for {
		p.mu.Lock()
		l, changed := p.links[remote], p.changed
		p.mu.Unlock()
		var open chan struct{}
		if l != nil {
			open = l.open
		}
		select {
		case <-open:
			return nil
		case <-changed:
		case <-p.done:
			return ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Pair is the ICE candidate pair a PeerConnection sends on.
type Pair struct {
	// Local and Remote are the candidates' types: host, srflx, prflx or
	// relay.
	Local, Remote webrtc.ICECandidateType
	// LocalAddress and RemoteAddress are the candidates' host:port.
	LocalAddress, RemoteAddress string
	// RelayProtocol is how this client reaches the TURN server of a local
	// relay candidate: udp, tcp or tls; empty for other candidates.
	RelayProtocol string
	// RTT is the pair's latest round-trip time from its STUN checks; zero
	// before the first.
	RTT time.Duration
}

// Stats returns the statistics of the PeerConnection toward remote (its
// candidates, candidate pairs, transports, data channels); false when there
// is no PeerConnection toward remote.
func (p *Peer) Stats(remote string) (webrtc.StatsReport, bool) {
	l := p.link(remote)
	if l == nil {
		return nil, false
	}
	l.cfgMu.Lock()
	defer l.cfgMu.Unlock()
	return l.pc.GetStats(), true
}

// SelectedPair returns the candidate pair the PeerConnection toward remote
// sends on, from its statistics; false when there is none yet.
func (p *Peer) SelectedPair(remote string) (Pair, bool) {
	l := p.link(remote)
	if l == nil {
		return Pair{}, false
	}
	sctp := l.pc.SCTP()
	if sctp == nil || sctp.Transport() == nil || sctp.Transport().ICETransport() == nil {
		return Pair{}, false
	}
	ps, ok := sctp.Transport().ICETransport().GetSelectedCandidatePairStats()
	if !ok {
		return Pair{}, false
	}
	l.cfgMu.Lock()
	report := l.pc.GetStats()
	l.cfgMu.Unlock()
	local, okL := report[ps.LocalCandidateID].(webrtc.ICECandidateStats)
	remoteC, okR := report[ps.RemoteCandidateID].(webrtc.ICECandidateStats)
	if !okL || !okR {
		return Pair{}, false
	}
	return Pair{
		Local:         local.CandidateType,
		Remote:        remoteC.CandidateType,
		LocalAddress:  fmt.Sprintf("%s:%d", local.IP, local.Port),
		RemoteAddress: fmt.Sprintf("%s:%d", remoteC.IP, remoteC.Port),
		RelayProtocol: local.RelayProtocol,
		RTT:           time.Duration(ps.CurrentRoundTripTime * float64(time.Second)),
	}, true
}

// mailbox is the FIFO of work for Run's goroutine: pion's callbacks and the
// methods called from other goroutines post closures to it, and never wait.
type mailbox struct {
	mu     sync.Mutex
	fns    []func()
	closed bool
	wake   chan struct{} // capacity 1
}

func (m *mailbox) post(f func()) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.fns = append(m.fns, f)
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *mailbox) take() []func() {
	m.mu.Lock()
	defer m.mu.Unlock()
	fns := m.fns
	m.fns = nil
	return fns
}

// close drops what is waiting and refuses what comes later.
func (m *mailbox) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed, m.fns = true, nil
}
