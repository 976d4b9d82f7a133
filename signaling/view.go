package signaling

import (
	"context"
	"time"

	"github.com/parley-rt/parley/fanout"
)

// mergeView adds the members a join saw to the call's view: a peer this
// node did not know yet entered after the node's other local peers did (or
// its join event is still on its way), so they are told of it now and the
// event is ignored when it comes. Peers the view holds that the joining
// peer did not see entered after it: it is told of them. Members this node
// has seen leave are not added back. The caller holds s.mu.
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
		// The joining peer is new to this node: its other local peers are
		// told now, and its own join event is ignored when it comes.
		v = &viewPeer{user: p.user, incs: make(map[string]struct{})}
		cst.view[p.id] = v
		s.tellLocked(cst, "join", p.id, p.user, p.id)
	}
	v.incs[p.inc] = struct{}{}
}

// tellLocked sends a peer event about peer to every connected local peer of
// the call but peer itself and skip. The caller holds s.mu.
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

// rememberLeft notes a member's leave in cst.left, forgetting old ones. The
// caller holds s.mu.
func (cst *callState) rememberLeft(member string) {
	now := time.Now()
	for m, t := range cst.left {
		if now.Sub(t) > leftMemory {
			delete(cst.left, m)
		}
	}
	cst.left[member] = now
}

// touch notes a presence event about a peer identity, forgetting old ones.
// The caller holds s.mu.
func (cst *callState) touch(id string) {
	now := time.Now()
	if len(cst.touched) > 64 {
		for m, t := range cst.touched {
			if now.Sub(t) > leftMemory {
				delete(cst.touched, m)
			}
		}
	}
	cst.touched[id] = now
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
	s, cst := h.s, h.cst
	s.mu.Lock()
	defer s.mu.Unlock()
	cst.touch(id)
	v := cst.view[id]
	if e.Join {
		// A member that Redis lost and its node put back may have been
		// reaped, with a leave, meanwhile: its join counts again.
		delete(cst.left, e.Member.Session)
		if v == nil {
			v = &viewPeer{user: e.Member.User, incs: make(map[string]struct{})}
			cst.view[id] = v
			s.tellLocked(cst, "join", id, e.Member.User, "")
		}
		v.incs[inc] = struct{}{}
		return
	}
	// A leave is remembered even for a member this node does not know
	// yet: a join's snapshot may still list it.
	cst.rememberLeft(e.Member.Session)
	if v == nil {
		return
	}
	delete(v.incs, inc)
	if len(v.incs) == 0 {
		delete(cst.view, id)
		s.tellLocked(cst, "leave", id, v.user, "")
	}
}

// HandleResync reads the call's members again, since join and leave events
// may have been missed while the bus was away. Peers that joined are added
// at once; peers that are missing are taken as gone only after
// Config.ResyncDelay, when every live node has renewed its members (a Redis
// that restarted empty has none until then).
func (h *callHandler) HandleResync(string) {
	s := h.s
	s.work.push(func(ctx context.Context) { h.resync(ctx, false) })
	time.AfterFunc(s.cfg.ResyncDelay, func() {
		s.work.push(func(ctx context.Context) { h.resync(ctx, true) })
	})
}

// resync compares the view with the call's presence: it adds the peers
// and incarnations that are present and, with leaves, drops those that are
// not. A peer with a presence event since the read is left as the event
// made it, and members seen leaving are not added back.
func (h *callHandler) resync(ctx context.Context, leaves bool) {
	s, cst := h.s, h.cst
	cst.ops.Lock()
	defer cst.ops.Unlock()
	if !cst.subscribed {
		return
	}
	read := time.Now()
	page, err := s.bus.Presence(ctx, cst.room, fanout.PresenceQuery{Limit: fanout.MaxPresenceLimit})
	if err != nil {
		s.log.Debug("call resync failed", "call", cst.name, "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := make(map[string]*viewPeer)
	for _, m := range page.Members {
		id, inc, ok := splitMember(m.Session)
		if _, gone := cst.left[m.Session]; !ok || gone {
			continue
		}
		v := now[id]
		if v == nil {
			v = &viewPeer{user: m.User, incs: make(map[string]struct{})}
			now[id] = v
		}
		v.incs[inc] = struct{}{}
	}
	stale := func(id string) bool { return cst.touched[id].After(read) }
	for id, v := range now {
		if stale(id) {
			continue
		}
		cur := cst.view[id]
		switch {
		case cur == nil:
			cst.view[id] = v
			s.tellLocked(cst, "join", id, v.user, "")
		case leaves && cst.locals[id] == nil:
			cur.incs = v.incs
		default:
			for inc := range v.incs {
				cur.incs[inc] = struct{}{}
			}
		}
	}
	if !leaves {
		return
	}
	for id, v := range cst.view {
		if now[id] == nil && cst.locals[id] == nil && !stale(id) {
			delete(cst.view, id)
			s.tellLocked(cst, "leave", id, v.user, "")
		}
	}
}
