package fanout

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Eviction at the node history bound costs a bounded scan, however many
// rooms hold nothing.
func TestEvictScanBounded(t *testing.T) {
	const (
		empty   = 10000
		publish = 50
	)
	data := []byte(fmt.Sprintf(`"%01000d"`, 0))
	run := func(emptyRooms int) time.Duration {
		m := NewMemory(MemoryConfig{MaxHistoryBytes: 256 << 10, MaxRooms: 200000})
		defer m.Close()
		ctx := context.Background()
		for i := range emptyRooms {
			if _, err := m.Presence(ctx, fmt.Sprint("nobody:", i), PresenceQuery{}); err != nil {
				t.Fatal(err)
			}
		}
		for range 300 { // fill history to its bound
			if _, err := m.Publish(ctx, "hot", Publication{Data: data}); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		for range publish { // each one now evicts
			if _, err := m.Publish(ctx, "hot", Publication{Data: data}); err != nil {
				t.Fatal(err)
			}
		}
		return time.Since(start) / publish
	}
	base := run(0)
	slow := run(empty)
	t.Logf("per publish at the history bound: %v with one room, %v with %d empty rooms besides", base, slow, empty)
	if slow > 20*base+100*time.Microsecond {
		t.Errorf("a publish at MaxHistoryBytes costs %v with %d rooms that hold nothing, %v without: eviction walks every room under m.mu", slow, empty, base)
	}
}
