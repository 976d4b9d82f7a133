package srclimit

import (
	"net/netip"
	"testing"
	"time"
)

func TestAllow(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := New(10, 5, 100)
	a := netip.MustParseAddr("192.0.2.1")
	allowed := 0
	for range 50 {
		if l.Allow(a, now) {
			allowed++
		}
	}
	if allowed != 5 {
		t.Errorf("got %d allowed in a burst, want 5", allowed)
	}
	if !l.Allow(netip.MustParseAddr("192.0.2.2"), now) {
		t.Errorf("got another source limited, want it allowed")
	}
	if !l.Allow(a, now.Add(time.Second)) {
		t.Errorf("got source still limited after a second, want allowed")
	}
}

func TestKey(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"ipv4", "198.51.100.7", "198.51.100.7"},
		{"mapped", "::ffff:198.51.100.7", "198.51.100.7"},
		{"ipv6 /64", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Key(netip.MustParseAddr(tt.in)); got.String() != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := New(1, 2, 64)
	for i := range 10_000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		l.Allow(a, now)
		l.Allow(a, now)
		if got := l.Len(); got > 64 {
			t.Fatalf("got %d sources tracked, want at most 64", got)
		}
	}
	// Idle buckets go first: after they refill, a new source evicts them all.
	l.Allow(netip.MustParseAddr("192.0.2.9"), now.Add(time.Minute))
	if got := l.Len(); got != 1 {
		t.Errorf("got %d sources after eviction of idle ones, want 1", got)
	}
}
