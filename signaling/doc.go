// Package signaling runs WebRTC calls: who is in a call, the polite and
// impolite roles of perfect negotiation, and the relay of SDP and ICE
// candidates to one peer on whichever node it is connected to. It knows no
// sockets: it sees a client connection through Conn, a thing it can deliver
// server frames to, and its peers meet through a fanout.Bus.
//
// # Calls on the bus
//
// A call is a presence room of the bus whose members are peers; a call of
// the client's name C is the bus room "call/C" (no client room can be named
// so: room names have no '/'). A peer's identity is the session id of the
// connection that first joined it to the call; it outlives that connection.
// Each time a peer joins or rejoins it is a new incarnation, and the bus
// member is "<peer>.<incarnation>", so that the node holding the peer now
// owns its lease and no other node renews or removes it by mistake. A node
// shows a peer to its clients while any incarnation of it is present: a peer
// that moves to another node adds its new incarnation before its old one
// leaves, so the others see no leave and no join.
//
// Joins are atomic on the bus (fanout.Bus.Enter): of two peers joining at
// once exactly one sees the other in its join ack, and the other gets a
// `peer` join event. Roles do not depend on that order: of two peers, the
// one with the greater identity (byte-wise) is polite, so a role is the same
// on every node and across resumes.
//
// # Signals
//
// A signal is validated, re-encoded with only the fields the protocol names,
// encoded once as the recipient's `signal` frame, and posted on the bus to
// the address "c:<call>/<peer>", which the node holding the peer claims. A
// peer whose connection dropped, or whose node died, has no live address:
// what is posted to it waits in its mailbox on the bus (bounded, and kept
// for a while after the grace period), and the node it rejoins on claims
// the address and the mailbox at once, delivering what was held before
// anything newer. A signal already on its way to the node a peer had just
// left is posted again by that node; it can then arrive after a signal sent
// later, which an ICE restart after the resume makes harmless.
//
// # Leaving and grace
//
// A peer leaves when its client says `leave`, or when its connection has
// been gone for the grace period without a rejoin. A node that dies stops
// renewing its peers' leases, and they leave everywhere within the bus's
// presence TTL. Each incarnation also holds the address "a:<call>/<inc>":
// a peer that rejoins elsewhere sends "taken" there, and the old node lets
// the incarnation go without a leave event; when no node answers (it died),
// the rejoining node removes the old incarnation itself.
package signaling
