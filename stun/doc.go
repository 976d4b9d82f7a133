// Package stun is a STUN binding server (RFC 8489) for its own UDP socket:
// it tells each client the address it was seen from, so browsers learn
// their server-reflexive candidates. Parley's TURN server (package turn)
// answers binding requests on its own ports as well; this one is for a
// STUN-only listener.
//
// The server answers binding requests with XOR-MAPPED-ADDRESS and
// FINGERPRINT, nothing else: no SOFTWARE, so a response is at most about
// twice the size of the smallest request. Because a response goes to
// whatever source address the request claims, answers are rate-limited per
// source (golang.org/x/time/rate, a bounded table of buckets), so the server
// cannot be used to reflect a flood at a victim. Malformed messages and
// anything but a binding request are dropped without a word.
package stun
