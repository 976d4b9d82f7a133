// Package loadtest is the load generator behind `parley loadtest`: it opens
// many protocol clients against a node, drives a scenario for a bounded time,
// and reports latency percentiles, throughput and the node's memory per
// connection.
//
// Scenarios:
//   - idle: open connections (each subscribed to a room) and hold them; the
//     report gives the node's resident memory per connection, read from its
//     metrics endpoint.
//   - fanout: subscribers spread over rooms, one publisher per room at a fixed
//     rate; the report gives end-to-end delivery latency (publish to receipt)
//     and deliveries per second, and counts gaps and duplicates.
//   - rooms: many small rooms whose members each publish into their room at
//     a fixed rate over their own WebSocket connection; the same report.
//
// Latencies go into an HDR histogram (p50 to p99.9 and the maximum, each
// within 0.1%).
//
// Subscribers connect over WebSocket, or over Server-Sent Events (one GET of
// the node's /v1/sse per subscriber) with Config.Transport "sse"; the fanout
// publishers always use WebSocket.
//
// On Linux, connections to an IPv4 loopback target come from 127.0.0.1 to
// 127.0.0.254 in turn, so the node's limit on connections per client address
// (1000 by default) applies to each source address and the default run, 1000
// subscribers and a publisher per room, fits a node with default settings.
package loadtest
