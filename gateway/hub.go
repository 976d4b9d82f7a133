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
	s        *session
	room     *hubRoom
	idx      int // position in room.members
	presence bool
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
	members   []fanout.Member
	// cursor is where the session now stands: since when recovered, else top.
	cursor fanout.Position
}

// subscribe adds s to room. It queues ack (built from the result), then the
// history after since, then live messages, with no gap and no duplicate.
func (h *hub) subscribe(ctx context.Context, s *session, name string, since *fanout.Position, presence bool, ack func(subscribeResult) *frame) *protoError {
	if _, ok := s.rooms[name]; ok {
		return errorf(codeBadRequest, "already subscribed to "+name)
	}
	if len(s.rooms) >= s.srv.cfg.MaxRoomsPerSession {
		return errorf(codeForbidden, "room limit reached")
	}
	m := &member{s: s, presence: presence, holding: true}
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
		h.srv.log.Warn("subscribe failed", "room", name, "session", s.id, "err", err)
		h.unsubscribe(ctx, s, name)
		return errorf(codeInternal, "subscribe failed")
	}
	if err := h.ensureSubscribed(ctx, m.room); err != nil {
		return fail(err)
	}
	hist, err := h.bus.History(ctx, name, fanout.HistoryQuery{Since: since})
	if err != nil {
		return fail(err)
	}
	if err := h.bus.Join(ctx, name, fanout.Member{User: s.ident.user, Session: s.id, Node: h.srv.cfg.NodeID}); err != nil {
		return fail(err)
	}
	res := subscribeResult{top: hist.Top, recovered: hist.Recovered, cursor: hist.Top}
	if presence {
		if res.members, err = h.bus.Presence(ctx, name); err != nil {
			return fail(err)
		}
	}
	last := hist.Top.Offset
	if hist.Recovered {
		res.cursor = *since
	}
	// Replayed messages are encoded for this session alone, before the room
	// is locked, and carry no time: they are not live deliveries.
	replay := make([]*frame, 0, len(hist.Messages))
	for _, msg := range hist.Messages {
		b, err := encodeMessage(msg)
		if err != nil {
			continue
		}
		replay = append(replay, &frame{b: b, kind: kindMessage, room: msg.Room, epoch: msg.Epoch, offset: msg.Offset})
		last = max(last, msg.Offset)
	}

	r := m.room
	r.mu.Lock()
	defer r.mu.Unlock()
	s.enqueue(ack(res))
	for _, f := range replay {
		s.enqueueReplay(f)
	}
	for _, f := range m.held {
		if f.kind == kindMessage && f.offset <= last {
			continue
		}
		s.enqueueReplay(f)
	}
	m.holding, m.held = false, nil
	return nil
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
// node from the bus.
func (h *hub) unsubscribe(ctx context.Context, s *session, name string) bool {
	m, ok := s.rooms[name]
	if !ok {
		return false
	}
	delete(s.rooms, name)
	r := m.room
	r.mu.Lock()
	last := len(r.members) - 1
	r.members[m.idx] = r.members[last]
	r.members[m.idx].idx = m.idx
	r.members[last] = nil
	r.members = r.members[:last]
	r.mu.Unlock()

	if err := h.bus.Leave(ctx, name, fanout.Member{User: s.ident.user, Session: s.id, Node: h.srv.cfg.NodeID}); err != nil {
		h.srv.log.Warn("presence leave failed", "room", name, "session", s.id, "err", err)
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
	b, err := encodeMessage(msg)
	if err != nil {
		h.srv.log.Error("encoding message", "room", msg.Room, "err", err)
		return
	}
	f := &frame{b: b, kind: kindMessage, room: msg.Room, epoch: msg.Epoch, offset: msg.Offset, time: msg.Time}
	r.mu.Lock()
	for _, m := range r.members {
		if m.holding {
			m.hold(f)
			continue
		}
		m.s.enqueue(f)
	}
	r.mu.Unlock()
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
