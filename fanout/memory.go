package fanout

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"sort"
	"sync"
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
	// SweepInterval is how often expired history, keys and idle rooms are
	// dropped; zero means one minute.
	SweepInterval time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Memory is the in-process Bus: one node, everything in memory. A restart
// loses history, and every room gets a new epoch.
type Memory struct {
	cfg MemoryConfig

	mu     sync.Mutex
	rooms  map[string]*memRoom
	closed bool

	stop chan struct{}
	done chan struct{}
}

type memRoom struct {
	// deliver serialises publication and presence delivery so the handler
	// sees one room's events in order, without holding mu while it runs.
	deliver sync.Mutex

	mu       sync.Mutex
	epoch    string
	offset   uint64
	hist     []*Message // ring buffer, oldest at head
	head     int
	keys     map[string]keyEntry
	keyOrder []string
	handler  Handler
	members  map[string]Member // by session
	lastUsed time.Time
	dead     bool // forgotten by the sweeper; callers look the room up again
}

type keyEntry struct {
	offset uint64
	expiry time.Time
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
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Memory{
		cfg:   cfg,
		rooms: make(map[string]*memRoom),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
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

func (m *Memory) room(name string) (*memRoom, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	r := m.rooms[name]
	if r == nil {
		r = &memRoom{epoch: NewEpoch(), lastUsed: m.cfg.Now()}
		m.rooms[name] = r
	}
	return r, nil
}

// locked returns the named room with r.mu held, and r.deliver before it when
// deliver is set; never a room the sweeper has forgotten.
func (m *Memory) locked(name string, deliver bool) (*memRoom, error) {
	for {
		r, err := m.room(name)
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
	r, err := m.locked(room, true)
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
	r.append(msg, m.cfg.HistorySize)
	if p.Key != "" {
		r.remember(p.Key, keyEntry{offset: msg.Offset, expiry: now.Add(IdempotencyWindow)}, m.cfg.MaxKeys)
	}
	h := r.handler
	r.mu.Unlock()

	if h != nil {
		h.HandleMessage(msg)
	}
	return PublishResult{Position: Position{Epoch: msg.Epoch, Offset: msg.Offset}}, nil
}

func (r *memRoom) append(msg *Message, size int) {
	if len(r.hist) < size {
		r.hist = append(r.hist, msg)
		return
	}
	r.hist[r.head] = msg
	r.head = (r.head + 1) % len(r.hist)
}

// at returns the i-th retained message, oldest first.
func (r *memRoom) at(i int) *Message {
	return r.hist[(r.head+i)%len(r.hist)]
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
	r, err := m.locked(room, false)
	if err != nil {
		return err
	}
	defer r.mu.Unlock()
	if r.handler != nil {
		return ErrSubscribed
	}
	r.handler = h
	r.lastUsed = m.cfg.Now()
	return nil
}

// Unsubscribe implements Bus.
func (m *Memory) Unsubscribe(ctx context.Context, room string) error {
	r, err := m.locked(room, false)
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
	r, err := m.locked(room, false)
	if err != nil {
		return History{}, err
	}
	defer r.mu.Unlock()
	now := m.cfg.Now()
	r.lastUsed = now
	r.expire(now.Add(-m.cfg.HistoryTTL).UnixNano())

	h := History{Top: Position{Epoch: r.epoch, Offset: r.offset}}
	n := len(r.hist)
	oldest := r.offset - uint64(n) + 1 // offset of the oldest retained message
	if q.Since == nil {
		if q.Limit <= 0 {
			return h, nil
		}
		from := max(0, n-q.Limit)
		h.Messages = make([]*Message, 0, n-from)
		for i := from; i < n; i++ {
			h.Messages = append(h.Messages, r.at(i))
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
			h.Messages = append(h.Messages, r.at(i))
		}
	}
	return h, nil
}

// expire drops messages older than cutoff (Unix nanoseconds) from the head.
func (r *memRoom) expire(cutoff int64) {
	drop := 0
	for drop < len(r.hist) && r.at(drop).Time < cutoff {
		drop++
	}
	if drop == 0 {
		return
	}
	kept := make([]*Message, 0, len(r.hist)-drop)
	for i := drop; i < len(r.hist); i++ {
		kept = append(kept, r.at(i))
	}
	r.hist, r.head = kept, 0
}

// Join implements Bus.
func (m *Memory) Join(ctx context.Context, room string, mem Member) error {
	return m.presence(room, mem, true)
}

// Leave implements Bus.
func (m *Memory) Leave(ctx context.Context, room string, mem Member) error {
	return m.presence(room, mem, false)
}

func (m *Memory) presence(room string, mem Member, join bool) error {
	r, err := m.locked(room, true)
	if err != nil {
		return err
	}
	defer r.deliver.Unlock()
	r.lastUsed = m.cfg.Now()
	if join {
		if r.members == nil {
			r.members = make(map[string]Member)
		}
		r.members[mem.Session] = mem
	} else {
		if _, ok := r.members[mem.Session]; !ok {
			r.mu.Unlock()
			return nil
		}
		delete(r.members, mem.Session)
	}
	h := r.handler
	r.mu.Unlock()
	if h != nil {
		h.HandlePresence(PresenceEvent{Room: room, Join: join, Member: mem})
	}
	return nil
}

// Presence implements Bus.
func (m *Memory) Presence(ctx context.Context, room string) ([]Member, error) {
	r, err := m.locked(room, false)
	if err != nil {
		return nil, err
	}
	defer r.mu.Unlock()
	out := make([]Member, 0, len(r.members))
	for _, mem := range r.members {
		out = append(out, mem)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Session < out[j].Session })
	return out, nil
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

// sweep drops expired history and keys, and forgets rooms that have nothing
// left: no history, no subscriber, no member, and idle for the history TTL,
// or for one sweep interval if the room never had a message (rooms that were
// only read, which anyone may name).
func (m *Memory) sweep() {
	now := m.cfg.Now()
	cutoff := now.Add(-m.cfg.HistoryTTL)
	unusedCutoff := now.Add(-m.cfg.SweepInterval)
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, r := range m.rooms {
		r.mu.Lock()
		r.expire(cutoff.UnixNano())
		for len(r.keyOrder) > 0 && !now.Before(r.keys[r.keyOrder[0]].expiry) {
			delete(r.keys, r.keyOrder[0])
			r.keyOrder = r.keyOrder[1:]
		}
		idle := len(r.hist) == 0 && r.handler == nil && len(r.members) == 0 && len(r.keys) == 0 &&
			(r.lastUsed.Before(cutoff) || r.offset == 0 && r.lastUsed.Before(unusedCutoff))
		r.dead = idle
		r.mu.Unlock()
		if idle {
			delete(m.rooms, name)
		}
	}
}
