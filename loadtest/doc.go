// Package loadtest is the load generator behind `parley loadtest`: it opens
// many protocol clients against one node or the nodes of a cluster, drives a
// scenario for a bounded time, and reports what the clients saw and what the
// nodes spent.
//
// Scenarios:
//   - connect: open connections (each subscribed to a room) at a ramp rate
//     and hold them; the report gives the connect rate, the failures and,
//     from the nodes' metrics, their resident memory per connection.
//     "idle" is another name for it.
//   - fanout: subscribers spread over rooms, one publisher per room at a
//     fixed rate; the report gives end-to-end delivery latency (publish to
//     receipt), deliveries per second, gaps and duplicates, and from the
//     nodes' metrics their CPU time per million deliveries.
//   - rooms: many small rooms whose members each publish into their room at
//     a fixed rate over their own WebSocket connection; the same report.
//   - resume: as fanout, and halfway through a share of the connections is
//     cut at once under the clients, which reconnect and resume their rooms;
//     the report adds the time each took to reconnect and to catch up.
//   - calls: pairs of pion peers set up calls through the node's signaling,
//     relay-only through its TURN server if asked; the report gives the setup
//     time percentiles, the failures and the selected candidate pairs.
//   - turn: TURN allocations at a fixed rate, then pairs of allocations relay
//     packets to each other; the report gives the allocation rate and time,
//     and the relayed throughput, loss and latency.
//
// Latencies go into HDR histograms (p50 to p99.9 and the maximum, each
// within 0.1%), which the report keeps whole (Distribution) for
// Report.WriteHTML to plot.
//
// Subscribers connect over WebSocket, or over Server-Sent Events (one GET of
// the node's /v1/sse per subscriber) with Config.Transport "sse"; publishers
// always use WebSocket. With several nodes (Config.URLs), subscribers are
// spread over them and publishers use the first, so the report's latency of
// each node's subscribers shows what crossing between nodes adds.
//
// On Linux, connections to an IPv4 loopback target come from 127.0.0.1 to
// 127.0.0.254 in turn, so the node's limit on connections per client address
// (1000 by default) applies to each source address and the default run, 1000
// subscribers and a publisher per room, fits a node with default settings.
//
// Every run is bounded: by its counts, and by Config.Duration, at most ten
// minutes. Targets must be loopback addresses unless Config.AllowRemote.
package loadtest
