package signaling

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/parley-rt/parley/fanout"
)

// Joins cost several bus round trips: a connection may make joinBurst
// times MaxCallsPerConn of them at once (a reconnect rejoins every call),
// then one every joinEvery. They do not share the signals' budget, so a
// low signal rate never keeps a client from rejoining its calls.
const (
	joinBurst = 2
	joinEvery = time.Second
)

// Join joins c to a call.
func (s *Service) Join(ctx context.Context, c Conn, req JoinRequest) (JoinResult, *Error) {
	var oldPeer, key string
	if req.Resume != "" {
		var ok bool
		oldPeer, key, ok = strings.Cut(req.Resume, ".")
		if !ok || len(oldPeer) > 64 || !isHex(oldPeer) || len(key) != 32 || !isHex(key) {
			return JoinResult{}, errorf(CodeBadRequest, "resume is not a token from a join ack")
		}
	}
	s.mu.Lock()
	cs := s.conn(c)
	if _, in := cs.peers[req.Call]; in {
		s.mu.Unlock()
		return JoinResult{}, errorf(CodeBadRequest, "already in call "+req.Call)
	}
	if len(cs.peers) >= s.cfg.MaxCallsPerConn {
		s.mu.Unlock()
		return JoinResult{}, errorf(CodeForbidden, fmt.Sprintf("a connection may be in %d calls at once", s.cfg.MaxCallsPerConn))
	}
	if !cs.joins.Allow() {
		s.mu.Unlock()
		return JoinResult{}, errorf(CodeRateLimited, "joining calls too fast")
	}
	s.mu.Unlock()

	cst := s.lockCall(req.Call)
	defer cst.ops.Unlock()
	defer s.dropIfIdle(cst)
	if err := s.subscribe(ctx, cst); err != nil {
		return JoinResult{}, err
	}
	if req.Resume != "" {
		res, err, done := s.resume(ctx, c, cst, req, oldPeer, key)
		if done {
			return res, err
		}
		s.metrics.resumes.WithLabelValues("lost").Inc()
	}
	return s.join(ctx, c, cst, req)
}

// conn returns c's state, made on first use; the caller holds s.mu.
// Disconnect forgets it.
func (s *Service) conn(c Conn) *connState {
	cs := s.conns[c]
	if cs == nil {
		cs = &connState{
			peers:   make(map[string]*localPeer),
			limiter: rate.NewLimiter(rate.Limit(s.cfg.SignalRate), s.cfg.SignalBurst),
			joins:   rate.NewLimiter(rate.Every(joinEvery), joinBurst*s.cfg.MaxCallsPerConn),
		}
		s.conns[c] = cs
	}
	return cs
}

// lockCall returns the node's state of call, made if need be, with its ops
// locked, and still the node's: a state dropIfIdle dropped while the caller
// waited for it is not returned.
func (s *Service) lockCall(call string) *callState {
	for {
		s.mu.Lock()
		cst := s.calls[call]
		if cst == nil {
			cst = &callState{name: call, room: callRoom(call), view: make(map[string]*viewPeer),
				locals: make(map[string]*localPeer), left: make(map[string]time.Time), touched: make(map[string]time.Time)}
			s.calls[call] = cst
		}
		s.mu.Unlock()
		cst.ops.Lock()
		s.mu.Lock()
		current := s.calls[call] == cst
		s.mu.Unlock()
		if current {
			return cst
		}
		cst.ops.Unlock()
	}
}

// dropIfIdle forgets a call this node holds no peer of. Its subscription
// goes first, while the state is still the node's, so that no later state of
// the call subscribes before it is gone. The caller holds cst.ops.
func (s *Service) dropIfIdle(cst *callState) {
	s.mu.Lock()
	idle := len(cst.locals) == 0
	s.mu.Unlock()
	if !idle {
		return
	}
	if cst.subscribed {
		ctx, cancel := context.WithTimeout(s.ctx, taskTimeout)
		if err := s.bus.Unsubscribe(ctx, cst.room); err != nil {
			s.log.Debug("call unsubscribe failed", "call", cst.name, "err", err)
		}
		cancel()
		cst.subscribed = false
	}
	s.mu.Lock()
	if len(cst.locals) == 0 && s.calls[cst.name] == cst {
		delete(s.calls, cst.name)
	}
	s.mu.Unlock()
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

// join adds a new peer to the call. Its identity is the connection's id,
// unless the call has that identity already (the connection's earlier peer,
// resumed on another connection): then a random one.
func (s *Service) join(ctx context.Context, c Conn, cst *callState, req JoinRequest) (JoinResult, *Error) {
	id := c.ID()
	s.mu.Lock()
	if cst.view[id] != nil || cst.locals[id] != nil {
		id = randomHex(8)
	}
	s.mu.Unlock()
	for {
		key := randomHex(16)
		p := &localPeer{call: cst, id: id, key: key, inc: key + "." + randomHex(8), user: req.User, claiming: true, joined: time.Now()}
		others, err := s.enter(ctx, p, s.cfg.MaxPeers, "")
		if err != nil {
			if errors.Is(err, fanout.ErrFull) {
				return JoinResult{}, errorf(CodeForbidden, fmt.Sprintf("call %s is full: at most %d peers", cst.name, s.cfg.MaxPeers))
			}
			return JoinResult{}, s.busError("join", err)
		}
		// This node may not have known that the identity is taken (it
		// forgot the call when its peer moved away): the atomic join's
		// snapshot knows. The others see no event for the extra
		// incarnation of a peer they know.
		if slices.ContainsFunc(others, func(m fanout.Member) bool { return strings.HasPrefix(m.Session, id+".") }) {
			s.leave(ctx, p)
			id = randomHex(8)
			continue
		}
		res, aerr := s.attach(ctx, c, p, others, nil, false, req.Ack)
		if aerr != nil {
			s.leave(ctx, p)
			return JoinResult{}, aerr
		}
		return res, nil
	}
}

// enter registers the incarnation's address, then enters it in the call
// (max as Bus.Enter takes it; with after, only if an incarnation whose
// member starts so is present, as Bus.EnterAfter): a resume elsewhere that
// finds the incarnation in the call can always reach it. The bound counts
// incarnations: a peer that has just moved to another node counts twice
// until its old node lets go (at once), or its lease lapses (its old node
// died), so a call at its bound may refuse a newcomer for that long.
func (s *Service) enter(ctx context.Context, p *localPeer, max int, after string) ([]fanout.Member, error) {
	cst := p.call
	if err := s.bus.Register(ctx, incAddr(cst.name, p.inc), func(b []byte) { s.incarnationWord(p, b) }); err != nil {
		return nil, err
	}
	var others []fanout.Member
	var err error
	if after != "" {
		others, err = s.bus.EnterAfter(ctx, cst.room, p.member(s.cfg.NodeID), after)
	} else {
		others, err = s.bus.Enter(ctx, cst.room, p.member(s.cfg.NodeID), max)
	}
	if err != nil {
		s.bus.Unregister(ctx, incAddr(cst.name, p.inc))
		return nil, err
	}
	return others, nil
}

// undoing returns a context for undoing what a command did: it outlives
// the command's own (which may be what ended, a timeout or a shutdown), and
// is bounded like a task.
func undoing(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), taskTimeout)
}

// leave undoes enter for an incarnation that did not become a peer.
func (s *Service) leave(ctx context.Context, p *localPeer) {
	ctx, cancel := undoing(ctx)
	defer cancel()
	s.mu.Lock()
	p.gone = true
	s.mu.Unlock()
	s.bus.Leave(ctx, p.call.room, p.member(s.cfg.NodeID))
	s.bus.Unregister(ctx, incAddr(p.call.name, p.inc))
}

// resume rejoins the peer oldPeer whose key is key, as a new incarnation.
// done is false when the peer is no longer in the call: the caller joins
// afresh. The caller holds cst.ops.
func (s *Service) resume(ctx context.Context, c Conn, cst *callState, req JoinRequest, oldPeer, key string) (JoinResult, *Error, bool) {
	user, present, err := s.findPeer(ctx, cst, oldPeer, key, req.User, req.Anonymous)
	if err != nil {
		return JoinResult{}, err, true
	}
	if !present {
		return JoinResult{}, nil, false
	}
	p := &localPeer{call: cst, id: oldPeer, key: key, inc: key + "." + randomHex(8), user: user, claiming: true, joined: time.Now()}
	// The new incarnation is in the view before the bus has it, so that
	// this node's other peers see no leave when the old one goes.
	s.mu.Lock()
	v := cst.view[p.id]
	known := v != nil
	if !known {
		v = &viewPeer{user: user, incs: make(map[string]struct{})}
		cst.view[p.id] = v
	}
	v.incs[p.inc] = struct{}{}
	s.mu.Unlock()
	// The new incarnation enters only if an old one is still there: else
	// the peer's grace period ended since findPeer, and nothing changes.
	others, berr := s.enter(ctx, p, 0, p.id+"."+key+".")
	if errors.Is(berr, fanout.ErrNoSession) {
		berr = nil
	}
	var olds []fanout.Member
	for _, m := range others {
		if id, inc, ok := splitMember(m.Session); ok && id == p.id && inc != p.inc && isIncarnationOf(inc, key) {
			olds = append(olds, m)
		}
	}
	if berr != nil || len(olds) == 0 {
		if berr == nil {
			s.leave(ctx, p)
		}
		s.mu.Lock()
		delete(v.incs, p.inc)
		if len(v.incs) == 0 && cst.view[p.id] == v {
			delete(cst.view, p.id)
			if known {
				s.tellLocked(cst, "leave", p.id, user, "")
			}
		}
		s.mu.Unlock()
		if berr != nil {
			return JoinResult{}, s.busError("resume", berr), true
		}
		return JoinResult{}, nil, false
	}
	var first [][]byte
	for _, m := range olds {
		_, inc, _ := splitMember(m.Session)
		s.mu.Lock()
		prev := cst.locals[p.id]
		local := prev != nil && prev.inc == inc && !prev.gone
		if local {
			// Signals that reached the old incarnation after its
			// connection went and before its address was released are
			// older than what the mailbox holds; what reaches it from
			// now on goes to the new one.
			first, prev.strays = prev.strays, nil
			prev.successor = p
		}
		s.mu.Unlock()
		if local {
			s.release(ctx, prev, true)
			continue
		}
		// The old incarnation is on another node, which lets it go
		// without a leave event; a node that does not answer is gone, and
		// its incarnation is removed here.
		if err := s.bus.Send(ctx, incAddr(cst.name, inc), []byte{envTaken}); errors.Is(err, fanout.ErrNoSession) {
			s.bus.Leave(ctx, cst.room, m)
		}
	}
	res, aerr := s.attach(ctx, c, p, others, first, true, req.Ack)
	if aerr != nil {
		s.leave(ctx, p)
		return JoinResult{}, aerr, true
	}
	s.metrics.resumes.WithLabelValues("resumed").Inc()
	if !known {
		s.mu.Lock()
		s.tellLocked(cst, "join", p.id, user, "")
		s.mu.Unlock()
	}
	// The others learn that the peer is back: what it had sent them just
	// before may be lost, and an ICE restart may be due.
	notice := append([]byte{envResume}, p.id+"\n"+user...)
	for _, o := range res.Peers {
		s.bus.Send(ctx, peerAddr(cst.name, o.Session), notice)
	}
	return res, nil, true
}

// findPeer looks for an incarnation of peer with key in the call's
// presence, of user unless anyUser. It returns the peer's user.
func (s *Service) findPeer(ctx context.Context, cst *callState, peer, key, user string, anyUser bool) (string, bool, *Error) {
	prefix := peer + "." + key + "."
	q := fanout.PresenceQuery{Limit: fanout.MaxPresenceLimit}
	for {
		page, err := s.bus.Presence(ctx, cst.room, q)
		if err != nil {
			return "", false, s.busError("resume", err)
		}
		for _, m := range page.Members {
			if strings.HasPrefix(m.Session, prefix) && (m.User == user || anyUser) {
				return m.User, true, nil
			}
		}
		if page.Next == "" {
			return "", false, nil
		}
		q.Cursor = page.Next
	}
}

// attach claims the peer's addresses and makes it live on c: it calls ack
// with the join's result, then delivers first, what its mailbox held (a
// resume's), and what arrived meanwhile. The caller holds cst.ops.
func (s *Service) attach(ctx context.Context, c Conn, p *localPeer, others []fanout.Member, first [][]byte, resumed bool, ack func(JoinResult)) (JoinResult, *Error) {
	cst := p.call
	s.mu.Lock()
	cst.locals[p.id] = p
	s.mu.Unlock()
	held, err := s.bus.Claim(ctx, peerAddr(cst.name, p.id), func(b []byte) { s.deliver(p, b) })
	if err != nil {
		s.mu.Lock()
		if cst.locals[p.id] == p {
			delete(cst.locals, p.id)
		}
		p.gone = true
		s.mu.Unlock()
		uctx, cancel := undoing(ctx)
		s.bus.Unregister(uctx, peerAddr(cst.name, p.id))
		cancel()
		return JoinResult{}, s.busError("join", err)
	}
	if !resumed && len(held) > 0 {
		// A new peer has no past: what its identity's mailbox held for
		// another key was on its way to an earlier peer of the same
		// connection. What a peer sent it once it saw it enter (before
		// this claim) carries its key, and is its.
		kept := held[:0]
		for _, b := range held {
			if key, _, ok := cutSignal(b); ok && key == p.key {
				kept = append(kept, b)
			} else {
				s.metrics.dropped.Inc()
			}
		}
		held = kept
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	res := s.result(p, others, resumed)
	p.conn = c
	s.conn(c).peers[cst.name] = p
	if ack != nil {
		ack(res)
	}
	s.mergeView(cst, p, others)
	p.claiming = false
	for _, b := range append(first, held...) {
		s.deliverHeldLocked(p, b)
	}
	for _, b := range p.pending {
		s.deliverLocked(p, b)
	}
	p.pending = nil
	return res, nil
}

// result builds a join's answer from the members it saw, but those this
// node has seen leave since; the caller holds s.mu.
func (s *Service) result(p *localPeer, others []fanout.Member, resumed bool) JoinResult {
	live := others[:0:0]
	for _, m := range others {
		if _, gone := p.call.left[m.Session]; !gone {
			live = append(live, m)
		}
	}
	peers := peersOf(live, p.id)
	all := len(peers) > 0
	for i := range peers {
		peers[i].Polite = polite(p.id, peers[i].Session)
		all = all && peers[i].Polite
	}
	return JoinResult{Session: p.id, Peers: peers, Polite: all, Resume: p.token(), Resumed: resumed}
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
	if !s.release(ctx, p, false) {
		return errorf(CodeNotFound, "not in call "+call)
	}
	return nil
}

// Disconnect says that c has gone. Its peers stay in their calls for the
// grace period, away: what is sent to them from now on is held, and a
// rejoin with a resume token takes them back. It returns once their
// addresses are released (or ctx ends).
func (s *Service) Disconnect(ctx context.Context, c Conn) {
	ctx, cancel := undoing(ctx)
	defer cancel()
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
		// The address is still this node's: what reaches the peer stays
		// with it here (its strays, bounded) until a later try succeeds.
		s.log.Debug("releasing an away peer's address failed; trying again", "call", p.call.name, "peer", p.id, "err", err)
		time.AfterFunc(releaseRetry, func() {
			s.work.push(func(ctx context.Context) { s.releaseAddr(ctx, p) })
		})
		return
	}
	s.mu.Lock()
	p.released = true
	strays := p.strays
	p.strays = nil
	s.mu.Unlock()
	s.postAll(ctx, p, strays)
}

// releaseRetry is how long after a failed release of an away peer's address
// it is tried again.
const releaseRetry = time.Second

// postAll posts signals that reached this node for a peer that has left it.
// They are no longer held anywhere else, so they get a context of their own:
// the caller's may be spent by now (Disconnect's, after its release waited
// for the call's ops, or a release's, after its other bus calls).
func (s *Service) postAll(ctx context.Context, p *localPeer, bs [][]byte) {
	if len(bs) == 0 {
		return
	}
	ctx, cancel := undoing(ctx)
	defer cancel()
	for _, b := range bs {
		if err := s.bus.Post(ctx, peerAddr(p.call.name, p.id), b, s.cfg.HeldSignals, s.cfg.HoldFor); err != nil {
			s.metrics.dropped.Inc()
		}
	}
}

// expire ends the grace period of a peer that did not come back.
func (s *Service) expire(p *localPeer) {
	pushed := s.work.push(func(ctx context.Context) {
		p.call.ops.Lock()
		defer p.call.ops.Unlock()
		defer s.dropIfIdle(p.call)
		s.mu.Lock()
		still := !p.gone && p.conn == nil
		s.mu.Unlock()
		if still && s.release(ctx, p, false) {
			s.metrics.lost.Inc()
		}
	})
	if !pushed && s.ctx.Err() == nil {
		// The worker's queue is full: the peer must still leave.
		time.AfterFunc(releaseRetry, func() { s.expire(p) })
	}
}

// release takes p off this node: its incarnation leaves the call (the
// others get a leave event unless another incarnation of the peer is
// present) and its addresses are released. With moved, the peer lives on
// elsewhere: what still reaches it here follows it. It reports false when p
// was gone already. The caller holds p.call.ops.
func (s *Service) release(ctx context.Context, p *localPeer, moved bool) bool {
	ctx, cancel := undoing(ctx)
	defer cancel()
	cst := p.call
	s.mu.Lock()
	if p.gone {
		s.mu.Unlock()
		return false
	}
	p.gone, p.moved = true, moved
	if p.away != nil {
		p.away.Stop()
	}
	if cst.locals[p.id] == p {
		delete(cst.locals, p.id)
	}
	if p.conn != nil {
		if cs := s.conns[p.conn]; cs != nil && cs.peers[cst.name] == p {
			delete(cs.peers, cst.name)
		}
	}
	p.conn = nil
	var strays [][]byte
	if moved && p.successor == nil {
		strays = p.strays
	}
	p.strays = nil
	s.mu.Unlock()
	if err := s.bus.Leave(ctx, cst.room, p.member(s.cfg.NodeID)); err != nil {
		s.log.Warn("call leave failed; the peer's lease lapses instead", "call", cst.name, "peer", p.id, "err", err)
	}
	s.bus.Unregister(ctx, peerAddr(cst.name, p.id))
	s.bus.Unregister(ctx, incAddr(cst.name, p.inc))
	s.postAll(ctx, p, strays)
	return true
}

// countCalls is the number of calls with peers on this node, for
// parley_calls_active.
func (s *Service) countCalls() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(len(s.calls))
}

// countPeers is the number of this node's peers that are away, or
// connected, for parley_call_peers.
func (s *Service) countPeers(away bool) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.calls {
		for _, p := range c.locals {
			if (p.conn == nil) == away {
				n++
			}
		}
	}
	return float64(n)
}

func (s *Service) busError(op string, err error) *Error {
	s.log.Warn("call "+op+" failed", "err", err)
	if errors.Is(err, fanout.ErrRoomLimit) {
		return errorf(CodeOverCapacity, "this node holds as many rooms and calls as it may; try again later")
	}
	return errorf(CodeInternal, op+" failed: the message bus is unavailable; try again shortly")
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
