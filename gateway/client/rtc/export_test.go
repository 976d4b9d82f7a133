package rtc

import "github.com/pion/webrtc/v4"

// Hold keeps p's Run from reading call events until release is called.
// Called during Run, it returns once Run holds them.
func Hold(p *Peer) (release func()) {
	ch := make(chan struct{})
	p.mu.Lock()
	running := p.running
	p.mu.Unlock()
	if !running {
		p.hold = ch
	} else {
		held := make(chan struct{})
		p.inbox.post(func() { p.hold = ch; close(held) })
		<-held
	}
	return func() { close(ch) }
}

// Collisions returns how many crossing offers the link toward remote rolled
// its own offer back for, and how many it ignored.
func Collisions(p *Peer, remote string) (rollbacks, ignored int) {
	l := p.link(remote)
	if l == nil {
		return 0, 0
	}
	return int(l.rollbacks.Load()), int(l.ignored.Load())
}

// Sent returns how many signals toward remote the gateway took on the
// current link.
func Sent(p *Peer, remote string) int {
	l := p.link(remote)
	if l == nil {
		return 0
	}
	return int(l.sent.Load())
}

// LocalUfrag returns the ICE username fragment of the current local
// description toward remote.
func LocalUfrag(p *Peer, remote string) string {
	l := p.link(remote)
	if l == nil {
		return ""
	}
	d := l.pc.CurrentLocalDescription()
	if d == nil {
		return ""
	}
	return iceUfrag(d.SDP)
}

// States returns the signaling and ICE connection states toward remote.
func States(p *Peer, remote string) (webrtc.SignalingState, webrtc.ICEConnectionState) {
	l := p.link(remote)
	if l == nil {
		return webrtc.SignalingStateUnknown, webrtc.ICEConnectionStateUnknown
	}
	return l.pc.SignalingState(), l.pc.ICEConnectionState()
}

// RemoteUfrag returns the ICE username fragment of the current remote
// description from remote.
func RemoteUfrag(p *Peer, remote string) string {
	l := p.link(remote)
	if l == nil {
		return ""
	}
	d := l.pc.CurrentRemoteDescription()
	if d == nil {
		return ""
	}
	return iceUfrag(d.SDP)
}
