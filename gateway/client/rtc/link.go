package rtc

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/parley-rt/parley/gateway/client"
)

// link is the PeerConnection toward one remote peer. Its negotiation state
// belongs to Run's goroutine: pion's callbacks post their work there.
type link struct {
	remote string
	// polite is this peer's role toward remote: a polite peer rolls its
	// own offer back when offers cross, an impolite one ignores the
	// other's.
	polite   bool
	pc       *webrtc.PeerConnection
	dc       *webrtc.DataChannel
	open     chan struct{} // closed when dc opens
	openOnce sync.Once
	closed   atomic.Bool
	// cfgMu orders SetConfiguration with GetStats: pion writes the
	// configuration that GetStats reads without a lock of its own.
	cfgMu sync.Mutex

	// Perfect negotiation (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example).
	// pion's calls are synchronous and all run on Run's goroutine, so
	// makingOffer is true only inside negotiate and
	// settingRemoteAnswerPending only around onDescription's
	// SetRemoteDescription: both are false whenever an offer arrives.
	// They are kept so that the code reads as the pattern does.
	makingOffer                bool
	ignoreOffer                bool
	settingRemoteAnswerPending bool

	// restartWanted: an ICE restart is due as soon as the signaling state
	// is stable. offerIsRestart: the local offer under way restarts ICE.
	restartWanted  bool
	offerIsRestart bool
	// iceState is the PeerConnection's ICE state as Run last saw it;
	// iceTimer restarts ICE if it stays disconnected or failed.
	iceState webrtc.ICEConnectionState
	iceTimer *time.Timer
	// mid and mLine are those of the last local candidate, for the
	// end-of-candidates signal.
	mid   *string
	mLine *uint16

	// rollbacks and ignored count offers that crossed this peer's own:
	// rolled back (polite) or ignored (impolite).
	rollbacks, ignored atomic.Int32
	// sent counts the signals of this link the gateway took.
	sent atomic.Int32
}

// newLink makes the PeerConnection toward remote, with its data channel,
// whose addition makes it negotiate. It runs on Run's goroutine.
func (p *Peer) newLink(remote string) (*link, error) {
	i := slices.IndexFunc(p.call.Peers(), func(cp client.CallPeer) bool { return cp.Session == remote })
	if i < 0 {
		return nil, fmt.Errorf("%w: %s", ErrUnknownPeer, remote)
	}
	polite := p.call.Peers()[i].Polite
	pc, err := p.api.NewPeerConnection(p.config())
	if err != nil {
		return nil, fmt.Errorf("rtc: new PeerConnection: %w", err)
	}
	l := &link{remote: remote, polite: polite, pc: pc, open: make(chan struct{})}
	// The handlers are set before the data channel is added, whose
	// negotiationneeded they must see.
	pc.OnNegotiationNeeded(func() { p.inbox.post(func() { p.negotiate(l) }) })
	pc.OnICECandidate(func(c *webrtc.ICECandidate) { p.inbox.post(func() { p.sendCandidate(l, c) }) })
	pc.OnICEConnectionStateChange(func(s webrtc.ICEConnectionState) {
		p.inbox.post(func() { p.iceStateChanged(l, s) })
	})
	negotiated, id := true, uint16(0)
	dc, err := pc.CreateDataChannel(ChannelLabel, &webrtc.DataChannelInit{Negotiated: &negotiated, ID: &id})
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("rtc: data channel: %w", err)
	}
	l.dc = dc
	dc.OnOpen(func() {
		l.openOnce.Do(func() { close(l.open) })
		p.mu.Lock()
		p.notifyLocked()
		p.mu.Unlock()
	})
	p.mu.Lock()
	p.links[remote] = l
	p.notifyLocked()
	p.mu.Unlock()
	p.log.Debug("peer connection", "peer", remote, "polite", polite)
	if p.opts.OnChannel != nil {
		p.opts.OnChannel(remote, dc)
	}
	return l, nil
}

// closeLink closes l's PeerConnection and forgets it.
func (p *Peer) closeLink(l *link) {
	if l.closed.Swap(true) {
		return
	}
	if l.iceTimer != nil {
		l.iceTimer.Stop()
	}
	p.mu.Lock()
	if p.links[l.remote] == l {
		delete(p.links, l.remote)
	}
	p.notifyLocked()
	p.mu.Unlock()
	if err := l.pc.GracefulClose(); err != nil {
		p.log.Debug("closing a peer connection", "peer", l.remote, "err", err)
	}
}

// send queues a signal for l's remote peer.
func (p *Peer) send(l *link, d signalData) {
	p.out.push(outgoing{l: l, data: d})
}

// negotiate is negotiationneeded's handler: it makes and sends an offer,
// the first one of the pair or one that restarts ICE, when the signaling
// state is stable. pion may fire negotiationneeded for a PeerConnection that
// then answered the remote's offer; it negotiated then, so nothing is sent.
func (p *Peer) negotiate(l *link) {
	if l.closed.Load() || l.pc.SignalingState() != webrtc.SignalingStateStable {
		return
	}
	first := l.pc.CurrentRemoteDescription() == nil
	if !first && !l.restartWanted {
		return
	}
	restart := !first && l.restartWanted
	l.makingOffer = true
	offer, err := l.pc.CreateOffer(&webrtc.OfferOptions{ICERestart: restart})
	if err == nil {
		err = l.pc.SetLocalDescription(offer)
	}
	l.makingOffer = false
	if err != nil {
		p.log.Warn("making an offer failed", "peer", l.remote, "restart", restart, "err", err)
		return
	}
	l.restartWanted, l.offerIsRestart = false, restart
	p.log.Debug("offer", "peer", l.remote, "restart", restart)
	p.send(l, signalData{SDP: l.pc.LocalDescription()})
}

// restartICE restarts ICE on l as soon as the signaling state is stable.
func (p *Peer) restartICE(l *link) {
	if l.closed.Load() {
		return
	}
	l.restartWanted = true
	p.negotiate(l)
}

// resync makes up for signals that a reconnect (of this peer or the
// remote) may have lost. An offer under way is sent again: the remote peer
// answers it if it never got it, and again if its answer was lost. The
// impolite peer of the pair then restarts ICE (the polite one leaves it to
// the other, so that the two do not offer at once).
func (p *Peer) resync(l *link) {
	if l.closed.Load() {
		return
	}
	if l.pc.SignalingState() == webrtc.SignalingStateHaveLocalOffer {
		p.send(l, signalData{SDP: l.pc.LocalDescription()})
	}
	if !l.polite {
		p.restartICE(l)
	}
}

// rollback takes back l's local offer, which crossed offer, so that offer
// can be applied; it returns the link to apply it to. pion has no rollback
// (pion/webrtc#2133), so this is done by other means. A PeerConnection that
// has never been negotiated is replaced by a new one, which loses nothing:
// OnChannel is called with its data channel. One that has been is brought
// back to stable by taking the remote offer as the answer to its own, which
// never comes (the impolite peer ignores that offer): both carry the one
// data channel section, and the offer has the remote's current ICE
// credentials and candidates, as that answer would have, so its own offer
// (an ICE restart) is complete too. The offer is then applied as an offer.
func (p *Peer) rollback(l *link, offer webrtc.SessionDescription) (*link, error) {
	n := l.rollbacks.Load() + 1
	if l.pc.CurrentRemoteDescription() == nil {
		p.closeLink(l)
		nl, err := p.newLink(l.remote)
		if err != nil {
			return nil, err
		}
		nl.rollbacks.Store(n)
		return nl, nil
	}
	if err := l.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: offer.SDP}); err != nil {
		return nil, err
	}
	l.rollbacks.Store(n)
	l.offerIsRestart, l.restartWanted = false, false
	return l, nil
}

// onSignal handles a signal from remote.
func (p *Peer) onSignal(from string, data json.RawMessage) {
	desc, cand, err := parseSignal(data)
	if err != nil {
		p.log.Warn("unreadable signal", "peer", from, "err", err)
		return
	}
	l := p.link(from)
	if l == nil {
		if desc == nil || desc.Type != webrtc.SDPTypeOffer {
			p.log.Debug("signal for no peer connection", "peer", from)
			return
		}
		// The remote peer connects: this one answers.
		if l, err = p.newLink(from); err != nil {
			p.log.Warn("answering failed", "peer", from, "err", err)
			return
		}
	}
	if desc != nil {
		p.onDescription(l, *desc)
		return
	}
	if err := l.pc.AddICECandidate(*cand); err != nil && !l.ignoreOffer {
		p.log.Debug("remote candidate refused", "peer", from, "err", err)
	}
}

// onDescription applies a remote description, as perfect negotiation does:
// of two crossing offers the impolite peer ignores the other's, and the
// polite one rolls its own back and answers.
func (p *Peer) onDescription(l *link, desc webrtc.SessionDescription) {
	pc := l.pc
	if desc.Type == webrtc.SDPTypeRollback {
		// The remote peer took back an offer this one has not answered;
		// pion answers at once, so there is none.
		return
	}
	if desc.Type == webrtc.SDPTypeAnswer && pc.SignalingState() != webrtc.SignalingStateHaveLocalOffer && !l.settingRemoteAnswerPending {
		// An answer to no offer under way repeats one already taken: the
		// remote peer answered an offer sent again after a resume twice.
		p.log.Debug("repeated answer ignored", "peer", l.remote)
		return
	}
	if desc.Type == webrtc.SDPTypeAnswer && answersEarlierOffer(pc, desc) {
		p.log.Debug("answer to an earlier offer ignored", "peer", l.remote)
		return
	}
	readyForOffer := !l.makingOffer && (pc.SignalingState() == webrtc.SignalingStateStable || l.settingRemoteAnswerPending)
	offerCollision := desc.Type == webrtc.SDPTypeOffer && !readyForOffer
	l.ignoreOffer = !l.polite && offerCollision
	if l.ignoreOffer {
		l.ignored.Add(1)
		p.log.Debug("crossing offer ignored", "peer", l.remote)
		return
	}
	if offerCollision {
		// A browser rolls back by itself in setRemoteDescription; pion
		// needs it done.
		nl, err := p.rollback(l, desc)
		if err != nil {
			p.log.Warn("rollback failed", "peer", l.remote, "err", err)
			return
		}
		l, pc = nl, nl.pc
		p.log.Debug("crossing offer: own offer rolled back", "peer", l.remote)
	}
	var before string
	if cur := pc.CurrentRemoteDescription(); cur != nil {
		before = iceUfrag(cur.SDP)
	}
	l.settingRemoteAnswerPending = desc.Type == webrtc.SDPTypeAnswer
	err := pc.SetRemoteDescription(desc)
	l.settingRemoteAnswerPending = false
	if err != nil {
		p.log.Warn("remote description refused", "peer", l.remote, "type", desc.Type, "err", err)
		return
	}
	switch desc.Type {
	case webrtc.SDPTypeOffer:
		if before != "" && iceUfrag(desc.SDP) != before {
			// The offer restarts ICE: no need for another.
			l.restartWanted = false
		}
		answer, err := pc.CreateAnswer(nil)
		if err == nil {
			err = pc.SetLocalDescription(answer)
		}
		if err != nil {
			p.log.Warn("answering failed", "peer", l.remote, "err", err)
			return
		}
		p.send(l, signalData{SDP: pc.LocalDescription()})
	case webrtc.SDPTypeAnswer:
		l.offerIsRestart = false
	}
	// A restart asked for during the exchange goes now.
	p.negotiate(l)
}

// answersEarlierOffer reports whether answer carries the current remote ICE
// credentials while pc's pending local offer restarts ICE (its credentials
// differ from the current local description's). The answer to an ICE
// restart has new credentials (RFC 8829 5.10), so such an answer is to an
// earlier offer. That happens after a resume: resync sends the offer under
// way again and the impolite peer wants an ICE restart; the remote peer
// answers both the offer the node held for it and the copy, the first
// answer lets the restart's offer go, and the copy's answer comes while that
// offer is pending. Taken as the restart's answer, it would leave this side
// with the remote's old credentials, pion would then refuse the restart's
// real answer, and the two sides would hold different credentials: the new
// ICE session would fail.
func answersEarlierOffer(pc *webrtc.PeerConnection, answer webrtc.SessionDescription) bool {
	pending, local, remote := pc.PendingLocalDescription(), pc.CurrentLocalDescription(), pc.CurrentRemoteDescription()
	if pending == nil || local == nil || remote == nil {
		return false
	}
	return iceUfrag(pending.SDP) != iceUfrag(local.SDP) && iceUfrag(answer.SDP) == iceUfrag(remote.SDP)
}

// sendCandidate trickles a local candidate to l's remote peer; nil is the
// end of candidates.
func (p *Peer) sendCandidate(l *link, c *webrtc.ICECandidate) {
	if l.closed.Load() {
		return
	}
	ci := &candidateInit{SDPMid: l.mid, SDPMLineIndex: l.mLine}
	if c != nil {
		init := c.ToJSON()
		ci = &candidateInit{Candidate: init.Candidate, SDPMid: init.SDPMid, SDPMLineIndex: init.SDPMLineIndex}
		l.mid, l.mLine = init.SDPMid, init.SDPMLineIndex
	}
	if ld := l.pc.LocalDescription(); ld != nil {
		if u := iceUfrag(ld.SDP); u != "" {
			ci.UsernameFragment = &u
		}
	}
	p.send(l, signalData{Candidate: ci})
}

// iceStateChanged restarts ICE when it fails, or stays disconnected for
// iceRestartDelay: at once (or after that delay) on the impolite side, and
// a delay later on the polite side, which does nothing if the other side's
// restart has begun by then.
func (p *Peer) iceStateChanged(l *link, s webrtc.ICEConnectionState) {
	if l.closed.Load() {
		return
	}
	p.log.Debug("ICE state", "peer", l.remote, "state", s)
	l.iceState = s
	if l.iceTimer != nil {
		l.iceTimer.Stop()
		l.iceTimer = nil
	}
	var delay time.Duration
	switch s {
	case webrtc.ICEConnectionStateFailed:
	case webrtc.ICEConnectionStateDisconnected:
		delay = iceRestartDelay
	default:
		return
	}
	if l.polite {
		delay += iceRestartDelay
	}
	if delay == 0 {
		p.restartICE(l)
		return
	}
	l.iceTimer = time.AfterFunc(delay, func() {
		p.inbox.post(func() {
			if l.iceState == webrtc.ICEConnectionStateFailed || l.iceState == webrtc.ICEConnectionStateDisconnected {
				p.restartICE(l)
			}
		})
	})
}
