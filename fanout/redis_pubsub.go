package fanout

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The pub/sub connection. One goroutine, run, owns it: it makes the
// connection, writes every SUBSCRIBE and UNSUBSCRIBE (batching what callers
// asked for meanwhile), pings it, and makes it again when it breaks. Another,
// read, reads it for as long as it lives: it matches Redis's confirmations
// to what was asked, and calls the handlers, one reply at a time, so a room's
// calls never overlap and keep Redis's order.
//
// Each connection is a generation: a fresh go-redis PubSub. Any error ends
// it; the next one subscribes to everything wanted, and the handler of every
// room that had been subscribed gets HandleResync once Redis confirms it
// again.

// maxBatch bounds the channels of one SUBSCRIBE or UNSUBSCRIBE.
const maxBatch = 1000

// syncWindow is how long subscription changes gather before they are
// written when the last write was as recent: a lone Subscribe goes out at
// once, a burst in few commands.
const syncWindow = time.Millisecond

// subscription is a channel the bus wants, or wanted, on its connection:
// a room's, or the node topic (room empty).
type subscription struct {
	channel string
	room    string
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

	// wanted is whether the bus wants the channel; confirmed, whether Redis
	// has confirmed it since it was last wanted; ready is closed then (or
	// when it is no longer wanted), waking the Subscribe calls waiting.
	wanted    bool
	confirmed bool
	ready     chan struct{}
	// sent is whether the last command for the channel on this connection
	// was SUBSCRIBE, and outstanding how many replies to such commands are
	// still due. With none due, Redis's state is sent.
	sent        bool
	outstanding int
	// initial marks a subscription of the connection's first SUBSCRIBE not
	// yet confirmed; resync, one whose handler gets HandleResync then.
	initial bool
	resync  bool
	dirty   bool
}

type handlerRef struct{ Handler }

// errStale ends a reader whose connection is no longer current.
var errStale = errors.New("fanout: stale pub/sub connection")

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
	if (s == nil || !s.wanted) && !r.ready.Load() {
		r.mu.Unlock()
		return fmt.Errorf("%w: subscribe: not connected", ErrRedisUnavailable)
	}
	if s == nil {
		s = &subscription{channel: ch, room: room}
		r.subs[ch] = s
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
	wait := s.ready
	r.mu.Unlock()
	if fresh {
		r.kickRun()
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
	r.mu.Unlock()
	if undo {
		r.kickRun()
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
	r.mu.Unlock()
	r.kickRun()
	// Wait out a handler call in progress: none starts after this.
	s.deliver.Lock()
	s.deliver.Unlock()
	return nil
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

// markDirty queues s for the next sync; r.mu is held.
func (r *Redis) markDirty(s *subscription) {
	if !s.dirty {
		s.dirty = true
		r.dirty = append(r.dirty, s)
	}
}

// stillDownWarning is how often run warns again while Redis stays out of
// reach.
const stillDownWarning = 30 * time.Second

// kickRun wakes run to sync the subscriptions.
func (r *Redis) kickRun() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run makes the pub/sub connection, again and again, until Close. It warns
// when the connection is lost (or cannot be made at start), and again every
// stillDownWarning while it cannot be made (a wrong password or address looks
// like a Redis that is down, and must not go unnoticed), and backs off
// exponentially, with jitter, between attempts. Each failed attempt counts
// as an error.
func (r *Redis) run(ctx context.Context) {
	defer r.wg.Done()
	attempt := 0
	var downSince, warnedAt time.Time
	for {
		lost, err := r.connection(ctx)
		if r.closed.Load() {
			return
		}
		now := time.Now()
		switch {
		case lost:
			r.log.Warn("redis connection lost; reconnecting", "err", err)
			attempt, downSince, warnedAt = 0, now, now
		case downSince.IsZero():
			r.errors.Add(1)
			r.log.Warn("redis unreachable; retrying", "err", err)
			downSince, warnedAt = now, now
		case now.Sub(warnedAt) >= stillDownWarning:
			r.errors.Add(1)
			r.log.Warn("redis still unreachable; retrying", "err", err, "down_for", now.Sub(downSince).Round(time.Second))
			warnedAt = now
		default:
			r.errors.Add(1)
			r.log.Debug("redis connection failed", "err", err)
		}
		d := min(maxBackoff, minBackoff<<min(attempt, 16))
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

// setReady sets Ready and reports whether it changed from true.
func (r *Redis) setReady(ready bool) (wasReady bool) {
	wasReady = r.ready.Swap(ready)
	if ready {
		r.metrics.connected.Set(1)
	} else {
		r.metrics.connected.Set(0)
	}
	return wasReady
}

// connection makes one pub/sub connection and serves it until it breaks or
// the bus closes; it reports whether the bus was ready until then.
func (r *Redis) connection(ctx context.Context) (lost bool, err error) {
	ps := r.client.Subscribe(ctx)
	gen, initial := r.startGeneration()
	readerErr := make(chan error, 1)
	reading := false
	end := func(cause error) (bool, error) {
		ps.Close()
		if reading {
			<-readerErr
		}
		return r.setReady(false), cause
	}

	for i := 0; i < len(initial); i += maxBatch {
		wctx, cancel := context.WithTimeout(ctx, redisTimeout)
		err := ps.Subscribe(wctx, initial[i:min(i+maxBatch, len(initial))]...)
		cancel()
		if err != nil {
			return end(fmt.Errorf("subscribe: %w", err))
		}
		if !reading {
			reading = true
			go func() { readerErr <- r.read(ctx, ps, gen) }()
		}
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
		case <-r.kick:
			if time.Since(lastSync) < syncWindow {
				// A burst: let it gather into one command.
				time.Sleep(syncWindow)
			}
			err := r.sync(ctx, ps)
			lastSync = time.Now()
			if err != nil {
				return end(err)
			}
		case <-ping.C:
			if silent := time.Since(time.Unix(0, r.lastRecv.Load())); silent > pingTimeout {
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

// startGeneration starts a connection: every wanted channel is to be
// subscribed, the node topic last, and the rooms that were confirmed before
// get HandleResync once confirmed again. Channels no longer wanted are
// forgotten: the new connection has none.
func (r *Redis) startGeneration() (gen uint64, channels []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	for _, s := range r.dirty {
		s.dirty = false
	}
	clear(r.dirty)
	r.dirty = r.dirty[:0]
	channels = make([]string, 0, len(r.subs))
	for ch, s := range r.subs {
		s.sent, s.outstanding, s.initial = false, 0, false
		if !s.wanted {
			delete(r.subs, ch)
			continue
		}
		if ch == r.nodeTopic {
			continue
		}
		s.resync = s.confirmed
		s.sent, s.outstanding, s.initial = true, 1, true
		channels = append(channels, ch)
	}
	node := r.subs[r.nodeTopic]
	node.sent, node.outstanding, node.initial = true, 1, true
	channels = append(channels, r.nodeTopic)
	r.initial = len(channels)
	r.lastRecv.Store(time.Now().UnixNano())
	return r.gen, channels
}

// sync writes what changed since the last sync: one SUBSCRIBE for the
// channels newly wanted and one UNSUBSCRIBE for those no longer wanted (per
// maxBatch).
func (r *Redis) sync(ctx context.Context, ps *redis.PubSub) error {
	var sub, unsub []string
	r.mu.Lock()
	for _, s := range r.dirty {
		s.dirty = false
		switch {
		case s.wanted && !s.sent:
			s.sent = true
			s.outstanding++
			sub = append(sub, s.channel)
		case !s.wanted && s.sent:
			s.sent = false
			s.outstanding++
			unsub = append(unsub, s.channel)
		case s.wanted && s.outstanding == 0 && !s.confirmed:
			// Unsubscribed and subscribed again before any command went
			// out: Redis never stopped delivering.
			s.confirmed = true
			close(s.ready)
		case !s.wanted && s.outstanding == 0 && r.subs[s.channel] == s:
			delete(r.subs, s.channel)
		}
	}
	clear(r.dirty)
	r.dirty = r.dirty[:0]
	r.mu.Unlock()
	for _, c := range []struct {
		name     string
		channels []string
		write    func(context.Context, ...string) error
	}{{"subscribe", sub, ps.Subscribe}, {"unsubscribe", unsub, ps.Unsubscribe}} {
		for i := 0; i < len(c.channels); i += maxBatch {
			wctx, cancel := context.WithTimeout(ctx, redisTimeout)
			err := c.write(wctx, c.channels[i:min(i+maxBatch, len(c.channels))]...)
			cancel()
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
		}
	}
	return nil
}

// read reads one connection until it breaks.
func (r *Redis) read(ctx context.Context, ps *redis.PubSub, gen uint64) error {
	for {
		v, err := ps.Receive(ctx)
		if err != nil {
			return err
		}
		r.lastRecv.Store(time.Now().UnixNano())
		switch v := v.(type) {
		case *redis.Subscription:
			if err := r.confirm(gen, v.Channel); err != nil {
				return err
			}
		case *redis.Message:
			r.dispatch(v)
		}
	}
}

// confirm takes Redis's reply to a SUBSCRIBE or UNSUBSCRIBE of channel.
// Replies come in the order of the commands, one per channel each.
func (r *Redis) confirm(gen uint64, channel string) error {
	var resync *subscription
	r.mu.Lock()
	if gen != r.gen {
		r.mu.Unlock()
		return errStale
	}
	s := r.subs[channel]
	if s == nil || s.outstanding == 0 {
		r.mu.Unlock()
		return fmt.Errorf("unexpected subscription reply for %q", channel)
	}
	s.outstanding--
	nowReady := false
	if s.initial {
		s.initial = false
		r.initial--
		nowReady = r.initial == 0
	}
	if s.outstanding == 0 {
		switch {
		case s.sent && s.wanted:
			if !s.confirmed {
				s.confirmed = true
				close(s.ready)
			}
			if s.resync {
				s.resync = false
				resync = s
			}
		case !s.sent && !s.wanted && !s.dirty:
			delete(r.subs, channel)
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
		r.connected()
	}
	return nil
}

// connected marks the bus ready once a connection has every subscription.
func (r *Redis) connected() {
	r.setReady(true)
	if r.everConnected.Swap(true) {
		r.reconnects.Add(1)
		r.metrics.reconnects.Inc()
		r.log.Info("redis connection recovered")
	} else {
		r.log.Info("redis connected")
	}
	// Redis may have come back empty: renew the leases now, and reap none
	// until the other nodes have had time to renew theirs.
	r.reapFrom.Store(time.Now().Add(r.cfg.PresenceTTL / 3).UnixNano())
	select {
	case r.renewNow <- struct{}{}:
	default:
	}
}

// dispatch hands a published payload to its handler or session.
func (r *Redis) dispatch(msg *redis.Message) {
	if msg.Channel == r.nodeTopic {
		r.nodePayload(msg.Payload)
		return
	}
	r.mu.Lock()
	s := r.subs[msg.Channel]
	r.mu.Unlock()
	if s == nil || s.room == "" || s.h.Load() == nil {
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
			err := r.client.Publish(pctx, nodeChannelPrefix+l.node, string(nodeLetGo)+l.addr).Err()
			cancel()
			if err != nil && !r.closed.Load() {
				r.errors.Add(1)
				r.metrics.errors.Inc()
				r.log.Debug("let go of a session failed", "err", err)
			}
		}
	}
}
