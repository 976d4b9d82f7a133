package fanout

import (
	"context"
	"fmt"
	"testing"
)

// Eviction at the node history bound looks at a bounded number of rooms per
// message it drops, however many rooms hold nothing.
func TestEvictScanBounded(t *testing.T) {
	const empty = 10000
	data := []byte(fmt.Sprintf(`"%01000d"`, 0))
	m := NewMemory(MemoryConfig{MaxHistoryBytes: 256 << 10, MaxRooms: 200000})
	defer m.Close()
	ctx := context.Background()
	for i := range empty {
		if _, err := m.Presence(ctx, fmt.Sprint("nobody:", i), PresenceQuery{}); err != nil {
			t.Fatal(err)
		}
	}
	for range 350 { // past the bound: each publish now evicts
		if _, err := m.Publish(ctx, "hot", Publication{Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	rounds, looked := m.evictRounds.Load(), m.evictLooked.Load()
	if rounds == 0 {
		t.Fatal("nothing was evicted")
	}
	if per := looked / rounds; per > evictScan {
		t.Errorf("eviction looked at %d rooms per message dropped, with %d rooms that hold nothing; want at most %d", per, empty, evictScan)
	}
	if st := m.Stats(); st.HistoryBytes > 256<<10 {
		t.Errorf("history bytes: got %d, want at most the bound %d", st.HistoryBytes, 256<<10)
	}
}
