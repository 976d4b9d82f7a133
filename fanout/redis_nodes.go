package fanout

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The list of live nodes. Each node of a deployment keeps its entry in one
// hash, nodesKey, under the life of its bus (RedisConfig.NodeID and an
// epoch, so that a node that restarted is another entry):
//
//	parley:nodes             hash: life -> "<seen ms>:<started ms>:" and the
//	                         node's ID and public URL, each length-prefixed
//	                         (encodeNodeEntry); both times by Redis's clock
//
// The bus announces its node every period (nodeTimings): it reads Redis's
// clock and the hash in one round trip, then, in a second one, writes its
// entry stamped with that time, deletes the entries that lapsed (not seen
// for three periods: nodes that died without leaving), and sets the hash to
// expire after three periods, for when every node is gone. A node's entry
// thus lapses three periods after its last announcement, and the next
// announcement of any node deletes it; Close deletes it at once. Plain
// commands, no script: the list costs each node two round trips a period,
// however many rooms it serves.
//
// The key has no hash tag: one key in one slot, whose master a Redis Cluster
// bus asks directly (MasterForKey), so that the time it reads and the time
// it stamps with are that master's. It meets no room's key, which all start
// with "parley:{".

const nodesKey = keyPrefix + "nodes"

// maxNodes bounds the entries of the list: a node that would be one more is
// not listed (and says so in its log, once).
const maxNodes = 1024

// maxNodeEvery is the longest time between two announcements of a node.
const maxNodeEvery = 5 * time.Second

// NodeInfo is a live node of a deployment, as Nodes lists it.
type NodeInfo struct {
	// ID is the node's name (RedisConfig.NodeID).
	ID string
	// Life is the node's bus: ID and an epoch of that bus, so that the
	// lives of a node that restarted under the same ID are told apart.
	Life string
	// URL is where the node serves its clients (SetPublicURL); "" when
	// the node does not know it.
	URL string
	// Started is when the node's bus started.
	Started time.Time
	// LastSeen is the node's latest announcement; zero for this node
	// before its first.
	LastSeen time.Time
	// Self marks the node of the bus that answered.
	Self bool
}

// announcer is what a Redis bus keeps to announce its node.
type announcer struct {
	started time.Time
	// every is how often the node is announced, lapse how long after its
	// last announcement a node is no longer live.
	every, lapse time.Duration
	url          atomic.Pointer[string]
	// now asks for an announcement at the next chance.
	now chan struct{}
	// stop ends announceLoop, which closes done when it returns.
	stop     context.CancelFunc
	stopOnce sync.Once
	done     chan struct{}
	// fullLogged is set once the log has said that the list was full.
	fullLogged atomic.Bool
}

// nodeTimings are the announcer's every and lapse for a presence TTL: a
// node announces itself as often as it renews its leases, every third of
// the TTL, but never more than maxNodeEvery apart, and is no longer live
// after three announcements it missed. A node that dies thereby leaves the list
// within the TTL, and within 15 s however long the TTL.
func nodeTimings(presenceTTL time.Duration) (every, lapse time.Duration) {
	every = min(presenceTTL/3, maxNodeEvery)
	return every, 3 * every
}

// startAnnouncing starts announceLoop, for ctx and until stopAnnouncing.
func (r *Redis) startAnnouncing(ctx context.Context) {
	r.ann.started = time.Now()
	r.ann.every, r.ann.lapse = nodeTimings(r.cfg.PresenceTTL)
	r.ann.now = make(chan struct{}, 1)
	r.ann.done = make(chan struct{})
	ctx, r.ann.stop = context.WithCancel(ctx)
	r.wg.Add(1)
	go r.announceLoop(ctx)
}

// stopAnnouncing ends announceLoop, an announcement in flight included, and
// waits for it: the node's entry stays in Redis until it lapses, as a dead
// node's does.
func (r *Redis) stopAnnouncing() {
	r.ann.stopOnce.Do(r.ann.stop)
	<-r.ann.done
}

// SetPublicURL sets where the node serves its clients, as its entry in the
// list of live nodes gives it (Nodes): an http:// or https:// URL, or ""
// for none. The next announcement carries it: at once when the bus is
// connected.
func (r *Redis) SetPublicURL(url string) {
	r.ann.url.Store(&url)
	select {
	case r.ann.now <- struct{}{}:
	default:
	}
}

// announceLoop announces the node every r.ann.every while the bus is Ready,
// at once when it becomes Ready again (Redis may have come back empty) and
// when SetPublicURL asks, until ctx ends. While the bus is not Ready it
// sends nothing: Redis is out of reach, and the attempt would only add
// failures to the log and the metrics.
func (r *Redis) announceLoop(ctx context.Context) {
	defer r.wg.Done()
	defer close(r.ann.done)
	tick := min(r.ann.every, pingInterval)
	t := time.NewTicker(tick)
	defer t.Stop()
	var last time.Time
	due := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.ann.now:
			due = true
		case <-t.C:
		}
		if !r.Ready() {
			due = true
			continue
		}
		// Ticks come a little late or early: half a tick of slack keeps the
		// announcements every r.ann.every rather than every other tick.
		if !due && time.Since(last) < r.ann.every-tick/2 {
			continue
		}
		due, last = false, time.Now()
		err := r.announce(ctx)
		if err == nil || ctx.Err() != nil || r.closed.Load() {
			continue
		}
		r.errors.Add(1)
		r.metrics.errors.Inc()
		r.log.Debug("announcing the node failed", "err", err)
		if r.cluster && staleSlots(err) {
			r.reloadSoon()
		}
	}
}

// nodesClient returns the client that reaches nodesKey: in a Redis Cluster
// the master of its slot, whose clock stamps the entries.
func (r *Redis) nodesClient(ctx context.Context) (redis.Cmdable, error) {
	if !r.cluster {
		return r.client, nil
	}
	return r.client.(*redis.ClusterClient).MasterForKey(ctx, nodesKey)
}

// readNodes reads Redis's clock and the list in one round trip.
func (r *Redis) readNodes(ctx context.Context, c redis.Cmdable) (now time.Time, entries map[string]string, err error) {
	var tm *redis.TimeCmd
	var all *redis.MapStringStringCmd
	_, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
		tm = p.Time(ctx)
		all = p.HGetAll(ctx, nodesKey)
		return nil
	})
	if err != nil {
		return time.Time{}, nil, err
	}
	return tm.Val(), all.Val(), nil
}

// announce writes the node's entry, stamped with Redis's time, and removes
// the entries that lapsed.
func (r *Redis) announce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*redisTimeout)
	defer cancel()
	c, err := r.nodesClient(ctx)
	if err != nil {
		return err
	}
	now, entries, err := r.readNodes(ctx, c)
	if err != nil {
		return err
	}
	nowMs := now.UnixMilli()
	// The start by Redis's clock: as long ago as the bus has run. An entry
	// that Redis still has keeps the start it had.
	started := nowMs - time.Since(r.ann.started).Milliseconds()
	var dead []string
	others, listed := 0, false
	for life, v := range entries {
		e, ok := decodeNodeEntry(v)
		switch {
		case !ok || nowMs-e.seen > r.ann.lapse.Milliseconds():
			dead = append(dead, life)
		case life == r.life:
			listed, started = true, e.started
		default:
			others++
		}
	}
	write := listed || others < maxNodes
	if !write && !r.ann.fullLogged.Swap(true) {
		r.log.Warn("the list of live nodes is full: this node is not in it", "max", maxNodes)
	}
	url := ""
	if u := r.ann.url.Load(); u != nil {
		url = *u
	}
	_, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
		if write {
			p.HSet(ctx, nodesKey, r.life, encodeNodeEntry(nowMs, started, r.cfg.NodeID, url))
		}
		if len(dead) > 0 {
			p.HDel(ctx, nodesKey, dead...)
		}
		p.PExpire(ctx, nodesKey, r.ann.lapse)
		return nil
	})
	return err
}

// leaveTimeout bounds how long Close waits for Redis to take the node off
// the list: a node that Redis keeps waiting lapses as a dead one does.
const leaveTimeout = 500 * time.Millisecond

// leaveNodes removes the node's entry, so that the other nodes stop listing
// it at once. Close calls it once the bus's goroutines have stopped (the
// announcements among them, so that none brings the entry back), when the
// bus was connected until then; otherwise there is no Redis to tell, and
// the entry lapses.
func (r *Redis) leaveNodes() {
	r.stopAnnouncing()
	ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
	defer cancel()
	c, err := r.nodesClient(ctx)
	if err == nil {
		err = c.HDel(ctx, nodesKey, r.life).Err()
	}
	if err != nil {
		r.log.Debug("taking the node off the list of live nodes failed; its entry lapses", "err", err)
	}
}

// Nodes returns the live nodes of the deployment: those that shared this
// Redis and announced themselves within the last few announcement periods
// (a third of PresenceTTL, at most 5 s, apart), ordered by ID and start.
// A node that closed its bus is gone from it at once; one that died, within
// three periods of its last announcement. This bus is always among them:
// before its first announcement, and while Redis has lost it, with a zero
// LastSeen. Times are by this node's clock, converted from Redis's at the
// time of the call.
func (r *Redis) Nodes(ctx context.Context) ([]NodeInfo, error) {
	if err := r.check(ctx); err != nil {
		return nil, err
	}
	c, err := r.nodesClient(ctx)
	if err != nil {
		return nil, r.fail(ctx, "nodes", err)
	}
	sent := time.Now()
	now, entries, err := r.readNodes(ctx, c)
	if err != nil {
		if r.cluster && staleSlots(err) {
			r.reloadSoon()
		}
		return nil, r.fail(ctx, "nodes", err)
	}
	// Redis read its clock about halfway through the round trip.
	at := sent.Add(time.Since(sent) / 2).Round(0)
	local := func(ms int64) time.Time { return at.Add(time.UnixMilli(ms).Sub(now)) }
	nowMs := now.UnixMilli()
	nodes := make([]NodeInfo, 0, len(entries)+1)
	self := false
	for life, v := range entries {
		e, ok := decodeNodeEntry(v)
		if !ok || nowMs-e.seen > r.ann.lapse.Milliseconds() {
			continue
		}
		n := NodeInfo{ID: e.id, Life: life, URL: e.url, Started: local(e.started), LastSeen: local(e.seen), Self: life == r.life}
		self = self || n.Self
		nodes = append(nodes, n)
	}
	if !self {
		url := ""
		if u := r.ann.url.Load(); u != nil {
			url = *u
		}
		nodes = append(nodes, NodeInfo{ID: r.cfg.NodeID, Life: r.life, URL: url, Started: r.ann.started.Round(0), Self: true})
	}
	slices.SortFunc(nodes, func(a, b NodeInfo) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), a.Started.Compare(b.Started), cmp.Compare(a.Life, b.Life))
	})
	return nodes, nil
}

// nodeEntry is a node's entry in nodesKey.
type nodeEntry struct {
	seen, started int64 // Unix ms, by Redis's clock
	id, url       string
}

// encodeNodeEntry is an entry as nodesKey keeps it: the times, each ended by
// ':', then the ID and the URL, length-prefixed.
func encodeNodeEntry(seen, started int64, id, url string) string {
	b := make([]byte, 0, 32+len(id)+len(url))
	b = strconv.AppendInt(b, seen, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, started, 10)
	b = append(b, ':')
	return string(appendField(appendField(b, id), url))
}

func decodeNodeEntry(s string) (nodeEntry, bool) {
	var e nodeEntry
	seen, s, ok := cutUint(s)
	if !ok {
		return e, false
	}
	started, s, ok := cutUint(s)
	if !ok {
		return e, false
	}
	if e.id, s, ok = cutField(s); !ok {
		return e, false
	}
	if e.url, s, ok = cutField(s); !ok || s != "" || seen > 1<<62 || started > 1<<62 {
		return nodeEntry{}, false
	}
	e.seen, e.started = int64(seen), int64(started)
	return e, true
}
