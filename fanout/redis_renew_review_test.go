package fanout

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/parley-rt/parley/fanout/redistest"
)

// beforeCommandHook is a go-redis hook that runs fn once, in the caller's
// goroutine, before the first single command (not a pipeline) that names
// key, once armed.
type beforeCommandHook struct {
	key   string
	mu    sync.Mutex
	armed bool
	fn    func()
}

func (h *beforeCommandHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *beforeCommandHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		run := false
		if h.armed {
			for _, a := range cmd.Args() {
				if s, ok := a.(string); ok && s == h.key {
					run, h.armed = true, false
					break
				}
			}
		}
		h.mu.Unlock()
		if run {
			h.fn()
		}
		return next(ctx, cmd)
	}
}

func (h *beforeCommandHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestRedisClaimRacingRenewalKeepsAddress is what TestCallStress caught
// under load (invariant 3b: signals a Signal call accepted never reached a
// peer that resumed on another node, and was connected to the end).
//
// A peer's address moves: its old node (n3) released it when the peer's
// connection dropped, which leaves "" in Redis for a lease's time; the
// peer resumes on n2, whose Claim puts its registration in n2's sessions
// map, then runs the claim script. A renewal pass of n2 that starts in
// between picks that registration up, finds "" (not its address: the
// claim script has not run yet), and drops it as "registered elsewhere".
// The claim script then sets n2's address all the same, and Claim returns
// success, but n2 no longer renews it: a lease later the address lapses,
// and from then on every Post to the peer, from any node, is held in its
// mailbox, which no one claims again. Post returns nil: the sender's
// signals are accepted and never delivered.
//
// The same when the old node still holds the address (the resume came
// before it let go): the renewal finds n3's address instead of "".
func TestRedisClaimRacingRenewalKeepsAddress(t *testing.T) {
	for _, tc := range []struct {
		name     string
		released bool // n3 let go of the address before n2's Claim
	}{
		{"address released by the old node", true},
		{"address still held by the old node", false},
	} {
		t.Run(tc.name, func(t *testing.T) { testClaimRacingRenewal(t, tc.released) })
	}
}

func testClaimRacingRenewal(t *testing.T, released bool) {
	srv := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	cfg := RedisConfig{URL: srv.URL(), PresenceTTL: ttl}
	n1, n2, n3 := newTestRedis(t, cfg), newTestRedis(t, cfg), newTestRedis(t, cfg)
	ctx := context.Background()
	s := roomName(t, "c:call/peer")

	// The peer's first node registers it and, with released, lets go (its
	// connection dropped): the address is "" for a lease's time.
	if _, err := n3.Claim(ctx, s, func([]byte) {}); err != nil {
		t.Fatalf("Claim on n3: %v", err)
	}
	if released {
		if err := n3.Unregister(ctx, s); err != nil {
			t.Fatalf("Unregister on n3: %v", err)
		}
	}

	// n2 claims it (the resume), with one of its renewal passes running
	// between the registration and the claim script, as its renew loop
	// does now and then.
	hook := &beforeCommandHook{key: sessionKey(s), armed: true, fn: func() { n2.renew(ctx) }}
	n2.client.AddHook(hook)
	var mu sync.Mutex
	var got []string
	if _, err := n2.Claim(ctx, s, func(b []byte) {
		mu.Lock()
		got = append(got, string(b))
		mu.Unlock()
	}); err != nil {
		t.Fatalf("Claim on n2: %v", err)
	}
	hook.mu.Lock()
	ran := !hook.armed
	hook.mu.Unlock()
	if !ran {
		t.Fatal("the renewal did not run before the claim script")
	}

	// Well past the lease, a Post from n1 must reach n2's registration,
	// not the mailbox.
	time.Sleep(3 * ttl)
	if err := n1.Post(ctx, s, []byte("signal"), 10, time.Minute); err != nil {
		t.Fatalf("Post on n1: %v", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			raw := rawClient(t, srv)
			addr, err := raw.Get(ctx, sessionKey(s)).Result()
			held, _ := raw.LLen(ctx, mailboxKey(s)).Result()
			t.Fatalf("a Post accepted %v after n2's Claim never reached n2: the address is %q (%v), the mailbox holds %d, n2 registers %d sessions",
				3*ttl, addr, err, held, n2.Stats().Sessions)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
