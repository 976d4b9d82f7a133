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
	// Answer is Deliver for frames that answer the client's own command
	// (a join's ack, the signals held for a resumed peer): they are bounded
	// by what the command asked for, so they never count as a slow
	// consumer.
	Answer(frame []byte) bool
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
	// ResyncDelay is how long after the bus reconnects a call's members are
	// compared with its presence for peers that left meanwhile: the nodes'
	// lease renewals must have put back what a restarted Redis lost. Zero
	// means 11 s (a third of the default presence TTL, and a second).
	ResyncDelay time.Duration
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
	if c.SignalRate < 0 || c.Grace < 0 || c.HoldFor < 0 || c.ResyncDelay < 0 {
		return errors.New("signaling: Config.SignalRate, Grace, HoldFor and ResyncDelay must not be negative")
	}
	if c.ResyncDelay == 0 {
		c.ResyncDelay = 11 * time.Second
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

// connState is what signaling keeps of a connection, from its first join
// until Disconnect.
type connState struct {
	peers   map[string]*localPeer // by call
	limiter *rate.Limiter         // signals
	joins   *rate.Limiter
}

// callState is a call with at least one peer on this node.
type callState struct {
	name string
	room string // the bus room
	// ops serializes this node's joins, leaves and bus subscription of the
	// call; it is held across bus calls, never with Service.mu.
	ops sync.Mutex
	// view is who is in the call as this node knows it: peer identity to
	// user and incarnations present. A peer is in it while any of its
	// incarnations is.
	view map[string]*viewPeer
	// locals are the call's peers on this node, by identity.
	locals     map[string]*localPeer
	subscribed bool
	// left remembers members whose leave event this node has seen (bus
	// member to when): a join whose snapshot was read just before they
	// left must not bring them back into the view, or list them in its ack.
	left map[string]time.Time
	// touched says when a presence event last came for a peer identity:
	// a resync's snapshot read before then is older than the view.
	touched map[string]time.Time
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
	// key is the peer's secret, the same in every incarnation: its resume
	// token is "<id>.<key>". inc is "<key>.<random>", this incarnation's.
	key  string
	inc  string
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
	// gone: the peer is no longer held here. moved says it lives on
	// elsewhere (a resume), so what still reaches it here follows it: to
	// successor when that is on this node, else through the bus.
	gone      bool
	moved     bool
	successor *localPeer
}

func (p *localPeer) member(node string) fanout.Member {
	return fanout.Member{User: p.user, Session: p.id + "." + p.inc, Node: node}
}

// token is the peer's resume token.
func (p *localPeer) token() string { return p.id + "." + p.key }

// New returns a Service; Close stops it.
func New(cfg Config) (*Service, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		cfg: cfg, bus: cfg.Bus, log: cfg.Logger,
		ctx: ctx, cancel: cancel,
		calls: make(map[string]*callState),
		conns: make(map[Conn]*connState),
		work:  newWorkQueue(maxTasks),
	}
	s.metrics = newMetrics(cfg.Registerer, s.countCalls, s.countPeers)
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

// isIncarnationOf reports whether inc is an incarnation of the peer whose
// secret is key.
func isIncarnationOf(inc, key string) bool {
	k, _, ok := strings.Cut(inc, ".")
	return ok && k == key
}

// Payloads on peer and incarnation addresses start with one of these.
const (
	envSignal = 's' // then the recipient's key (see cutSignal) and a signal frame for the client
	envAnswer = 'S' // the same, for a signal that carries an SDP answer
	envResume = 'r' // then "<peer>\n<user>": that peer of the call resumed
	envTaken  = 't' // to an incarnation: the peer rejoined elsewhere
)

// randomHex returns n random bytes in hex. A peer's key is 16 of them:
// resume tokens carry it, and no client is shown it otherwise (call rooms
// are no rooms a client can list), so a token cannot be guessed.
func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
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
