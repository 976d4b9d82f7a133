package signaling

import (
	"context"
	"sync"
	"time"
)

// maxTasks bounds the bus calls waiting for the service's worker: the
// release of away peers' addresses, grace expiries, the takeover of an
// incarnation, signals posted again, resyncs. Each is small; past the bound
// a task is dropped and counted (a signal) or logged.
const maxTasks = 4096

// taskTimeout bounds the bus calls of one task.
const taskTimeout = 5 * time.Second

// workQueue is a bounded FIFO of tasks for one goroutine.
type workQueue struct {
	mu     sync.Mutex
	tasks  []func(context.Context)
	max    int
	closed bool
	wake   chan struct{}
}

func newWorkQueue(max int) *workQueue {
	return &workQueue{max: max, wake: make(chan struct{}, 1)}
}

// push queues t; it reports false when the queue is full or closed.
func (q *workQueue) push(t func(context.Context)) bool {
	q.mu.Lock()
	if q.closed || len(q.tasks) >= q.max {
		q.mu.Unlock()
		return false
	}
	q.tasks = append(q.tasks, t)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

func (q *workQueue) take() []func(context.Context) {
	q.mu.Lock()
	defer q.mu.Unlock()
	t := q.tasks
	q.tasks = nil
	return t
}

func (q *workQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.tasks = nil
	q.mu.Unlock()
}

// runWork runs queued tasks, one at a time and in order, until Close.
func (s *Service) runWork() {
	defer s.wg.Done()
	defer s.work.close()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.work.wake:
		}
		for _, t := range s.work.take() {
			if s.ctx.Err() != nil {
				return
			}
			ctx, cancel := context.WithTimeout(s.ctx, taskTimeout)
			t(ctx)
			cancel()
		}
	}
}
