package fanout

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"hash/crc32"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var _ Bus = (*Memory)(nil)

// MemoryConfig configures a Memory bus. Zero values take the documented defaults.
type MemoryConfig struct {
	// HistorySize is how many messages each room keeps; zero means 1000.
	HistorySize int
	// HistoryTTL is how long a message stays in history; zero means 24h.
	HistoryTTL time.Duration
	// MaxKeys bounds the idempotency keys remembered per room; zero means 10000.
	MaxKeys int
	// SweepInterval is how often expired history, keys and mailboxes, and
	// idle rooms, are dropped; zero means one minute.
	SweepInterval time.Duration

	// MaxRooms bounds the rooms the bus holds. While it holds that many, a
	// room that only reads made (and that holds nothing) is let go to make
	// room for another; when there is none, Publish, Subscribe and Join
	// naming a room the bus does not hold fail with ErrRoomLimit, and reads
	// of such a room answer as for an empty room without keeping it. Zero
	// means 100000.
	MaxRooms int
	// MaxRoomHistoryBytes bounds one room's history: past it the room's
	// oldest messages are dropped, as past HistorySize. Zero means 8 MiB.
	MaxRoomHistoryBytes int64
	// MaxHistoryBytes bounds the history of all rooms together: past it the
	// oldest messages of the node are dropped (the oldest among a sample of
	// rooms, as Redis approximates LRU). Publishing never fails for it:
	// history is a recovery window, and refusing publishes would let anyone
	// who fills it stop every room. Zero means 256 MiB.
	//
	// Both byte bounds count a message at MessageCost: its data and the wire
	// encoding that readers share (Message.Shared), plus a fixed overhead.
	MaxHistoryBytes int64

	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// MessageCost is what a message counts against the history byte bounds:
// twice its data, sender and room (the message and the encoding that its
// readers share, which must not escape the data) plus 512 bytes for the
// structures around them.
func MessageCost(m *Message) int64 {
	return 2*int64(len(m.Data)+len(m.From)+len(m.Room)) + 512
}

// MemoryStats are a Memory bus's gauges and counters, for metrics.
type MemoryStats struct {
	// Rooms is how many rooms the bus holds; HistoryBytes what their
	// history counts against MaxHistoryBytes.
	Rooms        int
	HistoryBytes int64
	// EvictedRoomBytes and EvictedNodeBytes count the messages dropped from
	// history by MaxRoomHistoryBytes and MaxHistoryBytes.
	EvictedRoomBytes uint64
	EvictedNodeBytes uint64
	// RoomsRefused counts calls that failed with ErrRoomLimit.
	RoomsRefused uint64
}

// Memory is the in-process Bus: one node, everything in memory. A restart
// loses history, and every room gets a new epoch.
type Memory struct {
	cfg MemoryConfig

	mu     sync.Mutex
	rooms  map[string]*memRoom
	closed bool
	// shells are rooms that a read made (History, Presence, Leave,
	// Unsubscribe): at the room bound, one that still holds nothing is let
	// go for a new room. A room in shells may have come to hold something
	// since; it is skipped and forgotten here when found so.
	shells map[string]*memRoom

	bytes        atomic.Int64 // history bytes of every room (MessageCost)
	evictedRoom  atomic.Uint64
	evictedNode  atomic.Uint64
	roomsRefused atomic.Uint64
	evictRounds  atomic.Uint64 // rounds of evict, and the rooms they looked at
	evictLooked  atomic.Uint64

	// sessions maps a registered session to its deliver function, and
	// mailboxes a session that none took to what Post holds for it.
	smu       sync.RWMutex
	sessions  map[string]func([]byte)
	mailboxes map[string]*mailbox

	stop chan struct{}
	done chan struct{}

	started time.Time // for Nodes
}

type memRoom struct {
	// deliver serialises publication and presence delivery so the handler
	// sees one room's events in order, without holding mu while it runs.
	deliver sync.Mutex

	mu       sync.Mutex
	epoch    string
	offset   uint64
	hist     ring
	bytes    int64 // MessageCost of hist
	keys     map[string]keyEntry
	keyOrder []string
	handler  Handler
	members  []*Member // ordered by Session
	lastUsed time.Time
	dead     bool // forgotten by the sweeper; callers look the room up again
}

// mailbox is what Post holds for a session that is not registered, oldest
// first, until expiry: the ttl of the last Post after it was added.
type mailbox struct {
	held   [][]byte
	expiry time.Time
}

type keyEntry struct {
	offset uint64
	expiry time.Time
}

// ring is a room's history, oldest first. Its buffer grows as messages come,
// up to the history size, so a room with few messages holds a small one.
type ring struct {
	buf  []*Message
	head int
	n    int
}

func (r *ring) at(i int) *Message { return r.buf[(r.head+i)%len(r.buf)] }

func (r *ring) oldest() *Message {
	if r.n == 0 {
		return nil
	}
	return r.buf[r.head]
}

// push appends m; the caller has made room (n < size).
func (r *ring) push(m *Message, size int) {
	if r.n == len(r.buf) {
		grown := make([]*Message, min(max(2*len(r.buf), 4), size))
		for i := 0; i < r.n; i++ {
			grown[i] = r.at(i)
		}
		r.buf, r.head = grown, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = m
	r.n++
}

// pop drops and returns the oldest message.
func (r *ring) pop() *Message {
	m := r.buf[r.head]
	r.buf[r.head] = nil
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	if r.n == 0 {
		r.buf, r.head = nil, 0
	}
	return m
}

// NewMemory returns a Memory bus with a sweeper goroutine that Close stops.
func NewMemory(cfg MemoryConfig) *Memory {
	if cfg.HistorySize <= 0 {
		cfg.HistorySize = 1000
	}
	if cfg.HistoryTTL <= 0 {
		cfg.HistoryTTL = 24 * time.Hour
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 10000
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = time.Minute
	}
	if cfg.MaxRooms <= 0 {
		cfg.MaxRooms = 100_000
	}
	if cfg.MaxRoomHistoryBytes <= 0 {
		cfg.MaxRoomHistoryBytes = 8 << 20
	}
	if cfg.MaxHistoryBytes <= 0 {
		cfg.MaxHistoryBytes = 256 << 20
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Memory{
		cfg:       cfg,
		rooms:     make(map[string]*memRoom),
		shells:    make(map[string]*memRoom),
		sessions:  make(map[string]func([]byte)),
		mailboxes: make(map[string]*mailbox),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		started:   cfg.Now(),
	}
	go m.sweepLoop()
	return m
}

// NewEpoch returns a fresh random epoch string.
func NewEpoch() string {
	var b [9]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Stats returns the bus's gauges and counters.
func (m *Memory) Stats() MemoryStats {
	m.mu.Lock()
	rooms := len(m.rooms)
	m.mu.Unlock()
	return MemoryStats{
		Rooms:            rooms,
		HistoryBytes:     m.bytes.Load(),
		EvictedRoomBytes: m.evictedRoom.Load(),
		EvictedNodeBytes: m.evictedNode.Load(),
		RoomsRefused:     m.roomsRefused.Load(),
	}
}

// room returns the named room, making it if the bus does not hold it. A room
// that only a read (write false) needs is made as a shell; at the room bound
// a read gets a room of its own that the bus does not keep.
func (m *Memory) room(name string, write bool) (*memRoom, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	r := m.rooms[name]
	if r == nil {
		r = &memRoom{epoch: NewEpoch(), lastUsed: m.cfg.Now()}
		if len(m.rooms) >= m.cfg.MaxRooms && !m.dropShell() {
			if !write {
				return r, nil
			}
			m.roomsRefused.Add(1)
			return nil, ErrRoomLimit
		}
		m.rooms[name] = r
		if !write {
			m.shells[name] = r
		}
	}
	return r, nil
}

// dropShell lets go of one room that a read made and that still holds
// nothing; it reports whether it found one. m.mu is held.
func (m *Memory) dropShell() bool {
	for name, r := range m.shells {
		delete(m.shells, name)
		r.mu.Lock()
		empty := r.empty() && !r.dead && m.rooms[name] == r
		if empty {
			r.dead = true
			delete(m.rooms, name)
		}
		r.mu.Unlock()
		if empty {
			return true
		}
	}
	return false
}

// empty reports whether the room holds nothing worth keeping; r.mu is held.
func (r *memRoom) empty() bool {
	return r.hist.n == 0 && r.handler == nil && len(r.members) == 0 && len(r.keys) == 0
}

// locked returns the named room with r.mu held, and r.deliver before it when
// deliver is set; never a room the sweeper has forgotten.
func (m *Memory) locked(ctx context.Context, name string, deliver bool) (*memRoom, error) {
	return m.lockedFor(ctx, name, deliver, true)
}

// lockedFor is locked for a call that writes to the room, or only reads it
// (write false; see room).
func (m *Memory) lockedFor(ctx context.Context, name string, deliver, write bool) (*memRoom, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for {
		r, err := m.room(name, write)
		if err != nil {
			return nil, err
		}
		if deliver {
			r.deliver.Lock()
		}
		r.mu.Lock()
		if !r.dead {
			return r, nil
		}
		r.mu.Unlock()
		if deliver {
			r.deliver.Unlock()
		}
	}
}

// Publish implements Bus.
func (m *Memory) Publish(ctx context.Context, room string, p Publication) (PublishResult, error) {
	r, err := m.locked(ctx, room, true)
	if err != nil {
		return PublishResult{}, err
	}
	defer r.deliver.Unlock()

	now := m.cfg.Now()
	r.lastUsed = now
	if p.Key != "" {
		if k, ok := r.keys[p.Key]; ok && now.Before(k.expiry) {
			pos := Position{Epoch: r.epoch, Offset: k.offset}
			r.mu.Unlock()
			return PublishResult{Position: pos, Duplicate: true}, nil
		}
	}
	r.offset++
	msg := &Message{Room: room, Offset: r.offset, Epoch: r.epoch, Data: p.Data, From: p.From, Time: now.UnixNano()}
	m.append(r, msg)
	if p.Key != "" {
		r.remember(p.Key, keyEntry{offset: msg.Offset, expiry: now.Add(IdempotencyWindow)}, m.cfg.MaxKeys)
	}
	h := r.handler
	r.mu.Unlock()

	if h != nil {
		h.HandleMessage(msg)
	}
	if m.bytes.Load() > m.cfg.MaxHistoryBytes {
		m.evict(r)
	}
	return PublishResult{Position: Position{Epoch: msg.Epoch, Offset: msg.Offset}}, nil
}

// append adds msg to r's history, dropping the oldest messages past the
// history size and the room's byte bound; r.mu is held.
func (m *Memory) append(r *memRoom, msg *Message) {
	if r.hist.n >= m.cfg.HistorySize {
		m.drop(r)
	}
	r.hist.push(msg, m.cfg.HistorySize)
	c := MessageCost(msg)
	r.bytes += c
	m.bytes.Add(c)
	for r.bytes > m.cfg.MaxRoomHistoryBytes && r.hist.n > 1 {
		m.drop(r)
		m.evictedRoom.Add(1)
	}
}

// drop removes r's oldest message from history; r.mu is held.
func (m *Memory) drop(r *memRoom) {
	c := MessageCost(r.hist.pop())
	r.bytes -= c
	m.bytes.Add(-c)
}

// evictSample is how many rooms with history evict compares, and evictScan
// how many rooms it looks at, at most, to find them.
const (
	evictSample = 8
	evictScan   = 64
)

// evict drops the oldest messages of the node until its history is within
// MaxHistoryBytes: each round takes the oldest message among a sample of
// rooms, or of own (the publisher's room, which has history) when the sample
// has none. It runs in the publisher's goroutine with no room locked.
func (m *Memory) evict(own *memRoom) {
	for m.bytes.Load() > m.cfg.MaxHistoryBytes {
		victim := own
		var oldest int64 = math.MaxInt64
		m.mu.Lock()
		sampled, scanned := 0, 0
		for _, r := range m.rooms {
			if sampled == evictSample || scanned == evictScan {
				break
			}
			scanned++
			r.mu.Lock()
			if o := r.hist.oldest(); o != nil {
				sampled++
				if o.Time < oldest {
					victim, oldest = r, o.Time
				}
			}
			r.mu.Unlock()
		}
		m.mu.Unlock()
		m.evictRounds.Add(1)
		m.evictLooked.Add(uint64(scanned))
		victim.mu.Lock()
		n := victim.hist.n
		if n > 0 {
			m.drop(victim)
			m.evictedNode.Add(1)
		}
		victim.mu.Unlock()
		if n == 0 && victim == own {
			return
		}
	}
}

func (r *memRoom) remember(key string, e keyEntry, max int) {
	if r.keys == nil {
		r.keys = make(map[string]keyEntry)
	}
	if _, ok := r.keys[key]; !ok {
		r.keyOrder = append(r.keyOrder, key)
	}
	r.keys[key] = e
	for len(r.keyOrder) > max {
		delete(r.keys, r.keyOrder[0])
		r.keyOrder = r.keyOrder[1:]
	}
}

// Subscribe implements Bus.
func (m *Memory) Subscribe(ctx context.Context, room string, h Handler) error {
	r, err := m.locked(ctx, room, false)
	if err != nil {
		return err
	}
	defer r.mu.Unlock()
	r.handler = h
	r.lastUsed = m.cfg.Now()
	return nil
}

// Unsubscribe implements Bus.
func (m *Memory) Unsubscribe(ctx context.Context, room string) error {
	r, err := m.lockedFor(ctx, room, false, false)
	if err != nil {
		return err
	}
	r.handler = nil
	r.lastUsed = m.cfg.Now()
	r.mu.Unlock()
	// Wait out a delivery in progress, so no call reaches the handler after
	// Unsubscribe returns.
	r.deliver.Lock()
	r.deliver.Unlock()
	return nil
}

// History implements Bus.
func (m *Memory) History(ctx context.Context, room string, q HistoryQuery) (History, error) {
	r, err := m.lockedFor(ctx, room, false, false)
	if err != nil {
		return History{}, err
	}
	defer r.mu.Unlock()
	now := m.cfg.Now()
	r.lastUsed = now
	m.expire(r, now.Add(-m.cfg.HistoryTTL).UnixNano())

	h := History{Top: Position{Epoch: r.epoch, Offset: r.offset}}
	n := r.hist.n
	oldest := r.offset - uint64(n) + 1 // offset of the oldest retained message
	if q.Since == nil {
		if q.Limit <= 0 {
			return h, nil
		}
		from := max(0, n-q.Limit)
		h.Messages = make([]*Message, 0, n-from)
		for i := from; i < n; i++ {
			h.Messages = append(h.Messages, r.hist.at(i))
		}
		return h, nil
	}
	since := q.Since.Offset
	if q.Since.Epoch != r.epoch || since > r.offset || since+1 < oldest {
		return h, nil
	}
	h.Recovered = true
	from := int(since + 1 - oldest)
	to := n
	if q.Limit > 0 && to-from > q.Limit {
		to = from + q.Limit
	}
	if to > from {
		h.Messages = make([]*Message, 0, to-from)
		for i := from; i < to; i++ {
			h.Messages = append(h.Messages, r.hist.at(i))
		}
	}
	return h, nil
}

// expire drops messages older than cutoff (Unix nanoseconds); r.mu is held.
func (m *Memory) expire(r *memRoom, cutoff int64) {
	for r.hist.n > 0 && r.hist.oldest().Time < cutoff {
		m.drop(r)
	}
}

// Join implements Bus. One node holds every member, so a lease never lapses
// while the bus runs.
func (m *Memory) Join(ctx context.Context, room string, mem Member) error {
	_, err := m.presence(ctx, room, mem, true, -1, "")
	return err
}

// Enter implements Bus.
func (m *Memory) Enter(ctx context.Context, room string, mem Member, max int) ([]Member, error) {
	return m.presence(ctx, room, mem, true, max, "")
}

// EnterAfter implements Bus.
func (m *Memory) EnterAfter(ctx context.Context, room string, mem Member, prefix string) ([]Member, error) {
	return m.presence(ctx, room, mem, true, 0, prefix)
}

// Leave implements Bus.
func (m *Memory) Leave(ctx context.Context, room string, mem Member) error {
	_, err := m.presence(ctx, room, mem, false, -1, "")
	return err
}

// memberIndex returns where session is, or would be, in r.members.
func (r *memRoom) memberIndex(session string) (int, bool) {
	i := sort.Search(len(r.members), func(i int) bool { return r.members[i].Session >= session })
	return i, i < len(r.members) && r.members[i].Session == session
}

// presence joins or leaves mem. For a join with max >= 0 it returns the
// other members, and refuses a new member past max (when max > 0); with a
// prefix, it joins only if a member's session starts with it.
func (m *Memory) presence(ctx context.Context, room string, mem Member, join bool, max int, prefix string) ([]Member, error) {
	// A join after a member is a read until the member is found: a room
	// it is refused in is only a shell, which the room bound can reclaim.
	r, err := m.lockedFor(ctx, room, true, join && prefix == "")
	if err != nil {
		return nil, err
	}
	defer r.deliver.Unlock()
	r.lastUsed = m.cfg.Now()
	i, found := r.memberIndex(mem.Session)
	if prefix != "" {
		j, _ := r.memberIndex(prefix)
		if j == len(r.members) || !strings.HasPrefix(r.members[j].Session, prefix) {
			r.mu.Unlock()
			return nil, ErrNoSession
		}
	}
	var others []Member
	if join && max >= 0 {
		n := len(r.members)
		if found {
			n--
		}
		if max > 0 && n >= max {
			r.mu.Unlock()
			return nil, ErrFull
		}
		others = make([]Member, 0, n)
		for _, mp := range r.members {
			if mp.Session != mem.Session {
				others = append(others, *mp)
			}
		}
	}
	switch {
	case join && found:
		*r.members[i] = mem
		r.mu.Unlock()
		return others, nil
	case join:
		mp := new(Member)
		*mp = mem
		r.members = append(r.members, nil)
		copy(r.members[i+1:], r.members[i:])
		r.members[i] = mp
	case !found:
		r.mu.Unlock()
		return nil, nil
	default:
		copy(r.members[i:], r.members[i+1:])
		r.members[len(r.members)-1] = nil
		r.members = r.members[:len(r.members)-1]
		if len(r.members) == 0 {
			r.members = nil
		}
	}
	h := r.handler
	r.mu.Unlock()
	if h != nil {
		h.HandlePresence(PresenceEvent{Room: room, Join: join, Member: mem})
	}
	return others, nil
}

// Presence implements Bus. A page costs a binary search and the page: the
// members are kept ordered by session.
func (m *Memory) Presence(ctx context.Context, room string, q PresenceQuery) (PresencePage, error) {
	limit, after, err := q.parse()
	if err != nil {
		return PresencePage{}, err
	}
	r, err := m.lockedFor(ctx, room, false, false)
	if err != nil {
		return PresencePage{}, err
	}
	defer r.mu.Unlock()
	from := 0
	if q.Cursor != "" {
		from = sort.Search(len(r.members), func(i int) bool { return r.members[i].Session > after })
	}
	to := min(from+limit, len(r.members))
	page := PresencePage{Total: len(r.members), Members: make([]Member, 0, to-from)}
	for _, mp := range r.members[from:to] {
		page.Members = append(page.Members, *mp)
	}
	if to < len(r.members) {
		page.Next = presenceCursor(r.members[to-1].Session)
	}
	return page, nil
}

// presenceCursor is the cursor of the page after the member with session:
// the session and its CRC-32, so that a cursor no page gave is refused.
func presenceCursor(session string) string {
	b := crc32.ChecksumIEEE([]byte(session))
	return base64.RawURLEncoding.EncodeToString(binary.BigEndian.AppendUint32([]byte(session), b))
}

// parse checks a query: the page size, and the session its cursor is after.
func (q PresenceQuery) parse() (limit int, after string, err error) {
	limit = q.Limit
	switch {
	case limit == 0:
		limit = DefaultPresenceLimit
	case limit < 0:
		return 0, "", ErrBadCursor
	case limit > MaxPresenceLimit:
		limit = MaxPresenceLimit
	}
	if q.Cursor == "" {
		return limit, "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(q.Cursor)
	if err != nil || len(b) <= 4 || len(b) > 260 {
		return 0, "", ErrBadCursor
	}
	session, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.ChecksumIEEE(session) != sum {
		return 0, "", ErrBadCursor
	}
	return limit, string(session), nil
}

// Register implements Bus.
func (m *Memory) Register(ctx context.Context, session string, deliver func([]byte)) error {
	if err := m.check(ctx); err != nil {
		return err
	}
	m.smu.Lock()
	m.sessions[session] = deliver
	m.smu.Unlock()
	return nil
}

// Unregister implements Bus.
func (m *Memory) Unregister(ctx context.Context, session string) error {
	if err := m.check(ctx); err != nil {
		return err
	}
	m.smu.Lock()
	delete(m.sessions, session)
	m.smu.Unlock()
	return nil
}

// Send implements Bus: deliver runs in the caller's goroutine.
func (m *Memory) Send(ctx context.Context, session string, data []byte) error {
	if err := m.check(ctx); err != nil {
		return err
	}
	m.smu.RLock()
	deliver := m.sessions[session]
	m.smu.RUnlock()
	if deliver == nil {
		return ErrNoSession
	}
	deliver(data)
	return nil
}

// Post implements Bus: deliver runs in the caller's goroutine, as for Send.
// Whether the session is registered and what is held for it are looked at
// under one lock with Claim, so a payload is held only while no
// registration can miss it.
func (m *Memory) Post(ctx context.Context, session string, data []byte, max int, ttl time.Duration) error {
	if err := m.check(ctx); err != nil {
		return err
	}
	m.smu.Lock()
	deliver := m.sessions[session]
	if deliver == nil {
		err := m.hold(session, data, max, ttl)
		m.smu.Unlock()
		return err
	}
	m.smu.Unlock()
	deliver(data)
	return nil
}

// hold adds a copy of data to session's mailbox, unless it holds max
// payloads already; m.smu is held.
func (m *Memory) hold(session string, data []byte, max int, ttl time.Duration) error {
	now := m.cfg.Now()
	mb := m.mailbox(session, now)
	if max <= 0 || ttl <= 0 || mb != nil && len(mb.held) >= max {
		return ErrFull
	}
	if mb == nil {
		mb = &mailbox{}
		m.mailboxes[session] = mb
	}
	mb.held = append(mb.held, bytes.Clone(data))
	mb.expiry = now.Add(ttl)
	return nil
}

// mailbox returns session's mailbox, or nil when it has none or the one it
// had has expired, which it then drops; m.smu is held.
func (m *Memory) mailbox(session string, now time.Time) *mailbox {
	mb := m.mailboxes[session]
	if mb != nil && !now.Before(mb.expiry) {
		delete(m.mailboxes, session)
		return nil
	}
	return mb
}

// Claim implements Bus: it registers and empties the mailbox under the lock
// that Post holds, so every Post comes before it (and is returned) or after
// it (and is delivered).
func (m *Memory) Claim(ctx context.Context, session string, deliver func([]byte)) ([][]byte, error) {
	if err := m.check(ctx); err != nil {
		return nil, err
	}
	m.smu.Lock()
	defer m.smu.Unlock()
	m.sessions[session] = deliver
	mb := m.mailbox(session, m.cfg.Now())
	if mb == nil {
		return nil, nil
	}
	delete(m.mailboxes, session)
	return mb.held, nil
}

// check returns ctx's error, or ErrClosed after Close.
func (m *Memory) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !m.Ready() {
		return ErrClosed
	}
	return nil
}

// Nodes lists the nodes of the deployment, as Redis.Nodes does: a Memory
// bus is one node's, so the list is that node alone, seen now. The bus
// knows neither the node's ID nor its URL, which are empty: its caller
// knows them.
func (m *Memory) Nodes(ctx context.Context) ([]NodeInfo, error) {
	if err := m.check(ctx); err != nil {
		return nil, err
	}
	return []NodeInfo{{Started: m.started, LastSeen: m.cfg.Now(), Self: true}}, nil
}

// Ready implements Bus: a Memory bus is ready until closed.
func (m *Memory) Ready() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.closed
}

// Close implements Bus.
func (m *Memory) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	close(m.stop)
	<-m.done
	return nil
}

func (m *Memory) sweepLoop() {
	defer close(m.done)
	t := time.NewTicker(m.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// sweep drops expired history, keys and mailboxes, and forgets rooms that
// have nothing left: no history, no subscriber, no member, and idle for the
// history TTL, or for one sweep interval if the room never had a message
// (rooms that were only read, which anyone may name).
func (m *Memory) sweep() {
	now := m.cfg.Now()
	m.sweepMailboxes(now)
	cutoff := now.Add(-m.cfg.HistoryTTL)
	unusedCutoff := now.Add(-m.cfg.SweepInterval)
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, r := range m.rooms {
		r.mu.Lock()
		m.expire(r, cutoff.UnixNano())
		for len(r.keyOrder) > 0 && !now.Before(r.keys[r.keyOrder[0]].expiry) {
			delete(r.keys, r.keyOrder[0])
			r.keyOrder = r.keyOrder[1:]
		}
		idle := r.empty() && (r.lastUsed.Before(cutoff) || r.offset == 0 && r.lastUsed.Before(unusedCutoff))
		r.dead = idle
		r.mu.Unlock()
		if idle {
			delete(m.rooms, name)
			delete(m.shells, name)
		}
	}
}

// sweepMailboxes drops the mailboxes that have expired: those of sessions
// that nobody claimed, which Post and Claim would otherwise never look at
// again.
func (m *Memory) sweepMailboxes(now time.Time) {
	m.smu.Lock()
	defer m.smu.Unlock()
	for session, mb := range m.mailboxes {
		if !now.Before(mb.expiry) {
			delete(m.mailboxes, session)
		}
	}
}
