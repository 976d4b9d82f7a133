package fanout

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The pub/sub connections. A single Redis has one; a cluster one per master
// that serves a slot of the bus's channels (a shard). One goroutine per
// shard, run, owns its connection: it makes it, writes every SUBSCRIBE and
// UNSUBSCRIBE (SSUBSCRIBE and SUNSUBSCRIBE in a cluster, batching what
// callers asked for meanwhile), pings it, and makes it again when it
// breaks. Another, read, reads it for as long as it lives: it matches
// Redis's confirmations to what was asked, and calls the handlers, one
// reply at a time, so a room's calls never overlap and keep Redis's order.
//
// Each connection is a generation: a fresh go-redis PubSub. Any error ends
// it; the next one subscribes to everything wanted, and the handler of every
// room that had been subscribed gets HandleResync once Redis confirms it
// again. In a cluster the shard reads the slot map before each connection,
// and the channels whose slots another master serves now move to that
// master's shard, which subscribes them (with HandleResync) on its own
// connection: the rooms of the other shards see nothing of it. Slots that
// move while the connection lives move their channels alone: a master that
// lets go of a slot sends a SUNSUBSCRIBE nobody asked for, and the shard
// subscribes the channel again, which the master answers with MOVED if
// another master serves the slot now; a MOVED answer moves the slot's
// channels to that master's shard; and the slot map, read every 5 s, moves
// what changed without a word (a manual failover). A shard left with no
// channel ends.

// maxClusterBackoff bounds the backoff of a cluster's shard.
const maxClusterBackoff = time.Second

// maxBatch bounds the channels of one SUBSCRIBE or UNSUBSCRIBE.
const maxBatch = 1000

// syncWindow is how long subscription changes gather before they are
// written when the last write was as recent: a lone Subscribe goes out at
// once, a burst in few commands.
const syncWindow = time.Millisecond

// shard is a pub/sub connection and the channels on it.
type shard struct {
	// addr is the master's address in a cluster; "" for a single Redis,
	// and for the cluster's first shard, which only reads the slot map and
	// hands its channels over.
	addr string
	// client makes its connections; owned by the shard in a cluster.
	client *redis.Client
	kick   chan struct{}
	// lastRecv is the Unix ns of the latest reply on the connection.
	lastRecv atomic.Int64

	// The rest is guarded by Redis.mu.

	dirty []*subscription // changed since the last sync
	gen   uint64          // the connection now current
	// initial is how many subscriptions of the connection's first command
	// Redis has still to confirm; the shard is ready when none is left.
	initial       int
	ready         bool
	everConnected bool
	// takeover is set on a shard that took channels over from one whose
	// connection was lost (a failover): its first connection counts as a
	// reconnection.
	takeover bool
	// down is set while the shard's connection is lost or cannot be made,
	// from the failure to the next connection that has every
	// subscription: Subscribe refuses at once then, rather than wait.
	down bool
	// n counts the subscriptions in Redis.subs on the shard; retired is
	// set when it ends.
	n       int
	retired bool
}

// subscription is a channel the bus wants, or wanted, on its connection:
// a room's, or the node topic (room empty).
type subscription struct {
	channel string
	room    string
	slot    int
	// deliver is held while a handler call runs, so that Unsubscribe can
	// wait one out.
	deliver sync.Mutex
	h       atomic.Pointer[handlerRef]
	// presence is non-zero while the bus knows the room to have presence
	// (it saw a presence event, or read or entered a room with members):
	// renewals reap the room then. It is a mark from Redis.presenceMarks,
	// so that a renewal that finds the room empty clears it only if no
	// event came meanwhile.
	presence atomic.Uint64

	// The rest is guarded by Redis.mu.

	// shard is the connection the channel is on.
	shard *shard
	// wanted is whether the bus wants the channel; confirmed, whether Redis
	// has confirmed it since it was last wanted; ready is closed then (or
	// when it is no longer wanted), waking the Subscribe calls waiting.
	wanted    bool
	confirmed bool
	ready     chan struct{}
	// sent is whether the last command for the channel on this connection
	// was SUBSCRIBE; pendSub and pendUnsub count the replies to its
	// SUBSCRIBE and UNSUBSCRIBE commands still due. With none due, Redis's
	// state is sent.
	sent               bool
	pendSub, pendUnsub int
	// initial marks a subscription of the connection's first SUBSCRIBE not
	// yet confirmed; resync, one whose handler gets HandleResync then.
	initial bool
	resync  bool
	dirty   bool
}

// outstanding is how many replies to the channel's commands are due; r.mu
// is held.
func (s *subscription) outstanding() int { return s.pendSub + s.pendUnsub }

type handlerRef struct{ Handler }

// errStale ends a reader whose connection is no longer current, and
// errRetired a shard left with no channel.
var (
	errStale   = errors.New("fanout: stale pub/sub connection")
	errRetired = errors.New("fanout: shard has no channel left")
)

// Subscribe implements Bus. It returns once Redis has confirmed the
// subscription, and fails with ErrRedisUnavailable while the bus is not
// connected or when Redis has not confirmed within a few seconds. A room
// already subscribed only gets its new handler, connected or not: the bus
// subscribes it again when it reconnects.
func (r *Redis) Subscribe(ctx context.Context, room string, h Handler) error {
	if err := r.check(ctx); err != nil {
		return err
	}
	ch := roomChannel(room)
	ref := &handlerRef{h}
	r.mu.Lock()
	s := r.subs[ch]
	if s == nil || !s.wanted {
		var sh *shard
		if s != nil {
			sh = s.shard
		} else {
			sh = r.shardOfLocked(ch)
		}
		// A single Redis's connection must be up. A cluster's shard that
		// is connecting for the first time (to a master that had no
		// channel of the bus) gets its chance; one that lost its
		// connection does not.
		if sh == nil || (!r.cluster && !sh.ready) || sh.down {
			r.mu.Unlock()
			return fmt.Errorf("%w: subscribe: not connected", ErrRedisUnavailable)
		}
	}
	if s == nil {
		s = r.addLocked(ch, room)
	}
	s.h.Store(ref)
	fresh := !s.wanted
	if fresh {
		s.wanted, s.confirmed, s.ready = true, false, make(chan struct{})
		r.markDirty(s)
	}
	if s.confirmed {
		r.mu.Unlock()
		return nil
	}
	wait, sh := s.ready, s.shard
	r.mu.Unlock()
	if fresh {
		sh.kickRun()
	}

	timer := time.NewTimer(subscribeTimeout)
	defer timer.Stop()
	var err error
	select {
	case <-wait:
		return nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = fmt.Errorf("%w: subscribe: not confirmed within %v", ErrRedisUnavailable, subscribeTimeout)
	case <-r.stop:
		err = ErrClosed
	}
	// Undo what this call started, unless another has taken over.
	r.mu.Lock()
	if s.confirmed {
		r.mu.Unlock()
		return nil
	}
	undo := fresh && s.wanted && s.h.Load() == ref
	if undo {
		r.drop(s)
	}
	sh = s.shard
	r.mu.Unlock()
	if undo {
		sh.kickRun()
	}
	return err
}

// Unsubscribe implements Bus. It does not wait for Redis: what arrives for
// the room afterwards is dropped.
func (r *Redis) Unsubscribe(ctx context.Context, room string) error {
	if err := r.check(ctx); err != nil {
		return err
	}
	r.mu.Lock()
	s := r.subs[roomChannel(room)]
	if s == nil || !s.wanted {
		r.mu.Unlock()
		return nil
	}
	r.drop(s)
	sh := s.shard
	r.mu.Unlock()
	sh.kickRun()
	// Wait out a handler call in progress: none starts after this.
	s.deliver.Lock()
	s.deliver.Unlock()
	return nil
}

// addLocked adds the subscription of channel, unwanted yet, on the shard
// that serves it; r.mu is held, and the shard is known (shardOfLocked).
func (r *Redis) addLocked(channel, room string) *subscription {
	s := &subscription{channel: channel, room: room, slot: keySlot(channel)}
	s.shard = r.shardOfLocked(channel)
	s.shard.n++
	r.subs[channel] = s
	return s
}

// forgetLocked removes s from r.subs; r.mu is held.
func (r *Redis) forgetLocked(s *subscription) {
	if r.subs[s.channel] == s {
		delete(r.subs, s.channel)
		s.shard.n--
	}
}

// shardOfLocked returns the shard of channel, started if it was not: the
// single one, or in a cluster the one of the master that serves the
// channel's slot; nil when the slot map is not known yet or the bus is
// closed. r.mu is held.
func (r *Redis) shardOfLocked(channel string) *shard {
	if !r.cluster {
		return r.shards[""]
	}
	if r.slots == nil {
		return nil
	}
	return r.shardAtLocked(r.slots[keySlot(channel)])
}

// shardAtLocked returns the shard of the master at addr, started if it was
// not; nil once the bus is closed. r.mu is held.
func (r *Redis) shardAtLocked(addr string) *shard {
	if sh := r.shards[addr]; sh != nil {
		return sh
	}
	if r.closed.Load() {
		return nil
	}
	sh := &shard{addr: addr, kick: make(chan struct{}, 1)}
	switch {
	case !r.cluster:
		sh.client = r.client.(*redis.Client)
	case addr != "":
		sh.client = r.shardClient(addr)
	}
	r.shards[addr] = sh
	r.wg.Add(1)
	go r.run(r.ctx, sh)
	return sh
}

// drop makes s unwanted; r.mu is held.
func (r *Redis) drop(s *subscription) {
	s.wanted, s.resync = false, false
	s.h.Store(nil)
	if !s.confirmed {
		close(s.ready)
	}
	s.confirmed, s.ready = false, nil
	r.markDirty(s)
}

// clearDirtyLocked empties sh's queue of changed subscriptions. An entry
// of a subscription that moved to another shard is left alone: its dirty
// flag is the other shard's. r.mu is held.
func (r *Redis) clearDirtyLocked(sh *shard) {
	for _, s := range sh.dirty {
		if s.shard == sh {
			s.dirty = false
		}
	}
	clear(sh.dirty)
	sh.dirty = sh.dirty[:0]
}

// moveLocked moves s, wanted, from its shard to to, which subscribes it
// (with HandleResync for a room that had been confirmed). r.mu is held.
func (r *Redis) moveLocked(s *subscription, to *shard) {
	from := s.shard
	if s.initial {
		s.initial = false
		from.initial--
	}
	from.n--
	to.n++
	s.shard = to
	if from.down {
		to.takeover = true
	}
	s.resync = s.resync || s.confirmed
	s.sent, s.pendSub, s.pendUnsub = false, 0, 0
	if s.channel == r.nodeTopic {
		// Ready follows the node's channel, which to has yet to subscribe.
		r.updateReadyLocked()
	}
	// An entry in from's queue is now stale (see clearDirtyLocked).
	s.dirty = false
	r.markDirty(s)
	to.kickRun()
}

// markDirty queues s for its shard's next sync; r.mu is held.
func (r *Redis) markDirty(s *subscription) {
	if !s.dirty {
		s.dirty = true
		s.shard.dirty = append(s.shard.dirty, s)
	}
}

// stillDownWarning is how often run warns again while Redis stays out of
// reach.
const stillDownWarning = 30 * time.Second

// kickRun wakes the shard's run to sync its subscriptions.
func (sh *shard) kickRun() {
	select {
	case sh.kick <- struct{}{}:
	default:
	}
}

// run makes the shard's pub/sub connection, again and again, until Close
// or until the shard has no channel left. It warns when the connection is
// lost (or cannot be made at start), and again every stillDownWarning while
// it cannot be made (a wrong password or address looks like a Redis that is
// down, and must not go unnoticed), and backs off exponentially, with
// jitter, between attempts. Each failed attempt counts as an error.
func (r *Redis) run(ctx context.Context, sh *shard) {
	defer r.wg.Done()
	if r.cluster && sh.client != nil {
		defer sh.client.Close()
	}
	log := r.log
	if r.cluster && sh.addr != "" {
		log = log.With("shard", sh.addr)
	}
	attempt := 0
	var downSince, warnedAt time.Time
	for {
		var lost bool
		var err error
		if r.cluster {
			err = r.rebalance(ctx, sh)
		}
		if r.retired(sh) {
			return
		}
		if sh.client != nil {
			if !r.cluster && !r.clusterChecked.Load() {
				r.checkNotCluster(ctx)
			}
			lost, err = r.connection(ctx, sh)
		} else if err == nil {
			err = errors.New("no master serves the node's channel")
		}
		if r.closed.Load() || r.retired(sh) {
			return
		}
		now := time.Now()
		switch {
		case lost:
			log.Warn("redis connection lost; reconnecting", "err", err)
			attempt, downSince, warnedAt = 0, now, now
		case errors.Is(err, errNotCluster) && (downSince.IsZero() || now.Sub(warnedAt) >= stillDownWarning):
			r.errors.Add(1)
			log.Error("the redis+cluster:// URL names a Redis that is not a cluster's node; use redis:// for a single server", "err", err)
			if downSince.IsZero() {
				downSince = now
			}
			warnedAt = now
		case downSince.IsZero():
			r.errors.Add(1)
			log.Warn("redis unreachable; retrying", "err", err)
			downSince, warnedAt = now, now
		case now.Sub(warnedAt) >= stillDownWarning:
			r.errors.Add(1)
			log.Warn("redis still unreachable; retrying", "err", err, "down_for", now.Sub(downSince).Round(time.Second))
			warnedAt = now
		default:
			r.errors.Add(1)
			log.Debug("redis connection failed", "err", err)
		}
		// In a cluster, a master that fails over is back within seconds,
		// as another: retries there stay frequent.
		d := min(maxBackoff, minBackoff<<min(attempt, 16))
		if r.cluster {
			d = min(d, maxClusterBackoff)
		}
		d = d/2 + rand.N(d/2+1)
		attempt++
		t := time.NewTimer(d)
		select {
		case <-r.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// checkNotCluster logs an error when the single Redis of the bus's URL is
// a node of a Redis Cluster: it would answer MOVED for every slot it does
// not serve, and the URL wants redis+cluster://.
func (r *Redis) checkNotCluster(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, redisTimeout)
	defer cancel()
	info, err := r.client.Info(cctx, "cluster").Result()
	if err != nil {
		return
	}
	r.clusterChecked.Store(true)
	if strings.Contains(info, "cluster_enabled:1") {
		r.wrongMode.Store(true)
		r.log.Error("redis is a node of a Redis Cluster, but the URL names a single server: commands for the slots of other nodes would fail (MOVED), and this node would miss what the other nodes publish; it stays unready. Use redis+cluster://host:port,... instead")
	}
}

// retired reports whether sh has ended.
func (r *Redis) retired(sh *shard) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return sh.retired
}

// retireIfEmptyLocked ends sh when it has no channel left (never the
// single Redis's); r.mu is held.
func (r *Redis) retireIfEmptyLocked(sh *shard) bool {
	if !r.cluster || sh.n > 0 {
		return false
	}
	if r.shards[sh.addr] == sh {
		delete(r.shards, sh.addr)
	}
	sh.retired, sh.ready = true, false
	r.updateReadyLocked()
	return true
}

// rebalance reads the cluster's slot map, and moves the channels of sh
// whose slots another master serves now to that master's shard, which
// subscribes them. Channels sh no longer wants are forgotten: its next
// connection has none. A shard left with no channel is retired.
func (r *Redis) rebalance(ctx context.Context, sh *shard) error {
	m, _, err := r.loadSlots(ctx, false)
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := err == nil && !slices.Equal(m, r.slots)
	if changed {
		r.slots = m
	}
	if r.slots == nil {
		return err
	}
	// What was queued for the connection that ended is moot: the next one
	// subscribes everything wanted, where the slot map says.
	r.clearDirtyLocked(sh)
	for _, s := range r.subs {
		if s.shard != sh {
			continue
		}
		if !s.wanted {
			r.forgetLocked(s)
			continue
		}
		addr := r.slots[s.slot]
		if addr == sh.addr {
			continue
		}
		to := r.shardAtLocked(addr)
		if to == nil { // closed
			break
		}
		r.moveLocked(s, to)
	}
	if changed || r.staleLeft {
		// Other shards' channels may have moved too (a manual failover).
		r.moveStaleLocked()
	}
	r.retireIfEmptyLocked(sh)
	return err
}

// updateReadyLocked sets Ready and parley_redis_connected. On a single
// Redis both say that its connection is up and subscribed. In a cluster,
// parley_redis_connected says so of every shard, and Ready of the shard
// that holds the node's own channel (what Send and Post to its sessions
// need): a failed master takes out of the load balancer's pool only the
// nodes whose channel it held, not every node with rooms on it, while the
// other shards' rooms go on. r.mu is held. It reports whether Ready became
// true.
func (r *Redis) updateReadyLocked() (nowReady bool) {
	all := len(r.shards) > 0
	for _, sh := range r.shards {
		if !sh.ready {
			all = false
			break
		}
	}
	if all {
		r.metrics.connected.Set(1)
	} else {
		r.metrics.connected.Set(0)
	}
	ready := all
	if r.cluster {
		node := r.subs[r.nodeTopic]
		ready = node != nil && node.shard.ready && node.sent && node.outstanding() == 0
	}
	return !r.setReady(ready) && ready
}

// setReady sets Ready and reports whether it was true.
func (r *Redis) setReady(ready bool) (wasReady bool) {
	return r.ready.Swap(ready)
}

// connection makes one pub/sub connection of sh and serves it until it
// breaks, the bus closes, or sh has no channel left; it reports whether sh
// was ready until then.
func (r *Redis) connection(ctx context.Context, sh *shard) (lost bool, err error) {
	ps := sh.client.Subscribe(ctx)
	gen, initial := r.startGeneration(sh)
	readerErr := make(chan error, 1)
	reading := false
	end := func(cause error) (bool, error) {
		ps.Close()
		if reading {
			<-readerErr
		}
		r.mu.Lock()
		lost := sh.ready
		sh.ready = false
		sh.down = !errors.Is(cause, errRetired)
		r.updateReadyLocked()
		r.mu.Unlock()
		return lost, cause
	}
	if len(initial) == 0 {
		r.mu.Lock()
		retired := r.retireIfEmptyLocked(sh)
		r.mu.Unlock()
		if retired {
			return end(errRetired)
		}
	}

	write := r.subscribeWriter(ps, true)
	for _, batch := range r.batches(initial) {
		wctx, cancel := context.WithTimeout(ctx, redisTimeout)
		err := write(wctx, batch...)
		cancel()
		if err != nil {
			return end(fmt.Errorf("subscribe: %w", err))
		}
		if !reading {
			reading = true
			go func() { readerErr <- r.read(ctx, ps, sh, gen) }()
		}
	}
	if !reading {
		// Nothing to subscribe (what the shard had moved away, and
		// something moved in since): connect with a PING, and the shard
		// is ready once it answers.
		pctx, cancel := context.WithTimeout(ctx, redisTimeout)
		err := ps.Ping(pctx)
		cancel()
		if err != nil {
			return end(fmt.Errorf("ping: %w", err))
		}
		reading = true
		go func() { readerErr <- r.read(ctx, ps, sh, gen) }()
		r.shardReady(sh, gen)
	}

	ping := time.NewTicker(pingInterval)
	defer ping.Stop()
	var lastSync time.Time
	for {
		select {
		case <-r.stop:
			return end(ErrClosed)
		case err := <-readerErr:
			reading = false
			return end(err)
		case <-sh.kick:
			if time.Since(lastSync) < syncWindow {
				// A burst: let it gather into one command.
				time.Sleep(syncWindow)
			}
			err := r.sync(ctx, ps, sh)
			lastSync = time.Now()
			if err != nil {
				return end(err)
			}
		case <-ping.C:
			r.mu.Lock()
			retired := r.retireIfEmptyLocked(sh)
			r.mu.Unlock()
			if retired {
				return end(errRetired)
			}
			if silent := time.Since(time.Unix(0, sh.lastRecv.Load())); silent > pingTimeout {
				return end(fmt.Errorf("no reply for %v", silent.Round(time.Millisecond)))
			}
			pctx, cancel := context.WithTimeout(ctx, redisTimeout)
			err := ps.Ping(pctx)
			cancel()
			if err != nil {
				return end(fmt.Errorf("ping: %w", err))
			}
		}
	}
}

// subscribeWriter returns what writes a (un)subscription on ps: SUBSCRIBE
// and UNSUBSCRIBE on a single Redis, SSUBSCRIBE and SUNSUBSCRIBE in a
// cluster.
func (r *Redis) subscribeWriter(ps *redis.PubSub, subscribe bool) func(context.Context, ...string) error {
	switch {
	case r.cluster && subscribe:
		return ps.SSubscribe
	case r.cluster:
		return ps.SUnsubscribe
	case subscribe:
		return ps.Subscribe
	default:
		return ps.Unsubscribe
	}
}

// batches splits channels into the commands that (un)subscribe them: at
// most maxBatch each and, in a cluster, of one slot each (Redis refuses
// others).
func (r *Redis) batches(channels []string) [][]string {
	if !r.cluster {
		return chunk(channels, maxBatch)
	}
	type slotted struct {
		slot    int
		channel string
	}
	by := make([]slotted, len(channels))
	for i, ch := range channels {
		by[i] = slotted{keySlot(ch), ch}
	}
	slices.SortFunc(by, func(a, b slotted) int { return a.slot - b.slot })
	for i, c := range by {
		channels[i] = c.channel
	}
	var out [][]string
	for i := 0; i < len(by); {
		j := i + 1
		for j < len(by) && j-i < maxBatch && by[j].slot == by[i].slot {
			j++
		}
		out = append(out, channels[i:j:j])
		i = j
	}
	return out
}

// startGeneration starts a connection of sh: every channel it wants is to
// be subscribed, the node topic last (on a single Redis; a cluster's
// commands go in slot order), and the rooms that were confirmed
// before get HandleResync once confirmed again. Channels no longer wanted
// are forgotten: the new connection has none.
func (r *Redis) startGeneration(sh *shard) (gen uint64, channels []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	sh.gen = r.gen
	r.clearDirtyLocked(sh)
	sh.dirty = sh.dirty[:0]
	channels = make([]string, 0, sh.n)
	var node *subscription
	for _, s := range r.subs {
		if s.shard != sh {
			continue
		}
		s.sent, s.pendSub, s.pendUnsub, s.initial = false, 0, 0, false
		if !s.wanted {
			r.forgetLocked(s)
			continue
		}
		if s.channel == r.nodeTopic {
			node = s
			continue
		}
		s.resync = s.resync || s.confirmed
		s.sent, s.pendSub, s.initial = true, 1, true
		channels = append(channels, s.channel)
	}
	if node != nil {
		node.sent, node.pendSub, node.initial = true, 1, true
		channels = append(channels, r.nodeTopic)
	}
	sh.initial = len(channels)
	sh.lastRecv.Store(time.Now().UnixNano())
	return sh.gen, channels
}

// sync writes what changed on sh since the last sync: a SUBSCRIBE for the
// channels newly wanted and an UNSUBSCRIBE for those no longer wanted (per
// batch).
func (r *Redis) sync(ctx context.Context, ps *redis.PubSub, sh *shard) error {
	var sub, unsub []string
	r.mu.Lock()
	for _, s := range sh.dirty {
		if s.shard != sh {
			continue // moved to another shard, and queued there
		}
		s.dirty = false
		switch {
		case s.wanted && !s.sent:
			s.sent = true
			s.pendSub++
			sub = append(sub, s.channel)
		case !s.wanted && s.sent:
			s.sent = false
			s.pendUnsub++
			unsub = append(unsub, s.channel)
		case s.wanted && s.outstanding() == 0 && !s.confirmed:
			// Unsubscribed and subscribed again before any command went
			// out: Redis never stopped delivering.
			s.confirmed = true
			close(s.ready)
		case !s.wanted && s.outstanding() == 0:
			r.forgetLocked(s)
		}
	}
	clear(sh.dirty)
	sh.dirty = sh.dirty[:0]
	r.mu.Unlock()
	for _, c := range []struct {
		name     string
		channels []string
		write    func(context.Context, ...string) error
	}{{"subscribe", sub, r.subscribeWriter(ps, true)}, {"unsubscribe", unsub, r.subscribeWriter(ps, false)}} {
		for _, batch := range r.batches(c.channels) {
			wctx, cancel := context.WithTimeout(ctx, redisTimeout)
			err := c.write(wctx, batch...)
			cancel()
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
		}
	}
	return nil
}

// read reads one connection of sh until it breaks.
func (r *Redis) read(ctx context.Context, ps *redis.PubSub, sh *shard, gen uint64) error {
	for {
		v, err := ps.Receive(ctx)
		if slot, addr, ok := movedError(err); ok && r.cluster {
			// A (un)subscription sent on a stale slot map: the
			// connection goes on, the slot's channels go to its master.
			if err := r.movedSlot(sh, gen, slot, addr); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		sh.lastRecv.Store(time.Now().UnixNano())
		switch v := v.(type) {
		case *redis.Subscription:
			if err := r.confirm(sh, gen, v.Kind, v.Channel); err != nil {
				return err
			}
		case *redis.Message:
			r.dispatch(sh, v)
		}
	}
}

// confirm takes Redis's reply to a SUBSCRIBE or UNSUBSCRIBE of channel on
// sh. Replies come in the order of the commands, one per channel each. In a
// cluster, an UNSUBSCRIBE that no command asked for is the master letting
// go of the channel's slot: the channel is subscribed again (see above);
// and a former master's UNSUBSCRIBE of a channel that moved is ignored. Any
// other reply nobody asked for ends the connection.
func (r *Redis) confirm(sh *shard, gen uint64, kind, channel string) error {
	var resync *subscription
	r.mu.Lock()
	if gen != sh.gen {
		r.mu.Unlock()
		return errStale
	}
	s := r.subs[channel]
	unsub := kind == "unsubscribe" || kind == "sunsubscribe"
	if s == nil || s.shard != sh {
		r.mu.Unlock()
		if r.cluster && unsub {
			// A former master letting go of a channel that moved, or
			// answering for one forgotten since (see below).
			return nil
		}
		return fmt.Errorf("unexpected %s of %q", kind, channel)
	}
	switch {
	case !unsub && s.pendSub > 0:
		s.pendSub--
	case unsub && s.pendUnsub > 0:
		s.pendUnsub--
	case unsub && r.cluster:
		// The master's own: it let go of the channel's slot (a slot
		// migration; a reply of ours that it came before is taken for
		// it, and that reply then for this). With no SSUBSCRIBE in
		// flight, Redis has the channel no more: the next sync subscribes
		// it again if it is wanted (even if it was unwanted meanwhile),
		// which the master answers with MOVED to the slot's new master if
		// it has one, or forgets it.
		again := false
		if s.pendSub == 0 && s.sent {
			s.sent = false
			again = s.wanted
			r.markDirty(s)
			if s.channel == r.nodeTopic {
				r.updateReadyLocked()
			}
		}
		// An SSUBSCRIBE in flight answers for itself (MOVED, or
		// subscribed again); what was published meanwhile is filled in.
		if s.wanted {
			s.resync = s.resync || s.confirmed
		}
		r.mu.Unlock()
		sh.kickRun()
		if again {
			r.reloadSoon()
		}
		return nil
	default:
		r.mu.Unlock()
		return fmt.Errorf("unexpected %s of %q", kind, channel)
	}
	nowReady := false
	if s.initial {
		s.initial = false
		sh.initial--
		nowReady = sh.initial == 0
	}
	if s.outstanding() == 0 {
		switch {
		case s.sent && s.wanted:
			if !s.confirmed {
				s.confirmed = true
				close(s.ready)
			}
			if s.channel == r.nodeTopic && !nowReady {
				// The node's channel, moved here: Ready may follow.
				r.updateReadyLocked()
			}
			if s.resync {
				s.resync = false
				resync = s
			}
		case !s.sent && !s.wanted && !s.dirty:
			r.forgetLocked(s)
		}
	}
	r.mu.Unlock()

	if resync != nil {
		resync.deliver.Lock()
		if ref := resync.h.Load(); ref != nil {
			ref.HandleResync(resync.room)
		}
		resync.deliver.Unlock()
	}
	if nowReady {
		r.shardReady(sh, gen)
	}
	return nil
}

// shardReady marks sh ready: connection gen has every subscription.
func (r *Redis) shardReady(sh *shard, gen uint64) {
	r.mu.Lock()
	if gen != sh.gen || sh.ready {
		r.mu.Unlock()
		return
	}
	sh.ready, sh.down = true, false
	busReady := r.updateReadyLocked()
	again := sh.everConnected || sh.takeover
	sh.everConnected, sh.takeover = true, false
	r.mu.Unlock()
	r.connected(sh, again, busReady)
}

// movedSlot takes Redis's MOVED answer to a (un)subscription on sh's
// connection gen: slot is served by the master at addr. The channels of the
// slot that sh holds move to that master's shard (those no longer wanted
// are forgotten), and the slot map is read again.
func (r *Redis) movedSlot(sh *shard, gen uint64, slot int, addr string) error {
	r.mu.Lock()
	if gen != sh.gen {
		r.mu.Unlock()
		return errStale
	}
	if addr == sh.addr {
		r.mu.Unlock()
		return fmt.Errorf("MOVED %d to this very master", slot)
	}
	if r.slots != nil {
		r.slots[slot] = addr
	}
	to := r.shardAtLocked(addr)
	if to == nil {
		r.mu.Unlock()
		return ErrClosed
	}
	nowReady := false
	for _, s := range r.subs {
		if s.shard != sh || s.slot != slot {
			continue
		}
		if s.initial && sh.initial == 1 {
			nowReady = true
		}
		if !s.wanted {
			if s.initial {
				s.initial = false
				sh.initial--
			}
			r.forgetLocked(s)
			continue
		}
		r.moveLocked(s, to)
	}
	r.mu.Unlock()
	r.reloadSoon()
	if nowReady {
		r.shardReady(sh, gen)
	}
	return nil
}

// movedError reports whether err is a MOVED answer, and its slot and
// address.
func movedError(err error) (slot int, addr string, ok bool) {
	var rerr redis.Error
	if err == nil || !errors.As(err, &rerr) {
		return 0, "", false
	}
	f := strings.Fields(rerr.Error())
	if len(f) != 3 || f[0] != "MOVED" {
		return 0, "", false
	}
	slot, aerr := strconv.Atoi(f[1])
	if aerr != nil || slot < 0 || slot >= slotCount {
		return 0, "", false
	}
	return slot, f[2], true
}

// connected takes a shard's connection that has every subscription: again
// when the shard had been connected before, busReady when the bus is Ready
// now.
func (r *Redis) connected(sh *shard, again, busReady bool) {
	log := r.log
	if r.cluster {
		log = log.With("shard", sh.addr)
	}
	if again {
		r.reconnects.Add(1)
		r.metrics.reconnects.Inc()
		if !busReady {
			log.Info("redis connection recovered")
		}
	}
	switch {
	case !busReady:
	case r.everConnected.Swap(true):
		log.Info("redis connection recovered")
	default:
		log.Info("redis connected")
	}
	if !again && !busReady {
		// A shard's first connection, to a master that had no channel
		// of this node: nothing was lost.
		return
	}
	// Redis may have come back empty (or a replica that took over may have
	// lacked the latest writes): renew the leases now, and reap none until
	// the other nodes have had time to renew theirs.
	r.reapFrom.Store(time.Now().Add(r.cfg.PresenceTTL / 3).UnixNano())
	select {
	case r.renewNow <- struct{}{}:
	default:
	}
}

// dispatch hands a published payload to its handler or session.
func (r *Redis) dispatch(sh *shard, msg *redis.Message) {
	r.mu.Lock()
	s := r.subs[msg.Channel]
	// What a shard's connection brings for a channel that has moved to
	// another shard comes there too.
	mine := s != nil && s.shard == sh
	r.mu.Unlock()
	if !mine {
		return
	}
	if msg.Channel == r.nodeTopic {
		r.nodePayload(msg.Payload)
		return
	}
	if s.room == "" || s.h.Load() == nil {
		return
	}
	var m *Message
	var e PresenceEvent
	ok := false
	if p := msg.Payload; p != "" {
		switch p[0] {
		case 'm':
			m, ok = decodeMessage(s.room, p[1:])
		case 'j', 'l':
			e.Room, e.Join = s.room, p[0] == 'j'
			e.Member, ok = decodeMember(p[1:])
		}
	}
	if !ok {
		r.dropped.Add(1)
		r.metrics.dropped.Inc()
		return
	}
	s.deliver.Lock()
	defer s.deliver.Unlock()
	ref := s.h.Load()
	if ref == nil {
		return
	}
	if m != nil {
		r.metrics.lag.Observe(max(0, time.Since(time.Unix(0, m.Time)).Seconds()))
		ref.HandleMessage(m)
	} else {
		s.presence.Store(r.presenceMarks.Add(1))
		ref.HandlePresence(e)
	}
}

// nodePayload takes what came on this node's channel: a payload that Send
// addressed to a session here; word that a registration here was replaced
// by one on another node, which it drops and answers; or the answer to such
// word from this node's Register.
func (r *Redis) nodePayload(payload string) {
	if session, addr, replaced, ok := decodeReplaced(payload); ok {
		r.dropRegistration(session, replaced)
		if node, ok := addrNode(addr); ok {
			select {
			case r.letGoQueue <- letGo{node: node, addr: addr}:
			default: // the registering node stops waiting at handoffTimeout
			}
		}
		return
	}
	if payload != "" && payload[0] == nodeLetGo {
		r.smu.Lock()
		if ch := r.handoffs[payload[1:]]; ch != nil {
			close(ch)
			delete(r.handoffs, payload[1:])
		}
		r.smu.Unlock()
		return
	}
	session, data, ok := decodeSend(payload)
	var e *sessionEntry
	if ok {
		r.smu.RLock()
		e = r.sessions[session]
		if l, was := r.unregistered[session]; e == nil && was && time.Now().Before(l.until) {
			e = l.e
		}
		r.smu.RUnlock()
	}
	if e == nil {
		r.dropped.Add(1)
		r.metrics.dropped.Inc()
		return
	}
	e.deliver(data)
}

// letGo tells node that this node let go of a session that the registration
// addr took.
type letGo struct{ node, addr string }

// letGoLoop publishes what nodePayload queues on r.letGoQueue, until Close:
// off the reading goroutine, which must not wait for Redis.
func (r *Redis) letGoLoop(ctx context.Context) {
	defer r.wg.Done()
	for {
		select {
		case <-r.stop:
			return
		case l := <-r.letGoQueue:
			pctx, cancel := context.WithTimeout(ctx, redisTimeout)
			_, err := r.publishNode(pctx, l.node, string(nodeLetGo)+l.addr)
			cancel()
			if err != nil && !r.closed.Load() {
				r.errors.Add(1)
				r.metrics.errors.Inc()
				r.log.Debug("let go of a session failed", "err", err)
			}
		}
	}
}
