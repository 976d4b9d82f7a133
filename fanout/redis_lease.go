package fanout

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Leases. Every PresenceTTL/3 the bus renews, in pipelined batches, the
// leases of the members it joined (one script per room, which also reaps the
// room's lapsed leases) and of the sessions it registered. The rooms it is
// subscribed to are reaped in the same pass, so that the members of a node
// that died leave, with leave events, within the TTL even in a room nobody
// touches. A member or address that Redis lost (a restart, or leases that
// lapsed while this node was cut off) is put back, a member with a join
// event; an address that another node has taken since is left to it.

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
	for _, batch := range chunk(r.leaseRooms(), renewBatch) {
		if r.closed.Load() {
			return
		}
		r.renewRooms(ctx, batch)
	}
	r.smu.RLock()
	sessions := make([]string, 0, len(r.sessions))
	for s := range r.sessions {
		sessions = append(sessions, s)
	}
	r.smu.RUnlock()
	for _, batch := range chunk(sessions, renewBatch) {
		if r.closed.Load() {
			return
		}
		r.renewSessions(ctx, batch)
	}
}

// leaseRooms returns the rooms where the bus holds members or subscribes.
func (r *Redis) leaseRooms() []string {
	seen := make(map[string]struct{})
	r.lmu.Lock()
	for room := range r.members {
		seen[room] = struct{}{}
	}
	r.lmu.Unlock()
	r.mu.Lock()
	for _, s := range r.subs {
		if s.wanted && s.room != "" {
			seen[s.room] = struct{}{}
		}
	}
	r.mu.Unlock()
	rooms := make([]string, 0, len(seen))
	for room := range seen {
		rooms = append(rooms, room)
	}
	return rooms
}

func (r *Redis) renewRooms(ctx context.Context, rooms []string) {
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	args := make([][]any, len(rooms))
	r.lmu.Lock()
	for i, room := range rooms {
		ms := r.members[room]
		a := make([]any, 0, 2+2*len(ms))
		a = append(a, roomChannel(room), r.presenceMs)
		for s, m := range ms {
			a = append(a, s, m)
		}
		args[i] = a
	}
	r.lmu.Unlock()
	r.pipelined(ctx, "renew presence", renewScript, len(rooms), func(ctx context.Context, p redis.Pipeliner, i int) {
		renewScript.EvalSha(ctx, p, presenceKeys(rooms[i]), args[i]...)
	})
}

func (r *Redis) renewSessions(ctx context.Context, sessions []string) {
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	r.smu.RLock()
	held := sessions[:0]
	for _, s := range sessions {
		if r.sessions[s] != nil {
			held = append(held, s)
		}
	}
	r.smu.RUnlock()
	r.pipelined(ctx, "renew sessions", claimScript, len(held), func(ctx context.Context, p redis.Pipeliner, i int) {
		claimScript.EvalSha(ctx, p, []string{sessionKey(held[i])}, r.cfg.NodeID, r.presenceMs)
	})
}

// pipelined runs the n commands that add adds in one pipeline. When Redis
// does not know script (it restarted), it loads it and runs the pipeline
// once more: every script of a renewal may run twice.
func (r *Redis) pipelined(ctx context.Context, what string, script *redis.Script, n int, add func(context.Context, redis.Pipeliner, int)) {
	if n == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*redisTimeout)
	defer cancel()
	run := func() ([]redis.Cmder, error) {
		return r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := range n {
				add(ctx, p, i)
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
