package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Errors a Client returns.
var (
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("client: closed")
	// ErrDisconnected is returned for a command whose connection dropped
	// before its reply; a publish with a key can be retried safely.
	ErrDisconnected = errors.New("client: disconnected before the reply")
	// ErrInvalidJSON is returned by Publish and Call.Signal for data given
	// as JSON bytes ([]byte or json.RawMessage) that are not valid JSON;
	// nothing is sent.
	ErrInvalidJSON = errors.New("client: data is not valid JSON")
)

// Options configure a Client. Zero values take the documented defaults.
type Options struct {
	// URL is the node's WebSocket endpoint, such as ws://localhost:8080/v1/ws.
	URL string
	// URLs are more endpoints of the same cluster (nodes sharing Redis).
	// The client connects to URL first; when a connection attempt fails, or
	// a connection ends, the next attempt goes to the next endpoint of URL
	// and URLs, in turn. A client resumes its rooms on any node of a
	// cluster, so a node that dies costs it one reconnect.
	URLs []string
	// Token is the JWT sent as ?token=; empty in dev mode.
	Token string
	// TokenSource, when set, is called before every connection for the
	// token to send instead of Token: a node ends a session when its token
	// expires, and the reconnect needs a fresh one. When the token has an
	// exp claim (read without verifying it: the node does), the client also
	// refreshes it on the live connection ahead of expiry: at 80% of its
	// remaining lifetime, and at least 5 s before exp when it lives that
	// long, it calls TokenSource and sends the new token in a refresh frame,
	// so the session goes on with its subscriptions, no replay and no
	// presence change. The new token must be for the same user. If the
	// refresh fails (TokenSource errs, or the node refuses the token), the
	// session ends when the current token expires, and the client
	// reconnects with a fresh token and resumes, as without refresh.
	TokenSource func(ctx context.Context) (string, error)
	// Header is sent with every handshake (Origin, Authorization, ...).
	Header http.Header
	// Logger receives the client's logs; nil discards them.
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound reconnect delays; zero means 250ms and
	// 10s. Each delay is drawn at random up to the current bound.
	MinBackoff, MaxBackoff time.Duration
	// NoReconnect makes the client stop at the first disconnect.
	NoReconnect bool
	// EventBuffer bounds the room events (messages, presence events, error
	// frames that answer no command) waiting for the application to receive
	// them from Events; zero means 1024. A room whose event finds the bound
	// reached is paused: the client drops its events without moving its
	// position and unsubscribes, then subscribes again from that position once
	// the application has read the waiting events down to half the bound,
	// and the node sends the missed messages from its history. Reading slowly
	// therefore loses no message, and commands complete meanwhile. The package
	// documentation describes the delivery model.
	EventBuffer int
	// ReadLimit bounds one server frame; zero means 4 MiB.
	ReadLimit int64
	// HTTPClient dials the WebSocket; nil means http.DefaultClient.
	HTTPClient *http.Client
}

// Position is a point in a room's stream.
type Position struct {
	Epoch  string `json:"epoch"`
	Offset uint64 `json:"offset"`
}

// Message is one room message.
type Message struct {
	Room   string          `json:"room"`
	Offset uint64          `json:"offset"`
	Epoch  string          `json:"epoch"`
	Data   json.RawMessage `json:"data"`
	From   string          `json:"from,omitempty"`
	TS     int64           `json:"ts"`
}

// Member is a session present in a room.
type Member struct {
	User    string `json:"user"`
	Session string `json:"session"`
	Node    string `json:"node,omitempty"`
}

// Welcome is the server's first frame on a connection.
type Welcome struct {
	Session string `json:"session"`
	Node    string `json:"node"`
	User    string `json:"user"`
	PingMS  int64  `json:"ping_ms"`
}

// SubscribeOptions configure a subscription. The zero value subscribes
// without presence from the room's current position.
type SubscribeOptions struct {
	// Presence asks for the room's presence: the ack carries the first page
	// of its members, and joins and leaves come as EventPresence.
	Presence bool
	// Since, when set, starts the subscription after that position: every
	// later message still in the node's history is delivered first, in
	// order, and the ack's Recovered says whether history reached back that
	// far. A position saved from a Message (its Epoch and Offset) or from
	// Position resumes where the application left off.
	Since *Position
}

// SubscribeAck is the server's answer to a subscribe.
type SubscribeAck struct {
	Epoch     string `json:"epoch"`
	Offset    uint64 `json:"offset"`
	Recovered bool   `json:"recovered"`
	// Members, MembersTotal and MembersNext answer a subscribe with
	// presence: the first page of the room's members (at most 100, ordered
	// by session id), how many members the room has, and the cursor of the
	// next page for Presence, empty when Members holds them all.
	Members      []Member `json:"members,omitempty"`
	MembersTotal int      `json:"members_total,omitempty"`
	MembersNext  string   `json:"members_next,omitempty"`
}

// PublishAck is the server's answer to a publish.
type PublishAck struct {
	Epoch     string `json:"epoch"`
	Offset    uint64 `json:"offset"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// ServerError is an error frame answering a command.
type ServerError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *ServerError) Error() string { return "client: server error " + e.Code + ": " + e.Message }

// EventKind says what an Event carries.
type EventKind int

const (
	// EventMessage carries Message: a room message not delivered before.
	EventMessage EventKind = iota
	// EventPresence carries Presence: a join or a leave in a room subscribed
	// with presence, or a sync (see Presence.Event).
	EventPresence
	// EventConnected carries Welcome: a connection is up and every room has
	// been subscribed again, except a paused one (see the package
	// documentation), which is subscribed once the application has read
	// enough of Events.
	EventConnected
	// EventDisconnected carries Err: the connection dropped; the client
	// reconnects unless NoReconnect.
	EventDisconnected
	// EventLost carries Room and Position: after a reconnect the room could
	// not be recovered (the epoch changed or history moved on), so messages
	// may have been missed; the application should reload the room's state.
	EventLost
	// EventError carries Err: an error frame that answered no command, or
	// (with Room) a room that could not be subscribed again after a
	// reconnect. If Err is a *ServerError whose code may pass (internal,
	// over_capacity, rate_limited, draining: the node's message bus is
	// coming back, say), the room is kept with its position: the client
	// closes the connection and reconnects with backoff (to the next
	// endpoint, if there are several; unless NoReconnect), and subscribes
	// the room again from where it was, losing nothing still in history.
	// Any other refusal (forbidden, bad_room, ...) is final: the room is no
	// longer subscribed.
	EventError
	// EventDraining carries After: the node is draining and asked the client
	// to reconnect after about After (its `reconnect` frame). The client
	// reconnects that long after the notice, once the node closes the
	// connection; EventDisconnected and EventConnected follow.
	EventDraining
)

// Presence is a change in a room's members.
type Presence struct {
	Room string `json:"room"`
	// Event is "join" or "leave" (with User and Session), or "sync": the
	// room was subscribed again, after a reconnect or a pause (see the
	// package documentation), so joins and leaves may have been missed;
	// Client.AllMembers gives the current members.
	Event   string `json:"event"`
	User    string `json:"user"`
	Session string `json:"session"`
}

// Event is something the server sent or the connection did.
type Event struct {
	Kind     EventKind
	Message  Message
	Presence Presence
	Welcome  Welcome
	Room     string
	Position Position
	Err      error
	After    time.Duration
}

// sub is the client's side of a subscription; its fields are guarded by
// Client.mu.
type sub struct {
	presence bool
	// pos is the last position queued for the application (or set by an
	// ack): a subscribe again resumes after it, and a message at or before
	// it is a duplicate.
	pos  Position
	seen bool // pos has been set by Since, an ack or a message
	// delivered is the position of the last message handed to Events, or
	// the subscription's starting position; Position reports it.
	delivered Position
	acked     bool // the server acknowledged the subscription once
	// paused: an event of the room found the queue full; the room's events
	// are dropped and pos stays put until resync subscribes it again.
	paused bool
	// stopped: the paused room is not subscribed on the node any more: the
	// connection it was subscribed on is gone, or resync unsubscribed it to
	// subscribe it again.
	stopped bool
}

type reply struct {
	raw []byte
	err error
}

// call is a command waiting for its reply.
type call struct {
	ch chan reply
	// onAck, when set, runs on the read loop with the ack before any later
	// frame is handled, so that state the ack sets (a room's position)
	// is in place before the messages that follow it.
	onAck func(raw []byte)
}

// Client is a connection to a Parley node that survives reconnects. Its
// methods may be called from any goroutine, including the one that reads
// Events.
type Client struct {
	opts   Options
	log    *slog.Logger
	events chan Event
	// endpoints are URL and URLs; next is the one the next attempt dials
	// (owned by Dial, then by run).
	endpoints []string
	next      int

	// ctx ends with Close, or when the connection ends for good
	// (NoReconnect); commands then fail with ErrClosed.
	ctx    context.Context
	cancel context.CancelFunc
	// closed is closed by Close: the dispatcher stops at once.
	closed    chan struct{}
	closeOnce sync.Once
	// goroutines are run, dispatch and resync; Close waits for them.
	goroutines sync.WaitGroup

	// limit bounds the room events queued; lowWater is where paused rooms
	// are subscribed again.
	limit, lowWater int
	// wake tells dispatch that the queue has an event or run has ended;
	// resyncWake tells resync that a room was paused or the queue drained.
	wake, resyncWake chan struct{}

	mu      sync.Mutex
	conn    *websocket.Conn
	welcome Welcome
	subs    map[string]*sub
	pending map[string]*call
	nextID  uint64
	ready   chan struct{} // closed once connected; replaced on disconnect
	queue   eventQueue
	// roomOps serialises the room commands (subscribe, unsubscribe) of
	// Subscribe, Unsubscribe and resync. resubscribe does not take it: a
	// command waiting for a connection must not stop one from coming up.
	roomOps sync.Mutex
	// resyncWanted: some room is paused; dispatch wakes resync when the
	// queue drains.
	resyncWanted bool
	runDone      bool // run has returned: dispatch ends once the queue is empty
	// calls are the calls joined or being joined; callsEnded is set once
	// run is over, when every call has ended.
	calls      map[string]*Call
	callsEnded bool
	closing    bool // Close was called
}

// Dial connects to the node and returns a Client that stays connected until
// Close. The first connection must succeed.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	if opts.URL == "" {
		return nil, errors.New("client: Options.URL is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 250 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 10 * time.Second
	}
	if opts.EventBuffer <= 0 {
		opts.EventBuffer = 1024
	}
	if opts.ReadLimit <= 0 {
		opts.ReadLimit = 4 << 20
	}
	c := &Client{
		opts:       opts,
		log:        opts.Logger.With("component", "parley-client"),
		events:     make(chan Event),
		closed:     make(chan struct{}),
		limit:      opts.EventBuffer,
		lowWater:   opts.EventBuffer / 2,
		wake:       make(chan struct{}, 1),
		resyncWake: make(chan struct{}, 1),
		subs:       make(map[string]*sub),
		pending:    make(map[string]*call),
		ready:      make(chan struct{}),
		calls:      make(map[string]*Call),
	}
	c.endpoints = append([]string{opts.URL}, opts.URLs...)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	// The first connection tries each endpoint once.
	var (
		conn *websocket.Conn
		w    Welcome
		exp  time.Time
		err  error
	)
	for range c.endpoints {
		if conn, w, exp, err = c.connect(ctx); err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		c.cancel()
		return nil, err
	}
	// Welcome answers from the moment Dial returns.
	c.welcome = w
	c.goroutines.Add(3)
	go c.run(conn, w, exp)
	go c.dispatch()
	go c.resync()
	return c, nil
}

// Events returns the client's events, in the order they happened; the
// package documentation describes how they are delivered. It is closed after
// Close, or, with NoReconnect, once the connection has ended and every event
// has been received.
func (c *Client) Events() <-chan Event { return c.events }

// Welcome returns the current connection's welcome.
func (c *Client) Welcome() Welcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.welcome
}

// Close closes the connection and stops reconnecting; events not yet
// received from Events are discarded. It may be called from the goroutine
// that reads Events, and more than once.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.cancel()
	c.closeOnce.Do(func() { close(c.closed) })
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		conn.Close(websocket.StatusNormalClosure, "")
	}
	c.goroutines.Wait()
	return nil
}

// dialURL returns the URL to dial and, for a token from TokenSource, when
// the client should have refreshed it (zero: never).
func (c *Client) dialURL(ctx context.Context) (string, time.Time, error) {
	endpoint := c.endpoints[c.next%len(c.endpoints)]
	tok := c.opts.Token
	var exp time.Time
	if c.opts.TokenSource != nil {
		var err error
		if tok, err = c.opts.TokenSource(ctx); err != nil {
			return "", time.Time{}, fmt.Errorf("client: token: %w", err)
		}
		exp = tokenExpiry(tok)
	}
	if tok == "" {
		return endpoint, exp, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("client: URL: %w", err)
	}
	q := u.Query()
	q.Set("token", tok)
	u.RawQuery = q.Encode()
	return u.String(), exp, nil
}

// connect dials and reads the welcome. exp is the token's expiry when the
// client refreshes it on this connection, else zero.
func (c *Client) connect(ctx context.Context) (conn *websocket.Conn, w Welcome, exp time.Time, err error) {
	target, exp, err := c.dialURL(ctx)
	if err != nil {
		return nil, Welcome{}, time.Time{}, err
	}
	conn, w, err = c.handshake(ctx, target)
	if err != nil {
		c.next++
		return nil, Welcome{}, time.Time{}, err
	}
	return conn, w, exp, nil
}

// handshake dials target and reads the welcome.
func (c *Client) handshake(ctx context.Context, target string) (*websocket.Conn, Welcome, error) {
	conn, _, err := websocket.Dial(ctx, target, &websocket.DialOptions{
		Subprotocols: []string{"parley.v1"},
		HTTPHeader:   c.opts.Header,
		HTTPClient:   c.opts.HTTPClient,
	})
	if err != nil {
		return nil, Welcome{}, fmt.Errorf("client: dial: %w", err)
	}
	conn.SetReadLimit(c.opts.ReadLimit)
	_, b, err := conn.Read(ctx)
	if err != nil {
		conn.CloseNow()
		return nil, Welcome{}, fmt.Errorf("client: reading welcome: %w", err)
	}
	var f struct {
		Type string `json:"type"`
		Welcome
		ServerError
	}
	if err := json.Unmarshal(firstLine(b), &f); err != nil {
		conn.CloseNow()
		return nil, Welcome{}, fmt.Errorf("client: bad welcome: %w", err)
	}
	switch f.Type {
	case "welcome":
		return conn, f.Welcome, nil
	case "error":
		conn.CloseNow()
		return nil, Welcome{}, &ServerError{Code: f.Code, Message: f.Message}
	default:
		conn.CloseNow()
		return nil, Welcome{}, fmt.Errorf("client: first frame is %q, not welcome", f.Type)
	}
}

func firstLine(b []byte) []byte {
	for i, c := range b {
		if c == '\n' {
			return b[:i]
		}
	}
	return b
}

// run owns the connection: it reads until the connection drops, then
// reconnects with backoff and resubscribes, until Close (or the first
// disconnect, with NoReconnect). While a connection whose token expires at
// exp is up, it refreshes the token on it.
func (c *Client) run(conn *websocket.Conn, w Welcome, exp time.Time) {
	defer c.goroutines.Done()
	defer func() {
		c.mu.Lock()
		c.runDone = true
		c.mu.Unlock()
		poke(c.wake)
	}()
	// Once run is over (NoReconnect), calls waiting for a connection fail
	// with ErrClosed instead of waiting for one that never comes, and the
	// calls joined end.
	defer c.endCalls()
	defer c.cancel()
	backoff := c.opts.MinBackoff
	for {
		c.mu.Lock()
		c.conn, c.welcome = conn, w
		c.mu.Unlock()
		resumeErr := make(chan error, 1)
		go func() { resumeErr <- c.resubscribe(conn) }()
		refreshCtx, stopRefresh := context.WithCancel(c.ctx)
		refreshDone := make(chan struct{})
		go func() {
			defer close(refreshDone)
			if !exp.IsZero() {
				c.refreshLoop(refreshCtx, conn, exp)
			}
		}()
		reconnectAt, readErr := c.readLoop(conn, w)
		stopRefresh()
		conn.CloseNow()
		c.failPending()
		resumed := <-resumeErr
		<-refreshDone
		if transient(resumed) {
			// resubscribe closed the connection: say why.
			readErr = resumed
		}
		c.disconnected(readErr)
		if c.ctx.Err() != nil || c.opts.NoReconnect {
			return
		}
		c.next++
		if resumed == nil {
			// The connection was ready (every room subscribed again): the
			// backoff starts over.
			backoff = c.opts.MinBackoff
		}
		wait := time.Duration(rand.Int64N(int64(backoff) + 1))
		if resumed != nil {
			// It was not: a node that refuses a room again and again, or
			// closes connections before they are ready, is tried ever
			// less often rather than in a tight loop.
			backoff = min(backoff*2, c.opts.MaxBackoff)
		}
		if !reconnectAt.IsZero() {
			// The node said when to come back, counted from its notice,
			// not from the close that follows it.
			wait = max(0, time.Until(reconnectAt))
		}
		for {
			t := time.NewTimer(wait)
			select {
			case <-c.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
			var err error
			conn, w, exp, err = c.connect(ctx)
			cancel()
			if err == nil {
				break
			}
			c.log.Debug("reconnect failed", "err", err)
			backoff = min(backoff*2, c.opts.MaxBackoff)
			wait = time.Duration(rand.Int64N(int64(backoff) + 1))
		}
	}
}

// Token refresh schedule: a token is refreshed at 80% of its remaining
// lifetime, and at least refreshMargin before its exp when it lives longer
// than that, but never sooner than minRefreshDelay after the last refresh
// (nodes limit refreshes to a few a second).
const (
	refreshMargin   = 5 * time.Second
	minRefreshDelay = time.Second
)

// refreshDelay is how long after now to refresh a token that expires at exp.
func refreshDelay(now, exp time.Time) time.Duration {
	left := exp.Sub(now)
	d := left * 4 / 5
	if left > refreshMargin {
		d = min(d, left-refreshMargin)
	}
	return max(d, minRefreshDelay)
}

// tokenExpiry reads a JWT's exp claim without verifying the token (the node
// does); it is zero for a token that is not a JWT or has no exp.
func tokenExpiry(tok string) time.Time {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp float64 `json:"exp"`
	}
	if json.Unmarshal(b, &claims) != nil || claims.Exp <= 0 || claims.Exp > 1<<40 {
		return time.Time{}
	}
	return time.Unix(int64(claims.Exp), 0)
}

// refreshLoop refreshes conn's token, which expires at exp, ahead of each
// expiry until ctx ends (the connection is gone) or a refresh is refused.
// Then the node ends the session when the token expires, and run reconnects
// with a fresh one.
func (c *Client) refreshLoop(ctx context.Context, conn *websocket.Conn, exp time.Time) {
	for {
		t := time.NewTimer(refreshDelay(time.Now(), exp))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		next, err := c.refresh(ctx, conn)
		var serr *ServerError
		switch {
		case ctx.Err() != nil:
			return
		case errors.As(err, &serr) && serr.Code != "rate_limited":
			c.log.Warn("token refresh refused: the session ends when the token expires", "code", serr.Code, "err", serr.Message)
			return
		case err != nil:
			// Try again, on the current token's schedule.
			c.log.Debug("token refresh failed", "err", err)
		case next.IsZero():
			return
		default:
			exp = next
		}
	}
}

// refresh sends a fresh token from TokenSource on conn and returns its
// expiry as the node acknowledged it.
func (c *Client) refresh(ctx context.Context, conn *websocket.Conn) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tok, err := c.opts.TokenSource(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("client: token: %w", err)
	}
	raw, err := c.command(ctx, conn, map[string]any{"type": "refresh", "token": tok}, nil)
	if err != nil {
		return time.Time{}, err
	}
	var ack struct {
		Expires int64 `json:"expires"`
	}
	if err := json.Unmarshal(raw, &ack); err != nil {
		return time.Time{}, fmt.Errorf("client: bad ack: %w", err)
	}
	if ack.Expires > 0 {
		return time.Unix(ack.Expires, 0), nil
	}
	return tokenExpiry(tok), nil
}

// subscribeFrame is the subscribe command for room.
func subscribeFrame(room string, presence bool, since *Position) map[string]any {
	f := map[string]any{"type": "subscribe", "room": room, "presence": presence}
	if since != nil {
		f["since"] = *since
	}
	return f
}

// transient reports whether err is a refusal that may pass: the node is
// short of something for now (its message bus, room slots, a rate) or going
// away, and the same command may succeed later or on another node.
func transient(err error) bool {
	var serr *ServerError
	if !errors.As(err, &serr) {
		return false
	}
	switch serr.Code {
	case "internal", "over_capacity", "rate_limited", "draining":
		return true
	}
	return false
}

// resubscribe subscribes every room the server had acknowledged again from
// its last position, and joins every call again (rejoinCalls), then reports
// the connection ready. A room the server now refuses for good is dropped
// and reported. A room refused for now (transient) is reported and kept:
// resubscribe closes conn and returns the refusal, and run reconnects with
// backoff and subscribes every room again from its position. A subscription
// still waiting for its first ack is left to its own Subscribe call, which
// retries, and a paused room to resync.
func (c *Client) resubscribe(conn *websocket.Conn) error {
	c.mu.Lock()
	rooms := make(map[string]*sub, len(c.subs))
	for r, s := range c.subs {
		if s.acked {
			rooms[r] = s
		}
	}
	c.mu.Unlock()
	for room, s := range rooms {
		c.mu.Lock()
		var since *Position
		if s.seen {
			since = &Position{Epoch: s.pos.Epoch, Offset: s.pos.Offset}
		}
		skip := c.subs[room] != s || s.paused
		if s.paused {
			// Not subscribed on this connection: resync subscribes it
			// once the queue has drained.
			s.stopped = true
			c.resyncWanted = true
			poke(c.resyncWake)
		}
		presence := s.presence
		c.mu.Unlock()
		if skip {
			continue
		}
		_, err := c.command(c.ctx, conn, subscribeFrame(room, presence, since), c.onSubscribeAck(room, s, true))
		var serr *ServerError
		switch {
		case err == nil:
		case transient(err):
			// Kept, at its position: the rooms are subscribed again on
			// the next connection, as after a dropped one.
			c.notify(Event{Kind: EventError, Room: room, Err: err})
			err = fmt.Errorf("client: subscribing %s again: %w", room, err)
			conn.Close(websocket.StatusGoingAway, "resubscribe refused")
			return err
		case errors.As(err, &serr):
			c.dropRoom(room, s, err)
		default:
			return err
		}
	}
	if err := c.rejoinCalls(conn); err != nil {
		return err
	}
	c.mu.Lock()
	close(c.ready)
	w := c.welcome
	c.mu.Unlock()
	c.notify(Event{Kind: EventConnected, Welcome: w})
	return nil
}

// dropRoom forgets a subscription the server refused to renew and reports
// it.
func (c *Client) dropRoom(room string, s *sub, err error) {
	c.mu.Lock()
	if c.subs[room] == s {
		delete(c.subs, room)
	}
	c.mu.Unlock()
	c.notify(Event{Kind: EventError, Room: room, Err: err})
}

// failPending fails every command waiting for a reply.
func (c *Client) failPending() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, call := range c.pending {
		call.ch <- reply{err: ErrDisconnected}
		delete(c.pending, id)
	}
}

func (c *Client) disconnected(err error) {
	c.failPending()
	c.mu.Lock()
	c.conn = nil
	select {
	case <-c.ready:
		c.ready = make(chan struct{})
	default:
	}
	c.mu.Unlock()
	if c.ctx.Err() == nil {
		c.notify(Event{Kind: EventDisconnected, Err: err})
	}
}

// readLoop reads frames until the connection fails. It returns the error and,
// if the server asked for it, when to reconnect. It never waits for the
// application: events go to the queue.
func (c *Client) readLoop(conn *websocket.Conn, w Welcome) (time.Time, error) {
	idle := time.Duration(w.PingMS)*time.Millisecond + 10*time.Second
	var reconnectAt time.Time
	for {
		ctx, cancel := context.WithTimeout(c.ctx, idle)
		_, b, err := conn.Read(ctx)
		cancel()
		if err != nil {
			return reconnectAt, err
		}
		for len(b) > 0 {
			line := firstLine(b)
			b = b[min(len(line)+1, len(b)):]
			if d, ok := c.handle(conn, line); ok {
				reconnectAt = time.Now().Add(d)
				c.notify(Event{Kind: EventDraining, After: d})
			}
		}
	}
}

// handle processes one server frame; it reports a reconnect notice's delay.
func (c *Client) handle(conn *websocket.Conn, line []byte) (time.Duration, bool) {
	var f struct {
		Type string `json:"type"`
		ID   string `json:"id"`
		Message
		Event   string `json:"event"`
		User    string `json:"user"`
		Session string `json:"session"`
		Code    string `json:"code"`
		Text    string `json:"message"`
		AfterMS int64  `json:"after_ms"`
		Call    string `json:"call"`
		Polite  bool   `json:"polite"`
	}
	if err := json.Unmarshal(line, &f); err != nil {
		c.log.Warn("unreadable frame", "err", err)
		return 0, false
	}
	switch f.Type {
	case "message":
		c.mu.Lock()
		s := c.subs[f.Room]
		dup := s != nil && s.seen && s.pos.Epoch == f.Epoch && f.Offset <= s.pos.Offset
		if s != nil && !dup && c.admit(f.Room, s) {
			s.pos, s.seen = Position{Epoch: f.Epoch, Offset: f.Offset}, true
			c.queue.push(queued{ev: Event{Kind: EventMessage, Message: f.Message}, s: s, pos: s.pos})
			poke(c.wake)
		}
		c.mu.Unlock()
	case "presence":
		c.mu.Lock()
		if s := c.subs[f.Room]; s != nil && c.admit(f.Room, s) {
			c.queue.push(queued{ev: Event{Kind: EventPresence, Presence: Presence{Room: f.Room, Event: f.Event, User: f.User, Session: f.Session}}})
			poke(c.wake)
		}
		c.mu.Unlock()
	case "signal", "peer":
		c.handleCallFrame(f.Type, f.Call, f.Event, CallPeer{Session: f.Session, User: f.User, Polite: f.Polite}, f.From, f.Data)
	case "ping":
		ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
		conn.Write(ctx, websocket.MessageText, []byte(`{"type":"pong"}`))
		cancel()
	case "reconnect":
		return time.Duration(f.AfterMS) * time.Millisecond, true
	case "ack", "error":
		c.mu.Lock()
		call := c.pending[f.ID]
		delete(c.pending, f.ID)
		c.mu.Unlock()
		var r reply
		if f.Type == "error" {
			r.err = &ServerError{Code: f.Code, Message: f.Text}
		} else {
			r.raw = append([]byte(nil), line...)
		}
		switch {
		case call != nil:
			if r.err == nil && call.onAck != nil {
				call.onAck(r.raw)
			}
			call.ch <- r
		case r.err != nil:
			c.mu.Lock()
			if c.queue.len() < c.limit {
				c.queue.push(queued{ev: Event{Kind: EventError, Err: r.err}})
				poke(c.wake)
			} else {
				c.log.Warn("error frame dropped: the event queue is full", "err", r.err)
			}
			c.mu.Unlock()
		}
	}
	return 0, false
}

// command sends a frame with a fresh id on conn and waits for its reply;
// onAck, if not nil, runs on the read loop when the ack arrives.
func (c *Client) command(ctx context.Context, conn *websocket.Conn, f map[string]any, onAck func(raw []byte)) (json.RawMessage, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	c.nextID++
	id := strconv.FormatUint(c.nextID, 10)
	c.mu.Unlock()
	f["id"] = id
	b, err := json.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("client: encoding %v: %w", f["type"], err)
	}
	c.mu.Lock()
	c.pending[id] = &call{ch: ch, onAck: onAck}
	c.mu.Unlock()
	if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return nil, ErrDisconnected
	}
	select {
	case r := <-ch:
		return r.raw, r.err
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return nil, ctx.Err()
	}
}

// live waits until a connection is up and resubscribed.
func (c *Client) live(ctx context.Context) (*websocket.Conn, error) {
	for {
		c.mu.Lock()
		ready, conn := c.ready, c.conn
		c.mu.Unlock()
		select {
		case <-ready:
			if conn != nil {
				return conn, nil
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.ctx.Done():
			return nil, ErrClosed
		}
	}
}

// Subscribe joins a room and keeps it joined across reconnects; its messages
// and presence events come on Events. The zero SubscribeOptions start at the
// room's current position, without presence. A room can be subscribed once
// at a time.
func (c *Client) Subscribe(ctx context.Context, room string, opts SubscribeOptions) (SubscribeAck, error) {
	// Room commands of the application and of resync never interleave.
	c.roomOps.Lock()
	defer c.roomOps.Unlock()
	s := &sub{presence: opts.Presence}
	var since *Position
	if opts.Since != nil {
		since = &Position{Epoch: opts.Since.Epoch, Offset: opts.Since.Offset}
		s.pos, s.delivered, s.seen = *since, *since, true
	}
	c.mu.Lock()
	if _, ok := c.subs[room]; ok {
		c.mu.Unlock()
		return SubscribeAck{}, fmt.Errorf("client: already subscribed to %s", room)
	}
	c.subs[room] = s
	c.mu.Unlock()
	f := subscribeFrame(room, opts.Presence, since)
	for {
		conn, err := c.live(ctx)
		if err == nil {
			var raw json.RawMessage
			raw, err = c.command(ctx, conn, f, c.onSubscribeAck(room, s, false))
			if errors.Is(err, ErrDisconnected) {
				// Not acknowledged, so no reconnect subscribes it: try
				// again on the next connection.
				continue
			}
			if err == nil {
				var ack SubscribeAck
				if err := json.Unmarshal(raw, &ack); err != nil {
					return SubscribeAck{}, fmt.Errorf("client: bad ack: %w", err)
				}
				return ack, nil
			}
		}
		c.mu.Lock()
		if c.subs[room] == s {
			delete(c.subs, room)
		}
		c.mu.Unlock()
		return SubscribeAck{}, err
	}
}

// onSubscribeAck returns what the read loop does with a subscribe ack for s:
// it sets the room's position before any message that follows the ack and
// ends a pause. When the room is subscribed again (resumed: after a
// reconnect or a pause) it reports a room that could not be recovered, and
// a presence sync.
func (c *Client) onSubscribeAck(room string, s *sub, resumed bool) func(raw []byte) {
	return func(raw []byte) {
		var ack SubscribeAck
		if err := json.Unmarshal(raw, &ack); err != nil {
			c.log.Warn("unreadable subscribe ack", "room", room, "err", err)
			return
		}
		top := Position{Epoch: ack.Epoch, Offset: ack.Offset}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.subs[room] != s {
			return
		}
		lost := resumed && s.seen && !ack.Recovered
		if !s.seen || !ack.Recovered {
			// Recovered: the missed messages follow and move the position.
			// Otherwise the room goes on from its current top.
			s.pos, s.seen = top, true
		}
		if !resumed {
			s.delivered = s.pos
		}
		s.acked, s.paused, s.stopped = true, false, false
		if lost {
			c.queue.push(queued{ev: Event{Kind: EventLost, Room: room, Position: top}, s: s, pos: top})
		}
		if resumed && s.presence {
			c.queue.push(queued{ev: Event{Kind: EventPresence, Presence: Presence{Room: room, Event: "sync"}}})
		}
		poke(c.wake)
	}
}

// Unsubscribe leaves a room.
func (c *Client) Unsubscribe(ctx context.Context, room string) error {
	c.roomOps.Lock()
	defer c.roomOps.Unlock()
	c.mu.Lock()
	s := c.subs[room]
	paused := s != nil && s.paused && s.stopped
	delete(c.subs, room)
	c.mu.Unlock()
	conn, err := c.live(ctx)
	if err != nil {
		return err
	}
	_, err = c.command(ctx, conn, map[string]any{"type": "unsubscribe", "room": room}, nil)
	var serr *ServerError
	switch {
	case errors.Is(err, ErrDisconnected):
		// The next connection does not subscribe the room again.
		return nil
	case paused && errors.As(err, &serr) && serr.Code == "not_found":
		// Not subscribed on this connection while paused.
		return nil
	}
	return err
}

// Publish sends data to a room and returns the node's ack. Data given as
// []byte or json.RawMessage is taken as JSON and sent as it is (it must be
// valid JSON, or Publish returns ErrInvalidJSON); any other value is encoded
// with encoding/json, so a string is sent as a JSON string. Nothing is sent
// when data cannot be encoded. A non-empty key makes the publish idempotent
// for five minutes: a repeat is not published again, and its ack has the
// first offset and Duplicate set, so a publish that failed with
// ErrDisconnected can be retried safely with the same key.
func (c *Client) Publish(ctx context.Context, room string, data any, key string) (PublishAck, error) {
	raw, err := encodeData(data)
	if err != nil {
		return PublishAck{}, err
	}
	conn, err := c.live(ctx)
	if err != nil {
		return PublishAck{}, err
	}
	f := map[string]any{"type": "publish", "room": room, "data": raw}
	if key != "" {
		f["key"] = key
	}
	b, err := c.command(ctx, conn, f, nil)
	if err != nil {
		return PublishAck{}, err
	}
	var ack PublishAck
	if err := json.Unmarshal(b, &ack); err != nil {
		return PublishAck{}, fmt.Errorf("client: bad ack: %w", err)
	}
	return ack, nil
}

// encodeData returns data as JSON: []byte and json.RawMessage as they are
// (ErrInvalidJSON if they are not JSON), any other value encoded.
func encodeData(data any) (json.RawMessage, error) {
	var raw json.RawMessage
	switch d := data.(type) {
	case []byte:
		raw = d
	case json.RawMessage:
		raw = d
	default:
		b, err := json.Marshal(data)
		if err != nil {
			return nil, fmt.Errorf("client: encoding data: %w", err)
		}
		raw = b
	}
	if !json.Valid(raw) {
		return nil, ErrInvalidJSON
	}
	return raw, nil
}

// Position returns the position of a subscribed room as far as Events has
// gone: that of the last message of the room handed to Events (the one
// being handed over included), or, before any, where the subscription
// started. An application that saves positions to resume later can also
// save the Epoch and Offset of each Message once it has processed it.
func (c *Client) Position(room string) (Position, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.subs[room]
	if s == nil || !s.seen {
		return Position{}, false
	}
	return s.delivered, true
}
