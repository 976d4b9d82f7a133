// Package turn is Parley's TURN server (RFC 5766/8656 over UDP, TCP and TLS)
// with STUN binding on the same sockets, built on pion/turn v4.
//
// Callers open the sockets (Listen does it for an address) and pass them in
// a Config with the TURN REST shared secret; NewServer starts serving and
// Close stops it. Credentials mints the REST username and credential pair
// that clients present, in the scheme of coturn's use-auth-secret.
//
// SplitTLS shares one TCP port, such as 443, between HTTPS and TURN over
// TLS, for clients behind firewalls that let only TCP to 443 out: it
// terminates TLS and tells the two apart by ALPN (h2 and http/1.1, or
// stun.turn of RFC 7443) or, without ALPN, by whether the first bytes are a
// STUN message. Its HTTP listener goes to http.Server.Serve, its TURN
// listener to Config.TLSStreams.
//
// The package closes the edges pion/turn leaves to its users, so that the
// relay is safe on the open internet (docs/TURN.md has the details):
//   - a credential's expiry is checked when an allocation is created, not on
//     its refreshes, so a call outlives its credential; failures get 401;
//   - quotas count allocations per user (the part of the REST username after
//     the expiry) and in all, answering 486;
//   - the peer-address policy refuses loopback, private, link-local,
//     metadata, multicast and other special ranges in every embedded form,
//     except what Config.AllowPeers opens and the relay's own addresses;
//   - LIFETIME is clamped; malformed STUN is dropped; requests without a
//     valid credential are rate-limited per source, and 401s stay small;
//   - TLS below 1.2 is refused; every goroutine ends in Close.
//
// Everything pion-specific stays inside this package.
package turn
