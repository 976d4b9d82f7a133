// Package fanout is the bus between Parley nodes: it assigns each room message
// its offset, keeps the room's history, delivers messages and presence events to
// every node that subscribed to the room, and answers history and presence
// queries.
//
// Bus is the interface; Memory is the embedded single-node implementation. A
// node that subscribes to a room gets its messages through the Handler it
// passed to Subscribe, one room at a time and in offset order.
package fanout
