// Package client is a Go client for the Parley protocol over WebSocket. It
// reconnects with exponential backoff and jitter, resubscribes every room from
// the last position it saw (so nothing still in history is lost), drops
// messages it has already delivered, answers heartbeats, and follows a
// draining node's reconnect notice.
//
// A Client is made with Dial. Subscribe joins a room (with SubscribeOptions
// for presence and a starting position), Publish sends a message, Presence
// and AllMembers list a room's members a page at a time, and everything the
// node sends comes on one channel, Events.
//
// # Reconnects
//
// After a reconnect every room is subscribed again from its position. A room
// the node refuses for now (internal, over_capacity, rate_limited, draining:
// its Redis connection is coming back, say) is kept at its position: the
// client reports it with an EventError and reconnects with backoff, to the
// next endpoint if there are several, until every room is subscribed again.
// A room refused for good (forbidden, bad_room, ...) is dropped and reported
// with an EventError. Subscribe, a room's first subscribe, is not retried: it
// returns the node's error.
//
// # Delivery
//
// The messages of each room are delivered in offset order, each once; events
// of different rooms keep their order unless a room is paused (below). One goroutine reads the connection and never
// waits for the application (but for a call's events: see Calls): it
// answers pings, completes commands with their
// acks and errors, and puts events in a queue, which a second goroutine hands
// to Events one at a time. The application may therefore call any method of
// the Client, Publish included, from the goroutine that reads Events.
//
// The queue holds at most Options.EventBuffer room events: messages,
// presence events, and error frames that answer no command. When an event of
// a room finds the queue full, the client acts as the room's slow consumer,
// as a node does with a session that does not read: it pauses the room. It
// drops that event and the room's next ones as they arrive, without moving
// the room's position; the room stays subscribed on the node, so it keeps its
// place among the session's rooms. Once the application has read the queue
// down to half of EventBuffer, the client unsubscribes the room and
// subscribes it again from its position, with no Subscribe or Unsubscribe of
// the application in between, and the node sends the messages the room
// missed from its history, in order, before live ones. A room may be paused and taken back any number of times; the
// application sees none of it in the messages, which arrive with no gap and
// no duplicate, however slowly it reads. Commands complete while rooms are
// paused. If the node's history no longer holds everything a paused room
// missed (a slow reader of a busy room, or a node's replay limit), the room
// goes on from the node's current position after an EventLost, as after a
// reconnect.
//
// Presence events are not replayed. The other members of a room taken back
// from a pause see this session leave and join again, and a room subscribed with presence gets
// an EventPresence whose Event is "sync" whenever it is subscribed again,
// after a pause or a reconnect: joins and leaves may have been missed
// meanwhile, and AllMembers gives the current members.
//
// Connection events (EventConnected, EventDisconnected, EventDraining,
// EventLost, and EventError for a room that could not be subscribed again)
// are never dropped; they come a few per connection. An error frame that
// answers no command is dropped, with a log line, when it finds the queue
// full. Events is closed after
// Close, which discards the events not yet received, or, with
// Options.NoReconnect, once the connection has ended and every event has been
// received.
//
// # Calls
//
// Join joins a WebRTC call: a room of peers that send each other SDP and
// ICE candidates through the node with Call.Signal, each peer polite or
// impolite toward each other for perfect negotiation. A call's events
// (signals, and peers that join, leave or resume) come on the Call's own
// channel, Call.Events, not on Events, and none is ever dropped: while a
// call's channel is full, the goroutine that reads the connection waits for
// the application, so an application must read its calls' events promptly
// and must not wait for a command on the goroutine that reads them.
//
// After a reconnect the client joins every call again with its resume token,
// before Join, Signal and the other commands waiting for the connection go
// on, and reports it with CallRejoined: with Resumed the peer kept its
// identity and the signals the node held for it follow the event; without,
// the grace period had passed and the Call is a new peer. A call the node
// refuses for now (internal, rate_limited, draining, ...) is kept and
// joined again after a reconnect, as a room is; one refused for good ends
// with CallClosed. Package rtc makes a WebRTC mesh over a Call with pion.
package client
