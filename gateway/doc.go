// Package gateway is Parley's front door: the HTTP handlers of the wire
// protocol (WebSocket at /v1/ws, Server-Sent Events at /v1/sse, the HTTP API
// under /v1/rooms), sessions and their bounded outgoing queues, the local hub
// that maps rooms to local sessions, heartbeats, authentication, limits and
// graceful drain.
//
// A Server is built from a Config with New, serves with Serve and stops with
// Shutdown, which drains connected clients to other nodes first.
package gateway
