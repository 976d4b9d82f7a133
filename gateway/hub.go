package gateway

import (
	"context"
	"sync"

	"github.com/parley-rt/parley/fanout"
)

// hub maps rooms to this node's sessions. It subscribes the node to a room on
// the bus while the room has a local member, and fans every message out to
// them: encoded once, the same bytes queued to each.
type hub struct {
	srv *Server
	bus fanout.Bus

	mu    sync.Mutex
	rooms map[string]*hubRoom
}

var _ fanout.Handler = (*hub)(nil)

type hubRoom struct {
	name string

	// sub serialises bus Subscribe and Unsubscribe for the room.
	sub        sync.Mutex
	subscribed bool

	mu      sync.Mutex
	members []*member
	dead    bool // removed from hub.rooms; callers fetch the room again
}

// member is a session's subscription to a room.
type member struct {
	s    *session
	room *hubRoom
	idx  int // position in room.members
	// presence: the session gets the room's presence events. joined: it is
	// in the room's presence (it asked, or the room is a presence room).
	presence bool
	joined   bool
	// epoch and last are the position the session has reached in the room:
	// a live message at or below it (one the bus had accepted when history
	// was read, delivered only after the subscription completed) is dropped.
	epoch string
	last  uint64
	// While holding, live frames are kept in held instead of being queued, so
	// that the subscribe ack and history go out first.
	holding bool
	held    []*frame
}

func newHub(srv *Server, bus fanout.Bus) *hub {
	return &hub{srv: srv, bus: bus, rooms: make(map[string]*hubRoom)}
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
// one encoding.
type sharedFrames struct {
	live, replay frame
}

// frames returns msg's shared frames; nil if it cannot be encoded.
func (h *hub) frames(msg *fanout.Message) *sharedFrames {
	sf, _ := msg.Shared(func(m *fanout.Message) any {
		b, err := encodeMessage(m)
		if err != nil {
			h.srv.log.Error("encoding message", "room", m.Room, "offset", m.Offset, "err", err)
			return (*sharedFrames)(nil)
		}
		sf := &sharedFrames{live: frame{b: b, kind: kindMessage, room: m.Room, epoch: m.Epoch, offset: m.Offset, time: m.Time}}
		sf.replay = sf.live
		sf.replay.time = 0
		return sf
	}).(*sharedFrames)
	return sf
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
	m := &member{s: s, presence: presence, joined: presence || h.srv.presenceRoom(name), holding: true}
	for {
		r := h.room(name)
		r.mu.Lock()
		if r.dead {
			r.mu.Unlock()
			continue
		}
		m.room, m.idx = r, len(r.members)
		r.members = append(r.members, m)
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
	res := subscribeResult{top: hist.Top, recovered: hist.Recovered, cursor: hist.Top}
	if presence {
		page, err := h.bus.Presence(ctx, name, fanout.PresenceQuery{Limit: firstMembersPage})
		if err != nil {
			return fail(err)
		}
		res.members, res.total, res.next = page.Members, page.Total, page.Next
	}
	last := hist.Top.Offset
	// Replayed frames are the ones every reader of the message shares: a
	// replay costs the session a queue slot per message, nothing more.
	var replay []*frame
	if hist.Recovered && len(hist.Messages) > 0 {
		replay = make([]*frame, 0, len(hist.Messages))
		size := s.pendingReplay()
		for _, msg := range hist.Messages {
			sf := h.frames(msg)
			if sf == nil {
				continue
			}
			size += len(sf.replay.b)
			replay = append(replay, &sf.replay)
			last = max(last, msg.Offset)
		}
		if size > h.srv.cfg.ReplayLimit {
			// Too much to replay: the client reloads the room's state
			// instead, as when history has moved on.
			h.srv.metrics.replayRefused.Inc()
			res.recovered, replay = false, nil
		}
	}
	if res.recovered {
		res.cursor = *since
	}

	r := m.room
	r.mu.Lock()
	defer r.mu.Unlock()
	s.reply(ack(res))
	for _, f := range replay {
		s.enqueueReplay(f)
	}
	m.epoch, m.last = hist.Top.Epoch, last
	for _, f := range m.held {
		if f.kind == kindMessage && !m.advance(f) {
			continue
		}
		s.enqueueReplay(f)
	}
	m.holding, m.held = false, nil
	return nil
}

// firstMembersPage is how many members a subscribe ack lists at most; the
// rest are paged with the presence command or the HTTP API.
const firstMembersPage = 100

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
		r.subscribed = false
		if err := h.bus.Unsubscribe(ctx, name); err != nil {
			h.srv.log.Warn("bus unsubscribe failed", "room", name, "err", err)
		}
	}
	// A member that joined meanwhile keeps the room: it subscribes again once
	// r.sub is free.
	h.mu.Lock()
	r.mu.Lock()
	if len(r.members) == 0 {
		r.dead = true
		delete(h.rooms, name)
	}
	r.mu.Unlock()
	h.mu.Unlock()
	return true
}

// HandleMessage implements fanout.Handler: encode once, queue to every member.
func (h *hub) HandleMessage(msg *fanout.Message) {
	r := h.lookup(msg.Room)
	if r == nil {
		return
	}
	sf := h.frames(msg)
	if sf == nil {
		return
	}
	f := &sf.live
	r.mu.Lock()
	for _, m := range r.members {
		if m.holding {
			m.hold(f)
			continue
		}
		if m.advance(f) {
			m.s.enqueue(f)
		}
	}
	r.mu.Unlock()
}

// advance moves the member's position to message frame f and reports whether
// f is new to it: not at or below the position in the same epoch. The room
// is locked.
func (m *member) advance(f *frame) bool {
	if f.epoch == m.epoch && f.offset <= m.last {
		return false
	}
	m.epoch, m.last = f.epoch, f.offset
	return true
}

// HandleResync implements fanout.Handler.
func (h *hub) HandleResync(room string) {}

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
		if m.holding {
			m.hold(f)
			continue
		}
		m.s.enqueue(f)
	}
}

// maxHeld bounds the live frames kept for a member while its history is read.
const maxHeld = 4096

// hold keeps f until the member's subscription is complete; a member that
// falls this far behind is a slow consumer.
func (m *member) hold(f *frame) {
	if len(m.held) >= maxHeld {
		m.s.closeNow(closeSlowConsumer, "slow consumer")
		return
	}
	m.held = append(m.held, f)
}
