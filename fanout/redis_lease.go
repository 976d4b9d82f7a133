package fanout

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Leases. Every PresenceTTL/3 the bus renews, in pipelined batches, the
// leases of the members it joined (one script per room, which then reaps the
// room's lapsed leases) and of the sessions it registered. It also reaps the
// subscribed rooms that it knows to have presence (subscription.presence),
// so that the members of a node that died leave, with leave events, within
// the TTL even in a room nobody touches; a room without presence costs
// nothing. A member that Redis lost (a restart, or leases that lapsed while
// this node was cut off) is put back, with a join event.
//
// A session's address that Redis lost is put back too; one that another
// registration holds, or that was released, is not: the newest Register
// wins, and the registration it replaced is dropped here, so that Send from
// this node goes through Redis to where the session is now.
//
// No lock is held while Redis runs a batch: the batch is read under the lock,
// run without it, and its results applied under it again, to what has not
// changed meanwhile. Leave and Unregister wait for a batch in flight that
// holds what they remove (see Redis.roomRenewals).

// renewBatch bounds the scripts of one pipeline.
const renewBatch = 256

// renewLoop renews leases until Close.
func (r *Redis) renewLoop(ctx context.Context) {
	defer r.wg.Done()
	t := time.NewTicker(r.cfg.PresenceTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		case <-r.renewNow:
		}
		r.renew(ctx)
	}
}

// renew makes one pass over every room and session.
func (r *Redis) renew(ctx context.Context) {
	reap := time.Now().UnixNano() >= r.reapFrom.Load()
	for _, batch := range chunk(r.leaseRooms(), renewBatch) {
		if r.closed.Load() {
			return
		}
		r.renewRooms(ctx, batch, reap)
	}
	r.smu.Lock()
	now := time.Now()
	for s, l := range r.unregistered {
		if now.After(l.until) {
			delete(r.unregistered, s)
		}
	}
	sessions := make([]string, 0, len(r.sessions))
	for s := range r.sessions {
		sessions = append(sessions, s)
	}
	r.smu.Unlock()
	for _, batch := range chunk(sessions, renewBatch) {
		if r.closed.Load() {
			return
		}
		r.renewSessions(ctx, batch)
	}
}

// roomLease is a room that a renewal visits: one where the bus holds
// members, or a subscribed room with presence, sub, marked mark.
type roomLease struct {
	room string
	sub  *subscription
	mark uint64
}

// markPresence notes that room has presence, when it is subscribed.
func (r *Redis) markPresence(room string) {
	r.mu.Lock()
	s := r.subs[roomChannel(room)]
	r.mu.Unlock()
	if s != nil {
		s.presence.Store(r.presenceMarks.Add(1))
	}
}

// leaseRooms returns the rooms where the bus holds members, and the
// subscribed rooms it knows to have presence.
func (r *Redis) leaseRooms() []roomLease {
	var rooms []roomLease
	seen := make(map[string]struct{})
	r.mu.Lock()
	for _, s := range r.subs {
		if s.wanted && s.room != "" {
			if mark := s.presence.Load(); mark != 0 {
				rooms = append(rooms, roomLease{room: s.room, sub: s, mark: mark})
				seen[s.room] = struct{}{}
			}
		}
	}
	r.mu.Unlock()
	r.lmu.Lock()
	for room := range r.members {
		if _, ok := seen[room]; !ok {
			rooms = append(rooms, roomLease{room: room})
		}
	}
	r.lmu.Unlock()
	return rooms
}

// renewRooms renews the bus's members of rooms and, when reap is set, reaps
// the rooms' lapsed leases. A subscribed room found empty is no longer
// known to have presence, unless an event came meanwhile.
func (r *Redis) renewRooms(ctx context.Context, rooms []roomLease, reap bool) {
	done := make(chan struct{})
	args := make([][]any, len(rooms))
	r.lmu.Lock()
	for i, rl := range rooms {
		ms := r.members[rl.room]
		a := make([]any, 0, 3+2*len(ms))
		a = append(a, roomChannel(rl.room), r.presenceMs, boolArg(reap))
		for s, m := range ms {
			a = append(a, s, m)
		}
		if len(ms) > 0 {
			r.roomRenewals[rl.room] = done
		}
		args[i] = a
	}
	r.lmu.Unlock()
	defer func() {
		r.lmu.Lock()
		for _, rl := range rooms {
			if r.roomRenewals[rl.room] == done {
				delete(r.roomRenewals, rl.room)
			}
		}
		r.lmu.Unlock()
		close(done)
	}()
	cmds := r.pipelined(ctx, "renew presence", r.scripts.renew, len(rooms), func(ctx context.Context, p redis.Pipeliner, i int) *redis.Cmd {
		return r.scripts.renew.EvalSha(ctx, p, presenceKeys(rooms[i].room), args[i]...)
	})
	for i, c := range cmds {
		if n, err := c.Int64(); err == nil && n == 0 && rooms[i].sub != nil {
			rooms[i].sub.presence.CompareAndSwap(rooms[i].mark, 0)
		}
	}
}

// renewSessions renews the addresses of sessions that are still registered,
// and drops the registrations that no longer hold theirs. A registration
// whose Register or Claim has not taken its address yet is left to the next
// pass (see sessionEntry.taken).
func (r *Redis) renewSessions(ctx context.Context, sessions []string) {
	done := make(chan struct{})
	held := make([]string, 0, len(sessions))
	addrs := make([]string, 0, len(sessions))
	r.smu.Lock()
	for _, s := range sessions {
		if e := r.sessions[s]; e != nil && e.taken {
			held = append(held, s)
			addrs = append(addrs, e.addr)
			r.sessRenewals[s] = done
		}
	}
	r.smu.Unlock()
	defer func() {
		r.smu.Lock()
		for _, s := range held {
			if r.sessRenewals[s] == done {
				delete(r.sessRenewals, s)
			}
		}
		r.smu.Unlock()
		close(done)
	}()
	cmds := r.pipelined(ctx, "renew sessions", renewAddrScript, len(held), func(ctx context.Context, p redis.Pipeliner, i int) *redis.Cmd {
		return renewAddrScript.EvalSha(ctx, p, []string{sessionKey(held[i])}, addrs[i], r.presenceMs)
	})
	for i, c := range cmds {
		if n, err := c.Int64(); err == nil && n == 0 {
			r.dropRegistration(held[i], addrs[i])
		}
	}
}

// dropRegistration forgets session's registration on this node if it is
// still the one of addr: another holds the session's address now.
func (r *Redis) dropRegistration(session, addr string) {
	r.smu.Lock()
	e := r.sessions[session]
	if e != nil && e.addr == addr {
		delete(r.sessions, session)
		r.lingerLocked(session, e)
	}
	r.smu.Unlock()
	if e != nil && e.addr == addr {
		r.log.Debug("session registered elsewhere; dropped here", "session", session)
	}
}

// pipelined runs the n commands that add adds in one pipeline, and returns
// them: each has its reply or its error. When Redis does not know script
// (it restarted), it loads it and runs the pipeline once more: every script
// of a renewal may run twice.
func (r *Redis) pipelined(ctx context.Context, what string, script *redis.Script, n int, add func(context.Context, redis.Pipeliner, int) *redis.Cmd) []*redis.Cmd {
	if n == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*redisTimeout)
	defer cancel()
	out := make([]*redis.Cmd, n)
	run := func() ([]redis.Cmder, error) {
		return r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := range n {
				out[i] = add(ctx, p, i)
			}
			return nil
		})
	}
	cmds, err := run()
	if err != nil && noScript(cmds) {
		if err = script.Load(ctx, r.client).Err(); err == nil {
			_, err = run()
		}
	}
	if err != nil && !r.closed.Load() {
		r.errors.Add(1)
		r.metrics.errors.Inc()
		r.log.Debug(what+" failed", "err", err)
	}
	return out
}

func noScript(cmds []redis.Cmder) bool {
	for _, c := range cmds {
		if err := c.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			return true
		}
	}
	return false
}

// chunk splits s into slices of at most n.
func chunk[T any](s []T, n int) [][]T {
	var out [][]T
	for len(s) > n {
		out = append(out, s[:n:n])
		s = s[n:]
	}
	if len(s) > 0 {
		out = append(out, s)
	}
	return out
}
