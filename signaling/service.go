package signaling

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/parley-rt/parley/fanout"
)

// Conn is a client connection as signaling sees it.
type Conn interface {
	// ID is the connection's session id. A peer that joins a call on it
	// takes it as its identity in the call.
	ID() string
	// Deliver queues a server frame for the client without blocking. It
	// reports false when the connection has gone.
	Deliver(frame []byte) bool
}

// Config configures a Service. Zero values take the documented defaults.
type Config struct {
	// Bus carries calls between nodes; required.
	Bus fanout.Bus
	// NodeID names this node in the call's presence.
	NodeID string
	// MaxPeers bounds the peers of one call (a mesh); zero means 8.
	MaxPeers int
	// MaxCallsPerConn bounds the calls one connection is in; zero means 4.
	MaxCallsPerConn int
	// Grace is how long a peer whose connection dropped stays in its call,
	// waiting for a rejoin; zero means 10s.
	Grace time.Duration
	// MaxSignalSize bounds a signal's data in bytes; zero means 32 KiB.
	MaxSignalSize int
	// SignalRate and SignalBurst limit each connection's signals per
	// second; zero means 100 and 400 (trickle ICE in a mesh sends bursts).
	SignalRate  float64
	SignalBurst int
	// HeldSignals bounds the signals held for one peer while it is away;
	// zero means 256. Past it a sender gets rate_limited.
	HeldSignals int
	// HoldFor is how long held signals are kept after the last one; zero
	// means the grace period or 30 s, whichever is longer (a peer whose
	// node died may rejoin until its lease lapses).
	HoldFor time.Duration
	// HideHostCandidates keeps host candidates (a device's own addresses)
	// from other peers: they are acknowledged and not relayed, and removed
	// from SDP bodies.
	HideHostCandidates bool
	// Logger receives signaling's logs; nil discards them.
	Logger *slog.Logger
	// Registerer gets signaling's metrics; nil registers none.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() error {
	if c.Bus == nil {
		return errors.New("signaling: Config.Bus is required")
	}
	for _, v := range []struct {
		name string
		p    *int
		def  int
	}{
		{"MaxPeers", &c.MaxPeers, 8},
		{"MaxCallsPerConn", &c.MaxCallsPerConn, 4},
		{"MaxSignalSize", &c.MaxSignalSize, 32 << 10},
		{"SignalBurst", &c.SignalBurst, 400},
		{"HeldSignals", &c.HeldSignals, 256},
	} {
		if *v.p < 0 {
			return fmt.Errorf("signaling: Config.%s is negative", v.name)
		}
		if *v.p == 0 {
			*v.p = v.def
		}
	}
	if c.MaxPeers < 2 {
		return errors.New("signaling: Config.MaxPeers must be at least 2")
	}
	if c.SignalRate < 0 || c.Grace < 0 || c.HoldFor < 0 {
		return errors.New("signaling: Config.SignalRate, Grace and HoldFor must not be negative")
	}
	if c.SignalRate == 0 {
		c.SignalRate = 100
	}
	if c.Grace == 0 {
		c.Grace = 10 * time.Second
	}
	if c.HoldFor == 0 {
		c.HoldFor = max(c.Grace, 30*time.Second)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Service runs the calls of one node.
type Service struct {
	cfg     Config
	bus     fanout.Bus
	log     *slog.Logger
	metrics *metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// mu guards calls, conns, every callState's view and locals, and every
	// localPeer's mutable fields. No bus call is made under it: the Memory
	// bus delivers in the caller's goroutine, into code that takes it.
	mu    sync.Mutex
	calls map[string]*callState
	conns map[Conn]*connState

	work *workQueue
}

// connState is what signaling keeps of a connection in calls.
type connState struct {
	peers   map[string]*localPeer // by call
	limiter *rate.Limiter
}

// callState is a call with at least one peer on this node.
type callState struct {
	name string
	room string // the bus room
	// ops serializes this node's joins, leaves and bus subscription of the
	// call; it is held across bus calls, never with Service.mu.
	ops sync.Mutex
	// view is who is in the call as this node knows it: peer identity to
	// user and incarnations present.
	view map[string]*viewPeer
	// locals are the call's peers on this node, by identity.
	locals     map[string]*localPeer
	subscribed bool
	// left remembers members whose leave event this node has seen (bus
	// member to when): a join that read the call just before they left
	// must not bring them back into the view.
	left map[string]time.Time
}

// leftMemory is how long callState.left remembers a leave.
const leftMemory = time.Minute

type viewPeer struct {
	user string
	incs map[string]struct{}
}

// localPeer is a peer of a call held by this node.
type localPeer struct {
	call *callState
	id   string // identity
	inc  string // incarnation
	user string
	// conn is the peer's connection; nil while it is away.
	conn Conn
	// claiming: the peer's address is being claimed; what arrives is kept
	// in pending until the claim's held signals are delivered first.
	claiming bool
	pending  [][]byte
	// strays are signals that arrived while the peer was away and before
	// its address was released; released says it has been, so that what
	// arrives now is posted again at once.
	strays   [][]byte
	released bool
	away     *time.Timer
	joined   time.Time
	answered bool
	gone     bool
}

func (p *localPeer) member(node string) fanout.Member {
	return fanout.Member{User: p.user, Session: p.id + "." + p.inc, Node: node}
}

// New returns a Service; Close stops it.
func New(cfg Config) (*Service, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		cfg: cfg, bus: cfg.Bus, log: cfg.Logger, metrics: newMetrics(cfg.Registerer),
		ctx: ctx, cancel: cancel,
		calls: make(map[string]*callState),
		conns: make(map[Conn]*connState),
		work:  newWorkQueue(maxTasks),
	}
	s.wg.Add(1)
	go s.runWork()
	return s, nil
}

// Close stops the service's timers and goroutines. Peers are not made to
// leave: like a node that dies, their leases lapse, and their clients rejoin
// elsewhere within the grace period. Close waits for bus calls in flight.
func (s *Service) Close() {
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	for _, c := range s.calls {
		for _, p := range c.locals {
			if p.away != nil {
				p.away.Stop()
			}
		}
	}
	s.mu.Unlock()
	s.metrics.unregister(s.cfg.Registerer)
}

// Bus rooms and addresses.

func callRoom(call string) string { return "call/" + call }

// peerAddr is the bus address of a peer identity in a call.
func peerAddr(call, peer string) string { return "c:" + call + "/" + peer }

// incAddr is the bus address of one incarnation of a peer.
func incAddr(call, inc string) string { return "a:" + call + "/" + inc }

// splitMember returns the identity and incarnation of a call's bus member.
func splitMember(session string) (peer, inc string, ok bool) {
	return strings.Cut(session, ".")
}

// Payloads on peer and incarnation addresses start with one of these.
const (
	envSignal = 's' // then a signal frame for the client
	envAnswer = 'S' // a signal frame that carries an SDP answer
	envResume = 'r' // then "<peer>\n<user>": that peer of the call resumed
	envTaken  = 't' // to an incarnation: the peer rejoined elsewhere
)

// newIncarnation returns 128 random bits in hex: resume tokens carry it, and
// it is shown to no client otherwise, so a token cannot be guessed.
func newIncarnation() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// polite reports the role of peer a toward peer b: the greater identity is
// polite.
func polite(a, b string) bool { return a > b }

// Peer is another peer of a call, as a join ack lists it.
type Peer struct {
	Session string `json:"session"`
	User    string `json:"user"`
	// Polite is the joining peer's role toward this one.
	Polite bool `json:"polite"`
}

// JoinResult answers a join.
type JoinResult struct {
	// Session is the peer's identity in the call.
	Session string
	// Peers are the call's other peers, ordered by session.
	Peers []Peer
	// Polite is true when the peer is polite toward every peer in Peers
	// (then, in a call of two, it is the role).
	Polite bool
	// Resume is the token to rejoin as this peer.
	Resume string
	// Resumed says that a join with a resume token kept the peer.
	Resumed bool
}

// JoinRequest asks to join a call.
type JoinRequest struct {
	Call string
	// User is who joins.
	User string
	// Resume, when set, is the token of an earlier join ack: the join
	// rejoins that peer if it is still in the call (within the grace
	// period), or joins afresh (JoinResult.Resumed false).
	Resume string
	// Anonymous says that User is made up for this connection (a node
	// without authentication): a resume token then needs no same user,
	// and the peer keeps its earlier user.
	Anonymous bool
	// Ack, when set, is called with the result once the join has
	// succeeded, before any frame for the peer is delivered to the
	// connection (the held signals of a resume, peer events), so that the
	// client gets its join ack first. It must not block or call the
	// Service.
	Ack func(JoinResult)
}

// Join joins c to a call.
func (s *Service) Join(ctx context.Context, c Conn, req JoinRequest) (JoinResult, *Error) {
	call, user, resume := req.Call, req.User, req.Resume
	var oldPeer, oldInc string
	if resume != "" {
		var ok bool
		oldPeer, oldInc, ok = strings.Cut(resume, ".")
		if !ok || !isHex(oldPeer) || len(oldPeer) > 64 || len(oldInc) != 32 || !isHex(oldInc) {
			return JoinResult{}, errorf(CodeBadRequest, "resume is not a token from a join ack")
		}
	}
	s.mu.Lock()
	cs := s.conn(c)
	if _, in := cs.peers[call]; in {
		s.mu.Unlock()
		return JoinResult{}, errorf(CodeBadRequest, "already in call "+call)
	}
	if len(cs.peers) >= s.cfg.MaxCallsPerConn {
		s.mu.Unlock()
		return JoinResult{}, errorf(CodeRateLimited, fmt.Sprintf("a connection may be in %d calls at once", s.cfg.MaxCallsPerConn))
	}
	// A join costs several bus round trips: it counts as joinCost signals.
	if !cs.limiter.AllowN(time.Now(), min(joinCost, s.cfg.SignalBurst)) {
		s.mu.Unlock()
		return JoinResult{}, errorf(CodeRateLimited, "joining calls too fast")
	}
	cst := s.calls[call]
	if cst == nil {
		cst = &callState{name: call, room: callRoom(call), view: make(map[string]*viewPeer),
			locals: make(map[string]*localPeer), left: make(map[string]time.Time)}
		s.calls[call] = cst
	}
	s.mu.Unlock()

	cst.ops.Lock()
	defer cst.ops.Unlock()
	defer s.dropIfIdle(cst)
	if err := s.subscribe(ctx, cst); err != nil {
		return JoinResult{}, err
	}
	if resume != "" {
		res, err, done := s.resume(ctx, c, cst, user, req.Anonymous, oldPeer, oldInc, req.Ack)
		if done {
			return res, err
		}
	}
	return s.join(ctx, c, cst, user, c.ID(), req.Ack)
}

// join adds a new peer with identity id to the call.
func (s *Service) join(ctx context.Context, c Conn, cst *callState, user, id string, ack func(JoinResult)) (JoinResult, *Error) {
	s.mu.Lock()
	if old := cst.locals[id]; old != nil && !old.gone {
		// The same connection id: the peer joined, left its connection
		// and is joining afresh without a token; the old incarnation goes.
		s.mu.Unlock()
		s.release(ctx, old, true)
		s.mu.Lock()
	}
	s.mu.Unlock()
	p := &localPeer{call: cst, id: id, inc: newIncarnation(), user: user, claiming: true, joined: time.Now()}
	// The bound counts incarnations: a peer that has just moved to another
	// node counts twice until its old node lets go (at once), or its
	// lease lapses (its old node died), so a call at its bound may refuse
	// a newcomer for that long.
	others, err := s.bus.Enter(ctx, cst.room, p.member(s.cfg.NodeID), s.cfg.MaxPeers)
	if err != nil {
		if errors.Is(err, fanout.ErrFull) {
			return JoinResult{}, errorf(CodeForbidden, fmt.Sprintf("call %s is full: at most %d peers", cst.name, s.cfg.MaxPeers))
		}
		return JoinResult{}, s.busError("join", err)
	}
	res, aerr := s.attach(ctx, c, p, others, nil, false, ack)
	if aerr != nil {
		s.bus.Leave(ctx, cst.room, p.member(s.cfg.NodeID))
		return JoinResult{}, aerr
	}
	return res, nil
}

// resume rejoins the peer oldPeer whose incarnation was oldInc. done is
// false when the peer is no longer in the call: the caller joins afresh.
func (s *Service) resume(ctx context.Context, c Conn, cst *callState, user string, anyUser bool, oldPeer, oldInc string, ack func(JoinResult)) (JoinResult, *Error, bool) {
	old := oldPeer + "." + oldInc
	present := false
	page := fanout.PresenceQuery{Limit: fanout.MaxPresenceLimit}
	for {
		pp, err := s.bus.Presence(ctx, cst.room, page)
		if err != nil {
			return JoinResult{}, s.busError("resume", err), true
		}
		for _, m := range pp.Members {
			if m.Session == old && (m.User == user || anyUser) {
				present, user = true, m.User
			}
		}
		if present || pp.Next == "" {
			break
		}
		page.Cursor = pp.Next
	}
	if !present {
		s.metrics.resumes.WithLabelValues("lost").Inc()
		return JoinResult{}, nil, false
	}
	// Another connection of this node may hold the peer still (its client
	// rejoined before the node saw the old connection go): it lets go.
	s.mu.Lock()
	prev := cst.locals[oldPeer]
	s.mu.Unlock()
	p := &localPeer{call: cst, id: oldPeer, inc: newIncarnation(), user: user, claiming: true, joined: time.Now()}
	others, err := s.bus.Enter(ctx, cst.room, p.member(s.cfg.NodeID), 0)
	if err != nil {
		return JoinResult{}, s.busError("resume", err), true
	}
	// The new incarnation is in the view before the old one leaves it, so
	// that this node's other peers see no leave.
	s.mu.Lock()
	v := cst.view[p.id]
	if v == nil {
		v = &viewPeer{user: user, incs: make(map[string]struct{})}
		cst.view[p.id] = v
	}
	v.incs[p.inc] = struct{}{}
	s.mu.Unlock()
	var first [][]byte
	switch {
	case prev != nil && prev.inc == oldInc:
		// Signals that reached the old incarnation after its connection
		// went and before its address was released are older than what
		// the mailbox holds.
		s.mu.Lock()
		first, prev.strays = prev.strays, nil
		s.mu.Unlock()
		s.release(ctx, prev, false)
	default:
		// The old incarnation is on another node, which lets it go
		// without a leave event; a node that does not answer is gone, and
		// its incarnation is removed here.
		err := s.bus.Send(ctx, incAddr(cst.name, oldInc), []byte{envTaken})
		if errors.Is(err, fanout.ErrNoSession) {
			s.bus.Leave(ctx, cst.room, fanout.Member{User: user, Session: old})
		}
	}
	res, aerr := s.attach(ctx, c, p, others, first, true, ack)
	if aerr != nil {
		s.bus.Leave(ctx, cst.room, p.member(s.cfg.NodeID))
		return JoinResult{}, aerr, true
	}
	s.metrics.resumes.WithLabelValues("resumed").Inc()
	// The others learn that the peer is back: what it had sent them just
	// before may be lost, and an ICE restart may be due.
	notice := append([]byte{envResume}, oldPeer+"\n"+user...)
	for _, o := range peersOf(others, oldPeer) {
		s.bus.Send(ctx, peerAddr(cst.name, o.Session), notice)
	}
	return res, nil, true
}

// joinCost is what a join takes from a connection's signal rate limit.
const joinCost = 10

// conn returns c's state, made on first use; the caller holds s.mu.
// Disconnect forgets it.
func (s *Service) conn(c Conn) *connState {
	cs := s.conns[c]
	if cs == nil {
		cs = &connState{peers: make(map[string]*localPeer), limiter: rate.NewLimiter(rate.Limit(s.cfg.SignalRate), s.cfg.SignalBurst)}
		s.conns[c] = cs
	}
	return cs
}

// attach claims the peer's addresses and makes it live on c: it calls ack
// with the join's result, then delivers first, what its mailbox held, and
// what arrived meanwhile.
func (s *Service) attach(ctx context.Context, c Conn, p *localPeer, others []fanout.Member, first [][]byte, resumed bool, ack func(JoinResult)) (JoinResult, *Error) {
	cst := p.call
	s.mu.Lock()
	cst.locals[p.id] = p
	s.mu.Unlock()
	held, err := s.bus.Claim(ctx, peerAddr(cst.name, p.id), func(b []byte) { s.deliver(p, b) })
	if err == nil {
		err = s.bus.Register(ctx, incAddr(cst.name, p.inc), func(b []byte) { s.incarnationWord(p, b) })
	}
	if err != nil {
		s.mu.Lock()
		if cst.locals[p.id] == p {
			delete(cst.locals, p.id)
		}
		p.gone = true
		s.mu.Unlock()
		s.bus.Unregister(ctx, peerAddr(cst.name, p.id))
		return JoinResult{}, s.busError("join", err)
	}
	res := s.result(p, others, resumed)
	s.mu.Lock()
	defer s.mu.Unlock()
	p.conn = c
	s.conn(c).peers[cst.name] = p
	if ack != nil {
		ack(res)
	}
	s.mergeView(cst, p, others)
	p.claiming = false
	for _, b := range first {
		s.deliverLocked(p, b)
	}
	for _, b := range held {
		s.deliverLocked(p, b)
	}
	for _, b := range p.pending {
		s.deliverLocked(p, b)
	}
	p.pending = nil
	s.countPeers()
	return res, nil
}

// result builds a join's answer.
func (s *Service) result(p *localPeer, others []fanout.Member, resumed bool) JoinResult {
	peers := peersOf(others, p.id)
	all := len(peers) > 0
	for i := range peers {
		peers[i].Polite = polite(p.id, peers[i].Session)
		all = all && peers[i].Polite
	}
	return JoinResult{Session: p.id, Peers: peers, Polite: all, Resume: p.id + "." + p.inc, Resumed: resumed}
}

// peersOf returns the distinct peers among a call's members, but self,
// ordered by session.
func peersOf(members []fanout.Member, self string) []Peer {
	peers := make([]Peer, 0, len(members))
	for _, m := range members {
		id, _, ok := splitMember(m.Session)
		if !ok || id == self || (len(peers) > 0 && peers[len(peers)-1].Session == id) {
			continue
		}
		peers = append(peers, Peer{Session: id, User: m.User})
	}
	return peers
}

// mergeView adds the members a join saw to the call's view: a peer this
// node did not know yet entered after the node's other local peers did (or
// its join event is still on its way), so they are told of it now and the
// event is ignored when it comes. Peers the view holds that the joining
// peer did not see entered after it: it is told of them.
func (s *Service) mergeView(cst *callState, p *localPeer, others []fanout.Member) {
	seen := make(map[string]struct{}, len(others))
	for _, m := range others {
		id, inc, ok := splitMember(m.Session)
		if !ok || id == p.id {
			continue
		}
		if _, gone := cst.left[m.Session]; gone {
			continue
		}
		seen[id] = struct{}{}
		if v := cst.view[id]; v != nil {
			v.incs[inc] = struct{}{}
			continue
		}
		cst.view[id] = &viewPeer{user: m.User, incs: map[string]struct{}{inc: {}}}
		s.tellLocked(cst, "join", id, m.User, p.id)
	}
	for id, v := range cst.view {
		if _, ok := seen[id]; !ok && id != p.id {
			s.sendPeerLocked(p, "join", id, v.user)
		}
	}
	v := cst.view[p.id]
	if v == nil {
		v = &viewPeer{user: p.user, incs: make(map[string]struct{})}
		cst.view[p.id] = v
	}
	v.incs[p.inc] = struct{}{}
}

// tellLocked sends a peer event about peer to every connected local peer of
// the call but peer itself and skip.
func (s *Service) tellLocked(cst *callState, event, peer, user, skip string) {
	for id, lp := range cst.locals {
		if id == peer || id == skip || lp.conn == nil || lp.claiming {
			continue
		}
		s.sendPeerLocked(lp, event, peer, user)
	}
}

func (s *Service) sendPeerLocked(to *localPeer, event, peer, user string) {
	if to.conn == nil {
		return
	}
	to.conn.Deliver(peerFrame(to.call.name, event, peer, user, polite(to.id, peer)))
}

// Signal relays data from c's peer in call to peer to.
func (s *Service) Signal(ctx context.Context, c Conn, call, to string, data []byte) *Error {
	s.mu.Lock()
	cs := s.conns[c]
	var p *localPeer
	if cs != nil {
		p = cs.peers[call]
	}
	if p == nil {
		s.mu.Unlock()
		s.metrics.rejected.WithLabelValues(rejectNotJoined).Inc()
		return errorf(CodeNotFound, "not in call "+call+": join it first")
	}
	if !cs.limiter.Allow() {
		s.mu.Unlock()
		s.metrics.rejected.WithLabelValues(rejectRate).Inc()
		return errorf(CodeRateLimited, "signal rate limit exceeded")
	}
	_, there := p.call.view[to]
	self := to == p.id
	s.mu.Unlock()
	if self {
		s.metrics.rejected.WithLabelValues(rejectNoPeer).Inc()
		return errorf(CodeBadRequest, "a peer cannot signal itself")
	}
	if !there {
		s.metrics.rejected.WithLabelValues(rejectNoPeer).Inc()
		return errorf(CodeNotFound, "no peer "+to+" in call "+call)
	}
	out, kind, perr := checkSignal(data, s.cfg.MaxSignalSize, s.cfg.HideHostCandidates)
	if perr != nil {
		s.metrics.rejected.WithLabelValues(rejectInvalid).Inc()
		return perr
	}
	if out == nil {
		return nil // a host candidate, hidden
	}
	env := envSignal
	if kind == kindAnswer {
		env = envAnswer
		s.answered(p)
	}
	b := make([]byte, 0, len(out)+len(call)+len(p.id)+48)
	b = append(b, byte(env))
	b = appendSignalFrame(b, call, p.id, out)
	err := s.bus.Post(ctx, peerAddr(call, to), b, s.cfg.HeldSignals, s.cfg.HoldFor)
	switch {
	case errors.Is(err, fanout.ErrFull):
		s.metrics.rejected.WithLabelValues(rejectHeldFull).Inc()
		return errorf(CodeRateLimited, fmt.Sprintf("peer %s is away and %d signals are held for it already", to, s.cfg.HeldSignals))
	case err != nil:
		s.metrics.rejected.WithLabelValues(rejectBus).Inc()
		return s.busError("signal", err)
	}
	s.metrics.relayed.Inc()
	return nil
}

// answered records the first SDP answer a peer sent or received.
func (s *Service) answered(p *localPeer) {
	s.mu.Lock()
	first := !p.answered
	p.answered = true
	s.mu.Unlock()
	if first {
		s.metrics.firstAnswer.Observe(time.Since(p.joined).Seconds())
	}
}

// deliver is the bus's delivery to a peer's address: a signal for its
// client, or word that another peer resumed. It never blocks and never
// calls the bus.
func (s *Service) deliver(p *localPeer, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deliverLocked(p, b)
}

func (s *Service) deliverLocked(p *localPeer, b []byte) {
	if len(b) == 0 {
		return
	}
	if p.claiming {
		p.pending = append(p.pending, b)
		return
	}
	switch b[0] {
	case envSignal, envAnswer:
		if p.gone {
			s.metrics.dropped.Inc()
			return
		}
		if p.conn == nil || !p.conn.Deliver(b[1:]) {
			// The peer went away as this was on its way: it goes to the
			// mailbox, from where the peer's next node takes it, once
			// this node no longer holds the peer's address.
			switch {
			case p.released:
				s.repost(p, b)
			case len(p.strays) < s.cfg.HeldSignals:
				p.strays = append(p.strays, b)
			default:
				s.metrics.dropped.Inc()
			}
			return
		}
		if b[0] == envAnswer && !p.answered {
			p.answered = true
			s.metrics.firstAnswer.Observe(time.Since(p.joined).Seconds())
		}
	case envResume:
		peer, user, _ := strings.Cut(string(b[1:]), "\n")
		if p.conn != nil && !p.gone {
			s.sendPeerLocked(p, "resume", peer, user)
		}
	}
}

// repost puts a signal that reached this node after its peer went away back
// on the bus, for wherever the peer rejoins.
func (s *Service) repost(p *localPeer, b []byte) {
	addr := peerAddr(p.call.name, p.id)
	if !s.work.push(func(ctx context.Context) {
		if err := s.bus.Post(ctx, addr, b, s.cfg.HeldSignals, s.cfg.HoldFor); err != nil {
			s.metrics.dropped.Inc()
			s.log.Debug("signal for a peer that went away not held", "call", p.call.name, "peer", p.id, "err", err)
		}
	}) {
		s.metrics.dropped.Inc()
	}
}

// incarnationWord is the bus's delivery to an incarnation's address.
func (s *Service) incarnationWord(p *localPeer, b []byte) {
	if len(b) != 1 || b[0] != envTaken {
		return
	}
	s.work.push(func(ctx context.Context) {
		p.call.ops.Lock()
		defer p.call.ops.Unlock()
		defer s.dropIfIdle(p.call)
		s.release(ctx, p, false)
	})
}

// Leave takes c's peer out of call: the others get a peer leave event.
func (s *Service) Leave(ctx context.Context, c Conn, call string) *Error {
	s.mu.Lock()
	var p *localPeer
	if cs := s.conns[c]; cs != nil {
		p = cs.peers[call]
	}
	s.mu.Unlock()
	if p == nil {
		return errorf(CodeNotFound, "not in call "+call)
	}
	p.call.ops.Lock()
	defer p.call.ops.Unlock()
	defer s.dropIfIdle(p.call)
	if !s.release(ctx, p, true) {
		return errorf(CodeNotFound, "not in call "+call)
	}
	return nil
}

// Disconnect says that c has gone. Its peers stay in their calls for the
// grace period, away: what is sent to them from now on is held, and a
// rejoin with a resume token takes them back. It returns once their
// addresses are released (or ctx ends).
func (s *Service) Disconnect(ctx context.Context, c Conn) {
	s.mu.Lock()
	cs := s.conns[c]
	delete(s.conns, c)
	var away []*localPeer
	if cs != nil {
		for _, p := range cs.peers {
			if p.conn != c || p.gone {
				continue
			}
			p.conn = nil
			away = append(away, p)
			p.away = time.AfterFunc(s.cfg.Grace, func() { s.expire(p) })
		}
	}
	s.countPeers()
	s.mu.Unlock()
	for _, p := range away {
		s.releaseAddr(ctx, p)
	}
}

// releaseAddr gives up an away peer's address, so that what is sent to it
// waits in its mailbox, and posts there what reached this node meanwhile.
// The bus releases the address only if this node holds it: a rejoin
// elsewhere may have claimed it already.
func (s *Service) releaseAddr(ctx context.Context, p *localPeer) {
	p.call.ops.Lock()
	defer p.call.ops.Unlock()
	s.mu.Lock()
	still := !p.gone && p.conn == nil && !p.released
	s.mu.Unlock()
	if !still {
		return
	}
	if err := s.bus.Unregister(ctx, peerAddr(p.call.name, p.id)); err != nil {
		s.log.Debug("releasing an away peer's address failed", "call", p.call.name, "peer", p.id, "err", err)
	}
	s.mu.Lock()
	p.released = true
	strays := p.strays
	p.strays = nil
	s.mu.Unlock()
	s.postAll(ctx, p, strays)
}

// postAll posts signals that reached this node for a peer that has left it.
func (s *Service) postAll(ctx context.Context, p *localPeer, bs [][]byte) {
	for _, b := range bs {
		if err := s.bus.Post(ctx, peerAddr(p.call.name, p.id), b, s.cfg.HeldSignals, s.cfg.HoldFor); err != nil {
			s.metrics.dropped.Inc()
		}
	}
}

// expire ends the grace period of a peer that did not come back.
func (s *Service) expire(p *localPeer) {
	s.work.push(func(ctx context.Context) {
		p.call.ops.Lock()
		defer p.call.ops.Unlock()
		defer s.dropIfIdle(p.call)
		s.mu.Lock()
		still := !p.gone && p.conn == nil
		s.mu.Unlock()
		if still && s.release(ctx, p, true) {
			s.metrics.lost.Inc()
		}
	})
}

// release takes p off this node. With leave, the peer leaves the call (the
// others get a leave event unless another incarnation of it is present);
// without, only this incarnation goes, because the peer lives on elsewhere.
// It reports false when p was gone already. The caller holds p.call.ops.
func (s *Service) release(ctx context.Context, p *localPeer, leave bool) bool {
	cst := p.call
	s.mu.Lock()
	if p.gone {
		s.mu.Unlock()
		return false
	}
	p.gone = true
	if p.away != nil {
		p.away.Stop()
	}
	if cst.locals[p.id] == p {
		delete(cst.locals, p.id)
	}
	if p.conn != nil {
		if cs := s.conns[p.conn]; cs != nil && cs.peers[cst.name] == p {
			delete(cs.peers, cst.name)
			if len(cs.peers) == 0 {
				delete(s.conns, p.conn)
			}
		}
	}
	p.conn = nil
	strays := p.strays
	p.strays = nil
	s.countPeers()
	s.mu.Unlock()
	if !leave {
		// The peer lives on elsewhere: what reached it here follows it.
		s.postAll(ctx, p, strays)
	}
	if err := s.bus.Leave(ctx, cst.room, p.member(s.cfg.NodeID)); err != nil {
		s.log.Warn("call leave failed; the peer's lease lapses instead", "call", cst.name, "peer", p.id, "err", err)
	}
	if leave {
		s.bus.Unregister(ctx, peerAddr(cst.name, p.id))
	}
	s.bus.Unregister(ctx, incAddr(cst.name, p.inc))
	return true
}

// subscribe makes this node receive the call's presence events. The caller
// holds cst.ops.
func (s *Service) subscribe(ctx context.Context, cst *callState) *Error {
	if cst.subscribed {
		return nil
	}
	if err := s.bus.Subscribe(ctx, cst.room, &callHandler{s: s, cst: cst}); err != nil {
		return s.busError("join", err)
	}
	cst.subscribed = true
	return nil
}

// dropIfIdle forgets a call this node holds no peer of. The caller holds
// cst.ops.
func (s *Service) dropIfIdle(cst *callState) {
	s.mu.Lock()
	idle := len(cst.locals) == 0
	if idle && s.calls[cst.name] == cst {
		delete(s.calls, cst.name)
	}
	s.metrics.calls.Set(float64(len(s.calls)))
	s.mu.Unlock()
	if idle && cst.subscribed {
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		s.bus.Unsubscribe(ctx, cst.room)
		cancel()
		cst.subscribed = false
	}
}

// countPeers updates the peer gauges; the caller holds s.mu.
func (s *Service) countPeers() {
	var connected, away int
	for _, c := range s.calls {
		for _, p := range c.locals {
			if p.conn != nil {
				connected++
			} else {
				away++
			}
		}
	}
	s.metrics.peers.WithLabelValues("connected").Set(float64(connected))
	s.metrics.peers.WithLabelValues("away").Set(float64(away))
}

func (s *Service) busError(op string, err error) *Error {
	s.log.Warn("call "+op+" failed", "err", err)
	if errors.Is(err, fanout.ErrRoomLimit) {
		return errorf(CodeRateLimited, "this node holds as many rooms and calls as it may")
	}
	return errorf(CodeInternal, op+" failed: the message bus is unavailable; try again shortly")
}

// callHandler receives a call's presence events from the bus.
type callHandler struct {
	s   *Service
	cst *callState
}

func (h *callHandler) HandleMessage(*fanout.Message) {}

func (h *callHandler) HandlePresence(e fanout.PresenceEvent) {
	id, inc, ok := splitMember(e.Member.Session)
	if !ok {
		return
	}
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	v := h.cst.view[id]
	if e.Join {
		if v == nil {
			v = &viewPeer{user: e.Member.User, incs: make(map[string]struct{})}
			h.cst.view[id] = v
			s.tellLocked(h.cst, "join", id, e.Member.User, "")
		}
		v.incs[inc] = struct{}{}
		return
	}
	if v == nil {
		return
	}
	delete(v.incs, inc)
	h.cst.rememberLeft(e.Member.Session)
	if len(v.incs) == 0 {
		delete(h.cst.view, id)
		s.tellLocked(h.cst, "leave", id, v.user, "")
	}
}

// HandleResync reads the call's members again: join and leave events may
// have been missed while the bus was away.
func (h *callHandler) HandleResync(string) {
	s, cst := h.s, h.cst
	s.work.push(func(ctx context.Context) {
		page, err := s.bus.Presence(ctx, cst.room, fanout.PresenceQuery{Limit: fanout.MaxPresenceLimit})
		if err != nil {
			s.log.Debug("call resync failed", "call", cst.name, "err", err)
			return
		}
		now := make(map[string]*viewPeer)
		for _, m := range page.Members {
			id, inc, ok := splitMember(m.Session)
			if !ok {
				continue
			}
			v := now[id]
			if v == nil {
				v = &viewPeer{user: m.User, incs: make(map[string]struct{})}
				now[id] = v
			}
			v.incs[inc] = struct{}{}
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		for id, v := range cst.view {
			if now[id] == nil && cst.locals[id] == nil {
				delete(cst.view, id)
				s.tellLocked(cst, "leave", id, v.user, "")
			}
		}
		for id, v := range now {
			if cst.view[id] == nil {
				cst.view[id] = v
				s.tellLocked(cst, "join", id, v.user, "")
			} else {
				cst.view[id].incs = v.incs
			}
		}
	})
}

// rememberLeft notes a member's leave in cst.left, forgetting old ones. The
// caller holds Service.mu.
func (cst *callState) rememberLeft(member string) {
	now := time.Now()
	for m, t := range cst.left {
		if now.Sub(t) > leftMemory {
			delete(cst.left, m)
		}
	}
	cst.left[member] = now
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return s != ""
}
