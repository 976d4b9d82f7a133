package signaling

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/parley-rt/parley/fanout"
)

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
	v, there := p.call.view[to]
	key := ""
	if there {
		key = peerKey(v)
	}
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
	b := make([]byte, 0, len(out)+len(call)+len(p.id)+len(key)+48)
	b = append(b, byte(env), byte(len(key)))
	b = append(b, key...)
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
	s.deliverWith(p, b, false)
}

// deliverHeldLocked delivers what was held for a resumed peer: part of the
// answer to its join, so it does not count against its live bound.
func (s *Service) deliverHeldLocked(p *localPeer, b []byte) {
	s.deliverWith(p, b, true)
}

func (s *Service) deliverWith(p *localPeer, b []byte, held bool) {
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
			switch {
			case p.successor != nil:
				s.deliverWith(p.successor, b, held)
			case p.moved:
				s.repost(p, b)
			default:
				s.metrics.dropped.Inc()
			}
			return
		}
		_, frame, _ := cutSignal(b)
		ok := p.conn != nil
		if ok && held {
			ok = p.conn.Answer(frame)
		} else if ok {
			ok = p.conn.Deliver(frame)
		}
		if !ok {
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
		if p.gone && p.successor != nil {
			s.deliverWith(p.successor, b, held)
			return
		}
		peer, user, _ := strings.Cut(string(b[1:]), "\n")
		if p.conn != nil && !p.gone {
			s.sendPeerLocked(p, "resume", peer, user)
		}
	}
}

// peerKey is the key of the peer v, as its incarnations tell, or "" when
// they tell two (an earlier peer of the same identity that is leaving, and
// a new one); the caller holds s.mu.
func peerKey(v *viewPeer) string {
	key := ""
	for inc := range v.incs {
		k, _, _ := strings.Cut(inc, ".")
		if key != "" && k != key {
			return ""
		}
		key = k
	}
	return key
}

// cutSignal splits a signal's payload (envSignal or envAnswer, the key of
// the peer it was sent to as the sender knew it, or "", then the frame for
// the client) into key and frame.
func cutSignal(b []byte) (key string, frame []byte, ok bool) {
	if len(b) < 2 || len(b) < 2+int(b[1]) {
		return "", nil, false
	}
	n := int(b[1])
	return string(b[2 : 2+n]), b[2+n:], true
}

// repost puts a signal that reached this node after its peer left it back
// on the bus, for wherever the peer is now.
func (s *Service) repost(p *localPeer, b []byte) {
	addr := peerAddr(p.call.name, p.id)
	if !s.work.push(func(ctx context.Context) {
		if err := s.bus.Post(ctx, addr, b, s.cfg.HeldSignals, s.cfg.HoldFor); err != nil {
			s.metrics.dropped.Inc()
			s.log.Debug("signal for a peer that moved not held", "call", p.call.name, "peer", p.id, "err", err)
		}
	}) {
		s.metrics.dropped.Inc()
	}
}

// incarnationWord is the bus's delivery to an incarnation's address: the
// peer rejoined on another node, and this one lets it go.
func (s *Service) incarnationWord(p *localPeer, b []byte) {
	if len(b) != 1 || b[0] != envTaken {
		return
	}
	s.work.push(func(ctx context.Context) {
		p.call.ops.Lock()
		defer p.call.ops.Unlock()
		defer s.dropIfIdle(p.call)
		s.release(ctx, p, true)
	})
}
