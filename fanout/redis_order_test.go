package fanout

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout/redistest"
)

// Posts made one after another on a node arrive in that order, even when
// the session's address comes to that node between two of them, as the Bus
// contract says. A node once handed a Post for a session registered on it
// straight to deliver, ahead of an earlier Post that had found the address
// in Redis a moment before and was still on its way back through the
// node's channel: a signal overtook the one sent before it.
func TestRedisPostOrderAcrossClaim(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL()})
	ctx := context.Background()
	for round := range 40 {
		s := roomName(t, fmt.Sprintf("session%d", round))
		var mu sync.Mutex
		var got []int
		deliver := func(b []byte) {
			n, err := strconv.Atoi(string(b))
			if err != nil {
				t.Errorf("payload %q", b)
			}
			mu.Lock()
			got = append(got, n)
			mu.Unlock()
		}
		stop := make(chan struct{})
		posted := make(chan int, 1)
		go func() {
			n := 0
			defer func() { posted <- n }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := a.Post(ctx, s, []byte(strconv.Itoa(n)), 1000, time.Minute); err != nil {
					t.Errorf("Post #%d: %v", n, err)
					return
				}
				n++
			}
		}()
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		held, err := a.Claim(ctx, s, deliver)
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
		close(stop)
		n := <-posted
		waitFor(t, "every post to arrive", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(held)+len(got) >= n
		})
		var seq []int
		for _, b := range held {
			v, err := strconv.Atoi(string(b))
			if err != nil {
				t.Fatalf("held payload %q", b)
			}
			seq = append(seq, v)
		}
		mu.Lock()
		seq = append(seq, got...)
		mu.Unlock()
		for i, v := range seq {
			if v != i {
				t.Fatalf("round %d (%d posts, %d held at the Claim): #%d arrived where #%d should", round, n, len(held), v, i)
			}
		}
		if err := a.Unregister(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
}

// The same across many registrations of one session on a node, each ended
// by Unregister. What was posted before an Unregister returned may still
// arrive late, even at the next registration (the contract's "from the
// past"); what was posted after it arrives in order.
func TestRedisPostOrderAcrossReclaims(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, RedisConfig{URL: srv.URL()})
	ctx := context.Background()
	s := roomName(t, "session")
	type claimed struct {
		mu   sync.Mutex
		held []int
		got  []int
		// after is the first post made after the previous Unregister
		// returned.
		after int
	}
	var next atomic.Int64 // the number of the post under way
	var all []*claimed
	stop := make(chan struct{})
	posted := make(chan int, 1)
	go func() {
		n := 0
		defer func() { posted <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			next.Store(int64(n))
			if err := a.Post(ctx, s, []byte(strconv.Itoa(n)), 100000, time.Minute); err != nil {
				t.Errorf("Post #%d: %v", n, err)
				return
			}
			n++
		}
	}()
	after := 0
	for range 300 {
		c := &claimed{after: after}
		all = append(all, c)
		held, err := a.Claim(ctx, s, func(b []byte) {
			n, _ := strconv.Atoi(string(b))
			c.mu.Lock()
			c.got = append(c.got, n)
			c.mu.Unlock()
		})
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		c.mu.Lock()
		for _, b := range held {
			n, _ := strconv.Atoi(string(b))
			c.held = append(c.held, n)
		}
		c.mu.Unlock()
		time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
		if err := a.Unregister(ctx, s); err != nil {
			t.Fatal(err)
		}
		after = int(next.Load()) + 1
	}
	close(stop)
	n := <-posted
	// A last registration takes what is still held or on its way.
	var lastMu sync.Mutex
	var late []int
	last, err := a.Claim(ctx, s, func(b []byte) {
		v, _ := strconv.Atoi(string(b))
		lastMu.Lock()
		late = append(late, v)
		lastMu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	seen := make(map[int]bool)
	for _, b := range last {
		v, _ := strconv.Atoi(string(b))
		seen[v] = true
	}
	lastMu.Lock()
	for _, v := range late {
		seen[v] = true
	}
	lastMu.Unlock()
	for i, c := range all {
		c.mu.Lock()
		seq := append(append([]int(nil), c.held...), c.got...)
		c.mu.Unlock()
		prev := -1
		for _, v := range seq {
			seen[v] = true
			if v < c.after {
				continue
			}
			if v <= prev {
				t.Fatalf("registration %d (of %d posts, %d held at its Claim): #%d, posted after the Unregister before its Claim, arrived after #%d", i, n, len(c.held), v, prev)
			}
			prev = v
		}
	}
	for v := range n {
		if !seen[v] {
			t.Errorf("post #%d of %d was lost", v, n)
		}
	}
}
