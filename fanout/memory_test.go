package fanout

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMemory(t *testing.T) {
	testBus(t, func(t *testing.T) Bus {
		m := NewMemory(MemoryConfig{HistorySize: suiteHistory})
		t.Cleanup(func() { m.Close() })
		return m
	}, func(t *testing.T, bus Bus) Bus { return bus })
}

// fakeClock is a MemoryConfig.Now that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// newTestMemory returns a Memory bus on clock, closed when the test ends.
func newTestMemory(t *testing.T, clock *fakeClock, cfg MemoryConfig) *Memory {
	t.Helper()
	cfg.Now = clock.Now
	m := NewMemory(cfg)
	t.Cleanup(func() { m.Close() })
	return m
}

func TestMemoryConfigDefaults(t *testing.T) {
	m := NewMemory(MemoryConfig{})
	defer m.Close()
	tests := []struct {
		name      string
		got, want any
	}{
		{"HistorySize", m.cfg.HistorySize, 1000},
		{"HistoryTTL", m.cfg.HistoryTTL, 24 * time.Hour},
		{"MaxKeys", m.cfg.MaxKeys, 10000},
		{"SweepInterval", m.cfg.SweepInterval, time.Minute},
		{"MaxRooms", m.cfg.MaxRooms, 100000},
		{"MaxRoomHistoryBytes", m.cfg.MaxRoomHistoryBytes, int64(8 << 20)},
		{"MaxHistoryBytes", m.cfg.MaxHistoryBytes, int64(256 << 20)},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	if m.cfg.Now == nil {
		t.Errorf("Now: got nil, want time.Now")
	}
}

func TestMemoryIdempotencyKeyExpiry(t *testing.T) {
	clock := newFakeClock()
	m := newTestMemory(t, clock, MemoryConfig{})
	tests := []struct {
		name          string
		advance       time.Duration // before this publish
		key           string
		wantOffset    uint64
		wantDuplicate bool
	}{
		{name: "first", key: "k", wantOffset: 1},
		{name: "repeat just inside the window", advance: IdempotencyWindow - time.Nanosecond, key: "k", wantOffset: 1, wantDuplicate: true},
		{name: "repeat when the window ends", advance: time.Nanosecond, key: "k", wantOffset: 2},
		{name: "the key counts again from its new publish", advance: IdempotencyWindow - time.Nanosecond, key: "k", wantOffset: 2, wantDuplicate: true},
		{name: "another key meanwhile", key: "other", wantOffset: 3},
	}
	for _, tt := range tests {
		clock.Advance(tt.advance)
		res := publish(t, m, "room", Publication{Data: data(1), Key: tt.key})
		if res.Offset != tt.wantOffset || res.Duplicate != tt.wantDuplicate {
			t.Errorf("%s: got offset %d duplicate %v, want %d %v", tt.name, res.Offset, res.Duplicate, tt.wantOffset, tt.wantDuplicate)
		}
	}
}

func TestMemoryMaxKeys(t *testing.T) {
	m := newTestMemory(t, newFakeClock(), MemoryConfig{MaxKeys: 2})
	for _, k := range []string{"k1", "k2", "k3"} {
		publish(t, m, "room", Publication{Data: data(1), Key: k})
	}
	tests := []struct {
		name          string
		key           string
		wantDuplicate bool
	}{
		{"newest kept", "k3", true},
		{"second newest kept", "k2", true},
		{"oldest forgotten past MaxKeys", "k1", false},
	}
	for _, tt := range tests {
		if got := publish(t, m, "room", Publication{Data: data(2), Key: tt.key}).Duplicate; got != tt.wantDuplicate {
			t.Errorf("%s: got duplicate %v, want %v", tt.name, got, tt.wantDuplicate)
		}
	}
}

func TestMemoryHistoryTTL(t *testing.T) {
	clock := newFakeClock()
	const ttl = time.Hour
	m := newTestMemory(t, clock, MemoryConfig{HistoryTTL: ttl})
	epoch := publishN(t, m, "room", 3)[0].Epoch // at t0
	clock.Advance(30 * time.Minute)
	publishN(t, m, "room", 2) // offsets 4 and 5, at t0+30m
	at := func(off uint64) *Position { return &Position{Epoch: epoch, Offset: off} }

	// Rows run in order on one clock: expiry only moves forward.
	tests := []struct {
		name          string
		now           time.Duration // since t0
		q             HistoryQuery
		wantOffsets   []uint64
		wantRecovered bool
	}{
		{name: "all kept at exactly the TTL", now: ttl, q: HistoryQuery{Limit: 10}, wantOffsets: seq(1, 5)},
		{name: "first three expired", now: ttl + time.Nanosecond, q: HistoryQuery{Limit: 10}, wantOffsets: seq(4, 5)},
		{name: "resume after the expired ones", now: ttl + time.Nanosecond, q: HistoryQuery{Since: at(3)}, wantOffsets: seq(4, 5), wantRecovered: true},
		{name: "resume from an expired one", now: ttl + time.Nanosecond, q: HistoryQuery{Since: at(2)}},
		{name: "everything expired", now: ttl + 31*time.Minute, q: HistoryQuery{Limit: 10}},
		{name: "resume from top with nothing kept", now: ttl + 31*time.Minute, q: HistoryQuery{Since: at(5)}, wantRecovered: true},
		{name: "resume from before top with nothing kept", now: ttl + 31*time.Minute, q: HistoryQuery{Since: at(4)}},
	}
	start := clock.Now().Add(-30 * time.Minute)
	for _, tt := range tests {
		clock.Advance(start.Add(tt.now).Sub(clock.Now()))
		h := history(t, m, "room", tt.q)
		if want := (Position{Epoch: epoch, Offset: 5}); h.Top != want {
			t.Errorf("%s: top: got %v, want %v", tt.name, h.Top, want)
		}
		if got := offsets(h.Messages); !slices.Equal(got, tt.wantOffsets) {
			t.Errorf("%s: offsets: got %v, want %v", tt.name, got, tt.wantOffsets)
		}
		if h.Recovered != tt.wantRecovered {
			t.Errorf("%s: recovered: got %v, want %v", tt.name, h.Recovered, tt.wantRecovered)
		}
	}
	// New messages continue the offsets in the same epoch.
	if res := publish(t, m, "room", Publication{Data: data(6)}); res.Position != (Position{Epoch: epoch, Offset: 6}) {
		t.Errorf("publish after expiry: got %v, want %v", res.Position, Position{Epoch: epoch, Offset: 6})
	}
}

func (m *Memory) hasRoom(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.rooms[name]
	return ok
}

func TestMemorySweeper(t *testing.T) {
	clock := newFakeClock()
	const ttl = time.Hour
	m := newTestMemory(t, clock, MemoryConfig{HistoryTTL: ttl, SweepInterval: time.Millisecond})
	ctx := context.Background()

	idle := publish(t, m, "idle", Publication{Data: data(1), Key: "k"})
	publish(t, m, "subscribed", Publication{Data: data(1)})
	subscribe(t, m, "subscribed", &recorder{})
	publish(t, m, "recent", Publication{Data: data(1)})
	member := Member{User: "u", Session: "s"}
	if err := m.Join(ctx, "member", member); err != nil {
		t.Fatalf("Join: %v", err)
	}
	// A room that was only read, never published to, goes at the next sweep.
	history(t, m, "readonly", HistoryQuery{})
	clock.Advance(2 * time.Millisecond)
	waitFor(t, "the sweeper to forget a room that was only read", func() bool { return !m.hasRoom("readonly") })

	clock.Advance(ttl - time.Minute)
	history(t, m, "recent", HistoryQuery{}) // used near the end of the TTL

	clock.Advance(time.Minute + time.Second)
	waitFor(t, "the sweeper to forget the idle room", func() bool { return !m.hasRoom("idle") })
	// The pass that forgot "idle" looked at every room.
	for _, tt := range []struct {
		name string
		why  string
	}{
		{"subscribed", "it has a subscriber"},
		{"member", "it has a member"},
		{"recent", "it was used within the TTL"},
	} {
		if !m.hasRoom(tt.name) {
			t.Errorf("room %s: got forgotten, want kept: %s", tt.name, tt.why)
		}
	}
	// A forgotten room starts over in a new epoch, and its old positions do
	// not recover.
	h := history(t, m, "idle", HistoryQuery{Since: &idle.Position})
	if h.Recovered || h.Top.Epoch == idle.Epoch || h.Top.Offset != 0 {
		t.Errorf("idle room after the sweep: got recovered %v top %v, want false and offset 0 in an epoch other than %q", h.Recovered, h.Top, idle.Epoch)
	}
	if res := publish(t, m, "idle", Publication{Data: data(2), Key: "k"}); res.Duplicate {
		t.Errorf("key of a forgotten room: got duplicate, want a new publish")
	}

	// Once the subscriber and the member are gone, those rooms go too.
	if err := m.Unsubscribe(ctx, "subscribed"); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	if err := m.Leave(ctx, "member", member); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	clock.Advance(ttl + time.Second)
	waitFor(t, "the sweeper to forget the rooms left alone", func() bool {
		return !m.hasRoom("subscribed") && !m.hasRoom("member") && !m.hasRoom("recent")
	})
}

// mailboxCount returns how many mailboxes m holds.
func (m *Memory) mailboxCount() int {
	m.smu.RLock()
	defer m.smu.RUnlock()
	return len(m.mailboxes)
}

// A mailbox that nobody claims or posts to again is dropped by the sweeper
// once its ttl has passed; one posted to since is kept.
func TestMemoryMailboxSweep(t *testing.T) {
	clock := newFakeClock()
	m := newTestMemory(t, clock, MemoryConfig{SweepInterval: time.Millisecond})
	ctx := context.Background()
	const ttl = time.Minute
	for _, s := range []string{"forgotten", "kept"} {
		if err := m.Post(ctx, s, []byte(`{}`), 10, ttl); err != nil {
			t.Fatalf("Post(%s): %v", s, err)
		}
	}
	clock.Advance(ttl / 2)
	if err := m.Post(ctx, "kept", []byte(`"again"`), 10, ttl); err != nil {
		t.Fatalf("Post: %v", err)
	}
	clock.Advance(ttl / 2)
	waitFor(t, "the sweeper to drop the forgotten mailbox", func() bool { return m.mailboxCount() == 1 })
	if got, want := claim(t, m, "kept", func([]byte) {}), []string{`{}`, `"again"`}; !slices.Equal(got, want) {
		t.Errorf("Claim of the mailbox posted to since: got %q, want %q", got, want)
	}
	if got := claim(t, m, "forgotten", func([]byte) {}); len(got) != 0 {
		t.Errorf("Claim of the swept mailbox: got %q, want none", got)
	}
	if n := m.mailboxCount(); n != 0 {
		t.Errorf("mailboxes after Claim: got %d, want 0", n)
	}
}

// Post keeps a copy of what it holds: the caller may reuse its buffer.
func TestMemoryPostCopies(t *testing.T) {
	m := newTestMemory(t, newFakeClock(), MemoryConfig{})
	buf := []byte(`"first"`)
	if err := m.Post(context.Background(), "s", buf, 10, time.Minute); err != nil {
		t.Fatalf("Post: %v", err)
	}
	copy(buf, `"reuse"`)
	if got, want := claim(t, m, "s", func([]byte) {}), []string{`"first"`}; !slices.Equal(got, want) {
		t.Errorf("Claim: got %q, want %q", got, want)
	}
}

// padded returns JSON data of about n bytes.
func padded(n int) []byte {
	return []byte(`"` + strings.Repeat("p", n-2) + `"`)
}

// Past MaxRooms, a room the bus does not hold is refused, rooms it holds
// work on, and rooms that hold nothing are let go to make room.
func TestMemoryMaxRooms(t *testing.T) {
	clock := newFakeClock()
	m := newTestMemory(t, clock, MemoryConfig{MaxRooms: 3})
	ctx := context.Background()
	for _, r := range []string{"a", "b", "c"} {
		if _, err := m.Publish(ctx, r, Publication{Data: data(1)}); err != nil {
			t.Fatalf("Publish(%s): %v", r, err)
		}
	}
	calls := []struct {
		name string
		call func() error
	}{
		{"Publish", func() error { _, err := m.Publish(ctx, "d", Publication{Data: data(1)}); return err }},
		{"Subscribe", func() error { return m.Subscribe(ctx, "d", &recorder{}) }},
		{"Join", func() error { return m.Join(ctx, "d", Member{Session: "s"}) }},
	}
	for _, c := range calls {
		if err := c.call(); !errors.Is(err, ErrRoomLimit) {
			t.Errorf("%s on a fourth room: got %v, want %v", c.name, err, ErrRoomLimit)
		}
	}
	if _, err := m.Publish(ctx, "a", Publication{Data: data(2)}); err != nil {
		t.Errorf("Publish to a held room: %v", err)
	}
	if got := m.Stats(); got.Rooms != 3 || got.RoomsRefused != uint64(len(calls)) {
		t.Errorf("stats: got %+v, want 3 rooms and %d refused", got, len(calls))
	}
	// Once the held rooms' history is gone and they are idle, the sweeper
	// forgets them, and new rooms fit again.
	clock.Advance(25 * time.Hour)
	m.sweep()
	if _, err := m.Publish(ctx, "d", Publication{Data: data(1)}); err != nil {
		t.Errorf("Publish after the held rooms were forgotten: %v", err)
	}
}

// Rooms that only reads made never keep a room from being made: at the
// bound, one that still holds nothing is let go, and a read of a room the
// bus cannot hold answers as for an empty room.
func TestMemoryMaxRoomsReads(t *testing.T) {
	m := newTestMemory(t, newFakeClock(), MemoryConfig{MaxRooms: 4})
	ctx := context.Background()
	for i := range 100 {
		if _, err := m.Presence(ctx, fmt.Sprint("read-", i), PresenceQuery{}); err != nil {
			t.Fatalf("Presence: %v", err)
		}
		if _, err := m.History(ctx, fmt.Sprint("hist-", i), HistoryQuery{}); err != nil {
			t.Fatalf("History: %v", err)
		}
	}
	for _, r := range []string{"a", "b", "c", "d"} {
		if _, err := m.Publish(ctx, r, Publication{Data: data(1)}); err != nil {
			t.Fatalf("Publish(%s) with only read rooms held: %v", r, err)
		}
	}
	if err := m.Subscribe(ctx, "e", &recorder{}); !errors.Is(err, ErrRoomLimit) {
		t.Errorf("Subscribe past the bound with every room holding history: got %v, want %v", err, ErrRoomLimit)
	}
	h, err := m.History(ctx, "never", HistoryQuery{Limit: 10})
	if err != nil || h.Top.Offset != 0 || len(h.Messages) != 0 {
		t.Errorf("History of a room the bus cannot hold: got %+v, %v; want an empty room", h, err)
	}
	if got := m.Stats().Rooms; got != 4 {
		t.Errorf("rooms held: got %d, want 4", got)
	}
}

// A room's history is bounded in bytes: its oldest messages go first, and
// the bus's count of history bytes follows every message in and out.
func TestMemoryRoomHistoryBytes(t *testing.T) {
	clock := newFakeClock()
	msg := padded(1000)
	cost := MessageCost(&Message{Room: "r", Data: msg})
	m := newTestMemory(t, clock, MemoryConfig{MaxRoomHistoryBytes: 10 * cost})
	ctx := context.Background()
	for range 25 {
		if _, err := m.Publish(ctx, "r", Publication{Data: msg}); err != nil {
			t.Fatal(err)
		}
	}
	h, err := m.History(ctx, "r", HistoryQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := offsets(h.Messages), seq(16, 25); !slices.Equal(got, want) {
		t.Errorf("history: got offsets %v, want %v", got, want)
	}
	st := m.Stats()
	if st.HistoryBytes != 10*cost || st.EvictedRoomBytes != 15 {
		t.Errorf("stats: got %+v, want %d history bytes and 15 evicted by the room bound", st, 10*cost)
	}
	clock.Advance(25 * time.Hour)
	m.sweep()
	if st := m.Stats(); st.HistoryBytes != 0 {
		t.Errorf("history bytes after every message expired: got %d, want 0", st.HistoryBytes)
	}
}

// The node's history is bounded in bytes: past it, the oldest messages of
// the node go first, from whichever rooms hold them, and publishing goes on.
func TestMemoryNodeHistoryBytes(t *testing.T) {
	clock := newFakeClock()
	msg := padded(1000)
	cost := MessageCost(&Message{Room: "old", Data: msg})
	m := newTestMemory(t, clock, MemoryConfig{MaxHistoryBytes: 20 * cost})
	ctx := context.Background()
	for range 10 {
		if _, err := m.Publish(ctx, "old", Publication{Data: msg}); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Second)
	}
	for range 20 {
		if _, err := m.Publish(ctx, "new", Publication{Data: msg}); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Second)
	}
	st := m.Stats()
	if st.HistoryBytes > 20*cost || st.EvictedNodeBytes != 10 {
		t.Errorf("stats: got %+v, want at most %d history bytes and the 10 oldest evicted", st, 20*cost)
	}
	old, _ := m.History(ctx, "old", HistoryQuery{Limit: 100})
	recent, _ := m.History(ctx, "new", HistoryQuery{Limit: 100})
	if len(old.Messages) != 0 || len(recent.Messages) != 20 {
		t.Errorf("history: got %d old and %d new messages, want 0 and 20 (the oldest go first)", len(old.Messages), len(recent.Messages))
	}
	if old.Top.Offset != 10 {
		t.Errorf("old room's position: got %d, want 10 (eviction keeps offsets)", old.Top.Offset)
	}
}

// A cancelled context fails a call before it touches the bus, as it would
// on a bus across the network.
func TestMemoryCancelledContext(t *testing.T) {
	m := newTestMemory(t, newFakeClock(), MemoryConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Join(ctx, "r", Member{Session: "s"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Join: got %v, want %v", err, context.Canceled)
	}
	if _, err := m.Publish(ctx, "r", Publication{Data: data(1)}); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish: got %v, want %v", err, context.Canceled)
	}
}

// FuzzPresenceQuery: any cursor and limit give a bounded, ordered page of
// the room or ErrBadCursor, never a panic or a member twice.
func FuzzPresenceQuery(f *testing.F) {
	f.Add("", 0)
	f.Add(presenceCursor("s05"), 3)
	f.Add(presenceCursor("zzz"), 1000)
	f.Add("not base64!", 1)
	f.Add(presenceCursor(strings.Repeat("s", 300)), 5)
	f.Add("", -1)
	m := NewMemory(MemoryConfig{})
	f.Cleanup(func() { m.Close() })
	for i := range 20 {
		if err := m.Join(context.Background(), "fuzz", Member{User: "u", Session: fmt.Sprintf("s%02d", i)}); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, cursor string, limit int) {
		page, err := m.Presence(context.Background(), "fuzz", PresenceQuery{Cursor: cursor, Limit: limit})
		if err != nil {
			if !errors.Is(err, ErrBadCursor) {
				t.Fatalf("got %v, want a page or %v", err, ErrBadCursor)
			}
			return
		}
		if page.Total != 20 || len(page.Members) > max(limit, DefaultPresenceLimit) && len(page.Members) > MaxPresenceLimit {
			t.Fatalf("page: got %d members of %d, want at most the limit of 20", len(page.Members), page.Total)
		}
		if !slices.IsSortedFunc(page.Members, func(a, b Member) int { return strings.Compare(a.Session, b.Session) }) {
			t.Fatalf("page not ordered by session: %v", page.Members)
		}
		if page.Next != "" {
			after, _ := base64.RawURLEncoding.DecodeString(page.Next)
			if len(page.Members) == 0 || len(after) < 4 || string(after[:len(after)-4]) != page.Members[len(page.Members)-1].Session {
				t.Fatalf("next %q does not continue after the page's last member", page.Next)
			}
		}
	})
}
