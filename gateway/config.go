package gateway

import (
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"path"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-rt/parley/fanout"
)

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	// Bus carries messages between nodes; required.
	Bus fanout.Bus
	// Logger receives the gateway's logs; nil discards them.
	Logger *slog.Logger
	// Registerer gets the gateway's metrics; nil registers none.
	Registerer prometheus.Registerer
	// NodeID names this node in welcome frames, logs and presence; zero means
	// a random one.
	NodeID string

	// JWTSecret verifies HS256 tokens. JWTPublicKey verifies RS256, ES256 or
	// EdDSA tokens. With neither, the gateway is in dev mode: every user is an
	// anonymous one with a random id.
	JWTSecret    []byte
	JWTPublicKey crypto.PublicKey
	// APIKey lets backends use the HTTP API with `Authorization: Bearer <key>`.
	APIKey string
	// Origins are the browser origins allowed on WebSocket and SSE, as host
	// patterns (path.Match syntax, e.g. "*.example.com"); empty means the
	// request's own host only.
	Origins []string

	// PingInterval is how often an idle session gets a ping; zero means 25s.
	PingInterval time.Duration
	// PongTimeout is how long a WebSocket client has to answer a ping; zero
	// means 10s.
	PongTimeout time.Duration
	// WriteTimeout bounds one write to a client; zero means 10s. A
	// WebSocket write gets at least nine tenths of it (wire.go).
	WriteTimeout time.Duration
	// HandshakeTimeout bounds reading a request's headers; zero means 10s.
	HandshakeTimeout time.Duration
	// DrainTimeout is the window over which Shutdown spreads reconnects; zero
	// means 10s.
	DrainTimeout time.Duration

	// MaxFrameSize bounds a client frame in bytes; zero means 64 KiB.
	MaxFrameSize int64
	// QueueLimit bounds a session's outgoing queue in bytes; past it the
	// session is closed as a slow consumer. Zero means 1 MiB.
	QueueLimit int
	// PublishRate and PublishBurst limit each session's publishes per second;
	// zero means 50 and 100.
	PublishRate  float64
	PublishBurst int
	// ReplayLimit bounds the history one subscribe replays, in bytes of
	// encoded frames: a resume that would replay more is answered
	// recovered: false (the client reloads instead). It also bounds a
	// session's replay waiting to be written, past which the session's next
	// command waits. Zero means 4 MiB.
	ReplayLimit int
	// PresenceRooms are room patterns (a trailing * is a wildcard, as in
	// token permissions) whose every subscriber is in the room's presence.
	// In other rooms only sessions that subscribe with presence: true are.
	PresenceRooms []string
	// MaxRoomsPerSession bounds a session's subscriptions; zero means 100.
	MaxRoomsPerSession int
	// MaxConnsPerIP bounds concurrent WebSocket and SSE connections from one
	// client address; zero means 1000.
	MaxConnsPerIP int
	// TrustedProxies are the load balancers and reverse proxies whose
	// X-Forwarded-For header (or, without one, Forwarded) is believed: a
	// request from one of them comes from the nearest address in the
	// forwarded chain that is not itself a trusted proxy. Empty means none:
	// the TCP peer is the client and those headers are ignored. Prefixes must
	// have no bits set past their mask (ParseTrustedProxies builds them).
	TrustedProxies []netip.Prefix

	// NoPoller gives every WebSocket session a reader goroutine for its
	// whole life, and every SSE stream a goroutine that waits for its client
	// to go away, instead of the poller that holds idle connections without
	// one (epoll, on Linux; see poll.go and sse_stream.go). Other systems
	// have no poller.
	NoPoller bool
	// MaxReaders bounds the poller's readers started at once, each reading
	// and handling the frames of one connection that has something to say;
	// connections that become readable past it wait for one. A reader busy
	// for more than 100 ms (a command waiting on the bus, half a frame)
	// leaves the bound, so slow sessions never stall the others. Zero
	// means 4096.
	MaxReaders int
	// FrameTimeout bounds the wait for the rest of a client frame that has
	// begun to arrive (and, with the poller, for a data frame after a
	// client's WebSocket ping): past it the session is closed. Zero means
	// PingInterval plus PongTimeout: a client that answers the heartbeat
	// sends a data frame within that time, so no healthy one is cut.
	FrameTimeout time.Duration

	// ICE is what clients are told of STUN and TURN, by GET
	// /v1/ice-servers and in join acks; nil means the endpoint answers 404
	// and join acks carry no iceServers.
	ICE *ICE
	// Calls configures WebRTC call signaling.
	Calls CallConfig

	// Stats answers GET /v1/stats, the node's live figures, for requests
	// that send APIKey in their Authorization header; any other request
	// gets 401. Without an APIKey the path is not served at all (404): the
	// figures are for operators, never for anonymous users on a public
	// address. Nil means no such endpoint.
	Stats http.Handler

	now func() time.Time
}

// CallConfig configures WebRTC call signaling (package signaling). Zero
// values take signaling's defaults.
type CallConfig struct {
	// MaxPeers bounds the peers of one call; zero means 8.
	MaxPeers int
	// Grace is how long a peer whose connection dropped stays in its call
	// waiting for a rejoin; zero means 10s.
	Grace time.Duration
	// SignalRate limits each connection's signals per second; zero means
	// 100 (with a burst of four times that).
	SignalRate float64
	// HideHostCandidates keeps clients' host candidates (their own
	// addresses) from other peers.
	HideHostCandidates bool
	// HoldFor is how long signals held for an away peer are kept after the
	// last one; zero means signaling's default (the grace period, or 30s if
	// longer). A peer whose node died can rejoin until its presence lease
	// lapses, so this should outlast the bus's presence TTL.
	HoldFor time.Duration
	// ResyncDelay is how long after the bus reconnects the calls' members
	// are checked for peers that left meanwhile: a third of the bus's
	// presence TTL and a little more. Zero means 11s.
	ResyncDelay time.Duration
}

func (c *Config) setDefaults() error {
	if c.Bus == nil {
		return errors.New("gateway: Config.Bus is required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.NodeID == "" {
		c.NodeID = "node-" + randomID(4)
	}
	def := func(d *time.Duration, v time.Duration, name string) error {
		if *d < 0 {
			return fmt.Errorf("gateway: Config.%s is negative", name)
		}
		if *d == 0 {
			*d = v
		}
		return nil
	}
	for _, d := range []struct {
		p    *time.Duration
		v    time.Duration
		name string
	}{
		{&c.PingInterval, 25 * time.Second, "PingInterval"},
		{&c.PongTimeout, 10 * time.Second, "PongTimeout"},
		{&c.WriteTimeout, 10 * time.Second, "WriteTimeout"},
		{&c.HandshakeTimeout, 10 * time.Second, "HandshakeTimeout"},
		{&c.DrainTimeout, 10 * time.Second, "DrainTimeout"},
	} {
		if err := def(d.p, d.v, d.name); err != nil {
			return err
		}
	}
	if err := def(&c.FrameTimeout, c.PingInterval+c.PongTimeout, "FrameTimeout"); err != nil {
		return err
	}
	if c.MaxFrameSize == 0 {
		c.MaxFrameSize = 64 << 10
	}
	if c.QueueLimit == 0 {
		c.QueueLimit = 1 << 20
	}
	if c.PublishRate == 0 {
		c.PublishRate = 50
	}
	if c.PublishBurst == 0 {
		c.PublishBurst = 100
	}
	if c.MaxRoomsPerSession == 0 {
		c.MaxRoomsPerSession = 100
	}
	if c.ReplayLimit == 0 {
		c.ReplayLimit = 4 << 20
	}
	if c.MaxConnsPerIP == 0 {
		c.MaxConnsPerIP = 1000
	}
	if c.MaxReaders == 0 {
		c.MaxReaders = 4096
	}
	switch {
	case c.MaxFrameSize < 0:
		return errors.New("gateway: Config.MaxFrameSize is negative")
	case c.QueueLimit < 0:
		return errors.New("gateway: Config.QueueLimit is negative")
	case c.PublishRate < 0 || c.PublishBurst < 0:
		return errors.New("gateway: Config.PublishRate and PublishBurst must not be negative")
	case c.ReplayLimit < 0:
		return errors.New("gateway: Config.ReplayLimit is negative")
	case c.MaxRoomsPerSession < 0:
		return errors.New("gateway: Config.MaxRoomsPerSession is negative")
	case c.MaxConnsPerIP < 0:
		return errors.New("gateway: Config.MaxConnsPerIP is negative")
	case c.MaxReaders < 0:
		return errors.New("gateway: Config.MaxReaders is negative")
	case c.PingInterval < 10*time.Millisecond:
		return fmt.Errorf("gateway: Config.PingInterval %s is below 10ms", c.PingInterval)
	}
	if err := validTrustedProxies(c.TrustedProxies); err != nil {
		return err
	}
	for _, p := range c.PresenceRooms {
		if err := CheckRoomPattern(p); err != nil {
			return fmt.Errorf("gateway: Config.PresenceRooms: %w", err)
		}
	}
	for _, p := range c.Origins {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("gateway: Config.Origins: bad pattern %q: %w", p, err)
		}
	}
	if c.now == nil {
		c.now = time.Now
	}
	return nil
}

// CheckRoomPattern checks a room pattern as permissions and PresenceRooms
// take it: a room name, or a prefix of one followed by a trailing *.
func CheckRoomPattern(p string) error {
	if p == "*" || validRoom(p) || strings.HasSuffix(p, "*") && validRoom(strings.TrimSuffix(p, "*")) {
		return nil
	}
	return fmt.Errorf("%q is not a room name or a room prefix ending in *", p)
}
