package gateway

import (
	"time"
)

// heartbeatLoop is one goroutine for every session's heartbeat: it pings
// sessions that have been quiet for the ping interval (the first ping of each
// jittered), closes WebSocket sessions that left a ping unanswered past the
// pong timeout, and ends sessions whose token expired (an unauthorized error,
// then close 1008) and was not refreshed in time. No session holds a timer of
// its own: at each tick it also wakes every session, so that a writer
// lingering without work counts the tick (linger).
func (srv *Server) heartbeatLoop() {
	defer srv.goroutines.Done()
	tick := min(time.Second, srv.cfg.PingInterval/4)
	t := time.NewTicker(tick)
	defer t.Stop()
	var batch []*session
	for {
		select {
		case <-srv.hbStop:
			return
		case <-t.C:
		}
		srv.ticks.Add(1)
		srv.sessMu.Lock()
		batch = batch[:0]
		for s := range srv.sessions {
			batch = append(batch, s)
		}
		srv.sessMu.Unlock()
		now := srv.cfg.now().UnixNano()
		ping := int64(srv.cfg.PingInterval)
		for _, s := range batch {
			s.wakeUp()
			s.subOps.Store(0)
			if e := s.expires.Load(); e != 0 && now > e && s.expires.CompareAndSwap(e, 0) {
				// A session lasts as long as its token: the client comes
				// back with a fresh one and resumes, or sent a refresh in
				// time (then the swap fails and the session goes on).
				s.replyError("", errorf(codeUnauthorized, "token expired"))
				s.closeAfterFlush(closePolicy, "token expired")
				continue
			}
			if d := s.pongDeadline.Load(); d != 0 {
				if now > d {
					srv.metrics.heartbeatClose.Inc()
					s.closeNow(closeGoingAway, "heartbeat timeout")
				}
				continue
			}
			if now-s.lastWrite.Load() < ping-s.pingShift {
				continue
			}
			s.pingShift = 0
			if s.transport == transportWS {
				s.pongDeadline.Store(now + int64(srv.cfg.PongTimeout))
			}
			s.enqueue(pingFrame)
		}
		clear(batch)
	}
}
