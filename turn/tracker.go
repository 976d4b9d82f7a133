package turn

import (
	"sync"
	"sync/atomic"
	"time"
)

// tracker counts the sockets and connections the server handed to pion
// whose reading goroutines have not yet finished, so that Close can wait
// for them.
type tracker struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to zero
}

func newTracker() *tracker {
	ch := make(chan struct{})
	close(ch)
	return &tracker{idle: ch}
}

func (t *tracker) add() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		t.idle = make(chan struct{})
	}
	t.n++
}

func (t *tracker) done() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.n == 0 {
		close(t.idle)
	}
}

// wait returns true once nothing is tracked, or false after timeout.
func (t *tracker) wait(timeout time.Duration) bool {
	t.mu.Lock()
	ch := t.idle
	t.mu.Unlock()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-ch:
		return true
	case <-timer.C:
		return false
	}
}

// closedBit marks a tracked socket as closed in its state word; the bits
// below it count goroutines inside a read or accept.
const closedBit = 1 << 40

// tracked is one socket registered with a tracker. It is finished, and
// leaves the tracker, once it is closed and no goroutine is inside a call
// that blocks on it.
type tracked struct {
	t        *tracker
	state    atomic.Int64
	finished atomic.Bool
}

func (x *tracked) init(t *tracker) {
	x.t = t
	t.add()
}

func (x *tracked) enter() { x.state.Add(1) }

func (x *tracked) exit() {
	if x.state.Add(-1) == closedBit {
		x.finish()
	}
}

// markClosed records the close and reports whether it was the first.
func (x *tracked) markClosed() bool {
	old := x.state.Or(closedBit)
	if old&closedBit != 0 {
		return false
	}
	if old == 0 {
		x.finish()
	}
	return true
}

func (x *tracked) isClosed() bool { return x.state.Load()&closedBit != 0 }

func (x *tracked) finish() {
	if x.finished.CompareAndSwap(false, true) {
		x.t.done()
	}
}
