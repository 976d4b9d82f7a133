// Package gateway is Parley's front door: the HTTP handlers of the wire
// protocol (WebSocket at /v1/ws, Server-Sent Events at /v1/sse, the HTTP API
// under /v1/rooms), sessions and their bounded outgoing queues, the local hub
// that maps rooms to local sessions, heartbeats, authentication, limits and
// graceful drain.
//
// A Server is built from a Config with New, serves with Serve and stops with
// Shutdown, which drains connected clients to other nodes first.
//
// # Goroutines of a session
//
// An idle WebSocket session holds no goroutine. Its writer exists only while
// frames wait to be sent (and a heartbeat tick or two after); heartbeats come
// from one loop for every session; and on Linux its reader is the server's
// poller (epoll): one goroutine waits for every idle connection, and a
// connection that has bytes to read gets a reader from a bounded set
// (Config.MaxReaders), which reads and handles its frames until none is at
// hand and then gives the connection back. poll.go states the invariants of
// coder/websocket's read path this rests on. Config.NoPoller, other systems,
// and connections that are not plain TCP (TLS) keep a reader goroutine per
// session instead, with the same behaviour; the test suite runs on both
// (PARLEY_NOPOLLER=1 selects the second).
//
// # The write path
//
// A room message is encoded once per node, as the bytes of one WebSocket
// frame, and every session that gets it writes those bytes to its
// connection as they are; a backlog goes out as one frame of
// newline-separated messages. coder/websocket writes only its control frames
// (pongs, close), through the same lock. wire.go states the invariants of
// coder/websocket's write path this rests on.
package gateway
