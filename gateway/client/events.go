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
	s.paused = true
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

// resync takes paused rooms back once the queue has drained to the low-water
// mark: it subscribes each again from its position, so the node sends the
// messages it missed from its history. A room that finds the queue full
// again is paused again. resync returns when c.ctx ends (Close, or the end
// of the connection with NoReconnect).
func (c *Client) resync() {
	defer c.goroutines.Done()
	for {
		select {
		case <-c.resyncWake:
		case <-c.ctx.Done():
			return
		}
		for c.ctx.Err() == nil {
			c.mu.Lock()
			var paused []pausedRoom
			for room, s := range c.subs {
				if s.paused {
					paused = append(paused, pausedRoom{room, s})
				}
			}
			drained := c.queue.len() <= c.lowWater
			if len(paused) == 0 {
				c.resyncWanted = false
			}
			c.mu.Unlock()
			if len(paused) == 0 || !drained {
				break // until the next pause or the queue drains
			}
			for _, r := range paused {
				c.mu.Lock()
				drained := c.queue.len() <= c.lowWater
				c.mu.Unlock()
				if !drained || c.ctx.Err() != nil {
					break
				}
				c.resumeRoom(r)
			}
		}
	}
}

// resumeRoom subscribes a paused room again from its position. While the
// room was paused it stayed subscribed on the node (its events were dropped
// as they came), so that its slot among the session's rooms is kept; now it
// is unsubscribed and subscribed again, with c.roomOps held throughout, so
// that no Subscribe or Unsubscribe of the application comes in between.
// Refusals that may pass (transient: internal, over_capacity, rate_limited,
// draining) are tried again on the same connection after a backoff, with no
// event, since the client's own unsubscribes and subscribes may run into the
// node's rate limit; a room the node refuses for good is dropped and
// reported, as after a reconnect.
func (c *Client) resumeRoom(r pausedRoom) {
	c.roomOps.Lock()
	defer c.roomOps.Unlock()
	delay := c.opts.MinBackoff
	for c.ctx.Err() == nil {
		c.mu.Lock()
		if c.subs[r.room] != r.s || !r.s.paused {
			c.mu.Unlock()
			return
		}
		var since *Position
		if r.s.seen {
			since = &Position{Epoch: r.s.pos.Epoch, Offset: r.s.pos.Offset}
		}
		subscribed := !r.s.stopped
		f := subscribeFrame(r.room, r.s.presence, since)
		c.mu.Unlock()
		conn, err := c.live(c.ctx)
		if err != nil {
			return
		}
		if subscribed {
			_, err = c.command(c.ctx, conn, map[string]any{"type": "unsubscribe", "room": r.room}, nil)
			var serr *ServerError
			switch {
			case err == nil, errors.As(err, &serr) && serr.Code == "not_found":
				c.mu.Lock()
				r.s.stopped = true
				c.mu.Unlock()
			case errors.Is(err, ErrDisconnected):
				// The next connection does not subscribe a paused room.
				continue
			default:
				if !c.backoff(&delay, r.room, err) {
					return
				}
				continue
			}
		}
		_, err = c.command(c.ctx, conn, f, c.onSubscribeAck(r.room, r.s, true))
		var serr *ServerError
		switch {
		case err == nil, errors.Is(err, ErrDisconnected):
			// Subscribed; or the connection dropped, and the room, still
			// paused, is subscribed on the next one.
			if err == nil {
				return
			}
		case errors.As(err, &serr) && !transient(err):
			c.dropRoom(r.room, r.s, err)
			return
		default:
			if !c.backoff(&delay, r.room, err) {
				return
			}
		}
	}
}

// backoff waits before a paused room's next try; it reports false if the
// client closed meanwhile.
func (c *Client) backoff(delay *time.Duration, room string, err error) bool {
	c.log.Debug("subscribing a paused room again", "room", room, "err", err)
	t := time.NewTimer(time.Duration(rand.Int64N(int64(*delay) + 1)))
	defer t.Stop()
	select {
	case <-c.ctx.Done():
		return false
	case <-t.C:
	}
	*delay = min(*delay*2, c.opts.MaxBackoff)
	return true
}

// queueLen returns how many events wait for the application.
func (c *Client) queueLen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queue.len()
}
