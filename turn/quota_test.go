package turn

import (
	"net"
	"testing"
)

func TestQuotas(t *testing.T) {
	q := newQuotas(2, 3)
	src := func(port int) net.Addr { return &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: port} }

	if ok, _ := q.reserve("100:alice", src(1)); !ok {
		t.Fatal("first reservation refused")
	}
	q.confirm(src(1))
	if ok, _ := q.reserve("200:alice", src(2)); !ok {
		t.Fatal("second reservation with a fresh credential refused")
	}
	// A failed Allocate gives its slot back.
	q.cancel(src(2))
	if ok, _ := q.reserve("300:alice", src(3)); !ok {
		t.Fatal("reservation after a cancel refused")
	}
	q.confirm(src(3))
	if ok, scope := q.reserve("400:alice", src(4)); ok || scope != scopeUser {
		t.Fatalf("got %v %q past the user quota, want refused by user", ok, scope)
	}
	if ok, _ := q.reserve("100:bob", src(5)); !ok {
		t.Fatal("another user refused")
	}
	q.confirm(src(5))
	if ok, scope := q.reserve("100:carol", src(6)); ok || scope != scopeTotal {
		t.Fatalf("got %v %q past the total, want refused by total", ok, scope)
	}
	// A confirmed allocation is not cancelled by a later error from the
	// same client.
	q.cancel(src(1))
	if count, _ := q.live(); count != 3 {
		t.Fatalf("got %d live, want 3", count)
	}
	q.release("100:alice")
	q.release("300:alice")
	q.release("100:bob")
	if count, users := q.live(); count != 0 || users != 0 {
		t.Errorf("got %d live for %d users after releases, want 0 and 0", count, users)
	}
}
