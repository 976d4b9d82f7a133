package rtc

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"

	"github.com/pion/webrtc/v4"

	"github.com/parley-rt/parley/gateway/client"
)

// signalData is the data of a signal, as PROTOCOL.md defines it: a session
// description or an ICE candidate.
type signalData struct {
	SDP       *webrtc.SessionDescription `json:"sdp,omitempty"`
	Candidate *candidateInit             `json:"candidate,omitempty"`
}

// candidateInit is an RTCIceCandidateInit whose absent members are left
// out; an empty Candidate is end-of-candidates.
type candidateInit struct {
	Candidate        string  `json:"candidate"`
	SDPMid           *string `json:"sdpMid,omitempty"`
	SDPMLineIndex    *uint16 `json:"sdpMLineIndex,omitempty"`
	UsernameFragment *string `json:"usernameFragment,omitempty"`
}

// parseSignal reads a signal's data. A candidate that is null, or whose
// candidate string is empty, is end-of-candidates (an empty Candidate).
func parseSignal(raw json.RawMessage) (desc *webrtc.SessionDescription, cand *webrtc.ICECandidateInit, err error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		return nil, nil, err
	}
	if b, ok := members["sdp"]; ok {
		var d webrtc.SessionDescription
		if err := json.Unmarshal(b, &d); err != nil {
			return nil, nil, err
		}
		return &d, nil, nil
	}
	if b, ok := members["candidate"]; ok {
		var c webrtc.ICECandidateInit
		if string(b) != "null" {
			if err := json.Unmarshal(b, &c); err != nil {
				return nil, nil, err
			}
		}
		return nil, &c, nil
	}
	return nil, nil, errors.New("rtc: signal is neither sdp nor candidate")
}

// iceUfrag returns the first ICE username fragment of an SDP body, or "".
func iceUfrag(sdp string) string {
	for line := range strings.Lines(sdp) {
		if v, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), "a=ice-ufrag:"); ok {
			return v
		}
	}
	return ""
}

// outgoing is a signal waiting to be sent to a link's remote peer.
type outgoing struct {
	l    *link
	data signalData
}

// outbox is the FIFO of signals to send; the loop that negotiates never
// waits for the node, so that it always reads the call's events.
type outbox struct {
	mu    sync.Mutex
	queue []outgoing
	wake  chan struct{} // capacity 1
}

func (o *outbox) push(s outgoing) {
	o.mu.Lock()
	o.queue = append(o.queue, s)
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *outbox) take() []outgoing {
	o.mu.Lock()
	defer o.mu.Unlock()
	q := o.queue
	o.queue = nil
	return q
}

// sendLoop sends the outbox's signals in order, one at a time, until ctx
// ends or the call does. A signal for a link closed meanwhile is dropped. A
// signal that fails is logged and not sent again: one lost to a reconnect
// is made up for by the ICE restart after the rejoin, and one refused
// (a peer that left) has nobody to go to.
func (p *Peer) sendLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.out.wake:
		}
		for _, s := range p.out.take() {
			if s.l.closed.Load() {
				continue
			}
			err := p.call.Signal(ctx, s.l.remote, s.data)
			var serr *client.ServerError
			switch {
			case err == nil:
				s.l.sent.Add(1)
			case ctx.Err() != nil, errors.Is(err, client.ErrClosed), p.call.Err() != nil:
				return
			case errors.As(err, &serr):
				p.log.Warn("signal refused", "peer", s.l.remote, "code", serr.Code, "err", serr.Message)
			default:
				p.log.Debug("signal lost", "peer", s.l.remote, "err", err)
			}
		}
	}
}
