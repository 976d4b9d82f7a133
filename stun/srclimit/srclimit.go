// Package srclimit rate-limits requests per source address with a bounded
// table of token buckets.
//
// IPv4 sources are keyed by address, IPv6 sources by their /64, since one
// IPv6 host commonly owns a whole /64. When the table is full, buckets that
// have refilled completely are dropped first (forgetting them changes
// nothing); if every bucket is busy, an arbitrary sixteenth of them is
// dropped, which hands those sources a fresh burst but keeps memory bounded.
package srclimit

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter is safe for concurrent use.
type Limiter struct {
	mu      sync.Mutex
	limit   rate.Limit
	burst   int
	max     int
	buckets map[netip.Addr]*rate.Limiter
}

// New returns a Limiter allowing perSecond requests with the given burst to
// each source, tracking at most maxSources sources at once.
func New(perSecond float64, burst, maxSources int) *Limiter {
	return &Limiter{
		limit:   rate.Limit(perSecond),
		burst:   burst,
		max:     maxSources,
		buckets: make(map[netip.Addr]*rate.Limiter),
	}
}

// Key returns the table key of a source address.
func Key(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// Allow reports whether one more request from src is within its limit now.
func (l *Limiter) Allow(src netip.Addr, now time.Time) bool {
	k := Key(src)
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[k]
	if !ok {
		if len(l.buckets) >= l.max {
			l.evict(now)
		}
		b = rate.NewLimiter(l.limit, l.burst)
		l.buckets[k] = b
	}
	return b.AllowN(now, 1)
}

// Len returns the number of sources tracked.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

func (l *Limiter) evict(now time.Time) {
	for k, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) < l.max {
		return
	}
	n := max(l.max/16, 1)
	for k := range l.buckets {
		delete(l.buckets, k)
		n--
		if n == 0 {
			return
		}
	}
}
