// Package client is a Go client for the Parley protocol over WebSocket. It
// reconnects with exponential backoff and jitter, resubscribes every room from
// the last position it saw (so nothing still in history is lost), drops
// messages it has already delivered, answers heartbeats, and follows a
// draining node's reconnect notice.
package client
