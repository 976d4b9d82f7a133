package fanout

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// A Redis Cluster. The bus's keys and room channels carry hash tags (see
// keyPrefix), so that each room, and each session's address with its
// mailbox, lives in one slot and one script can touch all of it. Messages go
// out with SPUBLISH and come in through SSUBSCRIBE: a room's message travels
// only within the shard that holds the room, instead of to every node of
// the cluster. Each node holds one sharded pub/sub connection per master
// that has slots of its channels (redis_pubsub.go), and the cluster's slot
// map tells which.
//
// A node's channel (what Send and Post address to its sessions) is
// hash-tagged by the node, so it sits in another slot than the session's
// address: the scripts that address a node in one step on a single Redis
// take two in a cluster (lookup, then SPUBLISH), see sendCluster,
// postCluster and takeCluster.

// clusterSchemes are the schemes of a cluster's RedisConfig.URL, and the
// scheme of each one's servers.
var clusterSchemes = map[string]string{"redis+cluster": "redis", "rediss+cluster": "rediss"}

// redisTarget is what RedisConfig.URL names: one server, or the seeds of a
// cluster.
type redisTarget struct {
	single  *redis.Options
	cluster *redis.ClusterOptions
}

// errBadURL is the error of a URL that go-redis refuses: its own message
// may quote the URL, password and all.
var errBadURL = errors.New("malformed, or an unknown scheme or option")

// CheckRedisURL reports whether u is a URL that RedisConfig takes, and why
// not. Its error never quotes u, which may hold a password.
func CheckRedisURL(u string) error {
	_, err := parseRedisURL(u)
	return err
}

// parseRedisURL reads RedisConfig.URL: redis://, rediss:// or unix:// for
// one server, redis+cluster:// or rediss+cluster:// with comma-separated
// seed addresses for a cluster.
func parseRedisURL(u string) (redisTarget, error) {
	scheme, rest, ok := strings.Cut(u, "://")
	base, cluster := clusterSchemes[scheme]
	if !ok || !cluster {
		opt, err := redis.ParseURL(u)
		if err != nil {
			// go-redis's message may quote the URL, password and all.
			return redisTarget{}, errBadURL
		}
		if strings.Contains(opt.Addr, ",") {
			return redisTarget{}, errors.New("several addresses: the URL of a Redis Cluster is redis+cluster://host:port,host:port,...")
		}
		return redisTarget{single: opt}, nil
	}
	// rest is [userinfo@]host:port[,host:port...][/][?query]
	query := ""
	if i := strings.IndexByte(rest, '?'); i >= 0 {
		rest, query = rest[:i], rest[i+1:]
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		if p := rest[i:]; p != "/" && p != "/0" {
			return redisTarget{}, errors.New("a Redis Cluster has only database 0")
		}
		rest = rest[:i]
	}
	userinfo := ""
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		userinfo, rest = rest[:i+1], rest[i+1:]
	}
	var seeds []string
	for _, a := range strings.Split(rest, ",") {
		if a = strings.TrimSpace(a); a != "" {
			seeds = append(seeds, a)
		}
	}
	if len(seeds) == 0 {
		return redisTarget{}, errors.New("a cluster URL names no seed address")
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return redisTarget{}, errors.New("the options after ? are not a query string")
	}
	for _, a := range seeds[1:] {
		q.Add("addr", a)
	}
	opt, err := redis.ParseClusterURL(base + "://" + userinfo + seeds[0] + "?" + q.Encode())
	if err != nil {
		return redisTarget{}, errBadURL
	}
	return redisTarget{cluster: opt}, nil
}

// newRedisClient returns the client of t with the bus's settings: no
// retries (a retried command may have run, and a publication would go out
// twice), no redirections followed for the same reason, the context's
// deadline on every call, and timeouts of redisTimeout unless the URL set
// them. It returns too the options of t's connections, which the cluster's
// pub/sub connections copy; its Addr is t's first address.
func newRedisClient(t redisTarget) (redis.UniversalClient, *redis.Options) {
	if t.single != nil {
		opt := t.single
		opt.MaxRetries = -1
		opt.DialerRetries = 1
		opt.ContextTimeoutEnabled = true
		defaultTimeouts(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.PoolTimeout)
		return redis.NewClient(opt), opt
	}
	opt := t.cluster
	opt.MaxRetries = -1
	opt.MaxRedirects = -1
	opt.DialerRetries = 1
	opt.ContextTimeoutEnabled = true
	defaultTimeouts(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.PoolTimeout)
	node := &redis.Options{
		Addr:                  opt.Addrs[0],
		Username:              opt.Username,
		Password:              opt.Password,
		MaxRetries:            -1,
		DialerRetries:         1,
		DialTimeout:           opt.DialTimeout,
		ReadTimeout:           opt.ReadTimeout,
		WriteTimeout:          opt.WriteTimeout,
		PoolTimeout:           opt.PoolTimeout,
		ContextTimeoutEnabled: true,
		TLSConfig:             opt.TLSConfig,
	}
	return redis.NewClusterClient(opt), node
}

// defaultTimeouts sets dial, read and write timeouts that are zero to
// redisTimeout, and the pool's to the read timeout.
func defaultTimeouts(dial, read, write, pool *time.Duration) {
	for _, d := range []*time.Duration{dial, read, write} {
		if *d == 0 {
			*d = redisTimeout
		}
	}
	if *pool == 0 {
		*pool = *read
	}
}

// shardClient returns a client of the master at addr, for its pub/sub
// connection. With TLS it checks the name the cluster client checks on
// every node: the first seed's host (the slot map gives addresses, often
// IPs, that certificates do not name).
func (r *Redis) shardClient(addr string) *redis.Client {
	opt := *r.nodeOpt
	opt.Addr = addr
	if opt.TLSConfig != nil {
		opt.TLSConfig = opt.TLSConfig.Clone()
	}
	opt.PoolSize = 1
	return redis.NewClient(&opt)
}

// errNotCluster is the error of a cluster URL that names a Redis that is
// not a cluster's node.
var errNotCluster = errors.New("not a Redis Cluster")

// slotCount is how many hash slots a Redis Cluster has.
const slotCount = 16384

// keySlot is the hash slot of a key or sharded channel: CRC16 (XMODEM) of
// its hash tag, the part between the first '{' and the next '}' when that
// is not empty, or of the whole key.
func keySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc ^= uint16(key[k]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % slotCount
}

// slotMap is which master serves each slot, by address; "" for a slot that
// none serves.
type slotMap []string

// loadSlots reads the cluster's slot map from a node that answers, and,
// when asked to (force) or when the map is not the bus's any more, makes the
// cluster client reload its own, so that the bus's commands go where the
// channels are. It tries a few nodes: one of them may be the master that
// just died. changed reports whether the map differs from the bus's.
func (r *Redis) loadSlots(ctx context.Context, force bool) (m slotMap, changed bool, err error) {
	cc := r.client.(*redis.ClusterClient)
	for range 3 {
		cctx, cancel := context.WithTimeout(ctx, redisTimeout)
		var slots []redis.ClusterSlot
		slots, err = cc.ClusterSlots(cctx).Result()
		cancel()
		if err != nil && strings.Contains(err.Error(), "cluster support disabled") {
			return nil, false, fmt.Errorf("%w: %w", errNotCluster, err)
		}
		if err != nil {
			continue
		}
		m = make(slotMap, slotCount)
		for _, s := range slots {
			if len(s.Nodes) == 0 || s.Start < 0 || s.End >= slotCount || s.Start > s.End {
				continue
			}
			for i := s.Start; i <= s.End; i++ {
				m[i] = s.Nodes[0].Addr
			}
		}
		if slices.Contains(m, "") {
			err = errors.New("the cluster does not serve every slot")
			continue
		}
		r.mu.Lock()
		changed = !slices.Equal(m, r.slots)
		r.mu.Unlock()
		if force || changed {
			rctx, cancel := context.WithTimeout(ctx, redisTimeout)
			cc.ReloadState(rctx)
			cancel()
		}
		return m, changed, nil
	}
	return nil, false, fmt.Errorf("cluster slots: %w", err)
}

// reloadInterval is the least time between two reloads of the slot map
// that failed commands ask for; slotsRefresh is how often it is reloaded
// when nothing asks, for what changes without a failure that the bus would
// see (a manual failover: the former master, a replica now, goes on
// delivering, until it replicates another master).
const (
	reloadInterval = 200 * time.Millisecond
	slotsRefresh   = 5 * time.Second
)

// moveStaleLocked moves every channel subscribed on a shard whose slot
// r.slots gives to another master to that master's shard, which subscribes
// it (with HandleResync). The former master may still deliver it (a
// replica now, after a manual failover, or until a migration lets go of
// the slot): dispatch drops what a shard brings for a channel it no longer
// holds, and confirm ignores the former master's SUNSUBSCRIBE of it; the
// shard retires once it has no channel left. A channel with a command in
// flight is left to its answer (MOVED moves it). r.mu is held.
//
// It sets r.staleLeft when it left such a channel to its answer (which a
// former master, a replica now, may give by subscribing it), so that the
// next read of the slot map walks the channels again although the map did
// not change.
func (r *Redis) moveStaleLocked() {
	r.staleLeft = false
	for _, s := range r.subs {
		sh := s.shard
		if sh.addr == "" || !s.wanted || r.slots[s.slot] == sh.addr {
			continue
		}
		if !s.sent || s.outstanding() > 0 {
			r.staleLeft = true
			continue
		}
		to := r.shardAtLocked(r.slots[s.slot])
		if to == nil { // closed
			return
		}
		r.moveLocked(s, to)
	}
}

// reloadHook asks for a reload of the slot map when a command fails in a
// way that says the map may be stale: MOVED or ASK (the bus follows no
// redirection), a cluster that is down or busy, or a node that is out of
// reach (its master may have failed over).
type reloadHook struct{ r *Redis }

func (h reloadHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h reloadHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if staleSlots(err) {
			h.r.reloadSoon()
		}
		return err
	}
}

func (h reloadHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			if staleSlots(c.Err()) {
				h.r.reloadSoon()
				break
			}
		}
		return err
	}
}

// staleSlots reports whether err may come from a stale slot map.
func staleSlots(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		for _, p := range []string{"MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "LOADING"} {
			if redis.HasErrorPrefix(rerr, p) {
				return true
			}
		}
		return false
	}
	return true
}

// reloadSoon wakes reloadLoop.
func (r *Redis) reloadSoon() {
	select {
	case r.reload <- struct{}{}:
	default:
	}
}

// reloadLoop reloads the slot map when asked, at most once per
// reloadInterval, until Close: the cluster client's, so that commands go
// to the masters that serve their slots now, and the bus's, so that new
// subscriptions do.
func (r *Redis) reloadLoop(ctx context.Context) {
	defer r.wg.Done()
	refresh := time.NewTicker(slotsRefresh)
	defer refresh.Stop()
	for {
		asked := false
		select {
		case <-r.stop:
			return
		case <-r.reload:
			asked = true
		case <-refresh.C:
		}
		m, changed, err := r.loadSlots(ctx, asked)
		// What loadSlots's own failures asked for is this very reload.
		select {
		case <-r.reload:
		default:
		}
		if err == nil {
			r.mu.Lock()
			if changed = !slices.Equal(m, r.slots); changed || r.staleLeft {
				r.slots = m
				r.moveStaleLocked()
			}
			r.mu.Unlock()
		} else if !r.closed.Load() {
			r.log.Debug("reloading the cluster's slot map failed", "err", err)
		}
		t := time.NewTimer(reloadInterval)
		select {
		case <-r.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}
