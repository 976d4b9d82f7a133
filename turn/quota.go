package turn

import (
	"net"
	"net/netip"
	"sync"
)

// quotas bound live allocations per user and in all (TURN-SECURITY row 13).
//
// pion/turn asks QuotaHandler before it creates an allocation and reports
// the outcome through its event handler, all in the goroutine that reads the
// client's socket. So a slot is reserved in reserve, keyed by the client's
// transport address, and then either confirmed by OnAllocationCreated or
// cancelled by OnAllocationError; OnAllocationDeleted frees it. Counting the
// reservation at once keeps concurrent Allocates on different sockets from
// overshooting the quota.
//
// Quotas are keyed by the user part of the REST username: pion hands over
// the whole "expiry:user", and keying on that would give every freshly
// minted credential a fresh quota.
type quotas struct {
	perUser, total int

	mu      sync.Mutex
	count   int
	users   map[string]int
	pending map[clientKey]string
}

// clientKey names a client's transport address.
type clientKey struct {
	stream bool
	addr   netip.AddrPort
}

func keyOf(a net.Addr) clientKey {
	switch a := a.(type) {
	case *net.UDPAddr:
		return clientKey{addr: a.AddrPort()}
	case *net.TCPAddr:
		return clientKey{stream: true, addr: a.AddrPort()}
	}
	return clientKey{}
}

func newQuotas(perUser, total int) *quotas {
	return &quotas{
		perUser: perUser,
		total:   total,
		users:   make(map[string]int),
		pending: make(map[clientKey]string),
	}
}

// userOf is the quota key of a REST username.
func userOf(username string) string {
	if _, user, err := parseUsername(username); err == nil {
		return user
	}
	return username
}

// reserve takes a slot for a new allocation of username from src; scope
// says which quota refused it.
func (q *quotas) reserve(username string, src net.Addr) (ok bool, scope string) {
	user := userOf(username)
	k := keyOf(src)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.count >= q.total {
		return false, scopeTotal
	}
	if q.users[user] >= q.perUser {
		return false, scopeUser
	}
	if old, ok := q.pending[k]; ok {
		q.releaseLocked(old)
	}
	q.count++
	q.users[user]++
	q.pending[k] = user
	return true, ""
}

// confirm turns the reservation of src into a live allocation.
func (q *quotas) confirm(src net.Addr) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.pending, keyOf(src))
}

// cancel frees the reservation of src, if any, after a failed Allocate.
func (q *quotas) cancel(src net.Addr) {
	k := keyOf(src)
	q.mu.Lock()
	defer q.mu.Unlock()
	if user, ok := q.pending[k]; ok {
		delete(q.pending, k)
		q.releaseLocked(user)
	}
}

// release frees the slot of a deleted allocation.
func (q *quotas) release(username string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.releaseLocked(userOf(username))
}

func (q *quotas) releaseLocked(user string) {
	if q.users[user] > 0 {
		q.users[user]--
		if q.users[user] == 0 {
			delete(q.users, user)
		}
		q.count--
	}
}

func (q *quotas) live() (count, users int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.count, len(q.users)
}
