// Package fanouttest has buses for tests of what runs on a fanout.Bus: a
// real bus with faults a test turns on, as a Redis bus shows them.
package fanouttest

import (
	"context"
	"fmt"
	"sync"

	"github.com/parley-rt/parley/fanout"
)

// FlakyHistory is a bus whose History fails for one room a given number of
// times, as a Redis bus does while its connection comes back
// (fanout.ErrRedisUnavailable): a node answers a subscribe to that room
// with internal, "the message bus (Redis) is unavailable". Every other call
// goes to Bus.
type FlakyHistory struct {
	fanout.Bus

	mu     sync.Mutex
	room   string
	fails  int         // History calls of room still to fail
	failed int         // History calls of room failed so far
	onFail func(n int) // runs after the nth failure, before History returns
}

var _ fanout.Bus = (*FlakyHistory)(nil)

// FailHistory makes the next n History calls of room fail; onFail, if not
// nil, runs after each with the count of failures so far.
func (b *FlakyHistory) FailHistory(room string, n int, onFail func(n int)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.room, b.fails, b.onFail = room, n, onFail
}

// Failures returns how many History calls have failed.
func (b *FlakyHistory) Failures() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failed
}

// History implements fanout.Bus.
func (b *FlakyHistory) History(ctx context.Context, room string, q fanout.HistoryQuery) (fanout.History, error) {
	b.mu.Lock()
	fail := room == b.room && b.fails > 0
	if fail {
		b.fails--
		b.failed++
	}
	n, onFail := b.failed, b.onFail
	b.mu.Unlock()
	if !fail {
		return b.Bus.History(ctx, room, q)
	}
	if onFail != nil {
		onFail(n)
	}
	return fanout.History{}, fmt.Errorf("fanouttest: history of %s: %w", room, fanout.ErrRedisUnavailable)
}
