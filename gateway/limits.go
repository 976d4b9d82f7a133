package gateway

import (
	"net/http"
	"sync"

	"golang.org/x/time/rate"
)

// maxLimiters bounds the API's per-caller publish limiters.
const maxLimiters = 100_000

// limiterSet is a bounded set of token buckets keyed by caller; the HTTP API
// uses it to give token holders the publish limit sessions have.
type limiterSet struct {
	rate  rate.Limit
	burst int

	mu sync.Mutex
	m  map[string]*rate.Limiter
}

func newLimiterSet(r float64, burst int) *limiterSet {
	return &limiterSet{rate: rate.Limit(r), burst: burst, m: make(map[string]*rate.Limiter)}
}

func (l *limiterSet) allow(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.m[key]
	if lim == nil {
		if len(l.m) >= maxLimiters {
			// Forget full buckets first: they carry no state worth keeping.
			for k, v := range l.m {
				if v.Tokens() >= float64(l.burst) {
					delete(l.m, k)
				}
			}
			for k := range l.m {
				if len(l.m) < maxLimiters {
					break
				}
				delete(l.m, k)
			}
		}
		lim = rate.NewLimiter(l.rate, l.burst)
		l.m[key] = lim
	}
	return lim.Allow()
}

// apiLimitKey names the caller of an API request for rate limiting: the user
// of a token, or the client address in dev mode, where every request is a
// new anonymous user.
func (srv *Server) apiLimitKey(id identity, r *http.Request) string {
	if srv.auth.dev() {
		return "ip:" + srv.clientIP(r)
	}
	return "user:" + id.user
}
