package fanout

import (
	"context"
	"testing"

	"github.com/parley-rt/parley/fanout/redistest"
)

// TestRedisRestoredOlderData: Redis comes back from a snapshot older than
// what it acknowledged. A position a client sends cannot change the room's
// epoch, but the position a node delivered moves the room to a new epoch,
// so that the offsets Redis would give again are never taken for the lost
// messages.
func TestRedisRestoredOlderData(t *testing.T) {
	srv := redistest.Start(t)
	bus := newTestRedis(t, RedisConfig{URL: srv.URL()})
	raw := rawClient(t, srv)
	ctx := context.Background()
	room := roomName(t, "room")
	epoch := publishN(t, bus, room, 4)[0].Epoch
	if err := raw.Save(ctx).Err(); err != nil {
		t.Fatalf("SAVE: %v", err)
	}
	publishN(t, bus, room, 3) // offsets 5 to 7, lost below
	srv.RestartKeepingData()  // from the snapshot: the room's top is 4 again
	waitFor(t, "the bus to be ready again", bus.Ready)

	delivered := Position{Epoch: epoch, Offset: 7}
	// A client's position: not recovered, and the epoch stays.
	h := history(t, bus, room, HistoryQuery{Since: &delivered})
	if h.Recovered || h.Top != (Position{Epoch: epoch, Offset: 4}) {
		t.Fatalf("a client's resume from offset 7: got recovered %v top %v, want false at offset 4 of %s", h.Recovered, h.Top, epoch)
	}
	// The node's own position: a new epoch.
	h = history(t, bus, room, HistoryQuery{Since: &delivered, Delivered: true})
	if h.Recovered || h.Top.Epoch == epoch {
		t.Fatalf("the node's fill from offset 7: got recovered %v top %v, want false in a new epoch", h.Recovered, h.Top)
	}
	res := publish(t, bus, room, Publication{Data: data(8)})
	if res.Epoch != h.Top.Epoch {
		t.Errorf("publish after the restore: got %v, want the new epoch %s", res.Position, h.Top.Epoch)
	}
	// The old epoch's positions are refused from now on.
	old := history(t, bus, room, HistoryQuery{Since: &Position{Epoch: epoch, Offset: 4}})
	if old.Recovered {
		t.Errorf("a resume in the old epoch after the restore: got recovered, want not")
	}
}
