package gateway

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parley-rt/parley/fanout"
)

// hub maps rooms to this node's sessions. It subscribes the node to a room on
// the bus while the room has a local member, and fans every message out to
// them: encoded once, the same bytes queued to each.
//
// The bus delivers at most once: a message may come twice, late, or not at
// all (fanout.Handler). So each room keeps one position on the node, the last
// message it delivered to its members, and nothing per member once a
// subscription is complete:
//
//   - a message at or below the position is a duplicate and is dropped;
//   - the message just after it is delivered and moves it;
//   - anything else (an offset past the next one, another epoch) and the
//     bus's HandleResync start a gap fill: a goroutine of the hub reads the
//     room's history after the position and delivers what is missing, in
//     order, while the live messages that do not follow the position wait in
//     a bounded buffer (maxPendingFrames and the bounds beside it). A buffer
//     that overflows is dropped: history holds those messages, and the fill
//     reads again until it has caught up. A fill whose history read fails
//     tries again with backoff until it succeeds, the room has no member
//     left, or the node shuts down.
//   - When history no longer reaches the position (its epoch changed, or the
//     messages after it aged out), the room's members cannot be brought up
//     to date in place; see breakContinuity.
//
// The position starts at the top of the first history read that a member's
// subscription completes with. Until then every member is still subscribing,
// so live messages wait in the buffer, and none sets the position itself: a
// message the bus had in flight from an earlier subscription would start the
// room at the wrong place.
//
// The fanout.Handler methods never call the bus and wait for nothing but a
// room's lock, held only for one message's fan-out: a room that is filling
// holds up no other room.
type hub struct {
	srv *Server
	bus fanout.Bus

	mu    sync.Mutex
	rooms map[string]*hubRoom

	// pendingBytes counts the bytes every room's buffer holds, against
	// maxPendingBytes.
	pendingBytes atomic.Int64

	// fillMu guards stopped. A fill goroutine is counted in srv.goroutines
	// under it, so that none is counted once Shutdown waits (stop).
	fillMu  sync.Mutex
	stopped bool
	// fillReads bounds the history reads that fills make at once: after a
	// reconnect to Redis every subscribed room fills, and the reads queue
	// here rather than all at once on the bus's connections.
	fillReads chan struct{}
}

var _ fanout.Handler = (*hub)(nil)

// Bounds of the live frames a room buffers while it fills a gap (or before
// its position starts): per room, in frames and bytes, and for the node.
// Past any of them the room's buffer is dropped, and its fill reads history
// again.
const (
	maxPendingFrames    = 1024
	maxRoomPendingBytes = 1 << 20
	maxPendingBytes     = 64 << 20
)

// A fill whose history read fails waits fillRetryMin before the next, twice
// as long after each failure up to fillRetryMax, jittered.
const (
	fillRetryMin = 100 * time.Millisecond
	fillRetryMax = 5 * time.Second
)

// maxFillReads is how many history reads the node's fills make at once.
const maxFillReads = 16

// breakSpread is the window over which the members of a room whose
// continuity broke are told to reconnect, so that a bus that lost its history
// (Redis restarted empty) does not bring every client back at once.
const breakSpread = 2 * time.Second

// reasonHistoryLost is the reason of the reconnect frame and close that
// breakContinuity sends.
const reasonHistoryLost = "history lost"

// maxSubscribeReads bounds the history reads of one subscription (see admit).
const maxSubscribeReads = 3

type hubRoom struct {
	name string

	// sub serialises bus Subscribe and Unsubscribe for the room.
	sub        sync.Mutex
	subscribed bool

	mu      sync.Mutex
	members []*member
	dead    bool // removed from hub.rooms; callers fetch the room again

	// started says that epoch and offset are the room's position: the last
	// message delivered to its members.
	started bool
	epoch   string
	offset  uint64
	// gen changes whenever the position is set other than by delivering the
	// next message (start, reset): a fill applies a history read only if gen
	// is what it was when the read began.
	gen uint64
	// filling: a fill goroutine owns catching the room up; it clears the
	// flag when done. At most one runs per room.
	filling bool
	// reread: something came that the fill's read (or, before the position
	// starts, the buffer) may not cover: a resync, a dropped buffer, a
	// message of another epoch. The fill reads history once more.
	reread bool
	// pending holds live frames that did not follow the position, in the
	// order they came, while filling or before the position starts;
	// pendingBytes counts their bytes.
	pending      []*frame
	pendingBytes int
}

// member is a session's subscription to a room.
type member struct {
	s *session
	// sub is what a subscription needs until it is complete; nil after, as
	// for nearly every member of a busy node. It sits beside s, which
	// delivery reads with it.
	sub  *memberSub
	room *hubRoom
	idx  int // position in room.members
	// presence: the session gets the room's presence events. joined: it is
	// in the room's presence (it asked, or the room is a presence room).
	presence bool
	joined   bool
}

// memberSub is a member's state while it subscribes, and until the room's
// position has passed what its subscribe ack and replay covered.
type memberSub struct {
	// While holding, room frames are kept in held instead of being queued,
	// so that the subscribe ack and history go out first.
	holding bool
	held    []*frame
	// from is the room's position when the member joined it, or where the
	// position started if later (fromSet): held has every message after
	// it. A history read below it would leave a gap (see admit).
	from    uint64
	fromSet bool
	// last is, once holding is over, the last offset the member's ack and
	// replay covered: a message at or below it is not queued again, and the
	// first one above it ends the state.
	last uint64
}

func newHub(srv *Server, bus fanout.Bus) *hub {
	return &hub{srv: srv, bus: bus, rooms: make(map[string]*hubRoom), fillReads: make(chan struct{}, maxFillReads)}
}

func (h *hub) room(name string) *hubRoom {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[name]
	if r == nil {
		r = &hubRoom{name: name}
		h.rooms[name] = r
	}
	return r
}

func (h *hub) lookup(name string) *hubRoom {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rooms[name]
}

// subscribeResult is what a subscription found: the ack's fields.
type subscribeResult struct {
	top       fanout.Position
	recovered bool
	// members is the first page of the room's presence, for a subscription
	// with presence; total counts every member, next pages on.
	members []fanout.Member
	total   int
	next    string
	// cursor is where the session now stands: since when recovered, else top.
	cursor fanout.Position
}

// sharedFrames are a message's frames, built once per message on the node
// (fanout.Message.Shared) and queued to every session that gets it: live,
// and replayed (without a time, as replay is no live delivery). They share
// one encoding, held as one WebSocket frame whose tail is the bytes SSE
// renders.
type sharedFrames struct {
	live, replay frame
}

// frames returns msg's shared frames; nil if it cannot be encoded.
func (h *hub) frames(msg *fanout.Message) *sharedFrames {
	sf, _ := msg.Shared(func(m *fanout.Message) any {
		wire, b, err := encodeMessage(m)
		if err != nil {
			h.srv.log.Error("encoding message", "room", m.Room, "offset", m.Offset, "err", err)
			return (*sharedFrames)(nil)
		}
		sf := &sharedFrames{live: frame{b: b, wire: wire, kind: kindMessage, room: m.Room, epoch: m.Epoch, offset: m.Offset, time: m.Time}}
		sf.replay = sf.live
		sf.replay.time = 0
		return sf
	}).(*sharedFrames)
	return sf
}

// liveFrame returns msg's live frame. A message that cannot be encoded gets
// a frame without bytes: it moves the room's position and reaches no one.
func (h *hub) liveFrame(msg *fanout.Message) *frame {
	if sf := h.frames(msg); sf != nil {
		return &sf.live
	}
	return &frame{kind: kindMessage, room: msg.Room, epoch: msg.Epoch, offset: msg.Offset}
}

// subscribe adds s to room. It queues ack (built from the result), then the
// history after since, then live messages, with no gap and no duplicate. A
// replay larger than Config.ReplayLimit is not sent: the ack says
// recovered: false instead.
func (h *hub) subscribe(ctx context.Context, s *session, name string, since *fanout.Position, presence bool, ack func(subscribeResult) *frame) *protoError {
	if _, ok := s.rooms[name]; ok {
		return errorf(codeBadRequest, "already subscribed to "+name)
	}
	if len(s.rooms) >= s.srv.cfg.MaxRoomsPerSession {
		return errorf(codeForbidden, "room limit reached")
	}
	m := &member{s: s, presence: presence, joined: presence || h.srv.presenceRoom(name), sub: &memberSub{holding: true}}
	for {
		r := h.room(name)
		r.mu.Lock()
		if r.dead {
			r.mu.Unlock()
			continue
		}
		m.room, m.idx = r, len(r.members)
		r.members = append(r.members, m)
		if r.started {
			m.sub.from, m.sub.fromSet = r.offset, true
		}
		r.mu.Unlock()
		break
	}
	if s.rooms == nil {
		s.rooms = make(map[string]*member)
	}
	s.rooms[name] = m

	fail := func(err error) *protoError {
		h.srv.logBusError("subscribe failed", err, "room", name, "session", s.id)
		h.unsubscribe(ctx, s, name) // with a context of its own: ctx may be what failed
		return busError(err, "subscribe failed")
	}
	if err := h.ensureSubscribed(ctx, m.room); err != nil {
		return fail(err)
	}
	hist, err := h.bus.History(ctx, name, fanout.HistoryQuery{Since: since})
	if err != nil {
		return fail(err)
	}
	if m.joined {
		if err := h.bus.Join(ctx, name, fanout.Member{User: s.ident.user, Session: s.id, Node: h.srv.cfg.NodeID}); err != nil {
			return fail(err)
		}
	}
	var res subscribeResult
	if presence {
		page, err := h.bus.Presence(ctx, name, fanout.PresenceQuery{Limit: firstMembersPage})
		if err != nil {
			return fail(err)
		}
		res.members, res.total, res.next = page.Members, page.Total, page.Next
	}

	r := m.room
	for reads := 1; ; reads++ {
		replay, last, refused := h.replay(s, hist)
		r.mu.Lock()
		adm := h.admit(r, m, hist.Top)
		if adm == admitReread && reads < maxSubscribeReads {
			r.mu.Unlock()
			if hist, err = h.bus.History(ctx, name, fanout.HistoryQuery{Since: since}); err != nil {
				return fail(err)
			}
			continue
		}
		if refused {
			h.srv.metrics.replayRefused.Inc()
		}
		res.top, res.recovered, res.cursor = hist.Top, hist.Recovered && !refused, hist.Top
		if res.recovered {
			res.cursor = *since
		}
		s.reply(ack(res))
		for _, f := range replay {
			s.enqueueReplay(f)
		}
		sub := m.sub
		if adm != admitted {
			// The room and this subscription do not agree on where the room
			// stands: the client comes back and resumes from its ack.
			m.sub = nil
			s.leave(time.Duration(rand.Int64N(int64(breakSpread)+1)), reasonHistoryLost)
			r.mu.Unlock()
			return nil
		}
		for _, f := range sub.held {
			if f.kind == kindMessage && f.offset <= last {
				continue
			}
			s.enqueueReplay(f)
		}
		if r.offset >= last {
			m.sub = nil
		} else {
			// The room has not delivered what the ack covers yet (a fill,
			// or messages still on their way): until it has, the member
			// skips what it already got.
			sub.holding, sub.held, sub.last = false, nil, last
		}
		r.mu.Unlock()
		return nil
	}
}

// firstMembersPage is how many members a subscribe ack lists at most; the
// rest are paged with the presence command or the HTTP API.
const firstMembersPage = 100

// replay returns the frames of hist's messages to queue after the subscribe
// ack, and the last offset the ack and replay cover. refused says the replay
// is over Config.ReplayLimit: nothing is replayed and the ack says
// recovered: false, so that the client reloads the room's state instead.
// Replayed frames are the ones every reader of the message shares: a replay
// costs the session a queue slot per message, nothing more.
func (h *hub) replay(s *session, hist fanout.History) (replay []*frame, last uint64, refused bool) {
	last = hist.Top.Offset
	if !hist.Recovered || len(hist.Messages) == 0 {
		return nil, last, false
	}
	replay = make([]*frame, 0, len(hist.Messages))
	size := s.pendingReplay()
	for _, msg := range hist.Messages {
		last = max(last, msg.Offset)
		sf := h.frames(msg)
		if sf == nil {
			continue
		}
		size += len(sf.replay.b)
		replay = append(replay, &sf.replay)
	}
	if size > h.srv.cfg.ReplayLimit {
		return nil, last, true
	}
	return replay, last, false
}

// admission is what admit decided of a subscription's history read.
type admission uint8

const (
	// admitted: the member's held frames continue its history read
	// without a gap.
	admitted admission = iota
	// admitReread: the read is older than the room's position when the
	// member joined; held frames do not reach back to it. A read made now
	// does.
	admitReread
	// admitLost: the read is of another epoch than the room's position.
	admitLost
)

// admit checks a subscription's history read, whose top is top, against the
// room, whose lock is held; the first one starts the room's position.
//
// A member's held frames are every message the room delivered after from.
// A read at or past from therefore continues into them without a gap. A
// read below it is possible when the room's position started from another
// member's later read (from is where it started), or with a history that
// lags its delivery: the subscription reads again. A read of another epoch
// means the bus lost its history and the room has not noticed yet (or the
// member's read is the stale one): a fill finds out, and moves the room,
// closing its members, if the room is stale.
func (h *hub) admit(r *hubRoom, m *member, top fanout.Position) admission {
	switch {
	case !r.started:
		h.start(r, top)
		return admitted
	case top.Epoch != r.epoch:
		h.requestFill(r)
		return admitLost
	case top.Offset < m.sub.from:
		return admitReread
	}
	return admitted
}

// start sets the room's position, which it had none of, to a member's
// history top. The members, all still subscribing, count their held frames
// from there; what the room buffered meanwhile follows it, and a gap after it
// (or a resync or overflow before it) starts a fill. r.mu is held.
func (h *hub) start(r *hubRoom, top fanout.Position) {
	r.started, r.epoch, r.offset = true, top.Epoch, top.Offset
	r.gen++
	for _, m := range r.members {
		if m.sub != nil && !m.sub.fromSet {
			m.sub.from, m.sub.fromSet = top.Offset, true
		}
	}
	if len(r.pending) > 0 {
		h.drainPending(r)
	}
	if r.reread || len(r.pending) > 0 {
		h.requestFill(r)
	}
}

// reset forgets the room's position once the bus no longer delivers it: a
// member that joins meanwhile starts it again. r.mu is held.
func (h *hub) reset(r *hubRoom) {
	r.started, r.reread = false, false
	r.gen++
	h.dropPending(r)
	for _, m := range r.members {
		if m.sub != nil {
			m.sub.fromSet = false
		}
	}
}

// ensureSubscribed subscribes this node to the room on the bus if it is not.
func (h *hub) ensureSubscribed(ctx context.Context, r *hubRoom) error {
	r.sub.Lock()
	defer r.sub.Unlock()
	if r.subscribed {
		return nil
	}
	if err := h.bus.Subscribe(ctx, r.name, h); err != nil {
		return err
	}
	r.subscribed = true
	return nil
}

// unsubscribe removes s from room; the last local member unsubscribes the
// node from the bus. Its bus calls undo what the session did, so they run
// even when ctx is cancelled (a client that left mid-command), bounded by
// cleanupTimeout.
func (h *hub) unsubscribe(ctx context.Context, s *session, name string) bool {
	m, ok := s.rooms[name]
	if !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	delete(s.rooms, name)
	r := m.room
	r.mu.Lock()
	last := len(r.members) - 1
	r.members[m.idx] = r.members[last]
	r.members[m.idx].idx = m.idx
	r.members[last] = nil
	r.members = r.members[:last]
	r.mu.Unlock()

	if m.joined {
		if err := h.bus.Leave(ctx, name, fanout.Member{User: s.ident.user, Session: s.id, Node: h.srv.cfg.NodeID}); err != nil {
			h.srv.log.Warn("presence leave failed", "room", name, "session", s.id, "err", err)
		}
	}

	r.sub.Lock()
	defer r.sub.Unlock()
	r.mu.Lock()
	empty := len(r.members) == 0
	r.mu.Unlock()
	if !empty {
		return true
	}
	if r.subscribed {
		// Unsubscribe and Subscribe are idempotent on the bus: a failed
		// Unsubscribe leaves the room free to be subscribed again, and a
		// bus that still delivers it meanwhile reaches a room that starts
		// its position afresh, or none.
		r.subscribed = false
		if err := h.bus.Unsubscribe(ctx, name); err != nil {
			h.srv.log.Warn("bus unsubscribe failed", "room", name, "err", err)
		}
		r.mu.Lock()
		h.reset(r)
		r.mu.Unlock()
	}
	// A member that joined meanwhile keeps the room: it subscribes again once
	// r.sub is free.
	h.mu.Lock()
	r.mu.Lock()
	if len(r.members) == 0 {
		r.dead = true
		delete(h.rooms, name)
		h.dropPending(r)
	}
	r.mu.Unlock()
	h.mu.Unlock()
	return true
}

// HandleMessage implements fanout.Handler: encode once, then deliver, drop
// as a duplicate, or buffer and fill the gap before it.
func (h *hub) HandleMessage(msg *fanout.Message) {
	r := h.lookup(msg.Room)
	if r == nil {
		return
	}
	f := h.liveFrame(msg)
	r.mu.Lock()
	h.offer(r, f)
	r.mu.Unlock()
}

// offer takes a live message frame from the bus. r.mu is held.
func (h *hub) offer(r *hubRoom, f *frame) {
	if r.started && f.epoch == r.epoch {
		if f.offset == r.offset+1 {
			h.deliver(r, f)
			if len(r.pending) > 0 {
				h.drainPending(r)
			}
			return
		}
		if f.offset <= r.offset {
			h.srv.metrics.duplicates.Inc()
			return
		}
	}
	h.buffer(r, f)
	if r.started && !r.filling {
		h.startFill(r)
	}
}

// deliver queues message frame f, the one after the room's position, to
// every member, and moves the position to it. r.mu is held.
func (h *hub) deliver(r *hubRoom, f *frame) {
	r.offset = f.offset
	if f.b == nil {
		return
	}
	for _, m := range r.members {
		if m.sub != nil {
			m.pass(f)
			continue
		}
		m.s.enqueue(f)
	}
}

// pass hands a message frame to a member whose subscription is not complete.
// The room is locked.
func (m *member) pass(f *frame) {
	switch sub := m.sub; {
	case sub.holding:
		m.hold(f)
	case f.offset <= sub.last:
		// In the member's replay, or before its ack's position.
	default:
		m.sub = nil
		m.s.enqueue(f)
	}
}

// buffer keeps f until the room's position reaches it; past the buffer's
// bounds it drops what the room buffered, and the fill reads history again.
// r.mu is held.
func (h *hub) buffer(r *hubRoom, f *frame) {
	n := len(f.b)
	if len(r.pending) < maxPendingFrames && r.pendingBytes+n <= maxRoomPendingBytes {
		if h.pendingBytes.Add(int64(n)) <= maxPendingBytes {
			r.pending = append(r.pending, f)
			r.pendingBytes += n
			return
		}
		h.pendingBytes.Add(-int64(n))
	}
	h.dropPending(r)
	r.reread = true
}

// dropPending empties the room's buffer. r.mu is held.
func (h *hub) dropPending(r *hubRoom) {
	if r.pendingBytes != 0 {
		h.pendingBytes.Add(-int64(r.pendingBytes))
	}
	clear(r.pending)
	r.pending, r.pendingBytes = nil, 0
}

// drainPending delivers the buffered frames that follow the room's position,
// and drops those at or below it (a fill's read had them too), up to the
// first gap. A frame of another epoch is dropped, and the fill reads history
// again to learn which epoch is the bus's. r.mu is held.
func (h *hub) drainPending(r *hubRoom) {
	i, freed := 0, 0
scan:
	for ; i < len(r.pending); i++ {
		f := r.pending[i]
		switch {
		case f.epoch != r.epoch:
			r.reread = true
		case f.offset == r.offset+1:
			h.deliver(r, f)
		case f.offset > r.offset:
			break scan
		}
		freed += len(f.b)
	}
	h.pendingBytes.Add(-int64(freed))
	r.pendingBytes -= freed
	if i == len(r.pending) {
		clear(r.pending)
		r.pending = nil
		return
	}
	n := copy(r.pending, r.pending[i:])
	clear(r.pending[n:])
	r.pending = r.pending[:n]
}

// requestFill makes the room's fill read history (again). r.mu is held.
func (h *hub) requestFill(r *hubRoom) {
	if r.filling {
		r.reread = true
		return
	}
	h.startFill(r)
}

// startFill starts the room's fill goroutine; none runs. It is counted in
// srv.goroutines, so Shutdown waits for it; once Shutdown waits, no fill
// starts (the room keeps buffering, within bounds, until it is gone).
// r.mu is held.
func (h *hub) startFill(r *hubRoom) {
	r.filling = true
	h.srv.metrics.gapFills.Inc()
	h.fillMu.Lock()
	defer h.fillMu.Unlock()
	if h.stopped {
		return
	}
	h.srv.goroutines.Add(1)
	go h.fill(r)
}

// stop refuses new fills. Shutdown calls it before it waits for the server's
// goroutines, once every session is closed and the server's context is
// cancelled, which ends the fills that run.
func (h *hub) stop() {
	h.fillMu.Lock()
	defer h.fillMu.Unlock()
	h.stopped = true
}

// fill catches the room up with its history: it reads what follows the
// room's position, delivers it, then what the room buffered meanwhile, and
// reads again until nothing is missing. It is the room's only goroutine of
// its kind (r.filling), and it ends when the room is caught up, has no
// member left (or no position: the bus no longer delivers it), or the
// server's context ends.
func (h *hub) fill(r *hubRoom) {
	defer h.srv.goroutines.Done()
	ctx := h.srv.ctx
	retry := fillRetryMin
	failed := false
	for {
		r.mu.Lock()
		if len(r.members) == 0 || !r.started {
			// Without a position, what the room buffered waits for it.
			r.filling = false
			if r.started {
				r.reread = false
				h.dropPending(r)
			}
			r.mu.Unlock()
			return
		}
		gen, since := r.gen, fanout.Position{Epoch: r.epoch, Offset: r.offset}
		r.reread = false
		r.mu.Unlock()

		select {
		case h.fillReads <- struct{}{}:
		case <-ctx.Done():
			return
		}
		hist, err := h.bus.History(ctx, r.name, fanout.HistoryQuery{Since: &since, Delivered: true})
		<-h.fillReads
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// A bus that is down fails every room's fill: the first failure
			// of a fill is worth a warning, the retries are not.
			if !failed {
				h.srv.logBusError("gap fill: history read failed; retrying", err, "room", r.name)
				failed = true
			} else {
				h.srv.log.Debug("gap fill: history read failed", "room", r.name, "err", err)
			}
		} else {
			done, moved := h.applyFill(r, gen, since, hist)
			if done {
				return
			}
			if moved {
				retry = fillRetryMin
				continue
			}
			// A read that moved nothing and did not catch up (a history
			// that does not reach its own top) is not repeated at once.
		}
		if !sleepCtx(ctx, retry/2+rand.N(retry/2+1)) {
			return
		}
		retry = min(2*retry, fillRetryMax)
	}
}

// applyFill delivers a fill's history read, made from since when the room's
// gen was gen. It reports whether the room has caught up (and the fill is
// over), and whether the position moved.
func (h *hub) applyFill(r *hubRoom, gen uint64, since fanout.Position, hist fanout.History) (done, moved bool) {
	r.mu.Lock()
	if r.gen != gen {
		r.mu.Unlock()
		return false, true
	}
	if !hist.Recovered {
		members := h.breakContinuity(r, hist.Top)
		r.mu.Unlock()
		h.srv.log.Warn("room continuity lost: its members reconnect", "room", r.name,
			"from_epoch", since.Epoch, "from_offset", since.Offset, "to_epoch", hist.Top.Epoch, "to_offset", hist.Top.Offset, "members", members)
	} else {
		r.mu.Unlock()
	}
	// One message at a time, so that live delivery to the room waits for
	// no more than one message's fan-out.
	for _, msg := range hist.Messages {
		f := h.liveFrame(msg)
		r.mu.Lock()
		if r.gen != gen {
			r.mu.Unlock()
			return false, true
		}
		if f.epoch == r.epoch && f.offset == r.offset+1 {
			h.deliver(r, f)
			h.srv.metrics.gapMessages.Inc()
		}
		r.mu.Unlock()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gen != gen {
		return false, true
	}
	h.drainPending(r)
	moved = r.epoch != since.Epoch || r.offset != since.Offset
	if r.reread || len(r.pending) > 0 || r.epoch == hist.Top.Epoch && r.offset < hist.Top.Offset {
		return false, moved
	}
	r.filling = false
	return true, moved
}

// breakContinuity moves the room's position to top when history no longer
// reaches it: the epoch changed (the bus lost its history: Redis restarted
// empty), or the messages after it aged out. The room's members cannot be
// brought up to date in place. Each gets a reconnect frame,
//
//	{"type":"reconnect","after_ms":N,"reason":"history lost"}
//
// with N spread over breakSpread, and its connection is then closed as a
// drain closes it (1012 on WebSocket; an SSE stream ends after the event).
// Its client resumes with since, and its subscribe ack says recovered: false
// with the room's new position, as for any resume beyond history. It returns
// how many members were told. r.mu is held.
func (h *hub) breakContinuity(r *hubRoom, top fanout.Position) int {
	h.srv.metrics.continuityBreaks.Inc()
	for _, m := range r.members {
		m.s.leave(time.Duration(rand.Int64N(int64(breakSpread)+1)), reasonHistoryLost)
	}
	r.epoch, r.offset = top.Epoch, top.Offset
	return len(r.members)
}

// sleepCtx waits for d; it reports false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// HandleResync implements fanout.Handler: the bus may have missed messages
// of the room, so its fill compares the position with history. Before the
// position starts, the first member's read is followed by a fill.
func (h *hub) HandleResync(room string) {
	r := h.lookup(room)
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.started {
		r.reread = true
		return
	}
	h.requestFill(r)
}

// HandlePresence implements fanout.Handler: members that asked for presence
// get the event.
func (h *hub) HandlePresence(e fanout.PresenceEvent) {
	r := h.lookup(e.Room)
	if r == nil {
		return
	}
	var f *frame
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.members {
		// A session learns of its own join from its subscribe ack.
		if !m.presence || m.s.transport != transportWS || m.s.id == e.Member.Session {
			continue
		}
		if f == nil {
			f = &frame{b: encodePresence(e), kind: kindControl}
		}
		if m.sub != nil && m.sub.holding {
			m.hold(f)
			continue
		}
		m.s.enqueue(f)
	}
}

// maxHeld bounds the live frames kept for a member while its history is read.
const maxHeld = 4096

// hold keeps f until the member's subscription is complete; a member that
// falls this far behind is a slow consumer. The room is locked.
func (m *member) hold(f *frame) {
	if len(m.sub.held) >= maxHeld {
		m.s.closeNow(closeSlowConsumer, "slow consumer")
		return
	}
	m.sub.held = append(m.sub.held, f)
}
