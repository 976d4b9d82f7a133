// Package fanout is the bus between Parley nodes: it assigns each room message
// its offset, keeps the room's history, delivers messages and presence events to
// every node that subscribed to the room, and answers history and presence
// queries.
//
// Bus is the interface. Memory is the embedded single-node implementation;
// Redis lets many nodes share one Redis and act as one: a Lua script per
// publish keeps offsets and history in step, one pub/sub connection per node
// carries the rooms it has subscribers for, and presence members and session
// addresses are leases that their node renews. A node that subscribes to a
// room gets its messages through the Handler it passed to Subscribe, one room
// at a time and in offset order; delivery is at most once, and history is
// what a node reads to fill a gap (Handler.HandleResync).
//
// Besides rooms, a Bus carries addressed, ephemeral payloads: Register makes
// this node the address of a session, and Send reaches it on whichever node
// holds it, with no offset and no history.
package fanout
