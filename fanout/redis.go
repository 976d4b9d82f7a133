package fanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

var _ Bus = (*Redis)(nil)

// RedisConfig configures a Redis bus. Zero values take the documented defaults.
type RedisConfig struct {
	// URL names the Redis server: redis://[user:password@]host:port/db,
	// rediss:// for TLS, or unix:///path/to/socket. Its dial_timeout,
	// read_timeout and write_timeout parameters, when given, replace the
	// bus's 2s; retries are always off (see Redis).
	URL string
	// NodeID is this node's name: its topic for Send, and the node of the
	// members it joins. Every node of a cluster needs its own.
	NodeID string
	// HistorySize is how many messages each room keeps; zero means 1000.
	HistorySize int
	// HistoryTTL is how long a message stays in history; zero means 24h.
	HistoryTTL time.Duration
	// PresenceTTL is how long a member, or a session's address for Send,
	// outlives the node that stopped renewing it; zero means 30s. The bus
	// renews its leases, and reaps lapsed ones in the rooms where it has
	// members and the subscribed rooms it has seen presence in, every
	// PresenceTTL/3.
	PresenceTTL time.Duration
	// Log receives the bus's connection events; nil discards them.
	Log *slog.Logger
	// Registerer, when set, gets the bus's metrics (parley_redis_*). Close
	// unregisters them.
	Registerer prometheus.Registerer
}

// RedisStats are a Redis bus's gauges and counters.
type RedisStats struct {
	// Connected is true while the bus's pub/sub connection is up and
	// subscribed: what Ready reports.
	Connected bool
	// Reconnects counts connections made again after one was lost.
	Reconnects uint64
	// Dropped counts pub/sub payloads that went nowhere: undecodable, or
	// sent to a session that is no longer on this node.
	Dropped uint64
	// Errors counts Redis commands that failed: the bus's calls and its
	// lease renewals.
	Errors uint64
	// Rooms is how many rooms the bus is subscribed to.
	Rooms int
	// Members and Sessions are the presence members and session addresses
	// whose leases the bus renews.
	Members  int
	Sessions int
	// Shards are the pub/sub connections: one on a single Redis, one per
	// master that serves the bus's channels in a cluster.
	Shards []RedisShard
}

// RedisShard is a pub/sub connection of a Redis bus.
type RedisShard struct {
	// Addr is the master's address in a cluster; "" on a single Redis.
	Addr string
	// Connected is true while it is up and subscribed.
	Connected bool
	// Channels counts its rooms' channels and the node's.
	Channels int
}

// ErrRedisUnavailable is wrapped in the errors of a Redis bus whose commands
// fail: Redis is down, unreachable, or refusing them.
var ErrRedisUnavailable = errors.New("fanout: redis unavailable")

// Redis timings.
const (
	// redisTimeout bounds a dial, a read and a write, unless the URL sets
	// them: an unreachable Redis fails a call within it.
	redisTimeout = 2 * time.Second
	// pingInterval is how often the pub/sub connection is pinged, and
	// pingTimeout how long it may stay silent before it counts as dead.
	pingInterval = time.Second
	pingTimeout  = 3 * time.Second
	// subscribeTimeout bounds how long Subscribe waits for Redis to
	// confirm a subscription.
	subscribeTimeout = 5 * time.Second
	// Reconnects back off exponentially from minBackoff to maxBackoff, with
	// jitter.
	minBackoff = 50 * time.Millisecond
	maxBackoff = 3 * time.Second
	// minMetaTTL is the least time a room's epoch and offset outlive its
	// last publication.
	minMetaTTL = 7 * 24 * time.Hour
	// handoffTimeout bounds how long Register and Claim wait for the node
	// whose registration they replaced to let go of the session.
	handoffTimeout = time.Second
	// letGoBacklog bounds the answers to replaced registrations waiting to
	// be published; past it the registering node stops waiting at
	// handoffTimeout.
	letGoBacklog = 256
)

// Redis is the Bus of many nodes sharing one Redis: one script per
// publication assigns the offset, appends to the room's history stream and
// publishes on the room's channel, so offsets and history never disagree.
// Each node holds one pub/sub connection, read by one goroutine that calls
// the handlers; a lost connection is made again with backoff, and every
// subscribed room's handler then gets HandleResync. Presence and the session
// directory for Send are leases that the bus renews; a node that stops
// renewing loses its members, with leave events, within PresenceTTL. What
// Post holds is in Redis, for whichever node claims the session.
//
// A call that fails may still have run in Redis (its deadline passed after
// Redis ran it): the bus then holds no lease of what it may have added, which
// lapses within PresenceTTL, and renews nothing that it may have removed.
//
// Publications are pipelined: those made while others are in flight go to
// Redis together, in one round trip (redis_publish.go).
//
// Its keys live under "parley:", each of a room's hash-tagged {room} so that
// a room sits in one Redis Cluster slot. A command that may have run is
// never retried: a retried publication that had run would publish twice.
// Close does not leave: the members and session addresses of a closed bus
// lapse as a dead node's do. Each node announces itself in a list of live
// nodes (redis_nodes.go), which Close does leave.
type Redis struct {
	cfg       RedisConfig
	client    redis.UniversalClient
	log       *slog.Logger
	metrics   *redisMetrics
	nodeTopic string
	// historyMs and so on are the TTLs as scripts take them.
	historyMs, metaMs, presenceMs, keyMs int64

	closed        atomic.Bool
	ready         atomic.Bool
	everConnected atomic.Bool
	stop          chan struct{}
	closeOnce     sync.Once
	wg            sync.WaitGroup
	// cancel ends the context of the bus's goroutines.
	cancel context.CancelFunc

	// The pub/sub connections (redis_pubsub.go). mu guards subs, shards
	// and slots, and the state of each subscription and shard.
	mu     sync.Mutex
	subs   map[string]*subscription // by channel, the node topic among them
	shards map[string]*shard        // by master address ("" for a single Redis)
	gen    uint64                   // the latest connection's generation
	// scripts are those that publish on a room's channel.
	scripts *roomScripts
	// cluster is set for a Redis Cluster, whose slot map slots is (nil
	// until read).
	cluster bool
	slots   slotMap
	// staleLeft: see moveStaleLocked.
	staleLeft bool
	// clusterChecked is set once a single Redis has said whether it is a
	// cluster's node (checkNotCluster).
	clusterChecked atomic.Bool
	// wrongMode is set when a redis:// URL names a cluster's node: the bus
	// is never Ready then.
	wrongMode atomic.Bool
	// reload asks reloadLoop to read the slot map again.
	reload chan struct{}
	// nodeOpt are the options of a cluster's pub/sub connections.
	nodeOpt *redis.Options
	// ctx is the context of the bus's goroutines.
	ctx context.Context

	// Leases (redis_lease.go). No lock is held across a call to Redis. A
	// renewal in flight is marked on the rooms and sessions it renews, by
	// a channel closed when it is done, which Leave and Unregister wait
	// for (within their context) so that it does not bring back what they
	// remove.
	lmu          sync.Mutex
	members      map[string]map[string]string // room -> session -> member
	roomRenewals map[string]chan struct{}
	smu          sync.RWMutex
	sessions     map[string]*sessionEntry
	// unregistered keeps, for unregisterLinger, the deliver of a session
	// this node unregistered: a payload published to this node before the
	// address was released in Redis can still be on its way, and it goes
	// there rather than nowhere. Send and Post never deliver to it.
	unregistered  map[string]lingering
	sessRenewals  map[string]chan struct{}
	handoffs      map[string]chan struct{} // by address: Register waiting for the node it replaced
	letGoQueue    chan letGo               // to publish: this node let go of a session
	renewNow      chan struct{}
	addrPrefix    string        // of this bus's sessionAddrs
	life          string        // the node of this bus's sessionAddrs and channel
	addrSeq       atomic.Uint64 // their tokens
	presenceMarks atomic.Uint64 // see subscription.presence
	// reapFrom is when renewals may reap again (Unix ns): not until
	// PresenceTTL/3 after a connection is made, so that after an outage
	// every live node gets to renew its leases before one reaps them.
	reapFrom atomic.Int64

	// Publishing (redis_publish.go): requests waiting for a publisher,
	// and how long one may take from its call to its reply.
	publishQueue   chan *publishRequest
	publishTimeout time.Duration

	// ann announces the node in the list of live nodes (redis_nodes.go).
	ann announcer

	reconnects, dropped, errors atomic.Uint64
}

// sessionEntry is a registered session: what gets its payloads, and the
// address in Redis of its registration.
type sessionEntry struct {
	deliver func([]byte)
	addr    string
	// taken says that the script of its Register or Claim has set addr in
	// Redis (guarded by smu): only then may a renewal judge it. Before, the
	// address is still the one it replaces, and a renewal that read it
	// would drop a registration that is about to hold it.
	taken bool
}

// NewRedis returns a Redis bus. It fails only on a bad config; it connects
// in the background, and is not Ready until connected.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("fanout: RedisConfig.NodeID is empty")
	}
	target, err := parseRedisURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("fanout: RedisConfig.URL: %w", err)
	}
	for _, f := range []struct {
		name string
		bad  bool
	}{
		{"HistorySize", cfg.HistorySize < 0},
		{"HistoryTTL", cfg.HistoryTTL < 0},
		{"PresenceTTL", cfg.PresenceTTL < 0},
	} {
		if f.bad {
			return nil, fmt.Errorf("fanout: RedisConfig.%s is negative", f.name)
		}
	}
	if cfg.HistorySize == 0 {
		cfg.HistorySize = 1000
	}
	if cfg.HistoryTTL == 0 {
		cfg.HistoryTTL = 24 * time.Hour
	}
	if cfg.PresenceTTL == 0 {
		cfg.PresenceTTL = 30 * time.Second
	}
	// Redis takes TTLs in whole milliseconds, and leases are renewed every
	// third of theirs.
	if cfg.HistoryTTL < time.Millisecond {
		return nil, errors.New("fanout: RedisConfig.HistoryTTL is below 1ms")
	}
	if cfg.PresenceTTL < 3*time.Millisecond {
		return nil, errors.New("fanout: RedisConfig.PresenceTTL is below 3ms")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	client, nodeOpt := newRedisClient(target)

	// A node's life is its NodeID and an epoch of this bus: a node that
	// restarts with the same NodeID is another life, with another channel,
	// so that what was sent to its previous life's sessions is not taken
	// for delivered (and dropped) by the new one, but held.
	life := cfg.NodeID + "#" + NewEpoch()
	r := &Redis{
		cfg:          cfg,
		life:         life,
		client:       client,
		cluster:      target.cluster != nil,
		scripts:      singleScripts,
		nodeOpt:      nodeOpt,
		shards:       make(map[string]*shard),
		reload:       make(chan struct{}, 1),
		log:          cfg.Log.With("component", "redis"),
		nodeTopic:    nodeChannel(target.cluster != nil, life),
		historyMs:    cfg.HistoryTTL.Milliseconds(),
		metaMs:       max(2*cfg.HistoryTTL, minMetaTTL).Milliseconds(),
		presenceMs:   cfg.PresenceTTL.Milliseconds(),
		keyMs:        IdempotencyWindow.Milliseconds(),
		stop:         make(chan struct{}),
		subs:         make(map[string]*subscription),
		members:      make(map[string]map[string]string),
		roomRenewals: make(map[string]chan struct{}),
		sessions:     make(map[string]*sessionEntry),
		unregistered: make(map[string]lingering),
		sessRenewals: make(map[string]chan struct{}),
		handoffs:     make(map[string]chan struct{}),
		letGoQueue:   make(chan letGo, letGoBacklog),
		renewNow:     make(chan struct{}, 1),
		publishQueue: make(chan *publishRequest, publishBacklog),
		// A read_timeout below zero is none.
		publishTimeout: max(nodeOpt.ReadTimeout, 0),
		// Unique to this bus, so that a node that restarts with the same
		// NodeID tells its registrations from its previous life's.
		addrPrefix: sessionAddr(life, ""),
	}
	r.metrics = newRedisMetrics(r.countShards)
	if err := r.metrics.register(cfg.Registerer); err != nil {
		r.client.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.ctx, r.cancel = ctx, cancel
	if r.cluster {
		r.scripts = clusterScripts
		r.client.AddHook(reloadHook{r})
		r.wg.Add(1)
		go r.reloadLoop(ctx)
	}
	r.wg.Add(2 + publishers)
	// The node topic's shard: a single Redis's connection, or the
	// cluster's first shard, which reads the slot map and hands it over.
	r.mu.Lock()
	node := &subscription{channel: r.nodeTopic, wanted: true, ready: make(chan struct{}), slot: keySlot(r.nodeTopic)}
	node.shard = r.shardAtLocked("")
	node.shard.n++
	r.subs[r.nodeTopic] = node
	r.mu.Unlock()
	go r.renewLoop(ctx)
	go r.letGoLoop(ctx)
	r.startAnnouncing(ctx)
	for range publishers {
		go r.publishLoop(ctx)
	}
	return r, nil
}

// Stats returns the bus's gauges and counters.
func (r *Redis) Stats() RedisStats {
	st := RedisStats{
		Connected:  r.Ready(),
		Reconnects: r.reconnects.Load(),
		Dropped:    r.dropped.Load(),
		Errors:     r.errors.Load(),
	}
	r.mu.Lock()
	for _, s := range r.subs {
		if s.wanted && s.room != "" {
			st.Rooms++
		}
	}
	for _, sh := range r.shards {
		if sh.addr != "" || !r.cluster {
			st.Shards = append(st.Shards, RedisShard{Addr: sh.addr, Connected: sh.ready, Channels: sh.n})
		}
	}
	r.mu.Unlock()
	slices.SortFunc(st.Shards, func(a, b RedisShard) int { return strings.Compare(a.Addr, b.Addr) })
	r.lmu.Lock()
	for _, ms := range r.members {
		st.Members += len(ms)
	}
	r.lmu.Unlock()
	r.smu.RLock()
	st.Sessions = len(r.sessions)
	r.smu.RUnlock()
	return st
}

// countShards counts the pub/sub connections that are connected, or down.
func (r *Redis) countShards(connected bool) float64 {
	n := 0
	for _, sh := range r.Stats().Shards {
		if sh.Connected == connected {
			n++
		}
	}
	return float64(n)
}

// check returns ctx's error, or ErrClosed after Close.
func (r *Redis) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.closed.Load() {
		return ErrClosed
	}
	return nil
}

// fail turns the error of a Redis command into the bus's: the caller's
// context error, ErrClosed, or ErrRedisUnavailable wrapping the cause.
func (r *Redis) fail(ctx context.Context, op string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("fanout: %s: %w", op, cerr)
	}
	if r.closed.Load() || errors.Is(err, redis.ErrClosed) {
		return ErrClosed
	}
	r.errors.Add(1)
	r.metrics.errors.Inc()
	return fmt.Errorf("%w: %s: %w", ErrRedisUnavailable, op, err)
}

// History implements Bus. Reading a room that has no epoch yet (a new room,
// or one that Redis lost) gives it one, kept for HistoryTTL unless a
// publication comes, so that the position it answers can be resumed from: a
// client that saw the room empty recovers its first messages, and a client
// of an epoch that Redis lost gets Recovered false and the new epoch.
func (r *Redis) History(ctx context.Context, room string, q HistoryQuery) (History, error) {
	if err := r.check(ctx); err != nil {
		return History{}, err
	}
	limit := min(max(q.Limit, 0), r.cfg.HistorySize)
	since, sinceEpoch, sinceOffset, delivered := "0", "", "0", "0"
	if q.Since != nil {
		since, sinceEpoch, sinceOffset = "1", q.Since.Epoch, strconv.FormatUint(q.Since.Offset, 10)
	}
	if q.Delivered {
		delivered = "1"
	}
	meta, hist := roomKeys(room)
	res, err := historyScript.Run(ctx, r.client, []string{meta, hist},
		NewEpoch(), r.historyMs, r.historyMs, since, sinceEpoch, sinceOffset, limit, delivered).Slice()
	if err != nil {
		return History{}, r.fail(ctx, "history", err)
	}
	h, ok := parseHistory(room, res)
	if !ok {
		return History{}, r.fail(ctx, "history", fmt.Errorf("unexpected reply of %d values", len(res)))
	}
	return h, nil
}

func parseHistory(room string, res []any) (History, bool) {
	if len(res) < 3 || (len(res)-3)%4 != 0 {
		return History{}, false
	}
	epoch, ok1 := res[0].(string)
	top, ok2 := res[1].(int64)
	rec, ok3 := res[2].(int64)
	if !ok1 || !ok2 || !ok3 {
		return History{}, false
	}
	h := History{Top: Position{Epoch: epoch, Offset: uint64(top)}, Recovered: rec == 1}
	if n := (len(res) - 3) / 4; n > 0 {
		h.Messages = make([]*Message, 0, n)
	}
	for i := 3; i < len(res); i += 4 {
		id, _ := res[i].(string)
		ts, _ := res[i+1].(string)
		from, _ := res[i+2].(string)
		data, _ := res[i+3].(string)
		off, err := strconv.ParseUint(strings.TrimSuffix(id, "-0"), 10, 64)
		if err != nil {
			return History{}, false
		}
		t, _ := strconv.ParseInt(ts, 10, 64)
		h.Messages = append(h.Messages, &Message{Room: room, Offset: off, Epoch: epoch, Data: []byte(data), From: from, Time: t})
	}
	return h, true
}

// Join implements Bus.
func (r *Redis) Join(ctx context.Context, room string, m Member) error {
	_, err := r.join(ctx, room, m, -1, false, "")
	return err
}

// Enter implements Bus.
func (r *Redis) Enter(ctx context.Context, room string, m Member, max int) ([]Member, error) {
	return r.join(ctx, room, m, max, true, "")
}

// EnterAfter implements Bus.
func (r *Redis) EnterAfter(ctx context.Context, room string, m Member, prefix string) ([]Member, error) {
	return r.join(ctx, room, m, 0, true, prefix)
}

// join joins m and takes its lease, listing the other members when list is
// set; max > 0 refuses a new member past it.
func (r *Redis) join(ctx context.Context, room string, m Member, max int, list bool, prefix string) ([]Member, error) {
	if err := r.check(ctx); err != nil {
		return nil, err
	}
	enc := encodeMember(m)
	res, err := r.scripts.join.Run(ctx, r.client, presenceKeys(room),
		roomChannel(room), r.presenceMs, m.Session, enc, max, boolArg(list), prefix).Slice()
	if err != nil {
		return nil, r.fail(ctx, "join", err)
	}
	switch {
	case len(res) > 0 && res[0] == int64(2):
		return nil, ErrNoSession
	case len(res) == 0 || res[0] != int64(1):
		return nil, ErrFull
	}
	r.lmu.Lock()
	ms := r.members[room]
	if ms == nil {
		ms = make(map[string]string)
		r.members[room] = ms
	}
	ms[m.Session] = enc
	r.lmu.Unlock()
	if !list {
		return nil, nil
	}
	others := make([]Member, 0, len(res)-1)
	for _, v := range res[1:] {
		if s, ok := v.(string); ok {
			if mem, ok := decodeMember(s); ok {
				others = append(others, mem)
			}
		}
	}
	if len(others) > 0 {
		r.markPresence(room)
	}
	return others, nil
}

func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Leave implements Bus. The bus stops renewing m's lease first: whatever
// becomes of the call, it renews m no more, and a member whose Leave failed
// lapses, with a leave event, within PresenceTTL.
func (r *Redis) Leave(ctx context.Context, room string, m Member) error {
	if err := r.check(ctx); err != nil {
		return err
	}
	var renewing chan struct{}
	r.lmu.Lock()
	if ms := r.members[room]; ms != nil {
		if _, ok := ms[m.Session]; ok {
			delete(ms, m.Session)
			if len(ms) == 0 {
				delete(r.members, room)
			}
			renewing = r.roomRenewals[room]
		}
	}
	r.lmu.Unlock()
	// A renewal in flight may hold m still: it would add m back if it ran
	// after the leave.
	if err := r.await(ctx, "leave", renewing); err != nil {
		return err
	}
	err := r.scripts.leave.Run(ctx, r.client, presenceKeys(room), roomChannel(room), r.presenceMs, m.Session).Err()
	if err != nil {
		return r.fail(ctx, "leave", err)
	}
	return nil
}

// await waits for done, if set: the end of a renewal in flight.
func (r *Redis) await(ctx context.Context, op string, done <-chan struct{}) error {
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("fanout: %s: %w", op, ctx.Err())
	case <-r.stop:
		return ErrClosed
	}
}

// Presence implements Bus. It reaps lapsed leases first, so a page never
// lists the member of a node that died.
func (r *Redis) Presence(ctx context.Context, room string, q PresenceQuery) (PresencePage, error) {
	limit, after, err := q.parse()
	if err != nil {
		return PresencePage{}, err
	}
	if err := r.check(ctx); err != nil {
		return PresencePage{}, err
	}
	res, err := r.scripts.presence.Run(ctx, r.client, presenceKeys(room), roomChannel(room), r.presenceMs, after, limit).Slice()
	if err != nil {
		return PresencePage{}, r.fail(ctx, "presence", err)
	}
	if len(res) < 2 || len(res)%2 != 0 {
		return PresencePage{}, r.fail(ctx, "presence", fmt.Errorf("unexpected reply of %d values", len(res)))
	}
	total, _ := res[0].(int64)
	page := PresencePage{Total: int(total), Members: make([]Member, 0, (len(res)-2)/2)}
	var last string
	for i := 2; i < len(res); i += 2 {
		last, _ = res[i].(string)
		if s, ok := res[i+1].(string); ok {
			if m, ok := decodeMember(s); ok {
				page.Members = append(page.Members, m)
			}
		}
	}
	if res[1] == int64(1) && last != "" {
		page.Next = presenceCursor(last)
	}
	if page.Total > 0 {
		r.markPresence(room)
	}
	return page, nil
}

// Register implements Bus. The newest registration of a session, on any
// node, holds its address: a Register takes it from whichever registration
// held it (a session that resumes on another node moves there). It tells
// the node of the registration it replaced, through that node's channel,
// and waits for that node to let go of the session, so that a Send made
// there after Register returns comes here too. It waits at most
// handoffTimeout, and not for a node that is not connected; a node that
// missed the word drops its registration at its next renewal. When ctx ends
// during that wait, Register returns nil all the same: the registration
// stands.
func (r *Redis) Register(ctx context.Context, session string, deliver func(data []byte)) error {
	_, err := r.take(ctx, "register", session, deliver, false)
	return err
}

// Claim implements Bus. It takes the session's address as Register does,
// waiting as long for the node it replaced, and empties the mailbox in the
// same script. A Claim that fails may have run in Redis all the same (see
// Redis): what the mailbox held is then lost.
func (r *Redis) Claim(ctx context.Context, session string, deliver func(data []byte)) ([][]byte, error) {
	return r.take(ctx, "claim", session, deliver, true)
}

// take registers session on this node for deliver and takes its address in
// Redis, emptying its mailbox too when claim is set (and returning what it
// held), then waits for the node whose registration it replaced to let go.
func (r *Redis) take(ctx context.Context, op, session string, deliver func([]byte), claim bool) ([][]byte, error) {
	if err := r.check(ctx); err != nil {
		return nil, err
	}
	e := &sessionEntry{deliver: deliver, addr: r.addrPrefix + strconv.FormatUint(r.addrSeq.Add(1), 10)}
	handoff := make(chan struct{})
	// In place before the address: what is sent once it is set finds it.
	r.smu.Lock()
	r.sessions[session] = e
	delete(r.unregistered, session)
	r.handoffs[e.addr] = handoff
	r.smu.Unlock()
	defer func() {
		r.smu.Lock()
		delete(r.handoffs, e.addr)
		r.smu.Unlock()
	}()
	told, held, err := r.takeAddr(ctx, session, e.addr, claim)
	r.smu.Lock()
	if err != nil && r.sessions[session] == e {
		delete(r.sessions, session)
	}
	e.taken = err == nil
	r.smu.Unlock()
	if err != nil {
		return nil, r.fail(ctx, op, err)
	}
	if told > 0 {
		r.awaitHandoff(ctx, session, handoff)
	}
	return held, nil
}

// takeAddr runs the script that takes session's address for the
// registration addr: claimScript when claim is set, registerScript
// otherwise. It returns how many connections got word of the replacement,
// and what the mailbox held.
func (r *Redis) takeAddr(ctx context.Context, session, addr string, claim bool) (int64, [][]byte, error) {
	if r.cluster {
		return r.takeCluster(ctx, session, addr, claim)
	}
	args := []any{addr, r.presenceMs, r.life, nodeChannelPrefix, replacedPrefix(session, addr)}
	if !claim {
		told, err := registerScript.Run(ctx, r.client, []string{sessionKey(session)}, args...).Int64()
		return told, nil, err
	}
	res, err := claimScript.Run(ctx, r.client, []string{sessionKey(session), mailboxKey(session)}, args...).Slice()
	if err != nil {
		return 0, nil, err
	}
	if len(res) == 0 {
		return 0, nil, errors.New("unexpected empty reply")
	}
	told, ok := res[0].(int64)
	if !ok {
		return 0, nil, fmt.Errorf("unexpected reply: a %T told", res[0])
	}
	held, err := heldData(res[1:])
	return told, held, err
}

// takeCluster is takeAddr in a cluster: the script takes the address (and
// empties the mailbox), then the bus tells the node it replaced, if any,
// on that node's channel.
func (r *Redis) takeCluster(ctx context.Context, session, addr string, claim bool) (int64, [][]byte, error) {
	keys := []string{sessionKey(session)}
	script := registerClusterScript
	if claim {
		keys, script = append(keys, mailboxKey(session)), claimClusterScript
	}
	res, err := script.Run(ctx, r.client, keys, addr, r.presenceMs, r.life).Result()
	if err != nil {
		return 0, nil, err
	}
	var prev string
	var held [][]byte
	switch v := res.(type) {
	case string:
		prev = v
	case []any:
		if len(v) == 0 {
			return 0, nil, errors.New("unexpected empty reply")
		}
		prev, _ = v[0].(string)
		if held, err = heldData(v[1:]); err != nil {
			return 0, nil, err
		}
	default:
		return 0, nil, fmt.Errorf("unexpected reply: a %T", res)
	}
	node, ok := addrNode(prev)
	if !ok {
		return 0, held, nil
	}
	// The address is taken: a failure to tell the node it replaced leaves
	// that node to drop its registration at its next renewal.
	told, err := r.publishNode(ctx, node, replacedPrefix(session, addr)+prev)
	if err != nil {
		r.errors.Add(1)
		r.metrics.errors.Inc()
		r.log.Debug("telling the node of a replaced registration failed", "err", err)
	}
	return told, held, nil
}

// heldData is the data of a claim's reply.
func heldData(res []any) ([][]byte, error) {
	var held [][]byte
	for _, v := range res {
		d, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("unexpected reply: a %T held", v)
		}
		held = append(held, []byte(d))
	}
	return held, nil
}

// publishNode publishes payload on node's channel, and returns how many
// connections got it.
func (r *Redis) publishNode(ctx context.Context, node, payload string) (int64, error) {
	ch := nodeChannel(r.cluster, node)
	if r.cluster {
		return r.client.SPublish(ctx, ch, payload).Result()
	}
	return r.client.Publish(ctx, ch, payload).Result()
}

// awaitHandoff waits for handoff, closed when the node whose registration
// of session was replaced has let go of it: at most handoffTimeout, and
// not past ctx or Close.
func (r *Redis) awaitHandoff(ctx context.Context, session string, handoff <-chan struct{}) {
	t := time.NewTimer(handoffTimeout)
	defer t.Stop()
	select {
	case <-handoff:
	case <-t.C:
		r.log.Debug("previous node did not let go of a session in time", "session", session, "timeout", handoffTimeout)
	case <-ctx.Done():
	case <-r.stop:
	}
}

// unregisterLinger is how long an unregistered session's deliver still
// takes what its node's channel brings (see Redis.unregistered): longer
// than a payload published before the release can take to arrive.
const unregisterLinger = 5 * time.Second

// lingering is an unregistered session's deliver, until when it lingers.
type lingering struct {
	e     *sessionEntry
	until time.Time
}

// lingerLocked keeps e, a registration of session this node no longer
// holds, in r.unregistered; each renewal pass forgets the ones whose time
// is over. The caller holds r.smu.
func (r *Redis) lingerLocked(session string, e *sessionEntry) {
	r.unregistered[session] = lingering{e: e, until: time.Now().Add(unregisterLinger)}
}

// Unregister implements Bus. Like Leave, it stops renewing the address
// first.
func (r *Redis) Unregister(ctx context.Context, session string) error {
	if err := r.check(ctx); err != nil {
		return err
	}
	r.smu.Lock()
	var renewing chan struct{}
	if e := r.sessions[session]; e != nil {
		delete(r.sessions, session)
		renewing = r.sessRenewals[session]
		r.lingerLocked(session, e)
	}
	r.smu.Unlock()
	if err := r.await(ctx, "unregister", renewing); err != nil {
		return err
	}
	if err := releaseScript.Run(ctx, r.client, []string{sessionKey(session)}, r.life, r.presenceMs).Err(); err != nil {
		return r.fail(ctx, "unregister", err)
	}
	return nil
}

// Send implements Bus. data goes through the channel of the node that holds
// session's address, this node's included: a shortcut to a registration
// here would overtake what an earlier Send or Post, made just before the
// registration, has still on its way through that channel. A
// registration here that another has replaced is dropped before that
// Register returns (see Register), or at the next renewal when this node
// missed the word, so a Send made here after a session moved goes to its
// new node; one made while it moves may still reach the old deliver. The
// node of a session's address is gone when its channel has no subscriber:
// it died, or its pub/sub connection is down for the moment, and Send then
// returns ErrNoSession, data having reached nobody.
func (r *Redis) Send(ctx context.Context, session string, data []byte) error {
	if err := r.check(ctx); err != nil {
		return err
	}
	var n int64
	var err error
	if r.cluster {
		n, _, err = r.sendCluster(ctx, session, data)
	} else {
		n, err = sendScript.Run(ctx, r.client, []string{sessionKey(session)}, nodeChannelPrefix, encodeSend(session, data)).Int64()
	}
	if err != nil {
		return r.fail(ctx, "send", err)
	}
	if n == 0 {
		return ErrNoSession
	}
	return nil
}

// Post implements Bus. It delivers as Send does, and one script holds data
// in the session's mailbox when its publication reaches nobody. A node
// whose pub/sub connection is down for a moment counts as gone: what is
// posted to it meanwhile waits for the session's next Claim, and a Post
// made after the node is back may reach it first.
func (r *Redis) Post(ctx context.Context, session string, data []byte, max int, ttl time.Duration) error {
	if err := r.check(ctx); err != nil {
		return err
	}
	// Redis keeps whole milliseconds: a part of one counts as one, and a
	// mailbox that expires at once keeps nothing.
	ttlMs := ttl.Milliseconds()
	if ttl%time.Millisecond > 0 {
		ttlMs++
	}
	if ttl <= 0 {
		max = 0
	}
	var n int
	var err error
	if r.cluster {
		n, err = r.postCluster(ctx, session, data, max, ttlMs)
	} else {
		n, err = postScript.Run(ctx, r.client, []string{sessionKey(session), mailboxKey(session)},
			nodeChannelPrefix, encodeSend(session, nil), data, max, ttlMs).Int()
	}
	if err != nil {
		return r.fail(ctx, "post", err)
	}
	switch n {
	case postDelivered, postHeld:
		return nil
	case postFull:
		return ErrFull
	}
	return r.fail(ctx, "post", fmt.Errorf("unexpected reply %d", n))
}

// sendCluster is Send's publication in a cluster: it reads the session's
// address, then publishes on its node's channel. It returns how many
// connections got it, and the address ("" for none).
func (r *Redis) sendCluster(ctx context.Context, session string, data []byte) (int64, string, error) {
	addr, err := r.client.Get(ctx, sessionKey(session)).Result()
	if errors.Is(err, redis.Nil) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", err
	}
	node, ok := addrNode(addr)
	if !ok {
		return 0, addr, nil
	}
	n, err := r.publishNode(ctx, node, string(encodeSend(session, data)))
	return n, addr, err
}

// postMoves bounds how often a Post in a cluster starts again because the
// session's address changed between its publication and its hold.
const postMoves = 3

// postCluster is Post in a cluster: it publishes as sendCluster does and,
// when that reaches nobody, holds data with holdScript, provided that the
// address has not changed meanwhile; if it has, it starts again.
func (r *Redis) postCluster(ctx context.Context, session string, data []byte, max int, ttlMs int64) (int, error) {
	for range postMoves {
		n, addr, err := r.sendCluster(ctx, session, data)
		if err != nil {
			return 0, err
		}
		if n > 0 {
			return postDelivered, nil
		}
		res, err := holdScript.Run(ctx, r.client, []string{sessionKey(session), mailboxKey(session)},
			addr, data, max, ttlMs).Int()
		if err != nil || res != postMoved {
			return res, err
		}
	}
	return 0, errors.New("the session's address kept changing")
}

// Ready implements Bus: the pub/sub connection is up and Redis has
// confirmed its subscriptions; in a cluster, the connection of the shard
// that holds the node's own channel (see updateReadyLocked).
func (r *Redis) Ready() bool { return r.ready.Load() && !r.closed.Load() && !r.wrongMode.Load() }

// Close implements Bus: it takes the node off the list of live nodes
// (Nodes), stops the bus's goroutines and closes its connections. Members
// and session addresses are left to lapse.
func (r *Redis) Close() error {
	r.closeOnce.Do(func() {
		// Whether Redis is there to take the node off the list of live
		// nodes, once everything else has stopped.
		connected := r.Ready()
		r.closed.Store(true)
		// No shard starts once closed is set (shardAtLocked).
		r.mu.Lock()
		r.mu.Unlock()
		close(r.stop)
		r.cancel()
		r.wg.Wait()
		if connected {
			r.leaveNodes()
		}
		r.setReady(false)
		r.metrics.unregister(r.cfg.Registerer)
		r.client.Close()
	})
	return nil
}
