package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// ErrCallEnded is the reason a call ended when the application left it:
// Call.Err returns it after Leave, and Signal returns it once the call has
// ended that way.
var ErrCallEnded = errors.New("client: call ended")

// callEventBuffer bounds the events of a call waiting for the application.
const callEventBuffer = 256

// CallPeer is another peer of a call.
type CallPeer struct {
	// Session is the peer's id in the call, the `to` of a signal for it.
	Session string `json:"session"`
	// User is the peer's user.
	User string `json:"user"`
	// Polite is this peer's role toward that peer in perfect negotiation:
	// of any two peers, exactly one is polite.
	Polite bool `json:"polite"`
}

// ICEServer is a STUN or TURN server from a join ack, in the shape of
// WebRTC's RTCIceServer.
type ICEServer struct {
	URLs       []string `json:"urls"`
	Username   string   `json:"username,omitempty"`
	Credential string   `json:"credential,omitempty"`
}

// JoinAck is the node's answer to a join.
type JoinAck struct {
	// Session is this peer's id in the call. A resumed join keeps it.
	Session string
	// Peers are the other peers in the call, each with this peer's role
	// toward it.
	Peers []CallPeer
	// Polite is true when this peer is polite toward every peer in Peers;
	// the role toward each peer is that peer's CallPeer.Polite.
	Polite bool
	// Resume is the token that rejoins the call as the same peer after a
	// reconnect; the client sends it by itself.
	Resume string
	// Resumed says that a join with a resume token kept the peer's
	// identity. It is false for a first join, and for a rejoin that came
	// after the grace period: a new peer, with a new Session.
	Resumed bool
	// Relay asks the peer to use TURN relays only.
	Relay bool
	// ICEServers are the STUN and TURN servers to use, with TURN
	// credentials valid for ICETTL (zero when the ack did not say).
	ICEServers []ICEServer
	ICETTL     time.Duration
}

// joinAckWire is a join ack as the node sends it.
type joinAckWire struct {
	Session    string      `json:"session"`
	Peers      []CallPeer  `json:"peers"`
	Polite     bool        `json:"polite"`
	Resume     string      `json:"resume"`
	Resumed    bool        `json:"resumed"`
	Relay      bool        `json:"relay"`
	ICEServers []ICEServer `json:"iceServers"`
	ICETTL     float64     `json:"ice_ttl"`
}

func parseJoinAck(raw []byte) (JoinAck, error) {
	var w joinAckWire
	if err := json.Unmarshal(raw, &w); err != nil {
		return JoinAck{}, fmt.Errorf("client: bad join ack: %w", err)
	}
	if w.Session == "" {
		return JoinAck{}, errors.New("client: bad join ack: no session")
	}
	return JoinAck{
		Session:    w.Session,
		Peers:      w.Peers,
		Polite:     w.Polite,
		Resume:     w.Resume,
		Resumed:    w.Resumed,
		Relay:      w.Relay,
		ICEServers: w.ICEServers,
		ICETTL:     time.Duration(w.ICETTL * float64(time.Second)),
	}, nil
}

// CallEventKind says what a CallEvent carries.
type CallEventKind int

const (
	// CallSignal carries From and Data: a signal from peer From, as the
	// peer sent it ({"sdp": ...} or {"candidate": ...}).
	CallSignal CallEventKind = iota
	// CallPeerJoined carries Peer: a peer joined the call.
	CallPeerJoined
	// CallPeerLeft carries Peer: a peer left the call, or was away longer
	// than the grace period.
	CallPeerLeft
	// CallPeerResumed carries Peer: a peer reconnected and rejoined as
	// itself. Signals sent to it or by it just before may have been lost,
	// so an ICE restart toward it is in order.
	CallPeerResumed
	// CallRejoined carries Resumed and Peers: the client reconnected and
	// joined the call again. With Resumed, this peer kept its identity
	// (its ID is the same), and the signals the node held for it come
	// after this event; an ICE restart toward each peer is in order. Without
	// it, the grace period had passed: the Call has a new ID and the peers
	// in Peers, the others saw this peer leave, and the application starts
	// over.
	CallRejoined
	// CallClosed carries Err: the call ended without Leave (a rejoin was
	// refused for good, or the connection ended with NoReconnect). It is
	// the last event; Events is closed after it.
	CallClosed
)

// CallEvent is something that happened in a call.
type CallEvent struct {
	Kind CallEventKind
	// From and Data are a signal's sender and payload.
	From string
	Data json.RawMessage
	// Peer is the peer that joined, left or resumed.
	Peer CallPeer
	// Resumed and Peers describe a rejoin: whether the identity was kept,
	// and the peers in the call at that moment.
	Resumed bool
	Peers   []CallPeer
	// Err is why the call closed.
	Err error
}

// Call is this client's membership of a WebRTC call: a room of peers that
// signal to each other through the node. It survives reconnects: the client
// rejoins it with its resume token and reports that with CallRejoined. Its
// methods may be called from any goroutine.
type Call struct {
	c      *Client
	name   string
	events chan CallEvent
	// ended is closed when the call ends; endOnce guards it.
	ended   chan struct{}
	endOnce sync.Once
	// sendMu is held while an event is sent on events, and to close it.
	sendMu sync.Mutex

	// Guarded by c.mu.
	joined bool // the node acknowledged the first join
	ack    JoinAck
	peers  []CallPeer
	err    error
	// awaiting: a join or rejoin is on its way; early holds the call's
	// frames that came before its ack (a node may send the signals it held
	// for the peer, or a peer that joined at the same time, first), for
	// after the ack (and CallRejoined).
	awaiting bool
	early    []CallEvent
}

// Join joins a call and keeps it joined across reconnects. Its events come
// on the Call's Events, which the application must read (see Call.Events).
// A call can be joined once at a time. A join whose connection drops before
// the ack is sent again on the next connection; the node drops the first
// one's peer after its grace period.
func (c *Client) Join(ctx context.Context, call string) (*Call, error) {
	cl := &Call{
		c:        c,
		name:     call,
		events:   make(chan CallEvent, callEventBuffer),
		ended:    make(chan struct{}),
		awaiting: true,
	}
	c.mu.Lock()
	switch {
	case c.callsEnded:
		c.mu.Unlock()
		return nil, ErrClosed
	case c.calls[call] != nil:
		c.mu.Unlock()
		return nil, fmt.Errorf("client: already in call %s", call)
	}
	c.calls[call] = cl
	c.mu.Unlock()
	for {
		conn, err := c.live(ctx)
		if err == nil {
			_, err = c.command(ctx, conn, joinFrame(call, ""), c.onJoinAck(cl, false))
			if errors.Is(err, ErrDisconnected) {
				// What came for the join on that connection is gone with it.
				c.mu.Lock()
				cl.early = nil
				c.mu.Unlock()
				continue
			}
			if err == nil {
				c.mu.Lock()
				joined := cl.joined
				c.mu.Unlock()
				if joined {
					return cl, nil
				}
				err = errors.New("client: bad join ack")
				c.sendLeave(conn, call)
			}
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				// The join may have reached the node: leave, so that no
				// peer stays behind on this connection.
				c.sendLeave(conn, call)
			}
		}
		c.forgetCall(cl)
		cl.end(err, false)
		return nil, err
	}
}

// sendLeave leaves a call on conn, waiting a little for the reply; it is
// for a join that did not complete.
func (c *Client) sendLeave(conn *websocket.Conn, call string) {
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	if _, err := c.command(ctx, conn, map[string]any{"type": "leave", "call": call}, nil); err != nil {
		c.log.Debug("leaving a call not joined", "call", call, "err", err)
	}
}

// joinFrame is the join command for call, with a resume token if not empty.
func joinFrame(call, resume string) map[string]any {
	f := map[string]any{"type": "join", "call": call}
	if resume != "" {
		f["resume"] = resume
	}
	return f
}

// onJoinAck returns what the read loop does with a join ack for cl: it sets
// the call's identity, peers and resume token before any later frame of the
// call is handled and, for a rejoin, sends CallRejoined, so that the event
// comes before the signals the node held for the peer.
func (c *Client) onJoinAck(cl *Call, rejoin bool) func(raw []byte) {
	return func(raw []byte) {
		ack, err := parseJoinAck(raw)
		if err != nil {
			c.log.Warn("unreadable join ack", "call", cl.name, "err", err)
			return
		}
		c.mu.Lock()
		if c.calls[cl.name] != cl {
			c.mu.Unlock()
			return
		}
		// A resumed peer was told of no join or leave while it was away:
		// they are told now, from the difference of the peer lists.
		var changes []CallEvent
		if rejoin && ack.Resumed {
			changes = peerChanges(cl.peers, ack.Peers)
		}
		cl.joined, cl.ack, cl.peers = true, ack, slices.Clone(ack.Peers)
		early := cl.early
		cl.awaiting, cl.early = false, nil
		for _, ev := range early {
			cl.applyLocked(ev)
		}
		c.mu.Unlock()
		if rejoin {
			cl.emit(CallEvent{Kind: CallRejoined, Resumed: ack.Resumed, Peers: slices.Clone(ack.Peers)})
		}
		for _, ev := range changes {
			cl.emit(ev)
		}
		for _, ev := range early {
			cl.emit(ev)
		}
	}
}

// peerChanges are the events that take a call's peers from before to
// after: a leave for each peer gone, a join for each new one.
func peerChanges(before, after []CallPeer) []CallEvent {
	in := func(list []CallPeer, session string) bool {
		return slices.ContainsFunc(list, func(p CallPeer) bool { return p.Session == session })
	}
	var evs []CallEvent
	for _, p := range before {
		if !in(after, p.Session) {
			evs = append(evs, CallEvent{Kind: CallPeerLeft, Peer: p})
		}
	}
	for _, p := range after {
		if !in(before, p.Session) {
			evs = append(evs, CallEvent{Kind: CallPeerJoined, Peer: p})
		}
	}
	return evs
}

// forgetCall removes cl from the client's calls; it reports whether it was
// there.
func (c *Client) forgetCall(cl *Call) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls[cl.name] != cl {
		return false
	}
	delete(c.calls, cl.name)
	return true
}

// rejoinCalls joins every call again on a new connection with its resume
// token. A call the node refuses for now (transient) is kept: rejoinCalls
// closes conn and returns the refusal, and run reconnects with backoff and
// tries again. A call refused for good is closed with CallClosed. A call
// still waiting for its first ack is left to its own Join, which retries.
func (c *Client) rejoinCalls(conn *websocket.Conn) error {
	c.mu.Lock()
	var calls []*Call
	for _, cl := range c.calls {
		if cl.joined {
			calls = append(calls, cl)
		}
	}
	c.mu.Unlock()
	for _, cl := range calls {
		c.mu.Lock()
		tok := cl.ack.Resume
		skip := c.calls[cl.name] != cl
		cl.awaiting = !skip
		c.mu.Unlock()
		if skip {
			continue
		}
		_, err := c.command(c.ctx, conn, joinFrame(cl.name, tok), c.onJoinAck(cl, true))
		var serr *ServerError
		switch {
		case err == nil:
		case transient(err):
			c.log.Debug("rejoin refused for now", "call", cl.name, "err", err)
			conn.Close(websocket.StatusGoingAway, "rejoin refused")
			return fmt.Errorf("client: joining %s again: %w", cl.name, err)
		case errors.As(err, &serr):
			c.log.Warn("rejoin refused", "call", cl.name, "err", err)
			if c.forgetCall(cl) {
				c.closeCall(cl, err)
			}
		default:
			return err
		}
	}
	return nil
}

// closeCall ends cl with err and sends CallClosed, from a goroutine of its
// own since the application may be slow to read it. Close stops it.
func (c *Client) closeCall(cl *Call, err error) {
	c.goroutines.Add(1)
	go func() {
		defer c.goroutines.Done()
		cl.end(err, true)
	}()
}

// endCalls ends every call once run is over: with ErrClosed after Close,
// and otherwise (NoReconnect) with ErrDisconnected and a CallClosed. Join
// fails from then on. It runs on run's goroutine, so the closeCall
// goroutines it starts are counted before run's.
func (c *Client) endCalls() {
	c.mu.Lock()
	c.callsEnded = true
	calls := c.calls
	c.calls = make(map[string]*Call)
	closing := c.closing
	c.mu.Unlock()
	for _, cl := range calls {
		if closing {
			cl.end(ErrClosed, false)
		} else {
			c.closeCall(cl, ErrDisconnected)
		}
	}
}

// handleCallFrame handles a signal or peer frame for call; it runs on the
// read loop, which waits while the call's Events is full.
func (c *Client) handleCallFrame(typ, call, event string, peer CallPeer, from string, data json.RawMessage) {
	var ev CallEvent
	switch {
	case typ == "signal":
		ev = CallEvent{Kind: CallSignal, From: from, Data: data}
	case event == "join":
		ev = CallEvent{Kind: CallPeerJoined, Peer: peer}
	case event == "leave":
		ev = CallEvent{Kind: CallPeerLeft, Peer: peer}
	case event == "resume":
		ev = CallEvent{Kind: CallPeerResumed, Peer: peer}
	default:
		c.log.Debug("unknown peer event", "call", call, "event", event)
		return
	}
	c.mu.Lock()
	cl := c.calls[call]
	switch {
	case cl == nil:
		c.mu.Unlock()
		c.log.Debug("frame for a call not joined", "type", typ, "call", call)
		return
	case cl.awaiting:
		cl.early = append(cl.early, ev)
		c.mu.Unlock()
		return
	}
	cl.applyLocked(ev)
	c.mu.Unlock()
	cl.emit(ev)
}

// applyLocked updates the call's peers with a peer event. c.mu is held.
func (cl *Call) applyLocked(ev CallEvent) {
	i := slices.IndexFunc(cl.peers, func(p CallPeer) bool { return p.Session == ev.Peer.Session })
	switch ev.Kind {
	case CallPeerJoined, CallPeerResumed:
		if i >= 0 {
			cl.peers[i] = ev.Peer
		} else {
			cl.peers = append(cl.peers, ev.Peer)
		}
	case CallPeerLeft:
		if i >= 0 {
			cl.peers = slices.Delete(cl.peers, i, i+1)
		}
	}
}

// emit sends ev to the application, waiting while Events is full, until
// the call ends or the client is closed.
func (cl *Call) emit(ev CallEvent) {
	cl.sendMu.Lock()
	defer cl.sendMu.Unlock()
	select {
	case <-cl.ended:
		return
	default:
	}
	select {
	case cl.events <- ev:
	case <-cl.ended:
	case <-cl.c.closed:
	}
}

// end ends the call with err, once: it sends CallClosed if final (waiting
// for the application, or for the client's Close), then closes Events.
func (cl *Call) end(err error, final bool) {
	first := false
	cl.endOnce.Do(func() {
		first = true
		cl.c.mu.Lock()
		cl.err = err
		cl.c.mu.Unlock()
		close(cl.ended) // an emit waiting for the application gives up
	})
	if !first {
		return
	}
	cl.sendMu.Lock()
	defer cl.sendMu.Unlock()
	if final {
		select {
		case cl.events <- CallEvent{Kind: CallClosed, Err: err}:
		case <-cl.c.closed:
		}
	}
	close(cl.events)
}

// Name returns the call's name, as given to Join.
func (cl *Call) Name() string { return cl.name }

// ID returns this peer's id in the call (the `from` of its signals). It
// changes only after a CallRejoined that did not resume.
func (cl *Call) ID() string {
	cl.c.mu.Lock()
	defer cl.c.mu.Unlock()
	return cl.ack.Session
}

// Peers returns the other peers in the call. The list follows the frames
// the client has read, which may be ahead of the events the application has
// received from Events.
func (cl *Call) Peers() []CallPeer {
	cl.c.mu.Lock()
	defer cl.c.mu.Unlock()
	return slices.Clone(cl.peers)
}

// Ack returns the last join ack: the first join's, or the last rejoin's. Its
// Peers are those of that moment; Peers gives the current ones.
func (cl *Call) Ack() JoinAck {
	cl.c.mu.Lock()
	defer cl.c.mu.Unlock()
	a := cl.ack
	a.Peers = slices.Clone(a.Peers)
	a.ICEServers = slices.Clone(a.ICEServers)
	return a
}

// Err returns nil while the call goes on, and then why it ended:
// ErrCallEnded after Leave, ErrClosed after the client's Close, or what
// CallClosed carried.
func (cl *Call) Err() error {
	cl.c.mu.Lock()
	defer cl.c.mu.Unlock()
	return cl.err
}

// Events returns the call's events, in the order the node sent them. It is
// closed when the call ends: after Leave, after the client's Close (the
// events still buffered can be read first), or after a CallClosed.
//
// The channel holds 256 events. The client never drops a call event: when
// the channel is full, the goroutine that reads the connection waits for
// the application, and while it waits nothing else of the connection is
// read, neither room messages nor the replies to commands, and a node that
// has waited long enough for its pings closes the connection. An
// application must therefore read its calls' events promptly, and must not
// wait for a command (Signal included) on the goroutine that reads them
// when it may be 256 events behind: it can hand its signals to another
// goroutine, as package rtc does.
func (cl *Call) Events() <-chan CallEvent { return cl.events }

// Signal relays data to peer to, on whichever node it is connected. Data
// given as []byte or json.RawMessage is sent as it is (it must be valid
// JSON); any other value is encoded with encoding/json. A signal for a peer
// that is away is kept for it until it comes back. Signal waits for a
// connection while the client reconnects; a signal whose connection drops
// before the reply fails with ErrDisconnected and may or may not have been
// relayed. A refusal (an unknown peer, data that is not a signal) is a
// *ServerError.
func (cl *Call) Signal(ctx context.Context, to string, data any) error {
	raw, err := encodeData(data)
	if err != nil {
		return err
	}
	select {
	case <-cl.ended:
		return cl.Err()
	default:
	}
	conn, err := cl.c.live(ctx)
	if err != nil {
		return err
	}
	_, err = cl.c.command(ctx, conn, map[string]any{"type": "signal", "call": cl.name, "to": to, "data": raw}, nil)
	return err
}

// Leave leaves the call: Events is closed, and the other peers see this
// peer leave. A call the client is not connected for is left on the node
// once its grace period passes.
func (cl *Call) Leave(ctx context.Context) error {
	c := cl.c
	mine := c.forgetCall(cl)
	cl.end(ErrCallEnded, false)
	c.mu.Lock()
	connected := c.conn != nil
	c.mu.Unlock()
	if !mine || !connected {
		// Refused, closed, or away: the next connection does not rejoin it.
		return nil
	}
	conn, err := c.live(ctx)
	if err != nil {
		return err
	}
	_, err = c.command(ctx, conn, map[string]any{"type": "leave", "call": cl.name}, nil)
	var serr *ServerError
	switch {
	case errors.Is(err, ErrDisconnected):
		// The next connection does not rejoin the call.
		return nil
	case errors.As(err, &serr) && serr.Code == "not_found":
		// Not in the call on this connection.
		return nil
	}
	return err
}
