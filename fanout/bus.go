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
	// ErrFull is returned by Enter for a room that holds as many members as
	// the caller allows, and by Post for a mailbox that holds as many
	// payloads.
	ErrFull = errors.New("fanout: full")
	// ErrNoSession is returned by Send for a session that no live node
	// holds: none registered it, or the node that did is gone.
	ErrNoSession = errors.New("fanout: no such session")
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
	// Delivered says that Since is a position this node delivered, not one
	// a client sent. A bus whose room is behind it in the same epoch has
	// lost messages it acknowledged (Redis restored from an older snapshot
	// or a lagging replica) and would number new messages with offsets
	// already used: it starts the room in a new epoch instead, so that
	// every position in the old one is answered as not recovered. A
	// client's position never does this, or any client could restart a
	// room's epoch.
	Delivered bool
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
// from inside a call.
//
// Delivery is at most once: a bus whose connection to other nodes broke may
// skip messages, and a message may arrive twice (it was in flight when the
// subscription was made again). A handler drops offsets it has seen and
// reads history for the ones it has not.
type Handler interface {
	HandleMessage(m *Message)
	HandlePresence(e PresenceEvent)
	// HandleResync says that messages of the room may have been missed
	// (the bus lost its connection and has subscribed again): the handler
	// compares its position with the room's history.
	HandleResync(room string)
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
	// events through h until Unsubscribe. It returns once delivery is in
	// place: a message published after it returns reaches h. Subscribing
	// a subscribed room again replaces its handler.
	Subscribe(ctx context.Context, room string, h Handler) error
	// Unsubscribe stops delivery of the room to this node: no call reaches
	// the handler after it returns. Unsubscribing a room that is not
	// subscribed does nothing.
	Unsubscribe(ctx context.Context, room string) error
	// History reads the room's history.
	History(ctx context.Context, room string, q HistoryQuery) (History, error)
	// Join adds m to the room's presence and, when m is new there, tells
	// subscribed nodes. Membership is a lease that this bus renews until
	// Leave: when the node dies, its members leave everywhere within the
	// presence TTL, with leave events.
	Join(ctx context.Context, room string, m Member) error
	// Enter is Join that also returns the room's other members at the
	// moment of joining, ordered by session, atomically: of two members
	// entering at once, exactly one sees the other. With max > 0, a room
	// that holds max members other than m is not joined: ErrFull. A member
	// that is already present is joined again (its lease renewed).
	Enter(ctx context.Context, room string, m Member, max int) ([]Member, error)
	// EnterAfter is Enter, with no bound, for a member that succeeds
	// another: m is entered only if a member whose session starts with
	// prefix is present at that moment; otherwise nothing changes and it
	// returns ErrNoSession. A peer that moves to another node thereby never
	// comes back after it left.
	EnterAfter(ctx context.Context, room string, m Member, prefix string) ([]Member, error)
	// Leave removes m from the room's presence and tells subscribed nodes.
	Leave(ctx context.Context, room string, m Member) error
	// Presence lists a page of the room's members across all nodes. A page
	// costs the size of the page, not of the room. Members that join or
	// leave between pages may be missed or seen twice; a member present
	// throughout is on exactly one page.
	Presence(ctx context.Context, room string, q PresenceQuery) (PresencePage, error)
	// Register makes this node the address of session for Send: deliver
	// gets what is sent to it, until Unregister. Like presence, the entry
	// is a lease this bus renews. deliver must not block and must not call
	// the Bus; registering a session again replaces deliver.
	Register(ctx context.Context, session string, deliver func(data []byte)) error
	// Unregister removes session's address if this node holds it. What
	// was sent to this node before, and is still on its way, may reach
	// deliver for a few seconds after (rather than no one): deliver must
	// take it as coming from the past.
	Unregister(ctx context.Context, session string) error
	// Send delivers data to session on whichever node registered it:
	// ephemeral and addressed, with no offset and no history. Payloads sent
	// by one caller, one Send after another, arrive in that order. Delivery
	// is at most once; ErrNoSession says that no live node holds session
	// (none registered it, or the node that did is gone), and that data
	// went nowhere.
	Send(ctx context.Context, session string, data []byte) error
	// Post is Send that keeps what no live node can take: data goes to the
	// node that registered session, or, when none is live (none registered
	// it, or the node that did is gone), into the session's mailbox. The
	// mailbox keeps at most max payloads, until ttl has passed since the
	// last was added; ErrFull when it holds max already (with max or ttl
	// not above zero it keeps nothing). Payloads posted by one caller, one
	// Post after another, arrive in that order, wherever they go.
	Post(ctx context.Context, session string, data []byte, max int, ttl time.Duration) error
	// Claim is Register that also empties the session's mailbox and
	// returns what it held, in order, atomically with taking the address:
	// every payload posted is either returned here or given to deliver.
	// deliver may be called before Claim returns (with payloads posted
	// after the claim): the caller puts the returned ones first.
	Claim(ctx context.Context, session string, deliver func(data []byte)) ([][]byte, error)
	// Ready reports whether the bus can serve right now.
	Ready() bool
	// Close releases the bus; calls after it return ErrClosed.
	Close() error
}
