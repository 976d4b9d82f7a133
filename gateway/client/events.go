package client

import (
	"errors"
	"math/rand/v2"
	"time"
)

// queued is an event waiting for the application. When s is set, handing
// the event over moves s's delivered position to pos.
type queued struct {
	ev  Event
	s   *sub
	pos Position
}

// eventQueue is a FIFO of events.
type eventQueue struct {
	items []queued
	head  int
}

func (q *eventQueue) len() int { return len(q.items) - q.head }

func (q *eventQueue) push(e queued) { q.items = append(q.items, e) }

func (q *eventQueue) pop() (queued, bool) {
	if q.head == len(q.items) {
		return queued{}, false
	}
	e := q.items[q.head]
	q.items[q.head] = queued{}
	q.head++
	switch {
	case q.head == len(q.items):
		q.items, q.head = q.items[:0], 0
	case q.head >= 1024 && q.head*2 >= len(q.items):
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	return e, true
}

// poke wakes whoever waits on ch, a channel of capacity 1, without blocking.
func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// notify queues a connection event (EventConnected, EventDisconnected,
// EventDraining, or EventError for a room). These are never refused: there
// are a few per connection.
func (c *Client) notify(e Event) {
	c.mu.Lock()
	c.queue.push(queued{ev: e})
	c.mu.Unlock()
	poke(c.wake)
}

// admit reports whether an event of room s may be queued. If the queue is
// full it pauses the room instead: the event is dropped, as are the room's
// later ones until resync subscribes it again, and s.pos stays at the last
// message queued, which is where the room resumes. c.mu is held.
func (c *Client) admit(room string, s *sub) bool {
	if !s.acked || s.paused {
		return false
	}
	if c.queue.len() < c.limit {
		return true
	}
	s.paused, s.stopped = true, false
	c.resyncWanted = true
	c.log.Debug("event queue full: room paused", "room", room, "queued", c.queue.len())
	poke(c.resyncWake)
	return false
}

// dispatch hands queued events to Events, one at a time, so that the read
// loop never waits for the application. It returns, closing Events, when
// Close is called, or once run has returned and the queue is empty.
func (c *Client) dispatch() {
	defer c.goroutines.Done()
	defer close(c.events)
	for {
		c.mu.Lock()
		e, ok := c.queue.pop()
		if ok && e.s != nil {
			e.s.delivered = e.pos
		}
		if c.resyncWanted && c.queue.len() <= c.lowWater {
			poke(c.resyncWake)
		}
		end := c.runDone
		c.mu.Unlock()
		if !ok {
			if end {
				return
			}
			select {
			case <-c.wake:
			case <-c.closed:
				return
			}
			continue
		}
		select {
		case c.events <- e.ev:
		case <-c.closed:
			return
		}
	}
}

// pausedRoom is a paused subscription that resync works on.
type pausedRoom struct {
	room string
	s    *sub
}

// resync takes paused rooms back: it unsubscribes each at once, so that the
// node stops sending what the client would drop, and once the queue has
// drained to the low-water mark it subscribes them again from their
// positions, so the node sends the messages they missed from its history.
// A room that finds the queue full again is paused again. resync returns when
// c.ctx ends (Close, or the end of the connection with NoReconnect).
func (c *Client) resync() {
	defer c.goroutines.Done()
	delay := c.opts.MinBackoff
	for {
		select {
		case <-c.resyncWake:
		case <-c.ctx.Done():
			return
		}
		for c.ctx.Err() == nil {
			c.mu.Lock()
			var stop, resume []pausedRoom
			for room, s := range c.subs {
				switch {
				case !s.paused:
				case !s.stopped:
					stop = append(stop, pausedRoom{room, s})
				default:
					resume = append(resume, pausedRoom{room, s})
				}
			}
			drained := c.queue.len() <= c.lowWater
			if len(stop) == 0 && len(resume) == 0 {
				c.resyncWanted = false
			}
			c.mu.Unlock()
			if len(stop) == 0 && (len(resume) == 0 || !drained) {
				break // until the next pause or the queue drains
			}
			done := true
			for _, r := range stop {
				done = c.stopRoom(r) && done
			}
			for _, r := range resume {
				c.mu.Lock()
				drained := c.queue.len() <= c.lowWater
				c.mu.Unlock()
				if !drained {
					break
				}
				done = c.resumeRoom(r) && done
			}
			if done {
				delay = c.opts.MinBackoff
				continue
			}
			// Refused for now (rate_limited): try again later.
			t := time.NewTimer(time.Duration(rand.Int64N(int64(delay) + 1)))
			select {
			case <-c.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			delay = min(delay*2, c.opts.MaxBackoff)
		}
	}
}

// stopRoom unsubscribes a paused room on the node; it reports false if it
// should be tried again.
func (c *Client) stopRoom(r pausedRoom) bool {
	conn, err := c.live(c.ctx)
	if err != nil {
		return false
	}
	_, err = c.command(c.ctx, conn, map[string]any{"type": "unsubscribe", "room": r.room}, nil)
	var serr *ServerError
	switch {
	case err == nil, errors.Is(err, ErrDisconnected):
		// A connection that dropped took the subscription with it, and
		// the next one does not subscribe a paused room.
	case errors.As(err, &serr) && serr.Code == "not_found":
		// Not subscribed on this connection.
	default:
		c.log.Debug("unsubscribing a paused room", "room", r.room, "err", err)
		return false
	}
	c.mu.Lock()
	if c.subs[r.room] == r.s && r.s.paused {
		r.s.stopped = true
	}
	c.mu.Unlock()
	return true
}

// resumeRoom subscribes a paused room again from its position; it reports
// false if it should be tried again. A room the node now refuses is dropped
// and reported, as after a reconnect.
func (c *Client) resumeRoom(r pausedRoom) bool {
	c.mu.Lock()
	if c.subs[r.room] != r.s || !r.s.paused || !r.s.stopped {
		c.mu.Unlock()
		return true
	}
	since := &Position{Epoch: r.s.pos.Epoch, Offset: r.s.pos.Offset}
	if !r.s.seen {
		since = nil
	}
	f := subscribeFrame(r.room, r.s.presence, since)
	c.mu.Unlock()
	conn, err := c.live(c.ctx)
	if err != nil {
		return false
	}
	_, err = c.command(c.ctx, conn, f, c.onSubscribeAck(r.room, r.s, true))
	var serr *ServerError
	switch {
	case err == nil:
		c.mu.Lock()
		gone := c.subs[r.room] != r.s
		c.mu.Unlock()
		if gone {
			// Unsubscribed meanwhile: leave the room on the node too.
			c.command(c.ctx, conn, map[string]any{"type": "unsubscribe", "room": r.room}, nil)
		}
		return true
	case errors.Is(err, ErrDisconnected):
		// Still paused and stopped: subscribed on the next connection.
		return true
	case errors.As(err, &serr) && serr.Code == "rate_limited":
		c.log.Debug("subscribing a paused room again", "room", r.room, "err", err)
		return false
	case errors.As(err, &serr):
		c.dropRoom(r.room, r.s, err)
		return true
	default:
		return false
	}
}

// queueLen returns how many events wait for the application.
func (c *Client) queueLen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queue.len()
}
