package fanout

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"time"
)

// Errors returned by every Bus implementation.
var (
	// ErrClosed is returned by a Bus after Close.
	ErrClosed = errors.New("fanout: bus closed")
	// ErrSubscribed is returned by Subscribe for a room this node already subscribed to.
	ErrSubscribed = errors.New("fanout: room already subscribed")
	// ErrRoomLimit is returned for a room the bus does not hold yet while it
	// holds as many rooms as it may (MemoryConfig.MaxRooms).
	ErrRoomLimit = errors.New("fanout: room limit reached")
)

// IdempotencyWindow is how long a publish key is remembered: a repeat of the
// key within it gets the first offset and publishes nothing.
const IdempotencyWindow = 5 * time.Minute

// Position names a point in a room's stream: the epoch of its history and the
// offset of the last message. Offsets start at 1; offset 0 is the position
// before the first message.
type Position struct {
	Epoch  string `json:"epoch"`
	Offset uint64 `json:"offset"`
}

// Message is one published room message at its position.
type Message struct {
	Room   string          `json:"room"`
	Offset uint64          `json:"offset"`
	Epoch  string          `json:"epoch"`
	Data   json.RawMessage `json:"data"`
	From   string          `json:"from,omitempty"`
	// Time is when the bus accepted the message, in Unix nanoseconds.
	Time int64 `json:"time"`

	// shared holds what Shared built.
	shared atomic.Pointer[sharedValue]
}

type sharedValue struct{ v any }

// Shared returns build(m), built at most once per Message value (two
// concurrent first calls may both run build; one result wins). A consumer
// that puts every message on the wire the same way, as the gateway does,
// thereby shares one encoding among every reader of a message that a bus
// keeps in history: live delivery and every replay. build must not retain m.
func (m *Message) Shared(build func(*Message) any) any {
	if p := m.shared.Load(); p != nil {
		return p.v
	}
	nv := &sharedValue{v: build(m)}
	if m.shared.CompareAndSwap(nil, nv) {
		return nv.v
	}
	return m.shared.Load().v
}

// Publication is what a publisher hands to Publish.
type Publication struct {
	// Data is the message body, valid compact JSON.
	Data json.RawMessage
	// From is the publishing user, empty for backends.
	From string
	// Key is an optional idempotency key (see IdempotencyWindow). Keys are
	// per room: the same key in another room is another publication.
	Key string
}

// PublishResult tells where a publication landed.
type PublishResult struct {
	Position
	// Duplicate is true when Key was seen within IdempotencyWindow: nothing was
	// published and Position is the first publication's.
	Duplicate bool
}

// Member is one session present in a room.
type Member struct {
	User    string `json:"user"`
	Session string `json:"session"`
	Node    string `json:"node,omitempty"`
}

// PresenceEvent says that a member joined or left a room.
type PresenceEvent struct {
	Room   string
	Join   bool
	Member Member
}

// PresenceQuery selects one page of a room's members.
type PresenceQuery struct {
	// Cursor continues after the page whose Next it was; empty starts at the
	// first member. Cursors are opaque to callers.
	Cursor string
	// Limit caps the page; zero means DefaultPresenceLimit, and it is at
	// most MaxPresenceLimit.
	Limit int
}

// Presence page sizes.
const (
	DefaultPresenceLimit = 100
	MaxPresenceLimit     = 1000
)

// PresencePage is one page of a room's members, ordered by session.
type PresencePage struct {
	Members []Member
	// Total is how many members the room has.
	Total int
	// Next is the cursor of the following page; empty when this is the last.
	Next string
}

// ErrBadCursor is returned by Presence for a cursor that no page gave.
var ErrBadCursor = errors.New("fanout: bad presence cursor")

// HistoryQuery selects messages from a room's history.
type HistoryQuery struct {
	// Since, when set, asks for every message after that position. The result
	// is Recovered when the epoch matches and no message after it has been
	// dropped from history; otherwise it carries no messages.
	Since *Position
	// Limit caps the number of messages; zero means none when Since is nil and
	// every retained one when Since is set. Without Since the newest Limit
	// messages are returned.
	Limit int
}

// History is the answer to a HistoryQuery.
type History struct {
	// Top is the room's current position.
	Top       Position
	Messages  []*Message
	Recovered bool
}

// Handler receives what a node subscribed to. Calls for one room never overlap
// and come in offset order; a Handler must not block and must not call the Bus
// for the same room from inside a call.
type Handler interface {
	HandleMessage(m *Message)
	HandlePresence(e PresenceEvent)
}

// Bus carries messages between nodes. Delivery to subscribed nodes is at most
// once; history is the source of truth for recovery: every message that
// Publish acknowledged is in history until it ages out (size or TTL), and
// offsets in history never disagree with offsets delivered.
type Bus interface {
	// Publish assigns the room's next offset, appends the message to history
	// and delivers it to every subscribed node.
	Publish(ctx context.Context, room string, p Publication) (PublishResult, error)
	// Subscribe makes this node receive the room's messages and presence
	// events through h until Unsubscribe.
	Subscribe(ctx context.Context, room string, h Handler) error
	// Unsubscribe stops delivery of the room to this node.
	Unsubscribe(ctx context.Context, room string) error
	// History reads the room's history.
	History(ctx context.Context, room string, q HistoryQuery) (History, error)
	// Join adds m to the room's presence and tells subscribed nodes.
	Join(ctx context.Context, room string, m Member) error
	// Leave removes m from the room's presence and tells subscribed nodes.
	Leave(ctx context.Context, room string, m Member) error
	// Presence lists a page of the room's members across all nodes. A page
	// costs the size of the page, not of the room. Members that join or
	// leave between pages may be missed or seen twice; a member present
	// throughout is on exactly one page.
	Presence(ctx context.Context, room string, q PresenceQuery) (PresencePage, error)
	// Ready reports whether the bus can serve right now.
	Ready() bool
	// Close releases the bus; calls after it return ErrClosed.
	Close() error
}
